"""Fine-tuning curves: per-step metrics and per-evaluation test accuracy, live or from a run's metrics.csv."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from cadis.errors import CadisError

# (column, subplot row, subplot column) of the per-step metrics in `curves_figure`
_PANELS = [("loss", 1, 1), ("loss_sce", 1, 1), ("loss_madv", 1, 1), ("selection_rate", 1, 2), ("mask_rate", 1, 2),
           ("acc_denoised", 2, 1), ("lr", 2, 2)]
# What the metrics of `objective.FTCadisLoss` and the evaluations mean, for legends and metric tiles.
METRIC_LABELS = {
    "loss": "total loss",
    "loss_sce": "L_SCE (CE, kept draws)",
    "loss_madv": "L_MAdv (consistency)",
    "selection_rate": "kept draws",
    "mask_rate": "images, all draws kept",
    "acc_denoised": "accuracy, denoised draws",
    "test_acc_denoised": "test accuracy, denoised",
    "lr": "learning rate",
    "images_per_s": "images per second",
}


def metric_label(name: str) -> str:
    """A metric's readable name (the raw name for unknown ones)."""
    return METRIC_LABELS.get(name, name)


def _mode(points: int) -> str:
    """Lines, with markers where a line has too few points to be drawn (e.g. after the first step)."""
    return "lines+markers" if points < 2 else "lines"


def metrics_file(run: str | Path) -> Path:
    """The metrics.csv of a run directory, of its saved model (out/model) or of a shipped model."""
    run = Path(run)
    for candidate in (run / "metrics.csv", run.parent / "metrics.csv"):
        if candidate.is_file():
            return candidate
    raise CadisError(f"No metrics.csv in {run} or its parent; is it a fine-tuning run?")


def read_metrics(run: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-step rows, per-evaluation rows) of a run's metrics.csv."""
    path = metrics_file(run)
    try:
        text = path.read_bytes().decode("utf-8")
        if text and not text.endswith("\n"):  # a run killed (or still writing) mid-line: leave that line out
            text = text[:text.rfind("\n") + 1]
        df = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise CadisError(f"{path} is not a readable metrics table ({e}).") from e
    if not {"kind", "step"} <= set(df.columns):
        raise CadisError(f"{path} lacks the columns kind and step; is it a cadis metrics.csv?")
    steps = df[df["kind"] == "step"].dropna(axis=1, how="all").reset_index(drop=True)
    evals = df[df["kind"] == "eval"][["step", "test_acc_denoised"]].reset_index(drop=True)
    return steps, evals


def curves_figure(steps: pd.DataFrame, evals: pd.DataFrame | None = None, smooth: int = 1):
    """Losses, selection/mask rate, accuracy on denoised draws (and test accuracy) and lr against step.
    `smooth` > 1 draws a rolling mean over that many steps (batch metrics are noisy)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(2, 2, subplot_titles=["losses", "kept draws and masked images",
                                              "accuracy on denoised draws", "learning rate"], vertical_spacing=0.2)
    for col, row, c in _PANELS:
        if col in steps:
            y = steps[col] if col == "lr" else steps[col].rolling(smooth, min_periods=1).mean()
            fig.add_trace(go.Scatter(x=steps["step"], y=y, mode=_mode(len(steps)), name=metric_label(col)), row, c)
    if evals is not None and len(evals):
        fig.add_trace(go.Scatter(x=evals["step"], y=evals["test_acc_denoised"], mode="lines+markers",
                                 name=metric_label("test_acc_denoised")), 2, 1)
    fig.update_xaxes(title_text="training step", row=2)
    for (row, c), title in {(1, 1): "loss", (1, 2): "share", (2, 1): "accuracy", (2, 2): "learning rate"}.items():
        fig.update_yaxes(title_text=title, row=row, col=c)
    fig.update_yaxes(range=[0, 1], row=1, col=2)
    fig.update_yaxes(range=[0, 1], row=2, col=1)
    fig.update_layout(height=560, margin=dict(t=40, b=20), legend=dict(orientation="h", y=-0.12),
                      template="plotly_white")
    return fig


def batch_size(run: str | Path) -> int | None:
    """The batch size a run trained with, from its config.json or its model's finetune.json (None if neither)."""
    for path in (metrics_file(run).parent / name for name in ("config.json", "finetune.json", "model/finetune.json")):
        try:
            return int(json.loads(path.read_text())["config"]["batch_size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def plateau_table(runs: dict[str, str | Path]) -> pd.DataFrame:
    """Per run, held-out accuracy on denoised images over training: after a third and two thirds of the run, at
    the end and at its best, and the gain over the last third (about 0: the curve has levelled off)."""
    rows = {}
    for name, run in runs.items():
        _, evals = read_metrics(run)
        if evals.empty:
            continue
        last = evals["step"].max()
        at = {f: evals.loc[(evals["step"] - f * last).abs().idxmin(), "test_acc_denoised"] for f in (1 / 3, 2 / 3)}
        rows[name] = {"evaluations": len(evals), "at 1/3": at[1 / 3], "at 2/3": at[2 / 3],
                      "end": evals["test_acc_denoised"].iloc[-1], "best": evals["test_acc_denoised"].max(),
                      "gain, last third": evals["test_acc_denoised"].iloc[-1] - at[2 / 3]}
    return pd.DataFrame.from_dict(rows, orient="index")


def comparison_figure(runs: dict[str, str | Path], smooth: int = 50):
    """Several runs side by side: test accuracy on denoised images, L_MAdv and the mask rate against training
    images seen (thousands; against the step when a run's batch size is unknown)."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    batches = {name: batch_size(run) for name, run in runs.items()}
    by_images = all(batches.values())
    fig = make_subplots(1, 3, subplot_titles=["test accuracy, denoised", f"L_MAdv ({smooth}-step mean)",
                                              f"all draws kept ({smooth}-step mean)"])
    for k, (name, run) in enumerate(runs.items()):
        steps, evals = read_metrics(run)
        scale = batches[name] / 1000 if by_images else 1
        color = qualitative.Plotly[k % len(qualitative.Plotly)]
        fig.add_trace(go.Scatter(x=evals["step"] * scale, y=evals["test_acc_denoised"], mode="lines+markers",
                                 name=name, legendgroup=name, line_color=color), 1, 1)
        for c, col in ((2, "loss_madv"), (3, "mask_rate")):
            if col in steps:
                fig.add_trace(go.Scatter(x=steps["step"] * scale, y=steps[col].rolling(smooth, min_periods=1).mean(),
                                         mode=_mode(len(steps)), name=name, legendgroup=name, showlegend=False,
                                         line_color=color), 1, c)
    fig.update_xaxes(title_text="training images seen (thousands)" if by_images else "training step")
    fig.update_yaxes(title_text="accuracy", col=1)
    fig.update_yaxes(title_text="loss", col=2)
    fig.update_yaxes(title_text="share", col=3)
    fig.update_layout(height=380, template="plotly_white", legend_title="run", margin=dict(t=40, b=20))
    return fig

"""Fine-tuning curves: per-step metrics and per-evaluation test accuracy, live or from a run's metrics.csv."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from .errors import CadisError

# (column, subplot row, subplot column) of the per-step metrics in `curves_figure`
_PANELS = [("loss", 1, 1), ("loss_sce", 1, 1), ("loss_madv", 1, 1), ("selection_rate", 1, 2), ("mask_rate", 1, 2),
           ("acc_denoised", 2, 1), ("lr", 2, 2)]


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

    fig = make_subplots(2, 2, subplot_titles=["losses", "selection and mask rate", "accuracy on denoised draws",
                                              "learning rate"], vertical_spacing=0.15)
    for col, row, c in _PANELS:
        if col in steps:
            y = steps[col] if col == "lr" else steps[col].rolling(smooth, min_periods=1).mean()
            fig.add_trace(go.Scatter(x=steps["step"], y=y, mode="lines", name=col), row, c)
    if evals is not None and len(evals):
        fig.add_trace(go.Scatter(x=evals["step"], y=evals["test_acc_denoised"], mode="lines+markers",
                                 name="test_acc_denoised"), 2, 1)
    fig.update_yaxes(range=[0, 1], row=1, col=2)
    fig.update_yaxes(range=[0, 1], row=2, col=1)
    fig.update_layout(height=520, margin=dict(t=40, b=20), legend=dict(orientation="h", y=-0.08),
                      template="plotly_white")
    return fig


def comparison_figure(runs: dict[str, str | Path], smooth: int = 50):
    """Several runs side by side: test accuracy on denoised images, L_MAdv and the mask rate against step."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(1, 3, subplot_titles=["test accuracy on denoised images", f"loss_madv ({smooth}-step mean)",
                                              f"mask rate ({smooth}-step mean)"])
    for k, (name, run) in enumerate(runs.items()):
        steps, evals = read_metrics(run)
        color = qualitative.Plotly[k % len(qualitative.Plotly)]
        fig.add_trace(go.Scatter(x=evals["step"], y=evals["test_acc_denoised"], mode="lines+markers", name=name,
                                 legendgroup=name, line_color=color), 1, 1)
        for c, col in ((2, "loss_madv"), (3, "mask_rate")):
            if col in steps:
                fig.add_trace(go.Scatter(x=steps["step"], y=steps[col].rolling(smooth, min_periods=1).mean(),
                                         mode="lines", name=name, legendgroup=name, showlegend=False,
                                         line_color=color), 1, c)
    fig.update_xaxes(title_text="step")
    fig.update_layout(height=380, template="plotly_white", legend_title="run", margin=dict(t=40, b=20))
    return fig

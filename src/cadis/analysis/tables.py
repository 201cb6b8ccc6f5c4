"""Certified accuracy, ACR and abstain rate from certification TSVs (ours or Cohen et al.'s).

Certified accuracy at r is the share of images that are correct with radius >= r; an abstain
counts as wrong. Files are read and checked by `reading` (re-exported here): each row against its run's
σ, N and α, with radii recomputed from the counts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from cadis.analysis.reading import REQUIRED, merge_results, read_results, recertify  # noqa: F401  re-exported
from cadis.errors import CadisError

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def certified(df: pd.DataFrame, r: float, suffix: str = "") -> pd.Series:
    """Per image: correct and certified at radius r (columns `correct{suffix}`, `radius{suffix}`)."""
    return df[f"correct{suffix}"].astype(bool) & (df[f"radius{suffix}"] >= r)


def certified_accuracy(df: pd.DataFrame, radii) -> np.ndarray:
    """Share of images with correct prediction and radius >= r, for each r."""
    correct, radius = df["correct"].to_numpy(bool), df["radius"].to_numpy(float)
    return np.array([(correct & (radius >= r)).mean() for r in radii])


def summarize(df: pd.DataFrame, radii=DEFAULT_RADII) -> dict[str, float]:
    """Certified accuracy at each radius, ACR, abstain rate and (smoothed) clean accuracy."""
    acc = certified_accuracy(df, radii)
    sigma = df.attrs.get("config", {}).get("sigma") or (df["sigma"].iloc[0] if "sigma" in df else np.nan)
    row = {"images": len(df), "sigma": sigma}
    row.update({f"r={r:g}": float(a) for r, a in zip(radii, acc)})
    row["ACR"] = float((df["radius"] * df["correct"]).mean())
    row["abstain"] = float((df["predict"] == -1).mean())
    row["clean_acc"] = float(df["correct"].mean())
    return row


def summary_table(results: dict[str, pd.DataFrame], radii=DEFAULT_RADII, envelope: bool = False) -> pd.DataFrame:
    """One row per run; with `envelope`, a last row with the best value over runs at each radius."""
    table = pd.DataFrame({label: summarize(df, radii) for label, df in results.items()}).T
    if envelope and len(results) > 1:
        cols = [f"r={r:g}" for r in radii]
        table.loc["best-σ envelope", cols] = table[cols].max()
    table.index.name = "run"
    return table


def envelope_table(results: dict[str, pd.DataFrame], radii=DEFAULT_RADII,
                   group: Callable[[str], str] | None = None) -> pd.DataFrame:
    """The best-σ envelope per method: at each radius, the best certified accuracy over a run's noise levels,
    and the σ that gives it (as the paper and Carlini et al. tabulate). Runs are grouped by their sidecar's
    `run` (else `method`), mapped through `group` if given (e.g. to pool a method's recipes); a group needs the
    same images at every σ to be comparable. attrs["sigma"] and attrs["run"] say where each cell comes from."""
    groups: dict[str, list[pd.DataFrame]] = {}
    names: dict[str, list[str]] = {}
    for label, df in results.items():
        config = df.attrs.get("config", {})
        run = config.get("run") or config.get("method") or label
        key = group(run) if group else run
        groups.setdefault(key, []).append(df)
        names.setdefault(key, []).append(run)
    acc, best_sigma, best_run = {}, {}, {}
    for name, frames in groups.items():
        if len({tuple(sorted(df["idx"])) for df in frames}) > 1:
            raise CadisError(f"The runs of {name!r} certify different images at different σ; an envelope over "
                             "them would mix test sets. Certify the same indices at every σ.")
        curves = np.array([certified_accuracy(df, radii) for df in frames])  # [σ, radius]
        sigmas = [df.attrs.get("config", {}).get("sigma", np.nan) for df in frames]
        best = curves.argmax(0)
        acc[name] = {f"r={r:g}": curves[b, i] for i, (r, b) in enumerate(zip(radii, best))}
        best_sigma[name] = {f"r={r:g}": sigmas[b] for r, b in zip(radii, best)}
        best_run[name] = {f"r={r:g}": names[name][b] for r, b in zip(radii, best)}
    table = pd.DataFrame(acc).T
    table.index.name = "run"
    table.attrs["sigma"] = pd.DataFrame(best_sigma).T
    table.attrs["run"] = pd.DataFrame(best_run).T
    return table


def per_class_accuracy(results: dict[str, pd.DataFrame], radius: float = 0.0,
                       classes: list[str] | None = None) -> pd.DataFrame:
    """Certified accuracy at `radius` per true class (columns; names from `classes`), one row per run.
    An average can hide a class that a method gives up; this table shows it."""
    rows = {}
    for label, df in results.items():
        hit = certified(df, radius)
        rows[label] = hit.groupby(df["label"]).mean()
    table = pd.DataFrame(rows).T.sort_index(axis=1)
    if classes is not None:
        table.columns = [classes[int(c)] if 0 <= int(c) < len(classes) else str(c) for c in table.columns]
    table.index.name = "run"
    return table


def summary_markdown(table: pd.DataFrame) -> str:
    """`summary_table` as markdown: image counts as integers, σ with 2 decimals, rates with 3."""
    return table.to_markdown(floatfmt=["", ".0f", ".2f", *[".3f"] * (len(table.columns) - 2)])


def paired_comparison(a: pd.DataFrame, b: pd.DataFrame, radii=DEFAULT_RADII) -> pd.DataFrame:
    """Run `a` against run `b` on the images both certified, radius by radius.

    `a_only` / `b_only` count the images certified at r by one run and not the other; `p_value` is the
    exact two-sided McNemar test (a binomial test on the discordant images at p = 1/2). Runs certified
    on shared draws share the noise, so the test sees only what the classifiers changed.
    """
    config_a, config_b = a.attrs.get("config", {}), b.attrs.get("config", {})
    for key in ("dataset", "split"):
        if key in config_a and key in config_b and config_a[key] != config_b[key]:
            raise CadisError(f"The runs certified different data ({key} {config_a[key]!r} vs {config_b[key]!r}); "
                             "a paired comparison needs the same images.")
    joined = a.merge(b, on="idx", suffixes=("_a", "_b"))
    if joined.empty:
        raise CadisError("The two runs have no image in common; a paired comparison needs the same images.")
    rows = {}
    for r in radii:
        hit_a, hit_b = certified(joined, r, "_a"), certified(joined, r, "_b")
        a_only, b_only = int((hit_a & ~hit_b).sum()), int((hit_b & ~hit_a).sum())
        p_value = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
        rows[f"r={r:g}"] = {"images": len(joined), "a_only": a_only, "b_only": b_only,
                            "difference": (a_only - b_only) / len(joined), "p_value": float(p_value)}
    return pd.DataFrame.from_dict(rows, orient="index")


def certified_accuracy_figure(results: dict[str, pd.DataFrame], max_radius: float | None = None,
                              envelope: bool = False):
    """Plotly figure: certified accuracy vs radius, one line per run (and the best-σ envelope)."""
    import plotly.graph_objects as go

    top = max_radius or max(float(df["radius"].max()) for df in results.values()) * 1.05 + 1e-3
    grid = np.linspace(0, top, 200)
    fig = go.Figure()
    curves = []
    for label, df in results.items():
        curves.append(certified_accuracy(df, grid))
        fig.add_trace(go.Scatter(x=grid, y=curves[-1], mode="lines", name=label, line_shape="hv"))
    if envelope and len(curves) > 1:
        fig.add_trace(go.Scatter(x=grid, y=np.max(curves, 0), mode="lines", name="best-σ envelope",
                                 line=dict(dash="dash", color="black"), line_shape="hv"))
    fig.update_layout(xaxis_title="ℓ2 radius", yaxis_title="certified accuracy", yaxis_range=[0, 1],
                      template="plotly_white", legend_title="run")
    return fig

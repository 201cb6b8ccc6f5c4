"""Which runs of the benchmark the report compares, paired on the same images and draws (exact McNemar)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cadis.analysis.tables import certified, paired_comparison

# Paired comparisons in the report (first against second), where both runs exist at a σ.
COMPARISONS = (("denoised-ce", "none"), ("ft-cadis", "none"), ("ft-cadis", "denoised-ce"),
               ("ft-cadis", "ft-cadis-detached"), ("ft-cadis-balanced", "ft-cadis"), ("ft-cadis-balanced", "none"),
               ("ft-cadis-detached", "none"), ("ft-cadis-detached", "denoised-ce"),
               ("sce-only", "none"),
               ("ce-madv", "none"), ("ft-cadis-detached", "sce-only"), ("ft-cadis-detached-lam1", "none"),
               ("ft-cadis-detached-lam1", "ft-cadis-detached"),
               # ours, beyond the paper: weight interpolations of sce-only and ft-cadis (experiments.results)
               *((f"interp-a{a}", other) for a in (25, 50, 75) for other in ("denoised-ce", "none", "ft-cadis")))


def run_name(df: pd.DataFrame) -> str:
    """A result's run (METHOD or METHOD.RECIPE), from its sidecar; the method for files that name no run."""
    return df.attrs["config"].get("run", df.attrs["config"].get("method"))


def runs_by_sigma(results: dict[str, pd.DataFrame]) -> dict[tuple[str, float | None], pd.DataFrame]:
    """(run, σ) -> its results."""
    return {(run_name(df), df.attrs["config"].get("sigma")): df for df in results.values()}


def comparisons(runs: set[str]) -> list[tuple[str, str]]:
    """COMPARISONS within each recipe that `runs` holds (`none` has no recipe), then each recipe's run against the
    same method in the `short` recipe; only pairs whose two runs are both in `runs`."""
    pairs = []
    for recipe in sorted({run.partition(".")[2] for run in runs}):
        tag = f".{recipe}" if recipe else ""
        pairs += [(first + tag, second if second == "none" else second + tag) for first, second in COMPARISONS]
    pairs += [(run, run.partition(".")[0]) for run in sorted(runs) if "." in run]
    return [(a, b) for a, b in dict.fromkeys(pairs) if a in runs and b in runs]


def paired_table(results: dict[str, pd.DataFrame], radii: Sequence[float]) -> pd.DataFrame | None:
    """One row per comparison (`comparisons`) and σ: "+3.0 (20/5, p=0.002)" per radius."""
    by_run = runs_by_sigma(results)
    # radii no run certifies any image at would only add columns of "+0.0 (0/0, p=1)"
    radii = [r for r in radii if any(certified(df, r).any() for df in results.values())]
    rows = {}
    for sigma in sorted({sigma for _, sigma in by_run if sigma is not None}):
        for first, second in comparisons({run for run, _ in by_run}):
            if (first, sigma) in by_run and (second, sigma) in by_run:
                table = paired_comparison(by_run[first, sigma], by_run[second, sigma], radii)
                rows[f"{first} vs {second} σ={sigma:g}"] = {
                    r: f"{100 * t['difference']:+.1f} ({t['a_only']:.0f}/{t['b_only']:.0f}, p={t['p_value']:.2g})"
                    for r, t in table.iterrows()}
    if not rows:
        return None
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "comparison"
    return table

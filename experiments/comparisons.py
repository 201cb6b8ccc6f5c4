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
# Recipes compared with an earlier one of the same method (the authors' whole LoRA recipe against our first
# reading of it), besides `short`.
RECIPE_BASELINES = {"authors-lora-whole": "authors-lora"}


def run_name(df: pd.DataFrame) -> str:
    """A result's run (METHOD or METHOD.RECIPE), from its sidecar; the method for files that name no run."""
    return df.attrs["config"].get("run", df.attrs["config"].get("method"))


def runs_by_sigma(results: dict[str, pd.DataFrame]) -> dict[tuple[str, float | None], pd.DataFrame]:
    """(run, σ) -> its results."""
    return {(run_name(df), df.attrs["config"].get("sigma")): df for df in results.values()}


def comparisons(runs: set[str]) -> list[tuple[str, str]]:
    """COMPARISONS within each recipe that `runs` holds (`none` has no recipe), then each recipe's run against the
    same method in the `short` recipe and in its RECIPE_BASELINES; only pairs whose two runs are both in `runs`."""
    pairs = []
    for recipe in sorted({run.partition(".")[2] for run in runs}):
        tag = f".{recipe}" if recipe else ""
        pairs += [(first + tag, second if second == "none" else second + tag) for first, second in COMPARISONS]
    pairs += [(run, run.partition(".")[0]) for run in sorted(runs) if "." in run]
    pairs += [(run, f"{run.partition('.')[0]}.{RECIPE_BASELINES[run.partition('.')[2]]}") for run in sorted(runs)
              if run.partition(".")[2] in RECIPE_BASELINES]
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


def split_seed(run: str) -> tuple[str, int]:
    """"ft-cadis.authors-lora-whole.seed1" -> ("ft-cadis.authors-lora-whole", 1); no .seed<k> suffix is seed 0."""
    base, _, last = run.rpartition(".")
    return (base, int(last[4:])) if base and last.startswith("seed") and last[4:].isdigit() else (run, 0)


def seed_table(results: dict[str, pd.DataFrame], radii: Sequence[float], first: str = "ft-cadis",
               second: str = "denoised-ce", resamples: int = 99_999) -> pd.DataFrame | None:
    """`first` against `second` per training seed, and pooled over seeds, for each recipe and σ with at least two
    seeds of both, at each radius: "+1.2 (p=…)". Per seed: the paired difference and exact McNemar p. Pooled: the
    images are shared by every seed, so the image is the unit: per image, the mean over seeds of (certified by
    `first` − certified by `second`), and a two-sided sign-flip permutation test of its mean over images."""
    from scipy.stats import permutation_test

    by_run = runs_by_sigma(results)
    groups: dict[tuple[str, float], dict[int, tuple[pd.DataFrame, pd.DataFrame]]] = {}
    for (run, sigma), df in by_run.items():
        if run is None:  # a file whose sidecar names no run
            continue
        base, seed = split_seed(run)
        method, _, recipe = base.partition(".")
        other = (run.replace(first, second, 1), sigma)
        if method == first and other in by_run:
            groups.setdefault((recipe, sigma), {})[seed] = (df, by_run[other])
    rows, numbers = {}, {}
    for (recipe, sigma), seeds in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if len(seeds) < 2:
            continue
        label = f"{first} vs {second}.{recipe} σ={sigma:g}"
        per_image, numbers[label] = [], {"per_seed": {}, "pooled": {}}
        for seed, (a, b) in sorted(seeds.items()):
            table = paired_comparison(a, b, radii)
            numbers[label]["per_seed"][seed] = dict(zip(radii, 100 * table["difference"].to_numpy(float)))
            rows[f"{label} seed {seed}"] = {
                f"r={r:g}": f"{100 * t['difference']:+.1f} ({t['a_only']:.0f}/{t['b_only']:.0f}, p={t['p_value']:.2g})"
                for r, t in zip(radii, table.to_dict("records"))}
            joined = a.merge(b, on="idx", suffixes=("_a", "_b")).set_index("idx")
            per_image.append(pd.DataFrame({r: certified(joined, r, "_a").astype(int) - certified(joined, r, "_b")
                                           for r in radii}))
        common = pd.concat(per_image, axis=1, keys=range(len(per_image)), join="inner")
        pooled = {}
        for r in radii:
            d = common.xs(r, axis=1, level=1).mean(axis=1).to_numpy(float)
            test = permutation_test((d,), lambda x, axis: x.mean(axis=axis), permutation_type="samples",
                                    n_resamples=resamples, random_state=0)
            pooled[f"r={r:g}"] = f"{100 * d.mean():+.1f} (p={test.pvalue:.2g})"
            numbers[label]["pooled"][r] = (100 * d.mean(), test.pvalue)
        rows[f"{label} pooled over {len(seeds)} seeds ({len(common)} images)"] = pooled
    if not rows:
        return None
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "comparison"
    table.attrs["numbers"] = numbers  # label -> per_seed {seed: {r: points}}, pooled {r: (points, p)}
    return table


def seed_findings(table: pd.DataFrame) -> list[str]:
    """One sentence per seed group of `seed_table`, computed from it: at r=0 and at the radius of the largest pooled
    gain, the sign of the difference per seed, and the pooled difference with its p-value."""
    lines = []
    for label, found in table.attrs.get("numbers", {}).items():
        per_seed, pooled = found["per_seed"], found["pooled"]
        best = max(pooled, key=lambda r: pooled[r][0])
        parts = []
        for r in dict.fromkeys([min(pooled), best]):
            diffs = [per_seed[s][r] for s in sorted(per_seed)]
            below = sum(d < 0 for d in diffs)
            above = sum(d > 0 for d in diffs)
            parts.append(f"at r={r:g} it is below in {below} and above in {above} of {len(diffs)} seeds "
                         f"({', '.join(f'{d:+.1f}' for d in diffs)} points), pooled {pooled[r][0]:+.1f} points "
                         f"(p={pooled[r][1]:.2g})")
        lines.append(f"- {label}: " + "; ".join(parts) + ".")
    return lines

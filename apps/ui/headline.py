"""The Certification page's default view in words (UI-free): which shipped result files it shows, and the headline
and paired-comparison sentences computed from them, so that no number on that view is typed by hand.

Three runs, one noise level σ: the off-the-shelf classifier (`none`), the denoised fine-tune
(`denoised-ce.authors-lora`) and FT-CADIS (`ft-cadis.authors-lora`), each in its method's colour (apps.ui.style).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from apps.ui.style import colour_of
from cadis.analysis.tables import certified, paired_comparison, per_class_accuracy, read_results
from cadis.certification.output import find_sidecar, read_sidecar
from cadis.errors import CadisError

# run name → the name people read, in the order the sentences name them
RUNS = {"ft-cadis.authors-lora": "FT-CADIS", "denoised-ce.authors-lora": "the denoised fine-tune",
        "none": "the off-the-shelf model"}
LEGEND = {"ft-cadis.authors-lora": "FT-CADIS (fine-tuned for certification)",
          "denoised-ce.authors-lora": "denoised fine-tune (cross-entropy)",
          "none": "off-the-shelf (not fine-tuned)"}
COLOURS = {LEGEND[run]: colour_of(run) for run in RUNS}  # the methods' colours, as in every other chart
DEFAULT_SIGMA = 0.5


def _run_of(tsv: Path) -> tuple[str | None, float | None]:
    sidecar = find_sidecar(tsv)  # FILE.tsv.json, or the earlier FILE.json
    try:
        side = read_sidecar(sidecar, tsv, "") if sidecar is not None else None
    except CadisError:
        return None, None
    if not isinstance(side, dict) or side.get("adaptive"):  # adaptive runs hold another image subset
        return None, None
    sigma = side.get("sigma")
    # older sidecars of the baseline name its method only
    return side.get("run") or side.get("method"), float(sigma) if isinstance(sigma, (int, float)) else None


def headline_files(root: Path) -> dict[float, dict[str, Path]]:
    """{σ: {run: result file}} for the noise levels at which all three runs ship a result (with a sidecar) in
    `root` itself (not its subfolders, which hold other settings)."""
    found: dict[float, dict[str, Path]] = {}
    for tsv in sorted(root.glob("*.tsv")) if root.is_dir() else []:
        run, sigma = _run_of(tsv)
        if run in RUNS and sigma is not None:
            found.setdefault(sigma, {}).setdefault(run, tsv)
    return {s: {run: runs[run] for run in RUNS} for s, runs in sorted(found.items()) if set(runs) == set(RUNS)}


def default_sigma(sigmas: list[float]) -> float | None:
    """σ = 0.5 where it ships, else the first one."""
    return DEFAULT_SIGMA if DEFAULT_SIGMA in sigmas else (sigmas[0] if sigmas else None)


def load_runs(files: dict[str, Path]) -> dict[str, pd.DataFrame]:
    """The result files of one σ, read and checked (`read_results`), restricted to the images all of them hold."""
    runs = {run: read_results(path) for run, path in files.items()}
    common = set.intersection(*(set(df["idx"]) for df in runs.values()))
    if not common:
        raise CadisError("The three result files share no image, so they cannot be compared image by image.")
    return {run: _keep(df, common) for run, df in runs.items()}


def _keep(df: pd.DataFrame, idx: set) -> pd.DataFrame:
    out = df[df["idx"].isin(idx)].sort_values("idx").reset_index(drop=True)
    out.attrs = df.attrs
    return out


def headline_radius(sigma: float) -> float:
    """The radius the headline quotes: σ itself, a radius every noise level in the shipped results reaches."""
    return float(sigma)


def certified_share(df: pd.DataFrame, radius: float) -> float:
    """Certified accuracy at `radius`: the share of images whose vote is right and certified at least that far."""
    return float(certified(df, radius).mean())


def percent(share: float) -> str:
    return f"{100 * share:.0f}%"


def headline_sentence(runs: dict[str, pd.DataFrame], radius: float) -> str:
    """One sentence: at `radius`, the share of the images each run certifies with the right class."""
    images = len(next(iter(runs.values())))
    shares = [(RUNS[run], percent(certified_share(runs[run], radius))) for run in RUNS if run in runs]
    (first, share), rest = shares[0], shares[1:]
    others = ", ".join(f"{name} {s}" for name, s in rest)
    return (f"At radius {radius:g} (the noise level σ), {first} certifies the right class for {share} of these "
            f"{images} test images; {others}.")


def p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def paired_sentence(a: pd.DataFrame, b: pd.DataFrame, radius: float, same_draws: bool,
                    names: tuple[str, str] = (RUNS["ft-cadis.authors-lora"], RUNS["none"])) -> str:
    """Run `a` against run `b` image by image at `radius` (exact McNemar, `paired_comparison`), in words. The
    p-value is for this one comparison: the page makes others, and across many some p-values are small by chance."""
    row = paired_comparison(a, b, [radius]).iloc[0]
    first, second = names
    how = "the same images and the same noise draws" if same_draws else "the same images (other noise draws)"
    if row["a_only"] + row["b_only"] == 0:
        return (f"Image by image ({how}), {first} and {second} certify exactly the same {int(row['images'])} images "
                f"at radius {radius:g}.")
    luck = ("would be rare" if row["p_value"] < 0.05 else "is common") + " if the two were equally good"
    return (f"Image by image ({how}), {first} certifies {int(row['a_only'])} images at radius {radius:g} that "
            f"{second} does not, and {second} {int(row['b_only'])} that {first} does not: a split this uneven {luck} "
            f"(exact McNemar test, {p_text(row['p_value'])} for this one comparison; every other comparison has its "
            "own p-value, and among many some are small by chance).")


def per_class(runs: dict[str, pd.DataFrame], radius: float, classes: list[str] | None = None) -> pd.DataFrame:
    """Certified accuracy at `radius` per true class, long format: three bars per class, named as in the legend."""
    table = per_class_accuracy({LEGEND[run]: runs[run] for run in RUNS if run in runs}, radius, classes)
    return table.reset_index().melt(id_vars="run", var_name="class", value_name="certified accuracy")

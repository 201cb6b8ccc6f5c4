"""The Overview's story in plain words, every number computed from the shipped benchmark files.

UI-free (no streamlit). `load_story` reads experiments/results at one σ: the certification TSVs of the off-the-shelf
classifier (`none`) and of FT-CADIS (`ft-cadis.authors-lora`), certified on the same draws, the hallucination tables
and the selection rates. `sentences` words what they show; where the numbers do not support a step of the usual
story, the sentence says what they do show instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from apps.ui.hosting import SHIPPED_RESULTS
from cadis.analysis.tables import DEFAULT_RADII, certified, paired_comparison, read_results
from cadis.certification.smoothing import max_radius
from cadis.data import FASHION_MNIST_CLASSES
from cadis.errors import CadisError

STORY_SIGMA = 0.5
BASELINE = "none"
TUNED = "ft-cadis.authors-lora"
WEAK_CLASS = "Shirt"  # the class the benchmark singles out: it hallucinates most
STEPS = ("noise", "denoise", "hallucinate", "finetune", "payoff")


def run_file(run: str, sigma: float, results: Path = SHIPPED_RESULTS) -> Path:
    return results / f"{run}_s{sigma:g}.tsv"


@dataclass(frozen=True)
class Story:
    """The numbers behind the story's sentences (shares in [0, 1]), and the files they come from (names only:
    hosted, no server path is shown)."""

    sigma: float
    images: int  # test images both runs certified
    n0: int
    n: int
    alpha: float
    files: tuple[str, ...]
    r0_base: float  # certified accuracy at r = 0 (prediction right, not abstaining)
    r0_tuned: float
    gain_radius: float  # the radius where FT-CADIS gains most over the baseline
    gain_base: float
    gain_tuned: float
    only_tuned: int  # images certified at gain_radius by FT-CADIS only / by the baseline only
    only_base: int
    gain_p: float  # exact McNemar p-value at gain_radius
    weak_images: int
    weak_base: float  # certified accuracy at r = 0 on WEAK_CLASS
    weak_tuned: float
    weak_worst: bool  # WEAK_CLASS loses the most at r = 0 of all classes
    unanimous_base: float  # share of test images whose N votes all agree
    unanimous_tuned: float
    draws: int  # denoised draws of the hallucination stage (off-the-shelf classifier, one-shot)
    draw_images: int
    draws_per_image: int
    hallucinated: float
    weak_hallucinated: float
    worst_class: str  # the class with the highest hallucination rate
    auroc: float  # low confidence as a hallucination detector, all classes / WEAK_CLASS
    weak_auroc: float
    selection: float  # share of denoised training draws right before fine-tuning (what FT-CADIS trains on)
    weak_selection: float
    selection_images: int
    selection_draws: int  # draws per training image

    @property
    def kept(self) -> float:
        return 1 - self.hallucinated


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise CadisError(f"{path.name} is missing")
    return pd.read_csv(path)


def load_story(sigma: float = STORY_SIGMA, results: Path = SHIPPED_RESULTS) -> Story:
    """The story's numbers at `sigma`; a CadisError naming the file when one is missing."""
    paths = [run_file(BASELINE, sigma, results), run_file(TUNED, sigma, results)]
    for p in paths:
        if not p.is_file():
            raise CadisError(f"{p.name} is missing")
    base, tuned = (read_results(p) for p in paths)
    cfg = base.attrs["config"]
    joined = base.merge(tuned, on="idx", suffixes=("_a", "_b"))
    radii = [r for r in DEFAULT_RADII if r <= max_radius(sigma, cfg["n"], cfg["alpha"])]
    paired = paired_comparison(tuned, base, radii)
    gains = paired.loc[[f"r={r:g}" for r in radii if r > 0], "difference"]
    best = gains.idxmax()
    gain_radius = float(best.removeprefix("r="))
    weak_id = FASHION_MNIST_CLASSES.index(WEAK_CLASS)  # the runs' sidecars say fashion-mnist
    per_class = {k: (certified(g, 0, "_b").mean() - certified(g, 0, "_a").mean())
                 for k, g in joined.groupby("label_a")}
    weak = joined[joined["label_a"] == weak_id]

    detector = _read(results / "hallucination_detector.csv")
    row = detector[(detector["classifier"] == BASELINE) & (detector["sigma"] == sigma)
                   & (detector["mode"] == "one-shot")].iloc[0]
    per_class_hal = _read(results / "hallucination.csv")
    hal = per_class_hal[(per_class_hal["classifier"] == BASELINE) & (per_class_hal["sigma"] == sigma)
                        & (per_class_hal["mode"] == "one-shot")].set_index("class")
    side = json.loads((results / "hallucination.json").read_text())
    selection = _read(results / "selection_rates.csv")
    sel = selection[selection["sigma"] == sigma].set_index("class")
    sel_side = json.loads((results / "selection_rates.json").read_text())
    return Story(
        sigma=sigma, images=len(joined), n0=int(cfg["n0"]), n=int(cfg["n"]), alpha=float(cfg["alpha"]),
        files=(*(p.name for p in paths), "hallucination_detector.csv", "hallucination.csv", "selection_rates.csv"),
        r0_base=float(certified(base, 0).mean()), r0_tuned=float(certified(tuned, 0).mean()),
        gain_radius=gain_radius, gain_base=float(certified(joined, gain_radius, "_a").mean()),
        gain_tuned=float(certified(joined, gain_radius, "_b").mean()),
        only_tuned=int(paired.loc[best, "a_only"]), only_base=int(paired.loc[best, "b_only"]),
        gain_p=float(paired.loc[best, "p_value"]),
        weak_images=len(weak), weak_base=float(certified(weak, 0, "_a").mean()),
        weak_tuned=float(certified(weak, 0, "_b").mean()), weak_worst=min(per_class, key=per_class.get) == weak_id,
        unanimous_base=float((base["count_a"] == base["n"]).mean()),
        unanimous_tuned=float((tuned["count_a"] == tuned["n"]).mean()),
        draws=int(row["draws"]), draw_images=int(side["images"]), draws_per_image=int(side["draws_per_image"]),
        hallucinated=float(row["hallucination rate"]),
        weak_hallucinated=float(hal.loc[WEAK_CLASS, "hallucination rate"]),
        worst_class=str(hal["hallucination rate"].idxmax()), auroc=float(row["AUROC (1 − confidence)"]),
        weak_auroc=float(hal.loc[WEAK_CLASS, "AUROC"]), selection=float(sel.loc["all", "selection_rate"]),
        weak_selection=float(sel.loc[WEAK_CLASS, "selection_rate"]), selection_images=int(sel.loc["all", "images"]),
        selection_draws=int(sel_side["num_draws"]))


def detector_words(auroc: float) -> str:
    """How well low confidence flags hallucinated draws, in words (AUROC 0.5 is a coin flip)."""
    if auroc < 0.5:
        return "worse than a coin flip"
    if auroc < 0.6:
        return "hardly better than a coin flip"
    if auroc < 0.75:
        return "only somewhat"
    return "fairly well"


def _pct(x: float, digits: int = 0) -> str:
    return f"{100 * x:.{digits}f}%"


def sentences(s: Story) -> dict[str, str]:
    """One plain sentence (or two) per step of STEPS, with the numbers of `s`."""
    out = {"noise": "Noise breaks it: it was trained on clean images only. The benchmark files do not measure it on "
                    "raw noisy images; the Payoff page counts its votes on raw noisy copies of test images, live, "
                    "next to the denoised ones."}
    most = "most" if s.kept > 0.5 else "only some"
    out["denoise"] = (f"**Denoising repairs {most} draws**: at σ = {s.sigma:g}, the off-the-shelf classifier names "
                      f"the true class on {_pct(s.kept)} of {s.draws:,} denoised draws ({s.draw_images} test images "
                      f"× {s.draws_per_image}), and its vote is right, with a certificate, on {_pct(s.r0_base, 1)} of "
                      f"the {s.images} test images.")
    worst = "the class that hallucinates most" if s.worst_class == WEAK_CLASS else f"second only to {s.worst_class}"
    all_words, weak_words = detector_words(s.auroc), detector_words(s.weak_auroc)
    join = " and" if all_words == weak_words else ", but"
    out["hallucinate"] = (f"**Some draws are hallucinated**: {_pct(s.hallucinated)} of those draws at σ = {s.sigma:g}, "
                          f"and {_pct(s.weak_hallucinated)} of {WEAK_CLASS} draws ({worst}). Low confidence flags "
                          f"them {all_words} over all classes{join} {weak_words} on {WEAK_CLASS}.")
    consistent = (f"Its vote becomes more consistent: all {s.n:,} votes agree on {_pct(s.unanimous_tuned, 1)} of "
                  f"the test images, against {_pct(s.unanimous_base, 1)} before."
                  if s.unanimous_tuned > s.unanimous_base else
                  f"Its vote does not become more consistent here: all {s.n:,} votes agree on "
                  f"{_pct(s.unanimous_tuned, 1)} of the test images, against {_pct(s.unanimous_base, 1)} before.")
    out["finetune"] = (f"**FT-CADIS trains only on the draws the classifier already gets right**: before "
                       f"fine-tuning that is {_pct(s.selection)} of denoised training draws at σ = {s.sigma:g}, "
                       f"but {_pct(s.weak_selection)} for {WEAK_CLASS}. " + consistent)
    if s.gain_tuned > s.gain_base:
        gain = (f"**It certifies more images at large radii**: at r = {s.gain_radius:g}, {_pct(s.gain_tuned, 1)} of "
                f"the {s.images} test images against {_pct(s.gain_base, 1)} for the off-the-shelf classifier "
                f"({s.only_tuned} images only FT-CADIS certifies, {s.only_base} only the baseline). ")
    else:
        gain = (f"**It certifies no more images at any radius here**: at r = {s.gain_radius:g}, "
                f"{_pct(s.gain_tuned, 1)} against {_pct(s.gain_base, 1)}. ")
    overall = f"{_pct(s.r0_tuned, 1)} against {_pct(s.r0_base, 1)} over all classes"
    if s.weak_tuned < s.weak_base:
        where = "most on" if s.weak_worst else "also on"
        cost = (f"**It pays at small radii, {where} {WEAK_CLASS}**: at r = 0 it certifies {_pct(s.weak_tuned)} of "
                f"the {s.weak_images} {WEAK_CLASS.lower()}s against {_pct(s.weak_base)} ({overall}).")
    else:
        cost = (f"On {WEAK_CLASS} it does not pay at r = 0: {_pct(s.weak_tuned)} of the {s.weak_images} "
                f"{WEAK_CLASS.lower()}s against {_pct(s.weak_base)} ({overall}).")
    out["payoff"] = gain + cost
    return out


def details(s: Story) -> str:
    """The formulas and the jargon behind the sentences (markdown, for an expander), with the sources."""
    return (
        f"- **Certified radius** of one image: R = σ·Φ⁻¹(p_A), where p_A is the lower {1 - s.alpha:.1%} "
        f"Clopper–Pearson bound on the top class's share of the N = {s.n:,} votes (N0 = {s.n0} more draws pick that "
        f"class first); if p_A ≤ ½ the vote abstains. With N = {s.n:,} and α = {s.alpha:g} no radius exceeds "
        f"σ·Φ⁻¹(α^(1/N)) = {max_radius(s.sigma, s.n, s.alpha):.3f} at σ = {s.sigma:g}.\n"
        "- **Certifies an image at radius r**: its prediction is the true class and R ≥ r. Certified accuracy at r "
        "is the share of test images certified at r; at r = 0 it is the share predicted right without abstaining.\n"
        f"- **Paired**: both runs are certified on the same images and noise draws; at r = {s.gain_radius:g} the "
        f"exact McNemar test on the {s.only_tuned} + {s.only_base} images only one run certifies gives "
        f"p = {s.gain_p:.2g}.\n"
        "- **Hallucinated draw**: the classifier's top class on the denoised draw differs from the true class. "
        f"**AUROC** of low confidence as a detector: the chance that a random hallucinated draw gets lower "
        f"confidence than a random kept one (0.5 is a coin flip): {s.auroc:.2f} over all classes, "
        f"{s.weak_auroc:.2f} on {WEAK_CLASS}, at σ = {s.sigma:g}.\n"
        f"- **Training draws right before fine-tuning** (FT-CADIS's selection rate): {s.selection_images:,} training "
        f"images × {s.selection_draws} draws, the off-the-shelf classifier.\n"
        f"- Sources (`experiments/results/`): {', '.join(f'`{f}`' for f in s.files)}; runs `{BASELINE}` and "
        f"`{TUNED}` at σ = {s.sigma:g}, n0 = {s.n0}, N = {s.n:,}, α = {s.alpha:g}, {s.images} test images.")


def detector_line(sigma: float = 1.0, results: Path = SHIPPED_RESULTS) -> str | None:
    """One sentence on the benchmark's hallucination stage at `sigma` (the off-the-shelf classifier, one-shot):
    hallucinated share and AUROC over all classes and on WEAK_CLASS; None when the files are missing."""
    try:
        detector, per_class = _read(results / "hallucination_detector.csv"), _read(results / "hallucination.csv")
        side = json.loads((results / "hallucination.json").read_text())
        row = detector[(detector["classifier"] == BASELINE) & (detector["sigma"] == sigma)
                       & (detector["mode"] == "one-shot")].iloc[0]
        weak = per_class[(per_class["classifier"] == BASELINE) & (per_class["sigma"] == sigma)
                         & (per_class["mode"] == "one-shot") & (per_class["class"] == WEAK_CLASS)].iloc[0]
    except (CadisError, OSError, ValueError, IndexError, KeyError):
        return None
    return (f"The benchmark's files repeat it on other images ({side['images']} test images × "
            f"{side['draws_per_image']} one-shot draws at σ = {sigma:g}, `hallucination_detector.csv`, "
            f"`hallucination.csv`): {_pct(row['hallucination rate'])} of the draws hallucinated, AUROC "
            f"{row['AUROC (1 − confidence)']:.2f} over all classes; on {WEAK_CLASS.lower()}s "
            f"{_pct(weak['hallucination rate'])} hallucinated, AUROC {weak['AUROC']:.2f}.")

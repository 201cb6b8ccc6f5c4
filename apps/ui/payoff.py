"""The payoff on real images: shipped test images where FT-CADIS certifies a clearly larger radius than the
off-the-shelf classifier on the same noise draws, one Shirt where it loses, their radii drawn, and a live re-count.

UI-free (no streamlit). The pick rule reads only the two runs' rows (`pick_gains`, `pick_loss`, `RULE`); `recount`
runs the models on one image under the bundle's lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from apps.ui.certification import certify_many, shared_draws
from apps.ui.hosting import SHIPPED_RESULTS
from apps.ui.models import ModelBundle
from apps.ui.story import run_file
from apps.ui.style import VERDICT_COLOURS, colour_of
from cadis.analysis.hallucination import DrawScores, score_draws
from cadis.analysis.tables import read_results
from cadis.certification.smoothing import ABSTAIN, Certificate, Smooth, max_radius
from cadis.errors import CadisError

if TYPE_CHECKING:
    import plotly.graph_objects as go

BASELINE, TUNED = "none", "ft-cadis.authors-lora"
LOSER_CLASS = "Shirt"
PICKS = 3
RULE = ("Picked from the shipped runs at one σ, on the same images and noise draws: FT-CADIS predicts the true "
        "class, the off-the-shelf classifier predicts it too or abstains (radius 0), and FT-CADIS's radius is larger "
        "by at least σ/2 ({margin:g} here); the {k} largest differences, at most one image per class (ties: the "
        "lower index). The loss: the {loser} image the off-the-shelf classifier certifies as {loser} whose radius "
        "FT-CADIS cuts the most (a wrong class or an abstention counts as radius 0).")


def margin_for(sigma: float) -> float:
    """How much larger FT-CADIS's radius must be for a pick: σ/2."""
    return sigma / 2


def available_sigmas(results: Path = SHIPPED_RESULTS) -> list[float]:
    """The σ at which both BASELINE and TUNED were certified."""
    found = {float(m.group(1)) for p in results.glob(f"{BASELINE}_s*.tsv")
             if (m := re.fullmatch(rf"{re.escape(BASELINE)}_s(\d*\.?\d+)\.tsv", p.name))}
    return sorted(s for s in found if run_file(TUNED, s, results).is_file())


@dataclass(frozen=True)
class ShippedPair:
    """Both runs at one σ, one row per test image: idx, label, and predict / radius / count_a with the suffixes
    `_base` (BASELINE) and `_tuned` (TUNED). `files` are names only: hosted, no server path is shown."""

    sigma: float
    n0: int
    n: int
    alpha: float
    seed: int
    dataset: str
    files: tuple[str, str]
    shared: bool  # the sidecars agree on everything that draws the noise
    frame: pd.DataFrame

    @property
    def cap(self) -> float:
        """The largest radius N draws can certify at this σ and α."""
        return max_radius(self.sigma, self.n, self.alpha)

    def settings(self) -> str:
        return (f"σ = {self.sigma:g}, N0 = {self.n0}, N = {self.n:,}, α = {self.alpha:g}"
                f"{', the same noise draws' if self.shared else ''}")

    def source(self) -> str:
        """The files and their settings as markdown, one file name a line (a name never wraps at its hyphens)."""
        return f"{self.settings()}:" + "".join(f"  \n`{f}`" for f in self.files)


def load_pair(sigma: float, results: Path = SHIPPED_RESULTS) -> ShippedPair:
    paths = [run_file(BASELINE, sigma, results), run_file(TUNED, sigma, results)]
    for p in paths:
        if not p.is_file():
            raise CadisError(f"No shipped result {p.name}.")
    base, tuned = (read_results(p) for p in paths)
    cols = ["idx", "label", "predict", "radius", "count_a"]
    frame = base[cols].merge(tuned[cols], on=["idx", "label"], suffixes=("_base", "_tuned"))
    cfg = base.attrs["config"]
    return ShippedPair(sigma, int(cfg["n0"]), int(cfg["n"]), float(cfg["alpha"]), int(cfg.get("seed", 0)),
                       str(cfg.get("dataset", "")), (paths[0].name, paths[1].name), shared_draws(base, tuned), frame)


def _effective(frame: pd.DataFrame, suffix: str) -> pd.Series:
    """A run's radius for the true class: its radius where it predicts the label, else 0."""
    return frame[f"radius{suffix}"].where(frame[f"predict{suffix}"] == frame["label"], 0.0)


def pick_gains(frame: pd.DataFrame, margin: float, k: int = PICKS, one_per_class: bool = True) -> pd.DataFrame:
    """The images where TUNED's radius beats BASELINE's by at least `margin` (RULE), largest gain first; adds a
    `gain` column."""
    right = frame["predict_tuned"] == frame["label"]
    base_ok = (frame["predict_base"] == frame["label"]) | (frame["predict_base"] == ABSTAIN)
    gain = frame["radius_tuned"] - frame["radius_base"].where(frame["predict_base"] != ABSTAIN, 0.0)
    found = frame.assign(gain=gain)[right & base_ok & (gain >= margin)]
    found = found.sort_values(["gain", "idx"], ascending=[False, True], kind="stable")
    if one_per_class:
        found = found.drop_duplicates("label")
    return found.head(k).reset_index(drop=True)


def pick_loss(frame: pd.DataFrame, label: int) -> pd.Series | None:
    """The `label` image BASELINE certifies right whose radius TUNED cuts the most (RULE), with a `loss` column;
    None when TUNED loses on none."""
    rows = frame[(frame["label"] == label) & (frame["predict_base"] == label)]
    loss = rows["radius_base"] - _effective(rows, "_tuned")
    rows = rows.assign(loss=loss)[loss > 0]
    if rows.empty:
        return None
    return rows.sort_values(["loss", "idx"], ascending=[False, True], kind="stable").iloc[0]


def verdict(predict: int, radius: float, label: int, classes: list[str]) -> str:
    """What one certificate says, in words: 'Coat, r = 1.23', 'abstains' or 'T-shirt/top (wrong), r = 0.49'."""
    if predict == ABSTAIN:
        return "abstains"
    wrong = "" if predict == label else " (wrong)"
    return f"{classes[predict]}{wrong}, r\u00a0=\u00a0{radius:.2f}"  # no-break spaces: "r =" stays with its value


def radius_figure(row: pd.Series, classes: list[str], cap: float, names: tuple[str, str]) -> go.Figure:
    """Both shipped radii of one image as horizontal bars (a wrong class in red, an abstention as an empty bar
    with its word), on an axis that ends at the largest radius N allows."""
    import plotly.graph_objects as go

    label = int(row["label"])
    fig = go.Figure()
    for name, suffix, method in ((names[0], "_base", BASELINE), (names[1], "_tuned", "ft-cadis")):
        predict, r = int(row[f"predict{suffix}"]), float(row[f"radius{suffix}"])
        colour = colour_of(method) if predict == label else VERDICT_COLOURS["wrong"]
        inside = predict != ABSTAIN and r > 0.5 * cap  # a long bar holds its label: none runs past the cap line
        fig.add_bar(y=[name], x=[r if predict != ABSTAIN else 0.0], orientation="h", marker_color=colour,
                    text=[verdict(predict, r, label, classes)], textposition="inside" if inside else "outside",
                    insidetextanchor="end", textfont=dict(color="white" if inside else "#333"), cliponaxis=False,
                    showlegend=False, hoverinfo="skip")
    fig.add_vline(x=cap, line_dash="dot", line_color="grey")
    fig.update_layout(height=150, margin=dict(l=0, r=10, t=24, b=0), bargap=0.35,
                      title=dict(text=f"certified radius (dotted: the largest N allows, {cap:.2f})",
                                 font=dict(size=12), x=0),
                      xaxis=dict(range=[0, cap * 1.05], fixedrange=True), yaxis=dict(autorange="reversed",
                                                                                     fixedrange=True))
    return fig


@dataclass
class Recount:
    """A live re-count on one image: both classifiers behind the denoiser and the off-the-shelf classifier alone
    (no denoiser), all on the same N0 + N draws, and a few draws to show."""

    base: Certificate
    tuned: Certificate
    alone: Certificate  # the off-the-shelf classifier on the raw noisy draws
    shown: list[DrawScores]  # [off-the-shelf, tuned] on the same few draws
    n0: int
    n: int
    seed: int


def recount(bundle: ModelBundle, x: torch.Tensor, label: int, tuned: torch.nn.Module, sigma: float, n0: int,
            n: int, alpha: float, seed: int, draws: int = 4, batch_size: int = 150) -> Recount:
    """Certify `x` with the bundle's classifier and `tuned` behind its denoiser, and with its classifier alone, on
    the same draws (one seed, one batch size), plus `draws` denoised draws scored by both."""
    base, ft = certify_many(bundle, x, [bundle.classifier, tuned], sigma, n0, n, alpha, seed=seed,
                            batch_size=batch_size)
    alone = Smooth(bundle.classifier, bundle.classifier.num_classes, sigma, batch_size, bundle.acceleration)
    with bundle.lock.turn():
        raw = alone.certify(x, n0, n, alpha, seed=seed)
        shown = score_draws(bundle.smoothing(sigma, batch_size=max(draws, 16)), x, label, draws, seed=seed,
                            classifiers=[bundle.classifier, tuned])
    return Recount(base, ft, raw, shown, n0, n, seed)


def vote_line(cert: Certificate, label: int, classes: list[str], k: int = 3) -> str:
    """'Coat 190 · Shirt 8 · Pullover 2 → Coat, r = 0.91' for one live certificate (votes of its N draws)."""
    counts = np.asarray(cert.counts)
    order = [int(i) for i in np.argsort(-counts, kind="stable")[:k] if counts[i] > 0]
    votes = " · ".join(f"{classes[i]} {int(counts[i])}" for i in order)
    return f"{votes} → {verdict(cert.prediction, cert.radius, label, classes)}"

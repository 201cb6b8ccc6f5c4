"""One colour per classifier or method, and one per verdict, for every chart of the apps.

Green and red mean kept/correct and hallucinated/wrong only; grey means abstain. Methods get colours that are
neither, so a fine-tuned classifier is never red. A run or classifier name is matched to the longest method
name it contains ("none σ=0.25" and "off-the-shelf" are the `none` method; "fine-tuned: fashion-mnist-ft-cadis-s0.5"
is `ft-cadis`); other names get a spare colour chosen by a hash of the name, the same in every chart and session.
"""

from __future__ import annotations

import re
import zlib

VERDICT_COLOURS = {"kept": "#2ca02c", "correct": "#2ca02c", "hallucinated": "#d62728", "wrong": "#d62728",
                   "abstain": "#7f7f7f", "unlabelled": "#bcbd22"}
METHOD_COLOURS = {
    "none": "#1f77b4",  # the off-the-shelf classifier
    "denoised-ce": "#ff7f0e",
    "ft-cadis": "#9467bd",
    "ft-cadis-detached": "#5e3c99",
    "ft-cadis-detached-lam1": "#e377c2",
    "sce-only": "#8c564b",
    "ce-madv": "#17becf",
}
ALIASES = {"off-the-shelf": "none"}
SPARE_COLOURS = ["#393b79", "#8c6d31", "#17a3b8", "#7b4173", "#637939", "#3182bd", "#e6550d", "#843c39"]
DENOISER_DASH = {"one-shot": "solid", "multistep": "dash"}
DENOISER_PATTERN = {"one-shot": "", "multistep": "/"}
SIGMA_DASH = ["solid", "dash", "dot", "dashdot", "longdash"]


def method_of(name: str) -> str | None:
    """The method a run or classifier name stands for: the longest known method name it contains, else None."""
    for alias, method in ALIASES.items():
        if alias in name:
            return method
    found = [m for m in METHOD_COLOURS if m in name]
    return max(found, key=len) if found else None


def colour_of(name: str) -> str:
    """The colour of a classifier, method or run in every chart."""
    method = method_of(name)
    if method is not None:
        return METHOD_COLOURS[method]
    return SPARE_COLOURS[zlib.crc32(name.encode()) % len(SPARE_COLOURS)]


def colour_map(names) -> dict[str, str]:
    """{name: colour} for plotly express's `color_discrete_map`."""
    return {n: colour_of(n) for n in names}


def sigma_of(name: str) -> float | None:
    """The noise level a run's name states ('none σ=0.25', 'ft-cadis-s0.5-20250101'), else None."""
    m = re.search(r"σ=(\d*\.?\d+)", name) or re.search(r"-s(\d*\.?\d+)(?:-|$)", name)
    return float(m.group(1)) if m else None


def sigma_dash(sigma: float | None, sigmas: list[float]) -> str:
    """A line dash per noise level, so runs of one method at several σ share a colour but not a line."""
    if sigma is None or sigma not in sigmas:
        return "solid"
    return SIGMA_DASH[sorted(sigmas).index(sigma) % len(SIGMA_DASH)]


def paint(fig, name_of=lambda trace: trace.name):
    """Give every named trace of a plotly figure its classifier's colour (lines and markers) and, when the names
    state several noise levels, a dash per σ; returns the figure."""
    skip = {None, "", "chance", "best-σ envelope"}
    sigmas = sorted({s for t in fig.data if name_of(t) not in skip and (s := sigma_of(name_of(t))) is not None})
    taken: set[tuple[str, str]] = set()
    for trace in fig.data:
        name = name_of(trace)
        if name in skip:
            continue
        colour = colour_of(name)
        if getattr(trace, "line", None) is not None:
            trace.line.color = colour
            dash = sigma_dash(sigma_of(name), sigmas) if len(sigmas) > 1 else "solid"
            # Two runs of one classifier at one σ (another N, adaptive, a seed): the later one takes a free dash.
            free = [d for d in [dash, *SIGMA_DASH] if (colour, d) not in taken]
            dash = free[0] if free else dash
            taken.add((colour, dash))
            if len(sigmas) > 1 or dash != "solid":
                trace.line.dash = dash
        if getattr(trace, "marker", None) is not None:
            trace.marker.color = colour
    return fig

"""Adaptive CERTIFY: sample in stages and stop once more draws are projected not to change the outcome.

CERTIFY spends all N estimation draws on every image. Here the draws come in a geometric schedule of
looks n_1 < n_2 < ... < n_K = N, and look k bounds p_A at level α_k with Σ α_k = α (Bonferroni; half of
α goes to the final look). We stop early

- to abstain, when even the upper bound on p_A is below 1/2 (more draws would likely not certify), or
- to certify, when no radius in `radii` lies between the radius now and a projection of what the full
  budget would give (the remaining draws voting c_A at the upper confidence bound on p_A); with no
  `radii`, when the two are within `tolerance`.

The projection is a heuristic at the upper confidence bound, not a guarantee: more draws can still move
an image across a listed radius (either way), so a row may differ from the one running on to N would
give (on the same draws, about 0.7% of rows in an audit; docs/adaptive.md). This is about efficiency only.

Soundness: the certificate is wrong only if the lower bound at the look where we stopped exceeds p_A.
That event lies inside the union of the K events "the bound at look k exceeds p_A", each of probability
at most α_k, so the whole procedure fails with probability at most Σ α_k = α, whatever the stopping rule.
See docs/adaptive.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cadis.certification.smoothing import (
    ABSTAIN,
    Certificate,
    DenoisedSmoothing,
    Smooth,
    check_parameters,
    lower_confidence_bound,
    radius,
    upper_confidence_bound,
)
from cadis.errors import CadisError

FIRST_LOOK = 100
# Names the stopping rule and the α split in result sidecars, so files made by another rule never resume.
RULE = "alpha/2 on the final look, projection at the upper bound"


@dataclass(frozen=True)
class AdaptiveSettings:
    """A run's adaptive CERTIFY settings, as its sidecar records them (`rule` names the stopping rule)."""

    tolerance: float
    radii: tuple[float, ...] = ()
    first_look: int = FIRST_LOOK
    rule: str = RULE

    def __post_init__(self) -> None:
        if not 0 <= self.tolerance < math.inf:
            raise CadisError(f"--tolerance must be a finite number >= 0 (got {self.tolerance}); the default is "
                             "sigma/10.")
        if not all(0 <= r < math.inf for r in self.radii):
            raise CadisError(f"--radii must be finite numbers >= 0 (got {','.join(map(str, self.radii))}).")
        if not (self.first_look >= 1 and float(self.first_look).is_integer()):
            raise CadisError(f"first_look must be a whole number >= 1 (got {self.first_look}).")

    def to_json(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance, "radii": list(self.radii), "first_look": self.first_look,
                "rule": self.rule}


def default_tolerance(sigma: float) -> float:
    """σ/10: stop once the radius is within a tenth of σ of the full budget's best."""
    return sigma / 10


def look_schedule(n: int, first: int = FIRST_LOOK) -> list[int]:
    """Looks at n, n/2, n/4, ... down to the last one >= `first` (ascending; always ends at n)."""
    looks = [n]
    while looks[-1] // 2 >= first:
        looks.append(looks[-1] // 2)
    return looks[::-1]


def look_levels(alpha: float, looks: int) -> list[float]:
    """The level of each look: half of α on the final look (where most radii are decided), the other
    half split evenly over the earlier ones. They sum to α, which is all the union bound needs."""
    if looks == 1:
        return [alpha]
    return [alpha / 2 / (looks - 1)] * (looks - 1) + [alpha / 2]


def _radius(sigma: float, p: float) -> float:
    return radius(sigma, p) if p >= 0.5 else -np.inf


def decided(now: float, best: float, tolerance: float, radii: Sequence[float]) -> bool:
    """True when more draws are not expected to matter: with `radii`, when none of them lies in (now, best],
    where `best` is the projection of what the full budget gives; without, when best is within `tolerance`.
    `best` is a projection at the upper confidence bound, not a bound on what more draws can do."""
    if now == -np.inf:  # nothing certified yet
        return False
    if len(radii) > 0:
        return not any(now < r <= best for r in radii)
    return best - now <= tolerance


def certify_sequential(draw: Callable[[int], np.ndarray], sigma: float, n0: int, n: int, alpha: float,
                       tolerance: float, radii: Sequence[float] = (), first_look: int = FIRST_LOOK) -> Certificate:
    """Adaptive CERTIFY over a draw source: `draw(k)` returns the class counts of k fresh draws of f(x + δ)."""
    check_parameters(sigma=sigma, alpha=alpha, n0=n0, n=n)
    if not tolerance >= 0:  # inf: stop at the first look that certifies anything
        raise CadisError(f"tolerance must be >= 0 (got {tolerance}).")
    looks = look_schedule(n, first_look)
    levels = look_levels(alpha, len(looks))
    c_a = int(draw(n0).argmax())
    counts, drawn = None, 0
    for look, level in zip(looks, levels):
        new = draw(look - drawn)
        counts, drawn = (new if counts is None else counts + new), look
        n_a = int(counts[c_a])
        p_a = lower_confidence_bound(n_a, drawn, level)
        if drawn == n:
            break
        # A projection of what the full budget would certify: the remaining draws vote c_A at the upper
        # confidence bound on p_A. A heuristic (more draws can still cross a radius); any stopping rule keeps
        # the union bound, so the certificate stays sound whatever it decides.
        upper = upper_confidence_bound(n_a, drawn, level)
        best = lower_confidence_bound(n_a + math.ceil((n - drawn) * upper), n, levels[-1])
        if best < 0.5 or upper < 0.5:
            break  # futile: abstain now
        if decided(_radius(sigma, p_a), _radius(sigma, best), tolerance, radii):
            break
    if p_a < 0.5:
        return Certificate(ABSTAIN, 0.0, n_a, drawn, p_a, counts)
    return Certificate(c_a, _radius(sigma, p_a), n_a, drawn, p_a, counts)


def certify_adaptive(smooth: Smooth, x: torch.Tensor, n0: int, n: int, alpha: float, seed: int = 0,
                     tolerance: float | None = None, radii: Sequence[float] = (), first_look: int = FIRST_LOOK,
                     progress: Callable[[int], None] | None = None) -> Certificate:
    """Adaptive CERTIFY of one image; `Certificate.n` is the number of estimation draws used.
    The tolerance defaults to σ/10. Each look asks `smooth.sample_counts` for its remainder, whose short last batch
    a compiled engine pads to one of a few shapes (`Smooth.padded`), so the looks do not recompile the models."""
    gen = smooth.generator(x, seed)
    tolerance = default_tolerance(smooth.sigma) if tolerance is None else tolerance
    return certify_sequential(lambda k: smooth.sample_counts(x, k, gen, progress), smooth.sigma, n0, n, alpha,
                              tolerance, radii, first_look)


def certify_adaptive_classifiers(smooth: DenoisedSmoothing, x: torch.Tensor, classifiers: Sequence[torch.nn.Module],
                                 n0: int, n: int, alpha: float, seed: int = 0, tolerance: float | None = None,
                                 radii: Sequence[float] = (), first_look: int = FIRST_LOOK) -> list[Certificate]:
    """Adaptive CERTIFY of classifier_k ∘ denoiser for every k on the same draws, denoising each draw once.
    Certificate k is the one `certify_adaptive` gives with classifier_k alone. Every classifier asks for the
    same batches in the same order (n0, then the looks), so classifier k replays the batches the ones
    before it drew, and a batch beyond them is denoised once for k and every classifier after it."""
    heads = smooth.heads(classifiers)
    gen = smooth.generator(x, seed)
    batches: list[np.ndarray] = []  # the i-th request's class counts, [classifiers × classes]

    def source(k: int) -> Callable[[int], np.ndarray]:
        requests = itertools.count()

        def draw(num: int) -> np.ndarray:
            i = next(requests)
            if i == len(batches):
                counts = np.zeros((len(heads), smooth.num_classes), dtype=np.int64)
                counts[k:] = smooth.sample_counts(x, num, gen, heads=heads[k:])
                batches.append(counts)
            assert batches[i][k].sum() == num, "classifiers must request the same batches"
            return batches[i][k]
        return draw

    tolerance = default_tolerance(smooth.sigma) if tolerance is None else tolerance
    return [certify_sequential(source(k), smooth.sigma, n0, n, alpha, tolerance, radii, first_look)
            for k in range(len(heads))]

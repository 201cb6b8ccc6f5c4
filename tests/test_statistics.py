"""Certificates against closed forms and by simulation, with synthetic base classifiers of known p."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from cadis.certification.smoothing import ABSTAIN, Smooth, lower_confidence_bound, max_radius, radius


class KnownProbabilities:
    """f(x + δ) = c with probability probs[c] exactly: the class is read off the first noise coordinate."""

    def __init__(self, x: torch.Tensor, sigma: float, probs: list[float]):
        self.x, self.sigma = x, sigma
        self.edges = torch.tensor(norm.ppf(np.cumsum(probs)[:-1]), dtype=torch.float32)
        self.num_classes = len(probs)

    def __call__(self, noisy: torch.Tensor) -> torch.Tensor:
        u = (noisy - self.x).flatten(1)[:, 0] / self.sigma  # ~ N(0, 1)
        return torch.nn.functional.one_hot(torch.bucketize(u, self.edges), self.num_classes).float()


def smooth_with(probs: list[float], sigma: float = 0.5) -> tuple[Smooth, torch.Tensor]:
    x = torch.rand(1, 4, 4)
    return Smooth(KnownProbabilities(x, sigma, probs), len(probs), sigma, batch_size=5000), x


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (0, 1), (1, 1), (0, 100000), (99000, 100000), (100000, 100000),
                                 (537, 1000)])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_clopper_pearson_matches_statsmodels(k, n, alpha):
    expected = proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]
    assert lower_confidence_bound(k, n, alpha) == pytest.approx(expected, abs=1e-12)


def test_certify_radius_within_monte_carlo_error_of_closed_form():
    p, sigma, n, alpha = 0.9, 0.5, 20000, 0.001
    smooth, x = smooth_with([p, 1 - p], sigma)
    cert = smooth.certify(x, n0=100, n=n, alpha=alpha, seed=1)
    se = np.sqrt(p * (1 - p) / n)
    assert cert.prediction == 0
    assert abs(cert.count_a / n - p) < 4 * se
    assert cert.p_a_lower == pytest.approx(lower_confidence_bound(cert.count_a, n, alpha))
    assert cert.radius == pytest.approx(sigma * norm.ppf(cert.p_a_lower))
    assert sigma * norm.ppf(p - 8 * se) < cert.radius < sigma * norm.ppf(p)


def test_certify_abstains_when_top_class_below_half():
    smooth, x = smooth_with([0.4, 0.35, 0.25])
    for seed in range(5):
        cert = smooth.certify(x, n0=100, n=2000, alpha=0.001, seed=seed)
        assert cert.prediction == ABSTAIN and cert.radius == 0.0


def test_certify_picks_the_top_class_and_same_seed_same_counts():
    smooth, x = smooth_with([0.1, 0.2, 0.7])
    a, b = (smooth.certify(x, 100, 1000, 0.001, seed=3) for _ in range(2))
    assert a == b and a.prediction == 2


def test_predict_abstains_at_the_right_rate_on_a_50_50_classifier():
    smooth, x = smooth_with([0.5, 0.5])
    alpha, runs = 0.05, 300
    answered = sum(smooth.predict(x, n=200, alpha=alpha, seed=s).prediction != ABSTAIN for s in range(runs))
    assert answered / runs <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / runs)
    assert answered > 0  # the test is exact, not vacuous: it does answer sometimes under the null


def test_predict_answers_on_a_clear_majority():
    smooth, x = smooth_with([0.2, 0.8])
    pred = smooth.predict(x, n=200, alpha=0.001, seed=0)
    assert pred.prediction == 1 and pred.count_a + pred.count_b == 200 and pred.p_value < 0.001


def test_lower_bound_coverage_by_simulation():
    """P[lower bound > p] <= α, estimated over many binomial draws (Clopper-Pearson is exact)."""
    rng = np.random.default_rng(0)
    p, n, alpha, runs = 0.7, 100, 0.05, 4000
    ks = rng.binomial(n, p, size=runs)
    misses = np.mean([lower_confidence_bound(int(k), n, alpha) > p for k in ks])
    assert misses <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / runs)
    assert misses > alpha / 5  # and not trivially conservative


def test_certificate_coverage_through_the_smoothing_engine():
    """End to end: over seeded CERTIFY runs, p_A's lower bound exceeds the true p at most α of the time."""
    p, alpha, runs = 0.8, 0.1, 300
    smooth, x = smooth_with([p, 1 - p])
    misses = np.mean([smooth.certify(x, 10, 200, alpha, seed=s).p_a_lower > p for s in range(runs)])
    assert misses <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / runs)


def test_binom_test_is_not_used_anywhere():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "src" / "cadis"
    assert not [f for f in root.rglob("*.py") if "binom_test(" in f.read_text()]


def test_predict_works_with_a_single_class():
    smooth, x = smooth_with([1.0])
    pred = smooth.predict(x, n=50, alpha=0.001, seed=0)
    assert (pred.prediction, pred.count_a, pred.count_b) == (0, 50, 0) and pred.p_value == 2 * 0.5**50
    assert smooth.certify(x, 10, 50, 0.001).prediction == 0


@pytest.mark.parametrize("kwargs", [dict(sigma=float("nan")), dict(sigma=float("inf")), dict(alpha=float("nan")),
                                    dict(n=float("inf")), dict(n0=2.5), dict(n=0)])
def test_parameters_out_of_range_or_not_finite_are_refused(kwargs):
    from cadis.certification.smoothing import check_parameters
    from cadis.errors import CadisError

    with pytest.raises(CadisError, match="must be"):
        check_parameters(**kwargs)


@pytest.mark.parametrize("sigma, n, alpha", [(0.25, 1000, 0.001), (0.5, 100, 0.01), (1.0, 10_000, 0.001)])
def test_max_radius_is_the_radius_of_n_agreeing_draws(sigma, n, alpha):
    # All N draws agree: the Clopper-Pearson bound is α^(1/N), the largest radius N draws can certify.
    assert max_radius(sigma, n, alpha) == pytest.approx(sigma * norm.ppf(alpha ** (1 / n)), rel=1e-9)
    assert max_radius(sigma, n, alpha) == pytest.approx(radius(sigma, lower_confidence_bound(n, n, alpha)))
    assert max_radius(0.25, 1000, 0.001) == pytest.approx(0.6158, abs=1e-4)  # the cap of the shipped results

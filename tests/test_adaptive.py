"""Adaptive CERTIFY: closed forms for its stopping points, and its soundness by simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint
from test_statistics import smooth_with

from cadis.certification.adaptive import certify_adaptive, certify_sequential, look_levels, look_schedule
from cadis.certification.smoothing import ABSTAIN, lower_confidence_bound, upper_confidence_bound
from cadis.errors import CadisError


def multinomial_source(probs: list[float], seed: int):
    rng = np.random.default_rng(seed)
    return lambda k: rng.multinomial(k, probs)


def test_look_schedule_is_geometric_and_ends_at_n():
    assert look_schedule(1000) == [125, 250, 500, 1000]
    assert look_schedule(10000) == [156, 312, 625, 1250, 2500, 5000, 10000]
    assert look_schedule(50) == [50]


def test_look_levels_sum_to_alpha_with_half_on_the_final_look():
    assert look_levels(0.001, 4) == pytest.approx([0.001 / 6] * 3 + [0.0005])
    assert sum(look_levels(0.05, 7)) == pytest.approx(0.05) and look_levels(0.05, 1) == [0.05]


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (999, 1000), (1000, 1000)])
def test_upper_bound_matches_statsmodels(k, n):
    expected = proportion_confint(k, n, alpha=2 * 0.01, method="beta")[1]
    assert upper_confidence_bound(k, n, 0.01) == pytest.approx(expected, abs=1e-12)


def test_all_votes_for_one_class_stop_at_the_first_look_past_the_largest_radius():
    # σ=0.25, N=1000, early looks at level α/6. All-hits bounds: (α/6)^(1/n), radius at n=250 is 0.456,
    # at 500 it is 0.528, and the full budget's best (level α/2) is 0.613; 0.5 is the largest radius of interest.
    sigma, level = 0.25, 0.001 / 6
    cert = certify_sequential(multinomial_source([1.0, 0.0], 0), sigma, 100, 1000, 0.001,
                              tolerance=0.0, radii=[0.25, 0.5])
    assert cert.n == 500 and cert.prediction == 0 and cert.count_a == 500
    assert cert.radius == pytest.approx(sigma * norm.ppf(level ** (1 / 500)))
    assert cert.radius >= 0.5


def test_tolerance_stops_once_the_radius_is_close_to_the_full_budget_best():
    sigma, level = 0.5, 0.001 / 6
    best = sigma * norm.ppf((0.001 / 2) ** (1 / 1000))  # the final look has level α/2
    at = {n: sigma * norm.ppf(level ** (1 / n)) for n in (125, 250, 500)}
    tolerance = best - at[250] + 1e-9  # close enough at 250, not at 125
    cert = certify_sequential(multinomial_source([1.0, 0.0], 0), sigma, 100, 1000, 0.001, tolerance)
    assert cert.n == 250 and cert.radius == pytest.approx(at[250])


def test_a_losing_top_class_abstains_at_the_first_look():
    cert = certify_sequential(multinomial_source([0.3, 0.7 / 2, 0.7 / 2], 1), 0.5, 100, 1000, 0.001, 0.05)
    assert cert.prediction == ABSTAIN and cert.n == 125


def test_zero_tolerance_and_no_radii_spend_the_full_budget_at_the_final_look_level():
    cert = certify_sequential(multinomial_source([0.9, 0.1], 2), 0.5, 100, 1000, 0.001, 0.0)
    assert cert.n == 1000
    assert cert.p_a_lower == pytest.approx(lower_confidence_bound(cert.count_a, 1000, 0.001 / 2))
    assert cert.radius == pytest.approx(0.5 * norm.ppf(cert.p_a_lower))


@pytest.mark.parametrize("p", [0.9, 0.95])
def test_the_projection_stops_early_yet_keeps_the_full_budget_radius_within_tolerance(p):
    # Below p≈1 the full budget's radius is predictable: it mostly stops by N/2, and the radius
    # it certifies is (almost always) within the tolerance of the one the full budget gives at level α/K.
    sigma, n, tolerance = 0.5, 10000, 0.05
    full = sigma * norm.ppf(lower_confidence_bound(int(p * n), n, look_levels(0.001, len(look_schedule(n)))[-1]))
    certs = [certify_sequential(multinomial_source([p, 1 - p], t), sigma, 100, n, 0.001, tolerance)
             for t in range(200)]
    assert np.median([c.n for c in certs]) <= n / 2
    assert np.mean([c.radius < full - tolerance - 0.01 for c in certs]) <= 0.03


def test_negative_tolerance_is_refused():
    with pytest.raises(CadisError, match="tolerance"):
        certify_sequential(multinomial_source([1.0, 0.0], 0), 0.5, 100, 1000, 0.001, -1.0)


def failure_rate(certify_once, p: float, trials: int) -> float:
    """Share of runs whose certificate claims more than the truth: p_A's lower bound above p."""
    fails = 0
    for t in range(trials):
        cert = certify_once(t)
        fails += cert.prediction == 0 and cert.p_a_lower > p
    return fails / trials


@pytest.mark.parametrize("tolerance,radii", [(0.0, ()), (0.05, ()), (np.inf, ()), (0.0, (0.25, 0.5, 0.75))])
@pytest.mark.parametrize("p", [0.7, 0.95])
def test_adaptive_certificates_hold_at_level_alpha_by_simulation(p, tolerance, radii):
    alpha, trials = 0.05, 2000
    rate = failure_rate(lambda t: certify_sequential(multinomial_source([p, 1 - p], t), 0.5, 20, 400, alpha,
                                                     tolerance, radii, first_look=25), p, trials)
    assert rate <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)


def peeking_failure_rate(p: float, levels: list[float], n: int, trials: int) -> float:
    """The worst stopping rule: an adversary who knows p stops at the first look whose bound exceeds it."""
    looks, fails = look_schedule(n, 25), 0
    rng = np.random.default_rng(0)
    for _ in range(trials):
        draws = rng.random(n) < p
        fails += any(lower_confidence_bound(int(draws[:k].sum()), k, lv) > p for k, lv in zip(looks, levels))
    return fails / trials


def test_bonferroni_survives_an_adversarial_stopping_rule_that_breaks_naive_peeking():
    alpha, n, p, trials = 0.05, 400, 0.7, 4000
    se = 3 * np.sqrt(alpha * (1 - alpha) / trials)
    assert len(look_schedule(n, 25)) == 5
    assert peeking_failure_rate(p, [alpha] * 5, n, trials) > alpha + se  # the simulation sees a broken procedure
    assert peeking_failure_rate(p, look_levels(alpha, 5), n, trials) <= alpha + se


def test_adaptive_through_the_engine_matches_the_closed_form_and_saves_draws():
    smooth, x = smooth_with([0.999, 0.001], sigma=0.5)
    cert = certify_adaptive(smooth, x, n0=100, n=10000, alpha=0.001, seed=3, radii=[0.5, 1.0])
    assert cert.prediction == 0 and cert.radius >= 1.0 and cert.n < 10000
    early_level = 0.001 / 12
    assert cert.radius == pytest.approx(0.5 * norm.ppf(lower_confidence_bound(cert.count_a, cert.n, early_level)))
    again = certify_adaptive(smooth, x, n0=100, n=10000, alpha=0.001, seed=3, radii=[0.5, 1.0])
    assert (again.n, again.count_a) == (cert.n, cert.count_a)
    torch.testing.assert_close(torch.as_tensor(again.counts), torch.as_tensor(cert.counts))

"""The fine-tuning job's time left: from the live rate as steps arrive, never the one-time estimate after step 3."""

from __future__ import annotations

import pytest
import torch

from apps.ui.jobs import RATE_WINDOW, FinetuneJob, duration, time_left
from cadis.training.finetune import FinetuneConfig


def job(steps: int = 100, eval_every: int = 0, eval_size: int = 0, estimate_s: float | None = 600.0) -> FinetuneJob:
    config = FinetuneConfig(steps=steps, eval_every=eval_every, eval_size=eval_size)
    j = FinetuneJob(config, torch.nn.Identity(), None, None, estimate_s=estimate_s)  # never started: no thread runs
    j.status = "running"
    return j


def step(j: FinetuneJob, at: float) -> None:
    j.steps.append({"kind": "step", "step": len(j.steps) + 1})
    j.step_times.append(at)


def test_before_three_steps_the_estimate_counts_down(monkeypatch):
    j = job(estimate_s=600.0)
    j.started = 1000.0
    monkeypatch.setattr("apps.ui.jobs.time.time", lambda: 1100.0)
    assert j.seconds_left() == pytest.approx(500.0)
    step(j, 1100.0)
    step(j, 1102.0)
    assert j.seconds_left() == pytest.approx(500.0)  # two steps give one duration: not a rate yet
    monkeypatch.setattr("apps.ui.jobs.time.time", lambda: 2000.0)
    assert j.seconds_left() == 0.0  # an estimate overrun shows 0, never a negative time


def test_the_live_rate_takes_over_and_follows_a_slower_machine():
    j = job(steps=100)
    for k in range(4):  # 2 s per step
        step(j, 10.0 + 2 * k)
    assert j.seconds_left() == pytest.approx(2.0 * 96)
    last = j.step_times[-1]
    for k in range(1, RATE_WINDOW + 2):  # the machine gets busy: 6 s per step
        step(j, last + 6 * k)
    assert j.seconds_left() == pytest.approx(6.0 * (100 - len(j.steps)))  # the window holds only the slow steps


def test_one_long_step_for_an_evaluation_does_not_move_the_rate_and_evaluations_left_are_added():
    j = job(steps=100, eval_every=25, eval_size=200)
    j.eval_s = 30.0
    times = [0.0, 2.0, 4.0, 40.0, 42.0]  # an evaluation between steps 3 and 4
    for t in times:
        step(j, t)
    assert j.seconds_left() == pytest.approx(2.0 * 95 + 4 * 30.0)  # median 2 s; evaluations at 25, 50, 75, 100


def test_finished_and_queued_jobs():
    j = job(estimate_s=120.0)
    j.status = "queued"
    assert j.seconds_left() == 120.0  # waiting: the whole estimate
    j.status = "done"
    assert j.seconds_left() == 0.0
    assert duration(30) == "about 30 s" and duration(600) == "about 10 min" and duration(7200) == "about 2.0 h"


def test_time_left_of_a_certification_follows_its_rate_so_far():
    assert time_left(10.0, 0.25) == pytest.approx(30.0)  # a quarter in 10 s: three quarters in 30 s
    assert time_left(10.0, 1.0) == 0.0 and time_left(0.0, 0.0) is None

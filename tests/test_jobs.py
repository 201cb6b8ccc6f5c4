"""The fine-tuning job (apps.ui.jobs): its time left from the live rate as steps arrive (never the one-time estimate
after step 3), its queue, its estimate before it starts, and the starting point it measures."""

from __future__ import annotations

import pytest
import torch

from apps.ui.hosting import HOSTED_LIMITS
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


def _job(owner: str, steps: int = 1):
    from apps.ui.jobs import FinetuneJob
    from cadis.training.finetune import FinetuneConfig

    job = FinetuneJob(FinetuneConfig(steps=steps, batch_size=1), None, None, None, owner=owner, estimate_s=10.0)
    job.start = lambda: setattr(job, "status", "running") or job  # no thread: the queue's bookkeeping alone
    return job


def test_the_job_queue_runs_one_job_and_numbers_the_waiters():
    from apps.ui.jobs import JobQueue

    queue = JobQueue()
    a, b, c = (queue.submit(_job(o)) for o in "abc")
    assert (a.status, b.status, c.status) == ("running", "queued", "queued")
    assert (queue.position(a), queue.position(b), queue.position(c)) == (0, 1, 2)
    b.stop()  # a waiter leaves the line; the one behind moves up
    assert b.status == "cancelled" and queue.position(c) == 1 and queue.latest("b") is b
    a.status = "done"
    a.on_finish(a)  # what the worker thread does at the end
    assert c.status == "running" and queue.running() is c and queue.wait_ahead_s(c) == 0.0


def test_run_time_estimates_and_warmup():
    from apps.ui.jobs import QUICK_DEMO, Speed, duration, estimate_seconds, warmup_for
    from cadis.training.finetune import FinetuneConfig

    speed = Speed(denoise_s=0.01, classify_s=0.002)
    ce = FinetuneConfig(method="denoised-ce", steps=100, batch_size=16, num_draws=2, eval_every=0, eval_size=0)
    madv = FinetuneConfig(method="ft-cadis", steps=100, batch_size=16, num_draws=2, adv_steps=1, eval_every=0,
                          eval_size=0)
    assert estimate_seconds(ce, speed) == pytest.approx(100 * 32 * 0.012 + 2)
    assert estimate_seconds(madv, speed) > estimate_seconds(ce, speed)  # the attack and the consistency pass
    assert (warmup_for(1000), warmup_for(120), warmup_for(4)) == (50, 6, 1)  # 5% of the run, at least one step
    assert QUICK_DEMO["steps"] <= HOSTED_LIMITS.steps and QUICK_DEMO["batch_size"] <= HOSTED_LIMITS.batch
    assert [duration(s) for s in (12, 300, 7200)] == ["about 10 s", "about 5 min", "about 2.0 h"]


def test_a_job_measures_its_starting_point(bundle):
    # The live test-accuracy curve starts at the off-the-shelf classifier, on the run's own images and noise.
    from apps.ui.jobs import FinetuneJob
    from cadis.training.finetune import FinetuneConfig, evaluate_denoised

    config = FinetuneConfig(steps=1, batch_size=4, sigma=0.5, eval_size=16, eval_every=1, seed=3)
    job = FinetuneJob(config, bundle.denoiser, bundle.classifier, bundle.dataset, bundle.dataset)
    job._baseline()
    expected = evaluate_denoised(bundle.classifier, bundle.denoiser, bundle.dataset, 0.5, 16, 4, 3)
    assert job.evals == [{"kind": "eval", "step": 0, "test_acc_denoised": expected}]

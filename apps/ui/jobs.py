"""Fine-tuning in the background: `FinetuneJob` runs `finetune` in a thread that a UI polls, `JobQueue` runs
one job at a time and tells the others their place in line, and the page's settings and time estimates.

The outcome (saved, or stopped with a checkpoint) comes from the `FinetuneResult` that `finetune` returns.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from cadis.data import ImageDataset
from cadis.errors import CadisError
from cadis.models.classifier import ImageClassifier

log = logging.getLogger(__name__)
RATE_WINDOW = 10  # steps whose durations give the live rate: recent enough to follow a busier or calmer machine


# The quick demo: well within 5 minutes on 2 CPU cores (benchmarks/app_speed.py --quick-demo measures it). Measured
# on a shared 2-core machine, fashion-mnist preset: 0.49 s per step (median, 0.22 s at best) and 1.2 s per 200-image
# evaluation, 60 s in all from Start (1.7 s to the first step); while others' jobs loaded the cores (load 4.5),
# 1.7 s per step and 4.5 s per evaluation, about 4 minutes in all. So the steps stay at 120. At σ = 0.5 the
# off-the-shelf classifier is already right on 84.5% of denoised test images; measured on the training split, the
# loss falls by about a fifth (0.50 → 0.41, first vs last fifth of the steps) while the test accuracy holds
# (0.835–0.85 at each evaluation); with lr 3e-3 the loss stayed flat. LoRA, M = 2 draws, T = 1 attack step and
# λ = 2 as in the authors' LoRA recipe.
QUICK_DEMO = {"method": "ft-cadis", "sigma": 0.5, "num_draws": 2, "lam": 2.0, "eps": 0.125, "adv_steps": 1,
              "lora": True, "lora_r": 4, "steps": 120, "batch_size": 16, "subset": 2000, "lr": 1e-2,
              "eval_every": 30, "eval_size": 200, "seed": 0}
# The runs shipped in src/cadis/assets/finetuned (recipes.RECIPES["short"]): over an hour on 2 CPU cores.
SHIPPED_RECIPE = {"method": "ft-cadis", "sigma": 0.25, "num_draws": 4, "lam": 4.0, "eps": 0.125, "adv_steps": 4,
                  "lora": True, "lora_r": 4, "steps": 1000, "batch_size": 32, "subset": 0, "lr": 1e-3,
                  "eval_every": 200, "eval_size": 500, "seed": 0}
SETTINGS = {"quick demo": QUICK_DEMO, "shipped runs' recipe": SHIPPED_RECIPE}


def warmup_for(steps: int) -> int:
    """Warmup steps: the same share of the run as the shipped runs' 50 of 1000 (recipes' warmup_fraction)."""
    from cadis.training.recipes import get_recipe

    return max(1, round(get_recipe("short").warmup_fraction * steps))


@dataclass(frozen=True)
class Speed:
    """Seconds per image on this machine: one denoiser forward, one classifier forward + backward."""

    denoise_s: float
    classify_s: float


def measure_speed(denoiser: torch.nn.Module, classifier: torch.nn.Module, shape: tuple[int, int, int],
                  batch: int = 16, sigma: float = 0.5) -> Speed:
    """Time one batch through the denoiser and through the classifier with a backward pass (after a warm-up)."""
    x = torch.rand(batch, *shape)
    with torch.inference_mode():
        denoiser(x[:2], sigma)
        start = time.perf_counter()
        denoised = denoiser(x, sigma)
        denoise_s = (time.perf_counter() - start) / batch
    denoised = denoised.clone().requires_grad_(True)
    start = time.perf_counter()
    classifier(denoised).logsumexp(1).sum().backward()
    return Speed(denoise_s, (time.perf_counter() - start) / batch)


def evaluations(config) -> int:
    """How many test evaluations a job makes: the baseline before the start, then every `eval_every` steps (0: one
    at the end)."""
    if not config.eval_size:
        return 0
    if not config.eval_every:
        return 2  # at the end, and before the start (FinetuneJob's baseline)
    return math.ceil(config.steps / config.eval_every) + 1


def estimate_seconds(config, speed: Speed, mask_rate: float = 0.7) -> float:
    """About how long a run takes: per step, M·B draws denoised and classified forward and backward, plus for the
    L_MAdv methods T attack steps and one consistency pass on the masked share; plus the evaluations."""
    from cadis.training.objective import _ADVERSARIAL

    draws = config.batch_size * config.num_draws
    passes = 1 + (mask_rate * (config.adv_steps + 1) if config.method in _ADVERSARIAL and config.lam > 0 else 0)
    per_step = draws * (speed.denoise_s + passes * speed.classify_s)
    per_eval = config.eval_size * (speed.denoise_s + speed.classify_s / 3)
    return config.steps * per_step + evaluations(config) * per_eval + 2.0


def time_left(elapsed: float, share: float) -> float | None:
    """Seconds left of a task `share` (0-1) done after `elapsed` seconds, at its rate so far; None before any."""
    return elapsed * (1 - share) / share if share > 0 else None


def duration(seconds: float) -> str:
    """'about 40 s', 'about 3 min', 'about 1.2 h'."""
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5):.0f} s"
    if seconds < 90 * 60:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


class FinetuneJob:
    """Runs `cadis.training.finetune.finetune` in a daemon thread and collects its events for a UI to poll.

    The UI thread only reads `steps`, `evals`, `status`, `error`, `path`; the worker only appends,
    so no lock is needed (list.append is atomic). `stop()` sets the event the loop checks each step
    (or cancels a job that still waits in a `JobQueue`). `owner` is the visitor who started it."""

    def __init__(self, config, denoiser: torch.nn.Module, classifier: ImageClassifier, train_set: ImageDataset,
                 test_set: ImageDataset | None = None, owner: str | None = None, estimate_s: float | None = None):
        config.validate()  # bad settings fail here, in the UI thread, with a CadisError
        self.config = config
        self.owner = owner
        self.estimate_s = estimate_s  # before the start; `seconds_left` measures once steps are done
        self.on_finish = None  # called from the worker thread when the run ends (JobQueue starts the next)
        self._args = (denoiser, classifier, train_set, test_set)
        self.steps: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.status = "created"
        self.error: str | None = None
        self.path: Path | None = None
        self.started = time.time()
        self.finished: float | None = None
        self.phase = "starting"  # what the job does before its first step, in words
        self.step_times: list[float] = []  # when each step ended: the live rate comes from the latest ones
        self.eval_s: float | None = None  # how long the baseline evaluation took: one evaluation's cost
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cadis-finetune", daemon=True)

    def start(self) -> FinetuneJob:
        self.status = "running"
        self.started = time.time()
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.status in ("created", "queued"):
            self.status, self.finished = "cancelled", time.time()
            if self.on_finish is not None:
                self.on_finish(self)
        self.stop_event.set()

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def active(self) -> bool:
        """Queued or running: not finished yet."""
        return self.status in ("created", "queued", "running")

    def seconds_left(self) -> float | None:
        """The time to the end, from the live rate: the median of the latest steps' durations (an evaluation between
        two steps makes one of them long, the median ignores it) times the steps left, plus the evaluations left at
        what the baseline one took. Before two steps are done: the estimate made before the start, less the time
        spent."""
        if self.status != "running":
            return 0.0 if not self.active else self.estimate_s
        done = self.steps[-1]["step"] if self.steps else 0
        if len(self.step_times) < 3:
            return None if self.estimate_s is None else max(0.0, self.estimate_s - self.elapsed)
        recent = self.step_times[-(RATE_WINDOW + 1):]
        per_step = statistics.median(b - a for a, b in zip(recent, recent[1:]))
        cfg = self.config
        evals_left = 0
        if cfg.eval_size and cfg.eval_every:
            evals_left = math.ceil(cfg.steps / cfg.eval_every) - done // cfg.eval_every
        elif cfg.eval_size:
            evals_left = 1
        return per_step * (cfg.steps - done) + evals_left * (self.eval_s or 0.0)

    def activity(self) -> str:
        """What the job does now, in words: before its first step (loading, the baseline), or the steps."""
        if self.status == "running" and not self.steps:
            return f"warming up: {self.phase}"
        return self.status

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started

    @property
    def progress(self) -> float:
        last = self.steps[-1]["step"] if self.steps else 0
        return min(1.0, last / max(self.config.steps, 1))

    def _event(self, event: dict[str, Any]) -> None:
        if event["kind"] == "step":
            self.step_times.append(time.time())
            self.steps.append(event)
        elif event["kind"] == "eval":
            self.evals.append(event)

    def _baseline(self) -> None:
        """The test accuracy before training, on the same images and noise as the run's evaluations: the curve
        then starts where the off-the-shelf classifier stands (finetune evaluates only after steps)."""
        from cadis.training.finetune import evaluate_denoised

        denoiser, classifier, _, test_set = self._args
        cfg = self.config
        if test_set is None or not cfg.eval_size or self.stop_event.is_set():
            return
        self.phase = f"measuring the starting test accuracy on {cfg.eval_size} denoised test images"
        start = time.time()
        acc = evaluate_denoised(classifier, denoiser, test_set, cfg.sigma, cfg.eval_size, cfg.batch_size, cfg.seed)
        self.eval_s = time.time() - start
        self.evals.append({"kind": "eval", "step": 0, "test_acc_denoised": acc})

    def _run(self) -> None:
        from cadis.training.finetune import finetune

        try:
            self._baseline()
            self.phase = (f"preparing {'a LoRA adapter' if self.config.lora else 'the classifier'} and the first "
                          f"batch of {self.config.batch_size} images × {self.config.num_draws} denoised draws")
            result = finetune(self.config, *self._args[:3], self._args[3], callback=self._event,
                              stop_event=self.stop_event)
            self.path, self.status = result.path, "stopped" if result.stopped else "done"
        except CadisError as e:
            self.status, self.error = "failed", str(e)
        except Exception as e:  # the UI shows one line; the traceback goes to the server log
            log.exception("fine-tuning failed")
            self.status, self.error = "failed", f"Fine-tuning failed unexpectedly: {type(e).__name__}: {e}"
        finally:
            self.finished = time.time()
            if self.on_finish is not None:
                self.on_finish(self)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.steps))

    @property
    def name(self) -> str:
        """The run's name: its folder's, which the pages list it by."""
        return Path(self.config.out).name

    def outcome(self, show_paths: bool = True) -> str | None:
        """What a saved or stopped run says: where it went, or (`show_paths` False, on a shared server) only its
        name, so that no server path or visitor id reaches the page. None while it is neither."""
        if self.status == "done":
            where = f"Saved to {self.path}." if show_paths else f"Saved as your run “{self.name}”."
            return f"{where} Pick it as “{self.name}” on the Hallucinations page."
        if self.status == "stopped":
            kept = f"checkpoint in {self.path}." if show_paths else f"a checkpoint of “{self.name}” was kept."
            return f"Stopped; {kept} Start the same settings again to train a new run."
        return None


ONE_RUN = ("You already have a fine-tuning run going or waiting; this shared server runs one per visitor. Stop "
           "it, or wait for it to finish, then start again.")
QUEUE_FULL = ("The fine-tuning queue is full ({n} runs are waiting); nothing was started. Please try again in a "
              "few minutes.")


class JobQueue:
    """Fine-tuning jobs of every session, one running at a time (the cores are few), the others waiting in order.

    `submit` starts a job at once when nothing runs, else queues it; `position` tells a waiter how many jobs are
    ahead. Finished jobs stay listed (the latest few) so their sessions can show the outcome."""

    def __init__(self, keep: int = 20):
        self._lock = threading.Lock()
        self.jobs: list[FinetuneJob] = []
        self._keep = keep

    def submit(self, job: FinetuneJob, max_waiting: int | None = None, one_per_owner: bool = False) -> FinetuneJob:
        """Start `job`, or queue it behind the running one. A CadisError, and nothing started, when its owner
        already has an active job (`one_per_owner`) or when it would wait behind `max_waiting` others already."""
        with self._lock:  # checked and appended together: two tabs of one visitor cannot both get in
            if one_per_owner and any(j.active and j.owner == job.owner for j in self.jobs):
                raise CadisError(ONE_RUN)
            if max_waiting is not None and self.running() is not None and len(self.waiting()) >= max_waiting:
                raise CadisError(QUEUE_FULL.format(n=len(self.waiting())))
            job.on_finish = self._finished
            job.status = "queued"
            self.jobs.append(job)
            self._advance()
        return job

    def _finished(self, job: FinetuneJob) -> None:
        with self._lock:
            self._advance()

    def _advance(self) -> None:  # with the lock held
        if not any(j.running for j in self.jobs):
            nxt = next((j for j in self.jobs if j.status == "queued"), None)
            if nxt is not None:
                nxt.start()
        done = [j for j in self.jobs if not j.active]
        for j in done[:-self._keep] if len(done) > self._keep else []:
            self.jobs.remove(j)

    def running(self) -> FinetuneJob | None:
        return next((j for j in self.jobs if j.running), None)

    def waiting(self) -> list[FinetuneJob]:
        return [j for j in self.jobs if j.status == "queued"]

    def position(self, job: FinetuneJob) -> int:
        """Jobs ahead of `job`: 0 while it runs (or is done), else the running one plus the earlier waiters."""
        if job.status != "queued":
            return 0
        waiting = self.waiting()
        return waiting.index(job) + (self.running() is not None) if job in waiting else 0

    def latest(self, owner: str | None = None) -> FinetuneJob | None:
        """The newest job of `owner` (any owner's when None)."""
        mine = [j for j in self.jobs if owner is None or j.owner == owner]
        return mine[-1] if mine else None

    def wait_ahead_s(self, job: FinetuneJob) -> float | None:
        """About how long until `job` starts: what is left of the running job and of the waiters ahead."""
        if job.status != "queued":
            return 0.0
        ahead = [j for j in self.jobs if j.running] + self.waiting()[:self.waiting().index(job)]
        left = [j.seconds_left() for j in ahead]
        return None if any(t is None for t in left) else sum(left)


_QUEUE = JobQueue()


def shared_queue() -> JobQueue:
    """The process-wide queue: every session's runs take turns on the few cores, and a visitor who reloads (a new
    session) finds theirs there again."""
    return _QUEUE

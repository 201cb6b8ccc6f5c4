"""`--precision auto` and `--compile auto`: the engine a certification job runs, chosen by what this machine does well.

Precision: `acceleration.auto_precision` (on a CPU the faster of fp32 and bf16 for these models, timed once).

Compiling costs time once per batch shape (minutes on a cold cache) and then makes each draw somewhat faster. `auto`
compiles when the job's expected saving exceeds that cost. The eager speed is timed on the job's own batch; the
compile cost per shape and the saving are measured on this machine the first time a job is large enough to be worth
it (one eager and two compiled batches) and cached in ~/.cache/cadis; until then they are assumed from
benchmarks/RESULTS.md. A resumed file keeps the precision and compile choice it was started with, and the sidecar
records why (`precision_auto`, `compile_auto`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from cadis.acceleration import Acceleration, auto_precision, cached_record, machine_slot, store_record
from cadis.certification.output import find_sidecar, read_sidecar
from cadis.certification.runner import CertifyConfig
from cadis.certification.smoothing import SHAPE_BUCKETS, DenoisedSmoothing, Smooth, bucket
from cadis.errors import CadisError

COLD_COMPILE_S = 120.0  # per batch shape, cold: the slowest measured (bf16 on an AVX2-only EPYC, 213 s for two)
ASSUMED_SAVING = 0.10  # the smallest share of eager time compiling saved in benchmarks/RESULTS.md (bf16, AVX-512)


def job_shapes(n0: int, n: int, batch_size: int, adaptive: bool = False, rows: int | None = None) -> int:
    """How many shapes a job compiles: its batches (full ones and each remainder), cut into forward passes of `rows`
    draws (default: whole batches; `Smooth.forward_rows`), each padded to its bucket (`Smooth.padded`)."""
    rows = rows or batch_size
    if adaptive:  # any look's remainder: every bucket may come up
        return SHAPE_BUCKETS
    batches = {b for k in (n0, n) for b in ((batch_size,) if k >= batch_size else ()) + (k % batch_size,) if b}
    passes = {p for b in batches for p in ((rows,) if b >= rows else ()) + (b % rows,) if p}
    return len({bucket(p, rows) for p in passes})


def time_batch(smooth: Smooth, x: torch.Tensor) -> float:
    """Seconds for one full batch of draws of `x` through `smooth`."""
    start = time.perf_counter()
    smooth.sample_counts(x, smooth.batch_size, smooth.generator(x, 0))
    return time.perf_counter() - start


def choose_compile(make: Callable[[Acceleration], Smooth], acceleration: Acceleration, x: torch.Tensor,
                   draws: int, shapes: int, key: str) -> tuple[Smooth, dict]:
    """The engine to certify with, `acceleration` compiled or not, and why (for the sidecar). `make` builds the engine
    for an acceleration; `x` is an image of the job's shape; the job runs `draws` draws in `shapes` batch shapes;
    `key` names the models, mode, σ and batch for the cache."""
    eager = make(replace(acceleration, compile=False))
    time_batch(eager, x)  # warm-up: allocations, one-time kernels
    eager_s = time_batch(eager, x)
    job_s = eager_s * draws / eager.batch_size
    slot = machine_slot(f"compile|{key}|{acceleration.precision}")
    known = cached_record(slot)
    per_shape, saving = (known["compile_s_per_shape"], known["saving"]) if known else (COLD_COMPILE_S, ASSUMED_SAVING)
    record = {"eager_job_s": round(job_s, 1), "saving": round(saving, 3),
              "compile_cost_s": round(per_shape * shapes, 1), "measured": known is not None,
              "rule": "compile when the saving times the job's eager time exceeds the compile cost"}
    if saving * job_s <= per_shape * shapes:
        return eager, {"compile": False, **record}
    if known is not None:
        return make(replace(acceleration, compile=True)), {"compile": True, **record}
    # The first large job on this machine and model: measure, so that later choices need not assume.
    compiled = make(replace(acceleration, compile=True))
    first = time_batch(compiled, x)  # compiles this shape
    warm = time_batch(compiled, x)
    measured = {"compile_s_per_shape": round(max(first - warm, 0.0), 2), "saving": round(1 - warm / eager_s, 3),
                "eager_batch_s": round(eager_s, 4), "compiled_batch_s": round(warm, 4)}
    store_record(slot, measured)
    # This shape is compiled now; the others still cost their compile.
    chosen = measured["saving"] * job_s > measured["compile_s_per_shape"] * (shapes - 1)
    return (compiled if chosen else eager), {"compile": chosen, **record, "measurement": measured}


def started_acceleration(out: Path) -> dict | None:
    """The acceleration a result file was started with (None for a new file; the runner explains a bad sidecar)."""
    side = find_sidecar(out)
    if side is None:
        return None
    try:
        started = read_sidecar(side, out, "").get("acceleration")
    except (CadisError, AttributeError):
        return None
    return started if isinstance(started, dict) else None


def choose_engine(smooth: DenoisedSmoothing, make: Callable[[Acceleration], DenoisedSmoothing], config: CertifyConfig,
                  started: dict | None, images: int, precision: bool = True,
                  compile: bool = True) -> tuple[DenoisedSmoothing, CertifyConfig]:
    """The engine for a job of `images` images and its config, with `precision` and/or `compile` chosen
    automatically: a resumed file's (`started`) where it has one, else measured. `smooth` is the engine built for
    `config`, `make` builds one for another acceleration; the config's notes record each choice."""
    notes = dict(config.notes)
    acceleration = config.acceleration
    if precision:
        if (started or {}).get("precision") in ("fp32", "bf16"):
            chosen, record = started["precision"], {"resumed": True}
        else:
            key = f"{config.denoiser}|{config.classifier}|{config.mode}|sigma={config.sigma:g}"
            chosen, record = auto_precision(smooth.classify_noisy, smooth.denoiser.image_shape, config.sigma, key,
                                            smooth.denoiser.device, min(config.batch_size, 64))
        acceleration = replace(acceleration, precision=chosen)
        smooth.acceleration = acceleration  # autocast is read per call: no need to rebuild
        notes["precision_auto"] = {"precision": chosen, **record}
    if compile:
        if isinstance((started or {}).get("compile"), bool):
            acceleration = replace(acceleration, compile=started["compile"])
            smooth, record = make(acceleration), {"compile": started["compile"], "resumed": True}
        else:
            key = (f"{config.denoiser}|{config.classifier}|{config.mode}|sigma={config.sigma:g}"
                   f"|batch={config.batch_size}")
            x = torch.zeros(smooth.denoiser.image_shape, device=smooth.denoiser.device)
            shapes = job_shapes(config.n0, config.n, config.batch_size, config.adaptive is not None,
                                smooth.forward_rows(x.device))
            smooth, record = choose_compile(make, acceleration, x, max(images, 0) * (config.n0 + config.n), shapes,
                                            key)
        notes["compile_auto"] = record
    return smooth, replace(config, acceleration=smooth.acceleration, notes=notes)


def describe_engine(config: CertifyConfig) -> str:
    """One line for the console: the precision and compilation a job runs with, and why where `auto` chose them."""
    acceleration, notes = config.acceleration, config.notes
    precision, compiled = acceleration.precision, "compiled" if acceleration.compile else "eager"
    if (why := notes.get("precision_auto")) is not None:
        if why.get("resumed"):
            reason = "kept from the file being resumed"
        elif "seconds_per_call" in why:
            timings = ", ".join(f"{name} {s:.3f} s" for name, s in why["seconds_per_call"].items())
            reason = f"per call of {why.get('batch')} on this machine: {timings}"
        else:
            reason = why.get("rule", "")
        precision += f" (auto: {reason})"
    if (why := notes.get("compile_auto")) is not None:
        if why.get("resumed"):
            reason = "kept from the file being resumed"
        elif "measurement" in why:
            m = why["measurement"]
            reason = (f"measured now: compiling takes {m['compile_s_per_shape']:.0f} s per batch shape and saves "
                      f"{m['saving']:.0%} of about {_seconds(why['eager_job_s'])}")
        else:
            source = "measured on this machine" if why.get("measured") else "assumed until a large job measures it"
            reason = (f"saves {why['saving']:.0%} of about {_seconds(why['eager_job_s'])} against about "
                      f"{_seconds(why['compile_cost_s'])} to compile, {source}")
        compiled += f" (auto: {reason})"
    return f"engine: {precision}; {compiled}"


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"

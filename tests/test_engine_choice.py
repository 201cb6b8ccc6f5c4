"""`--compile auto`: compile only where it pays back, measured once per machine; and no vote from NaN logits."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch

from cadis.acceleration import Acceleration, cached_record, compile_cache_dir, machine_slot
from cadis.certification import engine_choice
from cadis.certification.engine_choice import ASSUMED_SAVING, COLD_COMPILE_S, choose_compile, job_shapes
from cadis.certification.runner import CertifyConfig
from cadis.certification.smoothing import Smooth
from cadis.errors import CadisError

WEIGHT = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))


def linear(noisy: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(noisy.flatten(1), WEIGHT)


def make(acceleration: Acceleration) -> Smooth:
    return Smooth(linear, 3, 0.5, batch_size=32, acceleration=acceleration)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "cadis" / "precision.json"


def test_job_shapes_count_full_batches_and_each_remainders_bucket():
    assert job_shapes(100, 1000, 500) == 2  # 100 → 125, and 500
    assert job_shapes(100, 100, 500) == 1  # both pad to 125
    assert job_shapes(500, 1000, 500) == 1
    assert job_shapes(100, 10_000, 256, adaptive=True) == 4
    # A CPU's forward passes of 100: 500-draw batches are 5 passes of 100, so n0=100, N=1000 compile one shape.
    assert job_shapes(100, 1000, 500, rows=100) == 1
    assert job_shapes(20, 150, 500, rows=100) == 3  # 20 → 25; 150 → 100 + 50


def test_a_short_job_runs_eager_without_measuring_and_says_why(cache):
    x = torch.rand(1, 4, 4)
    smooth, why = choose_compile(make, Acceleration(), x, draws=1100, shapes=2, key="tiny")
    assert not smooth.acceleration.compile and why["compile"] is False and why["measured"] is False
    assert why["compile_cost_s"] == 2 * COLD_COMPILE_S and why["saving"] == ASSUMED_SAVING
    assert why["eager_job_s"] < ASSUMED_SAVING * 2 * COLD_COMPILE_S * 10  # small by construction
    assert cached_record(machine_slot("compile|tiny|fp32")) is None  # nothing measured, nothing cached


def test_a_job_long_enough_measures_once_and_later_choices_use_the_measurement(cache):
    x = torch.rand(1, 4, 4)
    huge = 10**12  # draws: any compile pays back
    smooth, why = choose_compile(make, Acceleration(), x, draws=huge, shapes=1, key="tiny")
    assert why["measured"] is False and "measurement" in why
    stored = cached_record(machine_slot("compile|tiny|fp32"))
    assert stored == why["measurement"] and stored["compile_s_per_shape"] >= 0
    assert why["compile"] == (stored["saving"] * why["eager_job_s"] > 0)  # one shape, compiled while measuring
    assert smooth.acceleration.compile == why["compile"]
    # The next job reads the measurement instead of assuming.
    cache.write_text(json.dumps({machine_slot("compile|tiny|fp32"): {**stored, "saving": 0.5,
                                                                      "compile_s_per_shape": 1e9}}))
    smooth, why = choose_compile(make, Acceleration(), x, draws=huge, shapes=1, key="tiny")
    assert why["measured"] is True and why["compile"] == (0.5 * why["eager_job_s"] > 1e9)
    assert smooth.acceleration.compile == why["compile"]


def test_compiled_graphs_are_cached_per_machine_kind(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = compile_cache_dir()
    assert first.parent == tmp_path / "cadis" / "inductor"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SOME_OTHER_ISA")  # what the ISA is limited to changes the folder
    assert compile_cache_dir() != first
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    Acceleration(compile=True).prepare(linear)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(compile_cache_dir())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_count_no_vote(bad):
    def broken(noisy):  # a broken kernel: argmax would give class 0, a unanimous vote
        out = linear(noisy)
        out[0, 1] = bad
        return out

    with pytest.raises(CadisError, match="NaN or infinite logits.*--precision fp32"):
        Smooth(broken, 3, 0.5, batch_size=32).certify(torch.rand(1, 4, 4), 10, 50, 0.001)


def test_the_console_line_says_what_runs_and_why():
    describe = engine_choice.describe_engine
    config = CertifyConfig(denoiser="d", classifier="c", dataset="toy", sigma=0.25, n0=10, n=100)
    assert describe(config) == "engine: fp32; eager"
    timed = {"precision": "bf16", "seconds_per_call": {"fp32": 0.2, "bf16": 0.1}, "batch": 64}
    assumed = {"compile": False, "eager_job_s": 3.25, "saving": 0.1, "compile_cost_s": 240.0, "measured": False}
    line = describe(replace(config, acceleration=Acceleration("bf16"),
                            notes={"precision_auto": timed, "compile_auto": assumed}))
    assert line == ("engine: bf16 (auto: per call of 64 on this machine: fp32 0.200 s, bf16 0.100 s); eager (auto: "
                    "saves 10% of about 3.2 s against about 240 s to compile, assumed until a large job measures it)")
    measured = {**assumed, "compile": True, "measurement": {"compile_s_per_shape": 14.2, "saving": 0.16}}
    line = describe(replace(config, acceleration=Acceleration(compile=True), notes={"compile_auto": measured}))
    assert line.endswith("compiled (auto: measured now: compiling takes 14 s per batch shape and saves 16% of about "
                         "3.2 s)")
    resumed = {"precision_auto": {"precision": "fp32", "resumed": True}, "compile_auto": {"compile": False,
                                                                                        "resumed": True}}
    kept = "(auto: kept from the file being resumed)"
    assert describe(replace(config, notes=resumed)) == f"engine: fp32 {kept}; eager {kept}"

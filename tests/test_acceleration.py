"""Speed levers: they change how the base classifier runs, never the counting or the statistics."""

from __future__ import annotations

import pytest
import torch
from test_statistics import KnownProbabilities

from cadis.acceleration import Acceleration, default_acceleration, largest_batch
from cadis.certification.smoothing import Smooth
from cadis.errors import CadisError
from cadis.training.finetune import FinetuneConfig


def test_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(CadisError, match="fp32, bf16, fp16"):
        Acceleration("int8")
    with pytest.raises(CadisError, match="precision"):
        FinetuneConfig(precision="int8").validate()


def test_cpu_default_is_exact_fp32():
    assert default_acceleration("cpu") == Acceleration("fp32", channels_last=False, compile=False)


def test_bf16_reaches_the_base_classifier_and_counts_stay_exact():
    seen = []

    def base(noisy):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        logits = torch.nn.functional.linear(noisy.flatten(1), weight)
        seen.append(logits.dtype)
        return logits

    weight = torch.randn(3, 16)
    x = torch.rand(1, 4, 4)
    counts = Smooth(base, 3, 0.5, batch_size=64, acceleration=Acceleration("bf16")).sample_counts(
        x, 200, torch.Generator().manual_seed(0))
    assert seen[0] == (True, torch.bfloat16) and seen[1] == torch.bfloat16
    assert counts.sum() == 200


def test_channels_last_is_applied_to_the_modules():
    conv = torch.nn.Conv2d(1, 4, 3)
    Acceleration(channels_last=True).prepare(conv, [conv])
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_compiled_engine_gives_the_same_counts_as_eager():
    x = torch.rand(1, 4, 4)
    base = KnownProbabilities(x, 0.5, [0.6, 0.3, 0.1])
    eager = Smooth(base, 3, 0.5, batch_size=100).sample_counts(x, 300, torch.Generator().manual_seed(1))
    compiled = Smooth(base, 3, 0.5, batch_size=100, acceleration=Acceleration(compile=True))
    assert (compiled.sample_counts(x, 300, torch.Generator().manual_seed(1)) == eager).all()


def test_largest_batch_halves_until_the_forward_fits():
    tried = []

    def forward(b):
        tried.append(b)
        if b > 300:
            raise torch.OutOfMemoryError("CUDA out of memory")

    assert largest_batch(forward, 4096) == 256 and tried == [4096, 2048, 1024, 512, 256]

    def never_fits(b):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(CadisError, match="does not fit in GPU memory"):
        largest_batch(never_fits, 8)


def test_measured_precision_picks_a_candidate_records_the_machine_and_measures_once(tmp_path):
    from cadis.acceleration import PRECISIONS, machine, measured_precision

    calls = []
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

    def forward(x):
        calls.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return model(x)

    cache = tmp_path / "precision.json"
    best, record = measured_precision(forward, torch.randn(32, 64), "tiny", cache=cache)
    assert best in PRECISIONS and best == min(record["seconds_per_call"], key=record["seconds_per_call"].get)
    assert set(record["seconds_per_call"]) == {"fp32", "bf16"} and record["machine"] == machine()
    assert torch.bfloat16 in calls and torch.float32 in calls  # each candidate really ran at its precision
    assert "cpu" in record["machine"] and "vector" in record["machine"]
    n = len(calls)
    again, _ = measured_precision(forward, torch.randn(32, 64), "tiny", cache=cache)
    assert again == best and len(calls) == n  # cached per machine and key: not measured again
    measured_precision(forward, torch.randn(32, 64), "another model", cache=cache)
    assert len(calls) > n
    cache.write_text("{not json")  # a corrupt cache is measured again, not an error
    assert measured_precision(forward, torch.randn(32, 64), "tiny", cache=cache)[0] in PRECISIONS


def test_certify_auto_precision_is_measured_recorded_in_the_sidecar_and_kept_on_resume(tmp_path, monkeypatch):
    import json

    from cadis.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "auto.tsv"
    argv = ["certify", "--preset", "fashion-mnist", "--sigma", "0.25", "--n0", "10", "--n", "20", "--out", str(out)]
    assert main([*argv, "--max", "1"]) == 0
    sidecar = json.loads((tmp_path / "auto.tsv.json").read_text())
    chosen = sidecar["acceleration"]["precision"]
    assert chosen in ("fp32", "bf16") and sidecar["precision_auto"]["precision"] == chosen
    assert set(sidecar["precision_auto"]["seconds_per_call"]) == {"fp32", "bf16"}
    # --compile auto (the default): one image at N=20 cannot pay back a compile, and the sidecar says why.
    assert sidecar["acceleration"]["compile"] is False and sidecar["compile_auto"]["compile"] is False
    assert sidecar["compile_auto"]["eager_job_s"] < sidecar["compile_auto"]["compile_cost_s"]
    (record,) = json.loads((tmp_path / "cache" / "cadis" / "precision.json").read_text()).values()
    assert record["precision"] == chosen and record["machine"] == sidecar["precision_auto"]["machine"]

    # The cache now says the other precision: a resumed file keeps the one it was started with.
    other = "bf16" if chosen == "fp32" else "fp32"
    cache = tmp_path / "cache" / "cadis" / "precision.json"
    cache.write_text(json.dumps({k: {**v, "precision": other} for k, v in json.loads(cache.read_text()).items()}))
    assert main([*argv, "--max", "2"]) == 0
    resumed = json.loads((tmp_path / "auto.tsv.json").read_text())
    assert resumed["acceleration"]["precision"] == chosen and resumed["precision_auto"] == sidecar["precision_auto"]
    assert resumed["compile_auto"] == sidecar["compile_auto"]  # the first run's record stays with the file
    assert len((tmp_path / "auto.tsv").read_text().splitlines()) == 3

    # A new file follows the cache.
    assert main([*argv[:-1], str(tmp_path / "new.tsv"), "--max", "1"]) == 0
    assert json.loads((tmp_path / "new.tsv.json").read_text())["acceleration"]["precision"] == other

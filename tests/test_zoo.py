"""Zoo training resumes exactly, and the embedded architectures fit their FLOP budgets."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from cadis.training.schedules import batch_indices, warmup_cosine
from experiments.zoo.architectures import count_flops, fmnist_unet, fmnist_vit
from experiments.zoo.training import ClassifierTrainConfig, train_classifier


def _cfg(tmp_path, name):
    return ClassifierTrainConfig(out=str(tmp_path / name), export=str(tmp_path / f"{name}-export"), steps=6,
                                 batch_size=16, lr=1e-3, weight_decay=0.05, warmup=2, seed=3)


def test_interrupted_and_resumed_training_equals_an_uninterrupted_run(tmp_path):
    straight = train_classifier(_cfg(tmp_path, "a"))
    assert train_classifier(_cfg(tmp_path, "b"), stop_at=4) is None  # checkpoints and stops at step 4
    resumed = train_classifier(_cfg(tmp_path, "b"))
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [line.split(",")[0] for line in (tmp_path / "b" / "loss.csv").read_text().splitlines()[1:]]
    assert steps == ["4", "6"]


def test_data_order_and_schedule():
    assert torch.equal(batch_indices(100, 10, 3, 0), batch_indices(100, 10, 3, 0))
    epoch = torch.cat([batch_indices(100, 10, s, 0) for s in range(10)])
    assert sorted(epoch.tolist()) == list(range(100))
    assert warmup_cosine(0, 10, 100) == 0.1 and warmup_cosine(10, 10, 100) == 1.0 and warmup_cosine(100, 10, 100) < 1e-9


def test_embedded_architectures_fit_the_flop_budgets():
    x = torch.rand(1, 1, 28, 28)
    assert count_flops(fmnist_unet(), x, torch.tensor([10])) <= 150e6
    assert count_flops(fmnist_vit(), x) <= 100e6


def test_a_second_stage_starts_from_the_export_and_records_the_recipe(tmp_path):
    import json
    from dataclasses import replace

    from experiments.zoo.card import _train_line

    first = train_classifier(_cfg(tmp_path, "first"))
    stage2 = replace(_cfg(tmp_path, "second"), steps=2, lr=1e-9, seed=4, init_from=str(first))
    second = train_classifier(stage2)
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    # with a negligible learning rate the second stage stays at the first stage's weights
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    fresh = load_file(train_classifier(replace(stage2, out=str(tmp_path / "fresh"), export=str(tmp_path / "fx"),
                                                init_from=None)) / "model.safetensors")
    assert not all(torch.allclose(a[k], fresh[k], atol=1e-3) for k in a)
    info = json.loads((second / "training.json").read_text())
    assert info["init_from"]["config"]["out"] == str(tmp_path / "first")
    assert _train_line(info).startswith("6 steps × batch 16 (seed 3") and ", then 2 steps" in _train_line(info)

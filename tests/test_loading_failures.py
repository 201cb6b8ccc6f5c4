"""Every way a saved model can be broken ends in a CadisError that names the file and says what to do,
for timm and transformers classifiers, LoRA adapters and diffusion denoisers alike; non-finite weights
are refused when loaded and never saved."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cadis.errors import CadisError
from cadis.models.denoiser import DiffusionDenoiser
from cadis.models.loading import check_finite, load_classifier, save_classifier
from cadis.models.lora import apply_lora


@pytest.fixture(scope="module")
def adapter_dir(tiny_classifier_dir, tmp_path_factory) -> Path:
    clf = apply_lora(load_classifier(str(tiny_classifier_dir)))
    with torch.no_grad():
        for p in clf.parameters():
            if p.requires_grad:
                p.add_(0.1)
    return save_classifier(clf, tmp_path_factory.mktemp("adapter") / "adapter", "adapter")


@pytest.fixture(scope="module")
def transformers_dir(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=8, num_channels=1, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32, num_labels=3)
    path = tmp_path_factory.mktemp("hf-vit")
    ViTForImageClassification(cfg).save_pretrained(path)
    return path


# ---- what is done to a copy of the model directory


def truncate(name: str, size: int):
    return lambda d: os.truncate(d / name, size)


def write(name: str, text: str):
    return lambda d: (d / name).write_text(text)


def remove(name: str):
    return lambda d: (d / name).unlink()


def drop_tensor(name: str, part: str):
    def mutate(d: Path) -> None:
        tensors = load_file(d / name)
        del tensors[next(k for k in sorted(tensors) if part in k)]
        save_file(tensors, d / name, metadata={"format": "pt"})
    return mutate


def poison(name: str):
    """One NaN in the first floating tensor of a weights file."""
    def mutate(d: Path) -> None:
        tensors = load_file(d / name)
        key = next(k for k in sorted(tensors) if tensors[k].is_floating_point())
        flat = tensors[key].clone().view(-1)
        flat[0] = float("nan")
        tensors[key] = flat.view_as(tensors[key])
        save_file(tensors, d / name, metadata={"format": "pt"})
    return mutate


def edit_json(name: str, **changes):
    def mutate(d: Path) -> None:
        data = json.loads((d / name).read_text())
        data.update(changes)
        (d / name).write_text(json.dumps(data))
    return mutate


TIMM = [
    ("truncated weights", truncate("model.safetensors", 2000), "truncated or corrupt"),
    ("0-byte weights", truncate("model.safetensors", 0), "is empty"),
    ("no weights", remove("model.safetensors"), "no model.safetensors"),
    ("garbage config", write("config.json", "garbage{"), "not valid JSON"),
    ("empty config file", write("config.json", ""), "is empty"),
    ("{} as config", write("config.json", "{}"), "neither an architecture"),
    ("list as config", write("config.json", "[1, 2]"), "not an object"),
    ("unknown architecture", edit_json("config.json", architecture="no_such_model"), "do not match"),
    ("bad model_args", edit_json("config.json", model_args={"embed_dim": 15}), "do not match"),
    ("bad label_names", edit_json("config.json", label_names="abc"), "label_names"),
    ("missing key", drop_tensor("model.safetensors", "head.weight"), "head.weight"),
    ("NaN weight", poison("model.safetensors"), "non-finite"),
]
TRANSFORMERS = [
    ("truncated weights", truncate("model.safetensors", 2000), "truncated or corrupt"),
    ("0-byte weights", truncate("model.safetensors", 0), "is empty"),
    ("garbage config", write("config.json", "\x00\x01garbage"), "not valid JSON"),
    ("missing key", drop_tensor("model.safetensors", "classifier.weight"), "lacks trained weights"),
    ("NaN weight", poison("model.safetensors"), "non-finite"),
]
ADAPTER = [
    ("garbage cadis_adapter.json", write("cadis_adapter.json", "garbage"), "not valid JSON"),
    ("{} as cadis_adapter.json", write("cadis_adapter.json", "{}"), "names no base_classifier"),
    ("bad classes", edit_json("cadis_adapter.json", classes=7), "classes"),
    ("garbage adapter_config.json", write("adapter_config.json", "garbage"), "not valid JSON"),
    ("{} as adapter_config.json", write("adapter_config.json", "{}"), "no peft_type"),
    ("no adapter_config.json", remove("adapter_config.json"), "adapter_config.json is missing"),
    ("truncated weights", truncate("adapter_model.safetensors", 100), "truncated or corrupt"),
    ("0-byte weights", truncate("adapter_model.safetensors", 0), "is empty"),
    ("no weights", remove("adapter_model.safetensors"), "is missing"),
    ("missing LoRA factor", drop_tensor("adapter_model.safetensors", "lora_B"), "lacks 1 of the adapter's tensors"),
    ("missing head", drop_tensor("adapter_model.safetensors", "head"), "lacks the tensor"),
    ("missing base", edit_json("cadis_adapter.json", base_classifier="local-dir:/nonexistent/vit"), "does not exist"),
    ("NaN weight", poison("adapter_model.safetensors"), "non-finite"),
]
DENOISER = [
    ("truncated weights", truncate("unet/diffusion_pytorch_model.safetensors", 5000), "truncated or corrupt"),
    ("0-byte weights", truncate("unet/diffusion_pytorch_model.safetensors", 0), "is empty"),
    ("garbage unet config", write("unet/config.json", "garbage"), "not valid JSON"),
    ("{} as unet config", write("unet/config.json", "{}"), "no _class_name"),
    ("garbage scheduler config", write("scheduler/scheduler_config.json", "garbage"), "not valid JSON"),
    ("{} as scheduler config", write("scheduler/scheduler_config.json", "{}"), "no _class_name"),
    ("no scheduler config", remove("scheduler/scheduler_config.json"), "has no scheduler"),
    ("bad unet config", edit_json("unet/config.json", block_out_channels=[8]), "Could not load"),
    ("missing key", drop_tensor("unet/diffusion_pytorch_model.safetensors", "conv_in.weight"), "conv_in.weight"),
    ("NaN weight", poison("unet/diffusion_pytorch_model.safetensors"), "non-finite"),
]


def broken_copy(src: Path, tmp_path: Path, mutate) -> Path:
    d = tmp_path / "model"
    shutil.copytree(src, d)
    mutate(d)
    return d


def assert_clean(error: CadisError, match: str, directory: Path) -> None:
    msg = str(error)
    assert match in msg and "\n" not in msg
    assert str(directory) in msg or "non-finite" in msg  # names the file or the model
    assert any(w in msg for w in ("restore", "Restore", "re-save", "Retrain", "put the base", "give", "Give"))


@pytest.mark.parametrize("spec_prefix", ["local-dir:", ""])
@pytest.mark.parametrize("case,mutate,match", TIMM, ids=[c[0] for c in TIMM])
def test_a_broken_timm_directory(case, mutate, match, spec_prefix, tiny_classifier_dir, tmp_path):
    d = broken_copy(tiny_classifier_dir, tmp_path, mutate)
    with pytest.raises(CadisError) as e:
        load_classifier(f"{spec_prefix}{d}")
    assert_clean(e.value, match, d)


@pytest.mark.parametrize("case,mutate,match", TRANSFORMERS, ids=[c[0] for c in TRANSFORMERS])
def test_a_broken_transformers_directory(case, mutate, match, transformers_dir, tmp_path):
    d = broken_copy(transformers_dir, tmp_path, mutate)
    for spec in (str(d), f"hf:{d}"):
        with pytest.raises(CadisError) as e:
            load_classifier(spec)
        assert_clean(e.value, match, d)


@pytest.mark.parametrize("case,mutate,match", ADAPTER, ids=[c[0] for c in ADAPTER])
def test_a_broken_adapter(case, mutate, match, adapter_dir, tiny_classifier_dir, tmp_path):
    d = broken_copy(adapter_dir, tmp_path, mutate)
    meta = json.loads((d / "cadis_adapter.json").read_text()) if case.startswith(("missing", "NaN", "bad")) else None
    if meta is not None and "/nonexistent" not in meta.get("base_classifier", ""):
        # the copy sits elsewhere: point it at its base (the relative path no longer reaches it)
        (d / "cadis_adapter.json").write_text(json.dumps({**meta, "base_classifier": str(tiny_classifier_dir)}))
    with pytest.raises(CadisError) as e:
        load_classifier(str(d))
    assert_clean(e.value, match, d)


@pytest.mark.parametrize("case,mutate,match", DENOISER, ids=[c[0] for c in DENOISER])
def test_a_broken_denoiser(case, mutate, match, tiny_denoiser_dir, tmp_path):
    d = broken_copy(tiny_denoiser_dir, tmp_path, mutate)
    with pytest.raises(CadisError) as e:
        DiffusionDenoiser.from_pretrained(d)
    assert_clean(e.value, match, d)


def test_intact_copies_still_load(tiny_classifier_dir, transformers_dir, adapter_dir, tiny_denoiser_dir, tmp_path):
    load_classifier(str(broken_copy(tiny_classifier_dir, tmp_path / "a", lambda d: None)))
    load_classifier(str(broken_copy(transformers_dir, tmp_path / "b", lambda d: None)))
    load_classifier(str(adapter_dir))
    DiffusionDenoiser.from_pretrained(broken_copy(tiny_denoiser_dir, tmp_path / "c", lambda d: None))


def test_check_finite_on_modules_and_directories(tiny_classifier_dir, tmp_path):
    clf = load_classifier(str(tiny_classifier_dir))
    check_finite(clf)
    check_finite(tiny_classifier_dir)  # the files, without building the model
    bad = broken_copy(tiny_classifier_dir, tmp_path, poison("model.safetensors"))
    with pytest.raises(CadisError, match="non-finite weights .* in 1 of"):
        check_finite(bad)
    with torch.no_grad():
        next(clf.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(CadisError, match="non-finite"):
        check_finite(clf)
    for fmt in ("adapter", "merged"):  # never saved
        lora = apply_lora(load_classifier(str(tiny_classifier_dir)))
        with torch.no_grad():
            next(p for p in lora.parameters() if p.requires_grad).fill_(float("nan"))
        with pytest.raises(CadisError, match="non-finite"):
            save_classifier(lora, tmp_path / fmt, fmt)
        assert not (tmp_path / fmt).exists()
    truncated = broken_copy(tiny_classifier_dir, tmp_path / "t", truncate("model.safetensors", 100))
    with pytest.raises(CadisError, match="truncated"):
        check_finite(truncated)

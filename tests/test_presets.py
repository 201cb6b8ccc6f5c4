"""Presets fail fast, with what to do, when their files are missing offline."""

from __future__ import annotations

import dataclasses

import pytest

from cadis.errors import CadisError
from cadis.models.presets import PRESETS, get_preset, resolve_models


def test_online_preset_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(CadisError, match="not cached"):
        get_preset("cifar10").check_available()


def test_missing_local_files_name_the_fix(tmp_path):
    broken = dataclasses.replace(PRESETS["fashion-mnist"], denoiser=str(tmp_path / "gone"))
    with pytest.raises(CadisError, match="zoo train-denoiser"):
        broken.load_models()


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(CadisError, match="fashion-mnist"):
        get_preset("imagenet-xl")


def test_resolve_models_uses_the_preset_unless_models_are_named(tmp_path):
    preset = PRESETS["fashion-mnist"]
    assert resolve_models("fashion-mnist") is preset
    assert resolve_models("fashion-mnist", preset.denoiser, preset.classifier) is preset  # its own models
    named = resolve_models("fashion-mnist", classifier=str(tmp_path))
    assert named.custom and (named.name, named.sigma, named.denoiser) == (preset.name, preset.sigma, preset.denoiser)
    assert named.classifier == str(tmp_path) and not named.online  # both models are local directories
    assert resolve_models("fashion-mnist", classifier="hf:org/name").online
    assert resolve_models("fashion-mnist", dataset="cifar10").dataset == "cifar10"


def test_resolve_models_without_a_preset_needs_every_part():
    custom = resolve_models(None, "google/ddpm-cifar10-32", "hf:org/name", "cifar10")
    assert custom.custom and custom.online and (custom.name, custom.sigma, custom.n) == ("custom", 0.25, 10000)
    with pytest.raises(CadisError, match="--preset"):
        resolve_models(None, "google/ddpm-cifar10-32", "hf:org/name")

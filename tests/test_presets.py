"""Presets fail fast, with what to do, when their files are missing offline."""

from __future__ import annotations

import dataclasses

import pytest

from cadis_core.errors import CadisError
from cadis_core.presets import PRESETS, get_preset


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

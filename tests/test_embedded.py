"""The shipped embedded default loads offline and performs as its model card says."""

from __future__ import annotations

import json

import pytest

from cadis.analysis.evaluation import clean_accuracy, denoising_metrics
from cadis.models.presets import MODELS, get_preset


@pytest.fixture(scope="module")
def preset_models():
    preset = get_preset("fashion-mnist")
    denoiser, classifier = preset.load_models()
    return denoiser, classifier, preset.load_dataset("test")


def test_clean_accuracy_on_500_test_images(preset_models):
    _, classifier, test = preset_models
    assert clean_accuracy(classifier, test, limit=500) >= 0.88


def test_denoised_accuracy_matches_the_model_card(preset_models):
    denoiser, classifier, test = preset_models
    card = json.loads((MODELS / "card.json").read_text())
    measured = denoising_metrics(denoiser, classifier, test, 0.25, seed=0, limit=500)["denoised_acc"]
    assert abs(measured - card["sigmas"]["0.25"]["denoised_acc"]) <= 0.05


def test_model_card_is_within_the_size_and_flop_budgets():
    card = json.loads((MODELS / "card.json").read_text())
    assert card["denoiser"]["flops"] <= 150e6 and card["classifier"]["flops"] <= 100e6
    total = sum(f.stat().st_size for f in (MODELS.parent).rglob("*") if f.is_file())
    assert total <= 30e6

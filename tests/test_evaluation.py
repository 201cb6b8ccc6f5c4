"""Selection and mask rates per class: what FT-CADIS's selection sees before training."""

from __future__ import annotations

import pytest
import torch

from cadis.analysis.evaluation import selection_rates
from cadis.data import ImageDataset
from cadis.models.denoiser import DiffusionDenoiser


class _Constant(torch.nn.Module):
    """Predicts class `k` for every image."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.full((len(x),), self.k), 4).float()


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    return ImageDataset(torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 4, ["a", "b", "c", "d"], "toy")


def test_a_constant_classifier_keeps_exactly_its_class(tiny_denoiser_dir):
    denoiser = DiffusionDenoiser.from_pretrained(tiny_denoiser_dir)
    table = selection_rates(denoiser, _Constant(2), _data(), 0.25, num_draws=3, batch_size=10)
    assert table.loc["c", "selection_rate"] == table.loc["c", "mask_rate"] == 1.0
    assert (table.drop(["c", "all"])[["selection_rate", "mask_rate"]] == 0).all().all()
    assert table.loc["all"].tolist() == [24, 0.25, 0.25] and table["images"].drop("all").tolist() == [6] * 4


def test_every_draw_right_is_rarer_than_one_draw_right(tiny_denoiser_dir):
    from conftest import make_tiny_vit

    denoiser = DiffusionDenoiser.from_pretrained(tiny_denoiser_dir)
    torch.manual_seed(0)
    vit = make_tiny_vit(num_classes=4).eval()
    four = selection_rates(denoiser, vit, _data(60), 0.5, num_draws=4, batch_size=25)
    one = selection_rates(denoiser, vit, _data(60), 0.5, num_draws=1, batch_size=25)
    assert (four["mask_rate"] <= four["selection_rate"]).all()
    assert one["mask_rate"].tolist() == pytest.approx(one["selection_rate"].tolist())
    assert 0 < four.loc["all", "selection_rate"] < 1  # not a degenerate classifier

"""Classifiers from timm local-dir and transformers directories, with resizing and normalisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cadis.errors import CadisError
from cadis.models.loading import load_classifier

from conftest import make_tiny_vit


def test_timm_local_dir_loads_the_saved_weights_and_labels(tiny_classifier_dir):
    clf = load_classifier(f"local-dir:{tiny_classifier_dir}")
    ref = make_tiny_vit().eval()
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(clf(x), ref((x - 0.5) / 0.5), atol=1e-5)
    assert clf.classes == [f"class{i}" for i in range(10)]
    bare = load_classifier(str(tiny_classifier_dir))  # a bare directory works too
    assert torch.allclose(bare(x), clf(x))


def test_wrapper_adapts_channels_and_size(tiny_classifier_dir):
    clf = load_classifier(f"local-dir:{tiny_classifier_dir}")
    grey = torch.rand(2, 1, 56, 56)
    rgb = grey.expand(-1, 3, -1, -1)
    resized = F.interpolate(grey, size=(28, 28), mode="bicubic", antialias=True)
    assert torch.allclose(clf(rgb), clf(grey), atol=1e-5)
    assert torch.allclose(clf(grey), clf(resized), atol=1e-5)


def test_transformers_local_directory(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32, num_labels=10,
                    id2label={i: f"c{i}" for i in range(10)}, label2id={f"c{i}": i for i in range(10)})
    model = ViTForImageClassification(cfg).eval()
    model.save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                      image_std=[0.2, 0.3, 0.4]).save_pretrained(tmp_path)
    clf = load_classifier(str(tmp_path))
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(clf(x), model(pixel_values=(x - mean) / std).logits, atol=1e-5)
    assert clf.classes[3] == "c3" and clf.input_size == (3, 32, 32)
    assert clf(torch.rand(2, 1, 28, 28)).shape == (2, 10)  # grey 28×28 is adapted


def test_missing_classifier_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CadisError, match="no config.json"):
        load_classifier(f"local-dir:{tmp_path}")
    with pytest.raises(CadisError, match="does not exist"):
        load_classifier(str(tmp_path / "missing") + "/")

"""Datasets: IDX parsing, the search order, the embedded test split and the missing-dataset error."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from cadis import data
from cadis.errors import CadisError


def _write_idx(path, array, gz=True):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(payload)


def test_read_idx_round_trip_and_truncation(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    assert (data.read_idx(tmp_path / "a.gz") == arr).all()
    (tmp_path / "b").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(CadisError, match="truncated"):
        data.read_idx(tmp_path / "b")


def test_explicit_directory_comes_first(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.full((3, 28, 28), 255))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 3]), gz=False)
    ds = data.load_fashion_mnist("test", root=tmp_path)
    assert ds.images.shape == (3, 1, 28, 28) and ds.images.max() == 1.0 and ds.labels.tolist() == [1, 2, 3]
    assert ds.classes[0] == "T-shirt/top"


def test_embedded_test_split_is_shipped_and_complete():
    assert (data.EMBEDDED_DATA / "t10k-images-idx3-ubyte.gz").is_file()
    imgs = data.read_idx(data.EMBEDDED_DATA / "t10k-images-idx3-ubyte.gz")
    labels = data.read_idx(data.EMBEDDED_DATA / "t10k-labels-idx1-ubyte.gz")
    assert imgs.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10


def test_missing_dataset_names_the_places_and_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    monkeypatch.setattr(data, "EMBEDDED_DATA", tmp_path / "assets")
    monkeypatch.setenv("CADIS_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(CadisError) as e:
        data.load_fashion_mnist("train")
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and str(tmp_path / "debian") in msg and "env" in msg


def test_image_folder(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        Image.fromarray(np.full((8, 8, 3), 200 if c == "dog" else 10, np.uint8)).save(tmp_path / c / "0.png")
    ds = data.load_dataset(str(tmp_path))
    assert ds.classes == ["cat", "dog"] and ds.images.shape == (2, 3, 8, 8)
    assert ds.images[1].mean() == pytest.approx(200 / 255)


# ---------------------------------------------------------------- a user's own images, brought to the models' input


def _save(path, array, mode=None):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _folder(tmp_path, images: dict[str, list[np.ndarray]]):
    for cls, arrays in images.items():
        for i, a in enumerate(arrays):
            _save(tmp_path / cls / f"{i}.png", a)
    return tmp_path


def test_image_folder_of_mixed_sizes_is_brought_to_one_size_and_says_how(tmp_path):
    root = _folder(tmp_path, {"a": [np.full((8, 8, 3), 40, np.uint8), np.full((8, 8, 3), 80, np.uint8)],
                              "b": [np.full((16, 12, 3), 200, np.uint8)]})
    ds = data.load_dataset(str(root))
    assert ds.images.shape == (3, 3, 8, 8) and ds.labels.tolist() == [0, 0, 1]
    assert ds.images[2].mean() == pytest.approx(200 / 255, abs=1e-3)  # a uniform image stays uniform
    assert "1 of 3 images resized from 12×16 to 8×8" in ds.transform_note and "centre-cropped" in ds.transform_note


def test_image_folder_to_the_models_shape_converts_channels_and_size(tmp_path):
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 150, 200
    root = _folder(tmp_path, {"x": [rgb], "y": [np.full((28, 28), 7, np.uint8)]})
    ds = data.load_dataset(str(root), shape=(1, 28, 28))
    assert ds.images.shape == (2, 1, 28, 28)
    luma = (0.299 * 100 + 0.587 * 150 + 0.114 * 200) / 255
    assert ds.images[0].mean() == pytest.approx(luma, abs=2 / 255) and ds.images[1].mean() == pytest.approx(7 / 255)
    assert "1 of 2 RGB images converted to 1 channel" in ds.transform_note
    assert "1 of 2 images resized from 40×40 to 28×28" in ds.transform_note
    rgb3 = data.load_dataset(str(root), shape=(3, 32, 32))
    assert rgb3.images.shape == (2, 3, 32, 32) and "grey images replicated to 3 channels" in rgb3.transform_note
    assert torch.equal(rgb3.images[1, 0], rgb3.images[1, 2])
    same = data.load_dataset(str(_folder(tmp_path / "same", {"z": [np.zeros((28, 28), np.uint8)]})), shape=(1, 28, 28))
    assert same.transform_note == ""


def test_other_modes_decode(tmp_path):
    from PIL import Image

    (tmp_path / "c").mkdir()
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "c" / "16bit.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 255, 0  # white, fully transparent: black once composited
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c" / "rgba.png")
    Image.fromarray(np.full((8, 8), 3, np.uint8)).convert("P").save(tmp_path / "c" / "palette.png")
    ds = data.load_dataset(str(tmp_path), shape=(1, 8, 8))
    names = [p.name for p in sorted((tmp_path / "c").iterdir())]
    values = dict(zip(names, ds.images.flatten(1).mean(1).tolist()))
    assert values["16bit.png"] == pytest.approx(1.0) and values["rgba.png"] == 0.0
    assert values["palette.png"] == pytest.approx(3 / 255, abs=1e-3)


def test_fit_dataset_on_tensors_and_its_refusals():
    grey = data.ImageDataset(torch.rand(4, 1, 28, 28), torch.arange(4), list("abcd"), "toy")
    assert data.fit_dataset(grey, (1, 28, 28)) is grey and grey.fit(None) is grey
    rgb = grey.fit((3, 32, 32))
    assert rgb.images.shape == (4, 3, 32, 32) and rgb.labels is grey.labels
    assert rgb.transform_note.startswith("grey images replicated to 3 channels (RGB); 4 of 4 images resized from 28×28")
    wide = data.ImageDataset(torch.rand(2, 3, 20, 40), torch.zeros(2, dtype=torch.long), ["a"], "wide").fit((1, 10, 10))
    assert wide.images.shape == (2, 1, 10, 10) and "centre-cropped" in wide.transform_note
    two = data.ImageDataset(torch.rand(2, 2, 8, 8), torch.zeros(2, dtype=torch.long), ["a"], "two-channel")
    with pytest.raises(CadisError, match=r"two-channel are 2×8×8 but the models take 3×8×8"):
        two.fit((3, 8, 8))
    with pytest.raises(CadisError, match=r"1×28×28 but the models take 4×64×64"):
        grey.fit((4, 64, 64))


def test_image_folder_refusals_name_the_problem(tmp_path):
    with pytest.raises(CadisError, match="does not exist"):
        data.load_dataset(str(tmp_path / "missing") + "/")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CadisError, match="not an ImageFolder.*one sub-folder per class"):
        data.load_image_folder(tmp_path / "empty")
    root = _folder(tmp_path / "imgs", {"a": [np.zeros((8, 8), np.uint8)]})
    with pytest.raises(CadisError, match=r"take 4×8×8 images"):
        data.load_dataset(str(root), shape=(4, 8, 8))
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(CadisError, match="broken.png is not a readable image"):
        data.load_dataset(str(root))


def test_an_image_folder_with_split_folders_uses_the_split(tmp_path):
    _folder(tmp_path / "train", {"a": [np.zeros((8, 8), np.uint8)] * 3, "b": [np.zeros((8, 8), np.uint8)]})
    _folder(tmp_path / "test", {"a": [np.zeros((8, 8), np.uint8)], "b": [np.zeros((8, 8), np.uint8)]})
    assert len(data.load_dataset(str(tmp_path), "train")) == 4 and len(data.load_dataset(str(tmp_path), "test")) == 2


def test_certify_brings_a_folder_of_rgb_images_to_the_denoiser_and_the_sidecar_says_how(tiny_denoiser_dir,
                                                                                      tiny_classifier_dir, tmp_path):
    import json

    from cadis.cli import main

    rng = np.random.default_rng(0)
    root = _folder(tmp_path / "imgs", {"cat": [rng.integers(0, 255, (32, 32, 3), np.uint8)],
                                       "dog": [rng.integers(0, 255, (40, 30, 3), np.uint8)]})
    out = tmp_path / "r.tsv"
    assert main(["certify", "--denoiser", str(tiny_denoiser_dir), "--classifier", f"local-dir:{tiny_classifier_dir}",
                 "--dataset", str(root), "--sigma", "0.25", "--n0", "4", "--n", "8", "--batch-size", "8",
                 "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3
    note = json.loads((tmp_path / "r.tsv.json").read_text())["images"]  # the sidecar: FILE.json
    assert "RGB images converted to 1 channel" in note and "resized from" in note and "to 28×28" in note


def test_an_image_folder_with_non_finite_pixels_is_refused_like_an_upload(tmp_path):
    from PIL import Image

    (tmp_path / "c").mkdir()
    arr = np.full((8, 8), 0.5, np.float32)
    arr[2, 3] = np.nan
    Image.fromarray(arr, "F").save(tmp_path / "c" / "nan.tif")
    with pytest.raises(CadisError, match="nan.tif has 1 pixel that are NaN or infinite"):
        data.load_dataset(str(tmp_path), shape=(1, 8, 8))

"""Datasets: IDX parsing, the search order, the embedded test split and the missing-dataset error."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from cadis_core import data
from cadis_core.errors import CadisError


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

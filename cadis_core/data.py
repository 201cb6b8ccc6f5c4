"""Datasets as float tensors in [0, 1], CHW, with class names.

`load_dataset(name, split)` returns an `ImageDataset`. Fashion-MNIST is read from IDX files
(the embedded test split ships in `assets/data/`), CIFAR-10 comes through torchvision, and any
folder of images in ImageFolder layout works too.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import CadisError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED_DATA = ASSETS / "data"

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX_PREFIX = {"train": "train", "test": "t10k"}


@dataclass
class ImageDataset:
    """Images (N, C, H, W) float32 in [0, 1], integer labels (N,), and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CadisError(f"{path} is not an unsigned-byte IDX file; re-install the dataset.")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise CadisError(f"{path} is truncated ({data.size} bytes for shape {dims}); re-install the dataset.")
    return data.reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def fashion_mnist_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """The places searched for Fashion-MNIST IDX files, in order."""
    dirs = []
    if root is not None:
        dirs += [Path(root), Path(root) / "FashionMNIST" / "raw"]
    if os.environ.get("CADIS_DATA_DIR"):
        env = Path(os.environ["CADIS_DATA_DIR"])
        dirs += [env, env / "fashion-mnist", env / "FashionMNIST" / "raw"]
    dirs += [DEBIAN_FASHION_MNIST, EMBEDDED_DATA]
    return dirs


def load_fashion_mnist(split: str = "test", root: str | os.PathLike | None = None,
                       download: bool = False) -> ImageDataset:
    """Fashion-MNIST from IDX files: an explicit root, $CADIS_DATA_DIR, Debian's package, then assets/."""
    if split not in _IDX_PREFIX:
        raise CadisError(f"Unknown split {split!r}; use 'train' or 'test'.")
    prefix = _IDX_PREFIX[split]
    if download:
        import torchvision

        torchvision.datasets.FashionMNIST(root or "data", train=split == "train", download=True)
    searched = fashion_mnist_dirs(root)
    for d in searched:
        img = _find_idx(d, f"{prefix}-images-idx3-ubyte")
        lab = _find_idx(d, f"{prefix}-labels-idx1-ubyte")
        if img and lab:
            images = torch.from_numpy(read_idx(img).copy()).float().div_(255).unsqueeze(1)
            labels = torch.from_numpy(read_idx(lab).astype(np.int64))
            return ImageDataset(images, labels, list(FASHION_MNIST_CLASSES), "fashion-mnist")
    where = ", ".join(str(d) for d in searched)
    raise CadisError(
        f"Fashion-MNIST {split} split not found (looked in: {where}). "
        "Install it with `sudo apt-get install dataset-fashion-mnist`, set CADIS_DATA_DIR, "
        "or pass --download to fetch it with torchvision."
    )


def load_cifar10(split: str = "test", root: str | os.PathLike | None = None,
                 download: bool = False) -> ImageDataset:
    """CIFAR-10 through torchvision's layout under `root` (download only when asked)."""
    import torchvision

    root = Path(root or os.environ.get("CADIS_DATA_DIR", "data"))
    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=split == "train", download=download)
    except RuntimeError as e:
        raise CadisError(
            f"CIFAR-10 not found under {root}. Pass --download (online) or --data-root DIR "
            "holding cifar-10-batches-py/."
        ) from e
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255)
    return ImageDataset(images, torch.tensor(ds.targets), list(ds.classes), "cifar10")


def load_image_folder(root: str | os.PathLike) -> ImageDataset:
    """Any folder of images in ImageFolder layout (root/class_name/image.png)."""
    import torchvision
    from torchvision.transforms.functional import pil_to_tensor

    if not Path(root).is_dir():
        raise CadisError(f"Image folder {root} does not exist; give a directory of class sub-folders.")
    ds = torchvision.datasets.ImageFolder(str(root))
    first = pil_to_tensor(ds[0][0])
    imgs = torch.empty(len(ds), *first.shape)
    for i, (img, _) in enumerate(ds):
        t = pil_to_tensor(img)
        if t.shape != first.shape:
            raise CadisError(f"{ds.samples[i][0]} has shape {tuple(t.shape)}, expected {tuple(first.shape)}; "
                             "resize the folder's images to one size.")
        imgs[i] = t
    return ImageDataset(imgs.div_(255), torch.tensor(ds.targets), list(ds.classes), str(root))


def load_dataset(name: str, split: str = "test", root: str | os.PathLike | None = None,
                 download: bool = False) -> ImageDataset:
    """Load a dataset by name: `fashion-mnist`, `cifar10`, or a path to an ImageFolder directory."""
    if name == "fashion-mnist":
        return load_fashion_mnist(split, root, download)
    if name == "cifar10":
        return load_cifar10(split, root, download)
    if Path(name).is_dir():
        return load_image_folder(name)
    raise CadisError(f"Unknown dataset {name!r}; use 'fashion-mnist', 'cifar10' or an ImageFolder directory.")

"""Datasets as float tensors in [0, 1], CHW, with class names.

`load_dataset(name, split)` returns an `ImageDataset`. Fashion-MNIST is read from IDX files
(the embedded test split ships in `src/cadis/assets/fashion-mnist/`), CIFAR-10 comes through torchvision, and any
folder of images in ImageFolder layout works too.

A user's images rarely match the models: `fit_dataset(dataset, shape)` (and `load_dataset(..., shape=...)`,
which decodes an ImageFolder straight to the shape) brings them to the denoiser's C×H×W: grey ↔ RGB, then
resized (bilinear, antialiased) and centre-cropped when the aspect ratio differs. `dataset.transform_note`
says what was done, for the run's records; what cannot be brought (other channel counts) is refused with
both shapes named.
"""

from __future__ import annotations

import gzip
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cadis.errors import CadisError

ASSETS = Path(__file__).resolve().parent / "assets"  # package data: the embedded default
EMBEDDED_DATA = ASSETS / "fashion-mnist"

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
    """Images (N, C, H, W) float32 in [0, 1], integer labels (N,), and the class names.

    `transform_note`: how the images were changed from the files to fit the models ("" when they are as
    stored), e.g. "RGB converted to 1 channel (luma); 12 of 40 images resized to 28×28 ..."."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = ""
    transform_note: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def fit(self, shape: tuple[int, int, int] | None) -> ImageDataset:
        """`fit_dataset(self, shape)`: this dataset brought to the models' input shape (C, H, W)."""
        return fit_dataset(self, shape)

    def fit_for_run(self, smooth: Any, outs: list[tuple[Path, Any]]) -> tuple[ImageDataset, list[tuple[Path, Any]]]:
        """For the certification runner: this dataset brought to the smoothing's denoiser input (`image_shape`; as
        it is without one), and the (out, config) pairs with `config.notes["images"]` saying how, for the sidecars."""
        fitted = self.fit(getattr(getattr(smooth, "denoiser", None), "image_shape", None))
        if not fitted.transform_note:
            return fitted, outs
        return fitted, [(out, replace(c, notes={**c.notes, "images": fitted.transform_note})) for out, c in outs]


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


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's "L" and ImageClassifier's RGB -> grey


def _shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(str(int(s)) for s in shape)


def _check_channels(what: str, have: tuple[int, ...], want: tuple[int, ...]) -> None:
    """Refuse, naming both shapes, a channel change other than grey (1) <-> RGB (3)."""
    if have[0] != want[0] and not {have[0], want[0]} <= {1, 3}:
        raise CadisError(f"{what} are {_shape_text(have)} but the models take {_shape_text(want)} images: only grey "
                         "(1 channel) and RGB (3) convert into each other. Give images with the models' channels.")


def _fit_note(to_channels: int | None, converted: int, resized: int, total: int, sizes: Counter,
              size: tuple[int, int], cropped: int) -> str:
    """A one-line description of a fit, for sidecars and run records: `converted` of `total` images changed
    channels to `to_channels`, `resized` of them from `sizes` to `size` (H, W), `cropped` of those cropped."""
    parts = []
    if converted:
        which = "" if converted == total else f"{converted} of {total} "
        parts.append(f"{which}grey images replicated to 3 channels (RGB)" if to_channels == 3 else
                     f"{which}RGB images converted to 1 channel (luma {', '.join(map(str, LUMA))})")
    if resized:
        seen = ", ".join(f"{w}×{h}" for (h, w), _ in sizes.most_common(3)) + (", ..." if len(sizes) > 3 else "")
        parts.append(f"{resized} of {total} images resized from {seen} to {size[1]}×{size[0]} (bilinear, "
                     f"antialiased{f'; {cropped} centre-cropped to keep their aspect ratio' if cropped else ''})")
    return "; ".join(parts)


def _resize_crop(x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, bool]:
    """Resize a batch [N, C, h, w] so that it covers `size` (H, W), then centre-crop; (images, cropped)."""
    h, w = x.shape[-2:]
    height, width = size
    scale = max(height / h, width / w)
    inner = (max(height, round(h * scale)), max(width, round(w * scale)))
    x = F.interpolate(x, size=inner, mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    top, left = (inner[0] - height) // 2, (inner[1] - width) // 2
    return x[..., top:top + height, left:left + width].contiguous(), inner != (height, width)


def _to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    return (x * torch.tensor(LUMA, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)


def fit_dataset(dataset: ImageDataset, shape: tuple[int, int, int] | None) -> ImageDataset:
    """The dataset brought to the models' input `shape` (C, H, W); itself when it already fits (or `shape` is None).

    Grey ↔ RGB (luma for RGB -> grey), then a bilinear antialiased resize that covers H×W and a centre crop.
    The result's `transform_note` says what was done (after the dataset's own note, if any)."""
    if shape is None or dataset.shape == tuple(shape):
        return dataset
    c, h, w = (int(s) for s in shape)
    have = dataset.shape
    _check_channels(f"The images of {dataset.name or 'the dataset'}", have, (c, h, w))
    if min(c, h, w) < 1:
        raise CadisError(f"The models' input shape {_shape_text(shape)} is empty; check the denoiser's config.")
    images = _to_channels(dataset.images, c)
    cropped = False
    if have[1:] != (h, w):
        images, cropped = _resize_crop(images, (h, w))
    n = len(images)
    note = _fit_note(c, n if have[0] != c else 0, n if have[1:] != (h, w) else 0, n, Counter({have[1:]: n}),
                     (h, w), n if cropped else 0)
    return replace(dataset, images=images, transform_note="; ".join(n for n in (dataset.transform_note, note) if n))


def _decode(path: str, channels: int | None) -> tuple[torch.Tensor, int]:
    """An image file as a float [C, h, w] tensor in [0, 1] and its own channel count (`images.pixels`)."""
    from PIL import Image, UnidentifiedImageError

    from cadis.images import pixels

    try:
        with Image.open(path) as img:
            img.load()
            return pixels(img, channels, path)
    except CadisError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CadisError(f"{path} is not a readable image ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                         "remove or re-export it.") from e


def load_image_folder(root: str | os.PathLike, shape: tuple[int, int, int] | None = None) -> ImageDataset:
    """Any folder of images in ImageFolder layout (root/class_name/image.png), as an `ImageDataset`.

    With `shape` (C, H, W), every image is decoded to C channels and resized (bilinear, antialiased, centre
    crop for another aspect ratio) to H×W. Without it, colour is kept when any image has it, and images of
    other sizes are brought to the most common size. `transform_note` says what was changed."""
    import torchvision

    if not Path(root).is_dir():
        raise CadisError(f"Image folder {root} does not exist; give a directory of class sub-folders.")
    try:
        ds = torchvision.datasets.ImageFolder(str(root), loader=str)  # paths only: decoded below
    except (FileNotFoundError, OSError) as e:
        raise CadisError(f"{root} is not an ImageFolder ({str(e).splitlines()[0]}): put the images in one "
                         "sub-folder per class, e.g. root/cat/1.png and root/dog/2.png.") from e
    if shape is not None and shape[0] not in (1, 3):
        raise CadisError(f"The models take {_shape_text(shape)} images; images from files (in {root}) can only be "
                         "brought to 1 (grey) or 3 (RGB) channels.")
    decoded = [_decode(path, shape[0] if shape is not None else None) for path, _ in ds.samples]
    raw = [x for x, _ in decoded]
    own_channels = Counter(own for _, own in decoded)
    channels = int(shape[0]) if shape is not None else (3 if 3 in own_channels else 1)
    sizes = Counter(tuple(int(s) for s in x.shape[1:]) for x in raw)
    size = tuple(int(s) for s in shape[1:]) if shape is not None else sizes.most_common(1)[0][0]
    images = torch.empty(len(raw), channels, *size)
    resized = cropped = 0
    for i, x in enumerate(raw):
        x = _to_channels(x[None], channels)  # decoded to `channels` already when `shape` is given
        if tuple(x.shape[-2:]) != size:
            x, crop = _resize_crop(x, size)
            resized, cropped = resized + 1, cropped + crop
        images[i] = x[0]
    converted = sum(n for c, n in own_channels.items() if c != channels)
    note = _fit_note(channels, converted, resized, len(raw), Counter({s: n for s, n in sizes.items() if s != size}),
                     size, cropped)
    return ImageDataset(images, torch.tensor(ds.targets), list(ds.classes), str(root), note)


def load_dataset(name: str, split: str = "test", root: str | os.PathLike | None = None,
                 download: bool = False, shape: tuple[int, int, int] | None = None) -> ImageDataset:
    """Load a dataset by name: `fashion-mnist`, `cifar10`, or a path to an ImageFolder directory (its
    `split` sub-folder when it has one, e.g. root/train and root/test).

    `shape` (C, H, W), the models' input, brings the images to it (`fit_dataset`; an ImageFolder is decoded
    straight to it), and `transform_note` says how."""
    if name == "fashion-mnist":
        return fit_dataset(load_fashion_mnist(split, root, download), shape)
    if name == "cifar10":
        return fit_dataset(load_cifar10(split, root, download), shape)
    if Path(name).is_dir():
        folder = Path(name) / split if (Path(name) / split).is_dir() else Path(name)
        return load_image_folder(folder, shape)
    if os.sep in name or name.startswith((".", "~")):
        raise CadisError(f"Image folder {name} does not exist; give a directory of class sub-folders "
                         "(root/class_name/image.png), or 'fashion-mnist' or 'cifar10'.")
    raise CadisError(f"Unknown dataset {name!r}; use 'fashion-mnist', 'cifar10' or an ImageFolder directory.")

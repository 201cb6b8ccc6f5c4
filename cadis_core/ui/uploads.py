"""What a visitor hands the apps: uploaded images, test-set picks and run parameters.

Each becomes a model input (a C×H×W tensor in [0, 1], indices, checked numbers) or a CadisError that says
what to change.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CadisError
from ..smoothing import check_parameters

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_SIDE = 4096
IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"]
# The PIL decoders an upload may reach, whatever its name says: no EPS (Ghostscript), PDF, SVG or other plugin.
PIL_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


def image_from_bytes(data: bytes, shape: tuple[int, int, int], name: str = "the file",
                     invert: bool | None = None) -> torch.Tensor:
    """Decode an uploaded image into a C×H×W float tensor in [0, 1] of `shape`, or raise a CadisError.

    Only the formats in PIL_FORMATS are decoded, whatever the file's name; non-finite pixels are refused. Any
    mode is accepted: alpha is composited onto black, colour is converted to the model's channels, 16-bit and
    float images are rescaled, EXIF rotation is applied, and the image is padded to a square (black) and resized.
    `invert=None` inverts a single-channel target when the image's border is bright: Fashion-MNIST-style data is a
    light object on a dark background, photos are usually the opposite."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise CadisError(f"{name} is empty; upload a PNG or JPEG image.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise CadisError(f"{name} is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB. "
                         "Upload a smaller image (the model sees it at "
                         f"{shape[1]}×{shape[2]} pixels anyway).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
            w, h = img.size  # read from the header: no pixels decoded yet
            if max(w, h) > MAX_SIDE:
                raise CadisError(f"{name} is {w}×{h} pixels; the limit is {MAX_SIDE} pixels per side. "
                                 "Downscale it first.")
            img.load()
            img = ImageOps.exif_transpose(img)
    except CadisError:
        raise
    except UnidentifiedImageError as e:
        raise CadisError(f"{name} is not an image in a format the app reads; upload a "
                         f"{', '.join(PIL_FORMATS[:-1])} or {PIL_FORMATS[-1]} file.") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise CadisError(f"{name} is corrupt or truncated ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                         "; re-export it and upload again.") from e
    return _to_tensor(img, shape, invert, name)


def _to_tensor(img, shape: tuple[int, int, int], invert: bool | None, name: str = "the file") -> torch.Tensor:
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise CadisError(f"{name} has non-finite pixels (NaN or infinity); export it with finite values "
                             "(e.g. as an 8-bit PNG).")
        peak = float(arr.max()) if arr.size else 0.0
        if img.mode.startswith("I;16"):
            top = 65535.0
        else:  # 32-bit ints and floats carry no range: take the smallest usual one that holds the values
            top = next((t for t in ((1.0,) if img.mode == "F" else ()) + (255.0, 65535.0) if peak <= t), peak)
        img = Image.fromarray(np.clip(arr / top * 255, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba).convert("RGB")
    img = img.convert("L" if shape[0] == 1 else "RGB")
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()) / 255
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
    if invert is None:
        border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1)
        invert = shape[0] == 1 and float(border.mean()) > 0.5
    if invert:
        x = 1 - x
    h, w = x.shape[1:]
    side = max(h, w)
    x = F.pad(x, ((side - w) // 2, side - w - (side - w) // 2, (side - h) // 2, side - h - (side - h) // 2))
    if side != shape[1] or side != shape[2]:
        x = F.interpolate(x[None], size=shape[1:], mode="bilinear", antialias=True, align_corners=False)[0]
    return x.clamp(0, 1).contiguous()


def image_from_path(path: str | os.PathLike, shape: tuple[int, int, int], invert: bool | None = None) -> torch.Tensor:
    """`image_from_bytes` for a file on disk; the size is checked before reading it."""
    path = Path(path)
    if not path.is_file():
        raise CadisError(f"{path.name} was not received; upload it again.")
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise CadisError(f"{path.name} is {path.stat().st_size / 2**20:.1f} MB; the limit is "
                         f"{MAX_UPLOAD_BYTES // 2**20} MB. Upload a smaller image.")
    return image_from_bytes(path.read_bytes(), shape, path.name, invert)


def check_run_parameters(sigma: float | None = None, alpha: float | None = None, n0: int | None = None,
                         n: int | None = None, draws: int | None = None) -> None:
    """The library's checks plus the apps' own: N >= N0 and at least one draw."""
    check_parameters(sigma=sigma, alpha=alpha, n0=n0, n=n)
    if n0 is not None and n is not None and n < n0:
        raise CadisError(f"N ({n}) must be at least N0 ({n0}): N0 draws only pick the class, "
                         "N draws bound its probability. Raise N or lower N0.")
    if draws is not None and draws < 1:
        raise CadisError(f"The number of draws must be >= 1 (got {draws}).")


def pick_indices(labels: torch.Tensor, how: str, *, indices: list[int] | None = None, class_id: int | None = None,
                 count: int = 8, seed: int = 0) -> list[int]:
    """Test-set indices chosen by 'index' (given), 'class' (random ones of a class) or 'random'."""
    size = len(labels)
    gen = torch.Generator().manual_seed(seed)
    if how == "index":
        chosen = list(dict.fromkeys(indices or []))
        bad = [i for i in chosen if not 0 <= i < size]
        if bad:
            raise CadisError(f"Indices {bad} are outside the test set (0 … {size - 1}).")
        if not chosen:
            raise CadisError("Give at least one image index.")
        return chosen
    if how == "class":
        pool = torch.nonzero(labels == class_id).flatten()
        if len(pool) == 0:
            raise CadisError(f"The test set has no image of class {class_id}.")
        return pool[torch.randperm(len(pool), generator=gen)[:count]].tolist()
    if how == "random":
        return torch.randperm(size, generator=gen)[:count].tolist()
    raise CadisError(f"Unknown selection {how!r}; use 'index', 'class' or 'random'.")

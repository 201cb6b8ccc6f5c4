"""Uploaded images, opened safely and turned into model inputs. No UI library is imported here.

An upload is only opened as one of the formats the apps intend (`FORMATS`): PIL is never left to guess, so a
PostScript/EPS file named `photo.png` is refused before Ghostscript could ever run, whatever its name says.
Its size is checked before it is read, its pixel count from the header before anything is decoded, and
float images with NaN or infinite pixels are refused rather than turned into noise.

`image_from_bytes` / `image_from_path` keep the signatures of the helpers of the same name in `ui_support`.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cadis.errors import CadisError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_SIDE = 4096
# PIL format names the apps open, and the file names that go with them (for upload widgets).
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FORMAT_NAMES = "PNG, JPEG, WebP, BMP, GIF or TIFF"


def check_size(size: int, name: str = "the file") -> None:
    """Refuse an empty file or one over MAX_UPLOAD_BYTES, saying what to do."""
    if size == 0:
        raise CadisError(f"{name} is empty; upload a PNG or JPEG image.")
    if size > MAX_UPLOAD_BYTES:
        raise CadisError(f"{name} is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB. "
                         "Upload a smaller image (the model sees it at a few dozen pixels per side anyway).")


def open_image(data: bytes, name: str = "the file"):
    """Open `data` as one of FORMATS and decode it (EXIF rotation applied), or raise a CadisError.

    The format is read from the content, and only FORMATS are tried: anything else (PostScript, PDF, SVG,
    a text file...) is refused as not an image, without any other PIL plugin running. Images wider or
    taller than MAX_SIDE are refused from the header, before their pixels are decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    check_size(len(data), name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(FORMATS))
            w, h = img.size  # from the header: no pixels decoded yet
            if max(w, h) > MAX_SIDE:
                raise CadisError(f"{name} is {w}×{h} pixels; the limit is {MAX_SIDE} pixels per side. "
                                 "Downscale it first.")
            img.load()
            img = ImageOps.exif_transpose(img)
    except CadisError:
        raise
    except UnidentifiedImageError as e:
        raise CadisError(f"{name} is not an image in an accepted format ({FORMAT_NAMES}), whatever its name "
                         "says, so not an image in a format the app reads; upload one of those.") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise CadisError(f"{name} is corrupt or truncated ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                         "; re-export it and upload again.") from e
    return img


def image_from_bytes(data: bytes, shape: tuple[int, int, int], name: str = "the file",
                     invert: bool | None = None) -> torch.Tensor:
    """Decode an upload into a C×H×W float tensor in [0, 1] of `shape`, or raise a CadisError.

    Any mode is accepted: alpha is composited onto black, colour is converted to the model's channels,
    16-bit and float images are rescaled (non-finite values refused), EXIF rotation is applied, and the
    image is padded to a square (black) and resized. `invert=None` inverts a single-channel target when the
    image's border is bright: Fashion-MNIST-style data is a light object on a dark background, photos are
    usually the opposite."""
    return to_tensor(open_image(data, name), shape, invert, name)


def image_from_path(path: str | os.PathLike, shape: tuple[int, int, int], invert: bool | None = None,
                    name: str | None = None) -> torch.Tensor:
    """`image_from_bytes` for a file on disk; its size is checked before it is read."""
    path = Path(path)
    name = name or path.name
    if not path.is_file():
        raise CadisError(f"{name} was not received; upload it again.")
    check_size(path.stat().st_size, name)
    return image_from_bytes(path.read_bytes(), shape, name, invert)


def pixels(img, channels: int | None = None, name: str = "the image") -> tuple[torch.Tensor, int]:
    """A decoded PIL image → C×h×w float tensor in [0, 1] with `channels` (1: grey, 3: RGB; None: its own), and
    its own channel count. Alpha is composited onto black; 16-bit, 32-bit and float images are rescaled, and
    non-finite pixels refused. Uploads and image folders both decode here."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise CadisError(f"{name} has {bad} pixel{'s' if bad > 1 else ''} that are NaN or infinite "
                             "(non-finite pixels); export it with finite values (e.g. an 8-bit PNG) and try again.")
        peak = float(arr.max()) if arr.size else 0.0
        if img.mode.startswith("I;16"):
            top = 65535.0
        else:  # 32-bit ints and floats carry no range: take the smallest usual one that holds the values
            top = next((t for t in ((1.0,) if img.mode == "F" else ()) + (255.0, 65535.0) if peak <= t), peak)
        img = Image.fromarray(np.clip(arr / top * 255, 0, 255).round().astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    own = 1 if img.mode in ("1", "L") else 3
    img = img.convert("L" if (channels or own) == 1 else "RGB")
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()) / 255
    return (x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()), own


def to_tensor(img, shape: tuple[int, int, int], invert: bool | None = None, name: str = "the image") -> torch.Tensor:
    """A decoded PIL image → C×H×W float tensor in [0, 1] of `shape` (see `image_from_bytes`)."""
    x, _ = pixels(img, shape[0], name)
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

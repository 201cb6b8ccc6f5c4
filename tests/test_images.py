"""cadis.images: uploads opened only in the intended formats, within the limits, with finite pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image

from cadis import images
from cadis.errors import CadisError

SHAPE = (1, 28, 28)
# A minimal EPS: PIL identifies it as EPS from its content, and would run Ghostscript to draw it.
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
       b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")


def encode(arr: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, fmt) if mode else Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def ghostscript_calls(monkeypatch):
    """Records every call PIL makes to Ghostscript (none should happen)."""
    calls = []

    def fake(*args, **kwargs):
        calls.append(args)
        raise OSError("Ghostscript was called")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", fake)
    return calls


def test_eps_behind_a_png_name_never_reaches_ghostscript(ghostscript_calls):
    # The threat is real: left to guess, PIL takes these bytes for EPS and hands them to Ghostscript to load.
    guessed = Image.open(io.BytesIO(EPS))
    assert guessed.format == "EPS"
    with pytest.raises(OSError):
        guessed.load()
    assert len(ghostscript_calls) == 1

    with pytest.raises(CadisError, match=r"photo.png is not an image in an accepted format \(PNG, JPEG"):
        images.image_from_bytes(EPS, SHAPE, "photo.png")
    assert len(ghostscript_calls) == 1  # no second call


@pytest.mark.parametrize("data", [b"not a picture", b"%PDF-1.4\n1 0 obj<<>>endobj\n", b"<svg xmlns='x'/>"])
def test_other_content_is_not_an_image(data):
    with pytest.raises(CadisError, match="is not an image in an accepted format"):
        images.image_from_bytes(data, SHAPE, "x.png")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused(bad):
    arr = np.full((20, 20), 0.5, np.float32)
    arr[3, 4] = bad
    data = encode(arr, "TIFF", "F")
    assert Image.open(io.BytesIO(data)).mode == "F"  # a float TIFF really carries the value
    with pytest.raises(CadisError, match="1 pixel that are NaN or infinite"):
        images.image_from_bytes(data, SHAPE, "float.tif")


def test_finite_float_images_are_rescaled():
    arr = np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(28, 28)
    x = images.image_from_bytes(encode(arr, "TIFF", "F"), SHAPE, "float.tif", invert=False)
    assert torch.isfinite(x).all() and x.shape == SHAPE
    assert x.min() == 0 and x.max() == pytest.approx(1, abs=1 / 255)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_intended_format_opens(fmt):
    arr = (np.random.default_rng(0).random((30, 20, 3)) * 255).astype(np.uint8)
    x = images.image_from_bytes(encode(arr, fmt), (3, 16, 16), f"x.{fmt.lower()}")
    assert x.shape == (3, 16, 16) and 0 <= float(x.min()) <= float(x.max()) <= 1


def test_size_limits(tmp_path):
    with pytest.raises(CadisError, match="is empty"):
        images.image_from_bytes(b"", SHAPE)
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (images.MAX_UPLOAD_BYTES + 1))
    with pytest.raises(CadisError, match=r"big.png is 20.0 MB; the limit is 20 MB"):
        images.image_from_path(big, SHAPE)
    wide = encode(np.zeros((2, images.MAX_SIDE + 1), np.uint8), "PNG")
    with pytest.raises(CadisError, match="pixels per side"):
        images.image_from_bytes(wide, SHAPE)
    with pytest.raises(CadisError, match="was not received"):
        images.image_from_path(tmp_path / "missing.png", SHAPE)



def test_alpha_is_composited_onto_black_and_bright_borders_inverted():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, transparent except the centre
    rgba[3:7, 3:7, 3] = 255
    x = images.image_from_bytes(encode(rgba, "PNG"), (1, 10, 10))
    assert x[0, 0, 0] == 0 and x[0, 5, 5] == 1
    grey = np.full((10, 10), 255, np.uint8)
    grey[3:7, 3:7] = 0  # dark object on a bright page: inverted to Fashion-MNIST's light on dark
    x = images.image_from_bytes(encode(grey, "PNG"), (1, 10, 10))
    assert x[0, 0, 0] == 0 and x[0, 5, 5] == 1


@pytest.mark.parametrize("mode, shape", [("L", (50, 70)), ("RGB", (600, 400, 3)), ("RGBA", (28, 28, 4)),
                                         ("I;16", (30, 30)), ("P", (20, 40)), ("1", (33, 33))])
def test_uploads_of_any_mode_and_size_become_model_inputs(mode, shape):
    rng = np.random.default_rng(1)
    arr = (rng.random(shape) * (65535 if mode == "I;16" else 255)).astype(np.uint16 if mode == "I;16" else np.uint8)
    img = Image.fromarray(arr).convert(mode) if mode in ("P", "1") else Image.fromarray(arr)
    assert img.mode == mode
    buf = io.BytesIO()
    img.save(buf, "PNG")
    for target in [(1, 28, 28), (3, 32, 32)]:
        x = images.image_from_bytes(buf.getvalue(), target)
        assert x.shape == target and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_upload_conversion_keeps_content():
    # A bright square on black stays bright; on white, auto-invert makes the background dark like Fashion-MNIST.
    dark = np.zeros((56, 56), np.uint8)
    dark[14:42, 14:42] = 255
    x = images.image_from_bytes(encode(dark, "PNG"), (1, 28, 28))
    assert x[0, 14, 14] > 0.9 and x[0, 1, 1] < 0.05
    y = images.image_from_bytes(encode(255 - dark, "PNG"), (1, 28, 28))
    assert torch.allclose(x, y, atol=1e-6)
    assert images.image_from_bytes(encode(255 - dark, "PNG"), (1, 28, 28), invert=False)[0, 1, 1] > 0.95
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 0  # fully transparent red: black after compositing
    assert images.image_from_bytes(encode(rgba, "PNG"), (3, 28, 28)).max() == 0
    wide = encode(np.full((10, 40), 255, np.uint8), "PNG")
    wide = images.image_from_bytes(wide, (1, 28, 28), invert=False)  # padded, centred
    assert wide[0, 0].max() == 0 and wide[0, 14].min() > 0.9


def test_float_and_16_bit_uploads_are_rescaled():
    for img, expected in [(Image.new("F", (28, 28), 0.5), 0.5), (Image.new("F", (28, 28), 127.5), 0.5),
                          (Image.fromarray(np.full((28, 28), 32768, np.uint16)), 0.5)]:
        buf = io.BytesIO()
        img.save(buf, "TIFF")
        x = images.image_from_bytes(buf.getvalue(), (1, 28, 28), invert=False)
        assert float(x.mean()) == pytest.approx(expected, abs=0.01)


def test_a_truncated_file_is_corrupt():
    jpeg = encode(np.zeros((64, 64), np.uint8), "JPEG")
    with pytest.raises(CadisError, match="corrupt or truncated"):
        images.image_from_bytes(jpeg[:200], SHAPE, "cut.jpg")

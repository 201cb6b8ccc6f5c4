"""Model tensors as pictures: uint8 arrays with sharp pixels, strips side by side, inline PNGs."""

from __future__ import annotations

import io

import numpy as np
import torch


def to_uint8(x: torch.Tensor, scale: int = 3) -> np.ndarray:
    """C×H×W in [0, 1] (noisy images are clipped) → H·s×W·s (grey) or ×3 uint8, pixels kept sharp."""
    arr = (x.detach().float().clamp(0, 1) * 255).round().byte().cpu()
    arr = arr.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()


def strip(images: list[torch.Tensor], scale: int = 3, gap: int = 2) -> np.ndarray:
    """Images side by side with a white gap: e.g. noisy → denoised as one picture."""
    parts = [to_uint8(x, scale) for x in images]
    sep = np.full((parts[0].shape[0], gap, *parts[0].shape[2:]), 255, dtype=np.uint8)
    out = [parts[0]]
    for p in parts[1:]:
        out += [sep, p]
    return np.concatenate(out, axis=1)


def data_uri(arr: np.ndarray) -> str:
    """A uint8 picture as an inline PNG: dozens of small images then travel with the page instead of as
    one HTTP request each, which is what made the hallucination grid slow to appear."""
    import base64

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", optimize=False, compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

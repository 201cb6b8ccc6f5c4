"""What a visitor hands the apps: uploaded images, test-set picks and run parameters.

Each becomes a model input (a C×H×W tensor in [0, 1], indices, checked numbers) or a CadisError that says
what to change.
"""

from __future__ import annotations

import torch

from cadis.certification.smoothing import check_parameters
from cadis.errors import CadisError
from cadis.images import EXTENSIONS

# Uploads are opened by cadis.images (the Gradio demo's opener too); these are the uploader's extensions.
IMAGE_TYPES = [ext.removeprefix(".") for ext in EXTENSIONS]


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

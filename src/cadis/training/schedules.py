"""Learning-rate schedule and data order shared by the zoo's trainers and FT-CADIS fine-tuning.

Both are pure functions of the step, so a run resumed at step k continues exactly where it stopped.
"""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """The learning-rate multiplier: linear warmup, then cosine decay to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def cosine(step: int, total: int, start: float, end: float) -> float:
    """A value going from `start` (step 0) to `end` (step `total`) along a half cosine (e.g. weight decay)."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """The indices of batch `step` in a per-epoch seeded permutation (resumable data order)."""
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[k * batch_size:(k + 1) * batch_size]

"""Training-time augmentation of clean images, drawn from a seeded generator so a resumed run repeats it."""

from __future__ import annotations

import torch


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Per image: a random crop of the zero-padded image back to its size, then a horizontal flip with
    probability 1/2 (torchvision's RandomCrop(size, padding) + RandomHorizontalFlip, as the FT-CADIS authors
    train on CIFAR-10)."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return torch.where(flip.view(n, 1, 1, 1), out.flip(-1), out)

"""Speed levers for the smoothing engine: reduced precision, channels_last and torch.compile.

Randomized smoothing is sound for any fixed base classifier f, so these levers change which f is
certified (f evaluated in bf16 instead of fp32, say), never the statistics. Runs record them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from cadis.errors import CadisError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Acceleration:
    """How the base classifier runs: `precision` (fp32, bf16, fp16) via autocast, `channels_last`
    memory format for convolutions, and `compile` with torch.compile (inductor caches the compiled
    graphs on disk, so later processes start faster)."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise CadisError(f"Unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}.")

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)

    def prepare(self, fn: Callable[[torch.Tensor], torch.Tensor], modules: Iterable[torch.nn.Module] = ()
                ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Apply the levers to `modules` (in place) and return the function to call per batch."""
        if self.channels_last:
            for m in modules:
                m.to(memory_format=torch.channels_last)
        return torch.compile(fn, dynamic=False) if self.compile else fn

    def describe(self) -> dict:
        return {"precision": self.precision, "channels_last": self.channels_last, "compile": self.compile}


def default_acceleration(device: str | torch.device) -> Acceleration:
    """bf16 on GPUs that support it; exact fp32 elsewhere (opt in to bf16 on CPUs with --precision)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return Acceleration(precision="bf16")
    return Acceleration()


def largest_batch(forward: Callable[[int], object], start: int, smallest: int = 1) -> int:
    """The largest batch size, halving from `start`, whose `forward(batch_size)` fits in GPU memory."""
    b = start
    while True:
        try:
            forward(b)
            return b
        except torch.OutOfMemoryError:
            if b // 2 < smallest:
                raise CadisError(f"Even a batch of {b} does not fit in GPU memory; free the GPU or use a "
                                 "smaller model.") from None
            b //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

"""Speed levers for the smoothing engine: reduced precision, channels_last and torch.compile.

Randomized smoothing is sound for any fixed base classifier f, so these levers change which f is
certified (f evaluated in bf16 instead of fp32, say), never the statistics. Runs record them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from cadis.errors import CadisError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CACHED_CHOICES = 200  # measured precisions kept in the cache (machine and model pairs)


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
        if not self.compile:
            return fn
        use_compile_cache()
        return torch.compile(fn, dynamic=False)

    def describe(self) -> dict:
        return {"precision": self.precision, "channels_last": self.channels_last, "compile": self.compile}


def default_acceleration(device: str | torch.device) -> Acceleration:
    """bf16 on GPUs that support it; exact fp32 elsewhere (opt in to bf16 on CPUs with --precision)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return Acceleration(precision="bf16")
    return Acceleration()


def auto_precision(forward: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], sigma: float, key: str,
                   device: str | torch.device = "cpu", batch: int = 64) -> tuple[str, dict]:
    """`auto`: bf16 on a GPU that supports it (fp32 on others); on a CPU, whichever of fp32 and bf16 runs `forward`
    (a noisy batch -> logits) faster on this machine (`measured_precision` on a batch of `batch` noisy images of
    `shape`, timed once per machine and `key`, cached). Returns the precision and why (the timing record)."""
    device = torch.device(device)
    if device.type != "cpu":
        chosen = default_acceleration(device).precision
        return chosen, {"device": device.type, "rule": "bf16 where the GPU supports it"}
    noisy = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))  # timing does not depend on content
    return measured_precision(forward, (noisy + sigma * torch.randn_like(noisy)).to(device), f"{key}|batch={batch}")


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


def machine() -> dict[str, str]:
    """What the speed of a precision depends on: the CPU model and its vector extensions, or the GPU."""
    import platform

    flags, model = set(), platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:  # not Linux: the model name alone
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    info = {"cpu": model, "vector": " ".join(f for f in wanted if f in flags) or "none known",
            "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cadis"


def _cache_path() -> Path:
    return _cache_root() / "precision.json"


def compile_cache_dir() -> Path:
    """Where torch.compile keeps cadis' compiled graphs: one folder per machine kind (CPU model and vector
    extensions, the instruction set ATen and oneDNN are limited to, torch). inductor's cache does not key on the
    instruction set: graphs built under AVX2 gave NaN logits under AVX-512, and the reverse corrupted the heap."""
    import hashlib
    import json

    kind = {**machine(), "aten": torch.backends.cpu.get_cpu_capability(),
            "onednn": os.environ.get("ONEDNN_MAX_CPU_ISA", "")}
    return _cache_root() / "inductor" / hashlib.sha256(json.dumps(kind, sort_keys=True).encode()).hexdigest()[:16]


def use_compile_cache() -> None:
    """Point torch.compile at `compile_cache_dir()` (unless $TORCHINDUCTOR_CACHE_DIR is set): inductor's own cache
    does not key on the CPU's instruction set, so cadis keeps its graphs per machine kind. Call before compiling."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:  # set once per process: reads /proc/cpuinfo only the first time
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache_dir())


def cached_record(slot: str, cache: Path | None = None) -> dict | None:
    """The record cached for `slot` (a machine and model key) in ~/.cache/cadis, or None."""
    import json

    try:
        known = json.loads((cache or _cache_path()).read_text())
    except (OSError, ValueError):  # missing or unreadable: measured again
        return None
    return known.get(slot) if isinstance(known, dict) and isinstance(known.get(slot), dict) else None


def store_record(slot: str, record: dict, cache: Path | None = None) -> None:
    """Cache `record` for `slot`, keeping the latest CACHED_CHOICES; a read-only home only costs a re-measurement."""
    import json

    from cadis.files import write_atomic

    cache = cache or _cache_path()
    try:
        known = json.loads(cache.read_text()) if cache.is_file() else {}
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    known.pop(slot, None)
    known[slot] = record
    for old in list(known)[:-CACHED_CHOICES]:  # the oldest go: model paths of temporary runs accumulate
        del known[old]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps(known, indent=2))
    except (OSError, CadisError):
        pass


def machine_slot(key: str) -> str:
    """A cache slot for `key` on this machine kind."""
    import json

    return json.dumps(machine(), sort_keys=True) + "|" + key


def measured_precision(forward: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, key: str,
                       candidates: tuple[str, ...] = ("fp32", "bf16"), repeats: int = 3,
                       cache: Path | None = None) -> tuple[str, dict]:
    """The candidate precision `forward` runs fastest at on this machine (median of `repeats` timed calls on
    `example` after a warm-up), measured once per machine and `key` (the model and batch) and cached in
    ~/.cache/cadis/precision.json. Returns it and the record: the machine, each candidate's seconds per call."""
    import time

    here = machine()
    slot = machine_slot(key)
    known = cached_record(slot, cache)
    if known is not None and known.get("precision") in candidates:
        return known["precision"], known
    seconds = {}
    with torch.inference_mode():
        for name in candidates:
            autocast = Acceleration(name).autocast(example.device)
            with autocast:
                forward(example)  # warm-up: allocations, one-time kernels
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                with autocast:
                    forward(example)
                if example.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            seconds[name] = sorted(times)[len(times) // 2]
    best = min(seconds, key=seconds.get)
    record = {"precision": best, "seconds_per_call": seconds, "machine": here, "key": key,
              "batch": int(example.shape[0])}
    store_record(slot, record, cache)
    return best, record


def describe_machine() -> str:
    """One line for benchmark output: the CPU (or GPU), its vector extensions and torch."""
    info = machine()
    return f"{info.get('gpu', info['cpu'])} [{info['vector']}], torch {info['torch']}"

"""Checks at the door: argparse types for numeric flags and output paths.

Each type refuses a value out of range, or not finite (nan, inf), with one line that says what to give
instead, before anything is loaded or written. argparse prints it as `error: argument --flag: ...`.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path

from cadis.errors import CadisError, quote
from cadis.seeds import MAX_SEED


def _bounds(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    def show(v: float) -> str:
        return str(v) if isinstance(v, int) else f"{v:g}"

    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {show(lo)}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {show(hi)}")
    return " and ".join(parts)


def _within(value: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    if lo is not None and (value <= lo if lo_open else value < lo):
        return False
    return not (hi is not None and (value >= hi if hi_open else value > hi))


def real(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
         hint: str = "") -> Callable[[str], float]:
    """A finite float within [lo, hi] (open ends where asked)."""
    hint = f"; {hint}" if hint else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number (got {quote(text)}){hint}") from None
        if not math.isfinite(value) or not _within(value, lo, hi, lo_open, hi_open):
            raise argparse.ArgumentTypeError(f"must be a finite number {_bounds(lo, hi, lo_open, hi_open)} "
                                             f"(got {quote(text)}){hint}")
        return value

    parse.__name__ = "number"
    return parse


def integer(lo: int | None = None, hi: int | None = None, hint: str = "") -> Callable[[str], int]:
    """An integer within [lo, hi]; integral floats such as 1e5 are accepted."""
    hint = f"; {hint}" if hint else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if not (math.isfinite(number) and number == int(number)):
                raise argparse.ArgumentTypeError(f"must be a whole number {_bounds(lo, hi, False, True)} "
                                                 f"(got {quote(text)}){hint}") from None
            value = int(number)
        if not _within(value, lo, hi, False, True):
            raise argparse.ArgumentTypeError(f"must be a whole number {_bounds(lo, hi, False, True)} "
                                             f"(got {quote(text)}){hint}")
        return value

    parse.__name__ = "integer"
    return parse


def reals(lo: float | None = None, hi: float | None = None, lo_open: bool = False, allow_empty: bool = False,
          hint: str = "") -> Callable[[str], tuple[float, ...]]:
    """Comma-separated finite floats, each within [lo, hi] (lo open if asked)."""
    one = real(lo, hi, lo_open)
    hint = f"; {hint}" if hint else ""

    def parse(text: str) -> tuple[float, ...]:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts and not allow_empty:
            raise argparse.ArgumentTypeError(f"needs at least one number (got {quote(text)}){hint}")
        try:
            return tuple(one(p) for p in parts)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"must be comma-separated finite numbers "
                                             f"{_bounds(lo, hi, lo_open, False)} (got {quote(text)}){hint}") from None

    parse.__name__ = "numbers"
    return parse


def run_setting(name: str, check: bool = True) -> Callable[[str], float | int]:
    """A run's sigma, alpha, n0 or n, judged by `parameters.parameter_problem` (the one rule). With `check`
    False the text is only parsed as a number (nan and inf included): certify leaves the range to CertifyConfig,
    so that its settings are checked once, in one place, whether they come from flags or from a preset."""

    def parse(text: str) -> float | int:
        from cadis.certification.parameters import parameter_problem

        try:
            value: float | int = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(parameter_problem(name, text)) from None
        if isinstance(value, float) and name in ("n0", "n") and math.isfinite(value) and value == int(value):
            value = int(value)  # 1e5
        problem = parameter_problem(name, value) if check else None
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = name
    return parse


def check_threads(count: int, flag: str = "--threads") -> int:
    """`count` torch CPU threads (0: torch's default), or a CadisError: OpenMP aborts the process when asked
    for far more threads than the machine has."""
    cores = os.cpu_count() or 1
    if not 0 <= count <= cores:
        raise CadisError(f"{flag} must be a whole number from 0 to {cores}, this machine's CPU count (got "
                         f"{quote(count)}); 0 keeps torch's default.")
    return count


def threads(text: str) -> int:
    """argparse type for --threads: a whole number from 0 to the machine's CPU count (see `check_threads`)."""
    value = integer(0, hint="0 keeps torch's default")(text)
    try:
        return check_threads(value)
    except CadisError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--threads ").rstrip(".")) from None


def seed(text: str) -> int:
    return integer(0, MAX_SEED, "e.g. 0")(text)


def shard(text: str) -> tuple[int, int]:
    """I/K with 0 <= I < K."""
    try:
        i, k = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like I/K, e.g. 0/4 (got {quote(text)})") from None
    if not 0 <= i < k:
        raise argparse.ArgumentTypeError(f"I/K needs 0 <= I < K, e.g. 0/4 (got {quote(text)})")
    return i, k


def batch_size(text: str) -> int | str:
    """A positive integer, or 'auto'."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto' (got {quote(text)})")
    return int(text)


def device(name: str) -> str:
    """A torch device string that this machine has; raises a CadisError (call it in `run`, torch is slow to load)."""
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise CadisError(f"--device {quote(name)} is not a device; use cpu, cuda, cuda:1 or mps.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CadisError(f"--device {name}: CUDA is not available here; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CadisError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise CadisError(f"--device {name}: MPS is not available here; use --device cpu.")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise CadisError(f"--device {name}: use cpu, cuda or mps.")
    return name


def results_file(text: str) -> Path:
    """--out of certify: a result TSV (a regular file, not ending in .json: its sidecar is FILE.json)."""
    from cadis.certification.output import output_problem

    problem = output_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return Path(text)


def output_file(text: str) -> Path:
    """A file analyze writes (--csv, --markdown, --html); missing folders are created when it is written."""
    from cadis.certification.output import file_problem

    problem = file_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return Path(text)


def folder(text: str) -> str:
    """A folder to create or reuse: not a file, and under no file (returned as given)."""
    path = Path(text)
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        where = "is a file" if parent == path else f"is under {parent}, which is a file"
        raise argparse.ArgumentTypeError(f"{text} {where}, not a folder; choose another path")
    return text

"""Checks of a saved model's files before a library reads them: JSON objects, safetensors headers and sizes,
and finite weights. Each failure is a CadisError that names the file and says what to do."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from cadis.errors import CadisError

RESTORE = "restore the directory (copy or download it again, or re-save the model)"


def first_line(error: BaseException) -> str:
    """The gist of a library's error: its first line (and the next one when the first only introduces it)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return (text[:300] + "...") if len(text) > 300 else text.rstrip(".")


def read_json_object(path: str | os.PathLike, fix: str = RESTORE) -> dict:
    """The JSON object in `path`, or a CadisError naming the file, what is wrong and `fix`."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise CadisError(f"{path} is missing; {fix}.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CadisError(f"{path} cannot be read ({first_line(e)}); {fix}.") from e
    if not text.strip():
        raise CadisError(f"{path} is empty; {fix}.")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise CadisError(f"{path} is not valid JSON ({first_line(e)}); {fix}.") from e
    except RecursionError:  # nested deeper than Python's parser recurses: no model config is
        raise CadisError(f"{path} is nested too deeply to be a model configuration; {fix}.") from None
    if not isinstance(data, dict):
        raise CadisError(f"{path} holds a JSON {type(data).__name__}, not an object; {fix}.")
    return data


def check_safetensors(path: str | os.PathLike, fix: str = RESTORE) -> None:
    """Refuse a missing, empty, truncated or otherwise unreadable safetensors file (header and size)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CadisError(f"{path} is missing; {fix}.")
    if path.stat().st_size == 0:
        raise CadisError(f"{path} is empty (0 bytes); {fix}.")
    try:
        with safe_open(str(path), "pt") as f:
            f.keys()
    except Exception as e:  # safetensors raises its own SafetensorError, and OSError
        raise CadisError(f"{path} is truncated or corrupt ({first_line(e)}); {fix}.") from e


def _tensor_files(directory: Path) -> list[Path]:
    return sorted([*directory.glob("*.safetensors"), *directory.glob("*/*.safetensors")])


def _count_nonfinite(tensors, what: str) -> tuple[list[str], int]:
    bad, total = [], 0
    for name, t in tensors:
        total += 1
        if t.is_meta:  # a library left a tensor it found no weights for uninitialised
            raise CadisError(f"The model {what} has no weights for {name} in its checkpoint; {RESTORE}.")
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad, total


def check_finite(model: torch.nn.Module | str | os.PathLike, name: str | None = None) -> None:
    """Refuse (CadisError) a model with a NaN or infinite weight: a module's parameters and buffers, or the
    safetensors files of a saved model directory (read tensor by tensor, without building the model; an
    unreadable file is refused too). The apps use it to leave such models out of their lists."""
    if isinstance(model, torch.nn.Module):
        what = name or getattr(model, "spec", "") or type(model).__name__
        bad, total = _count_nonfinite(model.state_dict().items(), what)
    else:
        from safetensors import safe_open

        directory = Path(model)
        what = name or str(directory)
        bad, total = [], 0
        for file in _tensor_files(directory):
            check_safetensors(file)
            with safe_open(str(file), "pt") as f:
                found, n = _count_nonfinite(((k, f.get_tensor(k)) for k in f.keys()), what)
            bad, total = bad + [f"{file.name}:{k}" for k in found], total + n
    if bad:
        raise CadisError(f"The model {what} has non-finite weights (NaN or inf) in {len(bad)} of {total} tensors "
                         f"(e.g. {bad[0]}); it cannot be used. Retrain it (a lower learning rate, or fp32) or "
                         "restore a good copy.")

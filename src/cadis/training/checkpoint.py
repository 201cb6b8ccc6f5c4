"""Resumable training state: safetensors weights, optimizer state and a JSON step counter; atomic writes.

A checkpoint directory is written to a temporary sibling and renamed into place, so an
interrupted save never leaves a half-written checkpoint; `write_atomic` does the same for a single
file (temporary sibling, fsync, rename). Loading uses safetensors and `torch.load(weights_only=True)`,
never unpickling.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cadis.errors import CadisError


def save_checkpoint(directory: str | os.PathLike, models: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer | None, state: dict[str, Any]) -> None:
    """Atomically write `{name}.safetensors` per model, `optimizer.pt` and `state.json`."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, model in models.items():
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(tensors, tmp / f"{name}.safetensors")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    _fsync_tree(tmp)
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    """Flush a directory's files to disk before it is renamed into place (a power cut then finds them whole)."""
    for f in directory.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def load_checkpoint(directory: str | os.PathLike, models: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer | None,
                    start_over: str = "delete it to start over") -> dict[str, Any] | None:
    """Restore models and optimizer in place; returns the saved state, or None if there is none.

    A checkpoint that cannot be read is a CadisError whose advice ends with `start_over` (callers name
    their own flags, e.g. finetune's --fresh)."""
    directory = Path(directory)
    if not directory.exists() and directory.with_name(directory.name + ".old").exists():
        directory = directory.with_name(directory.name + ".old")  # crashed between the two renames
    if not (directory / "state.json").exists():
        return None
    try:
        for name, model in models.items():
            model.load_state_dict(load_file(directory / f"{name}.safetensors"))
        if optimizer is not None and (directory / "optimizer.pt").exists():
            optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
        return json.loads((directory / "state.json").read_text())
    except Exception as e:  # safetensors, torch and json each raise their own types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CadisError(f"Checkpoint {directory} is corrupt or from another configuration ({first}); "
                         f"{start_over}.") from e


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state (names, dtypes, shapes, values): tells whether two models hold the same weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()

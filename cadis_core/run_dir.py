"""The directory of a fine-tuning run, and what may resume into it.

    out/config.json     the configuration, classifier spec, base weights' digest, parameter counts
    out/metrics.jsonl   one event per line ("step" and "eval"), mirrored in out/metrics.csv
    out/checkpoint/     the trained tensors and optimizer state of the last checkpoint
    out/model/          the fine-tuned classifier (adapter or merged) and finetune.json

Only the main process writes; every process reads the checkpoint.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .classifier import ImageClassifier
from .errors import CadisError
from .loading import save_classifier
from .presets import PROJECT_ROOT

STEP_FIELDS = ["loss", "loss_sce", "loss_madv", "selection_rate", "mask_rate", "acc_denoised", "warm_start_rate"]
CSV_FIELDS = ["kind", "step", *STEP_FIELDS, "lr", "images_per_s", "test_acc_denoised", "elapsed_s"]
NOT_COMPARED = {"out", "checkpoint_minutes", "compile"}  # may change between a run and its resumption


class _TrainedState(torch.nn.Module):
    """Shows save/load_checkpoint only the trained tensors (and buffers), so LoRA checkpoints stay small."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "target", model)  # not a submodule: its own state_dict stays hidden

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        full = self.target.state_dict()
        trained = {n for n, p in self.target.named_parameters() if p.requires_grad}
        trained |= {n for n, _ in self.target.named_buffers()} & set(full)
        return {n: full[n] for n in sorted(trained)}

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        expected = set(self.state_dict())
        if set(state) != expected:
            raise RuntimeError(f"checkpoint holds {len(state)} tensors, this model trains {len(expected)}")
        return self.target.load_state_dict(state, strict=False)


class _MetricsLog:
    """metrics.jsonl and metrics.csv under `out`; on resume, rows after the resumed step are dropped."""

    def __init__(self, out: Path, start: int, enabled: bool):
        self.enabled = enabled
        self.jsonl, self.csv = out / "metrics.jsonl", out / "metrics.csv"
        if not enabled:
            return
        rows = []
        if self.jsonl.exists() and start > 0:  # a fresh start (no checkpoint) keeps nothing
            rows = [r for r in map(json.loads, self.jsonl.read_text().splitlines()) if r["step"] <= start]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with self.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def write(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.jsonl.open("a") as f:
            f.write(json.dumps(event) + "\n")
        with self.csv.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore").writerow(event)


def _compared(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in NOT_COMPARED}


def check_out_dir(out: Path, meta: dict[str, Any], state: dict[str, Any] | None) -> None:
    """A run may only resume into an out dir holding the same configuration (and the same base weights)."""
    saved = []
    if (out / "config.json").exists():
        saved.append(json.loads((out / "config.json").read_text()))
    if state is not None:
        saved.append({"config": state["config"], "classifier": state.get("classifier", meta["classifier"]),
                      "base_weights": state.get("base_weights", meta["base_weights"])})
    for old in saved:
        if _compared(old["config"]) != _compared(meta["config"]) or old.get("classifier") != meta["classifier"]:
            diff = sorted(k for k in meta["config"] if k not in NOT_COMPARED
                          and old["config"].get(k) != meta["config"][k])
            raise CadisError(f"{out} holds a fine-tuning run with another configuration "
                             f"(differs in: {', '.join(diff) or 'classifier'}); use another --out or delete it.")
        # Same spec, other weights (a retrained classifier): resuming would mix two bases. Runs from
        # before the digest was recorded have none and are not checked.
        if old.get("base_weights", meta["base_weights"]) != meta["base_weights"]:
            raise CadisError(f"{out} holds a fine-tuning run of other weights under the classifier spec "
                             f"{meta['classifier']!r} (it was retrained since); use another --out or delete it.")


class RunDir:
    """One fine-tuning run's directory. `meta` is what config.json holds: {"config", "classifier",
    "base_weights", ...}; `main` is whether this process writes."""

    def __init__(self, out: str | Path, meta: dict[str, Any], main: bool = True):
        self.out, self.meta, self.main = Path(out), meta, main
        self.log: _MetricsLog | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoint"

    def resume(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[int, float]:
        """Load the last checkpoint of this run into `model`'s trained tensors and `opt`, after checking
        that the directory holds this run; returns (step, elapsed seconds), (0, 0.0) for a fresh start."""
        check_out_dir(self.out, self.meta, None)  # before loading, so a changed setup is reported as such
        state = load_checkpoint(self.checkpoint_dir, {"trained": _TrainedState(model)}, opt)
        check_out_dir(self.out, self.meta, state)
        return (state["step"], state["elapsed_s"]) if state else (0, 0.0)

    def start(self, step: int) -> None:
        """Write config.json and open the metrics files, dropping rows logged after `step`."""
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(self.meta, indent=2))
        self.log = _MetricsLog(self.out, step, self.main)

    def write_metrics(self, event: dict[str, Any]) -> None:
        assert self.log is not None, "start() opens the metrics files"
        self.log.write(event)

    def save_checkpoint(self, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int,
                        elapsed_s: float) -> Path:
        """Checkpoint `model`'s trained tensors and `opt` at `step`; returns the checkpoint directory."""
        if self.main:
            meta = {k: self.meta[k] for k in ("config", "classifier", "base_weights")}
            save_checkpoint(self.checkpoint_dir, {"trained": _TrainedState(model)}, opt,
                            {"step": step, "elapsed_s": elapsed_s, **meta})
        return self.checkpoint_dir

    def save_model(self, classifier: ImageClassifier, save_as: str) -> Path:
        """Save the fine-tuned classifier (adapter or merged) with finetune.json; returns out/model."""
        path = self.out / "model"
        if self.main:
            save_classifier(classifier, path, save_as, PROJECT_ROOT)
            (path / "finetune.json").write_text(json.dumps(self.meta, indent=2))
        return path

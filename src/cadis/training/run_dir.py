"""The directory of a fine-tuning run, and what may resume into it.

    out/config.json     the configuration, classifier spec, base weights' digest, parameter counts
    out/metrics.jsonl   one event per line ("step" and "eval"), mirrored in out/metrics.csv
    out/checkpoint/     the trained tensors and optimizer state of the last checkpoint
    out/model/          the fine-tuned classifier (adapter or merged) and finetune.json

Only the main process writes; every process reads the checkpoint. A kill at any moment leaves a directory
that resumes: config.json and the rewritten metrics files are replaced atomically (temporary file, rename),
the checkpoint and the model directory are renamed into place whole, and a torn last line of metrics.jsonl
(killed mid-append) is dropped when the run resumes. A config.json that cannot be read (from older versions,
which wrote it in place) is rewritten; the checkpoint's own copy of the configuration still guards resuming.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from cadis.errors import CadisError
from cadis.files import write_atomic
from cadis.models.classifier import ImageClassifier
from cadis.models.loading import check_finite, save_classifier
from cadis.models.presets import SEARCH_ROOTS
from cadis.training.checkpoint import load_checkpoint, save_checkpoint
from cadis.training.finetune_config import FinetuneConfig

STEP_FIELDS = ["loss", "loss_sce", "loss_madv", "selection_rate", "mask_rate", "acc_denoised", "warm_start_rate"]
CSV_FIELDS = ["kind", "step", *STEP_FIELDS, "lr", "images_per_s", "test_acc_denoised", "elapsed_s"]
NOT_COMPARED = {"out", "checkpoint_minutes", "compile"}  # may change between a run and its resumption
START_OVER = ("pass --fresh to start this run over (it deletes the run's checkpoint, metrics and model), "
              "or use another --out")
# What --fresh deletes: only the files a run writes, so an --out that holds other files keeps them.
RUN_FILES = ("checkpoint", "checkpoint.tmp", "checkpoint.old", "model", "model.tmp", "model.old", "config.json",
             "metrics.jsonl", "metrics.csv")


def read_metrics_rows(path: Path) -> list[dict[str, Any]]:
    """The events of a metrics.jsonl; a torn line (a kill mid-append) or any line that is not an event is skipped."""
    rows = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and "kind" in row:
            rows.append(row)
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


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
            rows = [r for r in read_metrics_rows(self.jsonl) if r["step"] <= start]
        # both rewritten whole (atomically), so a torn last line is gone and the csv mirrors the jsonl again
        write_atomic(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        write_atomic(self.csv, _csv_text(rows))

    def write(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.jsonl.open("a") as f:
            f.write(json.dumps(event) + "\n")
        with self.csv.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore").writerow(event)


def check_writable(out: str | Path) -> None:
    """Refuse, before anything is loaded or written, an out dir that is a file, lies under a file, or cannot be
    written to."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CadisError(f"--out {out} is a file, not a directory; choose another --out.")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CadisError(f"--out {out} lies under {parent}, which is a file; choose another --out.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CadisError(f"--out {out} cannot be written ({parent} is not writable); choose another --out.")


def _compared(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that must match to resume. A setting at its default counts as absent, so a run saved before
    a new setting existed resumes under a version that has it."""
    defaults = {f.name: f.default for f in fields(FinetuneConfig)}
    return {k: v for k, v in config.items() if k not in NOT_COMPARED and not (k in defaults and v == defaults[k])}


def _same_classifier(old: dict[str, Any], meta: dict[str, Any]) -> bool:
    """The same spec, or the same weights (digest) under a spec that names the same model from another checkout
    (`local-dir:/a/assets/vit` and `local-dir:/b/assets/vit`), so a run resumes on another machine."""
    was, now = str(old.get("classifier")), str(meta["classifier"])
    if was == now:
        return True
    scheme, _, path = was.rpartition(":")
    scheme_now, _, path_now = now.rpartition(":")
    return (old.get("base_weights") is not None and old.get("base_weights") == meta["base_weights"]
            and scheme == scheme_now and Path(path).name == Path(path_now).name)


def check_out_dir(out: Path, meta: dict[str, Any], state: dict[str, Any] | None) -> None:
    """A run may only resume into an out dir holding the same configuration (and the same base weights)."""
    saved = []
    if (out / "config.json").exists():
        try:
            old = json.loads((out / "config.json").read_text())
        except (ValueError, UnicodeDecodeError):
            old = None  # unreadable (written in place by older versions and killed): start() rewrites it
        if isinstance(old, dict) and isinstance(old.get("config"), dict):
            saved.append(old)
    if state is not None:
        saved.append({"config": state["config"], "classifier": state.get("classifier", meta["classifier"]),
                      "base_weights": state.get("base_weights", meta["base_weights"])})
    for old in saved:
        if _compared(old["config"]) != _compared(meta["config"]) or not _same_classifier(old, meta):
            new, was = _compared(meta["config"]), _compared(old["config"])
            diff = sorted(k for k in new.keys() | was.keys() if new.get(k) != was.get(k))
            raise CadisError(f"{out} holds a fine-tuning run with another configuration "
                             f"(differs in: {', '.join(diff) or 'classifier'}); use another --out, or pass --fresh "
                             "to replace that run.")
        # Same spec, other weights (a retrained classifier): resuming would mix two bases. Runs from
        # before the digest was recorded have none and are not checked.
        if old.get("base_weights", meta["base_weights"]) != meta["base_weights"]:
            raise CadisError(f"{out} holds a fine-tuning run of other weights under the classifier spec "
                             f"{meta['classifier']!r} (it was retrained since); use another --out, or pass --fresh "
                             "to replace that run.")


class RunDir:
    """One fine-tuning run's directory. `meta` is what config.json holds: {"config", "classifier",
    "base_weights", ...}; `main` is whether this process writes."""

    def __init__(self, out: str | Path, meta: dict[str, Any], main: bool = True):
        self.out, self.meta, self.main = Path(out), meta, main
        self.log: _MetricsLog | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoint"

    def clear(self) -> None:
        """Delete this directory's run (checkpoint, metrics, config, model) to start over; other files stay."""
        if self.main:
            for name in RUN_FILES:
                path = self.out / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()

    def resume(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[int, float]:
        """Load the last checkpoint of this run into `model`'s trained tensors and `opt`, after checking
        that the directory holds this run; returns (step, elapsed seconds), (0, 0.0) for a fresh start."""
        check_out_dir(self.out, self.meta, None)  # before loading, so a changed setup is reported as such
        state = load_checkpoint(self.checkpoint_dir, {"trained": _TrainedState(model)}, opt, START_OVER)
        check_out_dir(self.out, self.meta, state)
        return (state["step"], state["elapsed_s"]) if state else (0, 0.0)

    def start(self, step: int) -> None:
        """Write config.json and open the metrics files, dropping rows logged after `step`."""
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_atomic(self.out / "config.json", json.dumps(self.meta, indent=2))
        self.log = _MetricsLog(self.out, step, self.main)

    def write_metrics(self, event: dict[str, Any]) -> None:
        assert self.log is not None, "start() opens the metrics files"
        self.log.write(event)

    def save_checkpoint(self, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int,
                        elapsed_s: float) -> Path:
        """Checkpoint `model`'s trained tensors and `opt` at `step`; returns the checkpoint directory.
        Non-finite weights are refused (CadisError), so the last good checkpoint stays."""
        if self.main:
            check_finite(model, f"fine-tuned at step {step}")
            meta = {k: self.meta[k] for k in ("config", "classifier", "base_weights")}
            save_checkpoint(self.checkpoint_dir, {"trained": _TrainedState(model)}, opt,
                            {"step": step, "elapsed_s": elapsed_s, **meta})
        return self.checkpoint_dir

    def save_model(self, classifier: ImageClassifier, save_as: str) -> Path:
        """Save the fine-tuned classifier (adapter or merged) with finetune.json; returns out/model.

        Written to out/model.tmp and renamed into place, so out/model is complete whenever it exists."""
        path = self.out / "model"
        if self.main:
            tmp, old = path.with_name("model.tmp"), path.with_name("model.old")
            shutil.rmtree(tmp, ignore_errors=True)
            save_classifier(classifier, tmp, save_as, SEARCH_ROOTS[0])
            (tmp / "finetune.json").write_text(json.dumps(self.meta, indent=2))
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
                path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        return path

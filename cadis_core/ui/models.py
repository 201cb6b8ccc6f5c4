"""Which models the apps use: the model source (preset and environment), the loaded bundle, fine-tuned ones.

A `ModelBundle` is loaded once per process and shared by every session; its `lock` serialises the heavy work.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..acceleration import default_acceleration
from ..classifier import ImageClassifier
from ..data import ASSETS, ImageDataset
from ..denoiser import DiffusionDenoiser
from ..errors import CadisError
from ..loading import missing_directory
from ..presets import Preset, resolve_models
from ..smoothing import DenoisedSmoothing

ROOT = ASSETS.parent


def runs_dir() -> Path:
    """Where the apps write fine-tuning runs and look for the user's results: $CADIS_RUNS_DIR or runs/."""
    return Path(os.environ.get("CADIS_RUNS_DIR") or ROOT / "runs")


def model_source(preset: str | None = None, denoiser: str | None = None, classifier: str | None = None) -> Preset:
    """The preset the apps use: $CADIS_PRESET (default fashion-mnist), with its denoiser and classifier
    replaced by the arguments or by $CADIS_DENOISER / $CADIS_CLASSIFIER (a directory or a hub id/spec)."""
    return resolve_models(preset or os.environ.get("CADIS_PRESET") or "fashion-mnist",
                          denoiser or os.environ.get("CADIS_DENOISER"),
                          classifier or os.environ.get("CADIS_CLASSIFIER"))


def is_custom(p: Preset) -> bool:
    """Whether the preset's models were replaced by named ones."""
    return p.custom


@dataclass
class ModelBundle:
    """Models and data of one preset, loaded once per process and shared by all sessions.

    `lock` serialises heavy work on the shared models, so two sessions certifying at once queue
    instead of halving each other's speed (and the second sees that it waits)."""

    preset: Preset
    denoiser: DiffusionDenoiser
    classifier: ImageClassifier
    dataset: ImageDataset
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the denoiser's input: the space where noise is added and radii hold."""
        cfg = self.denoiser.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        return int(cfg.in_channels), int(size), int(size)

    @property
    def classes(self) -> list[str]:
        return list(self.classifier.classes)

    def smoothing(self, sigma: float, mode: str = "one-shot", steps: int = 10,
                  batch_size: int | None = None) -> DenoisedSmoothing:
        kwargs = {"steps": steps} if mode == "multistep" else {}
        return DenoisedSmoothing(self.denoiser, self.classifier, sigma, batch_size or self.preset.batch_size,
                                 mode=mode, acceleration=default_acceleration(self.denoiser.device), **kwargs)


def load_bundle(p: Preset, device: str = "cpu") -> ModelBundle:
    """Load a preset's models and test split, with a CadisError that says what is missing."""
    if p.custom:  # named models: a plainly missing directory is reported before anything loads
        for spec in (p.denoiser, p.classifier):
            if (path := missing_directory(spec)) is not None:
                raise CadisError(f"Model directory {path} does not exist.")
    denoiser, classifier = p.load_models(device)
    dataset = p.load_dataset("test")
    if classifier.num_classes != len(dataset.classes):
        raise CadisError(f"The classifier has {classifier.num_classes} classes but {p.dataset} has "
                         f"{len(dataset.classes)}; pick a classifier trained on {p.dataset}.")
    return ModelBundle(p, denoiser, classifier, dataset)


def finetuned_models(roots: list[Path] | None = None) -> dict[str, Path]:
    """Fine-tuned classifiers the apps can pick: runs/finetune/*/model and assets/models/finetuned/*."""
    found: dict[str, Path] = {}
    candidates = []
    for root in roots or [runs_dir() / "finetune", ASSETS / "models" / "finetuned"]:
        if root.name == "finetune":
            candidates += [(d.parent.name, d) for d in sorted(root.glob("*/model"))]
        else:
            candidates += [(d.name, d) for d in sorted(root.glob("*"))]
    for name, d in candidates:
        if (d / "config.json").is_file() or (d / "adapter_config.json").is_file():
            found[name if name not in found else f"{name} ({d})"] = d
    return found

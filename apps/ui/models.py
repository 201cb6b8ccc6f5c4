"""Which models the apps use: the model source (preset and environment), the loaded bundle, fine-tuned ones.

A `ModelBundle` is loaded once per process and shared by every session; its `lock` serialises the heavy work.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from apps.ui.turns import Turns
from cadis.acceleration import Acceleration, auto_precision
from cadis.certification.smoothing import DenoisedSmoothing
from cadis.data import ImageDataset
from cadis.errors import CadisError
from cadis.models.classifier import ImageClassifier
from cadis.models.denoiser import DiffusionDenoiser
from cadis.models.loading import missing_directory
from cadis.models.presets import FINETUNED, Preset, get_preset, resolve_models

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the checkout the apps run from
OFF_THE_SHELF = "off-the-shelf"  # the session's own classifier (the preset's, or the one named on the Models page)


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

    `lock` serialises heavy work on the shared models (first come, first served), so two sessions certifying at
    once take turns instead of halving each other's speed, and the second sees its place in line."""

    preset: Preset
    denoiser: DiffusionDenoiser
    classifier: ImageClassifier
    dataset: ImageDataset
    lock: Turns = field(default_factory=Turns)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the denoiser's input: the space where noise is added and radii hold."""
        return self.denoiser.image_shape

    @functools.cached_property
    def acceleration(self) -> Acceleration:
        """The precision the apps certify at, as `cadis certify --precision auto` picks it: on a CPU the faster of
        fp32 and bf16 for these models on this machine (timed once per machine and model, cached on disk)."""
        smooth = DenoisedSmoothing(self.denoiser, self.classifier, self.preset.sigma, 64)
        key = f"{self.preset.denoiser}|{self.preset.classifier}|one-shot|sigma={self.preset.sigma:g}"
        precision, _ = auto_precision(smooth.classify_noisy, self.input_shape, self.preset.sigma, key,
                                      self.denoiser.device)
        return Acceleration(precision)

    @property
    def classes(self) -> list[str]:
        return list(self.classifier.classes)

    def smoothing(self, sigma: float, mode: str = "one-shot", steps: int = 10, batch_size: int | None = None,
                  classifier: torch.nn.Module | None = None) -> DenoisedSmoothing:
        """Denoised smoothing with the bundle's denoiser and its classifier (or `classifier`, e.g. a fine-tuned
        one)."""
        kwargs = {"steps": steps} if mode == "multistep" else {}
        return DenoisedSmoothing(self.denoiser, classifier or self.classifier, sigma,
                                 batch_size or self.preset.batch_size, mode=mode,
                                 acceleration=self.acceleration, **kwargs)


def load_bundle(p: Preset, device: str = "cpu") -> ModelBundle:
    """Load a preset's models and test split, with a CadisError that says what is missing."""
    if p.custom:  # named models: a plainly missing directory is reported before anything loads
        for spec in (p.denoiser, p.classifier):
            if (path := missing_directory(spec)) is not None:
                raise CadisError(f"Model directory {path} does not exist.")
    try:
        denoiser, classifier = p.load_models(device)
    except CadisError:
        raise
    except Exception as e:  # a corrupt or foreign directory: one line that says which model, not a traceback
        log.warning("loading %s failed", p, exc_info=True)
        raise CadisError(f"Could not load {_suspects(p)}: {type(e).__name__}: {_first_line(e)}. Check that the "
                         "directory holds a complete save (config.json and its weights), or pick other models.") from e
    dataset = p.load_dataset("test")
    if classifier.num_classes != len(dataset.classes):
        raise CadisError(f"The classifier has {classifier.num_classes} classes but {p.dataset} has "
                         f"{len(dataset.classes)}; pick a classifier trained on {p.dataset}.")
    return ModelBundle(p, denoiser, classifier, dataset)


def _suspects(p: Preset) -> str:
    """The models a loading error can come from: the ones the user replaced, else both."""
    try:
        original = get_preset(p.name)
    except CadisError:
        original = None
    named = [(kind, spec) for kind, spec, base in (("denoiser", p.denoiser, original and original.denoiser),
                                                   ("classifier", p.classifier, original and original.classifier))
             if spec != base]
    return " and ".join(f"the {kind} {spec!r}" for kind, spec in named or [("denoiser", p.denoiser),
                                                                          ("classifier", p.classifier)])


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def finetuned_models(roots: list[Path] | None = None) -> dict[str, Path]:
    """Fine-tuned classifiers the apps can pick: runs/finetune/*/model and src/cadis/assets/finetuned/*."""
    found: dict[str, Path] = {}
    candidates = []
    for root in roots or [runs_dir() / "finetune", FINETUNED]:
        if root.name == "finetune":
            candidates += [(d.parent.name, d) for d in sorted(root.glob("*/model"))]
        else:
            candidates += [(d.name, d) for d in sorted(root.glob("*"))]
    for name, d in candidates:
        if (d / "config.json").is_file() or (d / "adapter_config.json").is_file():
            label, k = name, 1
            while label in found:  # a second model of the same name is numbered: a label shows no server path
                k += 1
                label = f"{name} ({k})"
            found[label] = d
    return found


def finetuned_info(path: Path) -> dict:
    """What a fine-tuned model directory says about itself: method, σ, steps, LoRA, and its base classifier for an
    adapter (None for what its files do not say or cannot be read; `readable` is False for a corrupt
    finetune.json)."""
    import json

    def read(name: str) -> dict:
        try:
            data = json.loads((Path(path) / name).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    meta, adapter = read("finetune.json"), read("cadis_adapter.json")
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    return {"method": cfg.get("method"), "σ": cfg.get("sigma"), "steps": cfg.get("steps"), "LoRA": cfg.get("lora"),
            "kind": "LoRA adapter" if adapter or (Path(path) / "adapter_config.json").is_file() else "merged weights",
            "base": adapter.get("base_classifier_in_project") or adapter.get("base_classifier"),
            "readable": bool(meta) or not (Path(path) / "finetune.json").exists()}

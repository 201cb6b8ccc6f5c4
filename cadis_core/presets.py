"""Named bundles of dataset, denoiser, classifier and default σ / N."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .classifier import ImageClassifier
from .data import ASSETS, ImageDataset, load_dataset
from .denoiser import DiffusionDenoiser
from .errors import CadisError
from .loading import ModelSpec, load_classifier, parse_spec

PROJECT_ROOT = ASSETS.parent
MODELS = ASSETS / "models"
# Where adapters' relative base specs are resolved: adapters copied into the project (assets/models/finetuned)
# find their base there. Passed to loading, which does not guess where the project is.
SEARCH_ROOTS = (PROJECT_ROOT,)


@dataclass(frozen=True)
class Preset:
    name: str
    dataset: str
    denoiser: str
    classifier: str
    sigma: float
    n0: int
    n: int
    batch_size: int
    online: bool
    description: str

    def check_available(self) -> None:
        """Fail fast, with what to do, when the preset's files are not here."""
        for spec in (self.denoiser, self.classifier):
            path = parse_spec(spec).location
            if not self.online and not Path(path).is_dir():
                raise CadisError(f"Preset {self.name!r} needs {path}, which is missing. Restore assets/ from git "
                                 "or retrain with `python -m cadis_core zoo train-denoiser` / `train-classifier`.")
        if self.online and os.environ.get("HF_HUB_OFFLINE") == "1":
            from huggingface_hub import snapshot_download

            for repo in (self.denoiser, parse_spec(self.classifier).location):
                try:
                    snapshot_download(repo, local_files_only=True)
                except Exception as e:  # huggingface_hub raises several types for "not cached"
                    raise CadisError(f"Preset {self.name!r} needs hub model {repo}, which is not cached and "
                                     "HF_HUB_OFFLINE=1. Go online once (unset HF_HUB_OFFLINE) to download it.") from e

    def load_models(self, device: str | torch.device = "cpu") -> tuple[DiffusionDenoiser, ImageClassifier]:
        self.check_available()
        return (DiffusionDenoiser.from_pretrained(self.denoiser, device),
                load_classifier(self.classifier, device, search_roots=SEARCH_ROOTS))

    def load_dataset(self, split: str = "test") -> ImageDataset:
        return load_dataset(self.dataset, split)


PRESETS: dict[str, Preset] = {
    p.name: p for p in [
        Preset("fashion-mnist", "fashion-mnist", str(MODELS / "fmnist-ddpm"),
               str(ModelSpec("local-dir", str(MODELS / "fmnist-vit"))),
               sigma=0.25, n0=100, n=1000, batch_size=500, online=False,
               description="Embedded offline default: our Fashion-MNIST DDPM and ViT (assets/models)."),
        Preset("cifar10", "cifar10", "google/ddpm-cifar10-32",
               str(ModelSpec("hf", "aaraki/vit-base-patch16-224-in21k-finetuned-cifar10")),
               sigma=0.25, n0=100, n=10000, batch_size=400, online=True,
               description="The paper's CIFAR-10 setting: google/ddpm-cifar10-32 and a ViT-B/16 (hub, GPU)."),
    ]
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise CadisError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name]


"""Named bundles of dataset, denoiser, classifier and default σ / N, and the models a run uses."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cadis.data import ASSETS, ImageDataset, load_dataset
from cadis.errors import CadisError, quote
from cadis.models.classifier import ImageClassifier
from cadis.models.denoiser import DiffusionDenoiser
from cadis.models.loading import ModelSpec, is_local, load_classifier, parse_spec

MODELS = ASSETS
FINETUNED = ASSETS / "finetuned"  # the fine-tuned adapters that ship with the package (the benchmark's)
# Where adapters' relative base specs are resolved: an adapter whose base is an embedded model records it relative to
# the package's assets, so it loads wherever the package is installed. Loading itself guesses no location.
SEARCH_ROOTS = (ASSETS,)


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
    custom: bool = False  # models named by the user: they load as given, without the preset's file checks

    def check_available(self) -> None:
        """Fail fast, with what to do, when the preset's files are not here."""
        for spec in (self.denoiser, self.classifier):
            path = parse_spec(spec).location
            if not self.online and not Path(path).is_dir():
                raise CadisError(f"Preset {self.name!r} needs {path}, which is missing. Restore assets/ from git "
                                 "or retrain with `python -m experiments zoo train-denoiser` / `train-classifier`.")
        if self.online and os.environ.get("HF_HUB_OFFLINE") == "1":
            from huggingface_hub import snapshot_download

            for repo in (self.denoiser, parse_spec(self.classifier).location):
                try:
                    snapshot_download(repo, local_files_only=True)
                except Exception as e:  # huggingface_hub raises several types for "not cached"
                    raise CadisError(f"Preset {self.name!r} needs hub model {repo}, which is not cached and "
                                     "HF_HUB_OFFLINE=1. Go online once (unset HF_HUB_OFFLINE) to download it.") from e

    def load_models(self, device: str | torch.device = "cpu") -> tuple[DiffusionDenoiser, ImageClassifier]:
        if not self.custom:  # the loaders of named models say themselves what is missing
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
               description="Embedded offline default: our Fashion-MNIST DDPM and ViT (src/cadis/assets)."),
        Preset("cifar10", "cifar10", "google/ddpm-cifar10-32",
               str(ModelSpec("hf", "aaraki/vit-base-patch16-224-in21k-finetuned-cifar10")),
               sigma=0.25, n0=100, n=10000, batch_size=400, online=True,
               description="The paper's CIFAR-10 setting: google/ddpm-cifar10-32 and a ViT-B/16 (hub, GPU)."),
    ]
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise CadisError(f"Unknown preset {quote(name)}; choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name]


def resolve_models(preset: str | None, denoiser: str | None = None, classifier: str | None = None,
                   dataset: str | None = None) -> Preset:
    """The bundle a run uses: the named preset, unless the user named models (or a dataset), which replace its own.

    Without a preset, denoiser, classifier and dataset must all be named; they make a "custom" bundle with the
    command line's defaults. Replaced models make the bundle `custom`, online unless both are local directories."""
    if preset is None:
        if not (denoiser and classifier and dataset):
            raise CadisError("Give --preset NAME, or all of --denoiser, --classifier and --dataset.")
        return Preset("custom", dataset, denoiser, classifier, sigma=0.25, n0=100, n=10000, batch_size=256,
                      online=not (is_local(denoiser) and is_local(classifier)), custom=True,
                      description=f"Models named: denoiser {denoiser}, classifier {classifier}.")
    p = get_preset(preset)
    den, clf = denoiser or p.denoiser, classifier or p.classifier
    if dataset and dataset != p.dataset:
        p = replace(p, dataset=dataset)
    if (den, clf) == (p.denoiser, p.classifier):
        return p
    return replace(p, denoiser=den, classifier=clf, online=not (is_local(den) and is_local(clf)), custom=True,
                   description=f"{p.description} Models replaced: denoiser {den}, classifier {clf}.")

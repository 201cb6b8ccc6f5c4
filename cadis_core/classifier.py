"""Off-the-shelf classifiers from timm or transformers, wrapped to take [0, 1] images.

Specs:
- `local-dir:PATH`, `hf-hub:ID` or a timm model name: `timm.create_model(spec, pretrained=True)`;
- `hf:ID_OR_PATH`: transformers `AutoModelForImageClassification`;
- a bare directory: timm local-dir if its config.json has `architecture`, transformers if `model_type`,
  and a peft LoRA adapter (adapter_config.json) on top of its base classifier.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import CadisError


class ImageClassifier(torch.nn.Module):
    """Maps [0, 1] images of any size and channel count to logits.

    It adapts channels (grey ↔ RGB), resizes (bicubic, antialiased) to the model's input size,
    and normalises with the model's own mean/std.
    """

    def __init__(self, model: torch.nn.Module, input_size: tuple[int, int, int], mean, std,
                 classes: list[str] | None = None, spec: str = "", logits_attr: str | None = None):
        super().__init__()
        self.model = model
        self.input_size = tuple(int(s) for s in input_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.classes = classes or [str(i) for i in range(self.num_classes_from_model())]
        self.spec = spec
        self.logits_attr = logits_attr  # transformers outputs carry logits in an attribute

    def num_classes_from_model(self) -> int:
        return int(getattr(self.model, "num_classes", 0) or self.model.config.num_labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self.input_size
        if x.shape[1] != c:
            if x.shape[1] == 1:
                x = x.expand(-1, c, -1, -1)
            elif c == 1:
                x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
            else:
                raise CadisError(f"Cannot map {x.shape[1]} channels to the classifier's {c}.")
        if tuple(x.shape[-2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(self.preprocess(x))
        return getattr(out, self.logits_attr) if self.logits_attr else out


def _timm_classifier(spec: str) -> ImageClassifier:
    import timm

    try:
        model = timm.create_model(spec, pretrained=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise CadisError(f"Could not load timm model {spec!r}: {str(e).splitlines()[0]}. Use local-dir:PATH "
                         "for a saved model, or go online for hub models (unset HF_HUB_OFFLINE).") from e
    cfg = model.pretrained_cfg
    classes = None
    if spec.startswith("local-dir:"):
        classes = json.loads((Path(spec[len("local-dir:"):]) / "config.json").read_text()).get("label_names")
    return ImageClassifier(model.eval(), cfg["input_size"], cfg["mean"], cfg["std"], classes, spec)


def _transformers_classifier(name: str) -> ImageClassifier:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise CadisError(f"Could not load transformers model {name!r}: {str(e).splitlines()[0]}.") from e
    mean, std, size = [0.5] * 3, [0.5] * 3, model.config.image_size
    with contextlib.suppress(OSError, ValueError):
        proc = AutoImageProcessor.from_pretrained(name)
        mean, std = proc.image_mean, proc.image_std
        size = proc.size.get("height", size) if isinstance(proc.size, dict) else size
    channels = getattr(model.config, "num_channels", 3)
    classes = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return ImageClassifier(model.eval(), (channels, size, size), mean, std, classes, f"hf:{name}", "logits")


def load_classifier(spec: str, device: str | torch.device = "cpu") -> ImageClassifier:
    """Load a classifier from a timm name/`local-dir:`/`hf-hub:` spec, `hf:ID`, or a directory."""
    if spec.startswith("hf:"):
        clf = _transformers_classifier(spec[3:])
    elif spec.startswith("local-dir:") or Path(spec).is_dir():
        path = Path(spec.removeprefix("local-dir:"))
        if not path.is_dir():
            raise CadisError(f"Classifier directory {path} does not exist.")
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise CadisError(f"Classifier directory {path} has no config.json; give a timm local-dir, a "
                             "transformers save_pretrained directory or a LoRA adapter directory.")
        if (path / "adapter_config.json").is_file():
            from .lora import load_adapter_classifier

            clf = load_adapter_classifier(path)
        elif "model_type" in json.loads((path / "config.json").read_text()):
            clf = _transformers_classifier(str(path))
        else:
            clf = _timm_classifier(f"local-dir:{path}")
    elif os.sep in spec or spec.startswith("."):
        raise CadisError(f"Classifier directory {spec} does not exist.")
    else:
        clf = _timm_classifier(spec)
    return clf.to(device).eval().requires_grad_(False)

"""Which parameters fine-tuning updates (peft LoRA or all), and how the result is saved and loaded.

LoRA (Hu et al., 2022) adds a rank-r update B·A (scaled by alpha/r) to the attention projections;
the classification head is trained in full through peft's `modules_to_save`. FT-CADIS updates
about 1% of a ViT's parameters this way.

A fine-tuned classifier is saved either as
- an adapter directory: peft's `adapter_config.json` + `adapter_model.safetensors` and
  `cadis_adapter.json` naming the base classifier spec, rebuilt by `load_adapter_classifier`; or
- merged weights: LoRA folded into the base model, saved in the base's own layout (timm local-dir
  with `save_for_hf`, or transformers `save_pretrained`).
Both load through `cadis_core.classifier.load_classifier(directory)`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from .classifier import ImageClassifier, load_classifier
from .data import ASSETS
from .errors import CadisError

ADAPTER_META = "cadis_adapter.json"
PROJECT_ROOT = ASSETS.parent
SAVE_FORMATS = ("adapter", "merged")


def default_targets(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    """(LoRA target module names, fully trained module names) for timm and transformers ViTs."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if "qkv" in names:  # timm ViT / DeiT / EVA: one fused projection per block
        targets = ["qkv"]
    elif {"query", "value"} <= names:  # transformers ViT: the original LoRA recipe (W_q, W_v)
        targets = ["query", "value"]
    else:
        raise CadisError(f"No attention projections named qkv or query/value in {type(model).__name__}; "
                         "fine-tune it in full (--full) instead.")
    head = getattr(model, "pretrained_cfg", {}).get("classifier") or ("classifier" if "classifier" in names else None)
    if head is None:
        raise CadisError(f"Cannot find the classification head of {type(model).__name__}; use --full.")
    return targets, [head]


def apply_lora(classifier: ImageClassifier, r: int = 4, alpha: float = 4, dropout: float = 0.0,
               target_modules: list[str] | None = None,
               modules_to_save: list[str] | None = None) -> ImageClassifier:
    """Wrap `classifier.model` in a peft LoRA model (in place): only LoRA factors and the head train."""
    if isinstance(classifier.model, PeftModel):
        raise CadisError("This classifier already carries a LoRA adapter.")
    targets, head = default_targets(classifier.model)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules or targets,
                        modules_to_save=modules_to_save or head)
    classifier.model = get_peft_model(classifier.model, config)
    return classifier


def enable_full_finetuning(classifier: ImageClassifier) -> ImageClassifier:
    """Every parameter of the classifier trains (in place)."""
    classifier.requires_grad_(True)
    return classifier


def is_lora(classifier: ImageClassifier) -> bool:
    return isinstance(classifier.model, PeftModel)


def trainable_parameters(classifier: ImageClassifier) -> tuple[int, int]:
    """(trainable, total) parameter counts; peft's own count for LoRA models (the total then
    includes the head's frozen original next to its trained copy)."""
    if is_lora(classifier):
        return classifier.model.get_nb_trainable_parameters()
    params = list(classifier.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def base_model(classifier: ImageClassifier) -> torch.nn.Module:
    """The timm/transformers model inside (with LoRA layers injected, if any)."""
    return classifier.model.get_base_model() if is_lora(classifier) else classifier.model


def merged_classifier(classifier: ImageClassifier) -> ImageClassifier:
    """A copy of the classifier with LoRA folded into the weights (the original is untouched)."""
    merged = copy.deepcopy(classifier)
    if is_lora(merged):
        merged.model = merged.model.merge_and_unload()
    return merged


def _portable_spec(spec: str, directory: Path) -> str:
    """Local base specs are stored relative to the adapter, so moving both together keeps it loadable."""
    prefix = "local-dir:" if spec.startswith("local-dir:") else ""
    path = Path(spec.removeprefix("local-dir:"))
    if not spec.startswith("hf:") and path.is_dir():
        return prefix + os.path.relpath(path.resolve(), directory.resolve())
    return spec


def save_adapter(classifier: ImageClassifier, directory: str | os.PathLike) -> Path:
    """Write the peft adapter and `cadis_adapter.json` (base spec, classes) to `directory`."""
    directory = Path(directory)
    if not is_lora(classifier):
        raise CadisError("Only a LoRA fine-tuned classifier can be saved as an adapter; use --save-as merged.")
    if not classifier.spec:
        raise CadisError("The base classifier has no spec to rebuild it from; use --save-as merged.")
    directory.mkdir(parents=True, exist_ok=True)
    classifier.model.save_pretrained(directory)
    meta = {"base_classifier": _portable_spec(classifier.spec, directory), "classes": classifier.classes}
    base_path = Path(classifier.spec.removeprefix("local-dir:")).resolve()
    if base_path.is_dir() and base_path.is_relative_to(PROJECT_ROOT):
        # Also relative to the project, so an adapter copied elsewhere in it (e.g. into assets/) still loads.
        meta["base_classifier_in_project"] = _portable_spec(classifier.spec, PROJECT_ROOT)
    (directory / ADAPTER_META).write_text(json.dumps(meta, indent=2))
    return directory


def save_merged(classifier: ImageClassifier, directory: str | os.PathLike) -> Path:
    """Write merged weights in the base model's layout (timm local-dir or transformers)."""
    directory = Path(directory)
    model = merged_classifier(classifier).model.cpu().eval()
    if hasattr(model, "pretrained_cfg"):
        import timm

        # The base's pretrained_cfg (mean/std, input size) travels with the model object.
        timm.models.save_for_hf(model, directory, safe_serialization=True,
                                model_config={"label_names": classifier.classes})
    elif hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
        if classifier.spec.startswith("hf:"):
            from transformers import AutoImageProcessor

            with contextlib.suppress(OSError, ValueError):
                AutoImageProcessor.from_pretrained(classifier.spec[3:]).save_pretrained(directory)
    else:
        raise CadisError(f"Cannot save a merged {type(model).__name__}; save it as an adapter instead.")
    return directory


def save_classifier(classifier: ImageClassifier, directory: str | os.PathLike, save_as: str = "adapter") -> Path:
    """Save as `adapter` or `merged`; either loads with `load_classifier(directory)`."""
    if save_as not in SAVE_FORMATS:
        raise CadisError(f"Unknown save format {save_as!r}; use 'adapter' or 'merged'.")
    return (save_adapter if save_as == "adapter" else save_merged)(classifier, directory)


def _resolve_base(meta: dict, directory: Path) -> str:
    """The base spec, trying it relative to the adapter, then relative to the project."""
    spec = meta["base_classifier"]
    prefix = "local-dir:" if spec.startswith("local-dir:") else ""
    candidates = [(directory, spec), (PROJECT_ROOT, meta.get("base_classifier_in_project", spec))]
    for root, candidate in candidates:
        path = Path(candidate.removeprefix("local-dir:"))
        if not path.is_absolute() and (root / path).is_dir():
            return prefix + str((root / path).resolve())
    return spec


def load_adapter_classifier(path: str | os.PathLike, merge: bool = True) -> ImageClassifier:
    """Rebuild the fine-tuned classifier: the base from `cadis_adapter.json`, then the peft adapter.

    With `merge`, LoRA is folded into the weights (a plain model, as fast as the base)."""
    directory = Path(path)
    meta_path = directory / ADAPTER_META
    if not meta_path.is_file():
        raise CadisError(f"{directory} has a peft adapter but no {ADAPTER_META} naming its base classifier; "
                         "it was not saved by cadis.")
    meta = json.loads(meta_path.read_text())
    base = load_classifier(_resolve_base(meta, directory))
    try:
        model = PeftModel.from_pretrained(base.model, directory)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CadisError(f"Could not load the LoRA adapter in {directory}: {str(e).splitlines()[0]}") from e
    if merge:
        model = model.merge_and_unload()
    return ImageClassifier(model, base.input_size, base.mean.flatten().tolist(), base.std.flatten().tolist(),
                           meta.get("classes") or base.classes, str(directory), base.logits_attr)

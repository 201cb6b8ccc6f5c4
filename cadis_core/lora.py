"""Which parameters fine-tuning updates (peft LoRA or all), and LoRA folded back into the weights.

LoRA (Hu et al., 2022) adds a rank-r update B·A (scaled by alpha/r) to the attention projections;
the classification head is trained in full through peft's `modules_to_save`. FT-CADIS updates
about 1% of a ViT's parameters this way.

A fine-tuned classifier is saved (`loading.save_classifier`) either as a peft adapter naming its base
classifier, or as merged weights (`merged_classifier`) in the base's own layout; both load through
`loading.load_classifier(directory)`.
"""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from .classifier import ImageClassifier
from .errors import CadisError


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

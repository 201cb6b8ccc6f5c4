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

from cadis.errors import CadisError
from cadis.models.classifier import ImageClassifier


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


class SplitQKV(torch.nn.Module):
    """A fused qkv projection as three Linear layers (q, k, v) with the same output, so LoRA can adapt q and v
    separately, as the FT-CADIS authors do (two rank-r updates, not one over the fused qkv)."""

    def __init__(self, qkv: torch.nn.Linear):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(qkv.in_features, qkv.out_features // 3, bias=qkv.bias is not None)
                                  for _ in range(3))
        with torch.no_grad():
            for part, w, b in zip((self.q, self.k, self.v), qkv.weight.chunk(3),
                                  qkv.bias.chunk(3) if qkv.bias is not None else (None,) * 3):
                part.weight.copy_(w)
                part.requires_grad_(qkv.weight.requires_grad)
                if b is not None:
                    part.bias.copy_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)

    def fused(self) -> torch.nn.Linear:
        """The plain fused Linear (after LoRA is merged into q and v)."""
        parts = (self.q, self.k, self.v)
        qkv = torch.nn.Linear(self.q.in_features, 3 * self.q.out_features, bias=self.q.bias is not None)
        with torch.no_grad():
            qkv.weight.copy_(torch.cat([p.weight for p in parts]))
            if qkv.bias is not None:
                qkv.bias.copy_(torch.cat([p.bias for p in parts]))
        return qkv


def _replace(model: torch.nn.Module, name: str, make) -> int:
    """Replace every module called `name` by make(module); how many were replaced."""
    found = [(parent, child) for parent in model.modules() for child, module in parent.named_children()
             if child == name]
    for parent, child in found:
        setattr(parent, child, make(getattr(parent, child)))
    return len(found)


def split_qkv(model: torch.nn.Module) -> torch.nn.Module:
    """Every fused `qkv` Linear of a timm ViT as SplitQKV (in place), for LoRA on q and v."""
    if not _replace(model, "qkv", lambda m: SplitQKV(m) if isinstance(m, torch.nn.Linear) else m):
        raise CadisError(f"{type(model).__name__} has no fused qkv projection to split.")
    return model


def fuse_qkv(model: torch.nn.Module) -> torch.nn.Module:
    """SplitQKV modules back to fused Linear layers (in place); a model without them is unchanged."""
    _replace(model, "qkv", lambda m: m.fused() if isinstance(m, SplitQKV) else m)
    return model


def needs_split(target_modules) -> bool:
    """Whether an adapter's targets are the q and v of a split qkv (`lora_targets="q,v"`)."""
    return {"q", "v"} <= set(target_modules or [])


def apply_lora(classifier: ImageClassifier, r: int = 4, alpha: float = 4, dropout: float = 0.0,
               target_modules: list[str] | None = None,
               modules_to_save: list[str] | None = None, split: bool = False) -> ImageClassifier:
    """Wrap `classifier.model` in a peft LoRA model (in place): only LoRA factors and the head train.

    `split`: a timm ViT's fused qkv becomes q, k, v (SplitQKV) and LoRA adapts q and v, each with rank r."""
    if isinstance(classifier.model, PeftModel):
        raise CadisError("This classifier already carries a LoRA adapter.")
    targets, head = default_targets(classifier.model)
    if split and targets == ["qkv"]:
        split_qkv(classifier.model)
        targets = ["q", "v"]
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
        merged.model = fuse_qkv(merged.model.merge_and_unload())
    return merged


def interpolate_lora(first: ImageClassifier, second: ImageClassifier, a: float) -> ImageClassifier:
    """One LoRA classifier whose merged weights are exactly (1−a)·θ_first + a·θ_second (weight interpolation).

    Both must be unmerged LoRA fine-tunes of the same base, targeting the same modules. The base weights W are
    shared, so (1−a)(W + s₁B₁A₁) + a(W + s₂B₂A₂) = W + s·B·A with A = [A₁; A₂] and B = [(1−a)s₁/s·B₁, a·s₂/s·B₂]:
    an adapter of rank r₁ + r₂, stored as small as the two. Fully trained modules (the head) are interpolated
    directly. The result is a fresh copy; the inputs are untouched."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    if not (is_lora(first) and is_lora(second)):
        raise CadisError("Weight interpolation takes two LoRA classifiers loaded unmerged (load_adapter(merge=False)).")
    if not 0.0 <= a <= 1.0:
        raise CadisError(f"The interpolation weight must be in [0, 1] (got {a}).")
    c1, c2 = first.model.peft_config["default"], second.model.peft_config["default"]
    if set(c1.target_modules) != set(c2.target_modules) or set(c1.modules_to_save or []) != set(
            c2.modules_to_save or []):
        raise CadisError("The two adapters target different modules; interpolate fine-tunes of one recipe.")
    s1, s2 = c1.lora_alpha / c1.r, c2.lora_alpha / c2.r
    sd1, sd2 = get_peft_model_state_dict(first.model), get_peft_model_state_dict(second.model)
    if sd1.keys() != sd2.keys():
        raise CadisError("The two adapters hold different tensors; interpolate fine-tunes of one base and recipe.")
    rank = c1.r + c2.r
    mixed = copy.deepcopy(first)
    base = copy.deepcopy(first.model).unload()
    mixed.model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=float(rank), lora_dropout=0.0,
                                                  target_modules=list(c1.target_modules),
                                                  modules_to_save=list(c1.modules_to_save or [])))
    state = {}
    for key, t1 in sd1.items():
        t2 = sd2[key]
        if "lora_A" in key:
            state[key] = torch.cat([t1, t2], dim=0)
        elif "lora_B" in key:  # the new scale is 1 (alpha = r)
            state[key] = torch.cat([(1 - a) * s1 * t1, a * s2 * t2], dim=1)
        else:
            state[key] = (1 - a) * t1 + a * t2
    set_peft_model_state_dict(mixed.model, state)
    mixed.model.eval()
    return mixed

"""A fine-tuning run's configuration (`FinetuneConfig`, checked at the door) and its outcome (`FinetuneResult`)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cadis.acceleration import Acceleration
from cadis.errors import CadisError
from cadis.models.loading import SAVE_FORMATS
from cadis.training.objective import FTCadisLoss, check_method

MAX_STEPS = 1_000_000  # steps seed their noise with derive_seed(seed, step): below seeds.STRIDE, streams stay apart
MAX_SEED = 2**32 - 1


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_real(name: str, value: Any, low: float | None = None, high: float | None = None, open_low: bool = False,
                hint: str = "") -> None:
    """A finite real number in [low, high] ((low, high] with `open_low`), or a CadisError naming the flag."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        where = ">" if open_low else ">="
        bounds = f" {where} {low:g}" if low is not None else ""
        if high is not None:
            bounds = f" in {'(' if open_low else '['}{low:g}, {high:g}]" if low is not None else f" <= {high:g}"
        raise CadisError(f"{_flag(name)} must be a finite number{bounds} (got {value!r}); {hint}.")


def _check_integer(name: str, value: Any, low: int | None = None, high: int | None = None, hint: str = "") -> None:
    """An integer in [low, high], or a CadisError naming the flag."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = f" >= {low}" if high is None else f" from {low} to {high:,}"
        raise CadisError(f"{_flag(name)} must be an integer{bounds} (got {value!r}); {hint}.")


@dataclass
class FinetuneConfig:
    """Everything that determines a fine-tuning run (written to out/config.json)."""

    out: str = "runs/finetune"
    method: str = "ft-cadis"
    sigma: float = 0.25
    num_draws: int = 4  # M denoised draws per image
    lam: float = 4.0  # λ, weight of L_MAdv
    eps: float = 0.125  # ε, ℓ2 radius of the search in denoised space ([0, 1] pixel units)
    adv_steps: int = 4  # T steps of the search
    warm_start: bool = True
    detach_target: bool = False  # stop p̄'s gradient in L_MAdv (ablation; the authors keep it)
    madv_class_balance: bool = False  # ours: class-balanced L_MAdv (objective.class_balance_weights)
    lora: bool = True  # False: full fine-tuning
    lora_r: int = 4
    lora_alpha: float = 4.0
    lora_qv: bool = False  # LoRA on q and v separately (a timm ViT's fused qkv split), as the authors; False: on qkv
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    weight_decay_end: float | None = None  # a cosine from weight_decay to this over the run (the authors'); None: flat
    warmup: int = 50
    min_lr: float = 0.0  # the cosine decays to this learning rate
    grad_clip: float | None = 1.0
    clip_per_tensor: bool = False  # clip each parameter tensor's gradient to grad_clip (the authors'); False: all
    augment: bool = False  # random crop (zero padding 4) and horizontal flip of the clean images (the authors')
    layer_decay: float | None = None  # layer-wise lr decay (timm's BEiT-style groups), None: off
    subset: int | None = None  # number of training images (a seeded random subset), None: all
    seed: int = 0
    save_as: str = "adapter"  # or "merged"
    checkpoint_minutes: float = 3.0
    eval_every: int | None = None  # steps between test evaluations; None: once per epoch; 0: at the end only
    eval_size: int = 500  # test images evaluated (one fixed noise draw each)
    eval_offset: int = 0  # the first test image evaluated: past the certified ones, for a curve on unseen images
    precision: str = "fp32"  # or "bf16": autocast for the loss (a win on GPUs; slower on small CPU models)
    compile: bool = False  # torch.compile the classifier (about 1.2x on the embedded CPU model, after compiling)

    def validate(self) -> None:
        """Refuse (CadisError, one line naming the flag) any setting out of range or not finite, before anything
        is loaded or written. The CLI, the library and the apps all call it."""
        check_method(self.method)
        if self.save_as not in SAVE_FORMATS:
            raise CadisError(f"Unknown save format {self.save_as!r}; use 'adapter' or 'merged'.")
        if self.save_as == "adapter" and not self.lora:
            raise CadisError("Full fine-tuning cannot be saved as a LoRA adapter; use --save-as merged.")
        Acceleration(self.precision)  # checks the name
        real, integer = _check_real, _check_integer
        real("sigma", self.sigma, low=0, open_low=True, hint="try 0.25 or 0.5")
        integer("num_draws", self.num_draws, low=1, hint="the paper uses 4")
        real("lam", self.lam, low=0, hint="the paper uses 1 to 4; 0 turns the adversarial term off")
        real("eps", self.eps, low=0, hint="0.125 is usual; 0 turns the adversarial search off")
        integer("adv_steps", self.adv_steps, low=0, hint="4 is usual")
        if self.lora:
            integer("lora_r", self.lora_r, low=1, hint="4 to 16 is usual; --full trains every parameter instead")
            real("lora_alpha", self.lora_alpha, low=0, open_low=True, hint="usually equal to --lora-r")
        integer("steps", self.steps, low=0, high=MAX_STEPS, hint="1000 is usual")
        integer("batch_size", self.batch_size, low=1, hint="32 is usual")
        real("lr", self.lr, low=0, open_low=True, high=1, hint="1e-3 is usual with LoRA, 1e-4 with --full")
        real("weight_decay", self.weight_decay, low=0, high=10, hint="0.01 is usual")
        if self.weight_decay_end is not None:
            real("weight_decay_end", self.weight_decay_end, low=0, high=10, hint="0.1 in the authors' LoRA recipe")
        integer("warmup", self.warmup, low=0, hint="about 5% of --steps is usual")
        real("min_lr", self.min_lr, low=0, high=self.lr, hint=f"it must not exceed --lr ({self.lr:g}); 0 is usual")
        if self.grad_clip is not None:
            real("grad_clip", self.grad_clip, low=0, hint="1.0 is usual; 0 or None turns clipping off")
        if self.layer_decay is not None:
            real("layer_decay", self.layer_decay, low=0, open_low=True, high=1, hint="0.75 is usual; omit it for off")
        if self.subset is not None:
            integer("subset", self.subset, low=self.batch_size,
                    hint=f"it must hold at least one batch (--batch-size {self.batch_size})")
        integer("seed", self.seed, low=0, high=MAX_SEED, hint="any integer from 0")
        real("checkpoint_minutes", self.checkpoint_minutes, low=0, hint="3 is usual; 0 checkpoints every step")
        if self.eval_every is not None:
            integer("eval_every", self.eval_every, low=0, hint="0 evaluates at the end only; omit it for every epoch")
        integer("eval_size", self.eval_size, low=0, hint="500 is usual; 0 turns evaluation off")
        integer("eval_offset", self.eval_offset, low=0, hint="0 evaluates the first test images")
        if self.method != "none":
            self.loss()  # the objective's own checks

    def loss(self) -> FTCadisLoss:
        return FTCadisLoss(self.method, self.sigma, self.num_draws, self.lam, self.eps, self.adv_steps,
                           self.warm_start, self.detach_target, self.madv_class_balance)


@dataclass(frozen=True)
class FinetuneResult:
    """How a run ended: finished, with the model saved in `path` (out/model), or stopped early by the
    stop event, with its state in `path` (out/checkpoint); `step` is the last step taken."""

    path: Path
    stopped: bool
    step: int


# ---------------------------------------------------------------- pieces shared by the loop and its tests

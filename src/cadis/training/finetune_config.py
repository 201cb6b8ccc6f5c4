"""A fine-tuning run's configuration (`FinetuneConfig`, checked at the door) and its outcome (`FinetuneResult`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cadis.acceleration import PRECISIONS
from cadis.errors import CadisError
from cadis.models.loading import SAVE_FORMATS
from cadis.seeds import MAX_SEED
from cadis.settings import check_settings, setting
from cadis.training.objective import METHODS, FTCadisLoss, check_method

MAX_STEPS = 1_000_000  # steps seed their noise with derive_seed(seed, step): below seeds.STRIDE, streams stay apart


@dataclass
class FinetuneConfig:
    """Everything that determines a fine-tuning run (written to out/config.json). Each field is declared once,
    with its help and constraints: `cadis finetune`'s flags and `validate` come from here."""

    out: str = setting("runs/finetune", "run directory", default_note="runs/finetune/<preset>-<method>-s<sigma>")
    method: str = setting("ft-cadis", "training objective", choices=METHODS)
    sigma: float = setting(0.25, "noise level σ", low=0, open_low=True, hint="try 0.25 or 0.5",
                           default_note="the preset's, else 0.25")
    num_draws: int = setting(4, "M denoised draws per image", low=1, hint="the paper uses 4")
    lam: float = setting(4.0, "λ, weight of the masked adversarial loss L_MAdv", low=0,
                         hint="the paper uses 1 to 4; 0 turns the adversarial term off")
    eps: float = setting(0.125, "ε, ℓ2 radius of the search in denoised space ([0, 1] pixel units)", low=0,
                         hint="0.125 is usual; 0 turns the adversarial search off")
    adv_steps: int = setting(4, "T steps of the search", low=0, hint="4 is usual")
    warm_start: bool = setting(True, "no warm start: images with no correct draw add no loss", flag="--no-warm-start")
    detach_target: bool = setting(False, "stop the gradient through the consistency target p̄ (ablation; the "
                                  "authors keep it)")
    madv_class_balance: bool = setting(False, "ours, not in the paper: weight L_MAdv so every class gets its share "
                                       "of the batch, as if all classes had the batch's mask rate")
    lora: bool = setting(True, "fine-tune every parameter instead of LoRA", flag="--full")
    lora_r: int = setting(4, "LoRA rank", low=1, when="lora",
                          hint="4 to 16 is usual; --full trains every parameter instead")
    lora_alpha: float = setting(4.0, "LoRA scale α", low=0, open_low=True, when="lora",
                                hint="usually equal to --lora-r")
    lora_qv: bool = setting(False, "LoRA on q and v separately (a timm ViT's fused qkv split), as the authors; "
                            "without it, one update of the fused qkv")
    steps: int = setting(1000, "optimizer steps", low=0, high=MAX_STEPS, hint="1000 is usual")
    batch_size: int = setting(32, "global batch (split across processes)", low=1, hint="32 is usual")
    lr: float = setting(1e-3, "peak learning rate", low=0, open_low=True, high=1,
                        hint="1e-3 is usual with LoRA, 1e-4 with --full",
                        default_note="1e-3 with LoRA, 1e-4 with --full")
    weight_decay: float = setting(0.01, "weight decay (the start of the cosine with --weight-decay-end)", low=0,
                                  high=10, hint="0.01 is usual")
    weight_decay_end: float | None = setting(None, "a cosine from --weight-decay to this over the run (the authors')",
                                             kind=float, low=0, high=10, hint="0.1 in the authors' LoRA recipe")
    warmup: int = setting(50, "linear warm-up steps", low=0, hint="about 5% of --steps is usual")
    min_lr: float = setting(0.0, "learning rate at the end of the cosine decay", low=0, high="lr", hint="0 is usual")
    grad_clip: float | None = setting(1.0, "gradient clipping norm", kind=float, low=0,
                                      optional=True, hint="1.0 is usual; 0 turns clipping off")
    clip_per_tensor: bool = setting(False, "clip each parameter tensor's gradient to --grad-clip (the authors'); "
                                    "without it, all together")
    augment: bool = setting(False, "random crop (zero padding 4) and horizontal flip of the clean images (the "
                            "authors')")
    layer_decay: float | None = setting(None, "layer-wise lr decay factor (timm's BEiT-style groups), e.g. 0.75",
                                        kind=float, low=0, open_low=True, high=1, hint="0.75 is usual; omit it for off")
    subset: int | None = setting(None, "train on this many images (a seeded random subset)", kind=int,
                                 low="batch_size")
    seed: int = setting(0, "training seed", low=0, high=MAX_SEED, hint="any integer from 0")
    save_as: str = setting("adapter", "what out/model holds", choices=SAVE_FORMATS,
                           default_note="adapter with LoRA, merged with --full")
    checkpoint_minutes: float = setting(3.0, "minutes between checkpoints", low=0,
                                        hint="3 is usual; 0 checkpoints every step")
    eval_every: int | None = setting(None, "steps between test evaluations (default: every epoch; 0: at the end)",
                                     kind=int, low=0, hint="0 evaluates at the end only; omit it for every epoch")
    eval_size: int = setting(500, "test images evaluated (one fixed noise draw each)", low=0,
                             hint="500 is usual; 0 turns evaluation off")
    eval_offset: int = setting(0, "the first test image evaluated (past the certified ones, for a curve on unseen "
                               "images)", low=0, hint="0 evaluates the first test images")
    precision: str = setting("fp32", "autocast precision of the loss (bf16 pays on GPUs)", choices=tuple(PRECISIONS))
    compile: bool = setting(False, "torch.compile the classifier")

    def validate(self) -> None:
        """Refuse (CadisError, one line naming the flag) any setting out of range or not finite, before anything
        is loaded or written. The CLI, the library and the apps all call it."""
        check_method(self.method)
        if self.save_as == "adapter" and not self.lora:
            raise CadisError("Full fine-tuning cannot be saved as a LoRA adapter; use --save-as merged.")
        check_settings(self)
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

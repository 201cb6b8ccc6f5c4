"""Named training recipes: the fine-tuning hyperparameters of a run, apart from its method and σ.

- `short`: our first regime (1000 steps of 32 images, about half an epoch of Fashion-MNIST, with the CIFAR-10
  loss settings applied to LoRA). The runs shipped before the recipes existed used it.
- `authors-lora`: the authors' LoRA recipe (FT-CADIS, Jang et al., TMLR 2024; `train_imagenet.sh` and the
  README of github.com/suhyeok-jang/FT-CADIS), scaled to our dataset by epochs rather than steps.
- `authors-full`: the authors' full fine-tuning recipe (`train_cifar10.sh` of the same repository).

A recipe's length is in epochs of the training set; `steps_for` turns it into optimizer steps. The learning
rate follows the authors' rule lr = blr · batch / 256 (`train.py`: `args.lr = args.blr * eff_batch_size / 256`,
where the effective batch counts images, not denoised draws).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cadis.errors import CadisError


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: float  # passes over the training set (the short recipe sets `steps` instead)
    batch_size: int  # images per optimizer step
    blr: float | None  # base learning rate of the authors' rule; None: `lr` as given
    lr: float | None = None
    warmup_fraction: float = 0.05  # share of the steps spent in linear warmup
    min_lr: float = 0.0  # where the cosine ends
    steps: int | None = None  # a fixed number of steps, whatever the data size
    evals: int = 20  # evaluations of one-draw accuracy on denoised test images over the run (the curve)
    overrides: dict = field(default_factory=dict)  # further FinetuneConfig fields (loss settings, ...)

    def learning_rate(self) -> float:
        return self.lr if self.blr is None else self.blr * self.batch_size / 256

    def steps_for(self, train_size: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, round(self.epochs * train_size / self.batch_size))

    def finetune_values(self, train_size: int) -> dict:
        """FinetuneConfig fields of this recipe for a training set of `train_size` images."""
        steps = self.steps_for(train_size)
        return {"steps": steps, "batch_size": self.batch_size, "lr": self.learning_rate(),
                "warmup": max(1, round(self.warmup_fraction * steps)), "min_lr": self.min_lr, "evals": self.evals,
                **self.overrides}


RECIPES = {
    "short": Recipe("short", epochs=0.53, batch_size=32, blr=None, lr=1e-3, warmup_fraction=0.05, steps=1000, evals=5,
                    overrides={"num_draws": 4, "adv_steps": 4, "lam": 4.0, "weight_decay": 0.01, "grad_clip": 1.0}),
    # train_imagenet.sh: --ft_method lora --num_noises 2 --num-steps 1 --lbd 2.0 --blr 4e-4 --warmup_epochs 1
    # --epochs 10 --eps 64 (/256 on the [-1, 1] scale = 0.125 on ours) --clip_grad 1.0 --drop_path 0.0; the README's
    # ImageNet command makes the effective batch 128 images, so lr = 4e-4 · 128 / 256 = 2e-4. min_lr: train.py's
    # default 1e-6. Epochs: 3 instead of 10 on 2 CPU cores (the curves in results show where accuracy levels off).
    "authors-lora": Recipe("authors-lora", epochs=3, batch_size=128, blr=4e-4, warmup_fraction=0.1, min_lr=1e-6,
                           overrides={"num_draws": 2, "adv_steps": 1, "lam": 2.0, "eps": 0.125,
                                      "grad_clip": 1.0, "weight_decay": 0.04}),
    # The same, with the rest of the authors' LoRA recipe that `authors-lora` left out: layer-wise lr decay 0.9 on
    # the adapters, weight decay along a cosine from 0.01 to 0.1, gradient clipping per parameter tensor, random crop
    # (padding 4) + horizontal flip, and LoRA rank 4 on q and on v separately (not one update over the fused qkv).
    "authors-lora-whole": Recipe("authors-lora-whole", epochs=3, batch_size=128, blr=4e-4, warmup_fraction=0.1,
                                 min_lr=1e-6,
                                 overrides={"num_draws": 2, "adv_steps": 1, "lam": 2.0, "eps": 0.125,
                                            "grad_clip": 1.0, "clip_per_tensor": True, "weight_decay": 0.01,
                                            "weight_decay_end": 0.1, "layer_decay": 0.9, "augment": True,
                                            "lora_qv": True, "eval_offset": 5000, "eval_size": 1000}),
    # train_cifar10.sh: --ft_method full-ft --num_noises 4 --num-steps 4 --lbd 4.0 --blr 1e-4 (README: effective
    # batch 128, so lr = 5e-5) --warmup_epochs 3 --epochs 30 --eps 64 --layer_decay 0.65 --weight_decay 0.04
    # --clip_grad 0.3; min_lr 1e-6 (train.py's default). Epochs: 3 instead of 30, warmup kept at a tenth.
    "authors-full": Recipe("authors-full", epochs=3, batch_size=128, blr=1e-4, warmup_fraction=0.1, min_lr=1e-6,
                           overrides={"num_draws": 4, "adv_steps": 4, "lam": 4.0, "eps": 0.125, "lora": False,
                                      "save_as": "merged", "layer_decay": 0.65, "weight_decay": 0.04,
                                      "grad_clip": 0.3}),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise CadisError(f"Unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}.")
    return RECIPES[name]

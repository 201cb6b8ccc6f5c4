"""The embedded default's two off-the-shelf models, sized for 2 CPU cores."""

from __future__ import annotations

import timm
import torch
from diffusers import DDPMScheduler, UNet2DModel

# Fashion-MNIST train-split statistics, stored in the classifier's pretrained_cfg.
FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)

VIT_ARGS = dict(img_size=28, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0, in_chans=1)


def fmnist_unet() -> UNet2DModel:
    """A 3-level UNet (28 → 14 → 7, attention at 7×7): about 144 MFLOP per forward."""
    return UNet2DModel(
        sample_size=28, in_channels=1, out_channels=1, norm_num_groups=8,
        block_out_channels=(16, 32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )


def fmnist_scheduler(beta_schedule: str = "linear") -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule)


def fmnist_vit(num_classes: int = 10) -> torch.nn.Module:
    """A small ViT (patch 4, width 128, depth 6): about 79 MFLOP per image."""
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **VIT_ARGS,
        pretrained_cfg_overlay=dict(mean=FMNIST_MEAN, std=FMNIST_STD, input_size=(1, 28, 28),
                                    interpolation="bicubic", crop_pct=1.0, num_classes=num_classes),
    )


def count_flops(model: torch.nn.Module, *inputs) -> int:
    """FLOPs of one forward pass, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    return counter.get_total_flops()

"""The reference sampling loop, in the style of Cohen et al.'s `_sample_noise` as the DDS / FT-CADIS code uses it:
fp32, eager; per batch, repeat the image, add noise, denoise at t*, classify, argmax, count in a Python loop."""

from __future__ import annotations

import numpy as np
import torch


def reference_sample_noise(denoiser, classifier, x: torch.Tensor, num: int, batch_size: int, sigma: float,
                           num_classes: int) -> np.ndarray:
    t = denoiser.timestep(sigma)
    a = denoiser.alphas_cumprod[t]
    with torch.no_grad():
        counts = np.zeros(num_classes, dtype=int)
        remaining = num
        while remaining > 0:
            this_batch_size = min(batch_size, remaining)
            remaining -= this_batch_size
            batch = x.repeat((this_batch_size, 1, 1, 1))
            noise = torch.randn_like(batch, device=x.device) * sigma
            x_t = a.sqrt() * (2 * (batch + noise) - 1)
            timesteps = torch.full((this_batch_size,), t, device=x.device)
            eps = denoiser.unet(x_t, timesteps).sample
            x0 = ((x_t - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            predictions = classifier((x0 + 1) / 2).argmax(1)
            for idx in predictions:
                counts[idx.item()] += 1
        return counts

"""One-step (or multistep) denoising with a pretrained DDPM, as in Carlini et al. (2023).

Images are in [0, 1]; the diffusion model works in [-1, 1], so pixel noise σ is 2σ there.
For σ we pick t*, the smallest timestep whose noise-to-signal ratio sqrt((1-ᾱ)/ᾱ) reaches 2σ,
scale the noisy image by sqrt(ᾱ_t*) so it looks like x_t, and predict x̂0 from ε̂.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.utils import logging as diffusers_logging

from cadis.errors import CadisError


def timestep_for_sigma(alphas_cumprod: torch.Tensor, sigma: float) -> int:
    """The smallest t with sqrt((1 - ᾱ_t) / ᾱ_t) >= 2σ (σ in [0, 1] pixel units)."""
    if sigma <= 0:
        raise CadisError(f"sigma must be > 0 (got {sigma}).")
    ratio = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    above = torch.nonzero(ratio >= 2 * sigma)
    if len(above) == 0:
        raise CadisError(f"sigma={sigma} is beyond this scheduler's largest noise level "
                         f"({ratio[-1].item() / 2:.3g} in pixel units); choose a smaller sigma.")
    return int(above[0])


def _check_local(path: Path, nested: bool) -> None:
    """The configs and weights of a local diffusers directory, checked before diffusers reads them."""
    from cadis.models.model_files import check_safetensors, read_json_object

    unet_dir, sched_dir = (path / "unet", path / "scheduler") if nested else (path, path)
    for config, kind in ((unet_dir / "config.json", "UNet2DModel"),
                         (sched_dir / "scheduler_config.json", "scheduler")):
        if not config.is_file():
            raise CadisError(f"Could not load a diffusion denoiser from {path}: it has no {config.relative_to(path)}; "
                             "give a diffusers save_pretrained directory (flat, or with unet/ and scheduler/).")
        if "_class_name" not in read_json_object(config):
            raise CadisError(f"{config} does not describe a diffusers {kind} (it has no _class_name); restore the "
                             "directory (copy or download it again, or re-save the model).")
    weights = unet_dir / "diffusion_pytorch_model.safetensors"
    if weights.exists():
        check_safetensors(weights)


class DiffusionDenoiser(torch.nn.Module):
    """A diffusers `UNet2DModel` (ε-prediction) and its scheduler, used as a Gaussian denoiser."""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler):
        super().__init__()
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self._t_star: dict[float, int] = {}  # σ -> t*, computed once rather than per batch
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float(), persistent=False)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device: str | torch.device = "cpu"
                        ) -> DiffusionDenoiser:
        """Load from a hub id or a local directory, flat (config.json + scheduler_config.json)
        or pipeline layout (unet/ + scheduler/). Any failure is a CadisError that names the file."""
        from cadis.models.model_files import check_finite

        path = Path(name_or_path)
        local = path.exists() or str(name_or_path).startswith((".", "/", "~"))
        if local and not path.is_dir():
            raise CadisError(f"Denoiser directory {path} does not exist; give a diffusers save_pretrained "
                             "directory (flat or with unet/ and scheduler/) or a hub id.")
        try:
            quiet = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()  # missing weights are reported below, in one line
            if local:
                nested = (path / "unet").is_dir()
                _check_local(path, nested)
                unet = UNet2DModel.from_pretrained(path, subfolder="unet" if nested else None)
                scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler" if nested else None)
            else:
                try:
                    unet = UNet2DModel.from_pretrained(name_or_path, subfolder="unet")
                    scheduler = DDPMScheduler.from_pretrained(name_or_path, subfolder="scheduler")
                except OSError:
                    unet = UNet2DModel.from_pretrained(name_or_path)
                    scheduler = DDPMScheduler.from_pretrained(name_or_path)
        except CadisError:
            raise
        except Exception as e:  # diffusers, torch and safetensors raise many types for a bad model
            first = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(". ")
            hint = ("restore the directory (copy or download it again, or re-save the model)" if local else
                    "check the hub id, or go online (unset HF_HUB_OFFLINE)")
            raise CadisError(f"Could not load a diffusion denoiser from {name_or_path} ({first}); {hint}.") from e
        finally:
            diffusers_logging.set_verbosity(quiet)
        check_finite(unet, f"denoiser {name_or_path}")  # also refuses tensors left without weights
        return cls(unet, scheduler).to(device)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Save in diffusers' pipeline layout, loadable by `DDPMPipeline.from_pretrained` too."""
        DDPMPipeline(unet=self.unet, scheduler=self.scheduler).save_pretrained(directory)

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) the UNet was trained on: the images noise is added to (`data.fit_dataset` brings data to it)."""
        cfg = self.unet.config
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(cfg.in_channels), int(h), int(w)

    def timestep(self, sigma: float) -> int:
        if sigma not in self._t_star:
            self._t_star[sigma] = timestep_for_sigma(self.alphas_cumprod, sigma)
        return self._t_star[sigma]

    def predict_noise(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        ts = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        return self.unet(x_t, ts).sample.float()  # float: callers may run the UNet under autocast

    def forward(self, x_noisy: torch.Tensor, sigma: float, mode: str = "one-shot",
                steps: int = 10, sampler: str = "ddpm", generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoise x + σ·δ (in [0, 1]) back to [0, 1].

        mode="one-shot" predicts x̂0 from a single ε̂ (the default, used for certification);
        mode="multistep" runs `steps` reverse steps of `sampler` ("ddpm" or "ddim") from t* to 0. DDPM steps
        draw noise from `generator` (None: torch's global generator, so results do not repeat); certification
        passes the stream of the image's seed (`DenoisedSmoothing.sample_counts`), so its rows repeat.
        Gradients flow to the input (callers wrap in inference_mode when they need none).
        """
        t = self.timestep(sigma)
        a = self.alphas_cumprod[t]
        x_t = a.sqrt() * (2 * x_noisy - 1)
        if mode == "one-shot":
            eps = self.predict_noise(x_t, t)
            x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        elif mode == "multistep":
            x0 = self._reverse(x_t, t, steps, sampler, generator)
        else:
            raise CadisError(f"Unknown denoiser mode {mode!r}; use 'one-shot' or 'multistep'.")
        return ((x0.clamp(-1, 1) + 1) / 2).to(x_noisy.dtype)

    def _reverse(self, x: torch.Tensor, t_star: int, steps: int, sampler: str,
                 generator: torch.Generator | None) -> torch.Tensor:
        steps = max(1, min(steps, t_star + 1))
        if sampler == "ddpm":
            sched = DDPMScheduler.from_config(self.scheduler.config)
            ts = torch.linspace(t_star, 0, steps).round().long().unique(sorted=True).flip(0)
            sched.set_timesteps(timesteps=ts.tolist(), device=x.device)
            kwargs = {"generator": generator}
        elif sampler == "ddim":
            sched = DDIMScheduler.from_config(self.scheduler.config)
            stride = max(1, (t_star + 1) // steps)
            sched.num_inference_steps = sched.config.num_train_timesteps // stride
            sched.timesteps = torch.arange(t_star, -1, -stride, device=x.device)
            kwargs = {"eta": 0.0}
        else:
            raise CadisError(f"Unknown sampler {sampler!r}; use 'ddpm' or 'ddim'.")
        for t in sched.timesteps:
            x = sched.step(self.predict_noise(x, int(t)), int(t), x, **kwargs).prev_sample
        return x

"""σ → t*, one-shot and multistep denoising with an oracle, and loading from local layouts."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from cadis.errors import CadisError
from cadis.models.denoiser import DiffusionDenoiser, timestep_for_sigma

from conftest import make_tiny_unet


def _linear_alphas_cumprod(T=1000, lo=1e-4, hi=0.02):
    return np.cumprod(1 - np.linspace(lo, hi, T))


def _cosine_alphas_cumprod(T=1000, s=0.008):
    f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    betas = np.minimum(1 - f(np.arange(1, T + 1)) / f(np.arange(T)), 0.999)
    return np.cumprod(1 - betas)


def _expected_t(ac, sigma):
    return int(np.argmax(np.sqrt((1 - ac) / ac) >= 2 * sigma))


@pytest.mark.parametrize("schedule,closed_form", [("linear", _linear_alphas_cumprod),
                                                  ("squaredcos_cap_v2", _cosine_alphas_cumprod)])
@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
def test_sigma_to_timestep(schedule, closed_form, sigma):
    ac = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule).alphas_cumprod
    t = timestep_for_sigma(ac, sigma)
    ratio = ((1 - ac) / ac).sqrt()
    assert ratio[t] >= 2 * sigma and (t == 0 or ratio[t - 1] < 2 * sigma)
    assert t == _expected_t(closed_form(), sigma)


def test_known_timesteps_on_the_linear_schedule():
    ac = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    assert [timestep_for_sigma(ac, s) for s in (0.25, 0.5, 1.0)] == [
        _expected_t(_linear_alphas_cumprod(), s) for s in (0.25, 0.5, 1.0)]
    with pytest.raises(CadisError):
        timestep_for_sigma(ac, 0.0)
    with pytest.raises(CadisError):
        timestep_for_sigma(ac, 1e3)


class OracleUNet(torch.nn.Module):
    """Returns the exact noise that takes sqrt(ᾱ_t)·x0 to x_t."""

    def __init__(self, x0_pm1, alphas_cumprod):
        super().__init__()
        self.x0, self.ac = x0_pm1, alphas_cumprod

    def forward(self, x_t, t):
        a = self.ac[t].view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(x_t - a.sqrt() * self.x0) / (1 - a).sqrt())


def _oracle_denoiser(x):
    sched = DDPMScheduler(num_train_timesteps=1000)
    return DiffusionDenoiser(OracleUNet(2 * x - 1, sched.alphas_cumprod), sched)


@pytest.mark.parametrize("sigma", [0.12, 0.5, 1.0])
def test_one_shot_with_oracle_recovers_the_clean_image(sigma):
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28) * 0.9 + 0.05
    noisy = x + sigma * torch.randn_like(x)
    out = _oracle_denoiser(x)(noisy, sigma)
    assert torch.allclose(out, x, atol=1e-4)
    assert (noisy - x).abs().mean() > 0.05  # the input really was noisy


def test_multistep_ddim_with_oracle_recovers_the_clean_image():
    x = torch.rand(2, 1, 28, 28) * 0.9 + 0.05
    noisy = x + 0.5 * torch.randn_like(x)
    out = _oracle_denoiser(x)(noisy, 0.5, mode="multistep", steps=5, sampler="ddim")
    assert torch.allclose(out, x, atol=1e-3)


def test_multistep_ddpm_runs_and_is_seeded(tiny_denoiser_dir):
    den = DiffusionDenoiser.from_pretrained(tiny_denoiser_dir)
    x = torch.rand(2, 1, 28, 28)
    a = den(x, 0.25, mode="multistep", steps=4, generator=torch.Generator().manual_seed(0))
    b = den(x, 0.25, mode="multistep", steps=4, generator=torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1


def test_load_pipeline_and_flat_layouts_give_the_same_denoiser(tiny_denoiser_dir, tmp_path):
    unet = make_tiny_unet()
    unet.save_pretrained(tmp_path)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path)
    flat = DiffusionDenoiser.from_pretrained(tmp_path)
    nested = DiffusionDenoiser.from_pretrained(tiny_denoiser_dir)
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(flat(x, 0.25), nested(x, 0.25))
    assert torch.allclose(flat(x, 0.25), DiffusionDenoiser(unet, flat.scheduler)(x, 0.25))


def test_save_pretrained_round_trips_and_loads_in_ddpm_pipeline(tiny_denoiser_dir, tmp_path):
    from diffusers import DDPMPipeline

    den = DiffusionDenoiser.from_pretrained(tiny_denoiser_dir)
    den.save_pretrained(tmp_path)
    pipe = DDPMPipeline.from_pretrained(tmp_path)
    x = torch.rand(1, 1, 28, 28)
    assert torch.allclose(DiffusionDenoiser(pipe.unet, pipe.scheduler)(x, 0.5), den(x, 0.5))


def test_missing_denoiser_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CadisError, match="does not exist"):
        DiffusionDenoiser.from_pretrained(tmp_path / "nope")
    with pytest.raises(CadisError, match="Could not load"):
        DiffusionDenoiser.from_pretrained(tmp_path)  # exists but empty


def test_multistep_smoothing_draws_the_denoisers_noise_from_the_images_stream(tiny_denoiser_dir):
    from cadis.certification.smoothing import DenoisedSmoothing
    from cadis.models.classifier import ImageClassifier

    from conftest import make_tiny_vit

    den = DiffusionDenoiser.from_pretrained(tiny_denoiser_dir)
    clf = ImageClassifier(make_tiny_vit().eval(), (1, 28, 28), (0.5,), (0.5,))
    smooth = DenoisedSmoothing(den, clf, 0.25, batch_size=8, mode="multistep", steps=3)
    x = torch.rand(1, 28, 28)
    torch.manual_seed(1)
    a = smooth.sample_counts(x, 16, smooth.generator(x, 5))
    torch.manual_seed(2)  # the global generator plays no part
    b = smooth.sample_counts(x, 16, smooth.generator(x, 5))
    assert (a == b).all()

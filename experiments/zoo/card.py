"""`python -m experiments zoo card`: measure the embedded models and write their model card.

Every number in the card is measured here, so the card can be regenerated after retraining.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from cadis.analysis.evaluation import clean_accuracy, denoising_metrics
from cadis.data import load_dataset
from cadis.models.denoiser import DiffusionDenoiser
from cadis.models.loading import load_classifier
from experiments.zoo.architectures import count_flops

SIGMAS = (0.12, 0.25, 0.5, 1.0)


def _frame(images: torch.Tensor, marked: torch.Tensor, color=(1.0, 0.1, 0.1), width: int = 2) -> torch.Tensor:
    """Grey images → RGB, with a coloured frame around the marked ones (hallucinated draws)."""
    rgb = images.clamp(0, 1).expand(-1, 3, -1, -1).clone()
    c = torch.tensor(color).view(3, 1, 1)
    for i in torch.nonzero(marked).flatten().tolist():
        rgb[i, :, :width], rgb[i, :, -width:] = c, c
        rgb[i, :, :, :width], rgb[i, :, :, -width:] = c, c
    return rgb


@torch.inference_mode()
def _strips(denoiser, classifier, dataset, out_dir: Path, seed: int) -> list[str]:
    """Per σ: clean / noisy / denoised rows for 10 test images (one per class), hallucinated draws framed red."""
    picks = torch.tensor([int(torch.nonzero(dataset.labels == c)[0]) for c in range(len(dataset.classes))])
    x, y = dataset.images[picks], dataset.labels[picks]
    names = []
    for sigma in SIGMAS:
        gen = torch.Generator().manual_seed(seed)
        noisy = x + sigma * torch.randn(x.shape, generator=gen)
        den = denoiser(noisy, sigma)
        wrong = classifier(den).argmax(1) != y
        none = torch.zeros(len(x), dtype=torch.bool)
        rows = torch.cat([_frame(x, none), _frame(noisy, none), _frame(den, wrong)])
        grid = make_grid(F.interpolate(rows, scale_factor=3, mode="nearest"), nrow=len(x), padding=4, pad_value=1)
        name = f"strip_sigma{sigma:g}.png"
        save_image(grid, out_dir / name)
        names.append(name)
    return names


def _samples(denoiser: DiffusionDenoiser, out_dir: Path, seed: int, num: int = 16) -> str:
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline(unet=denoiser.unet, scheduler=denoiser.scheduler)
    images = pipe(batch_size=num, generator=torch.Generator().manual_seed(seed), output_type="np").images
    grid = make_grid(F.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2), scale_factor=3), nrow=8,
                     padding=4, pad_value=1)
    save_image(grid, out_dir / "ddpm_samples.png")
    return "ddpm_samples.png"


def _training(path: Path) -> dict:
    f = path / "training.json"
    return json.loads(f.read_text()) if f.exists() else {}


def write_card(denoiser_dir: str, classifier_dir: str, out_dir: str, seed: int = 0, limit: int | None = None) -> dict:
    """Measure both models on the Fashion-MNIST test split and write README.md and card.json to `out_dir`."""
    out = Path(out_dir)
    test = load_dataset("fashion-mnist", "test")
    denoiser = DiffusionDenoiser.from_pretrained(denoiser_dir)
    classifier = load_classifier(classifier_dir)
    x1 = test.images[:1]
    t0 = time.time()
    card = {
        "seed": seed, "test_images": limit or len(test),
        "denoiser": {"path": denoiser_dir, "params": sum(p.numel() for p in denoiser.unet.parameters()),
                     "flops": count_flops(denoiser.unet, x1 * 2 - 1, torch.tensor([100])),
                     "beta_schedule": denoiser.scheduler.config.beta_schedule,
                     "training": _training(Path(denoiser_dir))},
        "classifier": {"path": classifier_dir, "architecture": _vit_line(Path(classifier_dir)),
                       "params": sum(p.numel() for p in classifier.parameters()),
                       "flops": count_flops(classifier, x1), "training": _training(Path(classifier_dir)),
                       "clean_acc": clean_accuracy(classifier, test, limit=limit)},
        "sigmas": {},
    }
    for sigma in SIGMAS:
        card["sigmas"][f"{sigma:g}"] = {"t_star": denoiser.timestep(sigma),
                                        **denoising_metrics(denoiser, classifier, test, sigma, seed, limit=limit)}
    card["images"] = {"strips": _strips(denoiser, classifier, test, out, seed),
                      "samples": _samples(denoiser, out, seed)}
    card["measure_seconds"] = round(time.time() - t0, 1)
    (out / "card.json").write_text(json.dumps(card, indent=2))
    (out / "README.md").write_text(render_card(card))
    return card


def _vit_line(path: Path) -> str:
    args = json.loads((path / "config.json").read_text())["model_args"]
    return (f"timm ViT (patch {args['patch_size']}, width {args['embed_dim']}, depth {args['depth']}, "
            f"{args['num_heads']} heads, MLP ratio {args['mlp_ratio']:g})")


def _train_line(t: dict) -> str:
    """The training recipe, one clause per stage (a stage may start from an earlier stage's export)."""
    if not t:
        return "not recorded"
    chain = [t]
    while "init_from" in chain[-1]:
        chain.append(chain[-1]["init_from"])
    stages = [f"{s['config']['steps']} steps × batch {s['config']['batch_size']} (seed {s['config']['seed']}, "
              f"lr {s['config']['lr']}, {s['train_seconds'] / 3600:.2f} h)" for s in reversed(chain)]
    return f"{', then '.join(stages)} on {t['hardware']}, torch {t['torch']}"


def render_card(card: dict) -> str:
    d, c = card["denoiser"], card["classifier"]
    rows = "\n".join(
        f"| {s} | {m['t_star']} | {m['noisy_psnr']:.2f} | {m['denoised_psnr']:.2f} | "
        f"{m['denoised_psnr'] - m['noisy_psnr']:+.2f} | {100 * m['denoised_acc']:.1f}% |"
        for s, m in card["sigmas"].items())
    strips = "\n\n".join(f"σ = {name.removeprefix('strip_sigma').removesuffix('.png')}\n\n![{name}]({name})"
                         for name in card["images"]["strips"])
    return f"""# Embedded default models (Fashion-MNIST)

Written by `python -m experiments zoo card` from measured numbers (seed {card['seed']}, {card['test_images']} test
images); do not edit by hand. Both models play the paper's off-the-shelf roles: a generic DDPM, and a classifier
trained on clean images only.

| model | what | parameters | FLOPs / image | training |
|---|---|---|---|---|
| `fmnist-ddpm/` | diffusers `UNet2DModel` + `DDPMScheduler` ({d['beta_schedule']}, 1000 steps), ε-prediction \
| {d['params'] / 1e6:.2f} M | {d['flops'] / 1e6:.1f} M | {_train_line(d['training'])} |
| `fmnist-vit/` | {c['architecture']}, timm local-dir | {c['params'] / 1e6:.2f} M \
| {c['flops'] / 1e6:.1f} M | {_train_line(c['training'])} |

FLOPs are counted with `torch.utils.flop_counter` for one 1×28×28 image.

**Clean test accuracy of the classifier: {100 * c['clean_acc']:.2f}%.**

## Denoising (one draw per test image, one-shot x̂0)

Noise of σ (in [0,1] pixel units) is added to each test image; PSNR is the mean per-image PSNR (peak 1) of the noisy
input and of the one-shot denoised image. Denoised accuracy is the classifier's top-1 accuracy on the denoised
images: how often denoising keeps the class.

| σ | t* | noisy PSNR (dB) | denoised PSNR (dB) | gain (dB) | denoised accuracy |
|---|---|---|---|---|---|
{rows}

## Clean / noisy / denoised

One test image per class; rows are clean, noisy and denoised. Denoised images framed in red are hallucinated:
the classifier's prediction differs from the label.

{strips}

## Samples generated by the DDPM

`DDPMPipeline` with 1000 ancestral steps, seed {card['seed']}: the denoiser is a valid DDPM over all timesteps.

![samples]({card['images']['samples']})
"""

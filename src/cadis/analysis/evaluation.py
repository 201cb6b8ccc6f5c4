"""Dataset-level measurements: clean accuracy, denoising PSNR, and accuracy on denoised images."""

from __future__ import annotations

import pandas as pd
import torch
from tqdm.auto import tqdm

from cadis.data import ImageDataset
from cadis.seeds import derive_seed
from cadis.training.objective import classify_draws, correct_draws, denoise_draws


def _batches(dataset: ImageDataset, batch_size: int, limit: int | None, desc: str):
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", leave=False):
        end = min(start + batch_size, n)
        yield start, dataset.images[start:end], dataset.labels[start:end]


def psnr(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, peak value 1."""
    return -10 * torch.log10((image - reference).pow(2).flatten(1).mean(1))


@torch.inference_mode()
def clean_accuracy(classifier: torch.nn.Module, dataset: ImageDataset, batch_size: int = 500,
                   limit: int | None = None) -> float:
    """Top-1 accuracy on the first `limit` clean images."""
    device = next(classifier.buffers()).device
    hits = total = 0
    for _, x, y in _batches(dataset, batch_size, limit, "clean accuracy"):
        hits += (classifier(x.to(device)).argmax(1).cpu() == y).sum().item()
        total += len(y)
    return hits / total


def _noisy(x: torch.Tensor, sigma: float, seed: int, start: int) -> torch.Tensor:
    # One generator per batch start: results do not depend on the batch size's history.
    gen = torch.Generator().manual_seed(derive_seed(seed, start))
    return x + sigma * torch.randn(x.shape, generator=gen)


@torch.inference_mode()
def denoising_metrics(denoiser: torch.nn.Module, classifier: torch.nn.Module, dataset: ImageDataset, sigma: float,
                      seed: int = 0, batch_size: int = 500, limit: int | None = None) -> dict[str, float]:
    """One one-shot-denoised draw per image: mean PSNR of the noisy input x + σδ and of the denoised image,
    and the classifier's accuracy on the denoised images (how often denoising keeps the class)."""
    noisy_psnr = den_psnr = 0.0
    hits = total = 0
    for start, x, y in _batches(dataset, batch_size, limit, f"denoising σ={sigma}"):
        noisy = _noisy(x, sigma, seed, start)
        den = denoiser(noisy.to(denoiser.device), sigma)
        hits += (classifier(den).argmax(1).cpu() == y).sum().item()
        noisy_psnr += psnr(noisy, x).sum().item()
        den_psnr += psnr(den.cpu(), x).sum().item()
        total += len(x)
    return {"noisy_psnr": noisy_psnr / total, "denoised_psnr": den_psnr / total, "denoised_acc": hits / total}


@torch.inference_mode()
def selection_rates(denoiser: torch.nn.Module, classifier: torch.nn.Module, dataset: ImageDataset, sigma: float,
                    num_draws: int = 4, seed: int = 0, batch_size: int = 250, limit: int | None = None
                    ) -> pd.DataFrame:
    """Per true class, what FT-CADIS's selection sees before training: the share of denoised draws the
    classifier gets right (selection rate, L_SCE's weight) and the share of images whose `num_draws` draws
    are all right (mask rate, where L_MAdv applies)."""
    selected, masked, labels = [], [], []
    for start, x, y in _batches(dataset, batch_size, limit, f"selection σ={sigma}"):
        gen = torch.Generator().manual_seed(derive_seed(seed, start))
        noise = torch.randn((len(x), num_draws, *x.shape[1:]), generator=gen).to(denoiser.device)
        x = x.to(denoiser.device)
        correct = correct_draws(classify_draws(classifier, denoise_draws(denoiser, x, noise, sigma)),
                                y.to(denoiser.device)).cpu()
        selected.append(correct.float().mean(1))
        masked.append(correct.all(1).float())
        labels.append(y)
    frame = pd.DataFrame({"label": torch.cat(labels).numpy(), "selection_rate": torch.cat(selected).numpy(),
                          "mask_rate": torch.cat(masked).numpy()})
    table = frame.groupby("label").agg(images=("mask_rate", "size"), selection_rate=("selection_rate", "mean"),
                                       mask_rate=("mask_rate", "mean"))
    table.index = [dataset.classes[int(c)] for c in table.index]
    table.loc["all"] = [len(frame), frame["selection_rate"].mean(), frame["mask_rate"].mean()]
    return table

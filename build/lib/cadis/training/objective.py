"""The FT-CADIS training objective (Jang et al., TMLR 2024) and its ablations, as pure functions.

For an image x with label y, a frozen denoiser D and the classifier F being fine-tuned:

    x̂_i  = D(x + σ·ε_i),  ε_i ~ N(0, I),  i = 1..M                 (no gradient to D)
    z_i  = F(x̂_i)                                                   (train mode, with gradient)
    c_i  = 1[argmax z_i = y]                                        (x̂_i is not hallucinated)
    L_SCE  = (1/M) Σ_i c_i · CE(z_i, y)                             (warm start: if no c_i, the lowest-CE draw counts)
    p̄     = (1/M) Σ_i softmax(z_i)                                  (the consistency target, with gradient)
    η_i*  = argmax_{‖η - (x̂_i - x)‖₂ ≤ ε} KL(stopgrad(p̄) ‖ softmax(F(x + η)))   (T steps of normalised-gradient ascent)
    L_MAdv = λ · 1[∀i: c_i = 1] · max_i KL(p̄ ‖ softmax(F(x + η_i*)))
    L      = mean over the batch of L_SCE + L_MAdv

As in the authors' train.py, L_MAdv keeps p̄'s gradient: the KL pulls the clean draws' mean prediction
and the adversarial one towards each other (as in TRADES); only the PGD search sees a fixed target.
`detach_target=True` stops that gradient (the `ft-cadis-detached` ablation of `results`).

Ours, beyond the paper: `class_balance=True` reweights L_MAdv so each class in the batch gets the share of it
that it has of the batch, as if every class had the batch's mask rate (`class_balance_weights`). The mask
keeps few images of a class whose draws are often hallucinated (Shirt), so its boundary gets little of the
consistency term while its neighbours' push into it.

Methods: `denoised-ce` (CE on all M draws, the plain denoised fine-tuning baseline), `ft-cadis`
(L_SCE + L_MAdv), `sce-only` (L_SCE alone) and `ce-madv` (CE on all draws + L_MAdv, keeping its
mask). `none` means no training and has no loss.

Tensors of draws are laid out [B, M, ...] (image-major); logits are [B, M, K].
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from cadis.errors import CadisError

METHODS = ("none", "denoised-ce", "ft-cadis", "sce-only", "ce-madv")
_SELECTIVE = {"ft-cadis", "sce-only"}  # L_SCE instead of CE on every draw
_ADVERSARIAL = {"ft-cadis", "ce-madv"}  # add L_MAdv


def check_method(method: str) -> None:
    if method not in METHODS:
        raise CadisError(f"Unknown method {method!r}; choose one of: {', '.join(METHODS)}.")


def draw_noise(x: torch.Tensor, num_draws: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """ε ~ N(0, I) of shape [B, M, C, H, W], drawn on the CPU generator so runs repeat across devices."""
    noise = torch.randn((x.shape[0], num_draws, *x.shape[1:]), generator=generator)
    return noise.to(x.device, x.dtype)


@torch.no_grad()
def denoise_draws(denoiser: torch.nn.Module, x: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """x̂_i = D(x + σ·ε_i) for every draw, [B, M, C, H, W]; the denoiser gets no gradient."""
    b, m = noise.shape[:2]
    noisy = x.unsqueeze(1) + sigma * noise
    return denoiser(noisy.flatten(0, 1), sigma).view(b, m, *x.shape[1:])


def classify_draws(classifier: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """z_i = F(images_i): [B, M, C, H, W] -> logits [B, M, K] in one batched forward pass."""
    b, m = images.shape[:2]
    return classifier(images.flatten(0, 1)).view(b, m, -1)


def cross_entropy_draws(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE(z_i, y) for every draw: [B, M]."""
    b, m, k = logits.shape
    return F.cross_entropy(logits.reshape(b * m, k), y.repeat_interleave(m), reduction="none").view(b, m)


def correct_draws(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """c_i = 1[argmax z_i = y]: the draws the classifier deems not hallucinated, [B, M] bool."""
    return logits.argmax(-1) == y.unsqueeze(1)


def selective_ce(logits: torch.Tensor, y: torch.Tensor, warm_start: bool = True) -> torch.Tensor:
    """L_SCE per image, [B]: (1/M) Σ_i c_i · CE(z_i, y).

    With `warm_start`, an image none of whose draws is correct still trains on its lowest-CE draw;
    otherwise it contributes nothing, which early on (a classifier that has never seen denoised
    images) would leave most of the batch without gradient.
    """
    ce = cross_entropy_draws(logits, y)
    selected = correct_draws(logits, y)
    if warm_start:
        none_correct = ~selected.any(1, keepdim=True)
        lowest = F.one_hot(ce.argmin(1), ce.shape[1]).bool()
        selected = selected | (none_correct & lowest)
    return (ce * selected).mean(1)


def mask_all_correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1[∀i: c_i = 1], [B] bool: only images whose every draw is non-hallucinated get L_MAdv."""
    return correct_draws(logits, y).all(1)


def consistency_target(logits: torch.Tensor, detach: bool = False) -> torch.Tensor:
    """p̄ = (1/M) Σ_i softmax(z_i), [B, K].

    The authors keep its gradient, so L_MAdv also moves the clean draws' mean prediction towards the
    adversarial one; `detach` makes p̄ a fixed target (our earlier version, kept as an ablation).
    """
    p_bar = logits.softmax(-1).mean(1)
    return p_bar.detach() if detach else p_bar


def consistency_kl(p_bar: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p̄ ‖ softmax(z_i)) for every draw: p̄ [B, K], logits [B, M, K] -> [B, M]."""
    target = p_bar.unsqueeze(1).expand_as(logits)
    return F.kl_div(logits.log_softmax(-1), target, reduction="none").sum(-1)


@contextlib.contextmanager
def frozen_eval(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and no parameter gradients inside the block; the module's mode and flags are restored."""
    was_training = module.training
    trainable = [p for p in module.parameters() if p.requires_grad]
    module.eval()
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in trainable:
            p.requires_grad_(True)
        module.train(was_training)


def pgd_denoised(classifier: torch.nn.Module, x: torch.Tensor, eta0: torch.Tensor, p_bar: torch.Tensor,
                 eps: float, steps: int) -> torch.Tensor:
    """η* ≈ argmax_{‖η - η0_i‖₂ ≤ ε} KL(p̄ ‖ softmax(F(x + η))) for every draw, [B, M, C, H, W].

    The search starts at the denoised image (η0 = x̂_i - x) and takes `steps` steps of ℓ2-normalised
    gradient ascent of size 2ε/steps, each followed by projection onto the ℓ2 ball of radius ε around
    η0_i (per draw). No box constraint is applied. F runs in eval mode without parameter gradients.
    """
    if isinstance(classifier, DistributedDataParallel):
        classifier = classifier.module  # the search must not touch DDP's gradient hooks
    eta0 = eta0.detach()
    if steps <= 0 or eps <= 0:
        return eta0
    step_size = 2 * eps / steps
    x = x.detach().unsqueeze(1)
    eta = eta0.clone()

    def per_draw_norm(t: torch.Tensor) -> torch.Tensor:
        return t.flatten(2).norm(dim=-1).view(*t.shape[:2], *([1] * (t.dim() - 2)))

    with frozen_eval(classifier), torch.enable_grad():
        for _ in range(steps):
            eta.requires_grad_(True)
            kl = consistency_kl(p_bar, classify_draws(classifier, x + eta))
            (grad,) = torch.autograd.grad(kl.sum(), eta)
            with torch.no_grad():
                eta = eta + step_size * grad / per_draw_norm(grad).clamp_min(1e-12)
                delta = eta - eta0
                eta = eta0 + delta * (eps / per_draw_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return eta.detach()


def madv_loss(p_bar: torch.Tensor, adv_logits: torch.Tensor, mask: torch.Tensor, lam: float,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """L_MAdv per image, [B]: λ · mask · max_i KL(p̄ ‖ softmax(F(x + η_i*))), times `weight` [B] if given."""
    loss = lam * mask.to(adv_logits.dtype) * consistency_kl(p_bar, adv_logits).amax(1)
    return loss if weight is None else loss * weight.to(loss.dtype)


def class_balance_weights(mask: torch.Tensor, y: torch.Tensor, cap: float = 4.0) -> torch.Tensor:
    """Ours (not in the paper): per-image weights [B] on L_MAdv, w = (batch mask rate) / (mask rate of the
    image's class in the batch), capped at `cap` so one kept image of a rare class cannot dominate. Without the
    cap, the weights of the masked images sum to their number and each class's share equals its share of the batch."""
    classes, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    kept = torch.zeros(len(classes), device=y.device).index_add_(0, inverse, mask.float())
    weight = mask.float().mean() / (kept / counts).clamp_min(1e-12)
    return weight[inverse].clamp(max=cap) * mask


@dataclass
class FTCadisLoss:
    """The training loss of `method` for a batch; call it to get (loss, metrics).

    Metrics (floats, batch means): loss, loss_sce (the CE part: L_SCE, or CE on all draws for the
    CE methods), loss_madv, selection_rate (share of draws with c_i = 1), mask_rate (share of
    images with every draw kept), acc_denoised (accuracy on the denoised draws; the same count as
    selection_rate, reported under both names) and warm_start_rate (share of images with no correct
    draw, trained on their lowest-CE draw under warm start).

    `detach_target` stops p̄'s gradient in L_MAdv (an ablation; the authors keep it); `class_balance`
    reweights L_MAdv per class (ours).
    """

    method: str = "ft-cadis"
    sigma: float = 0.25
    num_draws: int = 4
    lam: float = 4.0
    eps: float = 0.125
    adv_steps: int = 4
    warm_start: bool = True
    detach_target: bool = False
    class_balance: bool = False  # ours: class-balanced L_MAdv (`class_balance_weights`)

    def __post_init__(self) -> None:
        check_method(self.method)
        if self.method == "none":
            raise CadisError("Method 'none' trains nothing and has no loss.")
        if not self.sigma > 0:
            raise CadisError(f"sigma must be > 0 (got {self.sigma}); try 0.25 or 0.5.")
        if self.num_draws < 1:
            raise CadisError(f"num_draws must be >= 1 (got {self.num_draws}); the paper uses 4.")
        if self.eps < 0 or self.adv_steps < 0 or self.lam < 0:
            raise CadisError("eps, adv_steps and lam must be >= 0.")

    def __call__(self, classifier: torch.nn.Module, denoiser: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                 noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """x [B, C, H, W] in [0, 1], y [B]; `noise` [B, M, C, H, W] (else drawn from `generator`)."""
        if noise is None:
            noise = draw_noise(x, self.num_draws, generator)
        x_hat = denoise_draws(denoiser, x, noise, self.sigma)
        logits = classify_draws(classifier, x_hat)
        correct = correct_draws(logits, y)
        if self.method in _SELECTIVE:
            loss_ce = selective_ce(logits, y, self.warm_start)
        else:
            loss_ce = cross_entropy_draws(logits, y).mean(1)
        mask = mask_all_correct(logits, y)
        loss_madv = torch.zeros_like(loss_ce)
        if self.method in _ADVERSARIAL and self.lam > 0 and mask.any():
            # Images outside the mask contribute exactly 0, so only the masked ones are attacked.
            keep = mask.nonzero().squeeze(1)
            p_bar = consistency_target(logits[keep], self.detach_target)
            eta = pgd_denoised(classifier, x[keep], x_hat[keep] - x[keep].unsqueeze(1), p_bar.detach(),
                               self.eps, self.adv_steps)
            adv_logits = classify_draws(classifier, x[keep].unsqueeze(1) + eta)
            weight = class_balance_weights(mask, y)[keep] if self.class_balance else None
            loss_madv = loss_madv.index_put((keep,), madv_loss(p_bar, adv_logits, mask[keep], self.lam, weight))
        loss = (loss_ce + loss_madv).mean()
        correct_f = correct.float()
        metrics = {
            "loss": loss.item(),
            "loss_sce": loss_ce.mean().item(),
            "loss_madv": loss_madv.mean().item(),
            "selection_rate": correct_f.mean().item(),
            "mask_rate": mask.float().mean().item(),
            "acc_denoised": correct_f.mean().item(),
            "warm_start_rate": (~correct.any(1)).float().mean().item(),
        }
        for k in range(logits.shape[-1]):  # per class (c0 is the dataset's first): which class the mask leaves out
            in_class = y == k
            metrics[f"mask_rate_c{k}"] = mask[in_class].float().mean().item() if in_class.any() else float("nan")
        return loss, metrics

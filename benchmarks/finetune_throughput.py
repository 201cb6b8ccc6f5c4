"""Fine-tuning throughput: an ft-cadis step of the cadis trainer vs a reference step in the authors' style.

    python benchmarks/finetune_throughput.py [--preset fashion-mnist] [--batch-size 32] [--steps 5]

The reference step follows the FT-CADIS / SmoothAdv code: M separate denoiser passes per step (recomputed
every step), one classifier pass per draw, the PGD search on every image and draw (the mask is applied to
the loss afterwards), fp32 and eager. The cadis step is `FTCadisLoss`: one batched pass over all M draws,
the search only on images inside the mask, under each precision and optionally torch.compile'd (the compile
is done before timing). Both train the same LoRA classifier with AdamW. Prints images/s for each and the ratio.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cadis.acceleration import Acceleration, describe_machine  # noqa: E402
from cadis.models.presets import get_preset  # noqa: E402
from cadis.training.finetune import FinetuneConfig, make_optimizer, prepare_classifier  # noqa: E402


def reference_step(model, denoiser, x, y, optimizer, sigma=0.25, num_noises=4, eps=0.125, attack_steps=4, lam=4.0):
    """One training step written the way the authors' code does it (loops over draws, attack on everything)."""
    noises = [torch.randn_like(x) * sigma for _ in range(num_noises)]
    with torch.no_grad():
        denoised = [denoiser(x + noise, sigma) for noise in noises]
    logits = [model(d) for d in denoised]
    ce = torch.stack([F.cross_entropy(z, y, reduction="none") for z in logits], 1)
    correct = torch.stack([z.argmax(1) == y for z in logits], 1)
    select = correct | (~correct.any(1, keepdim=True) & F.one_hot(ce.argmin(1), num_noises).bool())
    loss_sce = (ce * select).mean(1)
    p_bar = torch.stack([z.softmax(1) for z in logits]).mean(0).detach()
    model.eval()
    adversarial = []
    for d in denoised:
        delta0 = (d - x).detach()
        delta = delta0.clone()
        for _ in range(attack_steps):
            delta.requires_grad_(True)
            kl = F.kl_div(model(x + delta).log_softmax(1), p_bar, reduction="sum")
            (grad,) = torch.autograd.grad(kl, [delta])
            grad_norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1).clamp_min(1e-12)
            delta = delta.detach() + 2 * eps / attack_steps * grad / grad_norm
            diff = delta - delta0
            diff_norm = diff.flatten(1).norm(dim=1).view(-1, 1, 1, 1).clamp_min(1e-12)
            delta = delta0 + diff * (eps / diff_norm).clamp(max=1)
        adversarial.append((x + delta).detach())
    model.train()
    kls = torch.stack([F.kl_div(model(a).log_softmax(1), p_bar, reduction="none").sum(1) for a in adversarial], 1)
    loss_madv = lam * correct.all(1).float() * kls.max(1).values
    loss = (loss_sce + loss_madv).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def cadis_step(model, denoiser, x, y, optimizer, loss_fn, precision: str):
    with Acceleration(precision).autocast(x.device):
        loss, _ = loss_fn(model, denoiser, x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def images_per_s(step, batch_size: int, steps: int) -> float:
    step()  # warm up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion-mnist")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--variants", nargs="+", default=["fp32", "bf16", "fp32+compile"],
                   help="precision, optionally +compile")
    args = p.parse_args()
    preset = get_preset(args.preset)
    denoiser, classifier = preset.load_models()
    train = preset.load_dataset("train")
    x, y = train.images[: args.batch_size], train.labels[: args.batch_size]
    cfg = FinetuneConfig(method="ft-cadis", sigma=args.sigma, batch_size=args.batch_size)
    torch.manual_seed(0)
    model = prepare_classifier(cfg, classifier).train()
    ref_model = copy.deepcopy(model)
    ref_opt = make_optimizer(cfg, ref_model)
    ref = images_per_s(lambda: reference_step(ref_model, denoiser, x, y, ref_opt, args.sigma), args.batch_size,
                       args.steps)
    print(f"machine: {describe_machine()}, {torch.get_num_threads()} torch threads; preset {args.preset}, "
          f"sigma={args.sigma}, batch {args.batch_size}, M=4, T=4, LoRA, {args.steps} steps")
    print("| step | images/s | vs reference | |\n|---|---|---|---|")
    print(f"| reference (authors' style, fp32, eager) | {ref:.1f} | 1.00x | |")
    for variant in args.variants:
        precision, compiled = variant.split("+")[0], variant.endswith("+compile")
        m = copy.deepcopy(model)
        if compiled:
            m.compile()
        opt = make_optimizer(cfg, m)
        start = time.perf_counter()
        for _ in range(2):  # compile (train and eval graphs) and warm up
            cadis_step(m, denoiser, x, y, opt, cfg.loss(), precision)
        setup = time.perf_counter() - start
        ips = images_per_s(lambda m=m, opt=opt, precision=precision: cadis_step(m, denoiser, x, y, opt, cfg.loss(),
                                                                                 precision),
                           args.batch_size, args.steps)
        print(f"| cadis ft-cadis, {variant} | {ips:.1f} | {ips / ref:.2f}x | setup {setup:.0f} s |")


if __name__ == "__main__":
    main()

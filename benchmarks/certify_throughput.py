"""Certification throughput: the reference loop vs the cadis engine, side by side in one process.

    python benchmarks/certify_throughput.py --preset fashion-mnist [--num 2000] [--batch-size 500]
    python benchmarks/certify_throughput.py --models cifar10-random --device cuda   # on a GPU

Prints samples/s of the reference loop and of the engine under each set of levers (precision, channels_last,
torch.compile), their ratios, the engine's FLOP-weighted throughput (GFLOP/s) against torch's matmul GFLOP/s
on this machine (fp32 and bf16) as ceilings, and the FLOPs per sample (denoiser + classifier).
`cifar10-random` builds randomly initialised CIFAR-10-sized models (google/ddpm-cifar10-32's UNet config and
a ViT-B/16 at 224), so no hub download is needed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference import reference_sample_noise  # noqa: E402

from cadis.acceleration import Acceleration, describe_machine  # noqa: E402
from cadis.certification.smoothing import DenoisedSmoothing  # noqa: E402
from cadis.models.classifier import ImageClassifier  # noqa: E402
from cadis.models.denoiser import DiffusionDenoiser  # noqa: E402
from cadis.models.presets import get_preset  # noqa: E402
from experiments.zoo.architectures import count_flops  # noqa: E402

LEVERS = {
    "fp32": Acceleration(),
    "bf16": Acceleration("bf16"),
    "bf16+compile": Acceleration("bf16", compile=True),
    "bf16+channels_last+compile": Acceleration("bf16", channels_last=True, compile=True),
}


def matmul_gflops(device: str, dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_of(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def cifar10_random_models(device: str) -> tuple[DiffusionDenoiser, ImageClassifier, torch.Tensor]:
    """Randomly initialised models of the CIFAR-10 literature's sizes (no download)."""
    import timm
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel(  # google/ddpm-cifar10-32's config
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1)
    denoiser = DiffusionDenoiser(unet, DDPMScheduler(num_train_timesteps=1000)).to(device)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
    classifier = ImageClassifier(vit, (3, 224, 224), (0.5,) * 3, (0.5,) * 3).eval().to(device)
    return denoiser, classifier, torch.rand(3, 32, 32, device=device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion-mnist")
    p.add_argument("--models", default="preset", choices=["preset", "cifar10-random"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--num", type=int, default=2000, help="draws per timing")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    args = p.parse_args()
    if args.models == "preset":
        preset = get_preset(args.preset)
        denoiser, classifier = preset.load_models(args.device)
        x = preset.load_dataset("test")[0][0].to(args.device)
    else:
        denoiser, classifier, x = cifar10_random_models(args.device)
    t = torch.tensor([denoiser.timestep(args.sigma)], device=args.device)
    flops = count_flops(denoiser.unet, x[None] * 2 - 1, t) + count_flops(classifier, x[None])
    ref = best_of(lambda: reference_sample_noise(denoiser, classifier, x, args.num, args.batch_size, args.sigma,
                                                 classifier.num_classes), args.repeats, args.device)
    ref_sps = args.num / ref
    ceilings = {"fp32": matmul_gflops(args.device), "bf16": matmul_gflops(args.device, torch.bfloat16)}
    print(f"machine: {describe_machine()}, {torch.get_num_threads()} torch threads")
    print(f"models {args.models if args.models != 'preset' else args.preset}: {flops / 1e6:.1f} MFLOP per sample "
          f"(denoiser + classifier), sigma={args.sigma}, batch {args.batch_size}, {args.num} draws, "
          f"best of {args.repeats}")
    print(f"matmul ceiling: fp32 {ceilings['fp32']:.1f} GFLOP/s, bf16 {ceilings['bf16']:.1f} GFLOP/s")
    print("| run | samples/s | vs reference | GFLOP/s | share of fp32 matmul | share of bf16 matmul | setup s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| reference loop (fp32, eager) | {ref_sps:.1f} | 1.00x | {ref_sps * flops / 1e9:.1f} | "
          f"{ref_sps * flops / 1e9 / ceilings['fp32']:.0%} | | |")
    for name in args.levers:
        start = time.perf_counter()
        smooth = DenoisedSmoothing(denoiser, classifier, args.sigma, args.batch_size, acceleration=LEVERS[name])
        smooth.sample_counts(x, args.batch_size, torch.Generator(args.device).manual_seed(0))  # compile, warm up
        setup = time.perf_counter() - start
        eng = best_of(lambda s=smooth: s.sample_counts(x, args.num, torch.Generator(args.device).manual_seed(0)),
                      args.repeats, args.device)
        sps = args.num / eng
        gflops = sps * flops / 1e9
        print(f"| engine, {name} | {sps:.1f} | {sps / ref_sps:.2f}x | {gflops:.1f} | "
              f"{gflops / ceilings['fp32']:.0%} | {gflops / ceilings['bf16']:.0%} | {setup:.1f} |")
        if LEVERS[name].channels_last:  # later rows start from the default memory format again
            denoiser.to(memory_format=torch.contiguous_format)
            classifier.to(memory_format=torch.contiguous_format)


if __name__ == "__main__":
    main()

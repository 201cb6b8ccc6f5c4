"""Certification throughput: the reference loop vs the cadis engine, side by side in one process.

    python benchmarks/certify_throughput.py --preset fashion-mnist [--num 2000] [--batch-size 500]

Prints samples/s for each, their ratio, the engine's FLOP-weighted throughput (GFLOP/s) and torch's fp32
matmul GFLOP/s on this machine as a ceiling, with the FLOPs per sample (denoiser + classifier).
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

from cadis_core.presets import get_preset  # noqa: E402
from cadis_core.smoothing import DenoisedSmoothing  # noqa: E402
from cadis_core.zoo.architectures import count_flops  # noqa: E402


def matmul_gflops(n: int = 1024, reps: int = 20, device: str = "cpu") -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion-mnist")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--num", type=int, default=2000, help="draws per timing")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    preset = get_preset(args.preset)
    denoiser, classifier = preset.load_models()
    x = preset.load_dataset("test")[0][0]
    smooth = DenoisedSmoothing(denoiser, classifier, args.sigma, args.batch_size)
    flops = (count_flops(denoiser.unet, (x[None] * 2 - 1), torch.tensor([denoiser.timestep(args.sigma)]))
             + count_flops(classifier, x[None]))
    ref = best_of(lambda: reference_sample_noise(denoiser, classifier, x, args.num, args.batch_size, args.sigma,
                                                 classifier.num_classes), args.repeats)
    eng = best_of(lambda: smooth.sample_counts(x, args.num, torch.Generator().manual_seed(0)), args.repeats)
    ceiling = matmul_gflops()
    ref_sps, eng_sps = args.num / ref, args.num / eng
    print(f"machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}, device cpu")
    print(f"preset {args.preset}: {flops / 1e6:.1f} MFLOP per sample (denoiser + classifier), "
          f"sigma={args.sigma}, batch {args.batch_size}, {args.num} draws, best of {args.repeats}")
    print(f"reference loop : {ref_sps:8.1f} samples/s")
    print(f"cadis engine   : {eng_sps:8.1f} samples/s   ratio {eng_sps / ref_sps:.2f}x")
    print(f"engine GFLOP/s : {eng_sps * flops / 1e9:8.1f}   matmul GFLOP/s {ceiling:.1f}   "
          f"share {eng_sps * flops / 1e9 / ceiling:.0%}")


if __name__ == "__main__":
    main()

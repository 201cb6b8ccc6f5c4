"""Cohen et al.'s reference CERTIFY loop against the cadis engine, image by image on the same models and images.

    HF_HUB_OFFLINE=1 python benchmarks/cohen_reference.py [--images 10] [--sigma 0.5] [--isa native|avx2|both]
        [--floor]

The reference is a copy of `Smooth` from locuslab/smoothing (code/core.py), wrapping the same base as cadis'
`DenoisedSmoothing.classify_noisy`: the preset's classifier ∘ denoiser, loaded as `cadis certify` loads them. Per
image, every variant certifies in turn (the order rotates from image to image, so load drifts evenly): Cohen's loop
(fp32, eager), cadis fp32, fp32+compile, bf16, bf16+compile, and `auto` (`acceleration.auto_precision`, what
`cadis certify --precision auto` picks on this machine, measured now). Prints per variant the median seconds per
image, images/s, the ratio to Cohen's loop, and how many certificates agree with Cohen's and with cadis fp32.

Seeded alike (torch.manual_seed(seed) for Cohen's loop, seed for cadis), Cohen's torch.randn_like batches and
cadis' generator draw the same noise in the same batches, so cadis fp32 eager certifies the same draws with the
same arithmetic; the other variants certify another f (bf16, or compiled kernels) on those draws, and may differ
on images near a decision. `--isa avx2` re-runs the script with ATen, oneDNN and MKL limited to AVX2 (what a CPU
without AVX-512 runs) and its own inductor cache; the CPU is still this one, so this is an emulation. `--isa both`
runs native, then avx2. `--floor` last prints the speed-up over Cohen's loop that no runtime passes on this machine
without fewer FLOPs (engine_levers.py's `floor`: f's FLOPs at the rate of a large matrix product).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from math import ceil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion-mnist")
    p.add_argument("--images", type=int, default=10, help="the first K test images")
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--isa", default="native", choices=["native", "avx2", "both"],
                   help="avx2: emulate a CPU without AVX-512 (ATen, oneDNN, MKL and inductor limited to AVX2)")
    p.add_argument("--floor", action="store_true", help="last, the speed-up no runtime can pass on this machine")
    return p.parse_args()


def reexec(args: argparse.Namespace, caps: dict[str, str] = AVX2) -> None:
    """The ISA limits (`caps`) must be in the environment before torch loads: run the calling script again with
    them (`--isa avx2`), or once per ISA (`--isa both`). Shared by the benchmarks that emulate an AVX2-only CPU."""
    script = os.path.abspath(sys.argv[0])
    if args.isa == "both":
        for isa in ("native", "avx2"):
            subprocess.run([sys.executable, script, *sys.argv[1:], "--isa", isa], check=True)  # the last --isa wins
        sys.exit(0)
    if args.isa == "avx2" and any(os.environ.get(k) != v for k, v in caps.items()):
        # inductor's FX graph cache (torch 2.14) does not key on the ISA: sharing the native cache served native
        # graphs here (NaN logits) and AVX2 graphs to later native runs (heap corruption). It gets its own.
        cache = os.path.join(tempfile.gettempdir(), f"torchinductor_{os.getuid()}_avx2")
        env = {**os.environ, **caps, "TORCHINDUCTOR_CACHE_DIR": cache}
        os.execve(sys.executable, [sys.executable, script, *sys.argv[1:]], env)


# ---- Cohen et al.'s reference: a copy of `Smooth` from https://github.com/locuslab/smoothing/blob/master/code/core.py
# (commit bdfa228, Jeremy Cohen, Elan Rosenfeld, Zico Kolter, "Certified Adversarial Robustness via Randomized
# Smoothing", ICML 2019). Changed only where it cannot run here: noise on the input's device instead of 'cuda', and
# scipy's removed binom_test as binomtest(...).pvalue. Docstrings shortened; statsmodels' proportion_confint as there.
def cohen_smooth():
    import numpy as np
    import torch
    from scipy.stats import binomtest, norm
    from statsmodels.stats.proportion import proportion_confint

    class Smooth:
        """A smoothed classifier g """

        # to abstain, Smooth returns this int
        ABSTAIN = -1

        def __init__(self, base_classifier: torch.nn.Module, num_classes: int, sigma: float):
            self.base_classifier = base_classifier
            self.num_classes = num_classes
            self.sigma = sigma

        def certify(self, x: torch.tensor, n0: int, n: int, alpha: float, batch_size: int) -> (int, float):
            self.base_classifier.eval()
            # draw samples of f(x+ epsilon)
            counts_selection = self._sample_noise(x, n0, batch_size)
            # use these samples to take a guess at the top class
            cAHat = counts_selection.argmax().item()
            # draw more samples of f(x + epsilon)
            counts_estimation = self._sample_noise(x, n, batch_size)
            # use these samples to estimate a lower bound on pA
            nA = counts_estimation[cAHat].item()
            pABar = self._lower_confidence_bound(nA, n, alpha)
            if pABar < 0.5:
                return Smooth.ABSTAIN, 0.0
            else:
                radius = self.sigma * norm.ppf(pABar)
                return cAHat, radius

        def predict(self, x: torch.tensor, n: int, alpha: float, batch_size: int) -> int:
            self.base_classifier.eval()
            counts = self._sample_noise(x, n, batch_size)
            top2 = counts.argsort()[::-1][:2]
            count1 = counts[top2[0]]
            count2 = counts[top2[1]]
            if binomtest(count1, count1 + count2, p=0.5).pvalue > alpha:  # was binom_test(...)
                return Smooth.ABSTAIN
            else:
                return top2[0]

        def _sample_noise(self, x: torch.tensor, num: int, batch_size) -> np.ndarray:
            with torch.no_grad():
                counts = np.zeros(self.num_classes, dtype=int)
                for _ in range(ceil(num / batch_size)):
                    this_batch_size = min(batch_size, num)
                    num -= this_batch_size

                    batch = x.repeat((this_batch_size, 1, 1, 1))
                    noise = torch.randn_like(batch, device=x.device) * self.sigma  # was device='cuda'
                    predictions = self.base_classifier(batch + noise).argmax(1)
                    counts += self._count_arr(predictions.cpu().numpy(), self.num_classes)
                return counts

        def _count_arr(self, arr: np.ndarray, length: int) -> np.ndarray:
            counts = np.zeros(length, dtype=int)
            for idx in arr:
                counts[idx] += 1
            return counts

        def _lower_confidence_bound(self, NA: int, N: int, alpha: float) -> float:
            return proportion_confint(NA, N, alpha=2 * alpha, method="beta")[0]

    return Smooth
# ---- end of the copy


def main() -> None:
    args = parse()
    reexec(args)
    sys.path.insert(0, str(ROOT))
    import torch

    from cadis.acceleration import Acceleration, auto_precision, describe_machine
    from cadis.certification.smoothing import DenoisedSmoothing
    from cadis.models.denoiser import DiffusionDenoiser
    from cadis.models.loading import load_classifier
    from cadis.models.presets import SEARCH_ROOTS, resolve_models

    preset = resolve_models(args.preset, None, None, None)  # as `cadis certify --preset` loads its models
    preset.check_available()
    denoiser = DiffusionDenoiser.from_pretrained(preset.denoiser, "cpu")
    classifier = load_classifier(preset.classifier, "cpu", SEARCH_ROOTS)
    test = preset.load_dataset("test")

    class Base(torch.nn.Module):  # classifier ∘ denoiser, as DenoisedSmoothing.classify_noisy (one-shot)
        def forward(self, noisy: torch.Tensor) -> torch.Tensor:
            return classifier(denoiser(noisy, args.sigma))

    cohen = cohen_smooth()(Base(), classifier.num_classes, args.sigma)

    def cadis(precision: str, compile: bool = False) -> DenoisedSmoothing:
        return DenoisedSmoothing(denoiser, classifier, args.sigma, args.batch_size,
                                 acceleration=Acceleration(precision, compile=compile))

    isa = "avx2 (emulated)" if os.environ.get("ATEN_CPU_CAPABILITY") == "avx2" else "native"
    before = os.environ.get("XDG_CACHE_HOME")
    with tempfile.TemporaryDirectory() as cache:  # `auto` measured now, not read from an earlier run's cache
        os.environ["XDG_CACHE_HOME"] = cache
        auto, record = auto_precision(cadis("fp32").classify_noisy, denoiser.image_shape, args.sigma,
                                      f"cohen_reference|{preset.denoiser}|{preset.classifier}|isa={isa}", "cpu",
                                      min(args.batch_size, 64))
    os.environ.pop("XDG_CACHE_HOME") if before is None else os.environ.update(XDG_CACHE_HOME=before)
    smooths = {"cadis fp32": cadis("fp32"), "cadis fp32+compile": cadis("fp32", True), "cadis bf16": cadis("bf16"),
               "cadis bf16+compile": cadis("bf16", True), f"cadis auto ({auto})": cadis(auto)}
    names = ["Cohen et al. loop (fp32, eager)", *smooths]

    def certify(name: str, x: torch.Tensor, seed: int) -> tuple[int, float]:
        if name == names[0]:
            torch.manual_seed(seed)
            return cohen.certify(x, args.n0, args.n, args.alpha, args.batch_size)
        cert = smooths[name].certify(x, args.n0, args.n, args.alpha, seed=seed)
        return cert.prediction, cert.radius

    setup = {}
    warm = test[len(test) - 1][0]  # warm-up (and compilation) on an image outside the timed ones
    for name in names:
        start = time.perf_counter()
        certify(name, warm, 0)
        setup[name] = time.perf_counter() - start
    seconds = {name: [] for name in names}
    certs = {name: [] for name in names}
    for i in range(args.images):
        x = test[i][0]
        for name in names[i % len(names):] + names[:i % len(names)]:  # rotate who goes first
            start = time.perf_counter()
            certs[name].append(certify(name, x, seed=i))
            seconds[name].append(time.perf_counter() - start)

    def agree(a: str, b: str) -> str:
        """Images with the same class, with the same radius too (to 1e-9), and the largest radius gap."""
        pairs = list(zip(certs[a], certs[b]))
        same_class = sum(p == q for (p, _), (q, _) in pairs)
        same_radius = sum(p == q and abs(r - s) < 1e-9 for (p, r), (q, s) in pairs)
        gap = max(abs(r - s) for (_, r), (_, s) in pairs)
        return f"{same_class}/{args.images}, {same_radius}/{args.images}, {gap:.3f}"

    print(f"{describe_machine()} | {torch.get_num_threads()} threads | ISA {isa}"
          + (f" ({', '.join(f'{k}={v}' for k, v in AVX2.items())})" if isa != "native" else ""))
    print(f"preset {args.preset}, first {args.images} test images, σ={args.sigma}, n0={args.n0}, N={args.n}, "
          f"α={args.alpha}, batch {args.batch_size}; auto chose {auto} "
          f"(s per call of {record.get('batch')}: {record.get('seconds_per_call')})")
    cohen_median = statistics.median(seconds[names[0]])
    print("| variant | s/image (median) | images/s | vs Cohen's loop | setup s | as Cohen: same class, same radius, "
          "largest radius gap | as cadis fp32: the same |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        median = statistics.median(seconds[name])
        print(f"| {name} | {median:.2f} | {args.images / sum(seconds[name]):.2f} | {cohen_median / median:.2f}x | "
              f"{setup[name]:.1f} | {agree(name, names[0])} | {agree(name, 'cadis fp32')} |")
    for precision in ("fp32", "bf16"):  # what `--compile auto` weighs: the compile's cost against its saving
        eager, compiled = f"cadis {precision}", f"cadis {precision}+compile"
        cost = setup[compiled] - statistics.median(seconds[compiled])
        saving = statistics.median(seconds[eager]) - statistics.median(seconds[compiled])
        payback = f"pays back after {cost / saving:.0f} images" if saving > 0 else "never pays back (no saving)"
        print(f"compile, {precision}: {cost:.1f} s once (setup minus an image), saves {saving:.2f} s per image "
              f"({saving / statistics.median(seconds[eager]):.0%}): {payback} at these settings")

    if args.floor:
        from engine_levers import floor  # a sibling script (it imports this one's reexec)

        draws = torch.randn((args.batch_size, *warm.shape), generator=torch.Generator().manual_seed(0))
        per_batch = cohen_median * args.batch_size / (args.n0 + args.n)  # Cohen's loop's seconds per batch of draws
        floor(Base(), draws.mul_(args.sigma).add_(warm), per_batch, "Cohen's loop")


if __name__ == "__main__":
    main()

"""Certifying several classifiers behind one denoiser: separately vs on shared draws, side by side.

    python benchmarks/shared_draws.py [--classifiers 3] [--num 1000] [--precision bf16 --compile]

Separately, every CERTIFY denoises its own draws; `DenoisedSmoothing.certify_classifiers` denoises each
draw once and classifies it K times (what `python -m experiments results` does for none / denoised-ce /
ft-cadis). Both give the same certificates; the script checks that, then prints certificates/s and the ratio.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cadis.acceleration import PRECISIONS, Acceleration, describe_machine  # noqa: E402
from cadis.certification.smoothing import DenoisedSmoothing  # noqa: E402
from cadis.models.presets import get_preset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion-mnist")
    p.add_argument("--classifiers", type=int, default=3, help="K classifiers behind the one denoiser")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--num", type=int, default=1000, help="estimation draws per certificate")
    p.add_argument("--batch-size", type=int, default=550)
    p.add_argument("--images", type=int, default=3, help="test images timed (best of 2 passes)")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    preset = get_preset(args.preset)
    denoiser, classifier = preset.load_models()
    classifiers = [classifier] + [copy.deepcopy(classifier) for _ in range(args.classifiers - 1)]
    acc = Acceleration(args.precision, compile=args.compile)
    separate = [DenoisedSmoothing(denoiser, c, args.sigma, args.batch_size, acceleration=acc) for c in classifiers]
    shared = DenoisedSmoothing(denoiser, classifier, args.sigma, args.batch_size, acceleration=acc)
    images = [preset.load_dataset("test")[i][0] for i in range(args.images)]

    def run_separate():
        return [[s.certify(x, args.n0, args.num, 0.001, seed=i) for s in separate] for i, x in enumerate(images)]

    def run_shared():
        return [shared.certify_classifiers(x, classifiers, args.n0, args.num, 0.001, seed=i)
                for i, x in enumerate(images)]

    timings = {}
    for name, fn in [("separate", run_separate), ("shared draws", run_shared)]:
        fn()  # warm up (and compile)
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            certs = fn()
            best = min(best, time.perf_counter() - start)
        timings[name] = (best, certs)
    pairs = zip(sum(timings["separate"][1], []), sum(timings["shared draws"][1], []))
    same = all(a.prediction == b.prediction and a.count_a == b.count_a for a, b in pairs)
    print(f"machine: {describe_machine()}, {torch.get_num_threads()} torch threads; "
          f"{args.classifiers} classifiers, sigma={args.sigma}, n0={args.n0}, n={args.num}, batch {args.batch_size}, "
          f"{args.precision}{' + compile' if args.compile else ''}, {args.images} images")
    print(f"identical certificates: {same}")
    print("| run | certificates/s | vs separate |")
    print("|---|---|---|")
    base = timings["separate"][0]
    for name, (seconds, _) in timings.items():
        print(f"| {name} | {args.classifiers * args.images / seconds:.2f} | {base / seconds:.2f}x |")


if __name__ == "__main__":
    main()

"""Draws per second of adaptive CERTIFY on shared draws against fixed N, compiled, on the same images.

    HF_HUB_OFFLINE=1 python benchmarks/adaptive_throughput.py --compile [--images 4] [--n 10000] [--batch-size 256]

Adaptive CERTIFY asks for draws in looks of many sizes (n0, then n_1, n_2 - n_1, ...), so its batches come in
many shapes; with torch.compile(dynamic=False) each new shape recompiles, and past dynamo's recompile limit (8)
the rest runs eager. The engine pads short batches to a quarter, half, three quarters or all of the batch size
(`Smooth.padded`; the padded rows are dropped before counting). Per image, rotating which runs first:

- fixed N: `certify_classifiers`, n0 + N draws denoised once for all classifiers;
- adaptive: `certify_adaptive_classifiers` (radii of interest 0/0.25/0.5/0.75/1.0), n0 + the largest n_k;
- with `--unpadded`, adaptive without the padding (warmed up on the first image: its shapes compile up to
  dynamo's limit, the rest run eager).

Prints denoised draws per second of each (padded rows are not draws), adaptive's ratio to fixed N, the rows the
denoiser ran per draw (padding included), the batch shapes it ran at, and dynamo's recompile-limit warnings.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from cadis.acceleration import PRECISIONS, Acceleration, describe_machine  # noqa: E402
from cadis.analysis.tables import DEFAULT_RADII  # noqa: E402
from cadis.certification.adaptive import certify_adaptive_classifiers  # noqa: E402
from cadis.certification.smoothing import DenoisedSmoothing, bucket  # noqa: E402
from cadis.models.loading import load_classifier  # noqa: E402
from cadis.models.presets import FINETUNED, SEARCH_ROOTS, get_preset  # noqa: E402


class LimitWatch(logging.Handler):
    """Counts dynamo's 'recompile limit' warnings: past them a function runs eager for new shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.hits += "recompile_limit" in record.getMessage() or "cache_size_limit" in record.getMessage()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion-mnist")
    p.add_argument("--methods", nargs="+", default=["none", "denoised-ce.authors-lora", "ft-cadis.authors-lora"],
                   help="classifiers on the shared draws: none (the preset's) or shipped adapters at --sigma")
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--images", type=int, default=4, help="the first K test images")
    p.add_argument("--precision", default="bf16", choices=list(PRECISIONS))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--unpadded", action="store_true", help="also time adaptive without the padding")
    args = p.parse_args()
    watch = LimitWatch()
    logging.getLogger("torch._dynamo").addHandler(watch)
    preset = get_preset(args.preset)
    denoiser, base = preset.load_models()
    classifiers = [base if m == "none" else load_classifier(str(FINETUNED / f"{m}-s{args.sigma:g}"),
                                                            search_roots=SEARCH_ROOTS) for m in args.methods]
    test = preset.load_dataset("test")
    images = [test[i][0] for i in range(args.images)]
    acceleration = Acceleration(args.precision, compile=args.compile)
    smooth = DenoisedSmoothing(denoiser, base, args.sigma, args.batch_size, acceleration=acceleration)
    radii = list(DEFAULT_RADII)

    def fixed(x):
        certs = smooth.certify_classifiers(x, classifiers, args.n0, args.n, args.alpha, seed=0)
        return args.n0 + max(c.n for c in certs)

    def adaptive(x):
        certs = certify_adaptive_classifiers(smooth, x, classifiers, args.n0, args.n, args.alpha, seed=0, radii=radii)
        return args.n0 + max(c.n for c in certs)

    runs = {"fixed N": (fixed, True), "adaptive": (adaptive, True)}  # name: (run, padded)
    if args.unpadded:
        runs["adaptive, unpadded"] = (adaptive, False)
    ran: dict[str, list[int]] = {name: [] for name in [*runs, "warm-up"]}  # rows the denoiser ran, padding included
    now = ["warm-up"]
    pad = smooth.padded  # recorded outside the compiled code (a hook inside it would recompile as the list grows)
    smooth.padded = lambda batch: ran[now[0]].append(len(pad(batch))) or pad(batch)
    heads = smooth.heads(classifiers)
    start = time.perf_counter()
    for b in sorted({bucket(s, args.batch_size) for s in range(1, args.batch_size + 1)}):  # compile every bucket
        smooth.sample_counts(images[0], b, smooth.generator(images[0], 0), heads=heads)
    setup = time.perf_counter() - start
    if args.unpadded:  # its shapes compile up to dynamo's limit, the rest run eager
        smooth.static_shapes = False
        adaptive(images[0])
    warm_hits = watch.hits
    rates: dict[str, list[float]] = {name: [] for name in runs}
    draws: dict[str, list[int]] = {name: [] for name in runs}
    for i, x in enumerate(images):
        for name in [*runs][i % len(runs):] + [*runs][:i % len(runs)]:  # rotate who goes first: load drifts
            run, smooth.static_shapes = runs[name]
            now[0] = name
            t = time.perf_counter()
            d = run(x)
            rates[name].append(d / (time.perf_counter() - t))
            draws[name].append(d)
    print(describe_machine(), f"| {torch.get_num_threads()} threads")
    print(f"preset {args.preset}, σ={args.sigma}, {len(classifiers)} classifiers on shared draws "
          f"({' '.join(args.methods)}), first {args.images} test images, n0={args.n0}, N={args.n}, α={args.alpha}, "
          f"batch {args.batch_size}, {args.precision}{' + compile' if args.compile else ', eager'}; setup (compiling "
          f"every bucket) {setup:.0f} s; dynamo recompile-limit warnings: {warm_hits} in warm-up, "
          f"{watch.hits - warm_hits} while timed")
    fixed_rate = statistics.median(rates["fixed N"])
    print("| run | mean draws/image | draws/s (median over images) | vs fixed N per draw | rows run per draw | "
          "batch shapes |")
    print("|---|---|---|---|---|---|")
    for name, r in rates.items():
        print(f"| {name} | {statistics.mean(draws[name]):.0f} | {statistics.median(r):.0f} | "
              f"{statistics.median(r) / fixed_rate:.2f}x | {sum(ran[name]) / sum(draws[name]):.3f} | "
              f"{len(set(ran[name]))} |")


if __name__ == "__main__":
    main()

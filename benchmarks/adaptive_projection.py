"""Project adaptive CERTIFY's savings to larger budgets N by simulation, from a measured fixed-budget run.

    python benchmarks/adaptive_projection.py runs/bench/adaptive/fashion-mnist_s0.5_n1000_bf16_fixed.tsv \
        --budgets 1000 10000 100000

Each image of the TSV becomes a two-class draw source with p = count_a / n, its measured rate. The script
runs fixed CERTIFY and `certify_sequential` on Binomial draws at each budget, side by side, and prints
certified accuracy at the radii and the draws saved. It is a model, not a measurement: true rates of
images with count_a = n may be below 1. At N=1000 it can be checked against `adaptive_certify.py`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cadis.analysis.tables import DEFAULT_RADII  # noqa: E402
from cadis.certification.adaptive import certify_sequential, default_tolerance  # noqa: E402
from cadis.certification.smoothing import decide  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tsv", help="a fixed-budget result TSV (cadis certify)")
    p.add_argument("--budgets", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--repeats", type=int, default=20, help="simulated runs per image")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    df = pd.read_csv(args.tsv, sep="\t")
    sigma, radii = float(df["sigma"].iloc[0]), np.array(DEFAULT_RADII)
    rates, correct = (df["count_a"] / df["n"]).to_numpy(), (df["correct"] == 1).to_numpy()
    rng = np.random.default_rng(args.seed)
    print(f"{args.tsv}: {len(df)} images, sigma={sigma}, alpha={args.alpha}, "
          f"radii {list(DEFAULT_RADII)}, {args.repeats} simulated runs per image")
    print("| N | procedure | " + " | ".join(f"r={r:g}" for r in radii) + " | draws per image | saving |")
    print("|---|---|" + "---|" * (len(radii) + 2))
    for n in args.budgets:
        hits = {"fixed": np.zeros(len(radii)), "adaptive": np.zeros(len(radii))}
        draws = {"fixed": 0, "adaptive": 0}
        for rate, good in zip(rates, correct):
            for _ in range(args.repeats):
                def source(k: int, rate: float = rate) -> np.ndarray:
                    hit = rng.binomial(k, rate)
                    return np.array([hit, k - hit])

                certs = {"fixed": decide(source(args.n0), source(n), args.alpha, sigma),
                         "adaptive": certify_sequential(source, sigma, args.n0, n, args.alpha,
                                                        default_tolerance(sigma), list(radii))}
                for name, cert in certs.items():
                    draws[name] += args.n0 + cert.n
                    if good and cert.prediction == 0:  # class 0 stands for the label on correct images
                        hits[name] += cert.radius >= radii
        runs = len(rates) * args.repeats
        for name in ("fixed", "adaptive"):
            accuracy = " | ".join(f"{h / runs:.3f}" for h in hits[name])
            print(f"| {n} | {name} | {accuracy} | {draws[name] / runs:.0f} | "
                  f"{draws['fixed'] / draws[name]:.2f}x |")


if __name__ == "__main__":
    main()

"""Adaptive vs fixed-budget CERTIFY on the same images: certified accuracy and draws per image.

    python benchmarks/adaptive_certify.py [--preset fashion-mnist] [--sigmas 0.25 0.5] [--max 200] [--n 1000]

Both runs go through `cadis certify` into resumable TSVs under --work, so an interrupted
benchmark continues. Prints certified accuracy at each radius for both, the mean draws per image
(n0 + estimation draws), their ratio, and the floor: the draws that any sound procedure needs on an
image whose draws all agree to certify the largest radius of interest it can reach within the budget.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cadis.analysis.tables import DEFAULT_RADII, certified_accuracy, read_results  # noqa: E402
from cadis.cli import main as cadis  # noqa: E402


def floor_draws(sigma: float, n: int, alpha: float, radii) -> int:
    """Fewest draws, all for c_A, whose bound at level α (no multiplicity cost) certifies the largest
    radius of interest that n all-agreeing draws certify."""
    best = sigma * norm.ppf(alpha ** (1 / n))
    reachable = [r for r in radii if 0 < r <= best]
    if not reachable:
        return 1
    return math.ceil(math.log(alpha) / math.log(norm.cdf(max(reachable) / sigma)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion-mnist")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--max", type=int, default=200, help="the first K test images")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--work", default="runs/bench/adaptive", help="where the TSVs go (resumable)")
    args = p.parse_args()
    radii = list(DEFAULT_RADII)
    common = ["certify", "--preset", args.preset, "--max", str(args.max), "--n0", str(args.n0), "--n", str(args.n),
              "--alpha", str(args.alpha), "--batch-size", str(args.batch_size), "--precision", args.precision,
              *(["--compile"] if args.compile else [])]
    rows = []
    for sigma in args.sigmas:
        stem = Path(args.work) / f"{args.preset}_s{sigma}_n{args.n}_{args.precision}"
        fixed, adaptive = Path(f"{stem}_fixed.tsv"), Path(f"{stem}_adaptive.tsv")
        cadis([*common, "--sigma", str(sigma), "--out", str(fixed)])
        cadis([*common, "--sigma", str(sigma), "--out", str(adaptive), "--adaptive",
               "--radii", ",".join(map(str, radii))])
        f, a = read_results(fixed), read_results(adaptive)
        draws_f, draws_a = args.n0 + f["n"].mean(), args.n0 + a["n"].mean()
        rows.append((sigma, certified_accuracy(f, radii), certified_accuracy(a, radii), draws_f, draws_a,
                     args.n0 + floor_draws(sigma, args.n, args.alpha, radii), len(f), a.attrs["config"]["adaptive"]))
    print(f"preset {args.preset}, first {args.max} test images, n0={args.n0}, N={args.n}, alpha={args.alpha}, "
          f"precision {args.precision}{' compiled' if args.compile else ''}")
    print("| sigma | run | " + " | ".join(f"r={r}" for r in radii) + " | mean draws/image | saving |")
    print("|---|---|" + "---|" * len(radii) + "---|---|")
    for sigma, acc_f, acc_a, draws_f, draws_a, floor, count, adaptive in rows:
        print(f"| {sigma} | fixed N | " + " | ".join(f"{v:.3f}" for v in acc_f) + f" | {draws_f:.0f} | 1.00x |")
        print(f"| {sigma} | adaptive | " + " | ".join(f"{v:.3f}" for v in acc_a)
              + f" | {draws_a:.0f} | {draws_f / draws_a:.2f}x |")
        worst = max(abs(acc_a - acc_f)) * 100
        print(f"|  | largest gap {worst:.1f} points over {count} images; floor for all-agreeing draws "
              f"{floor} draws (at most {draws_f / floor:.2f}x); adaptive settings {adaptive} |" + " |" * len(radii))


if __name__ == "__main__":
    main()

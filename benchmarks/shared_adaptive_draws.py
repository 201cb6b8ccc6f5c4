"""What adaptive CERTIFY on shared draws costs, in draws denoised, against fixed N and separate adaptive runs.

    python benchmarks/shared_adaptive_draws.py experiments/results/n10000-adaptive

Reads the benchmark's adaptive runs (`results --adaptive --n N`; the runs of each σ certified together on shared
draws) and counts draws, not seconds, so the ratios hold on any machine. Per σ, on the images every run holds:

- fixed N: every image denoises n0 + N draws once for all classifiers (`certify_classifiers`);
- separate adaptive runs: each classifier denoises its own n0 + n_k draws;
- shared adaptive: the denoiser runs n0 + max_k n_k times (the classifier that stops last).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cadis.analysis.tables import merge_results  # noqa: E402


def draws_table(folder: Path) -> pd.DataFrame:
    rows = {}
    results = merge_results(sorted(folder.glob("*_s*.tsv")))
    for sigma in sorted({df.attrs["config"]["sigma"] for df in results.values()}):
        runs = {label: df.set_index("idx")["n"] for label, df in results.items()
                if df.attrs["config"]["sigma"] == sigma}
        config = next(df for df in results.values() if df.attrs["config"]["sigma"] == sigma).attrs["config"]
        draws = pd.DataFrame(runs).dropna()  # the images every run holds
        n0, n = config["n0"], config["n"]
        fixed = n0 + n
        separate = (n0 + draws).sum(axis=1).mean()
        shared = (n0 + draws.max(axis=1)).mean()
        rows[f"σ={sigma:g}"] = {"images": len(draws), "classifiers": draws.shape[1], "N": n,
                                "mean draws per classifier": draws.mean().mean(), "fixed N": fixed,
                                "separate adaptive (sum)": separate, "shared adaptive": shared,
                                "saving vs fixed N": fixed / shared,
                                "saving vs separate adaptive": separate / shared}
    return pd.DataFrame.from_dict(rows, orient="index")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, nargs="?", default=Path("experiments/results/n10000-adaptive"))
    args = p.parse_args()
    if not any(args.folder.glob("*_s*.tsv")):
        sys.exit(f"No result files in {args.folder}; run `python -m experiments results --stage certify --adaptive "
                 "--n 10000` first.")
    print(draws_table(args.folder).to_markdown(floatfmt=["", ".0f", ".0f", ".0f", ".0f", ".0f", ".0f", ".0f",
                                                          ".2f", ".2f"]))


if __name__ == "__main__":
    main()

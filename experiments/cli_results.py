"""`python -m experiments results`: the embedded benchmark (fine-tune, certify, tabulate)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cadis.errors import CadisError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cadis.cli import checks

    p = sub.add_parser("results", help="the embedded benchmark: fine-tune, certify and tabulate (resumable)")
    p.add_argument("--stage", default="all",
                   choices=["all", "finetune", "certify", "report", "diagnose", "hallucination"],
                   help="diagnose: the base classifier's selection and mask rates per class; hallucination: "
                        "hallucinated draws per class and confidence as their detector, per classifier and σ")
    p.add_argument("--steps", type=checks.integer(1), help="fine-tuning steps per run (default: the run's recipe)")
    p.add_argument("--sigmas", type=checks.real(0, lo_open=True, hint="e.g. 0.25 0.5"), nargs="+",
                   default=[0.25, 0.5, 1.0], help="noise levels, run in this order")
    p.add_argument("--methods", nargs="+", default=["none", "denoised-ce", "ft-cadis"], type=_run_name,
                   help="add the ablations sce-only (no L_MAdv) and ce-madv (no selection), or the variant "
                        "ft-cadis-detached (p̄ without gradient) and ft-cadis-detached-lam1 (λ=1), here; "
                        "METHOD.RECIPE trains with a named recipe (short, authors-lora, authors-full)")
    p.add_argument("--runs-dir", type=checks.folder, default="runs/finetune",
                   help="fine-tuning run directories (checkpoints); put it under the repository to keep a long run "
                        "across machines")
    p.add_argument("--max", type=checks.integer(1), default=500, help="certify the first K test images")
    p.add_argument("--n", type=checks.integer(1), default=1000, help="draws per certificate")
    p.add_argument("--adaptive", action="store_true",
                   help="certify with adaptive CERTIFY (radii of interest: the report's) into "
                        "experiments/results/n{N}-adaptive/; for --n 10000, where N=1000's radius cap cuts a radius")
    p.add_argument("--threads", type=checks.threads, default=0, help="torch CPU threads (0: torch's default)")
    from cadis.acceleration import PRECISIONS

    p.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                   help="autocast precision for certification (auto: as cadis certify's; a resumed file keeps its "
                        "own, so the shipped files resume at the bf16 they were started with)")
    p.add_argument("--compile", nargs="?", const="on", default="auto", choices=["auto", "on", "off"],
                   help="torch.compile for certification (auto: only where it pays back, as cadis certify's) and, "
                        "when on, fine-tuning; --compile alone means on")


def _run_name(run: str) -> str:
    from experiments.results import run_method

    try:
        run_method(run)
    except CadisError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return run


def run(args: argparse.Namespace) -> None:
    from experiments.results import run_all

    print(run_all(args.stage, args.steps, args.max, args.n, args.threads, args.precision, args.compile,
                  args.sigmas, args.methods, Path(args.runs_dir), args.adaptive))

"""`python -m experiments zoo ...`: train and document the embedded default's models."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cadis.cli import checks

    zoo = sub.add_parser("zoo", help="train and document the embedded default's models")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    for name, steps, bs, lr, wd, warm in [("train-denoiser", 10000, 64, 1e-3, 0.0, 200),
                                         ("train-classifier", 12000, 128, 2e-3, 0.05, 600)]:
        p = zsub.add_parser(name, help=f"resumable training ({name})")
        kind = name.split("-")[1]
        p.add_argument("--out", type=checks.folder, default=f"runs/zoo/{kind}",
                       help="checkpoints and loss log (resumes if present)")
        p.add_argument("--export", default=f"src/cadis/assets/fmnist-{'ddpm' if kind == 'denoiser' else 'vit'}")
        p.add_argument("--steps", type=checks.integer(1), default=steps)
        p.add_argument("--batch-size", type=checks.integer(1), default=bs)
        p.add_argument("--lr", type=checks.real(0, lo_open=True, hint="e.g. 1e-3"), default=lr)
        p.add_argument("--weight-decay", type=checks.real(0), default=wd)
        p.add_argument("--warmup", type=checks.integer(0), default=warm)
        p.add_argument("--seed", type=checks.seed, default=0)
        p.add_argument("--threads", type=checks.threads, default=0, help="torch CPU threads (0: torch's default)")
        p.add_argument("--checkpoint-minutes", type=checks.real(0, lo_open=True), default=3.0)
        p.add_argument("--stop-at", type=checks.integer(1), default=None,
                       help="checkpoint and stop at this step (re-run to go on)")
        p.add_argument("--init-from", help="an exported model directory to start from (a second training stage)")
        if kind == "denoiser":
            p.add_argument("--beta-schedule", default="linear", choices=["linear", "squaredcos_cap_v2"])
    card = zsub.add_parser("card", help="measure the embedded models and write src/cadis/assets/README.md")
    card.add_argument("--denoiser", default="src/cadis/assets/fmnist-ddpm")
    card.add_argument("--classifier", default="src/cadis/assets/fmnist-vit")
    card.add_argument("--out", type=checks.folder, default="src/cadis/assets",
                      help="where README.md, card.json and images go")
    card.add_argument("--seed", type=checks.seed, default=0)
    card.add_argument("--limit", type=checks.integer(1), default=None, help="measure on the first K test images only")
    card.add_argument("--threads", type=checks.threads, default=0)


def run(args: argparse.Namespace) -> None:
    import torch

    from experiments.zoo.training import ClassifierTrainConfig, DenoiserTrainConfig, train_classifier, train_denoiser

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.zoo_command == "card":
        from experiments.zoo.card import write_card

        write_card(args.denoiser, args.classifier, args.out, args.seed, args.limit)
        print(f"wrote {args.out}/README.md")
        return
    kw = dict(out=args.out, export=args.export, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
              weight_decay=args.weight_decay, warmup=args.warmup, seed=args.seed,
              checkpoint_minutes=args.checkpoint_minutes, init_from=args.init_from)
    if args.zoo_command == "train-denoiser":
        path = train_denoiser(DenoiserTrainConfig(beta_schedule=args.beta_schedule, **kw), args.stop_at)
    else:
        path = train_classifier(ClassifierTrainConfig(**kw), args.stop_at)
    print(f"saved {path}" if path else f"stopped at step {args.stop_at}; re-run without --stop-at to continue")

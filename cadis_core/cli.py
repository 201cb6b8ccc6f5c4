"""`python -m cadis_core ...`: certify, analyze, fine-tune (FT-CADIS), and train the embedded default's models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import CadisError


def _zoo_parser(sub: argparse._SubParsersAction) -> None:
    zoo = sub.add_parser("zoo", help="train and document the embedded default's models")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    for name, steps, bs, lr, wd, warm in [("train-denoiser", 10000, 64, 1e-3, 0.0, 200),
                                         ("train-classifier", 12000, 128, 2e-3, 0.05, 600)]:
        p = zsub.add_parser(name, help=f"resumable training ({name})")
        kind = name.split("-")[1]
        p.add_argument("--out", default=f"runs/zoo/{kind}", help="checkpoints and loss log (resumes if present)")
        p.add_argument("--export", default=f"assets/models/fmnist-{'ddpm' if kind == 'denoiser' else 'vit'}")
        p.add_argument("--steps", type=int, default=steps)
        p.add_argument("--batch-size", type=int, default=bs)
        p.add_argument("--lr", type=float, default=lr)
        p.add_argument("--weight-decay", type=float, default=wd)
        p.add_argument("--warmup", type=int, default=warm)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
        p.add_argument("--checkpoint-minutes", type=float, default=3.0)
        p.add_argument("--stop-at", type=int, default=None, help="checkpoint and stop at this step (re-run to go on)")
        p.add_argument("--init-from", help="an exported model directory to start from (a second training stage)")
        if kind == "denoiser":
            p.add_argument("--beta-schedule", default="linear", choices=["linear", "squaredcos_cap_v2"])
    card = zsub.add_parser("card", help="measure the embedded models and write assets/models/README.md")
    card.add_argument("--denoiser", default="assets/models/fmnist-ddpm")
    card.add_argument("--classifier", default="assets/models/fmnist-vit")
    card.add_argument("--out", default="assets/models", help="where README.md, card.json and images go")
    card.add_argument("--seed", type=int, default=0)
    card.add_argument("--limit", type=int, default=None, help="measure on the first K test images only")
    card.add_argument("--threads", type=int, default=0)


def _run_zoo(args: argparse.Namespace) -> None:
    import torch

    from .zoo.training import ClassifierTrainConfig, DenoiserTrainConfig, train_classifier, train_denoiser

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.zoo_command == "card":
        from .zoo.card import write_card

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



def _certify_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certify", help="certify a dataset with denoised smoothing (resumable TSV)")
    p.add_argument("--preset", help="a named bundle of dataset and models (fashion-mnist, cifar10)")
    p.add_argument("--denoiser", help="diffusers directory or hub id")
    p.add_argument("--classifier", help="timm name, local-dir:PATH, hf:ID or a directory")
    p.add_argument("--dataset", help="fashion-mnist, cifar10 or an ImageFolder directory")
    p.add_argument("--data-root", help="where the dataset lives (default: the usual places)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing (online)")
    p.add_argument("--split", default="test")
    p.add_argument("--sigma", type=float, help="noise level in [0,1] pixel units (default: the preset's)")
    p.add_argument("--n0", type=int, help="draws to choose the class (default: the preset's, else 100)")
    p.add_argument("--n", type=int,
                   help="draws to estimate p_A (default: the preset's, else 10000)")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    p.add_argument("--batch-size", help="draws per forward pass, or 'auto': the largest that fits in GPU memory")
    p.add_argument("--max", type=int, default=None, help="stop before this index")
    p.add_argument("--skip", type=int, default=1, help="certify every S-th image")
    p.add_argument("--shard", default="0/1", help="I/K: this process takes every K-th selected image from I")
    p.add_argument("--mode", default="one-shot", choices=["one-shot", "multistep"])
    p.add_argument("--steps", type=int, default=10, help="reverse steps in multistep mode")
    p.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", help="name of this run in analyze's tables (default: the file name)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    _acceleration_args(p)
    p.add_argument("--adaptive", action="store_true",
                   help="stop sampling an image once the outcome is decided (sound at level alpha; docs/adaptive.md)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="adaptive, without --radii: stop when the radius is this close to the full budget's best "
                        "(default sigma/10)")
    p.add_argument("--radii", default="",
                   help="adaptive: comma-separated radii of interest; stop once none of them can still be crossed")
    p.add_argument("--out", required=True, help="result TSV (a sidecar .json gets the configuration)")
    p.add_argument("--fresh", action="store_true", help="overwrite an existing result file")


def _acceleration_args(p: argparse.ArgumentParser) -> None:
    from .acceleration import PRECISIONS

    p.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                   help="autocast precision of the base classifier (auto: bf16 on GPUs, fp32 on CPUs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser and classifier (cached)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")


def _acceleration(args: argparse.Namespace):
    from .acceleration import Acceleration, default_acceleration

    precision = default_acceleration(args.device).precision if args.precision == "auto" else args.precision
    return Acceleration(precision, args.channels_last, args.compile)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _run_certify(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .adaptive import AdaptiveSettings, default_tolerance
    from .data import load_dataset
    from .denoiser import DiffusionDenoiser
    from .loading import load_classifier
    from .presets import SEARCH_ROOTS, resolve_models
    from .runner import CertifyConfig, certify_dataset, check_selection, merge_shards, shard_path
    from .smoothing import DenoisedSmoothing, check_parameters

    preset = resolve_models(args.preset, args.denoiser, args.classifier, args.dataset)
    denoiser_spec, classifier_spec, dataset_name = preset.denoiser, preset.classifier, preset.dataset
    sigma = args.sigma if args.sigma is not None else (preset.sigma if preset else 0.25)
    n0 = args.n0 if args.n0 is not None else (preset.n0 if preset else 100)
    n = args.n if args.n is not None else (preset.n if preset else 10000)
    batch_size = _batch_size(args.batch_size, preset.batch_size if preset else 256)
    check_parameters(sigma=sigma, alpha=args.alpha, n0=n0, n=n)
    try:
        shard = tuple(int(v) for v in args.shard.split("/"))
        assert len(shard) == 2
    except (ValueError, AssertionError):
        raise CadisError(f"--shard must look like I/K, e.g. 0/4 (got {args.shard!r}).") from None
    from .distributed import barrier, launched, process_group

    rank, world, local_rank = launched()
    if world > 1:  # under torchrun each rank takes its shard; rank 0 merges at the end
        shard = (rank, world)
        args.shard = f"{shard[0]}/{shard[1]}"
        if args.device.startswith("cuda"):
            args.device = f"cuda:{local_rank}"
    dataset = load_dataset(dataset_name, args.split, args.data_root, args.download)
    check_selection(args.skip, shard)  # before loading models
    if not preset.custom:
        preset.check_available()
    try:
        radii = [float(r) for r in args.radii.split(",") if r.strip()]
    except ValueError:
        raise CadisError(f"--radii must be comma-separated numbers, e.g. 0.25,0.5 (got {args.radii!r}).") from None
    acceleration = _acceleration(args)
    denoiser = DiffusionDenoiser.from_pretrained(denoiser_spec, args.device)
    classifier = load_classifier(classifier_spec, args.device, SEARCH_ROOTS)
    kwargs = {"steps": args.steps, "sampler": args.sampler} if args.mode == "multistep" else {}
    smooth = DenoisedSmoothing(denoiser, classifier, sigma, batch_size or 1, args.mode, acceleration, **kwargs)
    if batch_size is None:
        batch_size = smooth.batch_size = _fit_batch_size(smooth, dataset[0][0].to(args.device))
    adaptive = None
    if args.adaptive:
        adaptive = AdaptiveSettings(default_tolerance(sigma) if args.tolerance is None else args.tolerance,
                                    tuple(radii))
    config = CertifyConfig(denoiser=str(denoiser_spec), classifier=str(classifier_spec), dataset=dataset_name,
                           split=args.split, sigma=sigma, n0=n0, n=n, alpha=args.alpha, seed=args.seed,
                           batch_size=batch_size, mode=args.mode, steps=args.steps, sampler=args.sampler,
                           acceleration=acceleration, adaptive=adaptive, skip=args.skip, max_index=args.max,
                           shard=shard, preset=args.preset, label=args.label, device=args.device)
    out = shard_path(Path(args.out), shard)
    certify_dataset(smooth, dataset, out, config, args.fresh)
    if world > 1:
        with process_group(cpu_only=True):  # only to wait for every shard before merging
            barrier()
            if shard[0] == 0:
                out = merge_shards(Path(args.out), world)
    print(f"wrote {out}")


def _batch_size(value: str | None, default: int) -> int | None:
    """--batch-size: a positive integer, the default when absent, or None for 'auto'."""
    if value is None:
        return default
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise CadisError(f"--batch-size must be a positive integer or 'auto' (got {value!r}).")
    return int(value)


def _fit_batch_size(smooth, x, start: int = 4096) -> int:
    """On a GPU, the largest power-of-two batch ≤ start that fits; CPUs are bound by compute, not memory."""
    import torch

    from .acceleration import largest_batch

    if x.device.type != "cuda":
        print("--batch-size auto: on the CPU memory is not the limit; using 256")
        return 256

    def trial(b: int) -> None:
        smooth.batch_size = b
        smooth.sample_counts(x, b, torch.Generator(x.device).manual_seed(0))

    b = largest_batch(trial, start)
    print(f"--batch-size auto: {b} draws per forward pass fit in GPU memory")
    return b


def _analyze_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="certified accuracy, ACR and abstain rate from result TSVs")
    p.add_argument("files", nargs="+", help="result TSVs (shards of one run are merged)")
    p.add_argument("--radii", default="0,0.25,0.5,0.75,1.0", help="comma-separated radii")
    p.add_argument("--envelope", action="store_true", help="add the best-σ envelope over the files")
    p.add_argument("--csv", help="also write the table as CSV")
    p.add_argument("--markdown", help="also write the table as markdown")
    p.add_argument("--html", help="write a plotly figure of certified accuracy vs radius")
    p.add_argument("--paired", action="store_true",
                   help="also compare the first run with each other run image by image (exact McNemar test)")


def _run_analyze(args: argparse.Namespace) -> None:
    from .analysis import (
        certified_accuracy_figure,
        merge_results,
        paired_comparison,
        summary_markdown,
        summary_table,
    )

    try:
        radii = [float(r) for r in args.radii.split(",")]
    except ValueError:
        raise CadisError(f"--radii must be comma-separated numbers (got {args.radii!r}).") from None
    results = merge_results(args.files)
    table = summary_table(results, radii, args.envelope)
    markdown = summary_markdown(table)
    print(markdown)
    if args.paired:
        if len(results) < 2:
            raise CadisError("--paired needs at least two runs.")
        first, *others = results
        for other in others:
            paired = paired_comparison(results[first], results[other], radii)
            print(f"\n{first} vs {other}: images only the first / only the second certifies at r\n")
            print(paired.to_markdown(floatfmt=["", ".0f", ".0f", ".0f", "+.3f", ".2g"]))
    if args.csv:
        table.to_csv(args.csv)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown + "\n")
    if args.html:
        certified_accuracy_figure(results, envelope=args.envelope).write_html(args.html, include_plotlyjs=True)
        print(f"figure: {args.html}")


def _results_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="the embedded benchmark: fine-tune, certify and tabulate (resumable)")
    p.add_argument("--stage", default="all", choices=["all", "finetune", "certify", "report", "diagnose"],
                   help="diagnose: the base classifier's selection and mask rates per class")
    p.add_argument("--steps", type=int, help="fine-tuning steps per run (default: the run's recipe)")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="noise levels, run in this order")
    p.add_argument("--methods", nargs="+", default=["none", "denoised-ce", "ft-cadis"], type=_run_name,
                   help="add the ablations sce-only (no L_MAdv) and ce-madv (no selection), or the variant "
                        "ft-cadis-detached (p̄ without gradient) and ft-cadis-detached-lam1 (λ=1), here; "
                        "METHOD.RECIPE trains with a named recipe (short, authors-lora, authors-full)")
    p.add_argument("--runs-dir", default="runs/finetune",
                   help="fine-tuning run directories (checkpoints); put it under the repository to keep a long run "
                        "across machines")
    p.add_argument("--max", type=int, default=500, help="certify the first K test images")
    p.add_argument("--n", type=int, default=1000, help="draws per certificate")
    p.add_argument("--threads", type=int, default=0)
    from .acceleration import PRECISIONS

    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="autocast precision for certification")
    p.add_argument("--compile", action="store_true", help="torch.compile for fine-tuning and certification")


def _run_name(run: str) -> str:
    from .results import run_method

    try:
        run_method(run)
    except CadisError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return run


def _run_results(args: argparse.Namespace) -> None:
    from .results import run_all

    print(run_all(args.stage, args.steps, args.max, args.n, args.threads, args.precision, args.compile,
                  args.sigmas, args.methods, Path(args.runs_dir)))


def _finetune_parser(sub: argparse._SubParsersAction) -> None:
    from .acceleration import PRECISIONS
    from .finetune import FinetuneConfig
    from .loading import SAVE_FORMATS
    from .objective import METHODS

    d = FinetuneConfig()
    p = sub.add_parser("finetune", help="FT-CADIS fine-tuning of the classifier on denoised images",
                       description="Fine-tune the classifier of a denoised-smoothing pair (FT-CADIS). "
                       "Resumes from --out if it holds the same run. Several processes: "
                       "torchrun --nproc-per-node N -m cadis_core finetune ...")
    p.add_argument("--preset", help="fashion-mnist (default when no --denoiser/--classifier) or cifar10")
    p.add_argument("--denoiser", help="diffusers directory or hub id (with --classifier)")
    p.add_argument("--classifier", help="classifier spec (see load_classifier)")
    p.add_argument("--dataset", default="fashion-mnist", help="training/test data with --denoiser/--classifier")
    p.add_argument("--method", default=d.method, choices=METHODS)
    p.add_argument("--sigma", type=float, help="noise level (default: the preset's, else 0.25)")
    p.add_argument("--num-draws", type=int, default=d.num_draws, help="M denoised draws per image")
    p.add_argument("--lam", type=float, default=d.lam, help="λ, weight of the masked adversarial loss")
    p.add_argument("--eps", type=float, default=d.eps, help="ℓ2 radius of the search in denoised space")
    p.add_argument("--adv-steps", type=int, default=d.adv_steps, help="T steps of the search")
    p.add_argument("--no-warm-start", action="store_true", help="images with no correct draw add no loss")
    p.add_argument("--detach-target", action="store_true",
                   help="stop the gradient through the consistency target p̄ (ablation; the authors keep it)")
    p.add_argument("--full", action="store_true", help="fine-tune every parameter instead of LoRA")
    p.add_argument("--lora-r", type=int, default=d.lora_r)
    p.add_argument("--lora-alpha", type=float, default=d.lora_alpha)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (split across processes)")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr:g} with LoRA, 1e-4 with --full)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--min-lr", type=float, default=d.min_lr, help="learning rate at the end of the cosine decay")
    p.add_argument("--layer-decay", type=float, help="layer-wise lr decay factor, e.g. 0.75 (default off)")
    p.add_argument("--subset", type=int, help="train on this many images (seeded random subset)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", help="run directory (default runs/finetune/<preset>-<method>-s<sigma>)")
    p.add_argument("--save-as", choices=SAVE_FORMATS, help="adapter (default with LoRA) or merged")
    p.add_argument("--eval-every", type=int, help="steps between test evaluations (default: every epoch)")
    p.add_argument("--eval-size", type=int, default=d.eval_size)
    p.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes)
    p.add_argument("--precision", default=d.precision, choices=list(PRECISIONS),
                   help="autocast precision of the loss (bf16 pays on GPUs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the classifier")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available); torchrun picks per process")


def _run_finetune(args: argparse.Namespace) -> None:
    """Load the models and data the arguments name, fine-tune, and print where the model went."""
    import torch

    from .data import load_dataset
    from .distributed import launched
    from .finetune import FinetuneConfig, finetune
    from .presets import resolve_models

    if args.threads:
        torch.set_num_threads(args.threads)
    rank, _, local_rank = launched()
    device = args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    named = bool(args.denoiser or args.classifier)
    if named and (args.preset or not (args.denoiser and args.classifier)):
        raise CadisError("Give either --preset or both --denoiser and --classifier.")
    preset = resolve_models(None if named else args.preset or "fashion-mnist", args.denoiser, args.classifier,
                            args.dataset if named else None)
    denoiser, classifier = preset.load_models(device)
    dataset, name, sigma = preset.dataset, preset.name, preset.sigma
    sigma = args.sigma if args.sigma is not None else sigma
    lora = not args.full
    values = dict(
        out=args.out or f"runs/finetune/{name}-{args.method}-s{sigma:g}", method=args.method, sigma=sigma,
        num_draws=args.num_draws, lam=args.lam, eps=args.eps, adv_steps=args.adv_steps,
        warm_start=not args.no_warm_start, detach_target=args.detach_target, lora=lora, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr or (FinetuneConfig.lr if lora else 1e-4),
        weight_decay=args.weight_decay, warmup=args.warmup, min_lr=args.min_lr, layer_decay=args.layer_decay,
        subset=args.subset,
        seed=args.seed, save_as=args.save_as or ("adapter" if lora else "merged"),
        checkpoint_minutes=args.checkpoint_minutes, eval_every=args.eval_every, eval_size=args.eval_size,
        precision=args.precision, compile=args.compile)
    config = FinetuneConfig(**values)
    config.validate()
    train, test = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    result = finetune(config, denoiser, classifier, train, test)
    if rank == 0:  # only the main process reports
        print(f"saved {result.path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cadis_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _certify_parser(sub)
    _analyze_parser(sub)
    _results_parser(sub)
    _zoo_parser(sub)
    _finetune_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--"]:  # `torchrun ... -m cadis_core -- certify ...` keeps torchrun's parser off our flags
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    try:
        {"certify": _run_certify, "analyze": _run_analyze, "zoo": _run_zoo, "finetune": _run_finetune,
         "results": _run_results}[args.command](args)
    except CadisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0

"""`cadis finetune`: FT-CADIS fine-tuning; the loop is `cadis.training.finetune`."""

from __future__ import annotations

import argparse

from cadis.cli import checks
from cadis.errors import CadisError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cadis.settings import add_flags
    from cadis.training.finetune import FinetuneConfig

    p = sub.add_parser("finetune", help="FT-CADIS fine-tuning of the classifier on denoised images",
                       description="Fine-tune the classifier of a denoised-smoothing pair (FT-CADIS). "
                       "Resumes from --out if it holds the same run (--fresh starts it over). Images of another "
                       "size or channel count (an ImageFolder) are brought to the denoiser's input, and config.json "
                       "records how. Several processes: torchrun --nproc-per-node N -m cadis finetune ...")
    p.add_argument("--preset", help="fashion-mnist (default when no --denoiser/--classifier) or cifar10")
    p.add_argument("--denoiser", help="diffusers directory or hub id (with --classifier)")
    p.add_argument("--classifier", help="classifier spec (see load_classifier)")
    p.add_argument("--dataset", help="training/test data with --denoiser/--classifier (default fashion-mnist); "
                   "a preset trains on its own")
    add_flags(p, FinetuneConfig)  # the run's settings, declared once in FinetuneConfig
    p.add_argument("--fresh", action="store_true",
                   help="start over: delete the run already in --out (checkpoint, metrics, model) instead of resuming")
    p.add_argument("--threads", type=checks.threads, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available); torchrun picks per process")


def run(args: argparse.Namespace) -> None:
    """Load the models and data the arguments name, fine-tune, and print where the model went."""
    import torch

    from cadis.data import load_dataset
    from cadis.distributed import launched
    from cadis.models.presets import resolve_models
    from cadis.settings import from_flags
    from cadis.training.finetune import FinetuneConfig, finetune
    from cadis.training.run_dir import check_writable

    if args.threads:
        torch.set_num_threads(args.threads)
    rank, _, local_rank = launched()
    device = args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise CadisError(f"--device {device!r} is not a device; use cpu or cuda (cuda:N).") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise CadisError(f"--device {device} asks for a GPU, but torch sees none here; use --device cpu.")
    named = bool(args.denoiser or args.classifier)
    if named and (args.preset or not (args.denoiser and args.classifier)):
        raise CadisError("Give either --preset or both --denoiser and --classifier.")
    preset = resolve_models(None if named else args.preset or "fashion-mnist", args.denoiser, args.classifier,
                            (args.dataset or "fashion-mnist") if named else None)
    if not named and args.dataset is not None and args.dataset != preset.dataset:
        raise CadisError(f"--dataset {args.dataset[:80]!r} needs --denoiser and --classifier: the preset "
                         f"{preset.name!r} trains on {preset.dataset!r}.")
    dataset, name = preset.dataset, preset.name
    sigma = args.sigma if args.sigma is not None else preset.sigma
    lora = args.lora
    config = from_flags(FinetuneConfig, args, out=f"runs/finetune/{name}-{args.method}-s{sigma:g}", sigma=sigma,
                        lr=FinetuneConfig.lr if lora else 1e-4, save_as="adapter" if lora else "merged")
    config.validate()  # before any model or data is loaded, and before anything is written
    check_writable(config.out)
    denoiser, classifier = preset.load_models(device)
    shape = denoiser.image_shape  # the user's images are brought to it (sizes, grey <-> RGB)
    train, test = load_dataset(dataset, "train", shape=shape), load_dataset(dataset, "test", shape=shape)
    if train.transform_note and rank == 0:
        print(f"images: {train.transform_note}")
    result = finetune(config, denoiser, classifier, train, test, fresh=args.fresh)
    if rank == 0:  # only the main process reports
        print(f"saved {result.path}")

"""`cadis finetune`: FT-CADIS fine-tuning; the loop is `cadis.training.finetune`."""

from __future__ import annotations

import argparse

from cadis.errors import CadisError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cadis.acceleration import PRECISIONS
    from cadis.models.loading import SAVE_FORMATS
    from cadis.training.finetune import FinetuneConfig
    from cadis.training.objective import METHODS

    d = FinetuneConfig()
    p = sub.add_parser("finetune", help="FT-CADIS fine-tuning of the classifier on denoised images",
                       description="Fine-tune the classifier of a denoised-smoothing pair (FT-CADIS). "
                       "Resumes from --out if it holds the same run (--fresh starts it over). Images of another "
                       "size or channel count (an ImageFolder) are brought to the denoiser's input, and config.json "
                       "records how. Several processes: torchrun --nproc-per-node N -m cadis finetune ...")
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
    p.add_argument("--madv-class-balance", action="store_true",
                   help="ours, not in the paper: weight L_MAdv so every class gets its share of the batch, "
                        "as if all classes had the batch's mask rate")
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
    p.add_argument("--fresh", action="store_true",
                   help="start over: delete the run already in --out (checkpoint, metrics, model) instead of resuming")
    p.add_argument("--save-as", choices=SAVE_FORMATS, help="adapter (default with LoRA) or merged")
    p.add_argument("--eval-every", type=int, help="steps between test evaluations (default: every epoch)")
    p.add_argument("--eval-size", type=int, default=d.eval_size)
    p.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes)
    p.add_argument("--precision", default=d.precision, choices=list(PRECISIONS),
                   help="autocast precision of the loss (bf16 pays on GPUs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the classifier")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available); torchrun picks per process")


def run(args: argparse.Namespace) -> None:
    """Load the models and data the arguments name, fine-tune, and print where the model went."""
    import torch

    from cadis.data import load_dataset
    from cadis.distributed import launched
    from cadis.models.presets import resolve_models
    from cadis.training.finetune import FinetuneConfig, finetune
    from cadis.training.run_dir import check_writable

    if args.threads < 0:
        raise CadisError(f"--threads must be >= 0 (got {args.threads}); 0 keeps torch's default.")
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
                            args.dataset if named else None)
    dataset, name, sigma = preset.dataset, preset.name, preset.sigma
    sigma = args.sigma if args.sigma is not None else sigma
    lora = not args.full
    values = dict(
        out=args.out or f"runs/finetune/{name}-{args.method}-s{sigma:g}", method=args.method, sigma=sigma,
        num_draws=args.num_draws, lam=args.lam, eps=args.eps, adv_steps=args.adv_steps,
        warm_start=not args.no_warm_start, detach_target=args.detach_target,
        madv_class_balance=args.madv_class_balance, lora=lora, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else (FinetuneConfig.lr if lora else 1e-4),
        weight_decay=args.weight_decay, warmup=args.warmup, min_lr=args.min_lr, layer_decay=args.layer_decay,
        subset=args.subset,
        seed=args.seed, save_as=args.save_as or ("adapter" if lora else "merged"),
        checkpoint_minutes=args.checkpoint_minutes, eval_every=args.eval_every, eval_size=args.eval_size,
        precision=args.precision, compile=args.compile)
    config = FinetuneConfig(**values)
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

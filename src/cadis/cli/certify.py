"""`cadis certify`: certify a dataset with denoised smoothing into a resumable TSV."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cadis.cli import checks

    p = sub.add_parser("certify", help="certify a dataset with denoised smoothing (resumable TSV)")
    p.add_argument("--preset", help="a named bundle of dataset and models (fashion-mnist, cifar10)")
    p.add_argument("--denoiser", help="diffusers directory or hub id")
    p.add_argument("--classifier", help="timm name, local-dir:PATH, hf:ID or a directory")
    p.add_argument("--dataset", help="fashion-mnist, cifar10 or an ImageFolder directory")
    p.add_argument("--data-root", help="where the dataset lives (default: the usual places)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing (online)")
    p.add_argument("--split", default="test")
    p.add_argument("--sigma", type=checks.run_setting("sigma", check=False),
                   help="noise level in [0,1] pixel units (default: the preset's)")
    p.add_argument("--n0", type=checks.run_setting("n0", check=False),
                   help="draws to choose the class (default: the preset's, else 100)")
    p.add_argument("--n", type=checks.run_setting("n", check=False),
                   help="draws to estimate p_A (default: the preset's, else 10000; at most 10^7)")
    p.add_argument("--alpha", type=checks.run_setting("alpha", check=False), default=0.001, help="failure probability")
    p.add_argument("--batch-size", type=checks.batch_size,
                   help="draws per forward pass, or 'auto': the largest that fits in GPU memory")
    p.add_argument("--max", type=checks.integer(1), default=None, help="stop before this index")
    p.add_argument("--skip", type=checks.integer(1), default=1, help="certify every S-th image")
    p.add_argument("--shard", type=checks.shard, default=(0, 1),
                   help="I/K: this process takes every K-th selected image from I")
    p.add_argument("--mode", default="one-shot", choices=["one-shot", "multistep"])
    p.add_argument("--steps", type=checks.integer(1), default=10, help="reverse steps in multistep mode")
    p.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim"])
    p.add_argument("--seed", type=checks.seed, default=0)
    p.add_argument("--label", help="name of this run in analyze's tables (default: the file name)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    _acceleration_args(p)
    p.add_argument("--adaptive", action="store_true",
                   help="stop sampling an image once more draws are projected not to change its row (the "
                        "certificate stays sound at level alpha; docs/adaptive.md)")
    p.add_argument("--tolerance", type=checks.real(0, hint="e.g. 0.025 at sigma=0.25"), default=None,
                   help="adaptive, without --radii: stop when the radius is this close to the full budget's best "
                        "(default sigma/10)")
    p.add_argument("--radii", type=checks.reals(0, allow_empty=True, hint="e.g. 0.25,0.5"), default=(),
                   help="adaptive: comma-separated radii of interest; stop once none of them can still be crossed")
    p.add_argument("--out", type=checks.results_file, required=True,
                   help="result TSV (FILE.json gets the configuration); locked while a run writes it")
    p.add_argument("--fresh", action="store_true", help="overwrite an existing result file")


def _acceleration_args(p: argparse.ArgumentParser) -> None:
    from cadis.acceleration import PRECISIONS

    p.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                   help="autocast precision of the models (auto: bf16 on GPUs; on a CPU, fp32 or bf16, whichever "
                   "this machine runs these models faster, timed once and cached in ~/.cache/cadis; a resumed run "
                   "keeps the precision its file was started with)")
    p.add_argument("--compile", nargs="?", const="on", default="auto", choices=["auto", "on", "off"],
                   help="torch.compile the denoiser and classifier (graphs cached per machine kind). auto: only when "
                   "it pays back within the job (the compile cost and saving measured once per machine and model, "
                   "cached in ~/.cache/cadis); a resumed run keeps its file's choice. --compile alone means on")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")


def _acceleration(args: argparse.Namespace):
    from cadis.acceleration import Acceleration, default_acceleration

    precision = default_acceleration(args.device).precision if args.precision == "auto" else args.precision
    return Acceleration(precision, args.channels_last, args.compile == "on")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(args: argparse.Namespace) -> None:
    from dataclasses import replace
    from pathlib import Path

    import torch

    from cadis.certification.adaptive import AdaptiveSettings, default_tolerance
    from cadis.certification.engine_choice import choose_engine, describe_engine, started_acceleration
    from cadis.certification.output import rows_written
    from cadis.certification.runner import CertifyConfig, certify_dataset, check_output, merge_shards, shard_path
    from cadis.certification.smoothing import DenoisedSmoothing
    from cadis.cli import checks
    from cadis.data import load_dataset
    from cadis.distributed import barrier, launched, process_group
    from cadis.models.denoiser import DiffusionDenoiser
    from cadis.models.loading import load_classifier
    from cadis.models.presets import SEARCH_ROOTS, resolve_models

    # Everything the flags and the preset decide is checked before any data, model or file is touched.
    checks.device(args.device)
    preset = resolve_models(args.preset, args.denoiser, args.classifier, args.dataset)
    denoiser_spec, classifier_spec, dataset_name = preset.denoiser, preset.classifier, preset.dataset
    sigma = args.sigma if args.sigma is not None else (preset.sigma if preset else 0.25)
    n0 = args.n0 if args.n0 is not None else (preset.n0 if preset else 100)
    n = args.n if args.n is not None else (preset.n if preset else 10000)
    batch_size = args.batch_size if args.batch_size is not None else (preset.batch_size if preset else 256)
    batch_size = None if batch_size == "auto" else batch_size  # None: fit to GPU memory once the models load
    shard = args.shard
    rank, world, local_rank = launched()
    if world > 1:  # under torchrun each rank takes its shard; rank 0 merges at the end
        shard = (rank, world)
        if args.device.startswith("cuda"):
            args.device = f"cuda:{local_rank}"
    acceleration = _acceleration(args)
    # CertifyConfig checks σ, α, N0, N, the selection and the device (the one place they are checked).
    config = CertifyConfig(denoiser=str(denoiser_spec), classifier=str(classifier_spec), dataset=dataset_name,
                           split=args.split, sigma=sigma, n0=n0, n=n, alpha=args.alpha, seed=args.seed,
                           batch_size=batch_size or 1, mode=args.mode, steps=args.steps, sampler=args.sampler,
                           acceleration=acceleration, skip=args.skip, max_index=args.max, shard=shard,
                           preset=args.preset, label=args.label, device=args.device)
    if args.adaptive:
        tolerance = default_tolerance(sigma) if args.tolerance is None else args.tolerance
        config = replace(config, adaptive=AdaptiveSettings(tolerance, tuple(args.radii)))
    out = shard_path(Path(args.out), shard)
    check_output(out)
    dataset = load_dataset(dataset_name, args.split, args.data_root, args.download)
    if not preset.custom:
        preset.check_available()
    denoiser = DiffusionDenoiser.from_pretrained(denoiser_spec, args.device)
    classifier = load_classifier(classifier_spec, args.device, SEARCH_ROOTS)
    kwargs = {"steps": args.steps, "sampler": args.sampler} if args.mode == "multistep" else {}
    smooth = DenoisedSmoothing(denoiser, classifier, sigma, config.batch_size, args.mode, acceleration, **kwargs)
    if batch_size is None:
        x = torch.zeros(smooth.denoiser.image_shape, device=args.device)  # a dataset's images are fitted later
        config = replace(config, batch_size=_fit_batch_size(smooth, x))
        smooth.batch_size = config.batch_size
    if "auto" in (args.precision, args.compile):
        def make(acc):
            return DenoisedSmoothing(denoiser, classifier, sigma, config.batch_size, args.mode, acc, **kwargs)

        started = None if args.fresh else started_acceleration(out)
        left = len(config.indices(len(dataset))) - (0 if args.fresh else rows_written(out))  # --fresh redoes all
        smooth, config = choose_engine(smooth, make, config, started, left, args.precision == "auto",
                                       args.compile == "auto")
    print(describe_engine(config), flush=True)
    certify_dataset(smooth, dataset, out, config, args.fresh)
    if world > 1:
        with process_group(cpu_only=True):  # only to wait for every shard before merging
            barrier()
            if shard[0] == 0:
                out = merge_shards(Path(args.out), world)
    print(f"wrote {out}")


def _fit_batch_size(smooth, x, start: int = 4096) -> int:
    """On a GPU, the largest power-of-two batch ≤ start that fits; CPUs are bound by compute, not memory."""
    import torch

    from cadis.acceleration import largest_batch

    if x.device.type != "cuda":
        print("--batch-size auto: on the CPU memory is not the limit; using 256")
        return 256

    def trial(b: int) -> None:
        smooth.batch_size = b
        smooth.sample_counts(x, b, torch.Generator(x.device).manual_seed(0))

    b = largest_batch(trial, start)
    print(f"--batch-size auto: {b} draws per forward pass fit in GPU memory")
    return b

"""Resumable FT-CADIS fine-tuning of an off-the-shelf classifier behind a frozen denoiser.

Per step: take batch `step` of a seeded, per-epoch data order, draw its noise from a generator seeded
by (seed, step), compute the objective of `cadis_core.objective`, and take an AdamW step (warmup +
cosine learning rate, gradient clipping). An interrupted run resumes from its last checkpoint and
ends with the same weights as an uninterrupted one.

Under `torchrun` (WORLD_SIZE > 1) every process computes the loss of its contiguous share of each
batch and DistributedDataParallel averages the gradients, so the update equals the one-process
update on the whole batch. Rank 0 writes the files. For example, on 2 GPUs (or 2 CPU processes):

    torchrun --nproc-per-node 2 -m cadis_core finetune --preset fashion-mnist --batch-size 64
"""

from __future__ import annotations

import argparse
import copy
import csv
import inspect
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .acceleration import PRECISIONS, Acceleration
from .checkpoint import load_checkpoint, save_checkpoint, weights_digest
from .classifier import ImageClassifier
from .data import ImageDataset
from .errors import CadisError
from .loading import SAVE_FORMATS, save_classifier
from .lora import apply_lora, base_model, enable_full_finetuning, trainable_parameters
from .objective import METHODS, FTCadisLoss, check_method, draw_noise
from .presets import PROJECT_ROOT, resolve_models
from .zoo.training import batch_indices, warmup_cosine

STEP_FIELDS = ["loss", "loss_sce", "loss_madv", "selection_rate", "mask_rate", "acc_denoised", "warm_start_rate"]
CSV_FIELDS = ["kind", "step", *STEP_FIELDS, "lr", "images_per_s", "test_acc_denoised", "elapsed_s"]
_NOT_COMPARED = {"out", "checkpoint_minutes", "compile"}  # may change between a run and its resumption


@dataclass
class FinetuneConfig:
    """Everything that determines a fine-tuning run (written to out/config.json)."""

    out: str = "runs/finetune"
    method: str = "ft-cadis"
    sigma: float = 0.25
    num_draws: int = 4  # M denoised draws per image
    lam: float = 4.0  # λ, weight of L_MAdv
    eps: float = 0.125  # ε, ℓ2 radius of the search in denoised space ([0, 1] pixel units)
    adv_steps: int = 4  # T steps of the search
    warm_start: bool = True
    detach_target: bool = False  # stop p̄'s gradient in L_MAdv (ablation; the authors keep it)
    lora: bool = True  # False: full fine-tuning
    lora_r: int = 4
    lora_alpha: float = 4.0
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 50
    min_lr: float = 0.0  # the cosine decays to this learning rate
    grad_clip: float | None = 1.0
    layer_decay: float | None = None  # layer-wise lr decay (timm's BEiT-style groups), None: off
    subset: int | None = None  # number of training images (a seeded random subset), None: all
    seed: int = 0
    save_as: str = "adapter"  # or "merged"
    checkpoint_minutes: float = 3.0
    eval_every: int | None = None  # steps between test evaluations; None: once per epoch; 0: at the end only
    eval_size: int = 500  # test images evaluated (one fixed noise draw each)
    precision: str = "fp32"  # or "bf16": autocast for the loss (a win on GPUs; slower on small CPU models)
    compile: bool = False  # torch.compile the classifier (about 1.2x on the embedded CPU model, after compiling)

    def validate(self) -> None:
        check_method(self.method)
        if self.method != "none":
            self.loss()  # checks sigma, num_draws, eps, ...
        if self.save_as not in SAVE_FORMATS:
            raise CadisError(f"Unknown save format {self.save_as!r}; use 'adapter' or 'merged'.")
        if self.save_as == "adapter" and not self.lora:
            raise CadisError("Full fine-tuning cannot be saved as a LoRA adapter; use --save-as merged.")
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise CadisError("steps must be >= 0, batch_size >= 1 and lr > 0.")
        Acceleration(self.precision)  # checks the name
        if self.subset is not None and self.subset < self.batch_size:
            raise CadisError(f"subset ({self.subset}) must hold at least one batch ({self.batch_size}).")

    def loss(self) -> FTCadisLoss:
        return FTCadisLoss(self.method, self.sigma, self.num_draws, self.lam, self.eps, self.adv_steps,
                           self.warm_start, self.detach_target)


# ---------------------------------------------------------------- pieces shared by the loop and its tests


def prepare_classifier(config: FinetuneConfig, classifier: ImageClassifier) -> ImageClassifier:
    """A trainable copy of `classifier`: LoRA (seeded init) or every parameter; the caller's stays as is."""
    clf = copy.deepcopy(classifier)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # LoRA's A factors are random
        if config.lora:
            apply_lora(clf, r=config.lora_r, alpha=config.lora_alpha)
        else:
            enable_full_finetuning(clf)
    return clf


def make_optimizer(config: FinetuneConfig, classifier: ImageClassifier) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on 1-d ones; optional layer-wise lr decay."""
    from timm.optim import create_optimizer_v2

    opt = create_optimizer_v2(base_model(classifier), "adamw", lr=config.lr, weight_decay=config.weight_decay,
                              layer_decay=config.layer_decay)
    for group in opt.param_groups:  # timm leaves lr_scale to its own schedulers; LambdaLR scales from here
        group["lr"] = config.lr * group.get("lr_scale", 1.0)
    return opt


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_share(t: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch (equal shares, so mean-of-means is the mean)."""
    rank, size = world()
    if t.shape[0] % size:
        raise CadisError(f"batch size {t.shape[0]} must be a multiple of the number of processes ({size}).")
    share = t.shape[0] // size
    return t[rank * share:(rank + 1) * share]


def wrap_distributed(classifier: ImageClassifier, device: torch.device) -> torch.nn.Module:
    """DDP around the classifier when several processes run, else the classifier itself.

    Buffers (the normalisation mean/std) are constant, so they are not re-broadcast: ranks may then
    run different numbers of forward passes (L_MAdv only attacks images whose draws are all correct).
    """
    if world()[1] == 1:
        return classifier
    ids = [device.index] if device.type == "cuda" else None
    # torch >= 2.14 renamed the flag; syncing once at init is harmless for identical constants
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return DistributedDataParallel(classifier, device_ids=ids, **no_sync)


def _all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    size = world()[1]
    if size == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, (t / size).tolist()))


def _device_of(module: torch.nn.Module) -> torch.device:
    tensor = next(iter(module.buffers()), None)
    if tensor is None:
        tensor = next(iter(module.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def batch_loss(loss_fn: FTCadisLoss, model: torch.nn.Module, denoiser: torch.nn.Module, x: torch.Tensor,
               y: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of this rank's share of a global batch (x, y, noise) and the metrics of the whole batch."""
    device = _device_of(denoiser)
    x, y, noise = (local_share(t).to(device) for t in (x, y, noise))
    loss, metrics = loss_fn(model, denoiser, x, y, noise)
    return loss, _all_reduce_mean(metrics, device)


@torch.no_grad()
def evaluate_denoised(classifier: torch.nn.Module, denoiser: torch.nn.Module, test_set: ImageDataset,
                      sigma: float, size: int, batch_size: int, seed: int) -> float:
    """Accuracy of classifier(denoiser(x + σε)) on the first `size` test images, one fixed draw each."""
    if isinstance(classifier, DistributedDataParallel):
        classifier = classifier.module
    size = min(size, len(test_set))
    x, y = test_set.images[:size], test_set.labels[:size]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + 999_983))
    rank, n_proc = world()
    device = _device_of(denoiser)
    was_training = classifier.training
    classifier.eval()
    correct = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(rank * batch_size, size, batch_size * n_proc):  # rank r takes batches r, r+P, ...
        sl = slice(start, start + batch_size)
        xb = x[sl].to(device)
        pred = classifier(denoiser(xb + sigma * noise[sl].to(device), sigma)).argmax(-1)
        correct += (pred.cpu() == y[sl]).sum().item()
    classifier.train(was_training)
    if n_proc > 1:
        dist.all_reduce(correct)
    return correct.item() / max(size, 1)


class _TrainedState(torch.nn.Module):
    """Shows save/load_checkpoint only the trained tensors (and buffers), so LoRA checkpoints stay small."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "target", model)  # not a submodule: its own state_dict stays hidden

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        full = self.target.state_dict()
        trained = {n for n, p in self.target.named_parameters() if p.requires_grad}
        trained |= {n for n, _ in self.target.named_buffers()} & set(full)
        return {n: full[n] for n in sorted(trained)}

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        expected = set(self.state_dict())
        if set(state) != expected:
            raise RuntimeError(f"checkpoint holds {len(state)} tensors, this model trains {len(expected)}")
        return self.target.load_state_dict(state, strict=False)


# ---------------------------------------------------------------- metrics files


class _MetricsLog:
    """metrics.jsonl and metrics.csv under `out`; on resume, rows after the resumed step are dropped."""

    def __init__(self, out: Path, start: int, enabled: bool):
        self.enabled = enabled
        self.jsonl, self.csv = out / "metrics.jsonl", out / "metrics.csv"
        if not enabled:
            return
        rows = []
        if self.jsonl.exists() and start > 0:  # a fresh start (no checkpoint) keeps nothing
            rows = [r for r in map(json.loads, self.jsonl.read_text().splitlines()) if r["step"] <= start]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with self.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def write(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.jsonl.open("a") as f:
            f.write(json.dumps(event) + "\n")
        with self.csv.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore").writerow(event)


# ---------------------------------------------------------------- the loop


def _setup_distributed() -> tuple[bool, torch.device | None]:
    """Join the process group torchrun describes (nccl with one GPU per process, else gloo on CPU);
    returns (whether we created the group, this process's GPU or None)."""
    device = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    created = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device is not None:
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        created = True
    if world()[1] > 1 and dist.get_backend() == "nccl" and device is None:
        device = torch.device("cuda", dist.get_rank() % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return created, device if world()[1] > 1 else None


def _compared(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _NOT_COMPARED}


def _check_out_dir(out: Path, meta: dict[str, Any], state: dict[str, Any] | None) -> None:
    """A run may only resume into an out dir holding the same configuration."""
    saved = []
    if (out / "config.json").exists():
        saved.append(json.loads((out / "config.json").read_text()))
    if state is not None:
        saved.append({"config": state["config"], "classifier": state.get("classifier", meta["classifier"]),
                      "base_weights": state.get("base_weights", meta["base_weights"])})
    for old in saved:
        if _compared(old["config"]) != _compared(meta["config"]) or old.get("classifier") != meta["classifier"]:
            diff = sorted(k for k in meta["config"] if k not in _NOT_COMPARED
                          and old["config"].get(k) != meta["config"][k])
            raise CadisError(f"{out} holds a fine-tuning run with another configuration "
                             f"(differs in: {', '.join(diff) or 'classifier'}); use another --out or delete it.")
        # Same spec, other weights (a retrained classifier): resuming would mix two bases. Runs from
        # before the digest was recorded have none and are not checked.
        if old.get("base_weights", meta["base_weights"]) != meta["base_weights"]:
            raise CadisError(f"{out} holds a fine-tuning run of other weights under the classifier spec "
                             f"{meta['classifier']!r} (it was retrained since); use another --out or delete it.")


def finetune(config: FinetuneConfig, denoiser: torch.nn.Module, classifier: ImageClassifier,
             train_set: ImageDataset, test_set: ImageDataset | None = None,
             callback: Callable[[dict[str, Any]], None] | None = None,
             stop_event: threading.Event | None = None) -> Path:
    """Fine-tune a copy of `classifier` behind the frozen `denoiser`; returns the saved model directory
    (out/model), or the checkpoint directory when `stop_event` stopped the run early.

    `callback` receives {"kind": "step", ...metrics, "lr", "images_per_s"} after every step,
    {"kind": "eval", "step", "test_acc_denoised"} after every evaluation, and finally
    {"kind": "done", "step", "path"} (or {"kind": "stopped", "step", "path"} after a stop).
    """
    cfg = copy.deepcopy(config)
    cfg.validate()
    created_group, ddp_device = _setup_distributed()
    try:
        return _finetune(cfg, denoiser, classifier, train_set, test_set, callback, stop_event, ddp_device)
    finally:
        if created_group:
            dist.destroy_process_group()


def _finetune(cfg: FinetuneConfig, denoiser: torch.nn.Module, classifier: ImageClassifier,
              train_set: ImageDataset, test_set: ImageDataset | None,
              callback: Callable[[dict[str, Any]], None] | None, stop_event: threading.Event | None,
              ddp_device: torch.device | None) -> Path:
    rank, n_proc = world()
    main = rank == 0
    out = Path(cfg.out)
    if cfg.batch_size % n_proc:
        raise CadisError(f"batch_size {cfg.batch_size} must be a multiple of the number of processes ({n_proc}).")
    device = ddp_device or _device_of(classifier)
    denoiser = denoiser.to(device).eval()
    base_weights = weights_digest(classifier)
    clf = prepare_classifier(cfg, classifier).to(device)
    if cfg.compile:
        clf.compile()  # in place: parameter names, and so checkpoints and adapters, are unchanged
    model = wrap_distributed(clf, device)
    autocast = Acceleration(cfg.precision).autocast
    n_trained, n_total = trainable_parameters(clf)
    opt = make_optimizer(cfg, clf)
    trained = _TrainedState(clf)

    meta = {"config": asdict(cfg), "classifier": clf.spec, "base_weights": base_weights,
            "trainable_params": n_trained, "total_params": n_total,
            "trainable_fraction": n_trained / n_total, "processes": n_proc}
    _check_out_dir(out, meta, None)  # before loading, so a changed setup is reported as such
    state = load_checkpoint(out / "checkpoint", {"trained": trained}, opt)
    _check_out_dir(out, meta, state)
    start, elapsed = (state["step"], state["elapsed_s"]) if state else (0, 0.0)
    # Resuming, the optimizer's groups carry their initial_lr and the schedule restarts at `start`.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg.warmup, max(cfg.steps, 1),
                                                                            cfg.min_lr / cfg.lr),
                                              last_epoch=start - 1)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(meta, indent=2))
        print(f"trainable parameters: {n_trained:,} of {n_total:,} ({100 * n_trained / n_total:.2f}%)"
              f"{' with LoRA' if cfg.lora else ''}; {'resuming at step ' + str(start) if start else 'starting'}")
    log = _MetricsLog(out, start, main)

    def emit(event: dict[str, Any]) -> None:
        if main:
            if event["kind"] in ("step", "eval"):
                log.write({**event, "elapsed_s": round(elapsed + time.time() - t0, 2)})
            if callback is not None:
                callback(event)

    def checkpoint(step: int) -> Path:
        if main:
            save_checkpoint(out / "checkpoint", {"trained": trained}, opt,
                            {"step": step, "elapsed_s": elapsed + time.time() - t0, "config": asdict(cfg),
                             "classifier": clf.spec, "base_weights": base_weights})
        return out / "checkpoint"

    train_idx = torch.arange(len(train_set))
    if cfg.subset is not None:
        train_idx = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.subset]
    if len(train_idx) < cfg.batch_size:
        raise CadisError(f"{len(train_idx)} training images cannot fill a batch of {cfg.batch_size}.")
    steps = 0 if cfg.method == "none" else cfg.steps
    eval_every = len(train_idx) // cfg.batch_size if cfg.eval_every is None else cfg.eval_every
    loss_fn = cfg.loss() if steps else None

    def evaluate(step: int) -> None:
        if test_set is None or cfg.eval_size <= 0:
            return
        acc = evaluate_denoised(model, denoiser, test_set, cfg.sigma, cfg.eval_size, cfg.batch_size, cfg.seed)
        emit({"kind": "eval", "step": step, "test_acc_denoised": acc})

    t0 = last_ckpt = time.time()
    model.train()
    trainable = [p for p in clf.parameters() if p.requires_grad]
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"finetune {cfg.method}", unit="step",
               disable=not main)
    for step in bar:
        t_step = time.time()
        seed = cfg.seed * 1_000_003 + step
        idx = train_idx[batch_indices(len(train_idx), cfg.batch_size, step, cfg.seed)]
        x, y = train_set.images[idx], train_set.labels[idx]
        noise = draw_noise(x, cfg.num_draws, torch.Generator().manual_seed(seed))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)  # dropout and the like repeat on resume
            with autocast(device):
                loss, metrics = batch_loss(loss_fn, model, denoiser, x, y, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        lr = opt.param_groups[0]["lr"] / opt.param_groups[0].get("lr_scale", 1.0)
        opt.step()
        sched.step()
        done = step + 1
        emit({"kind": "step", "step": done, **metrics, "lr": lr,
              "images_per_s": cfg.batch_size / max(time.time() - t_step, 1e-9)})
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['acc_denoised']:.2f}")
        if (eval_every and done % eval_every == 0) or done == steps:
            evaluate(done)
        stop = torch.tensor(float(stop_event is not None and stop_event.is_set()), device=device)
        if n_proc > 1:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)  # every rank stops after the same step
        if stop.item() and done < steps:
            path = checkpoint(done)
            bar.close()
            if n_proc > 1:
                dist.barrier()
            emit({"kind": "stopped", "step": done, "path": str(path)})
            return path
        if time.time() - last_ckpt > 60 * cfg.checkpoint_minutes:
            checkpoint(done)
            last_ckpt = time.time()
    bar.close()
    if steps == 0 and start == 0:
        evaluate(0)
    if start < steps:
        checkpoint(steps)
    path = out / "model"
    if main:
        save_classifier(clf, path, cfg.save_as, PROJECT_ROOT)
        (path / "finetune.json").write_text(json.dumps(meta, indent=2))
    if n_proc > 1:
        dist.barrier()
    emit({"kind": "done", "step": steps, "path": str(path)})
    return path


# ---------------------------------------------------------------- command line


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `finetune` (python -m cadis_core finetune ...)."""
    d = FinetuneConfig()
    p = subparsers.add_parser("finetune", help="FT-CADIS fine-tuning of the classifier on denoised images",
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


def run_cli(args: argparse.Namespace) -> None:
    """Load the models and data the arguments name, fine-tune, and print where the model went."""
    from .data import load_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or (f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu")
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
    path = finetune(config, denoiser, classifier, train, test)
    if int(os.environ.get("RANK", "0")) == 0:  # the process group is gone by now
        print(f"saved {path}")

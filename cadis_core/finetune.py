"""Resumable FT-CADIS fine-tuning of an off-the-shelf classifier behind a frozen denoiser.

Per step: take batch `step` of a seeded, per-epoch data order, draw its noise from a generator seeded
by (seed, step), compute the objective of `cadis_core.objective`, and take an AdamW step (warmup +
cosine learning rate, gradient clipping). An interrupted run resumes from its last checkpoint and
ends with the same weights as an uninterrupted one.

Under `torchrun` (WORLD_SIZE > 1) every process computes the loss of its contiguous share of each
batch and DistributedDataParallel averages the gradients, so the update equals the one-process
update on the whole batch. Rank 0 writes the files. For example, on 2 GPUs (or 2 CPU processes):

    torchrun --nproc-per-node 2 -m cadis_core finetune --preset fashion-mnist --batch-size 64

The run's directory (config, metrics, checkpoints, the saved model) is `cadis_core.run_dir`, process
groups are `cadis_core.distributed`, and the command line is `cadis_core.cli`.
"""

from __future__ import annotations

import copy
import math
import numbers
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .acceleration import Acceleration
from .checkpoint import weights_digest
from .classifier import ImageClassifier
from .data import ImageDataset
from .distributed import (
    all_reduce_mean,
    all_reduce_sum,
    any_rank,
    barrier,
    local_share,
    process_group,
    unwrap,
    world,
    wrap_distributed,
)
from .errors import CadisError
from .loading import SAVE_FORMATS
from .lora import apply_lora, base_model, enable_full_finetuning, trainable_parameters
from .objective import FTCadisLoss, check_method, draw_noise
from .run_dir import RunDir, check_writable
from .schedules import batch_indices, warmup_cosine
from .seeds import derive_seed

MAX_STEPS = 1_000_000  # steps seed their noise with derive_seed(seed, step): below seeds.STRIDE, streams stay apart
MAX_SEED = 2**32 - 1


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_real(name: str, value: Any, low: float | None = None, high: float | None = None, open_low: bool = False,
                hint: str = "") -> None:
    """A finite real number in [low, high] ((low, high] with `open_low`), or a CadisError naming the flag."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        where = ">" if open_low else ">="
        bounds = f" {where} {low:g}" if low is not None else ""
        if high is not None:
            bounds = f" in {'(' if open_low else '['}{low:g}, {high:g}]" if low is not None else f" <= {high:g}"
        raise CadisError(f"{_flag(name)} must be a finite number{bounds} (got {value!r}); {hint}.")


def _check_integer(name: str, value: Any, low: int | None = None, high: int | None = None, hint: str = "") -> None:
    """An integer in [low, high], or a CadisError naming the flag."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = f" >= {low}" if high is None else f" from {low} to {high:,}"
        raise CadisError(f"{_flag(name)} must be an integer{bounds} (got {value!r}); {hint}.")


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
        """Refuse (CadisError, one line naming the flag) any setting out of range or not finite, before anything
        is loaded or written. The CLI, the library and the apps all call it."""
        check_method(self.method)
        if self.save_as not in SAVE_FORMATS:
            raise CadisError(f"Unknown save format {self.save_as!r}; use 'adapter' or 'merged'.")
        if self.save_as == "adapter" and not self.lora:
            raise CadisError("Full fine-tuning cannot be saved as a LoRA adapter; use --save-as merged.")
        Acceleration(self.precision)  # checks the name
        real, integer = _check_real, _check_integer
        real("sigma", self.sigma, low=0, open_low=True, hint="try 0.25 or 0.5")
        integer("num_draws", self.num_draws, low=1, hint="the paper uses 4")
        real("lam", self.lam, low=0, hint="the paper uses 1 to 4; 0 turns the adversarial term off")
        real("eps", self.eps, low=0, hint="0.125 is usual; 0 turns the adversarial search off")
        integer("adv_steps", self.adv_steps, low=0, hint="4 is usual")
        if self.lora:
            integer("lora_r", self.lora_r, low=1, hint="4 to 16 is usual; --full trains every parameter instead")
            real("lora_alpha", self.lora_alpha, low=0, open_low=True, hint="usually equal to --lora-r")
        integer("steps", self.steps, low=0, high=MAX_STEPS, hint="1000 is usual")
        integer("batch_size", self.batch_size, low=1, hint="32 is usual")
        real("lr", self.lr, low=0, open_low=True, high=1, hint="1e-3 is usual with LoRA, 1e-4 with --full")
        real("weight_decay", self.weight_decay, low=0, high=10, hint="0.01 is usual")
        integer("warmup", self.warmup, low=0, hint="about 5% of --steps is usual")
        real("min_lr", self.min_lr, low=0, high=self.lr, hint=f"it must not exceed --lr ({self.lr:g}); 0 is usual")
        if self.grad_clip is not None:
            real("grad_clip", self.grad_clip, low=0, hint="1.0 is usual; 0 or None turns clipping off")
        if self.layer_decay is not None:
            real("layer_decay", self.layer_decay, low=0, open_low=True, high=1, hint="0.75 is usual; omit it for off")
        if self.subset is not None:
            integer("subset", self.subset, low=self.batch_size,
                    hint=f"it must hold at least one batch (--batch-size {self.batch_size})")
        integer("seed", self.seed, low=0, high=MAX_SEED, hint="any integer from 0")
        real("checkpoint_minutes", self.checkpoint_minutes, low=0, hint="3 is usual; 0 checkpoints every step")
        if self.eval_every is not None:
            integer("eval_every", self.eval_every, low=0, hint="0 evaluates at the end only; omit it for every epoch")
        integer("eval_size", self.eval_size, low=0, hint="500 is usual; 0 turns evaluation off")
        if self.method != "none":
            self.loss()  # the objective's own checks

    def loss(self) -> FTCadisLoss:
        return FTCadisLoss(self.method, self.sigma, self.num_draws, self.lam, self.eps, self.adv_steps,
                           self.warm_start, self.detach_target)


@dataclass(frozen=True)
class FinetuneResult:
    """How a run ended: finished, with the model saved in `path` (out/model), or stopped early by the
    stop event, with its state in `path` (out/checkpoint); `step` is the last step taken."""

    path: Path
    stopped: bool
    step: int


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
    return loss, all_reduce_mean(metrics, device)


@torch.no_grad()
def evaluate_denoised(classifier: torch.nn.Module, denoiser: torch.nn.Module, test_set: ImageDataset,
                      sigma: float, size: int, batch_size: int, seed: int) -> float:
    """Accuracy of classifier(denoiser(x + σε)) on the first `size` test images, one fixed draw each."""
    classifier = unwrap(classifier)
    size = min(size, len(test_set))
    x, y = test_set.images[:size], test_set.labels[:size]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(derive_seed(seed, 999_983)))
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
    return all_reduce_sum(correct).item() / max(size, 1)


def _training_indices(cfg: FinetuneConfig, n: int) -> torch.Tensor:
    """The training images the run draws its batches from: all, or a seeded random subset."""
    if cfg.subset is None:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[:cfg.subset]


# ---------------------------------------------------------------- the loop


def finetune(config: FinetuneConfig, denoiser: torch.nn.Module, classifier: ImageClassifier,
             train_set: ImageDataset, test_set: ImageDataset | None = None,
             callback: Callable[[dict[str, Any]], None] | None = None,
             stop_event: threading.Event | None = None, fresh: bool = False) -> FinetuneResult:
    """Fine-tune a copy of `classifier` behind the frozen `denoiser`; returns where the run ended: the
    saved model directory (out/model), or the checkpoint directory when `stop_event` stopped it early.

    `callback` receives {"kind": "step", ...metrics, "lr", "images_per_s"} after every step,
    {"kind": "eval", "step", "test_acc_denoised"} after every evaluation, and finally
    {"kind": "done", "step", "path"} (or {"kind": "stopped", "step", "path"} after a stop).
    `fresh` deletes a run already in `config.out` (checkpoint, metrics, model) instead of resuming it.

    A non-finite loss, gradient or weight stops the run with a CadisError before the optimizer step, so the
    last checkpoint (all finite) stays as it was and no model is saved.
    """
    cfg = copy.deepcopy(config)
    cfg.validate()
    check_inputs(cfg, denoiser, classifier, train_set, test_set)
    check_writable(cfg.out)
    with process_group() as ddp_device:
        return _finetune(cfg, denoiser, classifier, train_set, test_set, callback, stop_event, ddp_device, fresh)


def check_inputs(cfg: FinetuneConfig, denoiser: torch.nn.Module, classifier: ImageClassifier,
                 train_set: ImageDataset, test_set: ImageDataset | None) -> None:
    """What would fail only inside the loop, checked before anything is written: σ within the denoiser's
    schedule, images in the denoiser's shape, labels within the classifier's classes."""
    if cfg.method != "none" and hasattr(denoiser, "timestep"):
        denoiser.timestep(cfg.sigma)
    want = getattr(denoiser, "image_shape", None)
    for split, data in (("training", train_set), ("test", test_set)):
        if data is None or len(data) == 0:
            if split == "training" and cfg.method != "none":
                raise CadisError("The training set is empty; give a dataset with images.")
            continue
        if want is not None and data.shape != tuple(want):
            raise CadisError(f"The {split} images are {'×'.join(map(str, data.shape))} but the denoiser takes "
                             f"{'×'.join(map(str, want))}; bring them to it with cadis_core.data.fit_dataset "
                             "(the finetune command does).")
        top = int(data.labels.max())
        if top >= classifier.num_classes or int(data.labels.min()) < 0:
            raise CadisError(f"The {split} set has label {top} but the classifier has {classifier.num_classes} "
                             "classes; give a classifier trained on this dataset's classes.")


def _nonfinite(what: str, value: float, step: int, last_good: int | None, run: RunDir) -> CadisError:
    kept = (f"The last good checkpoint (step {last_good}) in {run.checkpoint_dir} is kept" if last_good else
            "No checkpoint was written")
    return CadisError(f"Fine-tuning stopped at step {step}: the {what} is not finite ({value}); nothing was saved "
                      f"from it. {kept}. Lower --lr (or --eps, --lam), train in fp32, and start again with --fresh "
                      "or another --out.")


def _finetune(cfg: FinetuneConfig, denoiser: torch.nn.Module, classifier: ImageClassifier,
              train_set: ImageDataset, test_set: ImageDataset | None,
              callback: Callable[[dict[str, Any]], None] | None, stop_event: threading.Event | None,
              ddp_device: torch.device | None, fresh: bool = False) -> FinetuneResult:
    # ---- set-up: models, optimizer, data
    rank, n_proc = world()
    main = rank == 0
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
    opt = make_optimizer(cfg, clf)
    n_trained, n_total = trainable_parameters(clf)
    meta = {"config": asdict(cfg), "classifier": clf.spec, "base_weights": base_weights,
            "trainable_params": n_trained, "total_params": n_total, "trainable_fraction": n_trained / n_total,
            "processes": n_proc}
    if train_set.transform_note:  # how the images were brought to the denoiser's input (not compared on resume)
        meta["images"] = train_set.transform_note
    run = RunDir(cfg.out, meta, main)
    train_idx = _training_indices(cfg, len(train_set))
    if len(train_idx) < cfg.batch_size:
        raise CadisError(f"{len(train_idx)} training images cannot fill a batch of {cfg.batch_size}.")
    steps = 0 if cfg.method == "none" else cfg.steps
    eval_every = len(train_idx) // cfg.batch_size if cfg.eval_every is None else cfg.eval_every
    loss_fn = cfg.loss() if steps else None

    # ---- resume (or start) from the run directory
    if fresh:
        run.clear()
        barrier()  # no rank reads the checkpoint rank 0 is deleting
    start, elapsed = run.resume(clf, opt)
    last_good = start or None
    # Resuming, the optimizer's groups carry their initial_lr and the schedule restarts at `start`.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg.warmup, max(cfg.steps, 1),
                                                                            cfg.min_lr / cfg.lr),
                                              last_epoch=start - 1)
    run.start(start)
    if main:
        print(f"trainable parameters: {n_trained:,} of {n_total:,} ({100 * n_trained / n_total:.2f}%)"
              f"{' with LoRA' if cfg.lora else ''}; {'resuming at step ' + str(start) if start else 'starting'}")

    def emit(event: dict[str, Any]) -> None:
        if main:
            if event["kind"] in ("step", "eval"):
                run.write_metrics({**event, "elapsed_s": round(elapsed + time.time() - t0, 2)})
            if callback is not None:
                callback(event)

    def checkpoint(step: int) -> Path:
        nonlocal last_good
        path = run.save_checkpoint(clf, opt, step, elapsed + time.time() - t0)
        last_good = step
        return path

    def evaluate(step: int) -> None:
        if test_set is None or cfg.eval_size <= 0:
            return
        acc = evaluate_denoised(model, denoiser, test_set, cfg.sigma, cfg.eval_size, cfg.batch_size, cfg.seed)
        emit({"kind": "eval", "step": step, "test_acc_denoised": acc})

    # ---- the loop
    t0 = last_ckpt = time.time()
    model.train()
    trainable = [p for p in clf.parameters() if p.requires_grad]
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"finetune {cfg.method}", unit="step",
               disable=not main)
    for step in bar:
        t_step = time.time()
        seed = derive_seed(cfg.seed, step)
        idx = train_idx[batch_indices(len(train_idx), cfg.batch_size, step, cfg.seed)]
        x, y = train_set.images[idx], train_set.labels[idx]
        noise = draw_noise(x, cfg.num_draws, torch.Generator().manual_seed(seed))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)  # dropout and the like repeat on resume
            with autocast(device):
                loss, metrics = batch_loss(loss_fn, model, denoiser, x, y, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        done = step + 1
        # The loss is averaged and the gradients all-reduced over ranks, so every rank takes the same decision.
        if not math.isfinite(metrics["loss"]):
            bar.close()
            raise _nonfinite("loss", metrics["loss"], done, last_good, run)
        if cfg.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in trainable if p.grad is not None])
        if not torch.isfinite(grad_norm):
            bar.close()
            raise _nonfinite("gradient norm", grad_norm.item(), done, last_good, run)
        lr = opt.param_groups[0]["lr"] / opt.param_groups[0].get("lr_scale", 1.0)
        try:
            opt.step()
        except RuntimeError as e:  # torch refuses some overflowing updates itself
            if "overflow" not in str(e):
                raise
            bar.close()
            raise _nonfinite("update", float("inf"), done, last_good, run) from e
        sched.step()
        weight_norm = torch.nn.utils.get_total_norm(trainable)
        if not torch.isfinite(weight_norm):
            bar.close()
            raise _nonfinite("norm of the updated weights", weight_norm.item(), done, last_good, run)
        emit({"kind": "step", "step": done, **metrics, "lr": lr,
              "images_per_s": cfg.batch_size / max(time.time() - t_step, 1e-9)})
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['acc_denoised']:.2f}")
        if (eval_every and done % eval_every == 0) or done == steps:
            evaluate(done)
        # every rank stops after the same step
        if any_rank(stop_event is not None and stop_event.is_set(), device) and done < steps:
            path = checkpoint(done)
            bar.close()
            barrier()
            emit({"kind": "stopped", "step": done, "path": str(path)})
            return FinetuneResult(path, stopped=True, step=done)
        if time.time() - last_ckpt > 60 * cfg.checkpoint_minutes:
            checkpoint(done)
            last_ckpt = time.time()
    bar.close()
    if steps == 0 and start == 0:
        evaluate(0)
    if start < steps:
        checkpoint(steps)
    path = run.save_model(clf, cfg.save_as)
    barrier()
    emit({"kind": "done", "step": steps, "path": str(path)})
    return FinetuneResult(path, stopped=False, step=steps)

"""Resumable FT-CADIS fine-tuning of an off-the-shelf classifier behind a frozen denoiser.

Per step: take batch `step` of a seeded, per-epoch data order, draw its noise from a generator seeded
by (seed, step), compute the objective of `cadis.training.objective`, and take an AdamW step (warmup +
cosine learning rate, gradient clipping). An interrupted run resumes from its last checkpoint and
ends with the same weights as an uninterrupted one.

Under `torchrun` (WORLD_SIZE > 1) every process computes the loss of its contiguous share of each
batch and DistributedDataParallel averages the gradients, so the update equals the one-process
update on the whole batch. Rank 0 writes the files. For example, on 2 GPUs (or 2 CPU processes):

    torchrun --nproc-per-node 2 -m cadis finetune --preset fashion-mnist --batch-size 64

The run's directory (config, metrics, checkpoints, the saved model) is `cadis.training.run_dir`, process
groups are `cadis.distributed`, and the command line is `cadis.cli`.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from cadis.acceleration import Acceleration, use_compile_cache
from cadis.data import ImageDataset
from cadis.distributed import (
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
from cadis.errors import CadisError
from cadis.models.classifier import ImageClassifier
from cadis.models.lora import apply_lora, base_model, enable_full_finetuning, trainable_parameters
from cadis.seeds import derive_seed
from cadis.training.augmentation import random_crop_flip
from cadis.training.checkpoint import weights_digest
from cadis.training.finetune_config import FinetuneConfig, FinetuneResult
from cadis.training.loop import run_steps
from cadis.training.objective import FTCadisLoss, draw_noise
from cadis.training.run_dir import RunDir, check_writable
from cadis.training.schedules import batch_indices, cosine, warmup_cosine


def prepare_classifier(config: FinetuneConfig, classifier: ImageClassifier) -> ImageClassifier:
    """A trainable copy of `classifier`: LoRA (seeded init) or every parameter; the caller's stays as is."""
    clf = copy.deepcopy(classifier)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # LoRA's A factors are random
        if config.lora:
            apply_lora(clf, r=config.lora_r, alpha=config.lora_alpha, split=config.lora_qv)
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
        group["decays"] = group["weight_decay"] > 0  # 1-d parameters stay undecayed under a decay schedule
    return opt


def set_weight_decay(config: FinetuneConfig, opt: torch.optim.Optimizer, step: int) -> None:
    """The decay of `step` on the groups that decay: flat, or the authors' cosine to weight_decay_end."""
    if config.weight_decay_end is None:
        return
    decay = cosine(step, config.steps, config.weight_decay, config.weight_decay_end)
    for group in opt.param_groups:
        if group.get("decays", True):
            group["weight_decay"] = decay


def clip_gradients(config: FinetuneConfig, params: list[torch.Tensor]) -> torch.Tensor:
    """Clip to grad_clip over all parameters, or per tensor (`clip_per_tensor`); the norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not config.grad_clip:
        return torch.nn.utils.get_total_norm(grads)
    if not config.clip_per_tensor:
        return torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    total = torch.nn.utils.get_total_norm(grads)
    for p in params:
        if p.grad is not None:
            torch.nn.utils.clip_grad_norm_(p, config.grad_clip)
    return total


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
                      sigma: float, size: int, batch_size: int, seed: int, offset: int = 0) -> float:
    """Accuracy of classifier(denoiser(x + σε)) on `size` test images from `offset`, one fixed draw each."""
    classifier = unwrap(classifier)
    x, y = test_set.images[offset:offset + size], test_set.labels[offset:offset + size]
    size = len(x)
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
                             f"{'×'.join(map(str, want))}; bring them to it with cadis.data.fit_dataset "
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
        use_compile_cache()
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
        acc = evaluate_denoised(model, denoiser, test_set, cfg.sigma, cfg.eval_size, cfg.batch_size, cfg.seed,
                                cfg.eval_offset)
        emit({"kind": "eval", "step": step, "test_acc_denoised": acc})

    # ---- the loop
    t0 = time.time()
    model.train()
    trainable = [p for p in clf.parameters() if p.requires_grad]

    def one_step(step: int) -> dict[str, str]:
        t_step = time.time()
        seed = derive_seed(cfg.seed, step)
        idx = train_idx[batch_indices(len(train_idx), cfg.batch_size, step, cfg.seed)]
        x, y = train_set.images[idx], train_set.labels[idx]
        generator = torch.Generator().manual_seed(seed)
        noise = draw_noise(x, cfg.num_draws, generator)
        if cfg.augment:  # after the noise, from the same stream: runs without augmentation draw the same noise
            x = random_crop_flip(x, generator)
        set_weight_decay(cfg, opt, step)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)  # dropout and the like repeat on resume
            with autocast(device):
                loss, metrics = batch_loss(loss_fn, model, denoiser, x, y, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        done = step + 1
        # The loss is averaged and the gradients all-reduced over ranks, so every rank takes the same decision.
        if not math.isfinite(metrics["loss"]):
            raise _nonfinite("loss", metrics["loss"], done, last_good, run)
        grad_norm = clip_gradients(cfg, trainable)
        if not torch.isfinite(grad_norm):
            raise _nonfinite("gradient norm", grad_norm.item(), done, last_good, run)
        lr = opt.param_groups[0]["lr"] / opt.param_groups[0].get("lr_scale", 1.0)
        try:
            opt.step()
        except RuntimeError as e:  # torch refuses some overflowing updates itself
            if "overflow" not in str(e):
                raise
            raise _nonfinite("update", float("inf"), done, last_good, run) from e
        sched.step()
        weight_norm = torch.nn.utils.get_total_norm(trainable)
        if not torch.isfinite(weight_norm):
            raise _nonfinite("norm of the updated weights", weight_norm.item(), done, last_good, run)
        emit({"kind": "step", "step": done, **metrics, "lr": lr,
              "images_per_s": cfg.batch_size / max(time.time() - t_step, 1e-9)})
        if (eval_every and done % eval_every == 0) or done == steps:
            evaluate(done)
        return {"loss": f"{metrics['loss']:.3f}", "acc": f"{metrics['acc_denoised']:.2f}"}

    # every rank stops after the same step; Ctrl-C keeps the steps done (one process: no peer to wait for)
    done, stopped = run_steps(start, steps, one_step, checkpoint, cfg.checkpoint_minutes, f"finetune {cfg.method}",
                              stop=lambda done: any_rank(stop_event is not None and stop_event.is_set(), device),
                              show=main, save_on_interrupt=n_proc == 1)
    if stopped:
        barrier()
        emit({"kind": "stopped", "step": done, "path": str(run.checkpoint_dir)})
        return FinetuneResult(run.checkpoint_dir, stopped=True, step=done)
    if steps == 0 and start == 0:
        evaluate(0)
    if start < steps:
        checkpoint(steps)
    path = run.save_model(clf, cfg.save_as)
    barrier()
    emit({"kind": "done", "step": steps, "path": str(path)})
    return FinetuneResult(path, stopped=False, step=steps)

"""Resumable training of the embedded default's denoiser (DDPM) and classifier (clean images only).

Every step draws its randomness from a generator seeded by (seed, step), and the data order
from (seed, epoch), so a run interrupted and resumed gives the same weights as one that was not.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_model
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cadis.data import load_dataset
from cadis.errors import CadisError
from cadis.models.denoiser import DiffusionDenoiser, timestep_for_sigma
from cadis.seeds import derive_seed
from cadis.training.checkpoint import load_checkpoint, save_checkpoint
from cadis.training.loop import run_steps
from cadis.training.schedules import batch_indices, warmup_cosine
from experiments.zoo.architectures import fmnist_scheduler, fmnist_unet, fmnist_vit


@dataclass
class TrainConfig:
    """What both trainers share. A run resumes only under the same configuration."""

    out: str
    export: str
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup: int
    seed: int = 0
    checkpoint_minutes: float = 3.0
    ema_decay: float = 0.999
    init_from: str | None = None  # an exported model to start from (a second training stage)


@dataclass
class DenoiserTrainConfig(TrainConfig):
    beta_schedule: str = "linear"
    focus_fraction: float = 0.5  # share of timesteps drawn from the σ range we certify at
    focus_sigmas: tuple[float, float] = (0.1, 1.2)


@dataclass
class ClassifierTrainConfig(TrainConfig):
    label_smoothing: float = 0.1


def _train_loop(cfg: TrainConfig, model: torch.nn.Module, step_fn: Callable[[int, torch.Generator], torch.Tensor],
                desc: str, stop_at: int | None = None) -> AveragedModel | None:
    """Train to cfg.steps (or checkpoint and return None at `stop_at`); returns the EMA model when finished."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg.warmup, cfg.steps))
    state = load_checkpoint(out / "checkpoint", {"model": model, "ema": ema}, opt)
    start, elapsed = 0, 0.0
    if state is not None:
        if state["config"] != json.loads(json.dumps(asdict(cfg))):
            raise CadisError(f"{out} holds a run with another configuration; use another --out or delete it.")
        start, elapsed = state["step"], state["elapsed_s"]
        sched.last_epoch = start  # the optimizer state already holds the lr of step `start`
    log_path = out / "loss.csv"
    rows = []
    if log_path.exists():  # drop rows logged after the checkpoint we resume from
        with log_path.open() as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start]
    with log_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "elapsed_s"])
        w.writeheader()
        w.writerows(rows)

    t0 = time.time()

    def checkpoint(step: int) -> None:
        save_checkpoint(out / "checkpoint", {"model": model, "ema": ema}, opt,
                        {"step": step, "elapsed_s": elapsed + time.time() - t0, "config": asdict(cfg)})

    model.train()
    running = []
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    with log_path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "elapsed_s"])

        def one_step(step: int) -> dict[str, str]:
            loss = step_fn(step, torch.Generator().manual_seed(derive_seed(cfg.seed, step)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            ema.update_parameters(model)
            running.append(loss.item())
            done = step + 1
            if done % 50 and done != end:
                return {}
            mean = sum(running) / len(running)
            running.clear()
            w.writerow({"step": done, "loss": f"{mean:.5f}", "lr": f"{sched.get_last_lr()[0]:.3e}",
                        "elapsed_s": f"{elapsed + time.time() - t0:.1f}"})
            f.flush()
            return {"loss": f"{mean:.4f}"}

        done, _ = run_steps(start, end, one_step, checkpoint, cfg.checkpoint_minutes, desc, total=cfg.steps)
    if done > start:  # the last steps, whether the run finished or stops at `stop_at`
        checkpoint(done)
    return ema if done == cfg.steps else None


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def train_denoiser(cfg: DenoiserTrainConfig, stop_at: int | None = None) -> Path | None:
    """ε-prediction DDPM training; a share of timesteps is drawn from the σ range we certify at."""
    torch.manual_seed(cfg.seed)
    train = load_dataset("fashion-mnist", "train")
    images = train.images * 2 - 1
    unet, scheduler = fmnist_unet(), fmnist_scheduler(cfg.beta_schedule)
    if cfg.init_from:
        unet = DiffusionDenoiser.from_pretrained(cfg.init_from).unet
    ac = scheduler.alphas_cumprod
    t_lo, t_hi = (timestep_for_sigma(ac, s) for s in cfg.focus_sigmas)

    def step_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        x0 = _flip(images[batch_indices(len(images), cfg.batch_size, step, cfg.seed)], gen)
        b = x0.shape[0]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=gen)
        focus = torch.rand(b, generator=gen) < cfg.focus_fraction
        t = torch.where(focus, torch.randint(t_lo, t_hi + 1, (b,), generator=gen), t)
        noise = torch.randn(x0.shape, generator=gen)
        return F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)

    ema = _train_loop(cfg, unet, step_fn, "train-denoiser", stop_at)
    if ema is None:
        return None
    DiffusionDenoiser(ema.module, scheduler).save_pretrained(cfg.export)
    _write_training_info(cfg, Path(cfg.export))
    return Path(cfg.export)


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip (standard clean-image augmentation)."""
    b, _, h, w = x.shape
    x = F.pad(_flip(x, gen), (pad,) * 4)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, 1, h, w + 2 * pad)
    x = x.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, 1, h, w)
    return x.gather(3, cols)


def train_classifier(cfg: ClassifierTrainConfig, stop_at: int | None = None) -> Path | None:
    """A small timm ViT trained on clean Fashion-MNIST only (crop + flip, label smoothing)."""
    torch.manual_seed(cfg.seed)
    train = load_dataset("fashion-mnist", "train")
    model = fmnist_vit(len(train.classes))
    if cfg.init_from:
        load_model(model, Path(cfg.init_from) / "model.safetensors")
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, -1, 1, 1)

    def step_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = batch_indices(len(train), cfg.batch_size, step, cfg.seed)
        x = (_augment(train.images[idx], gen) - mean) / std
        return F.cross_entropy(model(x), train.labels[idx], label_smoothing=cfg.label_smoothing)

    ema = _train_loop(cfg, model, step_fn, "train-classifier", stop_at)
    if ema is None:
        return None
    final = ema.module.eval()
    final.pretrained_cfg = model.pretrained_cfg
    timm.models.save_for_hf(final, cfg.export, safe_serialization=True,
                            model_config={"label_names": train.classes})
    _write_training_info(cfg, Path(cfg.export))
    return Path(cfg.export)


def _write_training_info(cfg: TrainConfig, export: Path) -> None:
    """Record the configuration, seed and wall time next to the exported weights."""
    state = json.loads((Path(cfg.out) / "checkpoint" / "state.json").read_text())
    info = {"config": asdict(cfg), "train_seconds": round(state["elapsed_s"], 1),
            "hardware": _hardware(), "torch": torch.__version__}
    if cfg.init_from:  # the earlier stage's record, so the whole recipe stays reproducible
        info["init_from"] = json.loads((Path(cfg.init_from) / "training.json").read_text())
    (export / "training.json").write_text(json.dumps(info, indent=2))


def _hardware() -> str:
    import os
    import platform

    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"

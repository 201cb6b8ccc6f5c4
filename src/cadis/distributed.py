"""Process groups under torchrun, shared by DDP fine-tuning and sharded certification.

torchrun describes the job in the environment (RANK, WORLD_SIZE, LOCAL_RANK); `launched` reads it,
`process_group` joins (and afterwards leaves) the group it describes, and `world` reports the group
actually joined. The collective helpers do nothing in a single process, so callers need no branches.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from cadis.errors import CadisError


def launched() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun set them; (0, 1, 0) in a plain process."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _join(cpu_only: bool) -> tuple[bool, torch.device | None]:
    """Join the group torchrun describes: nccl with one GPU per process, else (or with `cpu_only`) gloo.
    Returns (whether we created the group, this process's GPU or None)."""
    _, size, local_rank = launched()
    device = None
    if size > 1 and torch.cuda.is_available() and not cpu_only:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    created = False
    if size > 1 and not dist.is_initialized():
        if device is not None:
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        created = True
    # a caller's own nccl group: take the GPU of our rank
    if world()[1] > 1 and dist.get_backend() == "nccl" and device is None and not cpu_only:
        device = torch.device("cuda", dist.get_rank() % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return created, device if world()[1] > 1 else None


@contextmanager
def process_group(cpu_only: bool = False) -> Iterator[torch.device | None]:
    """Within the block, the process group torchrun describes (if any); yields this process's GPU or None.

    A group the caller already created is used as is and left open. `cpu_only`: gloo, and no GPU is
    claimed (enough to wait for each other)."""
    created, device = _join(cpu_only)
    try:
        yield device
    finally:
        if created:
            dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process of the group (nothing to wait for in one process)."""
    if world()[1] > 1:
        dist.barrier()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is set on any process, so that every process takes the same branch."""
    if world()[1] == 1:
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over the processes (in place)."""
    if world()[1] > 1:
        dist.all_reduce(t)
    return t


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each value over the processes."""
    size = world()[1]
    if size == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, (t / size).tolist()))


def local_share(t: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch (equal shares, so mean-of-means is the mean)."""
    rank, size = world()
    if t.shape[0] % size:
        raise CadisError(f"batch size {t.shape[0]} must be a multiple of the number of processes ({size}).")
    share = t.shape[0] // size
    return t[rank * share:(rank + 1) * share]


def wrap_distributed(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP around the model when several processes run, else the model itself.

    Buffers (the normalisation mean/std) are constant, so they are not re-broadcast: ranks may then
    run different numbers of forward passes (L_MAdv only attacks images whose draws are all correct).
    """
    if world()[1] == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # torch >= 2.14 renamed the flag; syncing once at init is harmless for identical constants
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=ids, **no_sync)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model

"""Meta-training across processes with ``torch.distributed`` (launched by ``torchrun``).

Every rank draws the same meta-batch (sampling is cheap and seeded per iteration),
keeps its own slice of tasks, and the meta-gradients are averaged with all-reduce.
With equal slices the average of the ranks' mean losses is the mean over the whole
meta-batch, so N processes follow the same trajectory as one (up to float rounding).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fastmaml.errors import ConfigError
from fastmaml.tasks.batch import TaskBatch


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device: str = "cpu") -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment (no-op when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size())


def shard(batch: TaskBatch, ctx: DistContext) -> TaskBatch:
    """This rank's contiguous slice of the meta-batch."""
    if not ctx.enabled:
        return batch
    t = batch.num_tasks
    if t % ctx.world_size:
        raise ConfigError(
            f"meta-batch of {t} tasks cannot be split evenly over {ctx.world_size} processes; "
            "choose a meta_batch_size divisible by the number of processes"
        )
    n = t // ctx.world_size
    return batch.tasks(ctx.rank * n, (ctx.rank + 1) * n)


def average_gradients(params, ctx: DistContext) -> None:
    """All-reduce the gradients of ``params`` to their mean over ranks (one flat buffer)."""
    if not ctx.enabled:
        return
    params = [p for p in params if p.grad is not None]
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def all_reduce_scalar(value: float, ctx: DistContext, device: torch.device | str = "cpu") -> float:
    """Mean of a Python number over ranks (so every rank sees the same loss, e.g. to stop on NaN together)."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item() / ctx.world_size)

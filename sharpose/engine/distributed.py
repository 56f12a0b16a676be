"""Process-group set-up for torchrun (single process otherwise) and the helpers the loops need."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # this context initialised the process group (and tears it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed() -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment), or reuse one
    already initialised; nccl on CUDA, gloo on CPU. One GPU per process (LOCAL_RANK)."""
    cuda = torch.cuda.is_available()
    owns = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return DistContext(rank, world, device, owns)


def teardown_distributed(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_mean(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, float]:
    """Mean over the processes of scalar tensors (one collective for all), as host floats."""
    if not values:
        return {}
    stacked = torch.stack([v.detach().float().to(ctx.device) for v in values.values()])
    if ctx.distributed:
        dist.all_reduce(stacked)
        stacked /= ctx.world_size
    return dict(zip(values, stacked.tolist()))


def gather_to_main(obj: Any, ctx: DistContext) -> list[Any] | None:
    """Every process's `obj` on the main process (in rank order), None elsewhere."""
    if not ctx.distributed:
        return [obj]
    gathered = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered

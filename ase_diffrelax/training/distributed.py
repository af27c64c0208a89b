"""torchrun support: the process group, agreement between ranks, and each rank's share of a batch."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .trainer import Trainer


def distributed_context() -> tuple[int, int]:
    """(rank, world size). Under torchrun (WORLD_SIZE > 1) the process group is started here:
    gloo for CPU tensors (the agreement flags below), nccl for CUDA ones where CUDA exists."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def any_rank(local: bool, world: int) -> bool:
    """True on every rank when any rank says so (SIGTERM, time limit): all ranks leave at the same step."""
    if world == 1:
        return local
    import torch.distributed as dist

    flag = torch.tensor([1.0 if local else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def barrier(world: int) -> None:
    """Every rank waits here until all have arrived."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def from_rank0(obj, world: int):
    """Rank 0's ``obj`` on every rank."""
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ShardLoss(torch.nn.Module):
    """The loss of this rank's share of a batch, as a module for DistributedDataParallel (the
    trainer's network is the only registered child, so checkpoints keep their plain keys)."""

    def __init__(self, trainer: "Trainer"):
        super().__init__()
        self.net = trainer.net
        object.__setattr__(self, "_trainer", trainer)

    def forward(self, batch):
        tr = self._trainer
        return tr.loss(self.net, batch, tr.gen, tr.cfg.teacher_forcing, shard=(tr.rank, tr.world))[0]

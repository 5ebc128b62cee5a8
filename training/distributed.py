"""Several GPUs, one entry point: `torchrun --nproc_per_node N -m training.train ...`.

torchrun starts N processes and sets RANK, LOCAL_RANK and WORLD_SIZE; without them
training runs in one process exactly as before. Every rank draws the same shuffled
order from the same (seed, epoch) and keeps every N-th row of it, so an epoch still
visits each training image once; its augmentations it draws from a seed of its own
(`rank_seed`), or the i-th image of every rank would get the same crop, flip and jitter.
DistributedDataParallel averages the gradients, so every rank steps to the same
weights. Rank 0 alone logs, prints and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the GPU of this process on its machine

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = World()
RANK_SEED_STRIDE = 0x9E3779B97F4A7C15 % 2**62  # odd (2^64 / golden ratio): rank x stride is distinct for every rank


def rank_seed(seed: int, world: World) -> int:
    """This rank's seed for draws that must differ between ranks (augmentations, dropout).

    Rank 0 keeps `seed`, so a single process draws exactly what it drew before there were
    several; rank r flips bits of it by r x RANK_SEED_STRIDE, a different pattern per rank.
    """
    return seed ^ (world.rank * RANK_SEED_STRIDE) % 2**62


def init_world() -> World:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); one process without torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return SINGLE
    world = World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ["LOCAL_RANK"]))
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world


def close_world(world: World) -> None:
    if world.size > 1:
        dist.destroy_process_group()


def shard(order: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's share of an epoch's row order.

    The order wraps around to a multiple of the world size, so every rank takes the same
    number of batches: DDP steps all ranks in lockstep, and a rank with one batch more
    would wait forever for the others' gradients.
    """
    if world.size == 1:
        return order
    padded = torch.cat([order, order.repeat(world.size)[: (-len(order)) % world.size]])
    return padded[world.rank :: world.size]


def wrap(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """The module the training loop calls: DDP over `model` when there are several processes (same parameters)."""
    if world.size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def from_main(value: T, world: World) -> T:
    """Rank 0's `value` on every rank (a picklable object), so decisions such as early stopping agree everywhere."""
    if world.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]

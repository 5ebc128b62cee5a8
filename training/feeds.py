"""Pixel feeds for the models trained from images (the basic CNN; fine-tuning with train.finetune).

Pixels come from the image files (PIL decode + augment per image in DataLoader workers;
the default) or, with `train.cached_pixels: true`, from the pixel cache stage's uint8
shards (`--pixel-cache`): whole batches are copied from pinned memory to the device and
cropped, flipped and normalised there (training/gpu_augment.py). PIL cannot decode fast
enough to feed one GPU (notes section 5). Under torchrun each rank reads its own shard
of every epoch's shuffle and draws its own augmentations.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader
from torchvision.transforms import v2

from common.pixel_shards import PixelStore
from training.data import CachedPixelBatches, ImageDataset, device_train_augment, eval_transform, train_transform
from training.distributed import World, rank_seed, shard
from training.engine import Batches
from training.gpu_augment import eval_batch
from training.settings import TrainSettings

Norm = tuple[int, tuple[float, ...], tuple[float, ...]]  # input size, mean, std
Feeds = tuple[Callable[[torch.Generator], Batches], Callable[[], Batches]]


@dataclass(frozen=True)
class StageInputs:
    """What every model reads from the curation outputs, in dataset row order."""

    table: pd.DataFrame
    targets: torch.Tensor  # (N, C) 0/1
    split: dict[str, np.ndarray]  # split name -> row mask
    embeddings: torch.Tensor  # (C, d) word vectors
    adjacency: torch.Tensor  # (C, C) the graph stage's adjacency_norm


def file_feeds(
    inputs: StageInputs,
    paths: argparse.Namespace,
    settings: TrainSettings,
    norm: Norm,
    device: torch.device,
    world: World,
) -> Feeds:
    """Batches decoded from the image files with PIL and augmented per image in DataLoader workers."""
    files = [paths.crawl_dir / p for p in inputs.table["path"]]

    def subset(s: str, transform: v2.Compose) -> ImageDataset:
        return ImageDataset(
            [f for f, keep in zip(files, inputs.split[s], strict=True) if keep],
            inputs.targets[inputs.split[s]].numpy(),
            transform,
            vetted=True,
        )

    train_set, val_set = subset("train", train_transform(*norm)), subset("val", eval_transform(*norm))
    loader: dict[str, Any] = dict(
        batch_size=settings.batch_size,
        num_workers=settings.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )

    def train_batches(g: torch.Generator) -> Batches:
        sampler = shard(torch.randperm(len(train_set), generator=g), world).tolist()
        return DataLoader(
            train_set,
            sampler=sampler,
            generator=g,
            worker_init_fn=partial(reseed_worker_for_rank, world=world),
            **loader,
        )

    return train_batches, lambda: DataLoader(val_set, **loader)


def reseed_worker_for_rank(worker_id: int, world: World) -> None:
    """DataLoader worker_init_fn: this rank's own augmentations (the loader seeded its workers from the shuffle
    generator that all ranks share)."""
    torch.manual_seed(rank_seed(torch.initial_seed(), world))


def cached_pixel_feeds(
    inputs: StageInputs,
    paths: argparse.Namespace,
    settings: TrainSettings,
    norm: Norm,
    device: torch.device,
    world: World,
) -> Feeds:
    """uint8 batches from the pixel cache, copied from pinned memory and augmented on `device`.

    Each epoch's device-side crops and flips come from a generator seeded by the epoch's
    generator, so a resumed run draws the same augmentations as an uninterrupted one.
    """
    store = PixelStore(paths.pixel_cache)
    height, width = next(iter(store.shards.values())).shape[1:3]
    if min(height, width) < norm[0]:
        warnings.warn(
            f"the pixel cache holds {height}x{width} pictures, smaller than the {norm[0]} px input: training "
            f"upsamples them; set pixel_cache.height/width >= {norm[0]} and rebuild it",
            stacklevel=2,
        )
    ids = inputs.table["image_id"].astype(str).to_numpy()

    def subset(s: str) -> CachedPixelBatches:
        return CachedPixelBatches(store, list(ids[inputs.split[s]]), inputs.targets[inputs.split[s]].numpy())

    train_set, val_set = subset("train"), subset("val")
    load = partial(cached_pixel_loader, batch_size=settings.batch_size, workers=settings.workers, device=device)

    def train_batches(g: torch.Generator) -> Batches:
        order = shard(torch.randperm(len(train_set), generator=g), world)
        augment_seed = rank_seed(int(torch.randint(2**62, (), generator=g)), world)
        augment = device_train_augment(
            *norm, generator=torch.Generator(device).manual_seed(augment_seed), fused=settings.compile
        )
        return on_device(load(train_set, order), device, augment)

    return train_batches, lambda: on_device(
        load(val_set, torch.arange(len(val_set))), device, partial(eval_batch, size=norm[0], mean=norm[1], std=norm[2])
    )


def cached_pixel_loader(
    dataset: CachedPixelBatches, order: torch.Tensor, batch_size: int, workers: int, device: torch.device
) -> DataLoader:
    """uint8 batches of `dataset` in `order`, gathered by `workers` processes, pinned for asynchronous copies on
    CUDA."""
    sampler = BatchSampler(order.tolist(), batch_size, drop_last=False)
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda")


def on_device(
    batches: Batches, device: torch.device, augment: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Copy each uint8 pixel batch to `device` and augment it there; targets stay where they are.

    On CUDA the copy of the next batch is issued on a side stream before this one is handed
    out, so it runs during this batch's training step. On the compute stream it would queue
    behind the step and leave the GPU idle while ~100 MB (128 pictures at 448 px) cross PCIe.
    """
    if device.type != "cuda":
        for pixels, targets in batches:
            yield augment(pixels.to(device)), targets
        return
    copies, compute = torch.cuda.Stream(device), torch.cuda.current_stream(device)

    def upload(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event]:
        with torch.cuda.stream(copies):
            on_gpu = pixels.to(device, non_blocking=True)  # asynchronous: the loader pinned `pixels`
            return on_gpu, copies.record_event()

    def handed_out(
        pixels: torch.Tensor, copied: torch.cuda.Event, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        compute.wait_event(copied)  # this batch's copy only, not the next one's
        pixels.record_stream(compute)  # its memory is not reused before the step has read it
        return augment(pixels), targets

    pending = None  # (pixels, copied, targets) of the batch uploaded but not yet handed out
    for pixels, targets in batches:
        uploaded = (*upload(pixels), targets)
        if pending is not None:
            yield handed_out(*pending)
        pending = uploaded
    if pending is not None:
        yield handed_out(*pending)

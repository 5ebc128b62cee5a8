"""The loops every model shares: one training epoch, scoring a split (with the test-time flip), validation metrics.

The training loop never waits for the device: the loss is summed on the device and read
once per epoch. Scoring runs a model in the precision it was trained in (autocast).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.device import autocast, to_device
from training.distributed import SINGLE, World, shard
from training.losses import LossFunction, binary_cross_entropy
from training.metrics import mean_average_precision, topk_hits

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def feature_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None,
    mirrored: torch.Tensor | None = None,
    world: World = SINGLE,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of cached features, as float32: shuffled (this rank's shard) when a generator is given, each row
    mirrored with probability 1/2.

    `x` may be pooled vectors (N, D) or feature maps (N, D, h, w), kept in fp16 to halve their memory.
    """
    order = shard(torch.randperm(len(x), generator=generator), world) if generator is not None else torch.arange(len(x))
    flip = torch.rand(len(x), generator=generator) < 0.5 if mirrored is not None and generator is not None else None
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        rows = x[index]
        if flip is not None and mirrored is not None:
            rows = torch.where(flip[index].view(-1, *[1] * (x.dim() - 1)), mirrored[index], rows)
        yield rows.float(), y[index]


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    desc: str | None,
    precision: str = "bf16",
    set_rates: Callable[[int], None] | None = None,
    loss: LossFunction = binary_cross_entropy,
) -> float:
    """One pass of training with `loss` (summed over a batch's images and labels); returns the mean loss per (image,
    label).

    The loss sum stays on the device (float64, as exact as summing Python floats) and is
    read once at the end: a `.item()` per batch would stall the GPU every step.
    `desc` None hides the progress bar (ranks other than 0). `set_rates(i)`, if given,
    runs before the i-th optimizer step (learning-rate warm-up).
    """
    model.train()
    total, count, n_labels = torch.zeros((), dtype=torch.float64, device=device), 0, 1
    for step, (inputs, targets) in enumerate(
        tqdm(batches, desc=desc, unit="batch", leave=False, disable=None if desc else True)
    ):
        inputs, targets = to_device(inputs, device), targets.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(inputs)
        summed = loss(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        (summed / len(targets)).backward()
        if set_rates is not None:
            set_rates(step)
        optimizer.step()
        total += summed.detach()
        count, n_labels = count + len(targets), targets.shape[1]
    return total.item() / max(count, 1) / n_labels


@torch.inference_mode()
def predict_probs(
    model: nn.Module, batches: Batches, device: torch.device, precision: str = "bf16", mirror: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores and targets of every batch, as (N, C) arrays.

    `mirror`: each image's score is the mean of its own and its mirror image's (the inputs
    are images, flipped along their width; for cached features see `mirrored_mean`).
    """
    model.eval()
    probs, targets = [], []
    for inputs, y in batches:
        inputs = to_device(inputs, device)
        views = (inputs, inputs.flip(-1)) if mirror else (inputs,)
        scores = []
        for view in views:
            with autocast(device, precision):
                scores.append(torch.sigmoid(model(view).float()))
        probs.append(torch.stack(scores).mean(dim=0).cpu().numpy())
        targets.append(y.numpy())
    return np.concatenate(probs), np.concatenate(targets)


def mirrored_mean(
    score: Callable[[torch.Tensor], np.ndarray], x: torch.Tensor, mirrored: torch.Tensor | None
) -> np.ndarray:
    """`score(x)`, averaged with `score(mirrored)` (the features of the same images mirrored) when those are given:
    test-time flip on cached features."""
    probs = score(x)
    return probs if mirrored is None else (probs + score(mirrored)) / 2


def validation_metrics(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    eps = 1e-7
    clipped = np.clip(probs, eps, 1 - eps)
    bce = float(-np.mean(targets * np.log(clipped) + (1 - targets) * np.log(1 - clipped)))
    metrics = {"loss": bce, "mAP": mean_average_precision(probs, targets)}
    return metrics | {name: float(hits.mean()) for name, hits in topk_hits(probs, targets).items()}

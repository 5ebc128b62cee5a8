"""Learning-rate schedule: rates scaled with the global batch, a linear warm-up, and the check that fine-tuning takes
enough steps per epoch."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from training.distributed import World

REFERENCE_BATCH = 32  # the batch size the paper's learning rates (lr_backbone, lr_head) go with
LR_SCALINGS = ("none", "sqrt", "linear")


def lr_factor(rule: str, global_batch: int) -> float:
    """Multiplier of the paper's learning rates for `global_batch` images per optimizer step.

    "sqrt" is the square-root rule for Adam (Malladi et al. 2022); "linear" is the
    SGD rule (Goyal et al. 2017), which for Adam overshoots: at batch 256 it would
    fine-tune the pretrained backbone at 8e-4.
    """
    ratio = global_batch / REFERENCE_BATCH
    return {"none": 1.0, "sqrt": math.sqrt(ratio), "linear": ratio}[rule]


@dataclass(frozen=True)
class LinearWarmup:
    """Learning rates that rise linearly over a run's first `steps` optimizer steps, then stay at each group's rate.

    Adam moves every weight by about its learning rate on its first steps, whatever the
    gradient's size. Under a freshly initialised GCN head on a pretrained backbone that
    overshoots: one step at the paper's rates took the CCP fine-tuning loss from 1.28 to
    9.8, more at large batches with scaled rates (docs/speed.md, 'Learning rates with larger batches').
    """

    base_lrs: tuple[float, ...]  # each parameter group's rate after warm-up
    steps: int
    steps_per_epoch: int

    def setter(self, optimizer: torch.optim.Optimizer, epoch: int) -> Callable[[int], None] | None:
        """Sets the rates before batch i of `epoch`; None when warm-up ended before this epoch (the rates stay where its
        last step left them)."""
        first = epoch * self.steps_per_epoch
        if first >= self.steps:
            return None

        def set_rates(batch: int) -> None:
            factor = min(1.0, (first + batch + 1) / self.steps)
            for group, lr in zip(optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = lr * factor

        return set_rates


def steps_per_epoch(n_train: int, batch_size: int, world: World) -> int:
    """Optimizer steps per epoch on each rank (shard() gives every rank ceil(n / ranks) rows)."""
    return math.ceil(math.ceil(n_train / world.size) / batch_size)


MIN_FINETUNE_STEPS = 20  # per epoch; docs/speed.md, 'How large a batch: enough steps per epoch'


def few_steps_warning(steps: int, n_train: int, global_batch: int) -> str | None:
    """A warning when fine-tuning takes too few optimizer steps per epoch to match the small-batch loop's accuracy.

    On the CCP benchmark (1,142 training photos, 12 epochs) batch 128, 9 steps an epoch, lost
    3-5 mAP points against batch 16 (3.3 and 3.6 in two seeds since the device crops match
    torchvision's; 2 with a 4-epoch warm-up); batch 32, 36 steps, lost none measurable. Adam's first steps overshoot
    under the new GCN head, and a run with few steps spends a large share of them recovering.
    """
    if steps >= MIN_FINETUNE_STEPS:
        return None
    return (
        f"fine-tuning at a global batch of {global_batch} takes {steps} optimizer steps per epoch on {n_train} "
        f"training images; below {MIN_FINETUNE_STEPS} the CCP benchmark lost accuracy (3-5 mAP points at 9 steps): "
        f"lower train.batch_size to at most {max(1, n_train // MIN_FINETUNE_STEPS)} or train more epochs"
        " (docs/speed.md, 'How large a batch')"
    )

"""Multi-label training losses: binary cross-entropy (the paper's) and the asymmetric loss (ASL).

Each returns the loss SUMMED over images and labels; the training loop divides by the
batch size for the gradient and by images x labels for the reported mean.

ASL (Ben-Baruch et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021):
a multi-label photo has few positive labels and many negatives, and the easy negatives
dominate BCE's gradient. ASL focuses the two sides separately and shifts the negatives'
probability down by a margin `clip`, so a negative scored below `clip` costs nothing:

    L+ = (1 - p)^gamma_pos * log(p)
    L- = p_m^gamma_neg * log(1 - p_m),  p_m = max(p - clip, 0)
    loss = -sum(y * L+ + (1 - y) * L-)

With gamma_pos = gamma_neg = clip = 0 it is BCE. The focusing weights carry gradient, as
in the paper's equations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.settings import ParamsError

LOSSES = ("bce", "asl")
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, 0/1 targets) -> summed loss


@dataclass(frozen=True)
class AsymmetricLoss:
    gamma_neg: float = 4.0  # focusing of negatives (the paper's default)
    gamma_pos: float = 0.0  # focusing of positives
    clip: float = 0.05  # probability margin shifted off every negative

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)  # log(p), log(1 - p) without overflow
        p = log_p.exp()
        if self.clip > 0:
            shifted = (p - self.clip).clamp(min=0)
            p_neg, log_not_p_neg = shifted, torch.log1p(-shifted.clamp(max=1 - 1e-6))
        else:
            p_neg, log_not_p_neg = p, log_not_p
        positive = (1 - p).pow(self.gamma_pos) * log_p
        negative = p_neg.pow(self.gamma_neg) * log_not_p_neg
        return -(targets * positive + (1 - targets) * negative).sum()


def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")


def make_loss(name: str, asl: AsymmetricLoss) -> LossFunction:
    """The loss called `name` (train.loss, or a model's own `loss`)."""
    if name not in LOSSES:
        raise ParamsError(f"loss {name!r} is not one of {LOSSES} (train.loss or a model's loss in params.yaml)")
    return asl if name == "asl" else binary_cross_entropy

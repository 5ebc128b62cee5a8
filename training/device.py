"""Where models run: CUDA with bf16 autocast and channels-last when present, else the same code on CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import nn


def pick_device(local_rank: int = 0) -> torch.device:
    """This process's GPU (`local_rank` under torchrun), else the CPU."""
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to `device`; channels-last memory layout on CUDA (faster convolutions under bf16)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def adam(params: Iterable[Any], device: torch.device) -> torch.optim.Adam:
    """Adam over parameters or parameter groups; on CUDA the fused kernel (one launch for all tensors)."""
    return torch.optim.Adam(params, fused=device.type == "cuda")


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return (
        images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" and images.dim() == 4 else images
    )


PRECISIONS = ("bf16", "bf16-all", "fp32")  # the values of train.precision (see autocast)


def autocast(device: torch.device, precision: str = "bf16") -> contextlib.AbstractContextManager:
    """bf16 autocast for `precision` (train.precision): "bf16" on CUDA only, "bf16-all" on the CPU too, "fp32" never.

    Plain "bf16" leaves the CPU in fp32 because most CPUs have no bf16 arithmetic and run
    it slower; "bf16-all" is for those that do (AVX512-BF16 or AMX: 1.7x fp32 when
    training on a 2-core AMD Zen 4 slice), and for testing bf16 numerics without a GPU.
    """
    enabled = precision == "bf16-all" or (precision == "bf16" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def compile_for_training(model: nn.Module) -> nn.Module:
    """`model` under torch.compile with static shapes (dynamic=False).

    An epoch has two batch sizes, the full one and a smaller last one; static shapes give
    each its own specialised graph (one extra compile) instead of recompiling the model
    with a symbolic batch dimension. (Suspected once in the NaN of compiled fine-tuning;
    the cause was `amax` pooling, see training/models.py global_pool.)
    """
    return cast(nn.Module, torch.compile(model, dynamic=False))  # an OptimizedModule: typed as any callable

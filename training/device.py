"""Where models run: CUDA with bf16 autocast and channels-last when present, else the same code on CPU."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def pick_device(local_rank: int = 0) -> torch.device:
    """This process's GPU (`local_rank` under torchrun), else the CPU."""
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to `device`; channels-last memory layout on CUDA (faster convolutions under bf16)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" and images.dim() == 4 else images


def autocast(device: torch.device, bf16: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA unless `bf16` is off; a no-op on CPU (CPU bf16 is slower than fp32 on most machines)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and bf16 else contextlib.nullcontext()


def compile_for_training(model: nn.Module) -> nn.Module:
    """`model` under torch.compile with static shapes (dynamic=False).

    An epoch has two batch sizes, the full one and a smaller last one; static shapes give
    each its own specialised graph (one extra compile) instead of recompiling the model
    with a symbolic batch dimension. (Suspected once in the NaN of compiled fine-tuning;
    the cause was `amax` pooling, see training/models.py global_pool.)
    """
    return torch.compile(model, dynamic=False)

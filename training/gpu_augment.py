"""Augmentation as batched tensor ops, so it runs on the GPU next to the model.

Input: a uint8 batch (N, H, W, 3) straight from the pixel cache. Output: float
(N, 3, S, S), normalised, channels-last. Random resized crops for the whole batch
are one `roi_align` call (bilinear, like torchvision's RandomResizedCrop), flips are
one `torch.where`: no per-image Python work and no host-device sync in the loop.
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align


def random_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """(n, 4) crop boxes x0, y0, x1, y1 with area share in `scale` and aspect ratio in `ratio`."""
    area = torch.empty(n, device=device).uniform_(*scale, generator=generator) * height * width
    log_ratio = torch.empty(n, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(area * aspect).clamp(8, width)
    h = torch.sqrt(area / aspect).clamp(8, height)
    x0 = torch.rand(n, device=device, generator=generator) * (width - w)
    y0 = torch.rand(n, device=device, generator=generator) * (height - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def to_float_nchw(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.permute(0, 3, 1, 2).float().div_(255)


def normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(x - mean) / std per channel, in place, with Python scalars.

    Mean and std tensors built from Python lists would be copied host -> device on every
    batch, and a blocking copy waits for the GPU to drain: the training loop would stall.
    """
    for channel, (m, s) in enumerate(zip(mean, std, strict=True)):
        images[:, channel].sub_(m).div_(s)
    return images.contiguous(memory_format=torch.channels_last)


def train_batch(
    pixels: torch.Tensor,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random resized crop to size x size, horizontal flip with p = 0.5, normalise."""
    n, height, width, _ = pixels.shape
    images = to_float_nchw(pixels)
    boxes = random_boxes(n, height, width, scale, ratio, generator, pixels.device)
    rois = torch.cat([torch.arange(n, device=pixels.device, dtype=boxes.dtype).unsqueeze(1), boxes], dim=1)
    crops = roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = torch.rand(n, device=pixels.device, generator=generator) < 0.5
    crops = torch.where(flip.view(n, 1, 1, 1), crops.flip(-1), crops)
    return normalise(crops, mean, std)


def eval_batch(pixels: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Plain resize of the whole picture to size x size (the reference code's evaluation), normalise."""
    images = torch.nn.functional.interpolate(to_float_nchw(pixels), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalise(images, mean, std)

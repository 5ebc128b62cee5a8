"""Augmentation as batched tensor ops, so it runs on the GPU next to the model.

Input: a uint8 batch (N, H, W, 3) straight from the pixel cache. Output: float
(N, 3, S, S), normalised, channels-last. Random resized crops for the whole batch
are one `roi_align` call (bilinear, like torchvision's RandomResizedCrop), flips are
one `torch.where`, colour jitter is three broadcast blends with per-image factors: no
per-image Python work and no host-device sync in the loop. The PIL path
(training.data.train_transform) draws the same kinds of augmentation with the same
strengths, so both paths train the same model.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torchvision.ops import roi_align

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


class Jitter(NamedTuple):
    """Colour jitter strengths: each factor is drawn uniformly from [max(0, 1 - s), 1 + s] (torchvision's ColorJitter)."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0


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


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of (N, 3, H, W) RGB images in [0, 1]."""
    r, g, b = images.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * images + (1 - factor) * other, clamped to [0, 1] (torchvision's _blend)."""
    return (factor * images + (1 - factor) * other).clamp_(0, 1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (images * factor).clamp_(0, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Towards (factor < 1) or away from each image's mean luma."""
    return blend(images, grayscale(images).mean((1, 2, 3), keepdim=True), factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Towards (factor < 1) or away from each pixel's luma."""
    return blend(images, grayscale(images), factor)


def color_jitter(images: torch.Tensor, jitter: Jitter, generator: torch.Generator | None) -> torch.Tensor:
    """Brightness, contrast and saturation with a factor per image, on (N, 3, H, W) images in [0, 1].

    torchvision's ColorJitter applies the three in a random order per image; here the order
    is fixed (brightness, contrast, saturation), which draws from nearly the same
    distribution without splitting the batch. Zero strengths leave the images unchanged.
    """
    n = images.shape[0]

    def factors(strength: float) -> torch.Tensor:
        return torch.empty(n, 1, 1, 1, device=images.device).uniform_(max(0.0, 1 - strength), 1 + strength, generator=generator)

    images = adjust_brightness(images, factors(jitter.brightness))
    images = adjust_contrast(images, factors(jitter.contrast))
    return adjust_saturation(images, factors(jitter.saturation))


def train_batch(
    pixels: torch.Tensor,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    jitter: Jitter = Jitter(),
) -> torch.Tensor:
    """Random resized crop to size x size, horizontal flip with p = 0.5, colour jitter, normalise."""
    n, height, width, _ = pixels.shape
    images = to_float_nchw(pixels)
    boxes = random_boxes(n, height, width, scale, ratio, generator, pixels.device)
    rois = torch.cat([torch.arange(n, device=pixels.device, dtype=boxes.dtype).unsqueeze(1), boxes], dim=1)
    crops = roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = torch.rand(n, device=pixels.device, generator=generator) < 0.5
    crops = torch.where(flip.view(n, 1, 1, 1), crops.flip(-1), crops)
    return normalise(color_jitter(crops, jitter, generator), mean, std)


def eval_batch(pixels: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Plain resize of the whole picture to size x size (the reference code's evaluation), normalise."""
    images = torch.nn.functional.interpolate(to_float_nchw(pixels), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalise(images, mean, std)

"""Augmentation as batched tensor ops, so it runs on the GPU next to the model.

Input: a uint8 batch (N, H, W, 3) straight from the pixel cache. Output: float
(N, 3, S, S), normalised, channels-last. Random resized crops for the whole batch
are one `roi_align` call (boxes drawn as torchvision's RandomResizedCrop draws them;
bilinear, averaging over each output pixel's footprint when shrinking), flips are
one `torch.where`, colour jitter is three broadcast blends with per-image factors: no
per-image Python work and no host-device sync in the loop. The PIL path
(training.data.train_transform) draws the same kinds of augmentation with the same
strengths, so both paths train the same model.

Everything after the crop (`finish_crops`: flip, jitter, normalise) is per-pixel work
that eager PyTorch runs as some 25 kernels, each a full pass over the batch in memory
(by our count ~12 GB of memory traffic at 128 x 448 px: an estimated ~5 ms, some 5% of a
ResNet-50 step on an H100).
`train_batch(..., fused=True)` runs it through torch.compile instead: one pass.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torchvision.ops import roi_align

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


class Jitter(NamedTuple):
    """Colour jitter strengths: each factor is drawn uniformly from [max(0, 1 - s), 1 + s] (torchvision's
    ColorJitter)."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0


NO_JITTER = Jitter()


def random_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None,
    device: torch.device,
    attempts: int = 10,
) -> torch.Tensor:
    """(n, 4) crop boxes x0, y0, x1, y1 drawn as torchvision's RandomResizedCrop draws them.

    Each image gets `attempts` candidates (area share in `scale`, log-uniform aspect ratio
    w/h in `ratio`) and keeps the first that fits inside the picture; if none does, the
    centre crop of the whole picture squeezed into `ratio`. Clamping a candidate to the
    picture instead would skew the crops: on 2:3 portraits with the project's crop
    settings, 39% of the crops came out full-width against torchvision's 7%.
    """
    area = torch.empty(n, attempts, device=device).uniform_(*scale, generator=generator) * height * width
    aspect = torch.exp(
        torch.empty(n, attempts, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    )
    w, h = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
    fits = (w <= width) & (h <= height)
    first = fits.int().argmax(1, keepdim=True)  # the first fitting candidate (argmax returns the first maximum)
    found = fits.any(1)
    fallback_w, fallback_h = centre_crop_size(height, width, ratio)
    w = torch.where(found, w.gather(1, first).squeeze(1), fallback_w)
    h = torch.where(found, h.gather(1, first).squeeze(1), fallback_h)
    x0 = torch.where(found, torch.rand(n, device=device, generator=generator) * (width - w), (width - w) / 2)
    y0 = torch.where(found, torch.rand(n, device=device, generator=generator) * (height - h), (height - h) / 2)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def centre_crop_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[float, float]:
    """RandomResizedCrop's fallback: the largest box of the whole picture whose w/h lies within `ratio`."""
    if width / height < ratio[0]:
        return float(width), width / ratio[0]
    if width / height > ratio[1]:
        return height * ratio[1], float(height)
    return float(width), float(height)


def to_float_nchw(pixels: torch.Tensor, scale: float = 1 / 255) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 times `scale`, contiguous: roi_align copies any other layout first."""
    images = pixels.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    return images.mul_(scale) if scale != 1 else images


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


def jitter_factors(n: int, jitter: Jitter, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """(3, n, 1, 1, 1): a brightness, contrast and saturation factor per image, each uniform in [max(0, 1 - s), 1 + s].

    Drawn with Python-scalar bounds: bound tensors built on the host would be copied to
    the device on every batch (see `normalise`).
    """
    return torch.stack(
        [torch.empty(n, 1, 1, 1, device=device).uniform_(max(0.0, 1 - s), 1 + s, generator=generator) for s in jitter]
    )


def jittered(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, then saturation of (N, 3, H, W) images in [0, 1], with `jitter_factors`.

    torchvision's ColorJitter applies the three in a random order per image; here the order
    is fixed, which draws from nearly the same distribution without splitting the batch.
    """
    brightness, contrast, saturation = factors
    return adjust_saturation(adjust_contrast(adjust_brightness(images, brightness), contrast), saturation)


def finish_crops(
    crops: torch.Tensor, flip: torch.Tensor, factors: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """Per-pixel tail of `train_batch` on (N, 3, S, S) crops in [0, 255]: scale to [0, 1], mirror where `flip`, jitter,
    normalise.

    No random draws and no Python branching on values, so torch.compile traces it whole.
    """
    crops = crops * (1 / 255)
    crops = torch.where(flip.view(-1, 1, 1, 1), crops.flip(-1), crops)
    return normalise(jittered(crops, factors), mean, std)


@functools.cache
def fused_finish_crops() -> Callable[..., torch.Tensor]:
    """`finish_crops` compiled into one kernel (static shapes: an epoch's last, smaller batch compiles once more)."""
    return torch.compile(finish_crops, dynamic=False, fullgraph=True)


def train_batch(
    pixels: torch.Tensor,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    jitter: Jitter = NO_JITTER,
    fused: bool = False,
) -> torch.Tensor:
    """Random resized crop to size x size, horizontal flip with p = 0.5, colour jitter, normalise; `fused`: the tail
    compiled."""
    n, height, width, _ = pixels.shape
    boxes = random_boxes(n, height, width, scale, ratio, generator, pixels.device)
    rois = torch.cat([torch.arange(n, device=pixels.device, dtype=boxes.dtype).unsqueeze(1), boxes], dim=1)
    flip = torch.rand(n, device=pixels.device, generator=generator) < 0.5
    factors = jitter_factors(n, jitter, generator, pixels.device)
    # sampling_ratio=0: ceil(footprint) samples per output pixel, one when enlarging; a fixed 2 x 2 grid blurred every
    # crop
    crops = roi_align(
        to_float_nchw(pixels, scale=1),
        rois,
        output_size=(size, size),
        spatial_scale=1.0,
        sampling_ratio=0,
        aligned=True,
    )
    return (fused_finish_crops() if fused else finish_crops)(crops, flip, factors, mean, std)


def eval_batch(pixels: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Plain resize of the whole picture to size x size (the reference code's evaluation), normalise."""
    images = torch.nn.functional.interpolate(
        to_float_nchw(pixels), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return normalise(images, mean, std)

"""GPU-side augmentation, checked on the CPU (the same tensor ops): shapes, ranges, flips."""

from __future__ import annotations

import torch

from training.gpu_augment import eval_batch, random_boxes, train_batch

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def pixels(n=6, h=80, w=60) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g)


def test_train_batch_shape_range_layout_and_reproducibility():
    batch = pixels()
    out = train_batch(batch, 32, MEAN, STD, generator=torch.Generator().manual_seed(1))
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.min() >= -1.0 - 1e-5 and out.max() <= 1.0 + 1e-5  # (x/255 - 0.5) / 0.5
    again = train_batch(batch, 32, MEAN, STD, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    other = train_batch(batch, 32, MEAN, STD, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(out, other)


def test_boxes_stay_inside_the_picture_with_the_asked_area():
    boxes = random_boxes(500, 80, 60, (0.35, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 2] <= 60 + 1e-4).all() and (boxes[:, 3] <= 80 + 1e-4).all()
    share = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (80 * 60)
    assert share.max() <= 1.0 + 1e-4 and share.min() > 0.1


def test_about_half_the_crops_are_mirrored():
    left_dark = torch.zeros(400, 40, 40, 3, dtype=torch.uint8)
    left_dark[:, :, 20:] = 255  # dark left half, bright right half
    out = train_batch(left_dark, 16, MEAN, STD, scale=(0.99, 1.0), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0))
    mirrored = (out[:, 0, 8, 0] > out[:, 0, 8, -1]).float().mean()
    assert 0.4 < mirrored < 0.6


def test_eval_batch_is_a_plain_resize():
    flat = torch.full((2, 50, 40, 3), 255, dtype=torch.uint8)
    out = eval_batch(flat, 24, MEAN, STD)
    assert out.shape == (2, 3, 24, 24) and torch.allclose(out, torch.ones_like(out))

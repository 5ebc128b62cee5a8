"""GPU-side augmentation, checked on the CPU (the same tensor ops): shapes, ranges, flips, crops as torchvision draws
them, the fused tail."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import RandomResizedCrop
from torchvision.transforms.v2 import functional as F

from training.data import CROP_RATIO, CROP_SCALE
from training.gpu_augment import (
    Jitter,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    eval_batch,
    jitter_factors,
    jittered,
    random_boxes,
    train_batch,
)

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
    boxes = random_boxes(
        500, 80, 60, (0.35, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0), torch.device("cpu")
    )
    assert (
        (boxes[:, 0] >= 0).all()
        and (boxes[:, 1] >= 0).all()
        and (boxes[:, 2] <= 60 + 1e-4).all()
        and (boxes[:, 3] <= 80 + 1e-4).all()
    )
    share = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (80 * 60)
    assert share.max() <= 1.0 + 1e-4 and share.min() > 0.1


def test_crops_are_distributed_as_torchvision_random_resized_crops():
    """2:3 portraits with the project's crop settings: many candidates do not fit and must be redrawn, not clamped."""
    height, width, n = 336, 224, 20000
    ours = random_boxes(n, height, width, CROP_SCALE, CROP_RATIO, torch.Generator().manual_seed(0), torch.device("cpu"))
    ours_w, ours_h = ours[:, 2] - ours[:, 0], ours[:, 3] - ours[:, 1]
    torch.manual_seed(0)
    picture = torch.zeros(3, height, width)
    theirs = torch.tensor(
        [RandomResizedCrop.get_params(picture, list(CROP_SCALE), list(CROP_RATIO)) for _ in range(n)],
        dtype=torch.float32,
    )
    theirs_h, theirs_w = theirs[:, 2], theirs[:, 3]
    for ours_stat, theirs_stat, tolerance in (
        ((ours_w * ours_h).mean() / (height * width), (theirs_w * theirs_h).mean() / (height * width), 0.01),
        ((ours_w / ours_h).mean(), (theirs_w / theirs_h).mean(), 0.01),
        (
            (ours_w > 0.99 * width).float().mean(),
            (theirs_w > 0.99 * width).float().mean(),
            0.03,
        ),  # clamping gave 0.39 against 0.07
    ):
        assert abs(ours_stat - theirs_stat) < tolerance


def test_crops_fall_back_to_the_centre_when_no_candidate_fits():
    boxes = random_boxes(
        8, 80, 60, (1.0, 1.0), (2.0, 2.0), torch.Generator().manual_seed(0), torch.device("cpu")
    )  # 2:1 boxes of the whole area never fit
    assert torch.allclose(boxes, torch.tensor([0.0, 25.0, 60.0, 55.0]).expand(8, 4))  # full width, h = w / 2, centred


def test_a_whole_picture_crop_at_its_own_size_is_the_picture_itself():
    """roi_align samples adaptively: one bilinear sample per output pixel when not shrinking (a fixed 2 x 2 grid blurred
    every crop)."""
    batch = pixels(n=4, h=40, w=40)
    out = train_batch(
        batch, 40, MEAN, STD, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0)
    )
    picture = (batch.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    for i in range(4):
        assert torch.allclose(out[i], picture[i], atol=1e-5) or torch.allclose(out[i], picture[i].flip(-1), atol=1e-5)


def test_about_half_the_crops_are_mirrored():
    left_dark = torch.zeros(400, 40, 40, 3, dtype=torch.uint8)
    left_dark[:, :, 20:] = 255  # dark left half, bright right half
    out = train_batch(
        left_dark, 16, MEAN, STD, scale=(0.99, 1.0), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0)
    )
    mirrored = (out[:, 0, 8, 0] > out[:, 0, 8, -1]).float().mean()
    assert 0.4 < mirrored < 0.6


def test_eval_batch_is_a_plain_resize():
    flat = torch.full((2, 50, 40, 3), 255, dtype=torch.uint8)
    out = eval_batch(flat, 24, MEAN, STD)
    assert out.shape == (2, 3, 24, 24) and torch.allclose(out, torch.ones_like(out))


def test_colour_adjustments_match_torchvision_per_image():
    images = torch.rand(3, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    factors = torch.tensor([0.7, 1.0, 1.3])
    for ours, theirs in (
        (adjust_brightness, F.adjust_brightness),
        (adjust_contrast, F.adjust_contrast),
        (adjust_saturation, F.adjust_saturation),
    ):
        batched = ours(images.clone(), factors.view(3, 1, 1, 1))
        for i, factor in enumerate(factors.tolist()):
            assert torch.allclose(batched[i], theirs(images[i], factor), atol=1e-5), (ours.__name__, factor)


def test_colour_jitter_draws_a_factor_per_image_within_the_strength():
    gray = torch.full((200, 3, 4, 4), 0.5)
    out = jittered(
        gray.clone(),
        jitter_factors(
            200, Jitter(brightness=0.3, contrast=0.3, saturation=0.2), torch.Generator().manual_seed(0), gray.device
        ),
    )
    per_image = out[:, 0, 0, 0]
    assert torch.equal(
        out, per_image.view(200, 1, 1, 1).expand_as(out)
    )  # contrast and saturation leave a flat gray picture flat
    assert per_image.min() >= 0.35 - 1e-6 and per_image.max() <= 0.65 + 1e-6 and per_image.unique().numel() > 150
    assert per_image.min() < 0.4 and per_image.max() > 0.6  # the whole +-30% range is used


def test_zero_jitter_leaves_pictures_untouched_and_strong_jitter_stays_in_range():
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(
        jittered(images.clone(), jitter_factors(4, Jitter(), torch.Generator().manual_seed(1), images.device)), images
    )
    batch = pixels()
    plain = train_batch(batch, 32, MEAN, STD, generator=torch.Generator().manual_seed(1))
    strong = train_batch(batch, 32, MEAN, STD, generator=torch.Generator().manual_seed(1), jitter=Jitter(0.9, 0.9, 0.9))
    assert not torch.allclose(plain, strong)
    assert strong.min() >= -1.0 - 1e-5 and strong.max() <= 1.0 + 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: Triton's fused kernel")
        ),
    ],
)
def test_fused_augmentation_draws_and_computes_what_the_eager_one_does(device):
    """train.compile fuses the per-pixel tail with torch.compile (inductor's C++ backend on the CPU, Triton on a
    GPU)."""
    batch = pixels(n=5, h=70, w=56).to(device)
    eager = train_batch(
        batch, 40, MEAN, STD, generator=torch.Generator(device).manual_seed(3), jitter=Jitter(0.3, 0.3, 0.2)
    )
    fused = train_batch(
        batch, 40, MEAN, STD, generator=torch.Generator(device).manual_seed(3), jitter=Jitter(0.3, 0.3, 0.2), fused=True
    )
    assert fused.is_contiguous(memory_format=torch.channels_last) and fused.dtype == eager.dtype
    assert torch.allclose(fused, eager, atol=1e-5)

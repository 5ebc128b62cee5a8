"""Image loading for training: Pillow's bomb guard, and input errors inside DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    error_message,
)
from PIL import Image

from common.cli import InputError, report_user_errors
from training.data import ImageDataset, eval_transform


def test_catalog_images_above_pillows_bomb_limit_load_and_other_pictures_keep_the_guard(tmp_path, monkeypatch):
    Image.new("RGB", (64, 48), "white").save(tmp_path / "big.png")
    monkeypatch.setattr(
        Image, "MAX_IMAGE_PIXELS", 100
    )  # 64 x 48 is a "bomb" to Pillow now; ingest.max_pixels admitted it
    transform = eval_transform(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    catalog_images = ImageDataset([tmp_path / "big.png"], np.zeros((1, 2), np.float32), transform, vetted=True)
    assert catalog_images[0][0].shape == (3, 32, 32)
    assert Image.MAX_IMAGE_PIXELS == 100
    arbitrary_photos = ImageDataset([tmp_path / "big.png"], np.zeros((1, 0), np.float32), transform)  # predict's
    with pytest.raises(InputError, match=f"{tmp_path / 'big.png'}: cannot read image .*decompression bomb"):
        arbitrary_photos[0]


class _UnreadableImages(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int):
        raise InputError("/crawl/b1/x.jpg: cannot read image (OSError: broken data stream); check crawl.dir")


def test_an_input_error_in_a_dataloader_worker_is_reported_without_torchs_traceback(capsys):
    def train_with_a_worker() -> int:
        list(torch.utils.data.DataLoader(_UnreadableImages(), num_workers=1))
        return 0

    assert report_user_errors("train", train_with_a_worker) == 2
    assert (
        error_message(capsys, "train")
        == "/crawl/b1/x.jpg: cannot read image (OSError: broken data stream); check crawl.dir"
    )

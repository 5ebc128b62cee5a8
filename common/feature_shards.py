"""Read side of the features file (the features stage writes it): cached backbone features per image, plain and
mirrored, as the heads of the train, select and evaluate stages read them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.cli import InputError


def extracted_precision(features_meta: dict) -> str:
    """The precision a features file was extracted in; "bf16" (autocast's default then) for files written before it was
    recorded."""
    return features_meta.get("precision", "bf16")


@dataclass(frozen=True)
class CachedFeatures:
    """The rows of a features file for some images, in their order, as a head reads them."""

    x: torch.Tensor  # (N, D) pooled vectors, or (N, D, h, w) fp16 feature maps
    mirrored: torch.Tensor | None  # the same of the mirrored images, where the file holds them and they were asked for
    meta: dict  # how they were extracted (backbone, weights, image size, precision, ...)


def read_features(path: Path, image_ids: Sequence[str], array: str, mirrored: bool) -> CachedFeatures:
    """`array` (max, avg or maps) of `image_ids` from the features file, with their mirrored rows when `mirrored` and
    the file has them.

    InputError names the file when it lacks the array or an image.
    """
    with np.load(path, allow_pickle=False) as npz:
        if array not in npz:
            raise InputError(
                f"{path}: holds no feature maps, which a csra head reads; set features.maps: true (params.yaml) and "
                "re-run the features stage (dvc repro)"
            )
        row = {image_id: i for i, image_id in enumerate(npz["image_id"])}
        missing = [i for i in image_ids if i not in row]
        if missing:
            raise InputError(
                f"{path}: no features for {len(missing)} dataset images (e.g. {missing[0]}); re-run the features stage"
            )
        x = torch.from_numpy(npz[array][[row[i] for i in image_ids]])
        flips = None
        if mirrored and f"{array}_flip" in npz:
            flip_row = {image_id: i for i, image_id in enumerate(npz["flip_image_id"])}
            if lacking := [i for i in image_ids if i not in flip_row]:
                raise InputError(
                    f"{path}: no mirrored features for {len(lacking)} images (e.g. {lacking[0]}), written by an older "
                    "features stage; re-run it (dvc repro features)"
                )
            flips = torch.from_numpy(npz[f"{array}_flip"][[flip_row[i] for i in image_ids]])
        return CachedFeatures(x, flips, json.loads(str(npz["meta"])))

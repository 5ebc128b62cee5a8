"""Inputs of the model stages: the curated dataset, the label subset, the label graph, and image pixels.

The curation stages write `data/dataset.parquet` (one row per image: path, split, main
style, labels), `data/label_subset.json` (class order) and `data/label_graph.npz` (the
normalised adjacency and word vectors the GCN uses). Everything here reads those files
as they are, so the forward pass uses exactly the graph the graph stage wrote.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from common.cli import InputError
from common.decoding import SUPPORTED_MODES, pillow_bomb_guard_lifted, to_rgb, unsupported_mode_reason
from common.pixel_shards import PixelStore
from common.tables import read_table
from training.gpu_augment import Jitter, train_batch

SPLITS = ("train", "val", "test")
CROP_SCALE, CROP_RATIO = (
    (0.6, 1.0),
    (0.6, 1.0),
)  # training crops: area share and width/height (the outfit stays in frame)
JITTER = Jitter(
    brightness=0.3, contrast=0.3, saturation=0.2
)  # light and colour casts; no hue shifts (colour carries style)
DATASET_COLUMNS = ("image_id", "path", "split", "main_style", "labels")


def read_torch_file(path: Path, what: str, remedy: str) -> Any:
    """torch.load of `path` (weights only, to the CPU); InputError naming the file, `what` it should be and the `remedy`
    when it is missing or unreadable."""
    if not Path(path).is_file():
        raise InputError(f"{path}: {what} not found; {remedy}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    # on foreign or damaged bytes: RuntimeError (zip reader), UnpicklingError, EOFError, struct.error, KeyError, ...
    except Exception as error:
        gist = str(error).split(". ")[
            0
        ]  # torch's messages go on to advise weights_only=False, which would run code from the file
        raise InputError(
            f"{path}: cannot read {what}, not a complete file written by torch.save ({type(error).__name__}: {gist}); "
            f"{remedy}"
        ) from error


def check_state_fits(module: nn.Module, state: Any, path: Path, remedy: str) -> None:
    """InputError naming `path` unless `state` is a state_dict that `module.load_state_dict` takes as it is (names and
    shapes)."""
    if not isinstance(state, Mapping) or not all(isinstance(tensor, torch.Tensor) for tensor in state.values()):
        raise InputError(
            f"{path}: holds no state_dict (a mapping of names to tensors) for {type(module).__name__}; {remedy}"
        )
    expected = module.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    reshaped = [
        f"{name} {tuple(state[name].shape)}, expected {tuple(expected[name].shape)}"
        for name in expected
        if name in state and state[name].shape != expected[name].shape
    ]
    gaps = [
        f"{len(names)} {kind} (e.g. {names[0]})"
        for kind, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
        if names
    ]
    if gaps:
        raise InputError(f"{path}: its tensors do not fit {type(module).__name__}: {'; '.join(gaps)}. {remedy}")


@dataclass(frozen=True)
class LabelGraph:
    """The graph stage's output, as the GCN consumes it."""

    labels: list[str]
    adjacency_norm: np.ndarray  # (C, C) float32: the matrix the GCN multiplies
    embeddings: np.ndarray  # (C, D) float32: node features (word vectors)


def read_label_subset(path: Path) -> list[str]:
    """Class names in class order (the column order of every score matrix)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: label subset not found; run the curation stages first (dvc repro)") from None
    if not isinstance(raw, dict) or not raw.get("labels"):
        raise InputError(f"{path}: expected {{'labels': [...], 'top_k': k}} with a non-empty label list")
    return [str(label) for label in raw["labels"]]


def read_label_graph(path: Path, labels: list[str]) -> LabelGraph:
    """The label graph; its label order must match the label subset's, or class i would get row j."""
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: label graph not found; run the graph stage first (dvc repro)") from None
    graph_labels = [str(label) for label in npz["labels"]]
    if graph_labels != labels:
        raise InputError(
            f"{path}: labels {graph_labels} differ from the label subset's {labels}; re-run the graph stage"
        )
    adjacency = np.asarray(npz["adjacency_norm"], dtype=np.float32)
    embeddings = np.asarray(npz["embeddings"], dtype=np.float32)
    if adjacency.shape != (len(labels), len(labels)) or embeddings.shape[0] != len(labels):
        raise InputError(
            f"{path}: adjacency_norm {adjacency.shape} / embeddings {embeddings.shape} do not fit {len(labels)} labels"
        )
    return LabelGraph(labels=labels, adjacency_norm=adjacency, embeddings=embeddings)


def read_dataset(path: Path, labels: list[str]) -> pd.DataFrame:
    """The curated dataset with its label lists checked against the label subset."""
    try:
        table = read_table(path)
    except FileNotFoundError:
        raise InputError(f"{path}: dataset not found; run the curation stages first (dvc repro)") from None
    missing = set(DATASET_COLUMNS) - set(table.columns)
    if missing:
        raise InputError(f"{path}: missing columns {sorted(missing)}")
    known = set(labels)
    for row in table.itertuples():
        unknown = set(row.labels) - known
        if unknown or not len(row.labels):
            raise InputError(
                f"{path}: image {row.image_id}: labels {list(row.labels)} are empty or outside the label subset "
                f"({sorted(unknown)})"
            )
        if row.split not in SPLITS:
            raise InputError(f"{path}: image {row.image_id}: split {row.split!r} is not one of {SPLITS}")
    return table.reset_index(drop=True)


def target_matrix(label_lists: pd.Series, labels: list[str]) -> np.ndarray:
    """(N, C) 0/1 float32 targets from per-image label lists."""
    index = {label: i for i, label in enumerate(labels)}
    targets = np.zeros((len(label_lists), len(labels)), dtype=np.float32)
    for row, image_labels in enumerate(label_lists):
        targets[row, [index[label] for label in image_labels]] = 1.0
    return targets


def main_index(main_styles: pd.Series, labels: list[str]) -> np.ndarray:
    """Class index of each image's main label, -1 where there is none (tag taxonomies)."""
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index[m] if isinstance(m, str) else -1 for m in main_styles], dtype=np.int64)


def load_rgb(path: Path, vetted: bool = False) -> Image.Image:
    """An image upright and in RGB (the crawl holds EXIF-rotated and CMYK JPEGs); InputError names the file and why it
    cannot be used.

    `vetted`: a catalog image, which ingest's max_pixels admitted, so Pillow's own bomb guard is lifted for it.
    16- and 32-bit pictures are scaled and LAB converted to 8-bit RGB (common/decoding.py); other modes are refused,
    as ingest refuses them.
    """
    try:
        with pillow_bomb_guard_lifted() if vetted else contextlib.nullcontext(), Image.open(path) as image:
            mode = image.mode
            if mode in SUPPORTED_MODES:
                return to_rgb(ImageOps.exif_transpose(image))
    except MemoryError:
        raise
    # Pillow raises many types on untrusted bytes (OSError, DecompressionBombError, SyntaxError, TypeError, ...)
    except Exception as error:
        hint = (
            "check crawl.dir and that the catalog is current (dvc repro)"
            if vetted
            else "check the path; re-save or re-download a damaged picture"
        )
        raise InputError(f"{path}: cannot read image ({type(error).__name__}: {error}); {hint}") from error
    raise InputError(f"{path}: {unsupported_mode_reason(mode)}")


def eval_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """Plain resize to size x size (the reference evaluates this way), then normalise."""
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize((size, size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def train_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """Augmentations for street photos: mild crops (the outfit must stay in frame), mirror, light and colour casts.

    No vertical flips or large rotations: people stand upright. No hue shifts: colour
    carries style (a palette is part of a look).
    """
    return v2.Compose([
        v2.PILToTensor(),
        v2.RandomResizedCrop((size, size), scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(**JITTER._asdict()),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])  # fmt: skip


def device_train_augment(
    size: int, mean: tuple[float, ...], std: tuple[float, ...], generator: torch.Generator, fused: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The tensor twin of `train_transform` for uint8 batches on the device: the same crops, flips and colour jitter.

    `fused` compiles the per-pixel work after the crop into one kernel (training.gpu_augment.finish_crops).
    """
    return partial(
        train_batch,
        size=size,
        mean=mean,
        std=std,
        scale=CROP_SCALE,
        ratio=CROP_RATIO,
        generator=generator,
        jitter=JITTER,
        fused=fused,
    )


class ImageDataset(Dataset):
    """Pixels and targets of image files (paths already resolved); `vetted`: catalog images (see load_rgb)."""

    def __init__(self, paths: list[Path], targets: np.ndarray, transform: v2.Compose, vetted: bool = False) -> None:
        self.paths, self.targets, self.transform, self.vetted = paths, torch.tensor(targets), transform, vetted

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(load_rgb(self.paths[i], self.vetted)), self.targets[i]


class CachedPixelBatches(Dataset):
    """Whole uint8 batches (B, H, W, 3) and their targets from the pixel cache, indexed by a list of rows.

    Use with a BatchSampler and `batch_size=None`: a loader worker gathers a batch
    with one memory-mapped read per image and no per-image tensor work (augmentation
    happens on the device, training/gpu_augment.py).
    """

    def __init__(self, store: PixelStore, image_ids: list[str], targets: np.ndarray) -> None:
        missing = sorted(set(image_ids) - set(store.index.index))
        if missing:
            raise InputError(
                f"pixel cache lacks {len(missing)} dataset images (e.g. {missing[0]}); rebuild it: dvc repro "
                "pixel_cache (or python -m pipeline.pixel_cache --catalog data/catalog.parquet --out data/pixels)"
            )
        self.store, self.image_ids, self.targets = store, image_ids, torch.tensor(targets)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.store.get([self.image_ids[r] for r in rows])), self.targets[rows]

"""Checkpoints: written atomically, and self-describing enough to rebuild the model without params.yaml.

A checkpoint holds `meta` (model spec, labels, backbone, input size, normalisation,
training settings), `model` (the state_dict of what was trained: a head on cached
features, the whole StyleNet when fine-tuned, or the basic CNN); `best.pt` adds its
validation metrics (`val`) and per-label decision `thresholds` chosen on the validation
split, `last.pt` the optimizer and the loop state that `--resume` continues from.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from common.atomic import atomic_path
from common.cli import InputError, OutputError
from training.backbones import create_backbone
from training.data import check_state_fits, eval_transform, read_torch_file
from training.models import BasicCNN, ModelSpec, StyleNet, build_head


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """torch.save through a temporary file and a rename: a kill never leaves half a checkpoint.

    torch's C++ writer reports a full disk or a refused write as a RuntimeError without an errno ("basic_ios::clear",
    "unexpected pos ..."): it becomes an OutputError that names the file, like every other output's.
    """
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:
            free = shutil.disk_usage(tmp.parent).free
            raise OutputError(
                f"{path}: cannot write it (torch: {str(exc).strip()[:120]}); {free / 2**20:.0f} MiB free on its disk: "
                f"free space (or raise a file-size limit, ulimit -f) and run again. The previous {Path(path).name}, if "
                "any, is unchanged"
            ) from exc


CHECKPOINT_REMEDY = (
    "train the model (python -m training.train, the command is in dvc.yaml) or restore the file "
    "(dvc checkout / dvc pull)"
)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint whose weights fit the model its meta describes; InputError names the file when it is missing,
    unreadable or not such a checkpoint."""
    checkpoint = read_torch_file(Path(path), "checkpoint", CHECKPOINT_REMEDY)
    if not isinstance(checkpoint, dict) or not {"meta", "model"} <= checkpoint.keys():
        raise InputError(
            f"{path}: not a stylegraph checkpoint (no 'meta' and 'model' entries; a backbone's weights file goes in "
            f"features.weights); {CHECKPOINT_REMEDY}"
        )
    meta = checkpoint["meta"]
    try:
        with torch.device("meta"):  # only names and shapes are compared: no memory, no initialisation
            module = described_module(meta)
    except (KeyError, TypeError, ValueError) as error:  # a meta missing an entry, or with one of the wrong kind
        raise InputError(
            f"{path}: its description of the model is incomplete or damaged ({type(error).__name__}: {error}); "
            f"{CHECKPOINT_REMEDY}"
        ) from error
    check_state_fits(
        module,
        checkpoint["model"],
        Path(path),
        f"The file does not match its own description (model {meta.get('name')}); {CHECKPOINT_REMEDY}",
    )
    return checkpoint


def trained_precision(meta: dict[str, Any]) -> str:
    """The train.precision a checkpoint's model was trained under, to score it the same way; "bf16" (the default) for
    checkpoints that do not record it."""
    return meta.get("train", {}).get("precision", "bf16")


def scores_mirrored(meta: dict[str, Any]) -> bool:
    """Whether the model was selected on scores averaged with the mirror image's (train.tta_flip), and so is scored that
    way everywhere."""
    return bool(meta.get("train", {}).get("tta_flip", False))


DEFAULT_THRESHOLD = 0.5  # for checkpoints written before thresholds were chosen on validation


def decision_thresholds(checkpoint: dict[str, Any]) -> np.ndarray:
    """Per label, the probability from which the model calls it present: chosen on the validation split (best F1) when
    the model was selected."""
    return np.asarray(
        checkpoint.get("thresholds") or [DEFAULT_THRESHOLD] * len(checkpoint["meta"]["labels"]), dtype=np.float64
    )


def called_present(scores: np.ndarray, thresholds: np.ndarray, labels: list[str]) -> list[str]:
    """The labels whose score reaches their decision threshold, most likely first."""
    return [labels[c] for c in np.argsort(-np.asarray(scores), kind="stable") if scores[c] >= thresholds[c]]


def best_model(models_dir: Path, heads_only: bool = False) -> tuple[str, Path]:
    """(name, best.pt) of the model in `models_dir` with the highest validation mAP: the one the validation split
    chooses.

    `heads_only`: among heads on cached features (not the basic CNN or fine-tuned models).
    InputError when there is none to choose from.
    """
    candidates = {}
    for path in sorted(Path(models_dir).glob("*/best.pt")):
        checkpoint = load_checkpoint(path)
        pixels = checkpoint["meta"]["spec"]["kind"] == "cnn" or checkpoint["meta"]["finetuned"]
        if "val" in checkpoint and not (heads_only and pixels):
            candidates[path.parent.name] = (checkpoint["val"]["mAP"], path)
    if not candidates:
        raise InputError(
            f"{models_dir}: no trained model (<name>/best.pt with validation metrics) to choose from; "
            f"{CHECKPOINT_REMEDY}"
        )
    name = max(candidates, key=lambda n: candidates[n][0])
    return name, candidates[name][1]


def described_module(meta: dict[str, Any]) -> nn.Module:
    """The module whose state_dict the checkpoint with this `meta` stores (a fine-tuned model with its backbone)."""
    body = create_backbone(meta["backbone"], "none").body if meta["finetuned"] else None
    return build_trained_module(meta, body)


def build_trained_module(meta: dict[str, Any], backbone_body: nn.Module | None = None) -> nn.Module:
    """The module whose state_dict a checkpoint stores, with placeholder graph buffers (loading fills them)."""
    spec = ModelSpec(**meta["spec"])
    n_classes = len(meta["labels"])
    if spec.kind == "cnn":
        return BasicCNN(n_classes)
    placeholders = torch.zeros(n_classes, meta["embedding_dim"]), torch.zeros(n_classes, n_classes)
    head = build_head(spec, meta["feature_dim"], n_classes, *placeholders, meta["gcn_hidden"])
    return StyleNet(backbone_body, spec.pooling, head) if backbone_body is not None else head


def pixel_model(checkpoint: dict[str, Any]) -> tuple[nn.Module, v2.Compose]:
    """An images -> logits model and its evaluation transform, for any checkpoint (heads get their backbone back)."""
    meta = checkpoint["meta"]
    transform = eval_transform(meta["image_size"], tuple(meta["mean"]), tuple(meta["std"]))
    if meta["spec"]["kind"] == "cnn" or meta["finetuned"]:
        module = described_module(meta)
        module.load_state_dict(checkpoint["model"])
        return module.eval(), transform
    if meta["weights"] == "none":
        raise InputError(
            f"model {meta['name']} was trained on features of a randomly initialised backbone (features.weights: "
            "none), which cannot be rebuilt; use pretrained weights or a weights file"
        )
    head = build_trained_module(meta)
    head.load_state_dict(checkpoint["model"])
    body = create_backbone(meta["backbone"], meta["weights"]).body
    return StyleNet(body, meta["spec"]["pooling"], head).eval(), transform

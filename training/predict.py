"""Predict styles of image files with a trained model: top-k labels with probabilities, and the labels it calls present,
as JSON or CSV.

    # the model the validation split chose:
    python -m training.predict --model best photos/ --top-k 3 --out predictions.json
    python -m training.predict --checkpoint models/mlgcn/best.pt photos/ --out predictions.csv

A label is called present where its probability reaches its best-F1 threshold, and is
listed under "pre_ticked" where it reaches the threshold with the fewest expert clicks
(what `python -m annotation push` pre-ticks). With `--model`, both are the select
stage's, fitted out of fold (data/selection.json, training/decisions.py); a model it did
not score, or `--checkpoint`, uses those its checkpoint fitted on the validation split.
A model selected with the test-time flip (train.tta_flip) scores each image as the mean
of it and its mirror image.

An image that cannot be read is reported on stderr and listed with its error; the others
are predicted, and the command exits with status 1. `predict_images` is the function the
annotation push imports to make pre-annotations.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2
from tqdm import tqdm

from common.atomic import atomic_path
from common.cli import InputError, report_user_errors
from training.checkpoint import called_present, load_checkpoint, pixel_model, scores_mirrored, trained_precision
from training.data import load_rgb
from training.decisions import DEFAULT_SELECTION, DecisionRules, chosen_model, decision_rules, read_selection
from training.device import pick_device, prepare
from training.engine import predict_probs
from training.models import BasicCNN, StyleNet

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SOME_IMAGES_FAILED = 1  # exit status: predictions were written, but some images could not be read


def predict_images(
    checkpoint_path: str | Path,
    image_paths: list[str | Path],
    top_k: int = 3,
    batch_size: int = 32,
    vetted: bool = False,
    embeddings: bool = False,
    rules: DecisionRules | None = None,
) -> list[dict]:
    """Per image, in input order: {"path", "scores": {label: prob} in class order, "top": [[label, prob], ...] (k
    highest), "predicted": [labels at or above their F1 thresholds, most likely first], "pre_ticked": [the same at the
    fewest-clicks thresholds]}.

    An image that cannot be read gets {"path", "error"} instead (and a warning on stderr);
    the other images are predicted all the same. A `top_k` above the number of labels lists
    them all. `vetted`: the images are catalog images (ingest's max_pixels, not Pillow's
    own limit, decides; see load_rgb). `embeddings`: each result also holds "embedding",
    the image's global-average-pooled backbone maps (np.ndarray), where push measures how
    alike two images look. `rules`: the thresholds (default: the checkpoint's own).
    """
    return predict_checkpoint(
        load_checkpoint(Path(checkpoint_path)),
        [Path(p) for p in image_paths],
        top_k,
        batch_size,
        vetted,
        embeddings,
        rules,
    )


def predict_checkpoint(
    checkpoint: dict[str, Any],
    paths: list[Path],
    top_k: int,
    batch_size: int = 32,
    vetted: bool = False,
    embeddings: bool = False,
    rules: DecisionRules | None = None,
) -> list[dict]:
    """predict_images for a loaded checkpoint; the model runs in the train.precision it was trained in."""
    if top_k < 1:
        raise InputError(f"top_k must be at least 1, not {top_k}")
    labels = checkpoint["meta"]["labels"]
    rules = rules or decision_rules(checkpoint["meta"]["name"], checkpoint, None)
    model, transform = pixel_model(checkpoint)
    device, precision, mirror = (
        pick_device(),
        trained_precision(checkpoint["meta"]),
        scores_mirrored(checkpoint["meta"]),
    )
    model = prepare(model, device)
    results: list[dict] = []
    with pooled_maps(model) if embeddings else contextlib.nullcontext() as views:
        for start in tqdm(range(0, len(paths), batch_size), desc="predict", unit="batch", disable=None):
            batch = paths[start : start + batch_size]
            pixels = [_pixels(path, transform, vetted) for path in batch]
            scores = iter(
                _probabilities(model, [x for x in pixels if isinstance(x, torch.Tensor)], device, precision, mirror)
            )
            pooled = iter(torch.stack(views).mean(dim=0).numpy() if views else [])
            if views is not None:
                views.clear()
            for path, x in zip(batch, pixels, strict=True):
                if not isinstance(x, torch.Tensor):
                    results.append({"path": str(path), "error": x})
                    continue
                results.append(
                    _ranked(path, labels, next(scores), top_k, rules)
                    | ({"embedding": next(pooled)} if embeddings else {})
                )
    return results


@contextlib.contextmanager
def pooled_maps(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collects, for every forward pass of `model`, its feature maps averaged over positions (B, D): the backbone's
    (StyleNet) or the convolutional blocks' (the basic CNN). With the test-time flip there are two per batch."""
    views: list[torch.Tensor] = []
    trunk = model.body if isinstance(model, StyleNet) else cast(BasicCNN, model).features
    hook = trunk.register_forward_hook(lambda module, inputs, maps: views.append(maps.float().mean(dim=(2, 3)).cpu()))
    try:
        yield views
    finally:
        hook.remove()


def _pixels(path: Path, transform: v2.Compose, vetted: bool) -> torch.Tensor | str:
    """The model input of one image, or why it cannot be read (also warned about on stderr)."""
    try:
        return transform(load_rgb(path, vetted))
    except InputError as error:
        tqdm.write(f"predict: warning: {error}", file=sys.stderr)
        return str(error)


def _probabilities(
    model: nn.Module, images: list[torch.Tensor], device: torch.device, precision: str, mirror: bool
) -> list[list[float]]:
    """Sigmoid scores of a batch of model inputs, one list per image (with `mirror`, averaged with the mirror
    image's)."""
    if not images:
        return []
    probs, _ = predict_probs(model, [(torch.stack(images), torch.zeros(len(images)))], device, precision, mirror)
    return probs.tolist()


def _ranked(path: Path, labels: list[str], scores: list[float], top_k: int, rules: DecisionRules) -> dict:
    ranked = sorted(zip(labels, scores, strict=True), key=lambda item: -item[1])
    return {"path": str(path), "scores": dict(zip(labels, scores, strict=True)),
            "top": [[label, p] for label, p in ranked[:top_k]],
            "predicted": called_present(np.array(scores), rules.present, labels),
            "pre_ticked": called_present(np.array(scores), rules.pre_tick, labels)}  # fmt: skip


def model_checkpoint(model: str, models_dir: Path, selection: Path = DEFAULT_SELECTION) -> Path:
    """The checkpoint `--model` names: MODELS_DIR/<model>/best.pt, or for 'best' that of the model the select stage
    chose (training/decisions.py)."""
    if model == "best":
        name, path, why = chosen_model(models_dir, selection)
        print(f"predict: model {name} ({why})", file=sys.stderr)
        return path
    return models_dir / model / "best.pt"


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given; folders contribute their image files (sorted, not recursive)."""
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise InputError(f"{item}: no such file or folder")
    if not paths:
        raise InputError(f"no image files in {[str(i) for i in inputs]} (looked for {sorted(IMAGE_SUFFIXES)})")
    return paths


def to_csv(results: list[dict], top_k: int) -> str:
    """One row per image: path, rank-ordered label_i / prob_i columns, the labels called present (;-separated), and
    error (empty unless the image could not be read)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["path", *[f"{name}_{i}" for i in range(1, top_k + 1) for name in ("label", "prob")], "predicted", "error"]
    )
    for r in results:
        ranked = [v for label, p in r.get("top", []) for v in (label, f"{p:.6f}")]
        writer.writerow(
            [
                r["path"],
                *ranked,
                *[""] * (2 * top_k - len(ranked)),
                ";".join(r.get("predicted", [])),
                r.get("error", ""),
            ]
        )
    return buffer.getvalue()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders of images")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--model",
        help="a model of params.yaml by name (MODELS_DIR/<name>/best.pt), or 'best': the select stage's choice "
        "(out-of-fold mAP; data/selection.json), with its out-of-fold thresholds",
    )
    which.add_argument("--checkpoint", type=Path, help="a trained model's checkpoint file (models/<name>/best.pt)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="where --model looks (default: models)")
    parser.add_argument(
        "--selection",
        type=Path,
        default=DEFAULT_SELECTION,
        help=f"the select stage's choice and thresholds, read with --model (default: {DEFAULT_SELECTION})",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=3,
        help="how many of the highest-scoring labels to list per image (1 to the model's number of labels)",
    )
    parser.add_argument(
        "--format",
        choices=("json", "csv"),
        default=None,
        help="output format (default: from --out's suffix, else json)",
    )
    parser.add_argument("--out", type=Path, default=None, help="file to write (default: print to stdout)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """Predict, write the output, and return the exit status: 0, or SOME_IMAGES_FAILED."""
    path = args.checkpoint or model_checkpoint(args.model, args.models_dir, args.selection)
    checkpoint = load_checkpoint(path)
    selection = read_selection(args.selection) if args.model else None
    rules = decision_rules(path.parent.name, checkpoint, selection)
    n_labels = len(checkpoint["meta"]["labels"])
    if not 1 <= args.top_k <= n_labels:
        raise InputError(f"--top-k must be 1 to {n_labels} (the labels of {path}), not {args.top_k}")
    results = predict_checkpoint(checkpoint, expand_inputs(args.inputs), args.top_k, rules=rules)
    fmt = args.format or ("csv" if args.out is not None and args.out.suffix == ".csv" else "json")
    text = to_csv(results, args.top_k) if fmt == "csv" else json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text, encoding="utf-8")
        print(f"predict: {len(results)} images -> {args.out}", file=sys.stderr)
    failed = sum("error" in r for r in results)
    if failed:
        print(
            f"predict: {failed} of {len(results)} images could not be read; the output lists each with its error",
            file=sys.stderr,
        )
        return SOME_IMAGES_FAILED
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors("predict", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())

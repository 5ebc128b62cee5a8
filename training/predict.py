"""Predict styles of image files with a trained checkpoint: top-k labels with probabilities, as JSON or CSV.

    python -m training.predict --checkpoint models/mlgcn/best.pt photos/ --top-k 3 --out predictions.json

`predict_images` is the function the annotation push imports to make pre-annotations.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.atomic import atomic_path
from training.checkpoint import load_checkpoint, pixel_model, trained_precision
from training.data import ImageDataset, InputError
from training.device import autocast, pick_device, prepare, to_device

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def predict_images(checkpoint_path: str | Path, image_paths: list[str | Path], top_k: int = 3, batch_size: int = 32, vetted: bool = False) -> list[dict]:
    """Per image: {"path", "scores": {label: prob} in class order, "top": [[label, prob], ...] (k highest)}.

    `vetted`: the images are catalog images (ingest's max_pixels, not Pillow's own limit, decides; see load_rgb).
    """
    checkpoint = load_checkpoint(Path(checkpoint_path))
    labels = checkpoint["meta"]["labels"]
    model, transform = pixel_model(checkpoint)
    device = pick_device()
    model = prepare(model, device)
    paths = [Path(p) for p in image_paths]
    loader = DataLoader(ImageDataset(paths, np.zeros((len(paths), 0), np.float32), transform, vetted), batch_size=batch_size)
    results, done = [], 0
    with torch.inference_mode():
        for images, _ in tqdm(loader, desc="predict", unit="batch", disable=None):
            with autocast(device, trained_precision(checkpoint["meta"])):
                probs = torch.sigmoid(model(to_device(images, device)).float()).cpu()
            for row in probs.tolist():
                ranked = sorted(zip(labels, row), key=lambda item: -item[1])[:top_k]
                results.append({"path": str(paths[done]), "scores": dict(zip(labels, row)), "top": [[label, p] for label, p in ranked]})
                done += 1
    return results


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


def to_csv(results: list[dict]) -> str:
    """One row per image: path, then rank-ordered label_i / prob_i columns."""
    k = max(len(r["top"]) for r in results)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", *[f"{name}_{i}" for i in range(1, k + 1) for name in ("label", "prob")]])
    for r in results:
        writer.writerow([r["path"], *[v for label, p in r["top"] for v in (label, f"{p:.6f}")]])
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.predict", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders of images")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a trained model (models/<name>/best.pt)")
    parser.add_argument("--top-k", type=int, default=3, help="how many of the highest-scoring labels to list per image")
    parser.add_argument("--format", choices=("json", "csv"), default=None, help="output format (default: from --out's suffix, else json)")
    parser.add_argument("--out", type=Path, default=None, help="file to write (default: print to stdout)")
    args = parser.parse_args(argv)
    results = predict_images(args.checkpoint, expand_inputs(args.inputs), args.top_k)
    fmt = args.format or ("csv" if args.out is not None and args.out.suffix == ".csv" else "json")
    text = to_csv(results) if fmt == "csv" else json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    if args.out is None:
        sys.stdout.write(text)
        return
    with atomic_path(args.out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"predict: {len(results)} images -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

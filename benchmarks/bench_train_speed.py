"""Training speed end to end, data loading included: a reference-style loop against this project's fast path.

Both run in this one process, on the same photos (repeated to fill the run), through the
real model classes (backbone + ML-GCN head, 23 outputs, Adam):

  (a) reference-style: fp32, a PIL-decoding DataLoader (training.data.train_transform),
      batch 16, `.item()` after every step;
  (b) ours: the pixel cache (built once beforehand at the photos' aspect; its build time is
      printed apart), crops/flips/colour jitter/normalisation on the device
      (training.gpu_augment), the next batch copied on a side stream, bf16 autocast,
      channels-last and fused Adam on CUDA, a large batch, optionally torch.compile, through
      training.train.train_one_epoch (no host-device sync until the end); for each --batch;
  (c) compute only: (b)'s steps repeated on one batch already on the device, the ceiling
      that (b) is measured against;
  (d) the device augmentation alone (crop + the per-pixel tail) on one uint8 batch already
      on the device, eager and, with --compile, fused: what it takes of a (b) step.

Each pipeline first runs --warmup untimed steps (worker start-up, compiling).

Usage:
  CPU, a tiny run (15-60 s):
    python benchmarks/bench_train_speed.py
  one GPU, the issue's measurement (goal: (b) >= 1,400 images/s, >= 3.4x (a), 95% of (c)):
    python benchmarks/bench_train_speed.py --backbone resnet50 --size 448 --batch 128,32 --compile \\
        --workers 16 --photo-limit 0 --images 5120 --warmup 10
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from itertools import islice, repeat
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from common.images import content_id
from common.pixel_shards import PixelStore
from pipeline.pixel_cache import PixelCacheSettings, build_cache, height_for, upright_sizes
from training.backbones import create_backbone
from training.data import CachedPixelBatches, ImageDataset, device_train_augment, train_transform
from training.device import adam, compile_for_training, pick_device, prepare
from training.engine import train_one_epoch
from training.feeds import cached_pixel_loader, on_device
from training.models import ModelSpec, StyleNet, build_head

DEFAULT_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared/datasets/ccp/photos"
N_LABELS, EMBEDDING_DIM, GCN_HIDDEN = 23, 50, 1024
LR_BACKBONE, LR_HEAD = 1e-4, 1e-3


def build_model(backbone: str, seed: int) -> nn.Module:
    """StyleNet (random backbone weights: speed does not depend on them) with an ML-GCN head."""
    torch.manual_seed(seed)
    body = create_backbone(backbone, "none")
    head = build_head(
        ModelSpec(kind="gcn"), body.dim, N_LABELS, torch.randn(N_LABELS, EMBEDDING_DIM), torch.eye(N_LABELS), GCN_HIDDEN
    )
    return StyleNet(body.body, "max", head)


def paper_rates(model: StyleNet) -> list[dict]:
    return [{"params": model.head.parameters(), "lr": LR_HEAD}, {"params": model.body.parameters(), "lr": LR_BACKBONE}]


def reference_rate(model: StyleNet, loader: DataLoader, device: torch.device, warmup: int) -> tuple[float, float]:
    """images/s of a plain fp32 loop that reads the loss back after every step, as the reference code does, and its mean
    loss."""
    model = model.to(device).train()
    optimizer, criterion = torch.optim.Adam(paper_rates(model)), nn.BCEWithLogitsLoss()
    batches = iter(loader)

    def steps(n: int | None) -> tuple[int, float]:
        images, total = 0, 0.0
        for inputs, targets in islice(batches, n):
            inputs, targets = inputs.to(device), targets.to(device)
            loss = criterion(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(targets)
            images += len(targets)
        return images, total / max(images, 1)

    steps(warmup)
    start = time.perf_counter()
    images, mean_loss = steps(None)
    return images / (time.perf_counter() - start), mean_loss


def fast_rate(
    model: StyleNet,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    warmup: int,
    compile_model: bool,
) -> tuple[float, float, float]:
    """images/s of training.train.train_one_epoch fed by `batches` (already on the device), its mean loss,
    and the compute-only images/s: the same steps repeated on one batch already augmented on the device."""
    model = prepare(model, device)
    net = compile_for_training(model) if compile_model else model
    optimizer, seen = adam(paper_rates(model), device), {"images": 0, "steps": 0}

    def counting(source: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for inputs, targets in source:
            seen["images"] += len(targets)
            seen["steps"] += 1
            seen["batch"] = (inputs, targets)
            yield inputs, targets

    train_one_epoch(
        net, counting(islice(batches, warmup)), optimizer, device, None
    )  # ends with .item(): the device is idle after it
    full = seen["batch"]
    seen.update(images=0, steps=0)
    start = time.perf_counter()
    mean_loss = train_one_epoch(net, counting(batches), optimizer, device, None)
    rate = seen["images"] / (time.perf_counter() - start)
    start = time.perf_counter()
    train_one_epoch(net, repeat(full, seen["steps"]), optimizer, device, None)
    return rate, mean_loss, seen["steps"] * len(full[1]) / (time.perf_counter() - start)


def augment_ms(
    augment: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, device: torch.device, repeats: int = 10
) -> float:
    """Milliseconds per call of `augment` on one device batch (after one untimed call: compiling)."""
    augment(pixels)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        augment(pixels)
    synchronize(device)
    return (time.perf_counter() - start) / repeats * 1000


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_sizes(text: str) -> list[int]:
    return [int(size) for size in text.split(",")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of JPEG photos (the shared CCP street photos)"
    )
    parser.add_argument(
        "--photo-limit", type=int, default=96, help="distinct photos used (repeated to fill --images); 0 = all"
    )
    parser.add_argument(
        "--backbone",
        default="tf_efficientnet_lite0",
        help="training/backbones.py name: tf_efficientnet_lite0 (CPU) or resnet50 (the paper)",
    )
    parser.add_argument("--size", type=int, default=64, help="input size in px (the paper: 448)")
    parser.add_argument(
        "--images", type=int, default=384, help="images each pipeline trains on after its warm-up (timed)"
    )
    parser.add_argument("--ref-batch", type=int, default=16, help="(a) batch size (the reference code's)")
    parser.add_argument(
        "--batch",
        type=batch_sizes,
        default=[32],
        help="(b) batch size, or several separated by commas, each measured in turn (GPU: 128 or 128,32)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing each pipeline")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader processes of both pipelines")
    parser.add_argument("--compile", action="store_true", help="(b) with torch.compile")
    parser.add_argument("--seed", type=int, default=0, help="model initialisation and targets")
    args = parser.parse_args(argv)
    if args.images < max(*args.batch, args.ref_batch):
        parser.error(
            f"--images {args.images} is smaller than a batch ({max(*args.batch, args.ref_batch)}): nothing would be "
            "timed"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = sorted(args.photos.glob("*.jpg"))[: args.photo_limit or None]
    if not paths:
        print(f"bench_train_speed: no *.jpg in {args.photos}; pass --photos DIR", file=sys.stderr)
        return 2
    device = pick_device()
    catalog = pd.DataFrame(
        {"image_id": [content_id(p.read_bytes()) for p in paths], "path": [p.name for p in paths], "batch": "b0"}
    )
    repeats = -(-(args.images + args.warmup * max(*args.batch, args.ref_batch)) // len(paths))
    files, ids = [p for _ in range(repeats) for p in paths], list(catalog["image_id"]) * repeats
    targets = (np.random.default_rng(args.seed).random((len(paths), N_LABELS)) < 0.15).astype(np.float32)
    targets = np.tile(targets, (repeats, 1))
    backbone = create_backbone(args.backbone, "none")
    mean, std = backbone.mean, backbone.std
    name = "cuda " + torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{name}, {torch.get_num_threads()} threads; {args.backbone} @ {args.size} px, {N_LABELS} outputs; "
        f"{len(paths)} photos x {repeats} = {len(files)} images"
    )

    with tempfile.TemporaryDirectory() as tmp:
        cache = PixelCacheSettings(
            height=height_for(*upright_sizes(paths), args.size), width=args.size, workers=args.workers
        )  # the photos' whole frame
        start = time.perf_counter()
        build_cache(catalog, args.photos, Path(tmp), cache)
        print(
            f"pixel cache {cache.height}x{cache.width}: {len(paths)} photos decoded once in "
            f"{time.perf_counter() - start:.1f} s (not counted below)"
        )

        generator = torch.Generator().manual_seed(args.seed)
        pil = ImageDataset(files, targets, train_transform(args.size, mean, std))
        loader = DataLoader(
            pil,
            batch_size=args.ref_batch,
            shuffle=True,
            generator=generator,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
        )
        ref, ref_loss = reference_rate(
            build_model(args.backbone, args.seed),
            islice(loader, args.warmup + args.images // args.ref_batch),
            device,
            args.warmup,
        )
        print(
            f"(a) reference-style: fp32, PIL DataLoader ({args.workers} workers), batch {args.ref_batch}: {ref:9.1f} "
            f"images/s (mean loss {ref_loss:.4f})"
        )

        order = torch.randperm(len(ids), generator=generator)
        how = "bf16 + channels-last" if device.type == "cuda" else "fp32 (CPU: no bf16)"
        cached = CachedPixelBatches(PixelStore(Path(tmp)), ids, targets)
        for batch in args.batch:
            loader = cached_pixel_loader(cached, order, batch, args.workers, device)
            augment = partial(
                device_train_augment, args.size, mean, std, torch.Generator(device).manual_seed(args.seed)
            )
            batches = islice(on_device(loader, device, augment(fused=args.compile)), args.warmup + args.images // batch)
            fast, fast_loss, compute = fast_rate(
                build_model(args.backbone, args.seed), batches, device, args.warmup, args.compile
            )
            print(
                f"(b) ours: pixel cache + device augment, {how}{', compiled' if args.compile else ''}, batch {batch}: "
                f"{fast:9.1f} images/s (mean loss {fast_loss:.4f})"
            )
            print(f"(c) compute only: (b)'s steps on one batch already on the device:     {compute:9.1f} images/s")
            pixels = cached[list(range(batch))][0].to(device)
            step_ms = batch / fast * 1000
            for fused in (False, True) if args.compile else (False,):
                ms = augment_ms(augment(fused=fused), pixels, device)
                print(
                    f"(d) device augmentation alone, {'fused' if fused else 'eager'}: {ms:8.2f} ms per batch = "
                    f"{ms / step_ms:.1%} of a (b) step ({step_ms:.1f} ms)"
                )
            print(
                f"batch {batch}: speed-up (b)/(a) {fast / ref:.2f}x; (b) runs at {fast / compute:.0%} of the "
                "compute-only figure (c)"
            )
    return 0


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(
        status
    )  # no interpreter teardown: on an H100 (torch 2.11) it hung for over a minute after the results were printed

"""Prepare the git-ignored `shared-data/` folder that `benchmarks/gpu_session.sh` reads on a lent GPU machine.

The GPU machine sees only the repository (no ../shared, no internet, no project install)
and the device tool carries at most 64 MiB, so this writes, from ../shared/datasets/ccp:

  shared-data/ccp-speed/photos/        the first --speed-photos original photos (speed benchmark)
  shared-data/ccp-small/               every photo scaled to --short-side px + labels.csv (accuracy)
  shared-data/ccp-finetune/            `bench_ccp_finetune.py prepare` of ccp-small (split, graph)
  shared-data/lite0-imagenet-fp16.pth  the offline Lite0 ImageNet weights under timm's names, as
                                       fp16 (half the bytes; loading casts them back to fp32)

and prints the total against the limit. Then: device run(command="bash benchmarks/gpu_session.sh",
carry=["shared-data"]).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import timm
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from training.backbones import lite_wheel_weights

ROOT = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 64 * 2**20


def scaled_copy(source: Path, target: Path, short_side: int) -> None:
    image = ImageOps.exif_transpose(Image.open(source)).convert("RGB")
    factor = short_side / min(image.size)
    image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.BICUBIC).save(
        target, quality=85
    )


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Full description: the module docstring (benchmarks/prepare_gpu_session.py).",
    )
    parser.add_argument(
        "--ccp",
        type=Path,
        default=ROOT.parent / "shared" / "datasets" / "ccp",
        help="folder with photos/ and labels.csv",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "shared-data",
        help="git-ignored folder to write (carried to the GPU machine)",
    )
    parser.add_argument("--speed-photos", type=int, default=200, help="original photos for the speed benchmark")
    parser.add_argument(
        "--short-side", type=int, default=224, help="px of the scaled photos for the accuracy benchmark"
    )
    args = parser.parse_args()
    photos = sorted((args.ccp / "photos").glob("*.jpg"))
    if not photos:
        print(f"prepare_gpu_session: no *.jpg in {args.ccp / 'photos'}; pass --ccp", file=sys.stderr)
        return 2
    speed, small = args.out / "ccp-speed" / "photos", args.out / "ccp-small" / "photos"
    for folder in (speed, small):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for photo in photos[: args.speed_photos]:
        shutil.copy2(photo, speed / photo.name)
    for photo in tqdm(photos, desc="scaling photos", unit="photo"):
        scaled_copy(photo, small / photo.name, args.short_side)
    shutil.copy2(args.ccp / "labels.csv", small.parent / "labels.csv")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    weights = {name: t.half() if t.is_floating_point() else t for name, t in lite_wheel_weights(model, 0).items()}
    torch.save(weights, args.out / "lite0-imagenet-fp16.pth")
    work = args.out / "ccp-finetune"
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_ccp_finetune.py"),
            "prepare",
            "--ccp",
            str(small.parent),
            "--work-dir",
            str(work),
        ],
        check=True,
    )
    total = folder_bytes(args.out)
    print(
        f"{args.out}: {total / 2**20:.1f} MiB ({'fits' if total < CARRY_LIMIT - 4 * 2**20 else 'TOO LARGE for'} the 64 "
        "MiB carry with the repository)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

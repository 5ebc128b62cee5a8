"""Near-duplicate detection, measured: how many re-posts each detector finds, and how many distinct photos it pairs.

Usage: python benchmarks/bench_near_duplicates.py [--ccp ../shared/datasets/ccp] [--originals 200]
           [--checkpoint models/linear/best.pt]

Re-posts are made from --originals CCP street photos, each in the forms social media
produces (every one saved again as JPEG):
  rescale      scaled to 0.5-0.95 of its size, JPEG quality 50-95 (the most common re-post)
  crop         2-6 % cut from each side, then rescaled back, quality 70-95
  caption      a white caption bar with text added under the photo (12 % of its height)
  watermark    a semi-transparent handle written across the lower right
  mirror       flipped left to right
  combined     crop 3 %, scale 0.7, quality 60
Distinct pairs: every pair of two different originals.

Detectors: the 64-bit difference hash ingest computes (common/images.py; Hamming
distance), a 64-bit DCT perceptual hash (pHash, the published algorithm as the imagehash
package implements it: 32x32 grey, 2-D DCT, the 8x8 lowest frequencies against their
median; scipy's DCT), and the cosine distance of the backbone's pooled features
(`training.predict` embeddings of --checkpoint: what the features stage computes).
Printed per threshold: recall per kind of re-post, overall recall (mirror aside, which
no hash of the upright picture can see), the share of distinct pairs flagged, and what
that share means at 1.2 million images. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from scipy.fft import dctn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.images import difference_hash  # noqa: E402

KINDS = ("rescale", "crop", "caption", "watermark", "mirror", "combined")


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def scaled(image: Image.Image, factor: float) -> Image.Image:
    return image.resize(
        (max(1, round(image.width * factor)), max(1, round(image.height * factor))), Image.Resampling.LANCZOS
    )


def cropped(image: Image.Image, share: float) -> Image.Image:
    dx, dy = round(image.width * share), round(image.height * share)
    return image.crop((dx, dy, image.width - dx, image.height - dy)).resize(image.size, Image.Resampling.LANCZOS)


def captioned(image: Image.Image) -> Image.Image:
    bar = round(image.height * 0.12)
    out = Image.new("RGB", (image.width, image.height + bar), "white")
    out.paste(image, (0, 0))
    ImageDraw.Draw(out).text((10, image.height + bar // 3), "new drop!! link in bio #ootd #streetstyle", fill="black")
    return out


def watermarked(image: Image.Image) -> Image.Image:
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for row in range(4):
        draw.text(
            (image.width // 2, image.height * 3 // 4 + row * 12), "@fashion.daily.repost", fill=(255, 255, 255, 140)
        )
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def repost(image: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    if kind == "rescale":
        return jpeg(scaled(image, rng.uniform(0.5, 0.95)), rng.randint(50, 95))
    if kind == "crop":
        return jpeg(cropped(image, rng.uniform(0.02, 0.06)), rng.randint(70, 95))
    if kind == "caption":
        return jpeg(captioned(image), 85)
    if kind == "watermark":
        return jpeg(watermarked(image), 85)
    if kind == "mirror":
        return jpeg(ImageOps.mirror(image), 90)
    return jpeg(scaled(cropped(image, 0.03), 0.7), 60)


def perceptual_hash(image: Image.Image) -> int:
    """64-bit pHash: 32x32 grey, 2-D DCT, the 8x8 lowest frequencies above their median."""
    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dctn(grey, type=2, norm="ortho")[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(a ^ b).astype(np.int64)


def report(
    name: str,
    positive: dict[str, np.ndarray],
    negative: np.ndarray,
    thresholds: list[float],
    fmt: Callable[[float], str],
) -> None:
    print(f"\n### {name}\n")
    print(
        "| threshold | "
        + " | ".join(KINDS)
        + " | recall (mirror aside) | distinct pairs flagged | false pairs at 1.2 M images |"
    )
    print("|---" * (len(KINDS) + 4) + "|")
    pairs_at_scale = 1.2e6 * (1.2e6 - 1) / 2
    for t in thresholds:
        recalls = [float((positive[k] <= t).mean()) for k in KINDS]
        overall = float(np.mean(np.concatenate([positive[k] for k in KINDS if k != "mirror"]) <= t))
        false_rate = float((negative <= t).mean())
        print(
            f"| {fmt(t)} | "
            + " | ".join(f"{r:.2f}" for r in recalls)
            + f" | {overall:.3f} | {false_rate:.2e} | {false_rate * pairs_at_scale:,.0f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ccp", type=Path, default=ROOT.parent / "shared" / "datasets" / "ccp", help="folder with photos/"
    )
    parser.add_argument("--originals", type=int, default=200, help="CCP photos to make re-posts of")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=Path("models/linear/best.pt"),
        help="a trained model whose backbone embeds the photos (features stage)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/bench-near-duplicates"),
        help="where the re-posts are written (the embedding reads files)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    photos = args.ccp / "photos"
    if not photos.is_dir():
        raise SystemExit(f"no CCP photos in {photos}: pass --ccp <folder with photos/>")
    rng = random.Random(args.seed)
    originals = sorted(rng.sample(sorted(photos.glob("*.jpg")), args.originals))
    args.work_dir.mkdir(parents=True, exist_ok=True)

    paths: list[Path] = []
    groups: list[tuple[int, str]] = []  # (original index, kind or "original")
    for i, path in enumerate(originals):
        image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        for kind in ("original", *KINDS):
            out = args.work_dir / f"{i:04d}-{kind}.jpg"
            (image if kind == "original" else repost(image, kind, rng)).save(out, quality=95)
            paths.append(out)
            groups.append((i, kind))
    images = [Image.open(p) for p in paths]
    dhash = np.array([difference_hash(im) for im in images], dtype=np.uint64)
    phash = np.array([perceptual_hash(im) for im in images], dtype=np.uint64)
    from training.predict import predict_images  # torch only for the embedding

    rows = predict_images(args.checkpoint, paths, top_k=1, embeddings=True)
    embedding = np.stack([r["embedding"] for r in rows]).astype(np.float64)
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)

    index = {g: n for n, g in enumerate(groups)}
    base = np.array([index[(i, "original")] for i in range(len(originals))])
    reposts = {k: np.array([index[(i, k)] for i in range(len(originals))]) for k in KINDS}
    a, b = np.triu_indices(len(originals), k=1)
    bit_thresholds = [0, 2, 4, 6, 8, 10, 12, 14, 16]
    for name, hashes in (
        ("dHash (ingest's), Hamming distance of 64 bits", dhash),
        ("pHash (DCT), Hamming distance of 64 bits", phash),
    ):
        positive = {k: hamming(hashes[base], hashes[rows_of_kind]) for k, rows_of_kind in reposts.items()}
        report(name, positive, hamming(hashes[base[a]], hashes[base[b]]), bit_thresholds, lambda t: str(int(t)))
    positive = {k: 1 - (embedding[base] * embedding[rows_of_kind]).sum(axis=1) for k, rows_of_kind in reposts.items()}
    negative = 1 - (embedding[base[a]] * embedding[base[b]]).sum(axis=1)
    report(
        "backbone embedding (pooled features), cosine distance",
        positive,
        negative,
        [0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15],
        lambda t: f"{t:.2f}",
    )
    print(f"\n{len(originals)} originals, {len(originals) * len(KINDS)} re-posts, {len(a):,} distinct pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

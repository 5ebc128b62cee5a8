"""Built-in demo crawl: SYNTHETIC outfit pictures with expert-style labels.

Writes crawl batches exactly as a real crawl lands them (`<crawl-dir>/<batch>/`
with images and `metadata.csv`) plus, per batch, the experts' labels as a Label
Studio JSON export (`<exports-dir>/<batch>.json`). Nothing here is a real photo.

How the pictures carry the labels: each style has a visual profile (palette,
garment shapes, fabric patterns, shoes, accessories). Every garment slot of a
picture is drawn from the profile of the main style (most often), of a sub-style,
or of a random style (noise), so a model can learn the styles well above the
label prior but not perfectly. Main styles follow the class frequencies of the
paper's Table 2 (drifting slowly over batches); sub-styles follow clusters of
styles that go together (Romantic-Elegant-Sexy-Glamorous, Retro-Hippie-Ethnic...).

Each batch also holds files a real crawl delivers and ingest must survive:
corrupt bytes, a truncated JPEG, an HTML error page saved as .jpg, an exact
re-post of an earlier image, a tiny thumbnail, a decompression bomb, and two
valid but tricky photos (CMYK, EXIF-rotated).

Output is deterministic: the same seed and batch index give byte-identical files
(Pillow is pinned for that), however many batches are generated.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import struct
import sys
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from common.atomic import atomic_dir, atomic_path
from common.cli import InputError, report_user_errors
from common.images import content_id
from common.settings import DEFAULT_PARAMS, CrawlSettings, Settings, load_section, load_taxonomy_path, setting
from common.taxonomy import load_taxonomy

RGB = tuple[int, int, int]

# Images per main style in the paper's Table 2 (16,685 labelled SNS photos).
TABLE2_IMAGES = {
    "Casual": 6048, "Romantic": 1911, "Sexy": 998, "Ethnic": 972, "Elegant": 956, "Natural": 949,
    "Sporty": 632, "Retro": 562, "Classic": 539, "Businesscasual": 520, "Exotic": 506, "Modern": 486,
    "Sophisticated": 368, "Glamorous": 362, "Manish": 202, "Hippie": 157, "Gothpunkrocker": 124,
    "Military": 116, "Tomboy": 87, "Kitschkidult": 62, "Hiphop": 48, "Grunge": 41, "Preppy": 39,
}  # fmt: skip

# Styles that experts tend to name together (a style may sit in several clusters).
STYLE_CLUSTERS = [
    ("Romantic", "Elegant", "Sexy", "Glamorous"),
    ("Casual", "Natural", "Sporty"),
    ("Classic", "Businesscasual", "Modern", "Sophisticated", "Elegant"),
    ("Retro", "Hippie", "Ethnic", "Exotic"),
    ("Gothpunkrocker", "Grunge", "Military"),
    ("Hiphop", "Sporty", "Tomboy", "Casual"),
    ("Preppy", "Classic", "Romantic"),
    ("Manish", "Modern", "Businesscasual", "Tomboy"),
    ("Kitschkidult", "Romantic", "Retro"),
]

# Per-batch drift of main-style weights (relative change per batch): a trend to plot.
STYLE_DRIFT = {"Sporty": 0.25, "Modern": 0.15, "Romantic": -0.12, "Ethnic": -0.1}

SUB_STYLE_COUNT_WEIGHTS = [0.3, 0.4, 0.22, 0.08]  # P(0, 1, 2, 3 sub-styles)
SLOT_WEIGHT_MAIN, SLOT_WEIGHT_SUB, SLOT_WEIGHT_NOISE = 3.0, 1.5, 0.7
EXTRA_ANNOTATOR_P = (0.2, 0.05)  # P(second expert), P(third expert)
ANNOTATORS = [11, 12, 13, 14, 15]


@dataclass(frozen=True)
class DemoSettings(Settings):
    section = "demo"
    seed: int = setting("seed of the synthetic demo crawl (same seed, byte-identical images)")
    batches: int = setting("crawl batches the demo writes", interval="[1, inf)")
    images_per_batch: int = setting("images per demo batch", interval="[1, inf)")
    width: int = setting("demo image width (px)", interval="[64, inf)")
    height: int = setting("demo image height (px)", interval="[64, inf)")


@dataclass(frozen=True)
class StyleLook:
    palette: tuple[RGB, ...]
    tops: tuple[str, ...]
    bottoms: tuple[str, ...]
    patterns: tuple[str, ...]
    shoes: tuple[str, ...]
    accessories: tuple[str, ...] = ()


LOOKS: dict[str, StyleLook] = {
    "Casual": StyleLook(((70, 110, 170), (240, 240, 235), (150, 150, 150), (40, 60, 100)),
        ("tee", "shirt", "hoodie"), ("jeans", "slim_pants", "shorts"), ("solid", "solid", "stripes"),
        ("sneakers",), ("cap", "bag")),
    "Romantic": StyleLook(((245, 190, 205), (230, 210, 240), (255, 240, 225), (250, 160, 180)),
        ("blouse", "knit"), ("midi_skirt", "dress"), ("floral", "dots", "solid"),
        ("heels", "sandals"), ("headband", "bag")),
    "Sexy": StyleLook(((15, 15, 15), (190, 20, 40), (120, 0, 30)),
        ("crop", "blouse"), ("mini_skirt", "dress"), ("solid", "solid"),
        ("heels",), ("sunglasses", "chain")),
    "Ethnic": StyleLook(((170, 90, 40), (200, 150, 60), (110, 60, 30), (60, 100, 90)),
        ("blouse", "knit"), ("maxi_skirt", "wide_pants"), ("zigzag", "paisley"),
        ("sandals",), ("scarf", "bag")),
    "Elegant": StyleLook(((25, 35, 70), (235, 225, 205), (120, 20, 50)),
        ("blouse", "blazer"), ("midi_skirt", "dress"), ("solid", "solid"),
        ("heels",), ("bag", "belt")),
    "Natural": StyleLook(((210, 195, 165), (130, 140, 90), (245, 240, 225), (160, 120, 80)),
        ("shirt", "knit"), ("wide_pants", "maxi_skirt"), ("solid", "linen"),
        ("sandals", "loafers"), ("hat", "bag")),
    "Sporty": StyleLook(((230, 40, 40), (30, 90, 220), (250, 250, 250), (250, 210, 0)),
        ("hoodie", "tee"), ("shorts", "slim_pants"), ("sport_stripes", "solid"),
        ("sneakers",), ("cap",)),
    "Retro": StyleLook(((210, 160, 30), (150, 80, 30), (220, 110, 50), (90, 110, 60)),
        ("shirt", "knit"), ("wide_pants", "midi_skirt"), ("dots", "check"),
        ("loafers", "boots"), ("sunglasses", "scarf")),
    "Classic": StyleLook(((25, 40, 80), (190, 150, 100), (245, 245, 240)),
        ("blazer", "shirt", "trench"), ("slim_pants", "midi_skirt"), ("solid", "check"),
        ("loafers", "heels"), ("bag", "belt")),
    "Businesscasual": StyleLook(((90, 95, 105), (30, 45, 85), (235, 235, 240)),
        ("blazer", "shirt"), ("slim_pants",), ("solid", "pinstripe"),
        ("loafers",), ("bag",)),
    "Exotic": StyleLook(((0, 170, 140), (250, 120, 0), (230, 30, 120), (250, 220, 0)),
        ("blouse", "crop"), ("maxi_skirt", "dress"), ("tropical", "floral"),
        ("sandals",), ("hat",)),
    "Modern": StyleLook(((20, 20, 20), (245, 245, 245), (128, 128, 128)),
        ("shirt", "trench", "knit"), ("wide_pants", "slim_pants"), ("solid",),
        ("loafers", "boots"), ("bag",)),
    "Sophisticated": StyleLook(((60, 60, 65), (230, 220, 200), (100, 80, 70)),
        ("trench", "blazer"), ("slim_pants", "midi_skirt"), ("solid",),
        ("heels", "boots"), ("bag",)),
    "Glamorous": StyleLook(((210, 170, 50), (180, 30, 60), (20, 20, 20)),
        ("crop", "blouse"), ("dress", "mini_skirt"), ("sparkle",),
        ("heels",), ("chain", "sunglasses")),
    "Manish": StyleLook(((80, 70, 60), (110, 110, 110), (30, 30, 40)),
        ("blazer", "shirt"), ("wide_pants",), ("pinstripe", "solid"),
        ("loafers",), ("hat",)),
    "Hippie": StyleLook(((230, 120, 180), (120, 200, 120), (250, 200, 60), (120, 120, 230)),
        ("blouse", "tee"), ("maxi_skirt", "wide_pants"), ("tiedye",),
        ("sandals",), ("headband",)),
    "Gothpunkrocker": StyleLook(((10, 10, 10), (170, 0, 0), (60, 60, 60)),
        ("jacket", "tee"), ("slim_pants", "mini_skirt"), ("studs", "plaid"),
        ("boots",), ("chain",)),
    "Military": StyleLook(((85, 95, 50), (140, 120, 80), (60, 55, 40)),
        ("jacket", "shirt"), ("cargo",), ("camo", "solid"),
        ("boots",), ("belt", "cap")),
    "Tomboy": StyleLook(((50, 60, 80), (200, 200, 200), (90, 120, 150)),
        ("shirt", "hoodie"), ("jeans", "cargo"), ("solid", "check"),
        ("sneakers",), ("cap",)),
    "Kitschkidult": StyleLook(((255, 120, 200), (120, 230, 255), (255, 240, 80), (160, 255, 140)),
        ("tee", "knit"), ("mini_skirt", "shorts"), ("hearts", "dots"),
        ("sneakers",), ("headband", "bag")),
    "Hiphop": StyleLook(((240, 190, 0), (20, 20, 20), (200, 30, 30)),
        ("hoodie", "tee"), ("cargo", "wide_pants"), ("solid", "logo"),
        ("sneakers",), ("cap", "chain")),
    "Grunge": StyleLook(((90, 30, 30), (50, 50, 60), (100, 90, 60)),
        ("shirt", "jacket"), ("jeans",), ("plaid",),
        ("boots",), ("chain",)),
    "Preppy": StyleLook(((20, 60, 40), (25, 35, 80), (240, 240, 230), (150, 20, 30)),
        ("knit", "blazer"), ("mini_skirt", "slim_pants"), ("plaid", "check"),
        ("loafers",), ("headband", "bag")),
}  # fmt: skip

SKIN_TONES: tuple[RGB, ...] = ((241, 204, 178), (224, 172, 140), (198, 134, 100), (150, 100, 70), (95, 65, 45))
HAIR_COLOURS: tuple[RGB, ...] = ((20, 15, 10), (60, 40, 25), (120, 80, 40), (200, 170, 110), (140, 40, 30))
SOURCES = ("instagram", "pinterest", "twitter")


@dataclass
class Outfit:
    """What is drawn: one choice per garment slot, each drawn from some style's look."""

    primary: RGB
    accent: RGB
    top: str
    bottom: str
    pattern: str
    shoes: str
    accessories: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- labels


def main_style_weights(names: list[str], batch_index: int) -> np.ndarray:
    weights = np.array([TABLE2_IMAGES.get(n, 50) * (1 + STYLE_DRIFT.get(n, 0.0)) ** batch_index for n in names], float)
    return weights / weights.sum()


def affinity(a: str, b: str) -> float:
    return 1.0 + 6.0 * sum(1 for cluster in STYLE_CLUSTERS if a in cluster and b in cluster)


def draw_labels(rng: random.Random, names: list[str], main_weights: np.ndarray) -> tuple[str, list[str]]:
    """One main style (Table 2 frequencies) and 0-3 sub-styles (cluster-correlated)."""
    main = rng.choices(names, weights=main_weights.tolist())[0]
    n_subs = rng.choices(range(len(SUB_STYLE_COUNT_WEIGHTS)), weights=SUB_STYLE_COUNT_WEIGHTS)[0]
    subs: list[str] = []
    for _ in range(n_subs):
        candidates = [n for n in names if n != main and n not in subs]
        weights = [TABLE2_IMAGES.get(n, 50) ** 0.6 * affinity(main, n) for n in candidates]
        subs.append(rng.choices(candidates, weights=weights)[0])
    return main, sorted(subs, key=names.index)


def second_opinion(rng: random.Random, names: list[str], main: str, subs: list[str]) -> tuple[str, list[str]]:
    """Another expert's labels for the same photo: mostly agreeing, sometimes not."""
    if rng.random() < 0.15:
        alternatives = subs or [n for n in names if n != main and affinity(main, n) > 1]
        main = rng.choice(alternatives or names)
    subs = [s for s in subs if s != main and rng.random() > 0.2]
    if rng.random() < 0.25:
        extra = rng.choice([n for n in names if n != main])
        subs = sorted(set(subs) | {extra}, key=names.index)
    return main, subs


# ---------------------------------------------------------------- drawing


def choose_outfit(rng: random.Random, names: list[str], main: str, subs: list[str]) -> Outfit:
    """Each slot picks the style that dresses it: main, a sub-style, or noise."""
    drivers = [main, *subs, "*"]
    weights = [SLOT_WEIGHT_MAIN, *[SLOT_WEIGHT_SUB] * len(subs), SLOT_WEIGHT_NOISE]

    def look() -> StyleLook:
        style = rng.choices(drivers, weights=weights)[0]
        return LOOKS[rng.choice(names) if style == "*" else style]

    primary = rng.choice(look().palette)
    accent = rng.choice([c for c in look().palette if c != primary] or [(255, 255, 255)])
    accessories = sorted({rng.choice(look().accessories or ("bag",)) for _ in range(rng.choice([0, 1, 1, 2]))})
    return Outfit(
        primary=jitter(rng, primary),
        accent=jitter(rng, accent),
        top=rng.choice(look().tops),
        bottom=rng.choice(look().bottoms),
        pattern=rng.choice(look().patterns),
        shoes=rng.choice(look().shoes),
        accessories=accessories,
    )


def jitter(rng: random.Random, colour: RGB, amount: int = 18) -> RGB:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)  # type: ignore[return-value]


def pattern_fill(rng: random.Random, kind: str, base: RGB, accent: RGB, size: tuple[int, int]) -> Image.Image:
    """A fabric swatch the size of the canvas, cut out later by the garment's shape."""
    w, h = size
    img = Image.new("RGB", size, base)
    d = ImageDraw.Draw(img)
    step = rng.randint(7, 12)
    if kind in ("stripes", "pinstripe"):
        width = 1 if kind == "pinstripe" else step // 2
        for y in range(0, h, step):
            d.rectangle([0, y, w, y + width - 1], fill=accent)
    elif kind == "sport_stripes":
        for x in (w // 2 - 40, w // 2 + 34):
            d.rectangle([x, 0, x + 5, h], fill=accent)
    elif kind in ("dots", "studs", "sparkle", "hearts"):
        radius = {"dots": 2, "studs": 1, "sparkle": 1, "hearts": 3}[kind]
        colour = (230, 230, 230) if kind == "studs" else (255, 240, 160) if kind == "sparkle" else accent
        spacing = 5 if kind == "sparkle" else step
        for y in range(0, h, spacing):
            for x in range((y // spacing % 2) * spacing // 2, w, spacing):
                d.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    elif kind in ("plaid", "check"):
        line = 2 if kind == "check" else 3
        for v in range(0, max(w, h), step * 2):
            d.rectangle([v, 0, v + line, h], fill=accent)
            d.rectangle([0, v, w, v + line], fill=accent)
    elif kind in ("floral", "tropical"):
        for _ in range(w * h // (180 if kind == "floral" else 400)):
            x, y, r = rng.randrange(w), rng.randrange(h), rng.randint(2, 4 if kind == "floral" else 8)
            d.ellipse([x - r, y - r, x + r, y + r], fill=accent)
            d.ellipse([x - 1, y - 1, x + 1, y + 1], fill=(250, 230, 120))
    elif kind in ("zigzag", "paisley"):
        for y in range(0, h, step):
            points = [(x, y + (step // 2 if (x // step) % 2 else 0)) for x in range(0, w + step, step)]
            d.line(points, fill=accent, width=2)
    elif kind == "camo":
        for _ in range(w * h // 150):
            x, y = rng.randrange(w), rng.randrange(h)
            d.ellipse([x - 7, y - 4, x + 7, y + 4], fill=rng.choice([accent, (50, 45, 30), (120, 110, 70)]))
    elif kind == "tiedye":
        cx, cy = rng.randrange(w), rng.randrange(h)
        for r in range(max(w, h), 0, -6):
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=accent if (r // 6) % 2 else base)
    elif kind == "logo":
        d.rectangle([w // 2 - 12, h // 3, w // 2 + 12, h // 3 + 10], fill=accent)
    elif kind == "linen":
        for y in range(0, h, 2):
            d.line([(0, y), (w, y)], fill=tuple(max(0, c - 12) for c in base))
    return img


def draw_garment(canvas: Image.Image, shape: list[tuple[float, float]], fabric: Image.Image) -> None:
    mask = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(mask).polygon(shape, fill=255)
    canvas.paste(fabric, (0, 0), mask)


def draw_background(rng: random.Random, img: Image.Image) -> None:
    w, h = img.size
    d = ImageDraw.Draw(img)
    wall = (rng.randint(120, 230), rng.randint(120, 230), rng.randint(120, 230))
    for y in range(h):
        shade = 1 - 0.25 * y / h
        d.line([(0, y), (w, y)], fill=tuple(int(c * shade) for c in wall))
    for _ in range(rng.randint(2, 6)):  # windows, doors, shop signs
        x, y = rng.randrange(w), rng.randrange(int(h * 0.7))
        d.rectangle([x, y, x + rng.randint(15, 60), y + rng.randint(15, 60)], fill=jitter(rng, wall, 60))
    d.rectangle([0, int(h * 0.86), w, h], fill=(rng.randint(80, 140),) * 3)  # pavement


def draw_person(rng: random.Random, img: Image.Image, outfit: Outfit) -> None:
    w, h = img.size
    s = h / 320 * rng.uniform(0.88, 1.05)
    cx = w / 2 + rng.uniform(-0.1, 0.1) * w
    top_y = h * 0.06 + rng.uniform(0, 8)
    d = ImageDraw.Draw(img)
    skin, hair = rng.choice(SKIN_TONES), rng.choice(HAIR_COLOURS)

    def at(x: float, y: float) -> tuple[float, float]:
        return cx + x * s, top_y + y * s

    head_r = 17 * s
    hx, hy = at(0, 20)
    long_hair = rng.random() < 0.5
    d.ellipse(
        [hx - head_r - 3, hy - head_r - 3, hx + head_r + 3, hy + (head_r * 2.4 if long_hair else head_r * 0.3)],
        fill=hair,
    )
    d.ellipse([hx - head_r, hy - head_r, hx + head_r, hy + head_r], fill=skin)
    d.rectangle([*at(-5, 36), *at(5, 44)], fill=skin)  # neck

    fabric_top = pattern_fill(rng, outfit.pattern, outfit.primary, outfit.accent, img.size)
    fabric_bottom = pattern_fill(
        rng,
        "solid" if outfit.pattern != "solid" and rng.random() < 0.6 else outfit.pattern,
        outfit.accent,
        outfit.primary,
        img.size,
    )
    waist = 150 if outfit.top == "crop" else 165 if outfit.top != "trench" else 215
    hem = {"shorts": 205, "mini_skirt": 200, "midi_skirt": 245, "maxi_skirt": 285, "dress": 235}.get(outfit.bottom, 285)

    # legs and shoes (drawn first; garments cover them)
    for side in (-1, 1):
        d.rectangle([*at(side * 14 - 6, 180), *at(side * 14 + 6, 288)], fill=skin)
        shoe = {"heels": (8, 6), "boots": (10, 30), "sneakers": (13, 9), "loafers": (11, 7), "sandals": (10, 4)}[
            outfit.shoes
        ]
        shoe_colour = (
            (250, 250, 250)
            if outfit.shoes == "sneakers"
            else (30, 25, 20)
            if outfit.shoes == "boots"
            else outfit.accent
        )
        d.rectangle([*at(side * 14 - shoe[0], 290 - shoe[1]), *at(side * 14 + shoe[0], 292)], fill=shoe_colour)

    # bottom garment
    if outfit.bottom in ("jeans", "slim_pants", "wide_pants", "cargo", "shorts"):
        flare = {"wide_pants": 10, "cargo": 6}.get(outfit.bottom, 0)
        bottom_fabric = (
            pattern_fill(rng, "solid", (60, 90, 150), (40, 60, 110), img.size)
            if outfit.bottom == "jeans"
            else fabric_bottom
        )
        for side in (-1, 1):
            draw_garment(
                img,
                [at(side * 2, 160), at(side * 26, 160), at(side * (26 + flare), hem), at(side * (4 - flare / 2), hem)],
                bottom_fabric,
            )
        if outfit.bottom == "cargo":
            for side in (-1, 1):
                d.rectangle(
                    [*at(side * 24 - 5, 215), *at(side * 24 + 5, 232)],
                    fill=tuple(max(0, c - 30) for c in outfit.accent),
                )
    else:
        spread = {"mini_skirt": 34, "midi_skirt": 42, "maxi_skirt": 50, "dress": 40}[outfit.bottom]
        skirt_fabric = fabric_top if outfit.bottom == "dress" else fabric_bottom
        draw_garment(img, [at(-26, 158), at(26, 158), at(spread, hem), at(-spread, hem)], skirt_fabric)

    # top garment with sleeves
    shoulders = 36 if outfit.top in ("blazer", "jacket", "trench", "hoodie") else 31
    sleeve_end = 95 if outfit.top in ("tee", "crop") else 150
    for side in (-1, 1):
        draw_garment(
            img,
            [
                at(side * (shoulders - 6), 48),
                at(side * (shoulders + 2), 52),
                at(side * (shoulders + 12), sleeve_end),
                at(side * (shoulders - 1), sleeve_end + 2),
            ],
            fabric_top,
        )
        d.ellipse(
            [*at(side * (shoulders + 6) - 5, sleeve_end), *at(side * (shoulders + 6) + 5, sleeve_end + 10)], fill=skin
        )
    draw_garment(img, [at(-shoulders, 46), at(shoulders, 46), at(28, waist), at(-28, waist)], fabric_top)
    if outfit.top in ("blazer", "trench", "jacket"):  # lapels / open front
        d.line([at(0, 46), at(-10, 95)], fill=outfit.accent, width=max(1, int(3 * s)))
        d.line([at(0, 46), at(10, 95)], fill=outfit.accent, width=max(1, int(3 * s)))
    if outfit.top == "blouse":  # ruffle collar
        for x in range(-12, 13, 6):
            d.ellipse([*at(x - 3, 44), *at(x + 3, 50)], fill=(250, 250, 250))
    if outfit.top == "hoodie":
        d.arc([*at(-20, 30), *at(20, 60)], 0, 180, fill=outfit.accent, width=max(1, int(4 * s)))
    if outfit.top == "knit":
        for y in range(60, waist, 8):
            d.line([at(-28, y), at(28, y)], fill=tuple(max(0, c - 25) for c in outfit.primary), width=1)

    for item in outfit.accessories:
        draw_accessory(d, item, at, s, outfit, hair)


def draw_accessory(d: ImageDraw.ImageDraw, item: str, at, s: float, outfit: Outfit, hair: RGB) -> None:
    if item == "cap":
        d.chord([*at(-19, -2), *at(19, 30)], 180, 360, fill=outfit.accent)
        d.rectangle([*at(0, 12), *at(26, 16)], fill=outfit.accent)
    elif item == "hat":
        d.ellipse([*at(-34, 4), *at(34, 14)], fill=outfit.accent)
        d.rectangle([*at(-18, -10), *at(18, 9)], fill=outfit.accent)
    elif item == "headband":
        d.arc([*at(-18, 2), *at(18, 30)], 190, 350, fill=outfit.accent, width=max(1, int(4 * s)))
    elif item == "sunglasses":
        d.rectangle([*at(-13, 15), *at(-2, 22)], fill=(10, 10, 10))
        d.rectangle([*at(2, 15), *at(13, 22)], fill=(10, 10, 10))
    elif item == "chain":
        d.arc([*at(-16, 30), *at(16, 80)], 20, 160, fill=(225, 200, 90), width=max(1, int(2 * s)))
    elif item == "scarf":
        d.rectangle([*at(-16, 40), *at(16, 52)], fill=outfit.accent)
        d.rectangle([*at(6, 50), *at(14, 90)], fill=outfit.accent)
    elif item == "belt":
        d.rectangle([*at(-27, 156), *at(27, 162)], fill=(60, 40, 20))
        d.rectangle([*at(-4, 155), *at(4, 163)], fill=(220, 190, 80))
    elif item == "bag":
        d.rectangle([*at(42, 130), *at(66, 160)], fill=outfit.accent)
        d.line([at(36, 55), at(54, 130)], fill=(40, 30, 20), width=max(1, int(2 * s)))


def render_outfit_jpeg(rng: random.Random, settings: DemoSettings, outfit: Outfit, photo_seed: int) -> Image.Image:
    img = Image.new("RGB", (settings.width, settings.height))
    draw_background(rng, img)
    draw_person(rng, img, outfit)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    noise = np.random.default_rng(photo_seed).normal(0, 6, (settings.height, settings.width, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image, quality: int, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, **kwargs)
    return buf.getvalue()


# ---------------------------------------------------------------- bad files


def decompression_bomb_png(side: int = 40_000) -> bytes:
    """A valid PNG header claiming side x side pixels with a tiny compressed body."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = b"\x00" * (1 + side // 8)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * 64, 9)) + chunk(b"IEND", b"")
    )


def corrupt_jpeg(rng: random.Random, good: bytes) -> bytes:
    """Keeps the JPEG markers up to the scan, then garbage that the decoder rejects.

    libjpeg decodes much garbage without complaint, so draws are repeated (deterministically)
    until one actually fails to decode: the demo promises a file ingest must reject.
    """
    keep = good.find(b"\xff\xda") + 12
    for _ in range(100):
        candidate = good[:keep] + rng.randbytes(len(good) - keep)
        try:
            Image.open(io.BytesIO(candidate)).load()
        except (OSError, SyntaxError, ValueError):
            return candidate
    raise RuntimeError("could not make an undecodable JPEG in 100 draws")


# ---------------------------------------------------------------- batches


@dataclass
class DemoPhoto:
    file: str
    data: bytes
    main: str | None = None
    subs: list[str] = field(default_factory=list)


def photo_rng(seed: int, batch_index: int, index: int) -> random.Random:
    return random.Random(f"stylegraph-demo:{seed}:{batch_index}:{index}")


def make_photo(settings: DemoSettings, names: list[str], batch_index: int, index: int) -> DemoPhoto:
    rng = photo_rng(settings.seed, batch_index, index)
    main, subs = draw_labels(rng, names, main_style_weights(names, batch_index))
    outfit = choose_outfit(rng, names, main, subs)
    img = render_outfit_jpeg(rng, settings, outfit, photo_seed=rng.getrandbits(32))
    source = rng.choice(SOURCES)
    name = f"{source}_{rng.randrange(10**9, 10**10)}.jpg"
    return DemoPhoto(file=name, data=jpeg_bytes(img, quality=rng.randint(72, 94)), main=main, subs=subs)


def tricky_files(
    settings: DemoSettings, names: list[str], batch_index: int, photos: list[DemoPhoto]
) -> list[DemoPhoto]:
    """The files a real crawl delivers besides clean photos (see module docstring)."""
    rng = photo_rng(settings.seed, batch_index, -1)
    base = photos[0]
    cmyk_photo = make_photo(settings, names, batch_index, 10_001)
    rotated_photo = make_photo(settings, names, batch_index, 10_002)
    upright = Image.open(io.BytesIO(rotated_photo.data))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; viewers rotate 90 degrees clockwise
    if batch_index > 0:  # a re-post of a photo from the previous batch
        reposted = make_photo(settings, names, batch_index - 1, 0)
    else:
        reposted = photos[1]
    tiny = Image.open(io.BytesIO(base.data)).resize((40, 54))
    return [
        DemoPhoto(
            f"cmyk_{cmyk_photo.file}",
            jpeg_bytes(Image.open(io.BytesIO(cmyk_photo.data)).convert("CMYK"), 90),
            cmyk_photo.main,
            cmyk_photo.subs,
        ),
        DemoPhoto(
            f"exif6_{rotated_photo.file}",
            jpeg_bytes(upright.transpose(Image.Transpose.ROTATE_90), 90, exif=exif),
            rotated_photo.main,
            rotated_photo.subs,
        ),
        DemoPhoto(f"repost_{reposted.file}", reposted.data, reposted.main, reposted.subs),
        DemoPhoto("corrupt_0001.jpg", corrupt_jpeg(rng, base.data)),
        DemoPhoto("truncated_0001.jpg", base.data[: len(base.data) * 3 // 5]),
        DemoPhoto(
            "error_page_0001.jpg", b"<html><head><title>403 Forbidden</title></head><body>rate limited</body></html>\n"
        ),
        DemoPhoto("thumb_0001.jpg", jpeg_bytes(tiny, 85)),
        DemoPhoto("bomb_0001.png", decompression_bomb_png()),
    ]


def batch_name(batch_index: int) -> str:
    return f"batch-{batch_index + 1:03d}"


def label_studio_task(
    task_id: int, photo: DemoPhoto, batch: str, rng: random.Random, names: list[str], posted: datetime
) -> dict:
    """One task as Label Studio's JSON export writes it (choices for main and sub-styles)."""
    assert photo.main is not None, f"{photo.file}: only labelled photos become tasks"
    opinions = [(photo.main, photo.subs)]
    for p in EXTRA_ANNOTATOR_P:
        if rng.random() < p:
            opinions.append(second_opinion(rng, names, photo.main, photo.subs))
    experts = rng.sample(ANNOTATORS, len(opinions))
    annotations = []
    for n, ((main, subs), expert) in enumerate(zip(opinions, experts, strict=True)):
        created = posted + timedelta(days=2, minutes=rng.randint(0, 600))
        result = [
            {
                "id": f"m{task_id}-{n}",
                "type": "choices",
                "value": {"choices": [main]},
                "origin": "manual",
                "to_name": "image",
                "from_name": "main_style",
            }
        ]
        if subs:
            result.append(
                {
                    "id": f"s{task_id}-{n}",
                    "type": "choices",
                    "value": {"choices": subs},
                    "origin": "manual",
                    "to_name": "image",
                    "from_name": "sub_styles",
                }
            )
        annotations.append(
            {
                "id": task_id * 10 + n,
                "completed_by": expert,
                "result": result,
                "was_cancelled": False,
                "ground_truth": False,
                "created_at": created.isoformat().replace("+00:00", "Z"),
                "updated_at": (created + timedelta(seconds=rng.randint(0, 300))).isoformat().replace("+00:00", "Z"),
                "lead_time": round(rng.uniform(4, 60), 3),
                "task": task_id,
                "project": 1,
            }
        )
    return {
        "id": task_id,
        "data": {"image": f"/data/local-files/?d=crawl/{batch}/{photo.file}", "image_id": content_id(photo.data)},
        "annotations": annotations,
        "predictions": [],
        "meta": {},
        "project": 1,
        "total_annotations": len(annotations),
        "cancelled_annotations": 0,
    }


def generate_batch(
    settings: DemoSettings, names: list[str], batch_index: int, crawl_dir: Path, exports_dir: Path
) -> int:
    """Write one batch folder and its label export; returns the number of files."""
    batch = batch_name(batch_index)
    photos = [
        make_photo(settings, names, batch_index, i)
        for i in tqdm(range(settings.images_per_batch), desc=f"demo {batch}", unit="img", leave=False, disable=None)
    ]
    files = photos + tricky_files(settings, names, batch_index, photos)
    rng = photo_rng(settings.seed, batch_index, -2)
    week_start = datetime(2019, 7, 1, tzinfo=UTC) + timedelta(weeks=batch_index)
    posted = [week_start + timedelta(seconds=rng.randrange(7 * 24 * 3600)) for _ in files]
    with atomic_dir(crawl_dir / batch) as tmp:
        for photo in files:
            (tmp / photo.file).write_bytes(photo.data)
        with open(tmp / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file", "source", "post_id", "posted_at"])
            for photo, when in zip(files, posted, strict=True):
                known = [part for part in photo.file.split("_") if part in SOURCES]
                writer.writerow(
                    [
                        photo.file,
                        known[0] if known else rng.choice(SOURCES),
                        hashlib.sha1(photo.file.encode()).hexdigest()[:12],
                        when.isoformat(),
                    ]
                )
    seen: set[str] = set()
    tasks: list[dict] = []
    for photo, when in zip(files, posted, strict=True):
        image_id = content_id(photo.data)
        if photo.main is None or image_id in seen:
            continue
        seen.add(image_id)
        tasks.append(label_studio_task(batch_index * 100_000 + len(tasks) + 1, photo, batch, rng, names, when))
    with atomic_path(exports_dir / f"{batch}.json") as tmp:
        tmp.write_text(json.dumps(tasks, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return len(files)


def generate(
    settings: DemoSettings, names: list[str], crawl_dir: Path, exports_dir: Path, force: bool = False
) -> list[str]:
    """Generate the missing batches (all of them with `force`); returns the batches written."""
    written = []
    for batch_index in range(settings.batches):
        batch = batch_name(batch_index)
        if not force and (crawl_dir / batch).is_dir() and (exports_dir / f"{batch}.json").exists():
            continue
        generate_batch(settings, names, batch_index, crawl_dir, exports_dir)
        written.append(batch)
    return written


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo.crawl",
        description="Write the SYNTHETIC demo crawl: batches of drawn outfit pictures with metadata.csv, "
        "plus the experts' labels as Label Studio JSON exports. Existing batches are kept, so raising "
        "--batches adds new ones (the way a real crawl grows). Sizes default to the 'demo' section of params.yaml.",
    )
    parser.add_argument(
        "--params", type=Path, default=DEFAULT_PARAMS, help="params.yaml with 'taxonomy', 'crawl' and 'demo' sections"
    )
    parser.add_argument("--batches", type=int, help="number of batches (default: demo.batches)")
    parser.add_argument(
        "--images-per-batch",
        type=int,
        help="clean photos per batch, besides the 8 tricky files (default: demo.images_per_batch)",
    )
    parser.add_argument("--seed", type=int, help="random seed (default: demo.seed)")
    parser.add_argument("--crawl-dir", type=Path, help="where batches go (default: crawl.dir)")
    parser.add_argument("--exports-dir", type=Path, help="where label exports go (default: crawl.label_exports)")
    parser.add_argument("--force", action="store_true", help="regenerate batches that already exist")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors("demo_crawl", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    demo, crawl = load_section(DemoSettings, "demo", args.params), load_section(CrawlSettings, "crawl", args.params)
    overrides = {
        k: v
        for k, v in {"batches": args.batches, "images_per_batch": args.images_per_batch, "seed": args.seed}.items()
        if v is not None
    }
    settings = DemoSettings(**{**demo.__dict__, **overrides})
    taxonomy = load_taxonomy_path(args.params)
    names = load_taxonomy(taxonomy).names
    unknown = sorted(set(names) - set(LOOKS))
    if unknown:
        raise InputError(f"taxonomy {taxonomy} has styles with no demo look: {unknown}")
    crawl_dir = args.crawl_dir or crawl.dir
    exports_dir = args.exports_dir or crawl.label_exports
    written = generate(settings, names, crawl_dir, exports_dir, force=args.force)
    print(
        f"demo_crawl: wrote {len(written)} batch(es) {written} to {crawl_dir} (labels in {exports_dir}); SYNTHETIC "
        "pictures"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

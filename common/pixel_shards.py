"""Read side of the pixel cache (the pixel_cache stage writes it): memory-mapped shards, one per crawl batch.

<cache>/<batch>.npy      uint8 (N, height, width, 3)
<cache>/<batch>.parquet  image_id, row  (row index into the .npy)
<cache>/<batch>.json     the shard's height, width and a digest of its image ids
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.cli import InputError


class PixelStore:
    """Read side: memory-mapped shards, looked up by image id."""

    def __init__(self, cache_dir: Path):
        index = [pd.read_parquet(p).assign(shard=p.stem) for p in sorted(cache_dir.glob("*.parquet"))]
        if not index:
            raise InputError(f"no pixel cache in {cache_dir}: run the pixel_cache stage (`dvc repro pixel_cache`)")
        self.index = pd.concat(index, ignore_index=True).set_index("image_id")
        self.shards = {name: np.load(cache_dir / f"{name}.npy", mmap_mode="r") for name in self.index["shard"].unique()}

    def __len__(self) -> int:
        return len(self.index)

    def get(self, image_ids: list[str]) -> np.ndarray:
        """(len(image_ids), H, W, 3) uint8, in the order asked."""
        where = self.index.loc[image_ids]
        return np.stack([self.shards[s][r] for s, r in zip(where["shard"], where["row"], strict=True)])

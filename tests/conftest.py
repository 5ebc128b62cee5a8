"""Shared fixtures: a tiny demo crawl (real generator, real files) and the project paths."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.demo_crawl import generate
from pipeline.settings import IngestSettings, Params, load_params
from pipeline.taxonomy import load_taxonomy

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def params() -> Params:
    return load_params(PROJECT_ROOT / "params.yaml")


@pytest.fixture(scope="session")
def style_names(params: Params) -> list[str]:
    return load_taxonomy(PROJECT_ROOT / params.taxonomy).names


@pytest.fixture()
def tiny_demo(params: Params):
    """DemoSettings for a few small pictures per batch (the real generator, fast)."""
    return dataclasses.replace(params.demo, batches=2, images_per_batch=6, width=96, height=128)


@pytest.fixture()
def ingest_settings() -> IngestSettings:
    return IngestSettings(workers=1, min_side=64, max_pixels=89_478_485, near_duplicate_distance=2)


@pytest.fixture()
def demo_crawl(tmp_path: Path, tiny_demo, style_names) -> Path:
    """A crawl folder with two tiny demo batches; returns the crawl folder."""
    generate(tiny_demo, style_names, tmp_path / "crawl", tmp_path / "exports")
    return tmp_path / "crawl"

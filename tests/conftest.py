"""Shared fixtures: a tiny demo crawl (real generator, real files) and the project paths."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from pathlib import Path

import pytest

from common.settings import IngestSettings, load_section, load_taxonomy_path
from common.taxonomy import load_taxonomy
from demo.crawl import DemoSettings, generate

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(
    0, str(PROJECT_ROOT / "benchmarks")
)  # what benchmarks share (active.py, ccp.py), as their scripts see it
SHARED_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"


# What the check below guards: the pipeline's outputs (the stages' default paths), its inputs and its code.
# Logs, caches and venvs that tools write while the tests run lie elsewhere.
PROTECTED = (
    "data",
    "metrics",
    "models",
    "reports",
    "dvclive",
    "pipeline",
    "annotation",
    "training",
    "taxonomies",
    "dvc.yaml",
    "dvc.lock",
    "params.yaml",
)


def project_files() -> dict[str, tuple[int, int]]:
    """(mtime, size) of every file under PROTECTED (bytecode caches aside), by path."""
    found = {}
    for top in (PROJECT_ROOT / name for name in PROTECTED):
        paths = (
            [top]
            if top.is_file()
            else [
                Path(folder) / name
                for folder, _, files in os.walk(top)
                if "__pycache__" not in folder
                for name in files
            ]
        )
        for path in paths:
            stat = path.lstat()
            found[str(path.relative_to(PROJECT_ROOT))] = (stat.st_mtime_ns, stat.st_size)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def project_left_as_it_was():
    """Fail the run if a test wrote into the project (a stage's default output path, relative to the working
    directory): that would silently replace the pipeline's real outputs with a test's."""
    before = project_files()
    yield
    after = project_files()
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    assert not changed, f"tests changed files of the project: {changed[:10]}"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Curation outputs for 28 tiny pictures whose colours carry their labels, plus cached features: the stage
    inputs of the training-side tests (tests/helpers.py), built once per test module."""
    from helpers import build_stage_inputs  # torch and timm load only where a test asks for these

    return build_stage_inputs(tmp_path_factory.mktemp("stage-inputs"))


@pytest.fixture(scope="session")
def params_file() -> Path:
    return PROJECT_ROOT / "params.yaml"


@pytest.fixture(scope="session")
def demo_settings(params_file: Path) -> DemoSettings:
    return load_section(DemoSettings, "demo", params_file)


@pytest.fixture(scope="session")
def style_names(params_file: Path) -> list[str]:
    return load_taxonomy(PROJECT_ROOT / load_taxonomy_path(params_file)).names


@pytest.fixture()
def tiny_demo(demo_settings: DemoSettings):
    """DemoSettings for a few small pictures per batch (the real generator, fast)."""
    return dataclasses.replace(demo_settings, batches=2, images_per_batch=6, width=96, height=128)


@pytest.fixture()
def ingest_settings() -> IngestSettings:
    return IngestSettings(workers=1, min_side=64, max_pixels=89_478_485, near_duplicate_distance=2)


@pytest.fixture()
def demo_crawl(tmp_path: Path, tiny_demo, style_names) -> Path:
    """A crawl folder with two tiny demo batches; returns the crawl folder."""
    generate(tiny_demo, style_names, tmp_path / "crawl", tmp_path / "exports")
    return tmp_path / "crawl"

"""Real `dvc repro` on a tiny demo crawl in a throwaway copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


def run(cmd: str, cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"`{cmd}` failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """The project's pipeline files in a fresh git + DVC repo, with a tiny demo and a temp remote."""
    work = tmp_path / "project"
    work.mkdir()
    for name in ("dvc.yaml", "pipeline", "annotation", "training", "taxonomies"):
        src = ROOT / name
        (shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy(src, work / name))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo"].update(batches=2, images_per_batch=8, width=96, height=128)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    run("git init -q && dvc init -q", work)
    run(f"dvc remote add -d local {tmp_path / 'remote'}", work)
    return work


def metrics(project: Path, stage: str = "ingest") -> dict:
    return json.loads((project / f"metrics/{stage}.json").read_text())


def test_repro_is_incremental_idempotent_and_restorable(project: Path):
    run("python -m pipeline.demo_crawl && dvc add -q data/crawl/batch-* data/label-exports", project)
    first = run("dvc repro", project)
    assert "Running stage 'ingest'" in first
    assert metrics(project)["batches"] == 2 and metrics(project)["rejected"] == 10
    assert metrics(project, "labels")["labelled_images"] == metrics(project)["images"]
    catalog = (project / "data/catalog.parquet").read_bytes()

    again = run("dvc repro", project)
    assert "Running stage" not in again, again
    assert "Data and pipelines are up to date." in run("dvc status", project)

    # a new crawl batch arrives: copied in, tracked, reproduced; only it is decoded
    run("python -m pipeline.demo_crawl --batches 3 && dvc add -q data/crawl/batch-003", project)
    run("dvc repro", project)
    new_files = len(list((project / "data/crawl/batch-003").iterdir())) - 1  # minus metadata.csv
    assert metrics(project)["decoded"] == new_files
    assert metrics(project)["batches"] == 3

    # everything DVC versions reaches a teammate: commit, push, fresh clone, pull
    run("dvc push -q && git add -A && git -c user.name=t -c user.email=t@t.invalid commit -qm crawl", project)
    clone = project.parent / "clone"
    run(f"git clone -q {project} {clone}", project.parent)
    run("dvc pull -q", clone)
    assert (clone / "data/catalog.parquet").read_bytes() == (project / "data/catalog.parquet").read_bytes()
    assert "Data and pipelines are up to date." in run("dvc status", clone)
    assert "Running stage" not in run("dvc repro", clone)

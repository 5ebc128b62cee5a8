"""Fault injection: a stage killed in the middle (SIGKILL, as by the out-of-memory killer or a closed laptop), then run
again, leaves exactly what an uninterrupted run leaves; two `dvc repro` at once in one checkout do not both run.

(A training run killed and resumed: tests/test_train.py; Label Studio stopped in the middle of a push:
tests/test_annotation_offline.py and tests/test_labelstudio.py; a full disk: tests/test_atomic.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # SIGKILLs real stage processes (make test-fast skips them)

ROOT = Path(__file__).parents[1]


def stage(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def digests(folder: Path) -> dict[str, str]:
    """md5 of every file under `folder` (temporaries included, so a leftover shows), by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def kill_when(command: list[str], ready: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    """Start `command`, SIGKILL it as soon as `ready()` holds; whether it was killed (False: it finished first)."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.002)
    process.wait()
    return False


def no_process_mentions(text: str, timeout_s: float = 10.0) -> bool:
    """Whether, within `timeout_s`, no running process has `text` in its command line (Linux: /proc)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if text in cmdline.read_bytes().decode(errors="replace"):
                    alive.append(cmdline.parent.name)
            except OSError:  # the process ended meanwhile
                continue
        if not alive:
            return True
        time.sleep(0.1)
    return False


def ingest_args(crawl: Path, out: Path) -> list[str]:
    return ["--crawl-dir", str(crawl), "--cache-dir", str(out / "cache"), "--catalog", str(out / "catalog.parquet"),
            "--rejects", str(out / "rejects.csv"), "--near-duplicates", str(out / "near.parquet"),
            "--metrics", str(out / "metrics.json")]  # fmt: skip


def test_ingest_killed_in_the_middle_then_run_again_leaves_what_an_uninterrupted_run_leaves(
    demo_crawl: Path, tmp_path: Path
):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(
        stage("pipeline.ingest", *ingest_args(demo_crawl, reference)), cwd=ROOT, check=True, capture_output=True
    )
    # killed once the first batch is cached and the second is being decoded
    assert kill_when(
        stage("pipeline.ingest", *ingest_args(demo_crawl, killed)),
        lambda: (killed / "cache" / "batch-001.parquet").exists(),
    )
    assert not (killed / "catalog.parquet").exists(), "no output before the end"
    if sys.platform == "linux":  # elsewhere nothing makes a killed stage's decode workers end (common/processes.py)
        assert no_process_mentions(str(killed)), "the killed ingest's decode workers ended with it"
    subprocess.run(
        stage("pipeline.ingest", *ingest_args(demo_crawl, killed)), cwd=ROOT, check=True, capture_output=True
    )
    metrics = {run: json.loads((run / "metrics.json").read_text()) for run in (reference, killed)}
    assert metrics[killed]["reused"] > 0, "the batch cached before the kill is not decoded again"
    work_done = ("decoded", "reused", "rehashed")  # how the outputs were reached, not what they are
    assert {k: v for k, v in metrics[killed].items() if k not in work_done} == {
        k: v for k, v in metrics[reference].items() if k not in work_done
    }
    assert {**digests(killed), "metrics.json": ""} == {**digests(reference), "metrics.json": ""}


def test_pixel_cache_killed_in_the_middle_then_run_again_leaves_what_an_uninterrupted_run_leaves(
    demo_crawl: Path, tmp_path: Path
):
    subprocess.run(
        stage("pipeline.ingest", *ingest_args(demo_crawl, tmp_path / "ingest")),
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["pixel_cache"]["workers"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    def pixel_cache(out: Path) -> list[str]:
        return stage("pipeline.pixel_cache", "--params", str(tmp_path / "params.yaml"),
                     "--catalog", str(tmp_path / "ingest" / "catalog.parquet"), "--crawl-dir", str(demo_crawl),
                     "--out", str(out))  # fmt: skip

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(pixel_cache(reference), cwd=ROOT, check=True, capture_output=True)
    killed.mkdir()
    assert kill_when(pixel_cache(killed), lambda: any(killed.iterdir()))  # as soon as it starts writing
    subprocess.run(pixel_cache(killed), cwd=ROOT, check=True, capture_output=True)
    assert digests(killed) == digests(reference)


def test_a_second_dvc_repro_in_the_same_checkout_is_refused_while_the_first_runs(tmp_path: Path):
    work = tmp_path / "project"
    work.mkdir()
    for name in ("dvc.yaml", "params.yaml", "common", "pipeline", "annotation", "training", "demo", "taxonomies"):
        src = ROOT / name
        (
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"))
            if src.is_dir()
            else shutil.copy(src, work / name)
        )
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["demo"].update(batches=2, images_per_batch=8, width=96, height=128)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    subprocess.run("git init -q && dvc init -q && python -m demo.crawl "
                   "&& dvc add -q data/crawl/batch-* data/label-exports",
                   shell=True, cwd=work, env=env, check=True, capture_output=True)  # fmt: skip
    first = subprocess.Popen(
        ["dvc", "repro", "features"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (work / "data" / "catalog.parquet").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the first one is inside its stages, holding the lock
        second = subprocess.run(
            ["dvc", "repro", "features"], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
    finally:
        output = first.communicate(timeout=600)[0]
    assert first.returncode == 0, output
    assert second.returncode != 0 and "lock" in (second.stdout + second.stderr).lower(), second.stdout + second.stderr
    assert (
        "Data and pipelines are up to date."
        in subprocess.run(["dvc", "status", "features"], cwd=work, env=env, capture_output=True, text=True).stdout
    )

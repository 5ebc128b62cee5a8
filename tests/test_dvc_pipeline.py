"""Real `dvc repro` on a tiny demo crawl in a throwaway copy of the project."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


def run(cmd: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    done = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"`{cmd}` failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """The project's pipeline files in a fresh git + DVC repo, with a tiny demo and a temp remote."""
    work = tmp_path / "project"
    work.mkdir()
    for name in ("dvc.yaml", "common", "pipeline", "annotation", "training", "demo", "taxonomies"):
        src = ROOT / name
        (
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"))
            if src.is_dir()
            else shutil.copy(src, work / name)
        )
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo"].update(batches=2, images_per_batch=8, width=96, height=128)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    run("git init -q && dvc init -q", work)
    run(f"dvc remote add -d local {tmp_path / 'remote'}", work)
    return work


def metrics(project: Path, stage: str = "ingest") -> dict:
    return json.loads((project / f"metrics/{stage}.json").read_text())


def test_repro_is_incremental_idempotent_and_restorable(project: Path):
    run("python -m demo.crawl && dvc add -q data/crawl/batch-* data/label-exports", project)
    first = run("dvc repro", project)
    assert "Running stage 'ingest'" in first
    assert metrics(project)["batches"] == 2 and metrics(project)["rejected"] == 10
    assert metrics(project, "labels")["labelled_images"] == metrics(project)["images"]
    page = (project / "reports/index.html").read_text(encoding="utf-8")  # the last stage: every section, none empty
    assert page.count("<section id=") == 9 and 'class="absent"' not in page and "data:image/png;base64," in page

    again = run("dvc repro", project)
    assert "Running stage" not in again, again
    assert "Data and pipelines are up to date." in run("dvc status", project)

    # a new crawl batch arrives with its labels: copied in, tracked, reproduced; only it is decoded and extracted
    run("python -m demo.crawl --batches 3 && dvc add -q data/crawl/batch-003 data/label-exports", project)
    output = run("dvc repro", project)
    new_files = len(list((project / "data/crawl/batch-003").iterdir())) - 1  # minus metadata.csv
    assert metrics(project)["decoded"] == new_files
    assert metrics(project)["batches"] == 3
    dataset = pd.read_parquet(project / "data/dataset.parquet")
    new = dataset[dataset["batch"] == "batch-003"]
    assert 0 < len(new) < len(dataset)
    assert f"features: {len(dataset)} images ({len(new)} + {len(new)} mirrored extracted" in output

    # everything DVC versions reaches a teammate: commit, push, fresh clone, pull
    run("dvc push -q && git add -A && git -c user.name=t -c user.email=t@t.invalid commit -qm crawl", project)
    clone = project.parent / "clone"
    run(f"git clone -q {project} {clone}", project.parent)
    run("dvc pull -q", clone)
    assert (clone / "data/catalog.parquet").read_bytes() == (project / "data/catalog.parquet").read_bytes()
    assert "Data and pipelines are up to date." in run("dvc status", clone)
    assert "Running stage" not in run("dvc repro", clone)


def write_existing_labels(project: Path) -> None:
    """Turn the demo's Label Studio exports into what a team arriving with labels has: K-Fashion files (in a folder of
    the label folder and beside the photos of batch-002) and a CSV with a main label column; one bad record of each; no
    export."""
    from annotation.importers import annotation_choices, local_file_key, read_label_studio_export
    from common.taxonomy import load_taxonomy

    korean = {name: k for k, name in load_taxonomy(project / "taxonomies/kfashion_styles.yaml").by_korean().items()}
    exports = project / "data/label-exports"
    csv_lines = ["image,tags,main_style"]
    for export in sorted(exports.glob("*.json")):
        for task in read_label_studio_export(export):
            batch, file = local_file_key(task["data"]["image"]).split("/")
            choices = annotation_choices(task["annotations"][0])
            main, subs = choices["main_style"][0], choices.get("sub_styles", [])
            if main in korean and len(csv_lines) > 2:  # the first images go to the CSV, so that it holds some
                entries = [
                    {"스타일": main, "서브스타일": ""},
                    *({"스타일": "", "서브스타일": korean[s]} for s in subs if s in korean),
                ]
                entries[0]["스타일"] = korean[main]
                folder = project / "data/crawl" / batch if batch == "batch-002" else exports / "kfashion"
                folder.mkdir(exist_ok=True)
                label = {"데이터셋 정보": {"데이터셋 상세설명": {"라벨링": {"스타일": entries}}}}
                (folder / f"{Path(file).stem}.json").write_text(json.dumps(label, ensure_ascii=False), encoding="utf-8")
            else:
                csv_lines.append(f"{batch}/{file},{';'.join(subs)},{main}")
        export.unlink()
    bad = {"데이터셋 정보": {"데이터셋 상세설명": {"라벨링": {"스타일": [{"스타일": "페미닌"}]}}}}
    bad_stem = Path(
        csv_lines[1].split(",")[0]
    ).stem  # a photo of the catalog, labelled with a style K-Fashion's taxonomy lacks
    (exports / "kfashion" / f"{bad_stem}.json").write_text(json.dumps(bad, ensure_ascii=False), encoding="utf-8")
    csv_lines.append("batch-001/no-such-photo.jpg,Casual,Casual")
    (exports / "tags.csv").write_text("\n".join(csv_lines) + "\n", encoding="utf-8")


def test_repro_with_kfashion_files_and_a_csv_instead_of_label_studio_exports(project: Path):
    run("python -m demo.crawl", project)
    write_existing_labels(project)
    run("dvc add -q data/crawl/batch-* data/label-exports", project)
    run("dvc repro", project)
    annotations = pd.read_parquet(project / "data/annotations.parquet")
    kinds = {source.split(":")[0] for source in annotations["source"]}
    assert kinds == {"kfashion", "csv"}, kinds
    assert "kfashion:batch-002" in set(annotations["source"]), "K-Fashion files beside the photos of a batch are read"
    rejects = pd.read_csv(project / "data/annotation_rejects.csv")
    reasons = dict(zip(rejects["record"], rejects["reason"], strict=True))
    bad_stem = Path(pd.read_csv(project / "data/label-exports/tags.csv")["image"][0]).stem
    assert reasons[bad_stem] == "Korean style name(s) ['페미닌'] not in taxonomy 'kfashion-styles'"
    assert reasons[next(r for r in reasons if "no-such-photo" in r)].startswith(
        "image batch-001/no-such-photo.jpg not in the catalog"
    )
    assert len(pd.read_parquet(project / "data/dataset.parquet")) > 0 and (project / "metrics/evaluation.json").exists()
    assert not (pd.read_csv(project / "data/ingest/rejects.csv")["file"].astype(str).str.endswith(".json")).any()
    every_stage_runs_with_the_params_it_does_not_declare_broken(project)


def broken_except(params: dict, declared: list[str]) -> dict:
    """`params` with every section and key a stage does not declare (dvc.yaml `params:`) replaced by a value no
    settings class accepts."""
    broken: dict = {}
    for section, value in params.items():
        keys = [d.split(".", 1)[1] for d in declared if d.startswith(f"{section}.")]
        if section in declared:
            broken[section] = value
        elif keys and isinstance(value, dict):
            broken[section] = {key: (value[key] if key in keys else "broken") for key in value}
        else:
            broken[section] = {"broken": "not a setting"} if isinstance(value, dict) else "broken.yaml"
    return broken


def every_stage_runs_with_the_params_it_does_not_declare_broken(project: Path) -> None:
    """Each stage reads exactly the params dvc.yaml declares for it: with everything else broken, its command (run
    directly, as dvc.yaml spells it) still succeeds."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for name, stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].items():
        spec, key = stage.get("do", stage), "linear"  # a foreach stage: one of its entries
        if "params" not in spec:  # reads no params (consolidate)
            continue
        declared = [str(p).replace("${key}", key) for p in spec.get("params", [])]
        (project / f"broken-{name}.yaml").write_text(yaml.safe_dump(broken_except(params, declared)))
        cmd = (
            spec["cmd"].replace("${key}", key).replace("${crawl.dir}", params["crawl"]["dir"])
            .replace("${crawl.label_exports}", params["crawl"]["label_exports"])
        )  # fmt: skip
        run(f"{cmd} --params broken-{name}.yaml", project)


PACKAGES = ("common", "pipeline", "training", "annotation", "demo")
# How files are written and read, params read and errors reported, not what a stage computes: left out of stage deps.
PLUMBING = {"common/atomic.py", "common/tables.py", "common/settings.py", "common/cli.py"}


def _module_file(module: str) -> Path | None:
    for candidate in (ROOT / f"{module.replace('.', '/')}.py", ROOT / module.replace(".", "/") / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _project_imports(path: Path) -> set[str]:
    """Project modules `path` imports (`from pipeline import graph` counts as pipeline.graph)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            found |= {node.module} | {
                f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")
            }
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
    return found


def _source_files(module: str) -> set[str]:
    """Every project file that `python -m module` runs, transitively."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = _module_file(todo.pop())
        if path is not None and path not in seen:
            seen.add(path)
            todo.extend(_project_imports(path))
    return {str(p.relative_to(ROOT)) for p in seen if p.name != "__init__.py"}


def _stage_modules() -> dict[str, str]:
    """Stage name -> the module its command runs (`python -m <module>`)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    commands = {name: stage.get("do", stage)["cmd"] for name, stage in stages.items()}
    return {name: re.search(r"python -m ([\w.]+)", cmd).group(1) for name, cmd in commands.items()}


def test_no_stage_imports_another_stage():
    """What stages share lives in common/ (or a package's shared modules): editing one stage's module must not re-run
    another stage, nor may a stage run another's code."""
    modules = set(_stage_modules().values())
    crossing = {}
    for name, module in _stage_modules().items():
        others = {f.removesuffix(".py").replace("/", ".") for f in _source_files(module)} & (modules - {module})
        if others:
            crossing[name] = sorted(others)
    assert not crossing, f"stages importing other stages' modules: {crossing}"


def test_every_stage_depends_on_the_code_it_runs():
    """A change to any module a stage imports must make `dvc repro` re-run that stage."""
    missing = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"].items():
        stage = stage.get("do", stage)
        module = re.search(r"python -m ([\w.]+)", stage["cmd"]).group(1)
        deps = set(stage.get("deps", []))
        if gaps := sorted(_source_files(module) - deps - PLUMBING):
            missing[name] = gaps
    assert not missing, f"dvc.yaml stages lack deps on the code they run: {missing}"

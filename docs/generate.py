"""Generated documentation: `make docs` rewrites it, `python docs/generate.py --check` says whether it is current.

Each entry of ARTIFACTS is (path, generator): the generator takes the file's current text ("" when the file
does not exist) and returns the text it should have. Without --check every artifact that differs is written;
with --check nothing is written and the exit status is 1 when any differs (tests/test_docs.py runs it).

Artifacts:
- README.md, the pipeline picture between `<!-- dag:start -->` and `<!-- dag:end -->`: `dvc dag --mermaid`
  with the crawl batches' .dvc files drawn as one node and the `train@<model>` stages (one per entry of
  `models` in params.yaml) as one, so neither a new batch nor a new model entry changes the picture.
- docs/reference.md: every params.yaml key, from the settings dataclasses (docs/reference.py).

Usage: python docs/generate.py [--check]   (from anywhere; it works in the project root)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from reference import render_reference  # docs/reference.py, beside this script

from common.atomic import atomic_path

ROOT = Path(__file__).resolve().parent.parent
DAG_START = "<!-- dag:start -->"
DAG_END = "<!-- dag:end -->"
NODE = re.compile(r'^\s*(node\d+)\["(.*)"\]\s*$')
EDGE = re.compile(r"^\s*(node\d+)-->(node\d+)\s*$")


def dvc_dag_mermaid() -> str:
    """`dvc dag --mermaid` of the project, as DVC prints it."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "dag", "--mermaid"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"docs/generate.py: `dvc dag --mermaid` failed:\n{done.stderr.strip()}")
    return done.stdout


def crawl_dir() -> str:
    """params.yaml's crawl.dir, relative to the project root (the demo's: data/crawl)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8")) or {}
    return str((params.get("crawl") or {}).get("dir", "data/crawl")).rstrip("/")


def group(label: str, crawl: str) -> str:
    """The node a stage or tracked file is drawn as: one for every crawl batch, one per foreach stage."""
    if label.endswith(".dvc") and label.rpartition("/")[0] == crawl:
        return f"{crawl}/*.dvc"
    if "@" in label and not label.endswith(".dvc"):
        return label.split("@", 1)[0] + "@*"
    return label


def collapse(mermaid: str, crawl: str) -> str:
    """DVC's mermaid with grouped nodes, one line per node and one per source node (`a --> b & c`)."""
    labels: dict[str, str] = {}
    edges: set[tuple[str, str]] = set()
    header = "flowchart TD"
    for line in mermaid.splitlines():
        if node := NODE.match(line):
            labels[node[1]] = group(node[2], crawl)
        elif edge := EDGE.match(line):
            edges.add((edge[1], edge[2]))
        elif line.strip().startswith(("flowchart", "graph")):
            header = line.strip()
        elif line.strip():
            raise SystemExit(f"docs/generate.py: a line of `dvc dag --mermaid` it does not know: {line!r}")
    names = sorted(set(labels.values()))
    ids = {name: f"n{i}" for i, name in enumerate(names, 1)}
    targets: dict[str, set[str]] = {}
    for source, target in edges:
        a, b = labels[source], labels[target]
        if a != b:
            targets.setdefault(a, set()).add(b)
    lines = [header]
    # Tracked data (crawl batches, label exports) as cylinders, stages as boxes.
    lines += [
        f'    {ids[name]}[("{name}")]' if name.endswith(".dvc") else f'    {ids[name]}["{name}"]' for name in names
    ]
    lines += [
        f"    {ids[a]} --> " + " & ".join(ids[b] for b in sorted(targets[a], key=names.index))
        for a in names
        if a in targets
    ]
    return "\n".join(lines)


def readme_dag(current: str) -> str:
    """README.md with its dag block rewritten from `dvc dag --mermaid`."""
    start, end = current.find(DAG_START), current.find(DAG_END)
    if start < 0 or end < start:
        raise SystemExit(f"docs/generate.py: README.md lacks the {DAG_START} ... {DAG_END} markers")
    block = f"{DAG_START}\n```mermaid\n{collapse(dvc_dag_mermaid(), crawl_dir())}\n```\n"
    return current[:start] + block + current[end:]


def normalised(text: str) -> str:
    """Trailing whitespace of each line removed, one final newline: what is written and compared."""
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines()) + "\n"


# (path, generator: current text -> the text it should have).
ARTIFACTS: list[tuple[Path, Callable[[str], str]]] = [
    (ROOT / "README.md", readme_dag),
    (ROOT / "docs" / "reference.md", lambda _: render_reference()),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when an artifact is out of date")
    args = parser.parse_args()
    stale = []
    for path, generate in ARTIFACTS:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        wanted = normalised(generate(current))
        if wanted == current:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            with atomic_path(path) as temporary:  # an interrupted run leaves the old file, not half a README
                temporary.write_text(wanted, encoding="utf-8")
            print(f"docs/generate.py: wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        names = ", ".join(map(str, stale))
        print(f"docs/generate.py: {names} out of date with the code: run `make docs`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

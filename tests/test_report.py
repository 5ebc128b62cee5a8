"""Report stage: every section on the page, nothing fetched from outside it, absent inputs named, and the page as
headless Chromium renders it (every section laid out, every image decoded).

The inputs are a small project folder: the stats and graph stages run for real on a dozen labelled images (their
Parquet, PNG and npz outputs); the evaluate, train, label_issues, consolidate and validate outputs are written in
their formats by hand (tests/test_dvc_pipeline.py builds the page from a real `dvc repro`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import graph, stats
from pipeline.report import SECTIONS, main, parse_args
from pipeline.report_html import PNG_MAGIC

ROOT = Path(__file__).parents[1]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")  # fmt: skip
STYLES = ["Casual", "Romantic", "Sexy", "Sporty", "Retro"]
MODELS = ["linear", "mlgcn", "basic_cnn"]
DATA_DOCS_LINK = "validation/index.html"  # reports/index.html -> reports/validation/index.html


class Page(HTMLParser):
    """What the page refers to and holds: sections (id -> first tag inside), images, links, scripts, styles."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: dict[str, str | None] = {}
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.sources: list[str] = []  # src of anything but <img>, and <link href>
        self.styles = ""
        self._open_section: str | None = None
        self._in_style = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {k: v or "" for k, v in attrs}
        if self._open_section is not None and self.sections[self._open_section] is None:
            self.sections[self._open_section] = tag
            self._open_section = None
        if tag == "section":
            self.sections[named["id"]] = None
            self._open_section = named["id"]
        elif tag == "img":
            self.images.append(named)
        elif tag == "a":
            self.links.append(named.get("href", ""))
        elif tag == "link" or "src" in named:
            self.sources.append(named.get("src") or named.get("href", ""))
        self._in_style = tag == "style"
        self.styles += named.get("style", "")

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles += data


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def write_inputs(folder: Path) -> None:
    """Every input of the report at its default path under `folder` (the project root in the stage)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["taxonomy"] = str(ROOT / params["taxonomy"])
    (folder / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    # stats and graph: the real stages on 12 labelled images in 2 batches
    rng = np.random.default_rng(3)
    mains = [STYLES[k % len(STYLES)] for k in range(12)]
    subs = [np.array(sorted(set(rng.choice(STYLES, 2)) - {m}), dtype=object) for m in mains]
    batches = pd.Series(["batch-001"] * 6 + ["batch-002"] * 6, dtype="string")
    labels = pd.DataFrame({"image_id": pd.Series([f"i{k}" for k in range(12)], dtype="string"), "batch": batches})
    labels = labels.assign(main_style=pd.Series(mains, dtype="string"), sub_styles=subs)
    (folder / "data").mkdir()
    labels.to_parquet(folder / "data/image_labels.parquet")
    label_sets = [np.array([m, *s], dtype=object) for m, s in zip(mains, subs, strict=True)]
    dataset = pd.DataFrame({"split": "train", "labels": label_sets})
    dataset.to_parquet(folder / "data/dataset.parquet")
    write_json(folder / "data/label_subset.json", {"labels": STYLES, "top_k": 0})
    assert stats.main(["--labels", "data/image_labels.parquet"]) == 0
    assert graph.main([]) == 0
    # evaluate
    models = {
        name: {"mAP": 0.3 + k / 50, "mAP_ci_low": 0.25 + k / 50, "mAP_ci_high": 0.35 + k / 50, "val_mAP": 0.33}
        for k, name in enumerate(MODELS)
    }
    evaluation = {"split": "test", "n_images": 40, "chosen_model": "mlgcn", "baseline": "linear", "models": models}
    write_json(folder / "metrics/evaluation.json", evaluation)
    (folder / "reports/evaluation.md").write_text(
        "# Evaluation: test split, 40 images\n\n**Chosen: mlgcn** <script>alert('raw html')</script>\n\n"
        "| model | mAP |\n|---|---|\n" + "".join(f"| {n} | {100 * m['mAP']:.2f} |\n" for n, m in models.items()),
        encoding="utf-8",
    )
    # train: dvclive
    for k, name in enumerate(MODELS):
        plots = folder / "dvclive" / name / "plots/metrics"
        for split, columns in (("train", ["loss"]), ("val", ["loss", "mAP", "top1_any"])):
            (plots / split).mkdir(parents=True)
            for column in columns:
                values = [1 / (step + 2 + k) if column == "loss" else 0.2 + step / 40 for step in range(6)]
                pd.DataFrame({"step": range(6), column: values}).to_csv(plots / split / f"{column}.tsv", sep="\t")
        summary = {"train": {"loss": 0.1}, "val": {"loss": 0.2, "mAP": 0.3}, "step": 5, "best/epoch": 4}
        write_json(folder / "dvclive" / name / "metrics.json", summary | {"best/val_mAP": 0.33})
    # label_issues
    kinds = ["extra sub-style", "wrong main style", "missing"]
    issues = pd.DataFrame(
        {
            "rank": range(1, 31),
            "image_id": [f"i{k % 12}" for k in range(30)],
            "label": [STYLES[k % 5] for k in range(30)],
        }
    ).assign(kind=[kinds[k % 3] for k in range(30)])
    issues.astype({"image_id": "string", "label": "string", "kind": "string"}).to_parquet(
        folder / "data/label_issues.parquet"
    )
    (folder / "reports/label_issues.md").write_text(
        "# Likely label errors\n\n| kind | n |\n|---|---|\n| missing | 10 |\n"
    )
    # validate and consolidate
    checks = [
        {"check": "One label row per image", "table": "labels", "severity": "error", "success": True,
         "unexpected": 0, "examples": []},
        {"check": "Experts agree on every style", "table": "agreement", "severity": "warning", "success": False,
         "unexpected": 1, "examples": ["Retro (0.41)"]},
    ]  # fmt: skip
    write_json(
        folder / "metrics/validation.json", {"success": True, "errors": 0, "warnings": 1, "expectations": checks}
    )
    (folder / "reports/validation").mkdir()
    (folder / "reports/validation/index.html").write_text("<html>Data Docs</html>")
    alpha = [("overall", "", "main_style", 0.8, 9), ("overall", "", "sub_styles", 0.6, 9)]
    alpha += [("style", s, "named", 0.4 + k / 10, 9) for k, s in enumerate(STYLES)]
    for scope, key in (("batch", "batch-001"), ("expert", "11")):
        alpha += [(scope, key, "main_style", 0.8, 5), (scope, key, "sub_styles", 0.6, 5)]
    agreement = pd.DataFrame(alpha, columns=["scope", "key", "measure", "alpha", "images"])
    agreement.astype({c: "string" for c in ("scope", "key", "measure")}).to_parquet(
        folder / "data/style_agreement.parquet"
    )
    write_json(folder / "metrics/ingest.json", {"batches": 2, "images": 12})
    write_json(folder / "metrics/labels.json", {"labelled_images": 12})


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The page built by the stage's command line from every input: reports/index.html under a project folder."""
    folder = tmp_path_factory.mktemp("project")
    with contextlib.chdir(folder):
        write_inputs(folder)
        assert main([]) == 0
    return folder / "reports/index.html"


def test_every_section_is_there_with_its_heading_and_every_input_used(built: Path):
    text = built.read_text(encoding="utf-8")
    page = Page(text)
    assert list(page.sections) == list(SECTIONS), "every section, in order"
    assert set(page.sections.values()) == {"h2"}, "each section opens with its <h2>"
    for sid, title in SECTIONS.items():
        assert f'<section id="{sid}">\n<h2>{title}</h2>' in text
    assert 'class="absent"' not in text, "every input was there"
    assert len(page.images) == 8  # mAP, curves, label issues, agreement, balance, trend, co-occurrence, graph
    assert "<td>mlgcn</td>" in text and "Retro (0.41)" in text and "Casual" in text


def test_the_page_refers_to_nothing_outside_it_but_the_data_docs(built: Path):
    text = built.read_text(encoding="utf-8")
    page = Page(text)
    for img in page.images:
        assert img["src"].startswith("data:image/png;base64,"), img["src"][:80]
        assert base64.b64decode(img["src"].split(",", 1)[1]).startswith(PNG_MAGIC)
        assert img["alt"], "every image says what it shows"
    external = [link for link in page.links if not link.startswith("#") and link != DATA_DOCS_LINK]
    assert not external, external
    assert DATA_DOCS_LINK in page.links and (built.parent / DATA_DOCS_LINK).is_file()
    assert page.sources == [], "no <script src>, <link>, <iframe> ..."
    assert "url(" not in page.styles and "@import" not in page.styles
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", text), "nothing from the network"
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert "<script>alert" not in text and "&lt;script&gt;alert" in text, "HTML in a Markdown input stays text"


def test_absent_inputs_are_named_with_the_stage_that_writes_them(tmp_path: Path, capsys):
    with contextlib.chdir(tmp_path):
        assert main([]) == 0
    text = (tmp_path / "reports/index.html").read_text(encoding="utf-8")
    assert list(Page(text).sections) == list(SECTIONS)
    for sid in SECTIONS:
        section = text.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]
        assert 'class="absent"' in section, sid
    for stage, path in (
        ("evaluate", "metrics/evaluation.json"),
        ("train", "dvclive"),
        ("graph", "data/label_graph.npz"),
    ):
        assert f"<code>{path}</code> is not there: the {stage} stage writes it (<code>dvc repro {stage}</code>)" in text
    assert "<img" not in text
    assert "input(s) absent" in capsys.readouterr().out


def test_a_damaged_input_is_an_error_naming_it(tmp_path: Path, capsys):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/evaluation.json").write_text("{not json")
    with contextlib.chdir(tmp_path):
        assert main([]) == 2
    assert capsys.readouterr().err.startswith("report: error: metrics/evaluation.json: not valid JSON")
    assert not (tmp_path / "reports/index.html").exists()


def test_the_dvc_stage_depends_on_every_input_and_outputs_the_page():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["report"]
    defaults = vars(parse_args([]))
    inputs = {str(path) for name, path in defaults.items() if name not in ("out", "params")}
    assert inputs <= set(stage["deps"]), sorted(inputs - set(stage["deps"]))
    assert stage["outs"] == [str(defaults["out"])] and stage["cmd"].startswith("python -m pipeline.report")


def render(page: Path) -> str:
    """The DOM after headless Chromium loaded `page` (its inline script has marked images and sections by then)."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--window-size=1200,1000",
             "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")
def test_chromium_lays_out_every_section_and_decodes_every_image(built: Path):
    dom = render(built)
    heights = dict(re.findall(r'<section id="([\w-]+)" data-height="(\d+)"', dom))
    assert list(heights) == list(SECTIONS), "the page's script ran over every section"
    assert all(int(h) > 100 for h in heights.values()), heights
    decoded = re.findall(r'<img [^>]*data-decoded="(\w+)"', dom)
    assert decoded == ["yes"] * len(Page(built.read_text(encoding="utf-8")).images), decoded

"""params.yaml and taxonomy files: typed, and wrong ones fail with the file and key named,
in one line from every stage's command line."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import yaml

from common.cli import user_message
from common.settings import (
    CrawlSettings,
    IngestSettings,
    ParamsError,
    Settings,
    load_section,
    load_setting,
    load_taxonomy_path,
)
from common.taxonomy import TaxonomyError, load_taxonomy
from training.settings import load_model_specs

ROOT = Path(__file__).parents[1]


def test_every_section_of_the_project_params_loads_into_its_typed_settings():
    sections, _ = documented_sections()
    for name, cls in sections.items():
        if name != "models":
            assert isinstance(load_section(cls, name, ROOT / "params.yaml"), cls)
    assert all(isinstance(spec, sections["models"]) for spec in load_model_specs(ROOT / "params.yaml").values())
    crawl_dir = load_setting(CrawlSettings, "crawl", "dir", ROOT / "params.yaml")
    assert isinstance(crawl_dir, Path) and isinstance(load_taxonomy_path(ROOT / "params.yaml"), Path), (
        "paths are converted from text"
    )


def _crawl_and_ingest(path: Path) -> None:
    load_section(CrawlSettings, "crawl", path)
    load_section(IngestSettings, "ingest", path)


def test_paper_taxonomy_has_23_styles_in_table_order_with_korean_names():
    taxonomy = load_taxonomy(ROOT / "taxonomies/kfashion_styles.yaml")
    assert len(taxonomy.names) == 23 and taxonomy.names[0] == "Casual" and taxonomy.names[-1] == "Preppy"
    assert taxonomy.by_korean()["로맨틱"] == "Romantic"
    assert taxonomy.labels[taxonomy.index_of("Businesscasual")].words == ("business", "casual")
    with pytest.raises(KeyError, match="Boho"):
        taxonomy.index_of("Boho")


def test_unknown_params_key_names_section_and_key(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("min_side: 64", "min_sid: 64")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=r"section 'ingest': missing \['min_side'\], unknown \['min_sid'\]"):
        _crawl_and_ingest(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("min_side: 64", "min_side: sixty", "ingest.min_side must be int, not 'sixty'"),
        ("workers: 0", "workers: true", "ingest.workers must be int, not True"),
        ("dir: data/crawl", "dir:", "crawl.dir must be Path, not None"),
        ("min_side: 64", "min_side: 64.5", "ingest.min_side must be int, not 64.5"),
        ("min_side: 64", "min_side: .inf", "ingest.min_side must be int, not inf"),
    ],
    ids=["text-for-a-number", "bool-for-a-number", "empty", "fraction-for-an-int", "infinity-for-an-int"],
)
def test_a_params_value_of_the_wrong_type_names_its_key(tmp_path, old, new, message):
    text = (ROOT / "params.yaml").read_text()
    assert old in text
    (tmp_path / "params.yaml").write_text(text.replace(old, new, 1))
    with pytest.raises(ParamsError, match=message):
        _crawl_and_ingest(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("labels: []", "non-empty 'labels'"),
        ("labels:\n  - {id: a, name: A}", r"label #0 lacks \['words'\]"),
        (
            "labels:\n  - {id: a, name: A, words: [a]}\n  - {id: b, name: A, words: [b]}",
            r"duplicate label names \['A'\]",
        ),
        (
            "labels:\n  - {id: r, name: Romantic, words: romantic}",
            r"label 'Romantic': 'words' must be a non-empty list of words.*found 'romantic'",
        ),
        (
            "labels:\n  - {id: r, name: Romantic, words: []}",
            r"label 'Romantic': 'words' must be a non-empty list of words.*found \[\]",
        ),
        (
            "labels:\n  - {id: r, name: Romantic, words: [romantic, 3]}",
            r"label 'Romantic': 'words' must be a non-empty list of words",
        ),
    ],
    ids=["no-labels", "no-words", "duplicate-names", "words-a-string", "words-empty", "words-not-strings"],
)
def test_malformed_taxonomy_is_a_clear_error(tmp_path, body, message):
    path = tmp_path / "t.yaml"
    path.write_text(body)
    with pytest.raises(TaxonomyError, match=message) as error:
        load_taxonomy(path)
    assert str(error.value).startswith(f"{path}: ")


STAGE_COMMANDS = {  # prog -> (module, arguments)
    "ingest": ("pipeline.ingest", []),
    "pixel_cache": ("pipeline.pixel_cache", []),
    "labels": ("annotation.labels", []),
    "consolidate": ("annotation.consolidate", []),
    "validate": ("pipeline.validate", []),
    "stats": ("pipeline.stats", []),
    "split": ("pipeline.split", []),
    "graph": ("pipeline.graph", []),
    "demo_crawl": ("demo.crawl", []),
    "annotation config": ("annotation.__main__", ["config"]),
}


def run_stage(prog: str, options: list[str], capsys) -> str:
    """The stage's stderr, checked to be one `<prog>: error:` line after exit status 2 (no traceback)."""
    module, arguments = STAGE_COMMANDS[prog]
    assert importlib.import_module(module).main(options + arguments) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("prog", sorted(STAGE_COMMANDS))
def test_a_stage_run_outside_the_project_says_where_to_run_it(prog, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = run_stage(prog, [], capsys)
    if prog == "consolidate":  # reads no params: its first input is missing instead
        assert (
            f"{Path('data/annotations.parquet')}: not found (if a stage writes it, `dvc repro` runs the stages in "
            "order; otherwise check the path)" in err
        )
    else:
        assert (
            f"params.yaml: params file not found in {tmp_path}; run from the project root (the folder with dvc.yaml), "
            "or pass --params" in err
        )


def test_a_damaged_or_incomplete_input_table_is_named_with_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    damaged, incomplete = tmp_path / "annotations.parquet", tmp_path / "catalog.parquet"
    damaged.write_bytes(b"PAR1 cut short")
    pd.DataFrame({"image_id": ["a"]}).to_parquet(incomplete)
    err = run_stage("consolidate", ["--annotations", str(damaged), "--catalog", str(incomplete)], capsys)
    assert (
        f"{damaged}: not a readable Parquet table (" in err
        and "rebuild it (`dvc repro`) or restore it (`dvc checkout`)" in err
    )
    pd.DataFrame({"image_id": ["a"]}).to_parquet(damaged)
    assert f"{incomplete}: lacks the column(s) ['batch']; rebuild it" in run_stage(
        "consolidate", ["--annotations", str(damaged), "--catalog", str(incomplete)], capsys
    )


def test_a_malformed_taxonomy_or_params_file_stops_a_stage_with_its_name(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(
        (ROOT / "params.yaml")
        .read_text()
        .replace("taxonomy: taxonomies/kfashion_styles.yaml", f"taxonomy: {tmp_path / 't.yaml'}")
    )
    (tmp_path / "t.yaml").write_text("labels: []")
    assert "non-empty 'labels'" in run_stage("stats", ["--params", str(params)], capsys)
    params.write_text("ingest: [min_side: 64\n")
    assert f"{params}, line 2, column 1: not valid YAML (expected ',' or ']', but got '<stream end>')" in run_stage(
        "ingest", ["--params", str(params)], capsys
    )


WORKER_TRACEBACK = """Caught FileNotFoundError in DataLoader worker process 0.
Original Traceback (most recent call last):
  File "/x/torch/utils/data/_utils/worker.py", line 349, in _worker_loop
    data = fetcher.fetch(index)
FileNotFoundError: [Errno 2] No such file or directory: '/crawl/b1/x.jpg'
"""


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            FileNotFoundError(2, "No such file or directory", "data/a.parquet"),
            "data/a.parquet: not found (if a stage writes it, `dvc repro` runs the stages in order; otherwise check "
            "the path)",
        ),
        (
            FileNotFoundError("data/a.parquet"),
            "data/a.parquet: not found (if a stage writes it, `dvc repro` runs the stages in order; otherwise check "
            "the path)",
        ),
        (FileNotFoundError(2, "No such file or directory"), "[Errno 2] No such file or directory"),
        (FileNotFoundError(WORKER_TRACEBACK), "[Errno 2] No such file or directory: '/crawl/b1/x.jpg'"),
    ],
    ids=["open", "pyarrow", "no-file-named", "dataloader-worker"],
)
def test_a_missing_file_is_named_once_with_what_to_do(error, message):
    assert user_message(error) == message


def documented_sections() -> tuple[dict[str, type], dict[str, str]]:
    """docs/reference.py's SECTIONS (params.yaml section -> dataclass) and its top-level keys."""
    spec = importlib.util.spec_from_file_location("reference", ROOT / "docs" / "reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.SECTIONS), module.TOP_LEVEL_KEYS


def test_every_params_key_is_declared_with_a_meaning_for_the_reference_page():
    sections, top_level = documented_sections()
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, value in raw.items():
        if section in top_level:
            continue
        assert section in sections, f"params.yaml section {section!r} is missing from SECTIONS in docs/reference.py"
        declared = {spec.name: spec.metadata.get("help") for spec in dataclasses.fields(sections[section])}
        for entry in value.values() if section == "models" else [value]:
            undocumented = [key for key in entry if not declared.get(key)]
            assert not undocumented, f"{section}: {undocumented} not declared with setting(help) in {sections[section]}"


def test_every_settings_dataclass_is_on_the_reference_page():
    sections, _ = documented_sections()

    def subclasses(cls: type) -> set[type]:
        return {sub for direct in cls.__subclasses__() for sub in {direct} | subclasses(direct)}

    assert subclasses(Settings) == set(sections.values())


def test_a_value_outside_its_declared_interval_names_the_key_and_the_interval(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text.replace("near_duplicate_distance: 8", "near_duplicate_distance: 65"))
    with pytest.raises(ParamsError, match=r"ingest.near_duplicate_distance must be in \[0, 64\], not 65"):
        _crawl_and_ingest(tmp_path / "params.yaml")

"""params.yaml and taxonomy files: typed, and wrong ones fail with the file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings import ParamsError, load_params
from pipeline.taxonomy import TaxonomyError, load_taxonomy

ROOT = Path(__file__).parents[1]


def test_project_params_load_into_typed_settings(params):
    assert params.ingest.min_side == 64 and isinstance(params.crawl.dir, Path)


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
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("labels: []", "non-empty 'labels'"),
        ("labels:\n  - {id: a, name: A}", r"label #0 lacks \['words'\]"),
        ("labels:\n  - {id: a, name: A, words: [a]}\n  - {id: b, name: A, words: [b]}", r"duplicate label names \['A'\]"),
        ("labels:\n  - {id: r, name: Romantic, words: romantic}", r"label 'Romantic': 'words' must be a non-empty list of words.*found 'romantic'"),
        ("labels:\n  - {id: r, name: Romantic, words: []}", r"label 'Romantic': 'words' must be a non-empty list of words.*found \[\]"),
        ("labels:\n  - {id: r, name: Romantic, words: [romantic, 3]}", r"label 'Romantic': 'words' must be a non-empty list of words"),
    ],
    ids=["no-labels", "no-words", "duplicate-names", "words-a-string", "words-empty", "words-not-strings"],
)
def test_malformed_taxonomy_is_a_clear_error(tmp_path, body, message):
    path = tmp_path / "t.yaml"
    path.write_text(body)
    with pytest.raises(TaxonomyError, match=message) as error:
        load_taxonomy(path)
    assert str(error.value).startswith(f"{path}: ")

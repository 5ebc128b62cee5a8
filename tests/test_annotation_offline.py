"""Annotation pieces that need no server: labeling config, retries, consolidation."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import pandas as pd
import pytest

from annotation.client import Connection, LabelStudioError
from annotation.config import labeling_config
from annotation.consolidate import consolidate
from pipeline.taxonomy import load_taxonomy

ROOT = Path(__file__).parents[1]


def test_labeling_config_follows_the_taxonomy(tmp_path):
    taxonomy = load_taxonomy(ROOT / "taxonomies/kfashion_styles.yaml")
    view = ElementTree.fromstring(labeling_config(taxonomy))
    blocks = {c.get("name"): c for c in view.iter("Choices")}
    assert blocks["main_style"].get("choice") == "single-radio" and blocks["main_style"].get("required") == "true"
    assert blocks["sub_styles"].get("choice") == "multiple"
    assert [c.get("value") for c in blocks["main_style"]] == taxonomy.names
    (tmp_path / "t.yaml").write_text('labels:\n  - {id: a, name: "A & B", words: [a]}\n')
    assert [c.get("value") for c in ElementTree.fromstring(labeling_config(load_taxonomy(tmp_path / "t.yaml"))).iter("Choice")] == ["A & B"] * 2


def test_server_down_fails_after_retries_with_what_to_check():
    closed = Connection(url="http://127.0.0.1:9", token="x", attempts=2, backoff_s=0.01)
    with pytest.raises(LabelStudioError, match=r"cannot reach Label Studio at http://127.0.0.1:9 after 2 attempts.*python -m annotation serve"):
        closed.call("list projects", lambda: list(closed.client().projects.list()))


def test_missing_configuration_says_which_variables(monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    with pytest.raises(LabelStudioError, match="set LABEL_STUDIO_URL"):
        Connection.from_env()


def annotations(rows: list[tuple[str, str | None, list[str]]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"image_id": i, "annotator": str(n), "main_style": m, "sub_styles": s, "cancelled": False} for n, (i, m, s) in enumerate(rows)]
    )


def test_consolidation_majority_main_half_vote_subs_and_ties_for_review():
    table = annotations([
        ("a", "Romantic", ["Elegant"]), ("a", "Romantic", ["Sexy"]), ("a", "Elegant", []),  # main 2:1; Elegant named by 2/3
        ("b", "Casual", ["Sporty"]), ("b", "Natural", ["Sporty"]),                           # tie -> review
        ("c", "Sexy", []),                                                                    # one expert
    ])  # fmt: skip
    catalog = pd.DataFrame({"image_id": ["a", "b", "c"], "batch": ["b1", "b1", "b2"]})
    labels, review, agreement = consolidate(table, catalog)
    by_id = labels.set_index("image_id")
    assert by_id.loc["a", "main_style"] == "Romantic" and by_id.loc["a", "sub_styles"] == ["Elegant"]
    assert by_id.loc["a", "main_agreement"] == pytest.approx(2 / 3)
    assert pd.isna(by_id.loc["b", "main_style"]) and by_id.loc["b", "needs_review"]
    assert by_id.loc["b", "sub_styles"] == ["Casual", "Natural", "Sporty"]  # each named by half
    assert by_id.loc["c", "main_style"] == "Sexy" and by_id.loc["c", "batch"] == "b2"
    assert list(review["image_id"]) == ["b"] and "Casual 1, Natural 1" in review.iloc[0]["reason"]
    agree = agreement.set_index("style")["agreement"]
    assert agree["Sporty"] == 1.0 and agree["Romantic"] == 0.0 and agree["Casual"] == 0.0  # everyone vs. not everyone
    assert "c" not in set(agreement["style"])  # single-annotator images do not count

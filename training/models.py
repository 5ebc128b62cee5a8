"""The compared models: the paper's basic CNN, a backbone with a linear head, and ML-GCN.

Heads act on pooled backbone features, so the same head trains on cached features
(CPU) or on top of a backbone fine-tuned end to end (GPU, `StyleNet`).

ML-GCN (Chen et al. 2019): a two-layer GCN maps the label word vectors (C, d) to C
classifiers of the image feature size; logits = image feature . classifiers. The graph
is `adjacency_norm` exactly as the graph stage wrote it; the GCN computes
A_norm @ H @ W per layer, with LeakyReLU(0.2) between the two layers only and no bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.settings import ParamsError

KINDS = ("cnn", "linear", "gcn")
POOLINGS = ("max", "avg")
ADJACENCIES = ("graph", "identity")


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the `models` section of params.yaml."""

    kind: str  # cnn: the paper's basic CNN from pixels; linear: backbone + linear head; gcn: ML-GCN
    pooling: str = "max"  # global pooling of the backbone feature maps (linear, gcn)
    adjacency: str = "graph"  # gcn: the label graph, or "identity" (the no-graph ablation)
    image_size: int = 0  # cnn: input size in px (the others use features.image_size)
    epochs: int = 0  # 0 = train.epochs

    def __post_init__(self) -> None:
        for field, value, allowed in (("kind", self.kind, KINDS), ("pooling", self.pooling, POOLINGS), ("adjacency", self.adjacency, ADJACENCIES)):
            if value not in allowed:
                raise ParamsError(f"model {field} {value!r} is not one of {allowed} (models section of params.yaml)")
        if self.kind == "cnn" and self.image_size <= 0:
            raise ParamsError("a cnn model needs image_size > 0 (models section of params.yaml)")


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


class BasicCNN(nn.Module):
    """The paper's basic CNN, trained from scratch: conv + max-pool blocks, then fully connected layers."""

    def __init__(self, n_classes: int, widths: tuple[int, ...] = (16, 32, 64, 128), hidden: int = 256) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        in_channels = 3
        for width in widths:
            blocks += [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_channels = width
        self.features = nn.Sequential(*blocks, nn.AdaptiveMaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 4, hidden), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Linear(hidden, n_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


class GCNHead(nn.Module):
    """ML-GCN classifier head: (B, D) image features -> (B, C) logits through GCN-made classifiers."""

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

    def classifiers(self) -> torch.Tensor:
        """(C, D): one classifier per label, mixed along the graph's edges."""
        hidden = F.leaky_relu(self.adjacency @ self.layer1(self.embeddings), 0.2)
        return self.adjacency @ self.layer2(hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.classifiers().to(features.dtype).T


def build_head(spec: ModelSpec, feature_dim: int, n_classes: int, embeddings: torch.Tensor, adjacency: torch.Tensor, gcn_hidden: int) -> nn.Module:
    """The classifier head of a linear or gcn model (for the identity ablation, `adjacency` is ignored)."""
    if spec.kind == "linear":
        return nn.Linear(feature_dim, n_classes)
    graph = torch.eye(n_classes) if spec.adjacency == "identity" else adjacency
    return GCNHead(embeddings, graph, feature_dim, gcn_hidden)


class StyleNet(nn.Module):
    """Backbone feature maps -> global pooling -> head: the end-to-end model (fine-tuning, prediction)."""

    def __init__(self, body: nn.Module, pooling: str, head: nn.Module) -> None:
        super().__init__()
        self.body, self.pooling, self.head = body, pooling, head

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return global_pool(self.body(images), self.pooling)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

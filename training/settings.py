"""Typed training settings: the `train` section of params.yaml and the `models` entries.

Recipe (paper section 4.2): Adam, lr 1e-4 for the pretrained backbone and 1e-3 for the
heads and the GCN, sigmoid + binary cross-entropy. Our additions, each a setting here:
the rates scaled with the batch (`lr_scaling`) and reached by a linear warm-up
(`warmup_epochs`), the asymmetric loss (`loss: asl`), and the test-time flip (`tta_flip`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.settings import ParamsError, Settings, build_section, read_params_file, setting
from training.backbones import BACKBONES
from training.device import PRECISIONS
from training.losses import LOSSES, AsymmetricLoss, LossFunction, make_loss
from training.models import ModelSpec
from training.schedule import LR_SCALINGS


@dataclass(frozen=True)
class TrainSettings(Settings):
    section = "train"
    seed: int = setting("seed of initialisation, batch order and augmentation")
    epochs: int = setting("upper bound on epochs; early stopping usually ends sooner", interval="[1, inf)")
    patience: int = setting("early stopping: epochs without a better validation mAP", interval="[1, inf)")
    batch_size: int = setting("images per step and process", interval="[1, inf)")
    lr_backbone: float = setting(
        "Adam learning rate of the pretrained backbone (fine-tuning; paper: 1e-4)", interval="(0, inf)"
    )
    lr_head: float = setting(
        "Adam learning rate of the heads, the GCN and the basic CNN (paper: 1e-3)", interval="(0, inf)"
    )
    gcn_hidden: int = setting(
        "width of the GCN's hidden layer (word vectors -> hidden -> feature size)", interval="[1, inf)"
    )
    finetune: bool = setting("fine-tune the backbone from pixels (GPU) instead of training heads on cached features")
    workers: int = setting("DataLoader processes for pixel training", interval="[0, inf)")
    cached_pixels: bool = setting(
        "pixel training reads the pixel cache and augments on the device, instead of decoding files with PIL"
    )
    compile: bool = setting("torch.compile the training step (GPU: ~1.4x at 448 px; it does not pay on the CPU demo)")
    lr_scaling: str = setting(
        "scale both learning rates with the global batch / 32: none, sqrt (Adam's rule) or linear", choices=LR_SCALINGS
    )
    precision: str = setting(
        "bf16: autocast on CUDA, fp32 on the CPU; bf16-all: on the CPU too (CPUs with AVX512-BF16/AMX);"
        " fp32: full precision everywhere (the reference code's)",
        choices=PRECISIONS,
    )
    warmup_epochs: float = setting(
        "learning rates rise linearly from ~0 over this many epochs (0: the paper's constant rates)",
        interval="[0, inf)",
    )
    loss: str = setting(
        "bce (the paper) or asl (asymmetric loss, Ben-Baruch et al. 2021); a model's own `loss` overrides it",
        choices=LOSSES,
    )
    asl_gamma_neg: float = setting("ASL: focusing of negatives", interval="[0, inf)")
    asl_gamma_pos: float = setting("ASL: focusing of positives", interval="[0, inf)")
    asl_clip: float = setting("ASL: probability margin shifted off every negative", interval="[0, 1)")
    tta_flip: bool = setting("score each image as the mean of it and its mirror image (validation, evaluate, predict)")

    @property
    def asl(self) -> AsymmetricLoss:
        return AsymmetricLoss(self.asl_gamma_neg, self.asl_gamma_pos, self.asl_clip)

    def loss_function(self, spec: ModelSpec) -> LossFunction:
        """The loss `spec` trains with: its own, else train.loss."""
        return make_loss(spec.loss or self.loss, self.asl)


def load_model_specs(params: Path) -> dict[str, ModelSpec]:
    """The `models` section: model name -> ModelSpec."""
    raw = read_params_file(params)
    if not isinstance(raw.get("models"), dict) or not raw["models"]:
        raise ParamsError(f"{params}: section 'models' is missing or empty")
    return {name: build_section(ModelSpec, entry, f"models.{name}", params) for name, entry in raw["models"].items()}


def load_model_spec(params: Path, name: str) -> ModelSpec:
    """One entry of the `models` section (what a train@<name> stage declares), the others unread."""
    models = read_params_file(params).get("models")
    if not isinstance(models, dict) or name not in models:
        known = sorted(models) if isinstance(models, dict) else []
        raise ParamsError(f"unknown model {name!r}; params.yaml 'models' has {known}")
    return build_section(ModelSpec, models[name], f"models.{name}", params)


@dataclass(frozen=True)
class FeatureSettings(Settings):
    section = "features"
    backbone: str = setting(
        "the pretrained backbone (training/backbones.py); ImageNet weights of the EfficientNet-Lites ship offline,"
        " native sizes 224/240/260 px",
        choices=tuple(sorted(BACKBONES)),
    )
    weights: str = setting('"imagenet" (pretrained), a path to a state_dict file, or "none"')
    image_size: int = setting(
        "input side in px: plain resize to a square, as the reference evaluates (the paper: 448)", interval="[16, inf)"
    )
    batch_size: int = setting("images per backbone pass", interval="[1, inf)")
    workers: int = setting("decoding processes; 0 = in the main process", interval="[0, inf)")
    flip: bool = setting(
        "also cache every image mirrored (training augmentation; the test-time flip of train.tta_flip)"
    )
    maps: bool = setting("also cache the last feature maps (fp16), which csra heads read (size: docs/models.md)")

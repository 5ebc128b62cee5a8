"""Typed training settings: the `train` section of params.yaml and the `models` entries.

Recipe (paper section 4.2): Adam, lr 1e-4 for the pretrained backbone and 1e-3 for the
heads and the GCN, sigmoid + binary cross-entropy. Our additions, each a setting here:
the rates scaled with the batch (`lr_scaling`) and reached by a linear warm-up
(`warmup_epochs`), the asymmetric loss (`loss: asl`), and the test-time flip (`tta_flip`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from pipeline.settings import ParamsError, read_params_file
from training.device import PRECISIONS
from training.losses import AsymmetricLoss, LossFunction, make_loss
from training.models import ModelSpec
from training.schedule import LR_SCALINGS


@dataclass(frozen=True)
class TrainSettings:
    seed: int
    epochs: int
    patience: int  # early stopping: epochs without a better validation mAP
    batch_size: int
    lr_backbone: float  # Adam lr of pretrained backbone weights (fine-tuning)
    lr_head: float  # Adam lr of the heads, the GCN and the basic CNN
    gcn_hidden: int  # width of the GCN's hidden layer
    finetune: bool  # fine-tune the backbone from pixels (GPU) instead of training heads on cached features
    workers: int  # DataLoader processes for pixel training
    cached_pixels: (
        bool  # pixel training reads the pixel cache and augments on the device, instead of decoding files with PIL
    )
    compile: bool  # torch.compile the training forward and backward (and the device-side augmentation's per-pixel tail)
    lr_scaling: str  # none | sqrt | linear: scale both learning rates with the global batch / REFERENCE_BATCH
    precision: str  # bf16: autocast on CUDA, fp32 on the CPU; bf16-all: on the CPU too (CPUs with native bf16); fp32: full precision everywhere (the reference code's)
    warmup_epochs: float  # learning rates rise linearly from ~0 over this many epochs (0: the paper's constant rates from the first step)
    loss: str  # bce (the paper) | asl (asymmetric loss); a model's own `loss` overrides it
    asl_gamma_neg: float  # ASL focusing of negatives
    asl_gamma_pos: float  # ASL focusing of positives
    asl_clip: float  # ASL probability margin shifted off negatives
    tta_flip: bool  # score every image as the mean of it and its mirror image (validation, evaluate, predict)

    def __post_init__(self) -> None:
        if self.lr_scaling not in LR_SCALINGS:
            raise ParamsError(f"train.lr_scaling {self.lr_scaling!r} is not one of {LR_SCALINGS} (params.yaml)")
        if self.precision not in PRECISIONS:
            raise ParamsError(f"train.precision {self.precision!r} is not one of {PRECISIONS} (params.yaml)")
        if self.warmup_epochs < 0:
            raise ParamsError(f"train.warmup_epochs must be >= 0, not {self.warmup_epochs} (params.yaml)")
        make_loss(self.loss, self.asl)  # refuses an unknown name

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
    known = {field.name for field in fields(ModelSpec)}
    for name, entry in raw["models"].items():
        if not isinstance(entry, dict) or not entry.keys() <= known or "kind" not in entry:
            unknown = sorted(entry.keys() - known) if isinstance(entry, dict) else []
            raise ParamsError(
                f"{params}: models.{name} must be a mapping with 'kind' and at most {sorted(known)}"
                + (f"; unknown {unknown}" if unknown else "")
            )
    return {name: ModelSpec(**entry) for name, entry in raw["models"].items()}

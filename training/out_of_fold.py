"""Out-of-fold scores: every labelled train and validation image scored by a head that never saw its labels.

The images are cut into k folds, stratified like the split stage (by each image's rarest
label, so every fold holds its share of the rare ones) and with near-duplicate groups kept
in one fold (a re-post in the fitting folds would leak its copy's labels). For each fold a
fresh head of a trained model's recipe trains on the other folds' cached features for as
many epochs as the model took to its best, then scores the held-out fold, with the
test-time flip where the model uses it. The select stage makes these scores once per head
model; model selection, the decision thresholds and the label-issue finder read them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.checkpoint import build_trained_module, scores_mirrored, trained_precision
from training.device import adam, pick_device, prepare
from training.distributed import SINGLE
from training.engine import feature_batches, mirrored_mean, predict_probs, train_one_epoch
from training.losses import AsymmetricLoss, make_loss
from training.models import ModelSpec
from training.schedule import LinearWarmup, lr_factor, steps_per_epoch


def assign_folds(targets: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number of each image: groups (near-duplicates) whole, dealt round-robin in order of their rarest label,
    shuffled (seeded) within it, so each fold gets its share of every label's images."""
    counts = targets.sum(axis=0)
    rarity = np.where(targets > 0, counts[None, :], np.inf).min(axis=1)  # an image's rarest label's image count
    group_ids, members = np.unique(groups, return_inverse=True)
    group_rarity = np.full(len(group_ids), np.inf)
    np.minimum.at(group_rarity, members, rarity)
    shuffled = np.random.default_rng(seed).permutation(len(group_ids))
    dealt = shuffled[np.argsort(group_rarity[shuffled], kind="stable")]
    group_fold = np.empty(len(group_ids), dtype=np.int64)
    group_fold[dealt] = np.arange(len(group_ids)) % folds
    return group_fold[members]


def fresh_head(checkpoint: dict[str, Any], seed: int) -> nn.Module:
    """An untrained head of the checkpoint's model, with its label graph (buffers) as trained."""
    torch.manual_seed(seed)
    head = build_trained_module(checkpoint["meta"])
    with torch.no_grad():
        for name, buffer in head.named_buffers():
            buffer.copy_(checkpoint["model"][name])
    return head


def out_of_fold_probs(
    checkpoint: dict[str, Any],
    x: torch.Tensor,
    mirrored: torch.Tensor | None,
    targets: np.ndarray,
    fold: np.ndarray,
    seed: int,
    desc: str = "out-of-fold",
) -> np.ndarray:
    """(N, C) probabilities, each row from a head trained on the other folds with the checkpoint's recipe for as many
    epochs as it took to its best."""
    meta, device = checkpoint["meta"], pick_device()
    train, precision, mirror = meta["train"], trained_precision(meta), scores_mirrored(meta)
    spec = ModelSpec(**meta["spec"])
    loss = make_loss(
        spec.loss or train.get("loss", "bce"),
        AsymmetricLoss(train.get("asl_gamma_neg", 4.0), train.get("asl_gamma_pos", 0.0), train.get("asl_clip", 0.05)),
    )
    epochs, batch = int(checkpoint.get("epoch", 1)), int(train["batch_size"])
    y = torch.from_numpy(targets)
    probs = np.zeros(targets.shape, dtype=np.float64)
    for k in tqdm(range(int(fold.max()) + 1), desc=desc, unit="fold", disable=None):
        fit, held = torch.from_numpy(fold != k), torch.from_numpy(fold == k)
        head = prepare(fresh_head(checkpoint, seed + k), device)
        optimizer = adam(
            [{"params": head.parameters(), "lr": train["lr_head"] * lr_factor(train["lr_scaling"], batch)}], device
        )
        per_epoch = steps_per_epoch(int(fit.sum()), batch, SINGLE)
        warmup = LinearWarmup(
            (optimizer.param_groups[0]["lr"],), round(train.get("warmup_epochs", 0) * per_epoch), per_epoch
        )
        generator = torch.Generator().manual_seed(seed + k)
        for epoch in range(epochs):
            batches = feature_batches(x[fit], y[fit], batch, generator, mirrored[fit] if mirrored is not None else None)
            train_one_epoch(head, batches, optimizer, device, None, precision, warmup.setter(optimizer, epoch), loss)

        def score(features: torch.Tensor, head: nn.Module = head, held: torch.Tensor = held) -> np.ndarray:
            return predict_probs(head, feature_batches(features, y[held], 4 * batch, None), device, precision)[0]

        probs[held.numpy()] = mirrored_mean(score, x[held], mirrored[held] if mirror and mirrored is not None else None)
    return probs

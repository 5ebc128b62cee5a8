"""Does compiled fine-tuning train like eager? torch.compile backends and scopes against eager, same batches.

This runs the fast path's first --steps optimizer steps from the same initial weights on
the same batches (the prepared CCP work dir, pixel cache, device-side augmentation;
batch 32, the paper's learning rates) in each configuration below, and prints the loss
of chosen steps and the first step whose loss is not finite:

  eager bf16 | inductor bf16 (whole model) | the same with dynamic=False | inductor fp32 |
  aot_eager bf16 (no inductor code generation) | inductor bf16, backbone only | head only

After the --steps full batches comes one step on the epoch's last, smaller batch (1,142
training photos = 35 x 32 + 22), where a compiled model meets a new batch size.

What it found (H200, torch 2.11, 2026-11-27): step 1 equal to eager, step 2 NaN under
inductor with dynamic shapes and with dynamic=False alike, aot_eager equal to eager at
every step: inductor's generated backward. The cause was `amax` global max pooling (its
gradient divides by a count of positions equal to the maximum, which inductor's
recomputation under bf16 found to be zero); training/models.py now pools with
adaptive_max_pool2d, and tests/test_models.py reproduces the old NaN on CPU. A step-1
loss that differs from eager's beyond bf16 rounding would mean a wrong compiled forward.
Diagnostics print, never assert.

  python benchmarks/diagnose_compile.py --work-dir shared-data/ccp-finetune --ccp shared-data/ccp-small \\
      --weights shared-data/lite0-imagenet-fp16.pth [--steps 30]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from bench_ccp_finetune import MLGCN, VARIANTS, add_model_arguments, build_pixels, variant_params

from common.settings import load_section
from training import train
from training.models import ModelSpec

SHOWN_STEPS = (1, 2, 5, 10, 20, 30, 50)


@dataclass(frozen=True)
class Config:
    name: str
    precision: str  # train.precision: "bf16" (autocast on CUDA) or "fp32"
    scope: str | None  # None (eager), "model", "body" or "head": what torch.compile wraps
    backend: str = "inductor"
    dynamic: bool | None = None  # torch.compile's: None = dynamic batch size after the first recompile


CONFIGS = (
    Config("eager bf16", "bf16", None),
    Config("inductor bf16, whole model", "bf16", "model"),
    Config("inductor bf16, whole model, dynamic=False", "bf16", "model", dynamic=False),
    Config("inductor fp32, whole model", "fp32", "model"),
    Config("aot_eager bf16, whole model", "bf16", "model", "aot_eager"),
    Config("inductor bf16, backbone only", "bf16", "body"),
    Config("inductor bf16, head only", "bf16", "head"),
)


def compiled(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    """`model` with the part `config.scope` names compiled (the optimizer keeps the same parameters)."""
    if config.scope == "model":
        return torch.compile(model, backend=config.backend, dynamic=config.dynamic)
    if config.scope is not None:
        setattr(
            model,
            config.scope,
            torch.compile(getattr(model, config.scope), backend=config.backend, dynamic=config.dynamic),
        )
    return model


def step_losses(
    config: Config, settings: train.TrainSettings, paths: argparse.Namespace, steps: int, seed: int
) -> tuple[list[float], float, float]:
    """Loss of each of the first `steps` optimizer steps (stops at the first non-finite one), of a step on the epoch's
    last batch, and the seconds taken."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    train.seed_everything(seed)
    run = train.setup("diagnose", ModelSpec(**MLGCN), settings, paths, device)
    net = compiled(run.model, config)
    losses: list[float] = []
    started = time.perf_counter()
    batches = iter(run.train_batches(train.seed_everything(seed * 1000)))
    for batch in islice(batches, steps):
        losses.append(train.train_one_epoch(net, [batch], run.optimizer, device, None, config.precision))
        if not math.isfinite(losses[-1]):
            return losses, math.nan, time.perf_counter() - started
    *_, last = batches
    ragged = train.train_one_epoch(net, [last], run.optimizer, device, None, config.precision)
    return losses, ragged, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Full description: the module docstring (benchmarks/diagnose_compile.py).",
    )
    parser.add_argument(
        "--ccp", type=Path, required=True, help="folder with photos/ (as given to bench_ccp_finetune.py prepare)"
    )
    parser.add_argument(
        "--work-dir", type=Path, required=True, help="a work dir written by bench_ccp_finetune.py prepare"
    )
    add_model_arguments(parser)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per configuration (batch 32)")
    parser.add_argument("--configs", default="", help="comma-separated indices into the list above (default: all)")
    args = parser.parse_args()
    work, photos = args.work_dir, args.ccp / "photos"
    build_pixels(work, photos, args.size)
    params = variant_params(
        work,
        "diagnose",
        VARIANTS["fast_bf16_b32"],
        argparse.Namespace(**vars(args), epochs=1, seed=None, fast_warmup_epochs=0, cpu_bf16=False),
    )
    settings = load_section(train.TrainSettings, "train", params)
    paths = argparse.Namespace(label_subset=work / "label_subset.json", graph=work / "label_graph.npz",
                               dataset=work / "dataset.parquet", features=work / "unused.npz", crawl_dir=photos,
                               pixel_cache=work / "pixels", params=params)  # fmt: skip
    chosen = [CONFIGS[int(i)] for i in args.configs.split(",") if i] or list(CONFIGS)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        f"{device}, torch {torch.__version__}: {args.backbone} @ {args.size} px, ML-GCN, batch {settings.batch_size}, "
        f"{args.steps} steps\n"
    )
    shown = [s for s in SHOWN_STEPS if s <= args.steps]
    print(
        "| configuration | "
        + " | ".join(f"step {s}" for s in shown)
        + " | first non-finite step | last (smaller) batch | seconds |"
    )
    print("|---" * (len(shown) + 4) + "|")
    for config in chosen:
        losses, ragged, seconds = step_losses(config, settings, paths, args.steps, settings.seed)
        bad = next((i + 1 for i, loss in enumerate(losses) if not math.isfinite(loss)), None)
        cells = [f"{losses[s - 1]:.4f}" if s <= len(losses) else "-" for s in shown]
        print(
            f"| {config.name} | " + " | ".join(cells) + f" | {bad or 'none'} | {ragged:.4f} | {seconds:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

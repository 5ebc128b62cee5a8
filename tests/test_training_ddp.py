"""Training on several processes: `torchrun --nproc_per_node 2 -m training.train` on the CPU (gloo).

The test launches this file under torch.distributed.run; as a script it trains through
training.train.main and saves, after each epoch, the weights its rank holds and how
many training rows it saw, so the test can compare the ranks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_train, training_params

import training.train as train_module

pytestmark = pytest.mark.slow  # torchrun: two processes (make test-fast skips them)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _worker(out: Path, argv: list[str]) -> None:
    """torchrun target: train, recording this rank's parameters and rows after every epoch."""
    real = train_module.train_one_epoch

    def recording(model, batches, *rest):
        rows = []

        def counted():
            for x, y in batches:
                rows.append(len(y))
                yield x, y

        loss = real(model, counted(), *rest)
        params = {name: p.detach().clone() for name, p in model.module.named_parameters()}
        torch.save({"params": params, "rows": sum(rows), "batches": len(rows)}, out / f"rank{os.environ['RANK']}.pt")
        return loss

    train_module.train_one_epoch = recording
    train_module.main(argv)


def _torchrun(inputs: dict[str, Path], model: str, out: Path, params: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "--model", model, "--dataset", str(inputs["dataset"]), "--label-subset", str(inputs["subset"]),
        "--graph", str(inputs["graph"]), "--features", str(inputs["features"]), "--crawl-dir", str(inputs["crawl"]),
        "--out-dir", str(out / "models" / model), "--live-dir", str(out / "dvclive" / model),
        "--pixel-cache", str(inputs["pixels"]), "--params", str(params),
    ]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "tests")]),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(out),
        *args,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize(("model", "cached_pixels"), [("gcn", False), ("cnn", True)])
def test_two_processes_train_on_halves_of_each_batch_and_hold_the_same_weights(inputs, tmp_path, model, cached_pixels):  # noqa: F811
    params = training_params(tmp_path, inputs["weights"], epochs=1, batch_size=4, cached_pixels=cached_pixels)
    _torchrun(inputs, model, tmp_path / "ddp", params)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["rows"] for r in ranks] == [8, 8] and [r["batches"] for r in ranks] == [2, 2], (
        "16 training images: 8 per rank, 2 steps of 4"
    )
    for name, tensor in ranks[0]["params"].items():
        assert torch.equal(tensor, ranks[1]["params"][name]), f"{name} differs between ranks"
    checkpoint = torch.load(tmp_path / "ddp" / "models" / model / "last.pt", weights_only=True)
    assert all(torch.equal(checkpoint["model"][name], tensor) for name, tensor in ranks[0]["params"].items()), (
        "rank 0 writes its weights"
    )
    loss_rows = (
        (tmp_path / "ddp" / "dvclive" / model / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    )
    assert len(loss_rows) == 2, "one logger (rank 0): a header and one epoch"
    if model == "gcn":  # no batch norm: 2 ranks x 4 images take exactly the steps of 1 process x 8 images
        run_train(
            inputs, model, tmp_path / "single", training_params(tmp_path, inputs["weights"], epochs=1, batch_size=8)
        )
        single = torch.load(tmp_path / "single" / "models" / model / "last.pt", weights_only=True)
        for name, tensor in ranks[0]["params"].items():
            torch.testing.assert_close(tensor, single["model"][name], rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2:])

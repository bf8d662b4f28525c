"""DistributedDataParallel through torchrun: two gloo CPU processes train a few steps; both
ranks take part (gradients are all-reduced, so their models stay identical) and only rank 0
writes the checkpoint and log."""

import csv
import os
import subprocess
import sys

import pytest
import torch
from faults import partials
from training_data import write_so2sat

from training.train import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_two_gloo_processes_train_together(tmp_path):
    train = write_so2sat(tmp_path / "train.h5", n=64, patch=8, seed=0)
    val = write_so2sat(tmp_path / "val.h5", n=20, patch=8, seed=1)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "training", "train", "--train", train, "--val", val,
               "--epochs", "2", "--max-steps-per-epoch", "2", "--batch-size", "8",
               "--device", "cpu", "--no-progress", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    # 64 patches, two ranks: 32 each, 4 batches of 8 per rank and epoch
    assert "rank 0/2: msmla18 on cpu, 64 training / 20 validation patches, 4 batches" in output
    assert "rank 1/2: msmla18 on cpu, 64 training / 20 validation patches, 4 batches" in output
    assert output.count("best checkpoint:") == 1      # printed by rank 0 only
    with open(out / "log.csv") as f:
        log = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in log] == [1, 2]
    assert int(log[-1]["step"]) == 4                  # 2 steps per epoch on each rank
    payload = load_checkpoint(str(out / "last.pt"))
    assert payload["epoch"] == 1 and payload["step"] == 4
    assert not any(k.startswith("module.") for k in payload["state_dict"])
    assert not partials(out)  # temporary files of the commit protocol, hidden ones included
    assert all(torch.isfinite(v).all() for v in payload["state_dict"].values()
               if v.is_floating_point())

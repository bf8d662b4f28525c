"""Several processes training one model: DistributedDataParallel under ``torchrun``.

``torchrun`` starts one process per GPU (or several CPU processes) and tells each its place
through ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. Without it (``WORLD_SIZE`` unset or 1)
everything here does nothing, and the run is an ordinary single-process one. Backends: NCCL
on CUDA, gloo on CPU. Rank 0 (:attr:`Dist.main`) writes the checkpoints and the logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device_name: str) -> Dist:
    """Join the process group when torchrun started several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist
    backend = "nccl" if device_name.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def leave_distributed(dist_info: Dist, finished: bool = True) -> None:
    """Leave the process group joined by :func:`init_distributed`. After a finished run
    every process first waits for the others: a process tearing down gloo while a peer still
    writes its checkpoint was aborted ("terminate called without an active exception").
    After an error there is no waiting (the peers may never come)."""
    if dist_info.active:
        import torch.distributed as dist
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def process_device(device_name: str, dist_info: Dist) -> torch.device:
    """The device of this process: with several processes on CUDA, the GPU of its local
    rank (one GPU per process)."""
    if device_name == "cuda" and dist_info.active:
        device_name = f"cuda:{dist_info.local_rank}"
        torch.cuda.set_device(dist_info.local_rank)
    return torch.device(device_name)


def wrap_model(model: torch.nn.Module, device: torch.device, dist_info: Dist):
    """The module the training steps call: ``model`` itself, or with several processes a
    DistributedDataParallel around it (gradients averaged over all processes; the weights
    are saved from ``model``, without the ``module.`` prefix)."""
    if not dist_info.active:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(values: list[float], dist_info: Dist, device) -> list[float]:
    """``values`` summed over all processes (unchanged with one process)."""
    if not dist_info.active:
        return values
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()

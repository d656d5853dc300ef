"""Processes: who am I (rank), how many are we (world), which device is mine, and the few collectives training needs.

One process alone (`python -m orthrus_min.train …`) is world size 1 and never touches
torch.distributed. Under `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address), every process joins one process group: NCCL when the processes drive CUDA
devices (one GPU each, `cuda:LOCAL_RANK`), gloo on CPU. Multi-node runs are the same code:
torchrun's own `--nnodes`, `--node-rank` and `--rdzv-endpoint` flags make the group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from ..checkpoint import resolve_device
from ..errors import OrthrusError

# Rank 0 may tokenize the data or generate self-distillation sequences while the others wait in a barrier.
GROUP_TIMEOUT = timedelta(minutes=60)


@dataclass
class Dist:
    """This process's place in the run: rank, world size, local rank, and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes logs, checkpoints and the final model."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when a process group exists (several processes)."""
        return self.world > 1

    def barrier(self) -> None:
        """Waits until every process gets here."""
        if self.active:
            torch.distributed.barrier()

    def sum(self, *values: float) -> list[float]:
        """Each value summed over all processes (float64, in one all-reduce)."""
        t = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        if self.active:
            torch.distributed.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True when `flag` is true on at least one process (so every process takes the same branch)."""
        return self.sum(float(flag))[0] > 0

    def gather_objects(self, obj) -> list:
        """`obj` of every process, in rank order, on every process."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's `obj`, on every process."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def _collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def close(self) -> None:
        """Leaves the process group (at the end of a run)."""
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (or any launcher that sets WORLD_SIZE and RANK)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def setup(device: str = "auto") -> Dist:
    """The process's `Dist`; under torchrun with several processes, joins the process group.

    device: "auto" (each process takes cuda:LOCAL_RANK when CUDA is available, else the CPU),
    "cpu", or "cuda" (then cuda:LOCAL_RANK); one process alone may also name "cuda:N".
    """
    world = int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1
    rank = int(os.environ.get("RANK", "0")) if world > 1 else 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0
    dev = resolve_device(device)
    if world > 1 and dev.type == "cuda":
        if dev.index not in (None, local_rank) and device not in ("auto", "cuda"):
            raise OrthrusError(f"--device {device}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda or auto")
        if local_rank >= torch.cuda.device_count():
            raise OrthrusError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices on this node; "
                               "lower --nproc-per-node")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    dist = Dist(rank, world, local_rank, dev)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, timeout=GROUP_TIMEOUT,
                                             device_id=dev if dev.type == "cuda" else None)
    return dist


__all__ = ["Dist", "setup", "launched_by_torchrun", "GROUP_TIMEOUT"]

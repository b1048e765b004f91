"""Which rank this process is in a data-parallel run, and the few collectives the loop uses
(rlvr/train.py, rlvr/update/step.py, rlvr/run_state.py). Each is the identity on one process, so
the single-process path runs the same code. The group itself is rlvr/update/distributed.py's."""

from __future__ import annotations

import os
from typing import Any

import torch


def launched_world_size() -> int:
    """The number of ranks the launcher started (torchrun sets WORLD_SIZE), before any group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def rank() -> int:
    """This process's rank: the group's, else the launcher's RANK (before the group exists, or
    after an in-process vLLM engine tore it down at its shutdown)."""
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0 writes the run directory's shared files (metrics, status, exports)."""
    return rank() == 0


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (pickled; CPU tensors and lists)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` holds on some rank."""
    if world_size() == 1:
        return flag
    t = torch.tensor([int(flag)])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()

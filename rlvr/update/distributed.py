"""The process group DeepSpeed runs in: gloo on CPU, nccl on GPU; torchrun's rendezvous when a
launcher set one, else a single process on a free port. The collectives the loop uses on that
group are in rlvr/ranks.py."""

from __future__ import annotations

import os

import torch


def init_distributed() -> None:
    """Single-process defaults so DeepSpeed uses gloo/nccl, not MPI; torchrun sets real values."""
    import deepspeed

    launched = "MASTER_PORT" in os.environ  # by torchrun (or another launcher): use its rendezvous
    for key, value in (
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
    ):
        os.environ.setdefault(key, value)
    if not torch.cuda.is_available():
        # CPU: gloo reduces (one process communicates with nobody at all). Skip DeepSpeed's
        # shared-memory allreduce op, which otherwise compiles with gcc (~70 s) on first use in
        # every fresh environment; at the sizes a CPU runs, gloo's allreduce is not the cost.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if torch.distributed.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if launched:
        deepspeed.init_distributed(dist_backend=backend)
    else:
        # port 0: the store's socket gets a free port when it binds. Picking a free port first
        # and binding it later raced with other processes on the node (EADDRINUSE under Slurm).
        deepspeed.init_distributed(
            dist_backend=backend, auto_mpi_discovery=False, init_method="tcp://127.0.0.1:0",
            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
        )


def shutdown_distributed() -> None:
    """Tear the process group down (torch 2.13 + gloo sometimes aborts at exit unless it is
    destroyed first), through DeepSpeed so it also drops its references to the group's
    subgroups: a later init_distributed in the same process then starts clean."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        import deepspeed.comm

        if deepspeed.comm.is_initialized():
            deepspeed.comm.destroy_process_group()
        else:
            torch.distributed.destroy_process_group()


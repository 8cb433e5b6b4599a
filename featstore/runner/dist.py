"""torchrun support: rank and world size from the environment, a process group only when world > 1."""
from __future__ import annotations

import os
from typing import Tuple

import torch
import torch.distributed as tdist


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init() -> Tuple[int, int]:
    """(rank, world size). Under torchrun (WORLD_SIZE > 1) joins the process group: NCCL on CUDA, else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        tdist.init_process_group(backend=backend)
    return tdist.get_rank(), tdist.get_world_size()


def barrier() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()

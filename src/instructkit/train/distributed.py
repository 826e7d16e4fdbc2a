"""torch.distributed glue for `torchrun --nproc_per_node N -m instructkit finetune ...`.

torchrun starts one process per device and sets RANK, LOCAL_RANK and WORLD_SIZE; this
module turns those into a process group (NCCL on CUDA, gloo on CPU), picks each rank's
device, and offers the two collectives the loop needs: a sum of numbers across ranks
(target-token counts, loss sums, the stop flag) and a barrier. With WORLD_SIZE unset or 1
everything here is a no-op, so the single-process path is the same code.

DistributedDataParallel replicates the whole model on every rank. A model too large for
one device needs FullyShardedDataParallel (torch.distributed.fsdp.fully_shard) instead;
see docs/distributed.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from instructkit.loading import check_device, pick_device


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device_spec: str) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(), check_device(pick_device(device_spec), device_spec)
    info = Dist(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    device = check_device(pick_device(device_spec, info.local_rank), device_spec)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def shutdown(info: Dist) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def sum_across(values: list[float], info: Dist, device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all ranks (float64, so token counts stay exact)."""
    if not info.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def barrier(info: Dist) -> None:
    if info.enabled:
        dist.barrier()

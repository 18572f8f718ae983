"""Data-parallel initialisation from torchrun's environment variables.

Launch with torchrun on one node (`torchrun --nproc_per_node=2 ...`) or several
(`torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 ...`);
torchrun sets RANK, WORLD_SIZE and LOCAL_RANK, and this module only reads them. Without them the
process runs alone, with no process group. NCCL when CUDA is present, gloo otherwise.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistributedEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: single process, no process group


def init_distributed(device: str | None = None, timeout_minutes: float = 30.0) -> DistributedEnv:
    """Joins torchrun's process group (once) and picks this rank's device.

    `device` "cuda" or "cpu" forces the choice; default CUDA when available.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but torch.cuda.is_available() is False")
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        index = local_rank % torch.cuda.device_count()  # one visible GPU per task under some schedulers
        torch.cuda.set_device(index)
        chosen = torch.device("cuda", index)
    else:
        chosen = torch.device("cpu")
    backend = None
    if world_size > 1 or "RANK" in os.environ:
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            kwargs = {"device_id": chosen} if use_cuda else {}
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs)
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistributedEnv(rank, world_size, local_rank, chosen, backend)


def is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def print_rank0(*args, **kwargs) -> None:
    """print() on rank 0 only, flushed, so torchrun's interleaved output stays readable."""
    if is_rank0():
        print(*args, **kwargs, flush=True)


def shutdown_distributed(wait: bool = True) -> None:
    """Leaves the process group so that no rank aborts at exit, whatever the timing.

    A gloo group still alive at interpreter exit can abort its rank ("terminate called without an
    active exception"): its threads outlive the interpreter. So: a barrier (every rank's collectives
    are done); a rendezvous on the store, not on the group's own connections, so no rank closes them
    while a slower peer is still inside that barrier; then the group is destroyed and the objects
    holding its threads are collected while the interpreter is fully alive. `wait=False` (a failed
    set-up, where the other ranks may be anywhere) only destroys this rank's group."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if wait:
            store = dist.distributed_c10d._get_default_store()  # before the group (and its store) goes
            dist.barrier()
            _store_rendezvous(store, "megasci/shutdown", dist.get_world_size())
    finally:
        dist.destroy_process_group()
        gc.collect()


def _store_rendezvous(store, key: str, world_size: int, timeout_s: float = 300.0) -> None:
    """Every rank waits until all `world_size` ranks have arrived at `key` (through the TCP store)."""
    generation = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # a restarted job's keys are fresh
    arrived = store.add(f"{key}/{generation}/arrived", 1)
    if arrived == world_size:
        store.set(f"{key}/{generation}/all", "1")
    try:
        store.wait([f"{key}/{generation}/all"], datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, dist.DistError) as error:  # the store's host already gone: every rank had arrived
        if "timeout" in str(error).lower() or "timed out" in str(error).lower():
            raise RuntimeError(
                f"leaving the process group: only {arrived} of {world_size} ranks arrived within {timeout_s:.0f} s"
            ) from None

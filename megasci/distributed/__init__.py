"""Process groups from torchrun's environment, and ZeRO-2 sharded AdamW."""

from .env import DistributedEnv, barrier, init_distributed, is_rank0, print_rank0, shutdown_distributed
from .zero import AdamWConfig, ZeroAdamW, default_decay

__all__ = [
    "AdamWConfig",
    "DistributedEnv",
    "ZeroAdamW",
    "barrier",
    "default_decay",
    "init_distributed",
    "is_rank0",
    "print_rank0",
    "shutdown_distributed",
]

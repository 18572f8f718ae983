"""A Checkpointer as the trainer builds one, over a tiny model, for tests of checkpoint behaviour."""

import torch

from megasci.training import checkpoint as ckpt
from megasci.training.config import TrainConfig


class Position:
    """The data component (a DataLoader's state) without data: the samples consumed and the stage."""

    def __init__(self, stage_of=lambda i: 0, stages=("all",)):
        self.consumed_samples, self.stage_of, self.stages = 0, stage_of, stages

    def state_dict(self) -> dict:
        return {
            "consumed_samples": self.consumed_samples,
            "stage": self.stages[self.stage_of(max(0, self.consumed_samples - 1))],
        }

    def load_state_dict(self, state: dict) -> None:
        self.consumed_samples = state["consumed_samples"]


def make_checkpointer(
    save_dir, *, model, optimizer, guard, tokenizer, model_cfg, keep_last=None, position=None
) -> ckpt.Checkpointer:
    components = {
        "spike_guard": guard,
        "data": position or Position(),
        "optimizer": ckpt.ShardedOptimizer(optimizer),
        "rng": ckpt.RNGStreams(),
    }
    saver = ckpt.Checkpointer(
        str(save_dir),
        model=model,
        tokenizer=tokenizer,
        model_cfg=model_cfg,
        train_cfg=TrainConfig(),
        components=components,
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        keep_last=keep_last,
    )
    return saver


def save_at(saver: ckpt.Checkpointer, step: int, consumed_samples: int) -> str:
    """The trainer's save after `step`, with the data position at `consumed_samples`."""
    saver.components["data"].consumed_samples = consumed_samples
    return saver.save(step, saver.components["spike_guard"].total_skipped)


def guard_of(saver: ckpt.Checkpointer):
    return saver.components["spike_guard"]

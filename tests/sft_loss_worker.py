"""Run under torchrun by tests/test_sft_loss.py: one TrainStep over a batch with unscored labels.

The global batch of `batches()` is split over the ranks and micro-batches as the loader does
(rank r takes the r-th contiguous slice); rank 0 writes the step's loss and gradient norm to argv[1].
"""

import json
import sys

import torch

from megasci.distributed import AdamWConfig, ZeroAdamW, init_distributed, shutdown_distributed
from megasci.model import build_model, get_config
from megasci.training.guard import SpikeGuard
from megasci.training.train_step import TrainStep

CFG = get_config("tiny")
GLOBAL, MICRO, SEQ = 8, 1, 12


def batches():
    """(tokens [GLOBAL, SEQ], labels with -100 on unscored targets); sample 2 has no scored target."""
    g = torch.Generator().manual_seed(11)
    data = torch.randint(0, CFG.vocab_size, (GLOBAL, SEQ + 1), generator=g)
    tokens, labels = data[:, :-1].clone(), data[:, 1:].clone()
    scored = torch.rand(GLOBAL, SEQ, generator=g) < 0.4
    scored[2] = False
    scored[5] = True
    labels[~scored] = -100
    return tokens, labels


def model_and_step(world_size: int, accumulation: int):
    torch.manual_seed(0)
    model = build_model(CFG, dtype=torch.float64)
    optimizer = ZeroAdamW(model, AdamWConfig(lr=1e-3, weight_decay=0.0, max_grad_norm=None), bucket_numel=1 << 30)
    step = TrainStep(
        model,
        optimizer,
        SpikeGuard(0.0, 0, 5),
        accumulation=accumulation,
        device=torch.device("cpu"),
        world_size=world_size,
        timing_sync=False,
        data_wait=lambda: 0.0,
        count_scored_tokens=True,
    )
    return model, step


def main(out_path):
    env = init_distributed("cpu")
    accumulation = GLOBAL // (MICRO * env.world_size)
    _, step = model_and_step(env.world_size, accumulation)
    tokens, labels = batches()
    share = GLOBAL // env.world_size
    mine = range(env.rank * share, (env.rank + 1) * share)
    micro = [{"tokens": tokens[i : i + MICRO], "labels": labels[i : i + MICRO]} for i in mine[::MICRO]]
    result = step(iter(micro), 0, lr=1e-3)
    if env.rank == 0:
        with open(out_path, "w") as f:
            json.dump({"loss": result.loss, "grad_norm": result.grad_norm}, f)


if __name__ == "__main__":
    main(sys.argv[1])
    shutdown_distributed()  # after main: nothing left alive holds the group when it is destroyed

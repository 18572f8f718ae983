"""Validation: mean token loss per source over the ranks, and the perplexity of a loss.

`evaluate` is the one loss measurement of held-out data: the trainer's validation and
`megasci.evaluation` (per-source / per-label reports of a checkpoint) both call it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from megasci.data.loader import IGNORE_INDEX, make_batch
from megasci.distributed import print_rank0

from .metrics import MetricsLog

# exp(700) ~ 1e304 is still a float; beyond it the perplexity is reported as infinite, not an overflow.
PERPLEXITY_OVERFLOW_LOSS = 700.0


def perplexity(loss: float | None) -> float | None:
    """exp(loss); inf for a loss too large to exponentiate, None for no loss, NaN for a NaN loss."""
    if loss is None:
        return None
    return math.inf if loss >= PERPLEXITY_OVERFLOW_LOSS else math.exp(loss)


@torch.no_grad()
def evaluate(
    model,
    datasets: dict,
    batch_size: int,
    device,
    dp_rank: int = 0,
    dp_size: int = 1,
    document_mask: bool = False,
    eod_mask_id: int | None = None,
) -> dict[str, float]:
    """Mean loss per scored token per source and over all of them ("all"), samples spread over the ranks.

    `datasets` maps names to map-style datasets of `seq_length + 1` token samples; batches are made
    as for training (`loader.make_batch`: document masking, SFT loss masks, the EOD mask)."""
    sums = torch.zeros(len(datasets), 2, dtype=torch.float64, device=device)  # loss x tokens, tokens
    for k, dataset in enumerate(datasets.values()):
        mine = list(range(dp_rank, len(dataset), dp_size))
        for start in range(0, len(mine), batch_size):
            batch = make_batch(dataset, np.asarray(mine[start : start + batch_size]), document_mask, eod_mask_id)
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            tokens = int((batch["labels"] != IGNORE_INDEX).sum())
            if tokens == 0:
                continue
            packed = {name: batch[name] for name in ("positions", "segment_ids") if name in batch}
            sums[k, 0] += model(batch["tokens"], batch["labels"], **packed).double() * tokens
            sums[k, 1] += tokens
    if dp_size > 1:
        dist.all_reduce(sums)
    losses = {name: float(sums[k, 0] / sums[k, 1]) for k, name in enumerate(datasets)}
    if datasets:
        losses["all"] = float(sums[:, 0].sum() / sums[:, 1].sum())
    return losses


class Validator:
    """The trainer's validation: every rank evaluates its share, rank 0 logs and prints the result."""

    def __init__(
        self,
        model,
        datasets: dict,
        batch_size: int,
        device,
        dp_rank: int,
        dp_size: int,
        log: MetricsLog,
        document_mask: bool = False,
        eod_mask_id: int | None = None,
        interval: int | None = None,
    ):
        self.model, self.datasets, self.batch_size, self.interval = model, datasets, batch_size, interval
        self.device, self.dp_rank, self.dp_size, self.log = device, dp_rank, dp_size, log
        self.batch_options = {"document_mask": document_mask, "eod_mask_id": eod_mask_id}

    def __bool__(self) -> bool:
        """False when there is nothing to validate on."""
        return bool(self.datasets)

    def due(self, step: int) -> bool:
        """Whether to validate after `step`: every `interval` steps, when there is data to validate on."""
        return bool(self.datasets) and bool(self.interval) and step % self.interval == 0

    def __call__(self, step: int) -> dict[str, float]:
        """Losses per source and "all" at `step`; leaves the model in training mode."""
        self.model.eval()
        losses = evaluate(
            self.model, self.datasets, self.batch_size, self.device, self.dp_rank, self.dp_size, **self.batch_options
        )
        self.model.train()
        values = {}
        for name, loss in losses.items():
            values[f"val/loss/{name}"] = loss
            values[f"val/ppl/{name}"] = perplexity(loss)
        self.log.scalars(step, values)
        if losses:
            per_source = ", ".join(f"{n} {perplexity(v):.2f}" for n, v in losses.items() if n != "all")
            print_rank0(
                f"validation at step {step}: loss {losses['all']:.4f}, perplexity "
                f"{perplexity(losses['all']):.2f} ({per_source})"
            )
        return losses

"""The loss with unscored targets (SFT loss masks, the EOD mask): the mean over the scored tokens of
the whole global batch, across micro-batches and ranks, against a hand computation in one process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sft_loss_worker as worker
from megasci.data.gpt_dataset import Sample
from megasci.data.loader import IGNORE_INDEX, make_batch


def hand_loss_and_grad_norm(tokens, labels):
    """sum of -log p(target) over scored targets / their number, and that loss's gradient norm."""
    torch.manual_seed(0)
    model = worker.build_model(worker.CFG, dtype=torch.float64)
    logits = model(tokens)
    keep = labels != IGNORE_INDEX
    loss = F.cross_entropy(logits[keep], labels[keep], reduction="sum") / keep.sum()
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    return float(loss.detach()), float(norm)


def test_one_rank_four_micro_batches_is_the_token_mean():
    tokens, labels = worker.batches()
    model, step = worker.model_and_step(world_size=1, accumulation=4)
    micro = [{"tokens": tokens[i : i + 2], "labels": labels[i : i + 2]} for i in range(0, 8, 2)]
    result = step(iter(micro), 0, lr=1e-3)
    loss, norm = hand_loss_and_grad_norm(tokens, labels)
    assert result.loss == pytest.approx(loss, rel=1e-12)
    assert result.grad_norm == pytest.approx(norm, rel=1e-10)
    # the counts differ per micro-batch, so a mean of the micro-batch means is another number
    with torch.no_grad():
        means = [
            F.cross_entropy(model(m["tokens"]).reshape(-1, worker.CFG.vocab_size), m["labels"].reshape(-1))
            for m in micro
        ]
    assert abs(float(torch.stack(means).mean()) - loss) > 1e-3


def test_unscored_targets_contribute_exactly_nothing():
    """A micro-batch with no scored target added to a step changes neither the loss nor the update, bit for bit."""
    tokens, labels = worker.batches()
    scored_only = [{"tokens": tokens[i : i + 4], "labels": labels[i : i + 4]} for i in (0, 4)]
    unscored = {"tokens": tokens[:4], "labels": torch.full_like(labels[:4], IGNORE_INDEX)}
    outcomes = []
    for micro in (scored_only, scored_only + [unscored]):
        model, step = worker.model_and_step(world_size=1, accumulation=len(micro))
        result = step(iter(micro), 0, lr=1e-3)
        outcomes.append((result.loss, result.grad_norm, [p.detach().clone() for p in model.parameters()]))
    assert outcomes[0][:2] == outcomes[1][:2]
    assert all(torch.equal(a, b) for a, b in zip(outcomes[0][2], outcomes[1][2]))


def test_two_ranks_several_micro_batches_give_the_hand_computation(tmp_path):
    out = tmp_path / "dp2.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        os.path.join(os.path.dirname(__file__), "sft_loss_worker.py"),
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    loss, norm = hand_loss_and_grad_norm(*worker.batches())
    assert result["loss"] == pytest.approx(loss, rel=1e-12)
    assert result["grad_norm"] == pytest.approx(norm, rel=1e-10)


class _Packed:
    """Two samples of 9 tokens: documents [4, 5] and [9]; the first has an SFT loss mask."""

    has_loss_mask = True

    def sample(self, g):
        if g == 0:
            return Sample(np.arange(10, 19), np.array([4, 5]), np.array([0, 1, 1, 1, 0, 0, 1, 1, 0], dtype=np.uint8))
        return Sample(np.arange(20, 29), np.array([9]), None)


def test_make_batch_masks_labels_and_restarts_positions():
    batch = make_batch(_Packed(), np.array([0, 1]), document_mask=True, eod_mask_id=24)
    assert batch["tokens"].tolist() == [list(range(10, 18)), list(range(20, 28))]
    # label j is token j + 1: scored where the mask of token j + 1 is 1; the EOD id 24 never scored
    assert batch["labels"].tolist() == [[11, 12, 13, -100, -100, 16, 17, -100], [21, 22, 23, -100, 25, 26, 27, 28]]
    assert batch["segment_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [0] * 8]
    assert batch["positions"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3], list(range(8))]

"""training/train_step.py: one optimizer step over accumulated micro-batches, against the same
computation written out with torch (full-batch loss, gradient norm, AdamW), and a skipped step."""

import pytest
import torch

from megasci.distributed import AdamWConfig, ZeroAdamW
from megasci.model import build_model, get_config
from megasci.training.guard import SpikeGuard
from megasci.training.train_step import TrainStep

CFG = get_config("tiny")
MICRO, ACCUMULATION, SEQ = 2, 2, 16


def batches(seed):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, CFG.vocab_size, (ACCUMULATION, MICRO, SEQ + 1), generator=g)
    return data, iter([{"tokens": d[:, :-1], "labels": d[:, 1:]} for d in data])


def make_step(guard):
    torch.manual_seed(0)
    model = build_model(CFG)
    optimizer = ZeroAdamW(model, AdamWConfig(lr=1e-2, weight_decay=0.0, max_grad_norm=None), bucket_numel=1 << 30)
    clock = iter(range(100))
    return model, TrainStep(
        model,
        optimizer,
        guard,
        accumulation=ACCUMULATION,
        device=torch.device("cpu"),
        world_size=1,
        timing_sync=False,
        data_wait=lambda: 0.25 * next(clock),
    )


def test_a_step_is_the_full_batch_loss_norm_and_adamw_update():
    model, step = make_step(SpikeGuard(0.0, 0, 5))
    data, micro_batches = batches(seed=1)
    torch.manual_seed(0)
    ref = build_model(CFG)
    full = data.reshape(ACCUMULATION * MICRO, SEQ + 1)
    ref_loss = ref(full[:, :-1], full[:, 1:])
    ref_loss.backward()
    ref_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref.parameters()]))
    torch.optim.AdamW(ref.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0).step()

    result = step(micro_batches, 0, lr=1e-3)
    assert result.skipped is None
    assert result.loss == pytest.approx(float(ref_loss.detach()), rel=1e-5)  # equal micro-batches: mean of means
    assert result.grad_norm == pytest.approx(float(ref_norm), rel=1e-4)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=name)
    assert result.data_wait_s == 0.25  # the loader's total moved by one tick during the step
    assert result.seconds == pytest.approx(result.data_wait_s + result.forward_backward_s + result.optimizer_s)


def test_a_spike_is_skipped_and_leaves_the_parameters(capsys):
    guard = SpikeGuard(factor=2.0, warmup=0, max_skipped=5)
    guard.check(0, 0.1, 1.0)  # a running mean far below any real loss of the tiny model
    model, step = make_step(guard)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = step(batches(seed=2)[1], 1, lr=1e-2)
    assert "above 2 x the running mean" in result.skipped and guard.total_skipped == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert capsys.readouterr().out == f"step 2: skipped, {result.skipped}\n"

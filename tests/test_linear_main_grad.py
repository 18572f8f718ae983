"""megasci/ops/linear.py and its application (training/parallelize.py): the weight gradient goes into
`main_grad` in fp32, equal to nn.Linear's gradient, and nothing else changes."""

from dataclasses import replace

import pytest
import torch

from megasci.distributed import AdamWConfig, ZeroAdamW
from megasci.model import PRESETS, build_model
from megasci.ops.linear import linear_into_main_grad
from megasci.training.parallelize import apply_fp32_grad_accumulation, fp32_accumulating_linears

TINY = replace(PRESETS["tiny"], init_std=0.1)


def test_without_main_grad_it_is_nn_linear_float64_gradcheck():
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(linear_into_main_grad, (x, w))
    assert torch.equal(linear_into_main_grad(x, w), torch.nn.functional.linear(x, w))


def test_bf16_weight_gradient_is_summed_in_fp32_over_micro_batches():
    """Against the float64 product: main_grad carries no bf16 rounding of each micro-batch's gradient,
    and is closer to the exact sum than bf16 .grad summed into fp32 (today's path)."""
    torch.manual_seed(0)
    w = torch.randn(32, 48).to(torch.bfloat16).requires_grad_()
    xs = [torch.randn(4, 16, 48).to(torch.bfloat16) for _ in range(4)]
    gs = [torch.randn(4, 16, 32).to(torch.bfloat16) for _ in range(4)]
    exact = sum(g.double().reshape(-1, 32).t() @ x.double().reshape(-1, 48) for x, g in zip(xs, gs))

    w.main_grad = torch.zeros(32, 48, dtype=torch.float32)
    calls = []
    w.main_grad_added = lambda: calls.append(1)
    for x, g in zip(xs, gs):
        x.requires_grad_()
        linear_into_main_grad(x, w).backward(g)
        assert w.grad is None
        assert torch.equal(x.grad, (g @ w).detach())
    assert len(calls) == 4
    fused_error = (w.main_grad.double() - exact).abs().max()

    del w.main_grad
    via_bf16 = torch.zeros(32, 48)
    for x, g in zip(xs, gs):
        w.grad = None
        linear_into_main_grad(x.detach(), w).backward(g)
        via_bf16 += w.grad.float()
    bf16_error = (via_bf16.double() - exact).abs().max()
    assert fused_error < 1e-4 * exact.abs().max()  # fp32 accumulation of bf16 products: float32 rounding only
    assert bf16_error > 10 * fused_error


def test_swapped_model_trains_as_before_and_can_be_restored():
    """Same loss and (through the optimizer's buffers) the same gradients as nn.Linear; `enabled=False` undoes it."""
    tokens = torch.randint(0, TINY.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))
    buffers = {}
    for fused in (False, True):
        torch.manual_seed(0)
        model = build_model(TINY, dtype=torch.float64)
        apply_fp32_grad_accumulation(model, fused)
        opt = ZeroAdamW(model, AdamWConfig(), bucket_numel=5000, main_grads=fused)
        opt.prepare_backward(True)
        loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        opt.finish_gradient_sync()
        buffers[fused] = (loss.detach(), torch.cat([b.grad_buffer for b in opt.buckets]))
        if fused:
            assert len(fp32_accumulating_linears(model)) == 7 * TINY.n_layers
            assert all(b.grads_ready == len(b.params) for b in opt.buckets), "every main_grad arrival was counted"
            apply_fp32_grad_accumulation(model, enabled=False)
            assert fp32_accumulating_linears(model) == []
            assert all("forward" not in vars(m) for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert torch.equal(buffers[True][0], buffers[False][0])
    assert torch.allclose(buffers[True][1], buffers[False][1], rtol=1e-12, atol=1e-15)


def test_main_grads_and_shard_gradients_exclude_each_other():
    with pytest.raises(ValueError, match="choose one"):
        ZeroAdamW(torch.nn.Linear(4, 4, bias=False), main_grads=True, shard_gradients=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the bf16-into-fp32 GEMM (addmm out_dtype) runs on CUDA only")
def test_cuda_bf16_weight_gradient_accumulates_in_fp32_in_place():
    torch.manual_seed(0)
    w = torch.randn(256, 512, device="cuda").to(torch.bfloat16).requires_grad_()
    w.main_grad = torch.zeros(256, 512, device="cuda")
    storage = w.main_grad.data_ptr()
    xs = [torch.randn(8, 64, 512, device="cuda").to(torch.bfloat16) for _ in range(4)]
    gs = [torch.randn(8, 64, 256, device="cuda").to(torch.bfloat16) for _ in range(4)]
    for x, g in zip(xs, gs):
        linear_into_main_grad(x, w).backward(g)
    exact = sum(g.double().reshape(-1, 256).t() @ x.double().reshape(-1, 512) for x, g in zip(xs, gs))
    assert w.grad is None and w.main_grad.data_ptr() == storage
    assert (w.main_grad.double() - exact).abs().max() < 1e-4 * exact.abs().max()


def test_main_grads_under_every_checkpointing_mode_give_the_same_gradients():
    """Recomputation reruns the swapped linears' forwards; the weight gradients still land once in main_grad."""
    from megasci.training.parallelize import apply_activation_checkpointing

    cfg = replace(TINY, n_layers=3)
    tokens = torch.randint(0, cfg.vocab_size, (2, 33), generator=torch.Generator().manual_seed(2))
    grads = {}
    for mode in ("none", "selective", "full"):
        torch.manual_seed(0)
        model = apply_fp32_grad_accumulation(
            apply_activation_checkpointing(build_model(cfg, dtype=torch.float64), mode)
        )
        opt = ZeroAdamW(model, AdamWConfig(), bucket_numel=3000, main_grads=True)
        for micro in range(2):
            opt.prepare_backward(last_micro_batch=micro == 1)
            model(tokens[:, :-1], tokens[:, 1:]).backward()
        opt.finish_gradient_sync()
        assert all(b.grads_ready == len(b.params) for b in opt.buckets), mode
        grads[mode] = torch.cat([b.grad_buffer for b in opt.buckets])
    assert grads["none"].abs().max() > 0
    for mode in ("selective", "full"):
        assert torch.allclose(grads[mode], grads["none"], rtol=1e-12, atol=1e-15), mode

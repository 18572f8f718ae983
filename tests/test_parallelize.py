"""Activation checkpointing and torch.compile applied to the model from outside (training/parallelize.py):
equal losses and gradients in every mode, less saved activation memory, and modes that can be switched."""

from dataclasses import replace

import pytest
import torch

from benchmark_modules import load_benchmark
from megasci.model import PRESETS, build_model
from megasci.training.config import load_config
from megasci.training.parallelize import apply_activation_checkpointing, apply_compile, recomputed_modules

TINY = replace(PRESETS["tiny"], init_std=0.1)
TINY_GQA = replace(TINY, n_kv_heads=2)


def _tiny(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg, device="cpu", dtype=torch.float32)


def _tokens(cfg, batch=2, seq=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)


def _grads(model, tokens, labels, mode):
    apply_activation_checkpointing(model, mode)
    model.zero_grad(set_to_none=True)
    loss = model(tokens, labels)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_activation_checkpointing_gives_equal_gradients():
    model = _tiny(replace(TINY_GQA, n_layers=3))
    tokens = _tokens(TINY_GQA, seq=48)
    labels = torch.roll(tokens, -1, dims=1)
    loss0, ref = _grads(model, tokens, labels, "none")
    assert all(g.abs().sum() > 0 for g in ref.values())
    for mode in ("full", "selective"):
        loss, grads = _grads(model, tokens, labels, mode)
        assert torch.equal(loss, loss0)
        for name in ref:
            assert torch.allclose(grads[name], ref[name], rtol=1e-6, atol=1e-6), (mode, name)


def test_checkpointing_from_config_wraps_the_modules_it_names():
    cfg = replace(TINY, n_layers=3)
    model = _tiny(cfg)
    names = {id(m): n for n, m in model.named_modules()}
    before = model.state_dict().keys()
    apply_activation_checkpointing(
        model,
        load_config(
            None, ["train.activation_checkpointing=selective", "optim.warmup_steps=1"]
        ).train.activation_checkpointing,
    )
    assert [names[id(m)] for m in recomputed_modules(model)] == ["layers.0", "layers.1", "layers.2"]
    apply_activation_checkpointing(model, "full")
    assert [names[id(m)] for m in recomputed_modules(model)] == ["layers.0", "layers.1", "layers.2"]
    apply_activation_checkpointing(model, "none")
    assert recomputed_modules(model) == []
    assert model.state_dict().keys() == before  # the model is wrapped, not rebuilt: names stay
    with pytest.raises(ValueError, match="checkpointing must be one of"):
        apply_activation_checkpointing(model, "some")


def test_checkpointing_modes_save_less():
    """The modes are wired up: retained activations shrink from none to selective to full.

    Counted as every storage the forward pass leaves alive (benchmarks/bench_activations.py): saved
    tensors alone would miss what checkpointed regions keep (their inputs, selective's cached outputs)."""
    retained_activation_bytes = load_benchmark("bench_activations").retained_activation_bytes
    model = _tiny(replace(TINY, n_layers=3))
    tokens = _tokens(TINY, seq=64)
    saved = {}
    for mode in ("none", "selective", "full"):
        apply_activation_checkpointing(model, mode)
        saved[mode], loss = retained_activation_bytes(lambda: model(tokens, torch.roll(tokens, -1, dims=1)), model)
        del loss
    assert saved["none"] > saved["selective"] > saved["full"], saved


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointed_model_decodes_without_recomputation(mode):
    """Under no_grad (validation, KV-cache decoding) a wrapped module runs plainly, with equal logits."""
    model = _tiny(TINY)
    tokens = _tokens(TINY, seq=16)
    with torch.no_grad():
        plain = model(tokens)
        apply_activation_checkpointing(model, mode)
        torch.testing.assert_close(model(tokens), plain, rtol=0, atol=0)


def test_compiled_checkpointed_blocks_give_eager_gradients():
    """torch.compile (aot_eager: no C++ build) over blocks that recompute: the eager loss and gradients."""
    tokens = _tokens(TINY, seq=32)
    labels = torch.roll(tokens, -1, dims=1)
    eager_loss, eager = _grads(_tiny(TINY), tokens, labels, "full")
    torch._dynamo.reset()
    compiled = apply_compile(apply_activation_checkpointing(_tiny(TINY), "full"), "aot_eager")
    compiled.zero_grad(set_to_none=True)
    loss = compiled(tokens, labels)
    loss.backward()
    torch.testing.assert_close(loss.detach(), eager_loss, rtol=1e-6, atol=1e-6)
    for name, p in compiled.named_parameters():
        torch.testing.assert_close(p.grad, eager[name], rtol=1e-5, atol=1e-6)

"""Document masking: documents packed into one sample behave exactly as if each ran alone.

For every attention backend that runs here, each document's logits inside the packed sample equal
its logits run by itself (positions restart, block-causal mask), and the gradient of one document's
loss reaches no other document's input embeddings. FlexAttention has no CPU backward, so on CPU it
is checked forward only.
"""

from dataclasses import replace

import pytest
import torch

from megasci import ops
from megasci.model import PRESETS, build_model
from megasci.ops.attention import attention_reference, cu_seqlens, document_mask

# init_std 0.1: attention far from uniform, so a leaked key or a wrong position moves the logits by O(1).
CFG = replace(PRESETS["tiny"], init_std=0.1, n_kv_heads=2)
LENGTHS = (5, 9, 1, 7)  # a one-token document too


SHIPPED_BACKENDS = ("reference", "sdpa", "flex", "flash")  # megasci.ops.attention's own, not stand-ins others register


def _backends():
    return [pytest.param(b, id=b) for b in SHIPPED_BACKENDS if b in ops.available_backends("attention")]


def _packed(lengths=LENGTHS, seed=3):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, CFG.vocab_size, (1, sum(lengths)), generator=g)
    segment_ids = torch.cat([torch.full((n,), d) for d, n in enumerate(lengths)])[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    return tokens, positions, segment_ids


def _model():
    torch.manual_seed(0)
    return build_model(CFG, device="cpu", dtype=torch.float32)


def _grad_tracked_embeddings(model):
    """Makes the embedding output a leaf whose .grad the test can read."""
    captured = {}

    def hook(module, args, output):
        leaf = output.detach().requires_grad_(True)
        captured["x"] = leaf
        return leaf

    return captured, model.embed.register_forward_hook(hook)


@pytest.mark.parametrize("backend", _backends())
def test_each_document_matches_running_alone(backend, attention_backend):
    attention_backend(backend)
    model = _model()
    tokens, positions, segment_ids = _packed()
    with torch.no_grad():
        packed = model(tokens, positions=positions, segment_ids=segment_ids)
        start = 0
        for n in LENGTHS:
            alone = model(tokens[:, start : start + n])
            torch.testing.assert_close(packed[:, start : start + n], alone, rtol=1e-5, atol=1e-5)
            start += n
        # without the mask the later documents do see the earlier ones: the test can fail
        unmasked = model(tokens)
    assert (unmasked[:, LENGTHS[0] :] - packed[:, LENGTHS[0] :]).abs().max() > 1e-2


@pytest.mark.parametrize("backend", _backends())
def test_no_gradient_crosses_documents(backend, attention_backend):
    if backend == "flex" and not torch.cuda.is_available():
        pytest.skip("FlexAttention has no backward on CPU (torch raises NotImplementedError)")
    attention_backend(backend)
    model = _model()
    tokens, positions, segment_ids = _packed()
    captured, handle = _grad_tracked_embeddings(model)
    try:
        logits = model(tokens, positions=positions, segment_ids=segment_ids)
    finally:
        handle.remove()
    bounds = torch.tensor((0,) + LENGTHS).cumsum(0).tolist()
    chosen = 1  # the loss of document 1 alone
    logits[:, bounds[chosen] : bounds[chosen + 1]].float().logsumexp(-1).sum().backward()
    grad = captured["x"].grad[0]
    for d in range(len(LENGTHS)):
        rows = grad[bounds[d] : bounds[d + 1]]
        if d == chosen:
            assert rows.abs().sum() > 0
        else:
            assert torch.equal(rows, torch.zeros_like(rows)), f"document {d} received gradient"


def test_document_mask_is_block_causal():
    mask = document_mask(torch.tensor([[0, 0, 1, 1, 1]]))[0, 0]
    expected = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(mask, expected)


def test_one_document_is_plain_causal_attention():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 6, 4, 8, dtype=torch.float64, generator=g) for _ in range(3))
    whole = torch.zeros(2, 6, dtype=torch.int64)
    torch.testing.assert_close(
        attention_reference(q, k, v, True, segment_ids=whole), attention_reference(q, k, v, True)
    )


def test_cu_seqlens_flattens_documents_in_order():
    offsets, longest = cu_seqlens(torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]]))
    assert offsets.tolist() == [0, 2, 5, 6, 10] and offsets.dtype == torch.int32 and longest == 4


def test_model_needs_positions_and_segments_together():
    model = _model()
    tokens, positions, _ = _packed()
    with pytest.raises(ValueError, match="both"):
        model(tokens, positions=positions)


def test_segment_ids_shape_is_checked():
    q = torch.zeros(1, 4, 2, 8)
    with pytest.raises(ValueError, match="segment_ids"):
        ops.attention(q, q, q, segment_ids=torch.zeros(1, 5, dtype=torch.int64))


def test_a_flash_attn_that_crashes_on_first_call_falls_back_to_sdpa(monkeypatch):
    """An importable wheel built against another torch: the probe fails, one warning, then SDPA."""
    import importlib
    import sys
    import types

    attention_module = importlib.import_module("megasci.ops.attention")

    def crashing(*args, **kwargs):
        raise RuntimeError("undefined symbol: _ZN3c104cuda9SetDevice")

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_func=crashing))
    monkeypatch.setattr(attention_module, "module_available", lambda name: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_zeros = torch.zeros
    monkeypatch.setattr(torch, "zeros", lambda *a, **k: real_zeros(1))  # no CUDA here: a stand-in reaches the wheel
    attention_module.flash_usable.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="does not run here.*undefined symbol"):
            assert attention_module.flash_usable() is False
        assert attention_module.flash_usable() is False  # cached: the warning comes once
        assert "flash" not in ops.available_backends("attention")
    finally:
        attention_module.flash_usable.cache_clear()

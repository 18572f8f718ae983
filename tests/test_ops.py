"""megasci.ops against transformers' LLaMA code and naive float64 formulas."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck
from transformers import LlamaConfig
from transformers.models.llama import modeling_llama as hf

import megasci.ops as ops
from megasci.ops import backends as registry
from megasci.ops.attention import attention_reference, attention_sdpa
from megasci.ops.loss import cross_entropy_chunked, cross_entropy_reference
from megasci.ops.rmsnorm import rms_norm_reference
from megasci.ops.rotary import apply_rotary_reference
from megasci.ops.swiglu import swiglu_reference
from memory_watch import LargeTensorWatch

OPS = ["rms_norm", "swiglu", "attention", "cross_entropy_loss", "apply_rotary"]


@pytest.fixture(autouse=True)
def auto_backends():
    for op in OPS:
        ops.set_backend(op, "auto")
    yield
    for op in OPS:
        ops.set_backend(op, "auto")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- rms_norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_hf_exactly(dtype):
    g = gen(1)
    x = (torch.randn(3, 7, 64, generator=g) * 3).to(dtype)
    module = hf.LlamaRMSNorm(64, eps=1e-5)
    with torch.no_grad():
        module.weight.copy_(torch.randn(64, generator=g))
    module = module.to(dtype)
    expected = module(x)
    got = ops.rms_norm(x, module.weight, eps=1e-5)
    assert got.dtype == expected.dtype == dtype
    assert torch.equal(got, expected)


def test_rms_norm_fp32_weight_bf16_input_matches_hf():
    g = gen(2)
    x = torch.randn(5, 32, generator=g).bfloat16()
    module = hf.LlamaRMSNorm(32)
    with torch.no_grad():
        module.weight.copy_(torch.randn(32, generator=g))
    assert torch.equal(ops.rms_norm(x, module.weight), module(x))


def test_rms_norm_gradcheck():
    g = gen(3)
    x = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    assert gradcheck(lambda a, b: ops.rms_norm(a, b, 1e-6), (x, w))
    naive = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(ops.rms_norm(x, w), naive)


# ---------------------------------------------------------------- swiglu


def test_swiglu_value_and_gradcheck():
    g = gen(4)
    gate = torch.randn(3, 8, dtype=torch.float64, generator=g, requires_grad=True)
    up = torch.randn(3, 8, dtype=torch.float64, generator=g, requires_grad=True)
    torch.testing.assert_close(ops.swiglu(gate, up), gate * torch.sigmoid(gate) * up)
    assert gradcheck(ops.swiglu, (gate, up))


# ---------------------------------------------------------------- attention


def naive_attention(q, k, v, causal):
    """softmax(QK^T / sqrt(d) + mask) V in float64, heads repeated for GQA."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s = q.shape[2]
        scores = scores + torch.full((s, s), float("-inf"), dtype=scores.dtype).triu(1)
    return (scores.softmax(-1) @ v).transpose(1, 2)


def qkv(hq, hkv, dtype=torch.float64, s=6, d=8, seed=5, requires_grad=False):
    g = gen(seed)
    shapes = [(2, s, hq, d), (2, s, hkv, d), (2, s, hkv, d)]
    return [torch.randn(sh, generator=g, dtype=dtype).requires_grad_(requires_grad) for sh in shapes]


@pytest.mark.parametrize("backend", ["reference", "sdpa", "auto"])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("causal", [True, False])
def test_attention_matches_naive_float64(backend, hq, hkv, causal):
    ops.set_backend("attention", backend)
    q, k, v = qkv(hq, hkv)
    out = ops.attention(q, k, v, causal=causal)
    assert out.shape == q.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, naive_attention(q, k, v, causal))


def test_attention_softmax_scale():
    q, k, v = qkv(4, 2)
    expected = naive_attention(q * (0.3 * math.sqrt(8)), k, v, True)
    for fn in (attention_reference, attention_sdpa):
        torch.testing.assert_close(fn(q, k, v, True, 0.3), expected)


@pytest.mark.parametrize("fn", [attention_reference, attention_sdpa])
def test_attention_gradcheck_gqa(fn):
    q, k, v = qkv(4, 2, s=4, d=4, requires_grad=True)
    assert gradcheck(lambda a, b, c: fn(a, b, c, True), (q, k, v))


def test_attention_matches_hf_eager():
    q, k, v = qkv(4, 2, dtype=torch.float32, s=9, d=16)
    s = q.shape[1]
    mask = torch.full((s, s), float("-inf")).triu(1)[None, None]
    module = SimpleNamespace(num_key_value_groups=2, training=False)
    expected, _ = hf.eager_attention_forward(
        module, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, scaling=16**-0.5
    )
    for backend in ("reference", "sdpa"):
        ops.set_backend("attention", backend)
        torch.testing.assert_close(ops.attention(q, k, v), expected, rtol=1e-5, atol=1e-5)


def test_attention_bf16_close_to_float64():
    q, k, v = qkv(4, 2, dtype=torch.bfloat16, s=16, d=16)
    out = ops.attention(q, k, v)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, True), rtol=2e-2, atol=2e-2)


def test_attention_rejects_bad_shapes():
    q, k, v = qkv(3, 2)
    with pytest.raises(ValueError, match="multiple"):
        ops.attention(q, k, v)
    q, _, _ = qkv(4, 2, s=5)
    _, k, v = qkv(4, 2, s=6)
    with pytest.raises(ValueError, match="equal"):
        ops.attention(q, k, v, causal=True)


def test_attention_auto_is_sdpa_on_cpu():
    q, k, v = qkv(4, 2, dtype=torch.bfloat16)
    assert ops.resolve_backend("attention", q, k, v) == "sdpa"


@pytest.mark.parametrize("start,new", [(0, 6), (5, 1), (3, 3), (1, 5)], ids=["prefill", "one", "chunk", "long-chunk"])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2)])
def test_cached_attention_is_the_last_rows_of_full_causal_attention(start, new, hq, hkv):
    """Queries at start..start+new-1 over keys 0..start+new-1 (the bottom-right aligned mask) are
    exactly those rows of square causal attention over the whole sequence."""
    q, k, v = qkv(hq, hkv, s=start + new)
    out = ops.cached_attention(q[:, start:], k, v, start)
    assert out.shape == q[:, start:].shape
    torch.testing.assert_close(out, naive_attention(q, k, v, True)[:, start:])


# ---------------------------------------------------------------- rotary


def hf_rotary(seq_len, head_dim, theta, dtype):
    config = LlamaConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        head_dim=head_dim,
        max_position_embeddings=seq_len,
        rope_theta=theta,
    )
    module = hf.LlamaRotaryEmbedding(config)
    x = torch.zeros(1, dtype=dtype)
    return module(x, torch.arange(seq_len)[None])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_rotary_tables_match_hf_exactly(dtype, theta):
    cos, sin = ops.rotary_tables(40, 16, theta=theta, dtype=dtype)
    hf_cos, hf_sin = hf_rotary(40, 16, theta, dtype)
    assert cos.dtype == dtype and cos.shape == (40, 16)
    assert torch.equal(cos, hf_cos[0]) and torch.equal(sin, hf_sin[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_rotary_matches_hf_exactly(dtype):
    g = gen(6)
    q = torch.randn(2, 10, 4, 16, generator=g).to(dtype)
    k = torch.randn(2, 10, 2, 16, generator=g).to(dtype)
    cos, sin = ops.rotary_tables(10, 16, dtype=dtype)
    hf_cos, hf_sin = hf_rotary(10, 16, 10000.0, dtype)
    # HF's layout is [B, H, S, D] with unsqueeze_dim=1; ours is [B, S, H, D].
    hf_q, hf_k = hf.apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), hf_cos, hf_sin)
    got_q, got_k = ops.apply_rotary(q, k, cos, sin)
    assert torch.equal(got_q, hf_q.transpose(1, 2)) and torch.equal(got_k, hf_k.transpose(1, 2))
    batched_q, batched_k = ops.apply_rotary(q, k, hf_cos.expand(2, -1, -1), hf_sin.expand(2, -1, -1))
    assert torch.equal(batched_q, got_q) and torch.equal(batched_k, got_k)


def test_apply_rotary_is_a_rotation_and_gradchecks():
    g = gen(7)
    q = torch.randn(1, 5, 2, 8, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(1, 5, 1, 8, dtype=torch.float64, generator=g, requires_grad=True)
    cos, sin = ops.rotary_tables(5, 8, dtype=torch.float64)
    rq, _ = ops.apply_rotary(q, k, cos, sin)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    # Position 0 is the identity, and pair (i, i + D/2) rotates by angle pos * theta^(-2i/D).
    torch.testing.assert_close(rq[:, 0], q[:, 0])
    angle = 3 * 10000.0 ** (-2 * 1 / 8)
    x1, x2 = q[0, 3, 0, 1], q[0, 3, 0, 5]
    torch.testing.assert_close(rq[0, 3, 0, 1], x1 * math.cos(angle) - x2 * math.sin(angle))
    torch.testing.assert_close(rq[0, 3, 0, 5], x2 * math.cos(angle) + x1 * math.sin(angle))
    assert gradcheck(lambda a, b: apply_rotary_reference(a, b, cos, sin), (q, k))


# ---------------------------------------------------------------- cross-entropy


def ce_inputs(n=37, h=16, v=50, dtype=torch.float32, ignore=(), seed=8):
    g = gen(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) / 2).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=g)
    labels[list(ignore)] = -100
    return hidden, weight, labels


def loss_and_grads(fn, hidden, weight, labels, **kwargs):
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    loss = fn(hidden, weight, labels, **kwargs)
    loss.backward()
    return loss, hidden.grad, weight.grad


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 37, 4096])
@pytest.mark.parametrize("ignore", [(), (0, 3, 4, 36)])
def test_cross_entropy_float32_matches_torch(chunk_size, ignore):
    hidden, weight, labels = ce_inputs(ignore=ignore)
    loss, gh, gw = loss_and_grads(ops.cross_entropy_loss, hidden, weight, labels, chunk_size=chunk_size)
    ref_loss, ref_gh, ref_gw = loss_and_grads(lambda a, b, c: F.cross_entropy(a @ b.T, c), hidden, weight, labels)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(gh, ref_gh)
    torch.testing.assert_close(gw, ref_gw)
    if ignore:
        assert torch.all(gh[list(ignore)] == 0)


@pytest.mark.parametrize("chunk_size", [7, 64])
def test_cross_entropy_bf16_close_to_float64(chunk_size):
    hidden, weight, labels = ce_inputs(n=45, h=32, v=200, dtype=torch.bfloat16, ignore=(2, 9))
    loss, gh, gw = loss_and_grads(ops.cross_entropy_loss, hidden, weight, labels, chunk_size=chunk_size)
    assert loss.dtype == torch.float32 and gh.dtype == gw.dtype == torch.bfloat16
    exact = loss_and_grads(lambda a, b, c: F.cross_entropy(a @ b.T, c), hidden.double(), weight.double(), labels)
    bf16 = loss_and_grads(lambda a, b, c: F.cross_entropy(a @ b.T, c), hidden, weight, labels)
    torch.testing.assert_close(loss.double(), exact[0], rtol=1e-3, atol=1e-3)
    for ours, torch_bf16, truth in zip((gh, gw), bf16[1:], exact[1:]):
        torch.testing.assert_close(ours.double(), truth, rtol=2e-2, atol=2e-3)
        # No worse than autograd through bf16 logits, up to rounding of the last bit.
        ours_err = (ours.double() - truth).abs().max()
        torch_err = (torch_bf16.double() - truth).abs().max()
        assert ours_err <= 2 * torch_err + 1e-4


def test_cross_entropy_gradcheck_float64():
    hidden, weight, labels = ce_inputs(n=7, h=3, v=5, ignore=(2,))
    hidden = hidden.detach().double().requires_grad_()
    weight = weight.detach().double().requires_grad_()
    assert gradcheck(lambda a, b: cross_entropy_chunked(a, b, labels, 3), (hidden, weight))


def test_cross_entropy_reference_backend_and_shapes():
    hidden, weight, labels = ce_inputs(n=12)
    chunked = ops.cross_entropy_loss(hidden.view(3, 4, -1), weight, labels.view(3, 4), chunk_size=5)
    ops.set_backend("cross_entropy_loss", "reference")
    torch.testing.assert_close(ops.cross_entropy_loss(hidden, weight, labels), chunked)
    assert ops.get_backend("cross_entropy_loss") == "reference"


def test_cross_entropy_only_one_input_needs_grad():
    hidden, weight, labels = ce_inputs()
    frozen = weight.detach()
    ops.cross_entropy_loss(hidden, frozen, labels, chunk_size=8).backward()
    torch.testing.assert_close(hidden.grad, torch.autograd.grad(F.cross_entropy(hidden @ frozen.T, labels), hidden)[0])


def test_cross_entropy_all_ignored_is_nan_like_torch():
    hidden, weight, labels = ce_inputs(n=4, ignore=range(4))
    assert torch.isnan(ops.cross_entropy_loss(hidden, weight, labels))
    assert torch.isnan(F.cross_entropy(hidden @ weight.T, labels))


@pytest.mark.parametrize("backend", ["chunked", "reference"])
@pytest.mark.parametrize("z_loss", [0.0, 0.2])
def test_cross_entropy_scored_only_gives_the_same_loss_and_gradients(backend, z_loss):
    """Dropping the ignored rows first (an answer-only batch) changes nothing but the work: float64 against
    the hand-computed loss over every row, for mostly ignored labels, none ignored and all ignored."""
    ops.set_backend("cross_entropy_loss", backend)
    for ignore in (tuple(i for i in range(40) if i % 7), (), tuple(range(40))):
        hidden, weight, labels = ce_inputs(n=40, h=8, v=30, ignore=ignore, seed=4)
        hidden, weight = hidden.double(), weight.double()
        got = loss_and_grads(
            ops.cross_entropy_loss, hidden, weight, labels, chunk_size=4, z_loss=z_loss, scored_only=True
        )
        if len(ignore) == 40:
            assert torch.isnan(got[0])
            continue
        want = loss_and_grads(lambda a, b, c: hand_loss(a, b, c, z_loss), hidden, weight, labels)
        for ours, truth in zip(got, want):
            torch.testing.assert_close(ours, truth, rtol=1e-12, atol=1e-12)
        assert torch.all(got[1][list(ignore)] == 0)


def saved_bytes(fn, *args, **kwargs):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn(*args, **kwargs)
    loss.backward()
    return total


def test_cross_entropy_does_not_save_logits():
    n, v = 512, 1000
    hidden, weight, labels = ce_inputs(n=n, h=16, v=v)
    logits_bytes = n * v * 4
    chunked = saved_bytes(cross_entropy_chunked, hidden, weight, labels, chunk_size=64)
    naive = saved_bytes(cross_entropy_reference, hidden, weight, labels)
    # Inputs, labels and one log-sum-exp per token; the unchunked path keeps logits (and more).
    assert chunked < logits_bytes / 10
    assert naive >= logits_bytes


# ---------------------------------------------------------------- registry


def test_registry_defaults_and_auto_choices_on_cpu():
    x = torch.randn(2, 8)
    for op in OPS:
        assert ops.get_backend(op) == "auto"
        assert "reference" in ops.available_backends(op)
    assert ops.resolve_backend("rms_norm", x, torch.ones(8)) == "reference"
    assert ops.resolve_backend("cross_entropy_loss", x, torch.ones(3, 8), torch.zeros(2)) == "chunked"
    q, cos = torch.randn(1, 2, 2, 8), torch.randn(2, 8)
    assert ops.resolve_backend("apply_rotary", q, q, cos, cos) == "reference"


def test_registry_rejects_unknown_or_unavailable():
    with pytest.raises(KeyError):
        ops.set_backend("layer_norm", "reference")
    with pytest.raises(KeyError):  # the op is named after its function, apply_rotary
        ops.set_backend("rotary", "reference")
    with pytest.raises(ValueError, match="no backend 'fused'"):
        ops.set_backend("rms_norm", "fused")
    for op in ("rms_norm", "apply_rotary", "cross_entropy_loss", "swiglu"):
        if not torch.cuda.is_available():  # the triton kernels are available only with a GPU
            with pytest.raises(ValueError, match="triton"):
                ops.set_backend(op, "triton")
        assert ops.get_backend(op) == "auto"
    if "apex" not in ops.available_backends("rms_norm"):
        with pytest.raises(ValueError, match="cannot run here"):
            ops.set_backend("rms_norm", "apex")


def test_unavailable_backend_cannot_be_forced_anywhere(monkeypatch):
    """The same check on every machine: a backend whose package is missing is refused and not selected."""
    monkeypatch.setitem(registry._registry, "rms_norm", dict(registry._registry["rms_norm"]))
    ops.register_backend("rms_norm", "missing", rms_norm_reference, lambda: False)
    with pytest.raises(ValueError, match="cannot run here"):
        ops.set_backend("rms_norm", "missing")
    assert ops.get_backend("rms_norm") == "auto"


def test_registered_backend_is_used_when_forced(monkeypatch):
    monkeypatch.setitem(registry._registry, "swiglu", dict(registry._registry["swiglu"]))
    calls = []

    def fake(gate, up):
        calls.append(gate.shape)
        return swiglu_reference(gate, up)

    ops.register_backend("swiglu", "triton", fake)
    x = torch.randn(3, 4)
    ops.swiglu(x, x)
    assert calls == []
    ops.set_backend("swiglu", "triton")
    assert ops.get_backend("swiglu") == "triton"
    ops.swiglu(x, x)
    assert calls == [x.shape]


def test_reference_rms_norm_is_the_cpu_path():
    x, w = torch.randn(2, 8), torch.randn(8)
    ops.set_backend("rms_norm", "reference")
    assert torch.equal(ops.rms_norm(x, w), rms_norm_reference(x, w))


def test_ops_trace_into_one_graph_under_torch_compile():
    def block(x, k, w, hidden, weight, labels):
        cos, sin = ops.rotary_tables(x.shape[1], x.shape[-1])
        q, kk = ops.apply_rotary(x, k, cos, sin)
        a = ops.attention(q, kk, kk)
        y = ops.swiglu(ops.rms_norm(a, w), a)
        return y.sum() + ops.cross_entropy_loss(hidden, weight, labels, chunk_size=3)

    torch._dynamo.reset()
    compiled = torch.compile(block, backend="eager", fullgraph=True)
    x, k = torch.randn(2, 5, 4, 8), torch.randn(2, 5, 2, 8)
    hidden, weight, labels = ce_inputs(n=10, h=8, v=20)
    args = (x, k, torch.randn(8), hidden, weight, labels)
    torch.testing.assert_close(compiled(*args), block(*args))


def test_cross_entropy_under_autocast():
    hidden, weight, labels = ce_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, gh, gw = loss_and_grads(ops.cross_entropy_loss, hidden, weight, labels, chunk_size=5)
    ref_loss, ref_gh, ref_gw = loss_and_grads(lambda a, b, c: F.cross_entropy(a @ b.T, c), hidden, weight, labels)
    assert loss.dtype == torch.float32 and gh.dtype == gw.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gh, ref_gh, rtol=5e-2, atol=5e-3)
    torch.testing.assert_close(gw, ref_gw, rtol=5e-2, atol=5e-3)


# ---------------------------------------------------------------- fused cross-entropy: z-loss, main_grad, memory


def hand_loss(hidden, weight, labels, z_loss, ignore_index=-100):
    """The loss written out in float64: mean over scored tokens of lse - logit[label] + z_loss * lse**2."""
    logits = hidden.double() @ weight.double().T
    total, count = 0.0, 0
    for row, label in zip(logits, labels.tolist()):
        if label == ignore_index:
            continue
        lse = row.max() + torch.log(torch.exp(row - row.max()).sum())
        total = total + (lse - row[label]) + z_loss * lse**2
        count += 1
    return total / count


@pytest.mark.parametrize("backend", ["chunked", "reference"])
@pytest.mark.parametrize("z_loss", [0.0, 1e-4, 0.3])
def test_cross_entropy_z_loss_matches_hand_computation(backend, z_loss):
    hidden, weight, labels = ce_inputs(n=19, h=8, v=30, ignore=(1, 7), seed=11)
    ops.set_backend("cross_entropy_loss", backend)
    loss, gh, gw = loss_and_grads(
        ops.cross_entropy_loss, hidden.double(), weight.double(), labels, chunk_size=4, z_loss=z_loss
    )
    want, want_gh, want_gw = loss_and_grads(
        lambda a, b, c: hand_loss(a, b, c, z_loss), hidden.double(), weight.double(), labels
    )
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gh, want_gh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, want_gw, rtol=1e-10, atol=1e-12)


def test_cross_entropy_z_loss_gradcheck_float64():
    hidden, weight, labels = ce_inputs(n=7, h=3, v=5, ignore=(2,))
    hidden = hidden.detach().double().requires_grad_()
    weight = weight.detach().double().requires_grad_()
    assert gradcheck(lambda a, b: cross_entropy_chunked(a, b, labels, 3, -100, 0.2), (hidden, weight))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_adds_into_main_grad_and_returns_none(dtype):
    """With ``weight.main_grad`` the float32 weight gradient is added into it, the arrival callback runs
    once, and ``weight.grad`` stays None; without it the gradient is returned in the weight's dtype."""
    hidden, weight, labels = ce_inputs(n=45, h=32, v=200, dtype=dtype, ignore=(2, 9))
    exact = loss_and_grads(lambda a, b, c: F.cross_entropy(a @ b.T, c), hidden.double(), weight.double(), labels)
    w = weight.detach().clone().requires_grad_()
    w.main_grad = torch.zeros(weight.shape)
    arrivals = []
    w.main_grad_added = lambda: arrivals.append(1)
    h = hidden.detach().clone().requires_grad_()
    (2.0 * ops.cross_entropy_loss(h, w, labels, chunk_size=8)).backward()
    assert w.grad is None and arrivals == [1] and w.main_grad.dtype == torch.float32
    first = w.main_grad.clone()
    ops.cross_entropy_loss(h, w, labels, chunk_size=8).backward()  # a second micro-batch adds to the first
    assert arrivals == [1, 1] and torch.equal(w.main_grad, first * 1.5)
    _, _, returned = loss_and_grads(ops.cross_entropy_loss, hidden, weight, labels, chunk_size=8)
    assert returned.dtype == dtype
    assert torch.equal(returned, (first / 2).to(dtype))  # the same float32 sum, rounded once
    truth = 2 * exact[2]
    main_err = (first.double() - truth).abs().max()
    assert main_err <= (2 * returned.double() - truth).abs().max()
    if dtype == torch.float32:
        torch.testing.assert_close(first.double(), truth, rtol=1e-4, atol=1e-6)
    else:
        torch.testing.assert_close(first.double(), truth, rtol=2e-2, atol=2e-3)


def test_cross_entropy_under_no_grad_does_no_gradient_work():
    hidden, weight, labels = ce_inputs(n=40)
    calls = []

    class CountMatmuls(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.addmm_.default):
                calls.append(func)
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), CountMatmuls():
        loss = ops.cross_entropy_loss(hidden, weight, labels, chunk_size=16)
    assert len(calls) == 3  # one logits matmul per chunk of 16, 16, 8 tokens
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.T, labels))


@pytest.mark.parametrize("dtype,chunks_held", [(torch.float32, 1.0), (torch.bfloat16, 1.5)])
def test_cross_entropy_holds_one_chunk_of_logits(dtype, chunks_held):
    """Largest tensors alive at once during forward and backward: one float32 chunk of logits (a
    bf16 chunk adds its own half-size copy on the PyTorch path); the reference holds all of them."""
    n, v, chunk = 512, 4000, 64
    hidden, weight, labels = ce_inputs(n=n, h=8, v=v, dtype=dtype)
    chunk_fp32_bytes = chunk * v * 4
    watch = LargeTensorWatch(min_numel=chunk * v // 2)
    with watch:
        ops.cross_entropy_loss(hidden, weight, labels, chunk_size=chunk).backward()
    assert watch.peak == chunks_held * chunk_fp32_bytes
    reference = LargeTensorWatch(min_numel=chunk * v // 2)
    with reference:
        cross_entropy_reference(hidden, weight, labels).backward()
    assert reference.peak >= n * v * 4


def test_cross_entropy_rejects_negative_z_loss():
    hidden, weight, labels = ce_inputs(n=4)
    with pytest.raises(ValueError, match="z_loss"):
        ops.cross_entropy_loss(hidden, weight, labels, z_loss=-1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_accumulate_matmul_sums_in_the_accumulator_dtype(dtype):
    """bf16 operands: the product goes into the float32 sum unrounded, unlike ``acc += (a @ b).float()``."""
    from megasci.ops.accumulate import accumulate_matmul

    g = gen(13)
    a, b = torch.randn(20, 64, generator=g).to(dtype), torch.randn(64, 12, generator=g).to(dtype)
    start = torch.randn(20, 12, generator=g)
    acc = start.clone()
    accumulate_matmul(acc, a, b)
    exact = start.double() + a.double() @ b.double()
    torch.testing.assert_close(acc.double(), exact, rtol=1e-6, atol=1e-5)
    if dtype == torch.bfloat16:
        rounded_err = (start + (a @ b).float() - exact).abs().max()
        assert (acc.double() - exact).abs().max() < rounded_err / 10

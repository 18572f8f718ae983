"""Our Triton kernels against the reference paths, forward and backward.

Without CUDA, TRITON_INTERPRET=1 is set below, before megasci imports its triton kernels, so they run in
Triton's CPU interpreter (numpy); with CUDA the same tests run the compiled kernels. Every test here is
marked ``gpu``, so a GPU session runs them with ``pytest -m gpu``.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402
import importlib.util  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed; the triton backends are not registered as available", allow_module_level=True)

pytestmark = pytest.mark.gpu

import megasci.ops as ops  # noqa: E402
from megasci.ops import backends as registry  # noqa: E402
from megasci.ops import triton_kernels as tk  # noqa: E402
from megasci.ops.accumulate import accumulate_matmul  # noqa: E402
from megasci.ops.loss import cross_entropy_reference, cross_entropy_triton  # noqa: E402
from megasci.ops.rmsnorm import rms_norm_reference  # noqa: E402
from megasci.ops.rotary import apply_rotary_reference, rotary_tables  # noqa: E402
from megasci.ops.swiglu import swiglu_reference  # noqa: E402

if not tk.INTERPRETED and not torch.cuda.is_available():
    pytest.skip(
        "megasci.ops.triton_kernels was imported before TRITON_INTERPRET=1 was set and there is no GPU",
        allow_module_level=True,
    )

# The package re-exports functions under the module names, so fetch the modules themselves.
rmsnorm = importlib.import_module("megasci.ops.rmsnorm")
swiglu = importlib.import_module("megasci.ops.swiglu")
rotary = importlib.import_module("megasci.ops.rotary")
loss = importlib.import_module("megasci.ops.loss")
DEVICE = "cpu" if tk.INTERPRETED else "cuda"
# Largest error allowed, relative to the largest reference value: the kernels round once from float32,
# the reference rounds at every step, so low precision dtypes differ by a few units in the last place.
TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def auto_backends():
    yield
    for op in ("rms_norm", "swiglu", "apply_rotary", "cross_entropy_loss"):
        ops.set_backend(op, "auto")


def randn(*shape, dtype=torch.float32, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype).requires_grad_()


def assert_matches(got, want, tol):
    assert got.dtype == want.dtype and got.shape == want.shape
    err = (got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-12)
    assert err <= tol, f"max error {err:.2e} relative to the largest value, allowed {tol:.0e}"


def outputs_and_grads(fn, inputs, dy_seed=99):
    """Output and input gradients of ``fn`` for one fixed upstream gradient."""
    for t in inputs:
        t.grad = None
    y = fn(*inputs)
    dy = randn(*y.shape, dtype=y.dtype, seed=dy_seed).detach()
    y.backward(dy)
    return [y.detach()] + [t.grad for t in inputs]


# ---------------------------------------------------------------- rms_norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 48), (7, 100), (2, 5, 256), (3, 4, 3)])
def test_rms_norm_matches_reference(dtype, shape):
    x = randn(*shape, dtype=dtype, scale=3.0, seed=1)
    w = randn(shape[-1], dtype=dtype, seed=2)
    got = outputs_and_grads(lambda a, b: tk.rms_norm_triton(a, b, 1e-5), [x, w])
    want = outputs_and_grads(lambda a, b: rms_norm_reference(a, b, 1e-5), [x, w])
    for g, r in zip(got, want):
        assert_matches(g, r, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rms_norm_float32_weight_follows_hf_cast_order(dtype):
    """HF keeps float32 weights under mixed precision: the output is float32, the input grad is not."""
    x = randn(16, 100, dtype=dtype, scale=2.0, seed=3)
    w = randn(100, seed=4)
    got = outputs_and_grads(tk.rms_norm_triton, [x, w])
    want = outputs_and_grads(rms_norm_reference, [x, w])
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype and got[2].dtype == torch.float32
    for g, r in zip(got, want):
        assert_matches(g, r, TOL[dtype])


def test_rms_norm_non_contiguous_input_and_expanded_grad():
    """A strided view as input and ``sum()``'s expanded gradient, which the kernels copy first."""
    x, w = randn(6, 200, seed=5), randn(100, seed=6)
    grads = []
    for fn in (tk.rms_norm_triton, rms_norm_reference):
        x.grad = w.grad = None
        fn(x[:, ::2], w).sum().backward()
        grads.append((x.grad, w.grad))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_rms_norm_rejects_unsupported_inputs():
    with pytest.raises(TypeError, match="float64"):
        tk.rms_norm_triton(torch.randn(2, 8, dtype=torch.float64), torch.ones(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="hidden size"):
        tk.rms_norm_triton(torch.randn(2, 8), torch.ones(4))


# ---------------------------------------------------------------- swiglu


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 48), (3, 7, 100), (2, 1100)])
def test_swiglu_matches_reference(dtype, shape):
    gate = randn(*shape, dtype=dtype, scale=3.0, seed=7)
    up = randn(*shape, dtype=dtype, seed=8)
    got = outputs_and_grads(tk.swiglu_triton, [gate, up])
    want = outputs_and_grads(swiglu_reference, [gate, up])
    for g, r in zip(got, want):
        assert_matches(g, r, TOL[dtype])


def test_swiglu_rejects_broadcasting():
    with pytest.raises(ValueError, match="equal shapes"):
        tk.swiglu_triton(torch.randn(2, 8), torch.randn(8))


# ---------------------------------------------------------------- registry


def test_triton_is_not_available_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert "triton" not in ops.available_backends("rms_norm")
    assert "triton" not in ops.available_backends("swiglu")
    assert "triton" not in ops.available_backends("apply_rotary")
    assert "triton" not in ops.available_backends("cross_entropy_loss")
    x = torch.randn(2, 8)
    assert ops.resolve_backend("rms_norm", x, torch.ones(8)) == "reference"
    assert ops.resolve_backend("swiglu", x, x) == "reference"


def fake_cuda(shape, dtype=torch.bfloat16):
    return SimpleNamespace(is_cuda=True, dtype=dtype, shape=torch.Size(shape))


def test_auto_prefers_triton_on_cuda_and_apex_only_as_fallback(monkeypatch):
    x, w = fake_cuda((4, 64)), fake_cuda((64,), torch.float32)
    monkeypatch.setattr(rmsnorm, "_HAS_APEX", True)
    assert ops.resolve_backend("rms_norm", x, w) == "triton"
    assert ops.resolve_backend("rms_norm", x, fake_cuda((32,))) == "apex"
    assert ops.resolve_backend("rms_norm", fake_cuda((2, 8), torch.float64), fake_cuda((8,))) == "apex"
    assert ops.resolve_backend("swiglu", x, x) == "triton"
    assert ops.resolve_backend("swiglu", x, fake_cuda((64,))) == "reference"
    q, cos = fake_cuda((2, 4, 8, 64)), fake_cuda((4, 64))
    cos.requires_grad = False
    assert ops.resolve_backend("apply_rotary", q, q, cos, cos) == "triton"
    assert ops.resolve_backend("cross_entropy_loss", x, fake_cuda((100, 64)), None) == "triton"
    assert ops.resolve_backend("cross_entropy_loss", x, fake_cuda((100, 64), torch.float32), None) == "chunked"
    monkeypatch.setattr(rmsnorm, "_HAS_TRITON", False)
    monkeypatch.setattr(swiglu, "_HAS_TRITON", False)
    monkeypatch.setattr(rotary, "_HAS_TRITON", False)
    monkeypatch.setattr(loss, "_HAS_TRITON", False)
    assert ops.resolve_backend("rms_norm", x, w) == "apex"
    assert ops.resolve_backend("swiglu", x, x) == "reference"
    assert ops.resolve_backend("apply_rotary", q, q, cos, cos) == "reference"
    assert ops.resolve_backend("cross_entropy_loss", x, fake_cuda((100, 64)), None) == "chunked"


def test_forced_triton_backend_runs_the_kernels(monkeypatch):
    for op in ("rms_norm", "swiglu", "apply_rotary", "cross_entropy_loss"):
        entries = dict(registry._registry[op])
        entries["triton"] = registry._Backend(entries["triton"].fn, lambda: True)
        monkeypatch.setitem(registry._registry, op, entries)
        ops.set_backend(op, "triton")
    x, w = randn(3, 5, 48, seed=9), randn(48, seed=10)
    y = ops.swiglu(ops.rms_norm(x, w), x)
    assert y.grad_fn.name().endswith("_SwiGLUFunctionBackward")
    torch.testing.assert_close(y, swiglu_reference(rms_norm_reference(x, w), x), rtol=1e-5, atol=1e-6)
    q, k = randn(2, 3, 4, 8, seed=11), randn(2, 3, 2, 8, seed=12)
    cos, sin = rotary_tables(3, 8, device=DEVICE)
    rq, _ = ops.apply_rotary(q, k, cos, sin)
    assert rq.grad_fn.name().endswith("_RotaryFunctionBackward")
    hidden, weight = randn(6, 8, seed=13), randn(10, 8, seed=14)
    labels = torch.arange(6, device=DEVICE)
    torch.testing.assert_close(
        ops.cross_entropy_loss(hidden, weight, labels, chunk_size=4),
        cross_entropy_reference(hidden, weight, labels),
        rtol=1e-5,
        atol=1e-6,
    )


# ---------------------------------------------------------------- rotary


def ulps_apart(got, want):
    """Largest distance in units in the last place of ``want``'s dtype, at ``want``'s magnitude."""
    mantissa_bits = {torch.bfloat16: 7, torch.float16: 10}[want.dtype]
    w = want.double()
    ulp = torch.exp2(torch.floor(torch.log2(w.abs().clamp_min(2.0**-14))) - mantissa_bits)
    return ((got.double() - w).abs() / ulp).max().item()


def rotary_outputs_and_grads(cos, sin, q, k, fn):
    """Rotated q and k and the input gradients of ``fn`` for fixed upstream gradients."""
    q, k = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    rq, rk = fn(q, k, cos, sin)
    dq, dk = randn(*rq.shape, dtype=rq.dtype, seed=98).detach(), randn(*rk.shape, dtype=rk.dtype, seed=99).detach()
    torch.autograd.backward((rq, rk), (dq, dk))
    return [rq.detach(), rk.detach(), q.grad, k.grad]


def rotary_inputs(dtype, batched_tables, hq=4, hkv=2, s=7, d=16, seed=20):
    """q and k of two samples; with ``batched_tables`` the second sample's positions start at 5."""
    q, k = randn(2, s, hq, d, dtype=dtype, seed=seed), randn(2, s, hkv, d, dtype=dtype, seed=seed + 1)
    if batched_tables:
        cos, sin = rotary_tables(s + 5, d, device=DEVICE, dtype=dtype)
        cos, sin = torch.stack([cos[:s], cos[5:]]), torch.stack([sin[:s], sin[5:]])
    else:
        cos, sin = rotary_tables(s, d, device=DEVICE, dtype=dtype)
    return q, k, cos, sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batched_tables", [False, True])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (3, 1)])
def test_rotary_equals_reference_in_float32_and_float64(dtype, batched_tables, hq, hkv):
    q, k, cos, sin = rotary_inputs(dtype, batched_tables, hq, hkv)
    got = rotary_outputs_and_grads(cos, sin, q, k, tk.apply_rotary_triton)
    want = rotary_outputs_and_grads(cos, sin, q, k, apply_rotary_reference)
    tol = 0.0 if tk.INTERPRETED else 1e-6  # compiled code may fuse a multiply-add
    for g, r in zip(got, want):
        assert g.dtype == r.dtype and g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=tol, atol=tol)


def test_rotary_gradcheck_float64():
    """Any per-sample tables, not only rotations: the backward is the transpose of the forward map."""
    q, k = randn(1, 2, 2, 4, dtype=torch.float64, seed=21), randn(1, 2, 1, 4, dtype=torch.float64, seed=22)
    cos, sin = (randn(1, 2, 4, dtype=torch.float64, seed=seed).detach() for seed in (23, 24))
    assert torch.autograd.gradcheck(lambda a, b: tk.apply_rotary_triton(a, b, cos, sin), (q, k))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batched_tables", [False, True])
def test_rotary_low_precision_within_two_ulp(dtype, batched_tables):
    q, k, cos, sin = rotary_inputs(dtype, batched_tables, s=9, d=32)
    got = rotary_outputs_and_grads(cos, sin, q, k, tk.apply_rotary_triton)
    want = rotary_outputs_and_grads(cos, sin, q, k, apply_rotary_reference)
    for g, r in zip(got, want):
        assert g.dtype == r.dtype == dtype
        assert ulps_apart(g, r) <= 2


def test_rotary_float32_tables_with_bf16_inputs():
    """Mixed dtypes compute in float32, as the reference's type promotion does, and return bf16."""
    q, k, _, _ = rotary_inputs(torch.bfloat16, False)
    cos, sin = rotary_tables(7, 16, device=DEVICE)
    got = rotary_outputs_and_grads(cos, sin, q, k, tk.apply_rotary_triton)
    want = rotary_outputs_and_grads(cos, sin, q, k, apply_rotary_reference)
    for g, r in zip(got, want):
        assert g.dtype == torch.bfloat16 and ulps_apart(g, r) <= 2


def test_rotary_rejects_mismatched_tables():
    q, k, cos, sin = rotary_inputs(torch.float32, False)
    with pytest.raises(ValueError, match="tables"):
        tk.apply_rotary_triton(q, k, cos[:5], sin[:5])


# ---------------------------------------------------------------- fused cross-entropy


def ce_case(dtype, n=24, h=32, v=300, ignore=(2, 9), seed=30):
    hidden, weight = randn(n, h, dtype=dtype, seed=seed), randn(v, h, dtype=dtype, scale=0.5, seed=seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[list(ignore)] = -100
    return hidden, weight, labels.to(DEVICE)


def ce_grads(fn, hidden, weight, labels, **kwargs):
    hidden, weight = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    value = fn(hidden, weight, labels, **kwargs)
    value.backward()
    return value.detach(), hidden.grad, weight.grad


@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
@pytest.mark.parametrize("chunk_size", [7, 64])
def test_fused_cross_entropy_float32_equals_reference(z_loss, chunk_size):
    hidden, weight, labels = ce_case(torch.float32)
    got = ce_grads(cross_entropy_triton, hidden, weight, labels, chunk_size=chunk_size, z_loss=z_loss)
    want = ce_grads(cross_entropy_reference, hidden, weight, labels, z_loss=z_loss)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    assert torch.all(got[1][[2, 9]] == 0)


@pytest.mark.parametrize("z_loss", [0.2])
def test_fused_cross_entropy_gradcheck_float64(z_loss):
    hidden, weight, labels = ce_case(torch.float64, n=7, h=3, v=5, ignore=(2,))
    assert torch.autograd.gradcheck(lambda a, b: cross_entropy_triton(a, b, labels, 3, -100, z_loss), (hidden, weight))


@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
def test_fused_cross_entropy_bf16_no_worse_than_reference(z_loss):
    hidden, weight, labels = ce_case(torch.bfloat16)
    got = ce_grads(cross_entropy_triton, hidden, weight, labels, chunk_size=16, z_loss=z_loss)
    exact = ce_grads(cross_entropy_reference, hidden.double(), weight.double(), labels, z_loss=z_loss)
    reference = ce_grads(cross_entropy_reference, hidden, weight, labels, z_loss=z_loss)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.bfloat16
    torch.testing.assert_close(got[0].double(), exact[0], rtol=1e-3, atol=1e-3)
    for ours, theirs, truth in zip(got[1:], reference[1:], exact[1:]):
        ours_err = (ours.double() - truth).abs().max()
        assert ours_err <= 2 * (theirs.double() - truth).abs().max() + 1e-4


def test_chunk_kernel_writes_the_gradient_in_place():
    logits = randn(5, 70, dtype=torch.bfloat16, scale=3.0, seed=40).detach()
    labels = torch.tensor([3, -100, 69, 0, 12], device=DEVICE)
    expected_logits = logits.float()
    token_loss, scale = torch.empty(5, device=DEVICE), torch.tensor(0.25, device=DEVICE)
    out = tk.cross_entropy_chunk_triton(logits, labels, token_loss, scale, -100, 0.01, True)
    assert out.data_ptr() == logits.data_ptr()
    lse = torch.logsumexp(expected_logits, -1)
    valid = labels != -100
    safe = labels.clamp_min(0)
    want_loss = torch.where(valid, lse - expected_logits.gather(1, safe[:, None])[:, 0] + 0.01 * lse**2, 0.0)
    torch.testing.assert_close(token_loss, want_loss, rtol=1e-6, atol=1e-6)
    want = torch.softmax(expected_logits, -1) * (1 + 0.02 * lse[:, None])
    want[torch.arange(5, device=DEVICE), safe] -= 1
    want = want * (0.25 * valid)[:, None]
    assert ulps_apart(logits[valid], want[valid].bfloat16()) <= 2
    assert torch.all(logits[~valid] == 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA memory statistics and cuBLAS out_dtype need a GPU")
def test_fused_cross_entropy_cuda_memory_and_fp32_weight_grad():
    """bf16 on CUDA: at most one bf16 chunk of logits beyond the gradients, and the weight gradient summed
    in float32 by cuBLAS (equal to the float32 matmul of the same bf16 operands within float32 rounding)."""
    n, v, h, chunk = 4096, 32768, 256, 512
    hidden, weight, labels = ce_case(torch.bfloat16, n=n, h=h, v=v, ignore=())
    hidden, weight = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    weight.main_grad = torch.zeros(v, h, device=DEVICE)
    cross_entropy_triton(hidden, weight, labels, chunk).backward()  # compiles, and sets up cuBLAS workspaces
    hidden.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    cross_entropy_triton(hidden, weight, labels, chunk).backward()
    torch.cuda.synchronize()
    gradients = n * h * 2 * 2 + v * h * 4  # grad_h kept and returned, the float32 weight gradient
    assert torch.cuda.max_memory_allocated() - base <= chunk * v * 2 + gradients + 2**20
    acc = torch.zeros(v, h, device=DEVICE)
    grad, h_chunk = randn(chunk, v, dtype=torch.bfloat16, seed=50).detach(), hidden[:chunk].detach()
    accumulate_matmul(acc, grad.t(), h_chunk)
    torch.testing.assert_close(acc, grad.t().float() @ h_chunk.float(), rtol=1e-5, atol=1e-5)

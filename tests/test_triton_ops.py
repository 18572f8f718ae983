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
    pytest.skip("triton is not installed; the triton backends are not registered as available",
                allow_module_level=True)

pytestmark = pytest.mark.gpu

import megasci.ops as ops  # noqa: E402
from megasci.ops import backends as registry  # noqa: E402
from megasci.ops import triton_kernels as tk  # noqa: E402
from megasci.ops.rmsnorm import rms_norm_reference  # noqa: E402
from megasci.ops.swiglu import swiglu_reference  # noqa: E402

if not tk.INTERPRETED and not torch.cuda.is_available():
    pytest.skip("megasci.ops.triton_kernels was imported before TRITON_INTERPRET=1 was set and there is "
                "no GPU", allow_module_level=True)

# The package re-exports functions under the module names, so fetch the modules themselves.
rmsnorm = importlib.import_module("megasci.ops.rmsnorm")
swiglu = importlib.import_module("megasci.ops.swiglu")
DEVICE = "cpu" if tk.INTERPRETED else "cuda"
# Largest error allowed, relative to the largest reference value: the kernels round once from float32,
# the reference rounds at every step, so low precision dtypes differ by a few units in the last place.
TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def auto_backends():
    yield
    for op in ("rms_norm", "swiglu"):
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
    monkeypatch.setattr(rmsnorm, "_HAS_TRITON", False)
    monkeypatch.setattr(swiglu, "_HAS_TRITON", False)
    assert ops.resolve_backend("rms_norm", x, w) == "apex"
    assert ops.resolve_backend("swiglu", x, x) == "reference"


def test_forced_triton_backend_runs_the_kernels(monkeypatch):
    for op in ("rms_norm", "swiglu"):
        entries = dict(registry._registry[op])
        entries["triton"] = registry._Backend(entries["triton"].fn, lambda: True)
        monkeypatch.setitem(registry._registry, op, entries)
        ops.set_backend(op, "triton")
    x, w = randn(3, 5, 48, seed=9), randn(48, seed=10)
    y = ops.swiglu(ops.rms_norm(x, w), x)
    assert y.grad_fn.name().endswith("_SwiGLUFunctionBackward")
    torch.testing.assert_close(y, swiglu_reference(rms_norm_reference(x, w), x), rtol=1e-5, atol=1e-6)

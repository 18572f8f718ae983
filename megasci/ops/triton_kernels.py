"""Fused Triton kernels for RMSNorm and SwiGLU, forward and backward.

This module imports triton at the top, so the op modules import it lazily: importing megasci must not
pay for (or require) triton, and tests must be able to set ``TRITON_INTERPRET=1`` first. Whether the
kernels run in Triton's CPU interpreter is fixed when this module is imported, because ``triton.jit``
decides it when it wraps each kernel.

The kernels use their own ``_add`` and ``_sigmoid`` instead of ``tl.sum``, ``tl.sigmoid`` and
``tl.zeros``: those are ``@triton.jit`` functions of triton's standard library, wrapped for the GPU
when triton was imported before ``TRITON_INTERPRET=1`` was set (transformers imports triton, so a test
run does that), and the interpreter cannot call them. The generated GPU code is the same.

Loops with a run-time trip count are ``while`` loops over a tensor counter, not ``for ... in range(a, b)``:
the interpreter holds scalars as one-element arrays, and ``range()`` converts its bounds with ``int()``,
which numpy 2 refuses for those (Triton 3.6 under numpy 2.4). Compiled, both are the same scf loop.

Numerics follow the reference paths: RMSNorm takes its statistics in float32, casts the normalised row
back to the input dtype, then multiplies by the weight (transformers' LlamaRMSNorm order); SwiGLU
computes in float32 and stores in the input dtype. Gradients are computed in float32 throughout.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_RMS_NORM_COLUMNS = 65536
_SWIGLU_BLOCK = 1024


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _rms_norm_fwd(X, W, Y, RSTD, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * n_cols + cols, mask=mask, other=0.0)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.reduce(xf * xf, 0, _add) / n_cols + eps)
    h = (xf * rstd).to(x.dtype).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * n_cols + cols, (w * h).to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_norm_bwd(DY, X, W, RSTD, DX, DW_PARTIAL, n_rows, n_cols, rows_per_program, BLOCK: tl.constexpr):
    """Each program takes a contiguous run of rows and writes one float32 partial sum of dweight."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.full((BLOCK,), 0.0, tl.float32)
    row = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row + rows_per_program, n_rows)
    while row < row_end:  # see the module docstring: a `while`, because the interpreter's range() fails
        x = tl.load(X + row * n_cols + cols, mask=mask, other=0.0)
        dy = tl.load(DY + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        h = x.to(tl.float32) * rstd
        dw += dy * h.to(x.dtype).to(tl.float32)
        g = dy * w
        dx = rstd * (g - h * (tl.reduce(g * h, 0, _add) / n_cols))
        tl.store(DX + row * n_cols + cols, dx.to(DX.dtype.element_ty), mask=mask)
        row += 1
    tl.store(DW_PARTIAL + pid.to(tl.int64) * n_cols + cols, dw, mask=mask)


@triton.jit
def _swiglu_fwd(G, U, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, (g * _sigmoid(g) * u).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(DY, G, U, DG, DU, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    sig = _sigmoid(g)
    tl.store(DG + offs, (dy * u * sig * (1.0 + g * (1.0 - sig))).to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + offs, (dy * g * sig).to(DU.dtype.element_ty), mask=mask)


# True when triton.jit wrapped the kernels for the CPU interpreter rather than for the GPU.
INTERPRETED = not isinstance(_rms_norm_fwd, triton.runtime.JITFunction)


def _check_device(*tensors: torch.Tensor) -> None:
    if not INTERPRETED and not all(t.is_cuda for t in tensors):
        raise RuntimeError("Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set before "
                           "megasci.ops.triton_kernels is first imported")


def _check_dtypes(op: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{op}: triton backend supports {SUPPORTED_DTYPES}, got {t.dtype}")


def _num_warps(block: int) -> int:
    return min(max(block // 256, 1), 16)


def _num_programs(x: torch.Tensor, n_rows: int) -> int:
    """Enough programs to fill the GPU, few enough that the partial dweight sums stay small."""
    slots = torch.cuda.get_device_properties(x.device).multi_processor_count * 4 if x.is_cuda else 4
    return max(1, min(n_rows, slots))


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        n_cols = x.shape[-1]
        x2 = x.reshape(-1, n_cols).contiguous()
        w = weight.contiguous()
        n_rows = x2.shape[0]
        block = triton.next_power_of_2(n_cols)
        y = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        if n_rows:
            _rms_norm_fwd[(n_rows,)](x2, w, y, rstd, n_cols, eps, BLOCK=block, num_warps=_num_warps(block))
        ctx.save_for_backward(x2, w, rstd)
        ctx.x_shape = x.shape
        return y.view(*x.shape[:-1], n_cols)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, w, rstd = ctx.saved_tensors
        n_rows, n_cols = x2.shape
        dy2 = dy.reshape(-1, n_cols).contiguous()
        block = triton.next_power_of_2(n_cols)
        programs = _num_programs(x2, n_rows)
        rows_per_program = triton.cdiv(n_rows, programs)
        dx = torch.empty_like(x2)
        partial = torch.zeros(programs, n_cols, dtype=torch.float32, device=x2.device)
        if n_rows:
            _rms_norm_bwd[(programs,)](dy2, x2, w, rstd, dx, partial, n_rows, n_cols, rows_per_program,
                                       BLOCK=block, num_warps=_num_warps(block))
        dw = partial.sum(0).to(w.dtype)
        return dx.view(ctx.x_shape), dw, None


class _SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        g, u = gate.contiguous(), up.contiguous()
        y = torch.empty_like(g)
        n = g.numel()
        if n:
            _swiglu_fwd[(triton.cdiv(n, _SWIGLU_BLOCK),)](g, u, y, n, BLOCK=_SWIGLU_BLOCK)
        ctx.save_for_backward(g, u)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        g, u = ctx.saved_tensors
        dy = dy.contiguous()
        dg, du = torch.empty_like(g), torch.empty_like(u)
        n = g.numel()
        if n:
            _swiglu_bwd[(triton.cdiv(n, _SWIGLU_BLOCK),)](dy, g, u, dg, du, n, BLOCK=_SWIGLU_BLOCK)
        return dg, du


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension; output dtype is ``promote_types(x.dtype, weight.dtype)``."""
    _check_device(x, weight)
    _check_dtypes("rms_norm", x, weight)
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"rms_norm: weight shape {tuple(weight.shape)} does not match "
                         f"hidden size {x.shape[-1]}")
    if x.shape[-1] > MAX_RMS_NORM_COLUMNS:
        raise ValueError(f"rms_norm: triton kernel holds one row in registers, at most "
                         f"{MAX_RMS_NORM_COLUMNS} columns; got {x.shape[-1]}")
    return _RMSNormFunction.apply(x, weight, eps)


def swiglu_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for tensors of equal shape and dtype (no broadcasting)."""
    _check_device(gate, up)
    _check_dtypes("swiglu", gate, up)
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"swiglu: triton backend needs equal shapes and dtypes; got {tuple(gate.shape)} "
                         f"{gate.dtype} and {tuple(up.shape)} {up.dtype}")
    return _SwiGLUFunction.apply(gate, up)

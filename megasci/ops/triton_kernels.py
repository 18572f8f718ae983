"""Fused Triton kernels: RMSNorm and SwiGLU (forward and backward), the cross-entropy chunk, rotary embeddings.

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

from .backends import TRITON_DTYPES as SUPPORTED_DTYPES

MAX_RMS_NORM_COLUMNS = 65536
_SWIGLU_BLOCK = 1024


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _round_to(x, CDT: tl.constexpr):
    """``x`` (float32 or float64) rounded to the nearest CDT value, ties to even, as PyTorch rounds. For
    bfloat16 this is done on the bits: the interpreter's float32-to-bfloat16 cast truncates."""
    y = x
    if CDT == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        y = bits.to(tl.float32, bitcast=True)
    if CDT == tl.float16:
        y = x.to(tl.float16).to(tl.float32)
    return y


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


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit
def _cross_entropy_chunk(
    LOGITS,
    stride,
    LABELS,
    TOKEN_LOSS,
    SCALE,
    n_cols,
    ignore_index,
    z_loss,
    WRITE_GRAD: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One row: its log-sum-exp in one online pass, then its gradient written over the logits in a second."""
    row = tl.program_id(0).to(tl.int64)
    ptr = LOGITS + row * stride
    label = tl.load(LABELS + row)
    valid = label != ignore_index
    safe_label = tl.where(valid, label, 0)
    cols = tl.arange(0, BLOCK)
    m = tl.load(ptr).to(ACC)  # any element is a valid start for the running maximum
    d = m * 0.0
    start = tl.program_id(0) * 0
    while start < n_cols:
        offs = start + cols
        x = tl.load(ptr + offs, mask=offs < n_cols, other=float("-inf")).to(ACC)
        m_new = tl.maximum(m, tl.reduce(x, 0, _max))
        d = d * tl.exp(m - m_new) + tl.reduce(tl.exp(x - m_new), 0, _add)
        m = m_new
        start += BLOCK
    lse = m + tl.log(d)
    target = tl.load(ptr + safe_label).to(ACC)
    tl.store(TOKEN_LOSS + row, tl.where(valid, lse - target + z_loss * lse * lse, 0.0))
    if WRITE_GRAD:
        scale = tl.where(valid, tl.load(SCALE).to(ACC), 0.0)
        softmax_scale = scale * (1.0 + 2.0 * z_loss * lse)
        start = tl.program_id(0) * 0
        while start < n_cols:
            offs = start + cols
            mask = offs < n_cols
            x = tl.load(ptr + offs, mask=mask, other=0.0).to(ACC)
            g = tl.exp(x - lse) * softmax_scale
            g = tl.where(offs == safe_label, g - scale, g)
            tl.store(ptr + offs, _round_to(g, LOGITS.dtype.element_ty).to(LOGITS.dtype.element_ty), mask=mask)
            start += BLOCK


@triton.jit
def _rotate_heads(
    X,
    Y,
    n_heads,
    heads,
    d,
    mask,
    c1,
    c2,
    s1,
    s2,
    HALF: tl.constexpr,
    BACKWARD: tl.constexpr,
    CDT: tl.constexpr,
    ACC: tl.constexpr,
):
    """Rotate one token's heads [n_heads, 2 * HALF]; every product and sum is rounded to CDT, the dtype
    the reference computes in, so the results are the reference's."""
    offs = heads[:, None] * (2 * HALF) + d[None, :]
    x1 = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
    x2 = tl.load(X + offs + HALF, mask=mask, other=0.0).to(ACC)
    if BACKWARD:  # the transpose of the rotation: the sines change sign and halves
        y1 = _round_to(_round_to(x1 * c1, CDT) + _round_to(x2 * s2, CDT), CDT)
        y2 = _round_to(_round_to(x2 * c2, CDT) - _round_to(x1 * s1, CDT), CDT)
    else:
        y1 = _round_to(_round_to(x1 * c1, CDT) - _round_to(x2 * s1, CDT), CDT)
        y2 = _round_to(_round_to(x2 * c2, CDT) + _round_to(x1 * s2, CDT), CDT)
    tl.store(Y + offs, _round_to(y1, Y.dtype.element_ty).to(Y.dtype.element_ty), mask=mask)
    tl.store(Y + offs + HALF, _round_to(y2, Y.dtype.element_ty).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rotary(
    Q,
    K,
    COS,
    SIN,
    QO,
    KO,
    seq_len,
    table_batch_stride,
    n_q_heads,
    n_k_heads,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BACKWARD: tl.constexpr,
    CDT: tl.constexpr,
    ACC: tl.constexpr,
):
    """One program per token: its cos/sin row is read once and applied to all its q and k heads."""
    token = tl.program_id(0).to(tl.int64)
    table = (token // seq_len) * table_batch_stride + (token % seq_len) * (2 * HALF)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HALF
    c1 = tl.load(COS + table + d, mask=d_mask, other=0.0).to(ACC)[None, :]
    c2 = tl.load(COS + table + HALF + d, mask=d_mask, other=0.0).to(ACC)[None, :]
    s1 = tl.load(SIN + table + d, mask=d_mask, other=0.0).to(ACC)[None, :]
    s2 = tl.load(SIN + table + HALF + d, mask=d_mask, other=0.0).to(ACC)[None, :]
    heads = tl.arange(0, BLOCK_H)
    q_mask = (heads[:, None] < n_q_heads) & d_mask[None, :]
    k_mask = (heads[:, None] < n_k_heads) & d_mask[None, :]
    _rotate_heads(
        Q + token * n_q_heads * (2 * HALF),
        QO + token * n_q_heads * (2 * HALF),
        n_q_heads,
        heads,
        d,
        q_mask,
        c1,
        c2,
        s1,
        s2,
        HALF,
        BACKWARD,
        CDT,
        ACC,
    )
    _rotate_heads(
        K + token * n_k_heads * (2 * HALF),
        KO + token * n_k_heads * (2 * HALF),
        n_k_heads,
        heads,
        d,
        k_mask,
        c1,
        c2,
        s1,
        s2,
        HALF,
        BACKWARD,
        CDT,
        ACC,
    )


# True when triton.jit wrapped the kernels for the CPU interpreter rather than for the GPU.
INTERPRETED = not isinstance(_rms_norm_fwd, triton.runtime.JITFunction)


def _check_device(*tensors: torch.Tensor) -> None:
    if not INTERPRETED and not all(t.is_cuda for t in tensors):
        raise RuntimeError(
            "Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set before "
            "megasci.ops.triton_kernels is first imported"
        )


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
            _rms_norm_bwd[(programs,)](
                dy2,
                x2,
                w,
                rstd,
                dx,
                partial,
                n_rows,
                n_cols,
                rows_per_program,
                BLOCK=block,
                num_warps=_num_warps(block),
            )
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
        raise ValueError(f"rms_norm: weight shape {tuple(weight.shape)} does not match hidden size {x.shape[-1]}")
    if x.shape[-1] > MAX_RMS_NORM_COLUMNS:
        raise ValueError(
            f"rms_norm: triton kernel holds one row in registers, at most "
            f"{MAX_RMS_NORM_COLUMNS} columns; got {x.shape[-1]}"
        )
    return _RMSNormFunction.apply(x, weight, eps)


def swiglu_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for tensors of equal shape and dtype (no broadcasting)."""
    _check_device(gate, up)
    _check_dtypes("swiglu", gate, up)
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(
            f"swiglu: triton backend needs equal shapes and dtypes; got {tuple(gate.shape)} "
            f"{gate.dtype} and {tuple(up.shape)} {up.dtype}"
        )
    return _SwiGLUFunction.apply(gate, up)


_CROSS_ENTROPY_DTYPES = SUPPORTED_DTYPES + (torch.float64,)
_CROSS_ENTROPY_MAX_BLOCK = 8192


def cross_entropy_chunk_triton(
    logits: torch.Tensor,
    labels: torch.Tensor,
    token_loss: torch.Tensor,
    scale: torch.Tensor,
    ignore_index: int,
    z_loss: float,
    write_grad: bool,
) -> torch.Tensor:
    """Fills ``token_loss`` [N] (``lse - logit[label] + z_loss * lse**2``, 0 where ignored) and, when
    ``write_grad``, overwrites ``logits`` [N, V] with the gradient of ``scale * sum(token_loss)``
    (``scale`` a 0-dim tensor, read on the device, so nothing waits for the host); returns ``logits``.
    The math runs in float32 (float64 for float64 logits); the gradient is stored in the logits' dtype."""
    _check_device(logits, labels, token_loss, scale)
    if logits.dtype not in _CROSS_ENTROPY_DTYPES:
        raise TypeError(f"cross_entropy: triton kernel supports {_CROSS_ENTROPY_DTYPES}, got {logits.dtype}")
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError("cross_entropy: logits must be a row-major [N, V] matrix")
    n_rows, n_cols = logits.shape
    acc = tl.float64 if logits.dtype == torch.float64 else tl.float32
    block = min(triton.next_power_of_2(n_cols), _CROSS_ENTROPY_MAX_BLOCK)
    if n_rows:
        _cross_entropy_chunk[(n_rows,)](
            logits,
            logits.stride(0),
            labels.contiguous(),
            token_loss,
            scale,
            n_cols,
            ignore_index,
            float(z_loss),
            WRITE_GRAD=write_grad,
            ACC=acc,
            BLOCK=block,
            num_warps=_num_warps(block),
        )
    return logits


_ROTARY_DTYPES = SUPPORTED_DTYPES + (torch.float64,)
_TL_DTYPES = {
    torch.float32: tl.float32,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
    torch.float64: tl.float64,
}


def _launch_rotary(q, k, cos, sin, backward: bool):
    batch, seq_len, n_q_heads, head_dim = q.shape
    qo, ko = torch.empty_like(q), torch.empty_like(k)
    # The reference's forward rounds each term to the promoted dtype of inputs and tables; its autograd
    # rounds each term's gradient to the input's dtype.
    promoted = torch.promote_types(q.dtype, cos.dtype)
    compute = q.dtype if backward else promoted
    acc = tl.float64 if promoted == torch.float64 else tl.float32
    half = head_dim // 2
    block_h = triton.next_power_of_2(max(n_q_heads, k.shape[2]))
    block_d = triton.next_power_of_2(half)
    table_batch_stride = seq_len * head_dim if cos.dim() == 3 else 0
    if q.numel():
        _rotary[(batch * seq_len,)](
            q,
            k,
            cos,
            sin,
            qo,
            ko,
            seq_len,
            table_batch_stride,
            n_q_heads,
            k.shape[2],
            HALF=half,
            BLOCK_H=block_h,
            BLOCK_D=block_d,
            BACKWARD=backward,
            CDT=_TL_DTYPES[compute],
            ACC=acc,
            num_warps=_num_warps(block_h * block_d),
        )
    return qo, ko


class _RotaryFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin):
        q, k, cos, sin = q.contiguous(), k.contiguous(), cos.contiguous(), sin.contiguous()
        ctx.save_for_backward(cos, sin)
        return _launch_rotary(q, k, cos, sin, backward=False)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        dq, dk = _launch_rotary(dq.contiguous(), dk.contiguous(), cos, sin, backward=True)
        return dq, dk, None, None


def apply_rotary_triton(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotary embedding of q [B, S, Hq, D] and k [B, S, Hkv, D] in one launch (forward and backward), with
    cos/sin [S, D] or [B, S, D]; the rounding of ``rotary.apply_rotary_reference``. The tables get no
    gradient."""
    _check_device(q, k, cos, sin)
    for t in (q, k, cos, sin):
        if t.dtype not in _ROTARY_DTYPES:
            raise TypeError(f"apply_rotary: triton kernel supports {_ROTARY_DTYPES}, got {t.dtype}")
    if q.dtype != k.dtype or q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"apply_rotary: q and k must be [B, S, H, D] of one dtype with equal B, S, D; got "
            f"{tuple(q.shape)} {q.dtype} and {tuple(k.shape)} {k.dtype}"
        )
    if cos.shape[-2:] != (q.shape[1], q.shape[3]) or (cos.dim() == 3 and cos.shape[0] != q.shape[0]):
        raise ValueError(f"apply_rotary: tables {tuple(cos.shape)} do not match q {tuple(q.shape)}")
    return _RotaryFunction.apply(q, k, cos, sin)

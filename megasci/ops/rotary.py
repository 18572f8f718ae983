"""Rotary position embeddings in LLaMA's rotate-half convention, matching transformers.

HF pairs dimension i with i + D/2 (not adjacent dimensions as in the RoPE paper); checkpoints converted
to or from HF only line up under the same pairing. Tables are computed in float32 and cast at the end,
as ``LlamaRotaryEmbedding`` does, so low-precision tables equal HF's bit for bit.

Backends of ``apply_rotary``: ``reference`` (plain PyTorch, everywhere; about ten elementwise kernels
each way) and ``triton`` (one kernel for q and k together, forward and backward, with the reference's
rounding: on CUDA when triton is installed).
"""

from __future__ import annotations

import torch

from .backends import TRITON_DTYPES, dispatch, module_available, register_backend, register_op

_HAS_TRITON = module_available("triton")


def rotary_tables(seq_len: int, head_dim: int, theta: float = 10000.0, device=None,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each [seq_len, head_dim], for positions 0..seq_len-1."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))
    positions = torch.arange(seq_len, device=device).float()
    freqs = positions[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_reference(q, k, cos, sin):
    cos = cos[:, None, :] if cos.dim() == 2 else cos[:, :, None, :]
    sin = sin[:, None, :] if sin.dim() == 2 else sin[:, :, None, :]
    q_out = (q * cos + _rotate_half(q) * sin).to(q.dtype)
    k_out = (k * cos + _rotate_half(k) * sin).to(k.dtype)
    return q_out, k_out


def apply_rotary_triton(q, k, cos, sin):
    """The fused kernel; triton is imported on first use, not with megasci."""
    from .triton_kernels import apply_rotary_triton as fn

    return fn(q, k, cos, sin)


def _triton_available() -> bool:
    """Triton kernels need a GPU; the CPU interpreter is for tests, which call the backend directly."""
    return _HAS_TRITON and torch.cuda.is_available()


def _auto(q, k, cos, sin) -> str:
    if (_HAS_TRITON and q.is_cuda and q.dtype == k.dtype and q.dtype in TRITON_DTYPES
            and cos.dtype in TRITON_DTYPES and not (cos.requires_grad or sin.requires_grad)):
        return "triton"
    return "reference"


register_op("apply_rotary", _auto)
register_backend("apply_rotary", "reference", apply_rotary_reference)
register_backend("apply_rotary", "triton", apply_rotary_triton, _triton_available)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate q [B, S, Hq, D] and k [B, S, Hkv, D] by position.

    ``cos``/``sin`` are [S, D] (from :func:`rotary_tables`, shared by the batch) or [B, S, D] (per-sample
    positions, e.g. packed documents). The products are formed in the promoted dtype of the inputs and
    tables and the results returned in q's and k's dtypes.
    """
    if cos.shape != sin.shape or cos.dim() not in (2, 3):
        raise ValueError(f"cos and sin must both be [S, D] or [B, S, D]; got {tuple(cos.shape)}, {tuple(sin.shape)}")
    return dispatch("apply_rotary", q, k, cos, sin)

"""Scaled dot-product attention over [batch, seq, heads, head_dim] tensors, with grouped-query heads.

The [B, S, H, D] layout is what the QKV projection produces and what flash-attn takes, so the model
never transposes. Backends:

- ``flash``: ``flash_attn.flash_attn_func`` (CUDA, fp16/bf16 only; handles GQA itself).
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``, which picks its own fused kernel.
- ``reference``: the explicit softmax(QK^T * scale + causal mask) V, in at least float32.

Causal masking in ``attention`` needs equal query and key lengths: for unequal lengths flash-attn aligns
the mask to the bottom right and SDPA to the top left, and training never needs either. Decoding after a
KV cache does: ``cached_attention`` gives queries at the end of a longer key sequence the causal mask
aligned to the bottom right.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .backends import dispatch, module_available, register_backend, register_op

_HAS_FLASH = module_available("flash_attn")
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"expected q [B,S,Hq,D] and k, v [B,S,Hkv,D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"batch or head_dim mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")
    if causal and q.shape[1] != k.shape[1]:
        raise ValueError(f"causal attention needs equal query and key lengths; got {q.shape[1]}, {k.shape[1]}")


def attention_reference(q, k, v, causal: bool = True, softmax_scale: float | None = None) -> torch.Tensor:
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    compute = torch.promote_types(q.dtype, torch.float32)
    groups = q.shape[2] // k.shape[2]
    qt = q.transpose(1, 2).to(compute)
    kt = k.transpose(1, 2).to(compute).repeat_interleave(groups, dim=1)
    vt = v.transpose(1, 2).to(compute).repeat_interleave(groups, dim=1)
    scores = qt @ kt.transpose(-1, -2) * scale
    if causal:
        s = q.shape[1]
        mask = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    out = scores.softmax(dim=-1) @ vt
    return out.transpose(1, 2).to(q.dtype)


def attention_sdpa(q, k, v, causal: bool = True, softmax_scale: float | None = None) -> torch.Tensor:
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    groups = q.shape[2] // k.shape[2]
    kwargs = {}
    if groups > 1:
        if _SDPA_HAS_GQA:
            kwargs["enable_gqa"] = True
        else:
            kt = kt.repeat_interleave(groups, dim=1)
            vt = vt.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=softmax_scale, **kwargs)
    return out.transpose(1, 2)


def attention_flash(q, k, v, causal: bool = True, softmax_scale: float | None = None) -> torch.Tensor:
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=softmax_scale, causal=causal)


def _auto(q, k, v, causal: bool = True, softmax_scale: float | None = None) -> str:
    if _HAS_FLASH and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return "flash"
    return "sdpa"


register_op("attention", _auto)
register_backend("attention", "reference", attention_reference)
register_backend("attention", "sdpa", attention_sdpa)
register_backend("attention", "flash", attention_flash, lambda: _HAS_FLASH)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
              softmax_scale: float | None = None) -> torch.Tensor:
    """q [B, S, Hq, D], k/v [B, S, Hkv, D] with Hq a multiple of Hkv -> [B, S, Hq, D].

    ``softmax_scale`` defaults to 1/sqrt(D).
    """
    _check(q, k, v, causal)
    return dispatch("attention", q, k, v, causal, softmax_scale)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
    """Queries at positions start..start+S-1 over keys and values at 0..start+S-1 -> [B, S, Hq, D].

    Query i sees keys up to start + i: the causal mask aligned to the bottom right.
    """
    if start == 0:  # a prefill: the same square causal attention as training
        return attention(q, k, v, causal=True)
    if q.shape[1] == 1:  # one new token sees every position before it, and itself
        return attention(q, k, v, causal=False)
    _check(q, k, v, causal=False)
    mask = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool, device=q.device).tril(start)
    groups = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return y.transpose(1, 2)

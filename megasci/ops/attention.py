"""Scaled dot-product attention over [batch, seq, heads, head_dim] tensors, with grouped-query heads.

The [B, S, H, D] layout is what the QKV projection produces and what flash-attn takes, so the model
never transposes. Backends:

- ``flash``: ``flash_attn.flash_attn_func`` (CUDA, fp16/bf16 only; handles GQA itself), and
  ``flash_attn_varlen_func`` over the documents for packed samples. Chosen only after the package
  imports and a tiny forward runs: a wheel built against another torch imports, then crashes on the
  first call, so a failed probe means SDPA with one warning.
- ``flex``: FlexAttention with a block-causal ``BlockMask`` (torch >= 2.5), for packed samples only.
  Compiled on CUDA; on CPU torch runs it eagerly and forward only, so it is never chosen there.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``, which picks its own fused kernel;
  for packed samples, one call per document (variable-length attention by a loop over the documents).
- ``reference``: the explicit softmax(QK^T * scale + mask) V, in at least float32.

**Document masking.** ``segment_ids`` [B, S] (non-decreasing per sample, one id per packed document)
makes the mask block-causal: a query sees the keys at or before it *of its own document*, so
documents packed into one sample never see each other. Without it every path is plain causal. Only the
``reference`` path builds the dense [B, 1, S, S] mask (``document_mask``); the others keep memory linear in
S: flash-attn's and SDPA's variable-length attention over the documents (SDPA's fused kernels keep a
causal document's memory linear in its length too, on CPU as on GPU), FlexAttention's block mask (one
entry per 128 x 128 tile).

Causal masking in ``attention`` needs equal query and key lengths: for unequal lengths flash-attn aligns
the mask to the bottom right and SDPA to the top left, and training never needs either. Decoding after a
KV cache does: ``cached_attention`` gives queries at the end of a longer key sequence the causal mask
aligned to the bottom right.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from .backends import dispatch, module_available, register_backend, register_op

_TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
_SDPA_HAS_GQA = _TORCH_VERSION >= (2, 5)
_HAS_FLEX = _TORCH_VERSION >= (2, 5) and module_available("torch.nn.attention.flex_attention")


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(
            f"expected q [B,S,Hq,D] and k, v [B,S,Hkv,D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"batch or head_dim mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")
    if causal and q.shape[1] != k.shape[1]:
        raise ValueError(f"causal attention needs equal query and key lengths; got {q.shape[1]}, {k.shape[1]}")


def document_mask(segment_ids: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """[B, 1, S, S] boolean, True where query i may see key j: same document, and j <= i when causal."""
    mask = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    if causal:
        s = segment_ids.shape[1]
        mask = mask & torch.ones(s, s, dtype=torch.bool, device=segment_ids.device).tril()
    return mask


def attention_reference(
    q, k, v, causal: bool = True, softmax_scale: float | None = None, segment_ids: torch.Tensor | None = None
) -> torch.Tensor:
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    compute = torch.promote_types(q.dtype, torch.float32)
    groups = q.shape[2] // k.shape[2]
    qt = q.transpose(1, 2).to(compute)
    kt = k.transpose(1, 2).to(compute).repeat_interleave(groups, dim=1)
    vt = v.transpose(1, 2).to(compute).repeat_interleave(groups, dim=1)
    scores = qt @ kt.transpose(-1, -2) * scale
    if segment_ids is not None:
        scores = scores.masked_fill(~document_mask(segment_ids, causal), float("-inf"))
    elif causal:
        s = q.shape[1]
        mask = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    out = scores.softmax(dim=-1) @ vt
    return out.transpose(1, 2).to(q.dtype)


def attention_sdpa(
    q, k, v, causal: bool = True, softmax_scale: float | None = None, segment_ids: torch.Tensor | None = None
) -> torch.Tensor:
    if segment_ids is None:
        return _sdpa(q, k, v, causal, softmax_scale)
    # Packed documents: variable-length attention as a loop, one SDPA call per document over its own rows,
    # so memory follows the documents' lengths, never an [S, S] mask per sample (see the module docstring).
    b, s = segment_ids.shape
    bounds = cu_seqlens(segment_ids)[0].tolist()
    q, k, v = (t.reshape(1, b * s, *t.shape[2:]) for t in (q, k, v))
    documents = [_sdpa(q[:, i:j], k[:, i:j], v[:, i:j], causal, softmax_scale) for i, j in zip(bounds, bounds[1:])]
    return torch.cat(documents, dim=1).reshape(b, s, *q.shape[2:])


def _sdpa(q, k, v, causal: bool, softmax_scale: float | None) -> torch.Tensor:
    """SDPA over [B, S, H, D] tensors, with grouped-query heads."""
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    groups = q.shape[2] // k.shape[2]
    kwargs: dict[str, Any] = {}  # Any: mypy would match a bool value against every sdpa parameter
    if groups > 1:
        if _SDPA_HAS_GQA:
            kwargs["enable_gqa"] = True
        else:
            kt = kt.repeat_interleave(groups, dim=1)
            vt = vt.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=softmax_scale, **kwargs)
    return out.transpose(1, 2)


@functools.cache
def flash_usable() -> bool:
    """flash-attn imports and runs a tiny forward on this GPU; otherwise warns once and says False."""
    if not module_available("flash_attn") or not torch.cuda.is_available():
        return False
    try:
        from flash_attn import flash_attn_func

        probe = torch.zeros(1, 2, 1, 64, device="cuda", dtype=torch.float16)
        flash_attn_func(probe, probe, probe, causal=True)
        torch.cuda.synchronize()
        return True
    except Exception as error:  # an ABI mismatch surfaces as any kind of error, at import or first call
        warnings.warn(
            f"flash_attn is installed but does not run here ({type(error).__name__}: {error}); using PyTorch SDPA",
            RuntimeWarning,
            stacklevel=2,
        )
        return False


def cu_seqlens(segment_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The documents of a batch flattened in order: int32 offsets [n_documents + 1] and the longest length."""
    b, s = segment_ids.shape
    per_sample = int(segment_ids.max()) + 1  # ids of sample i shifted past those of sample i - 1
    flat = (segment_ids + torch.arange(b, device=segment_ids.device)[:, None] * per_sample).reshape(-1)
    starts = torch.nonzero(torch.diff(flat, prepend=flat[:1] - 1)).reshape(-1)
    offsets = torch.cat([starts, torch.tensor([b * s], device=flat.device)]).to(torch.int32)
    return offsets, int(torch.diff(offsets).max())


def attention_flash(
    q, k, v, causal: bool = True, softmax_scale: float | None = None, segment_ids: torch.Tensor | None = None
) -> torch.Tensor:
    if segment_ids is None:
        from flash_attn import flash_attn_func

        return flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=softmax_scale, causal=causal)
    from flash_attn import flash_attn_varlen_func

    b, s = segment_ids.shape
    offsets, longest = cu_seqlens(segment_ids)
    out = flash_attn_varlen_func(
        q.reshape(b * s, *q.shape[2:]),
        k.reshape(b * s, *k.shape[2:]),
        v.reshape(b * s, *v.shape[2:]),
        offsets,
        offsets,
        longest,
        longest,
        dropout_p=0.0,
        softmax_scale=softmax_scale,
        causal=causal,
    )
    return out.reshape(q.shape)


class _FlexMasks:
    """The BlockMask of the last segment ids seen: every layer of one forward shares it."""

    def __init__(self):
        self.segment_ids, self.causal, self.mask = None, None, None

    def get(self, segment_ids: torch.Tensor, causal: bool):
        from torch.nn.attention.flex_attention import create_block_mask

        if self.segment_ids is not segment_ids or self.causal != causal:

            def same_document(b, h, q_idx, kv_idx):
                allowed = segment_ids[b, q_idx] == segment_ids[b, kv_idx]
                return allowed & (q_idx >= kv_idx) if causal else allowed

            b, s = segment_ids.shape
            self.mask = create_block_mask(same_document, b, None, s, s, device=segment_ids.device)
            self.segment_ids, self.causal = segment_ids, causal
        return self.mask


_flex_masks = _FlexMasks()


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def attention_flex(
    q, k, v, causal: bool = True, softmax_scale: float | None = None, segment_ids: torch.Tensor | None = None
) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    if segment_ids is None:
        b, s = q.shape[:2]
        segment_ids = torch.zeros(b, s, dtype=torch.int64, device=q.device)
    run = _compiled_flex() if q.is_cuda else flex_attention  # CPU: eager, forward only (torch's limit)
    out = run(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        block_mask=_flex_masks.get(segment_ids, causal),
        scale=softmax_scale,
        enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2)


def _auto(q, k, v, causal: bool = True, softmax_scale: float | None = None, segment_ids=None) -> str:
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and flash_usable():
        return "flash"
    if segment_ids is not None and q.is_cuda and _HAS_FLEX:
        return "flex"
    return "sdpa"


register_op("attention", _auto)
register_backend("attention", "reference", attention_reference)
register_backend("attention", "sdpa", attention_sdpa)
register_backend("attention", "flash", attention_flash, flash_usable)
register_backend("attention", "flex", attention_flex, lambda: _HAS_FLEX)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    softmax_scale: float | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, S, Hq, D], k/v [B, S, Hkv, D] with Hq a multiple of Hkv -> [B, S, Hq, D].

    ``softmax_scale`` defaults to 1/sqrt(D). ``segment_ids`` [B, S] makes the mask block-causal over
    packed documents (see the module docstring).
    """
    _check(q, k, v, causal)
    if segment_ids is not None and tuple(segment_ids.shape) != tuple(q.shape[:2]):
        raise ValueError(f"segment_ids must be [B, S] = {tuple(q.shape[:2])}, got {tuple(segment_ids.shape)}")
    return dispatch("attention", q, k, v, causal, softmax_scale, segment_ids)


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

"""Rotary position embeddings in LLaMA's rotate-half convention, matching transformers.

HF pairs dimension i with i + D/2 (not adjacent dimensions as in the RoPE paper); checkpoints converted
to or from HF only line up under the same pairing. Tables are computed in float32 and cast at the end,
as ``LlamaRotaryEmbedding`` does, so low-precision tables equal HF's bit for bit. The frequencies of
every variant (plain, and transformers' ``linear``, ``dynamic``, ``yarn`` and ``llama3`` scalings) are
computed here and nowhere else: ``rotary_tables`` is what every attention path and the cached decode read.

Backends of ``apply_rotary``: ``reference`` (plain PyTorch, everywhere; about ten elementwise kernels
each way) and ``triton`` (one kernel for q and k together, forward and backward, with the reference's
rounding: on CUDA when triton is installed).
"""

from __future__ import annotations

import math

import torch

from .backends import TRITON_DTYPES, dispatch, module_available, register_backend, register_op

_HAS_TRITON = module_available("triton")


# ---- frequencies: the one home of every RoPE variant --------------------------------------------
#
# `scaling` is transformers' `rope_scaling` dict (its `rope_parameters` less `rope_theta`), with its key
# names, so a config can be copied either way. Each variant below is transformers 5's formula
# (modeling_rope_utils.py) written with the same tensor operations in the same order, so the tables are
# equal bit for bit, not merely close: positions reach thousands, where an ulp of frequency is a visible
# angle. The one deliberate addition is `original_max_position_embeddings` for `dynamic`, which
# transformers reads from `max_position_embeddings` instead (the HF export writes it there).
ROPE_SCALING_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {  # type: (required, optional) keys
    "linear": (frozenset({"factor"}), frozenset()),
    "dynamic": (frozenset({"factor", "original_max_position_embeddings"}), frozenset()),
    "yarn": (
        frozenset({"factor", "original_max_position_embeddings"}),
        frozenset({"attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"}),
    ),
    "llama3": (
        frozenset({"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"}),
        frozenset(),
    ),
}
_INT_KEYS, _BOOL_KEYS = {"original_max_position_embeddings"}, {"truncate"}


def check_rope_scaling(scaling: dict | None, max_seq_len: int) -> dict | None:
    """A validated copy of `scaling` (numbers as transformers types them), or None for plain RoPE.

    Wrong keys and values fail here, where transformers would only log a warning at load time, and so
    do the length relations its loader warns about: for `yarn`, `factor` must equal max_seq_len /
    original_max_position_embeddings; for `llama3` and `dynamic` the original length must be shorter.
    """
    if scaling is None or dict(scaling) in ({}, {"rope_type": "default"}):
        return None
    if not isinstance(scaling, dict):
        raise TypeError(f"rope_scaling must be a mapping, got {scaling!r}")
    if "type" in scaling:
        raise ValueError("rope_scaling: name the variant with 'rope_type' (transformers' key), not 'type'")
    kind = scaling.get("rope_type")
    if kind not in ROPE_SCALING_KEYS:
        raise ValueError(f"rope_scaling: rope_type must be one of {sorted(ROPE_SCALING_KEYS)}, got {kind!r}")
    required, optional = ROPE_SCALING_KEYS[kind]
    given = set(scaling) - {"rope_type"}
    if required - given or given - required - optional:
        raise ValueError(
            f"rope_scaling ({kind}): missing {sorted(required - given)}, unknown "
            f"{sorted(given - required - optional)}; it takes {sorted(required)} and optionally "
            f"{sorted(optional)}"
        )
    out: dict = {"rope_type": kind}
    for key in sorted(given):
        value = scaling[key]
        if key in _BOOL_KEYS:
            if not isinstance(value, bool):
                raise ValueError(f"rope_scaling.{key} must be true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or value != value:
            raise ValueError(f"rope_scaling.{key} must be a positive number, got {value!r}")
        elif key in _INT_KEYS:
            if int(value) != value:
                raise ValueError(f"rope_scaling.{key} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        out[key] = value
    if out["factor"] < 1:
        raise ValueError(f"rope_scaling.factor must be at least 1, got {out['factor']}")
    original = out.get("original_max_position_embeddings", max_seq_len)  # linear has none
    if kind == "yarn" and max_seq_len / original != out["factor"]:
        raise ValueError(
            f"rope_scaling (yarn): factor {out['factor']} must equal max_seq_len / "
            f"original_max_position_embeddings = {max_seq_len} / {original} = {max_seq_len / original}"
        )
    if kind in ("llama3", "dynamic") and original >= max_seq_len:
        raise ValueError(
            f"rope_scaling ({kind}): original_max_position_embeddings {original} must be below "
            f"max_seq_len {max_seq_len}"
        )
    if kind == "yarn" and out.get("beta_fast", 32) <= out.get("beta_slow", 1):
        raise ValueError("rope_scaling (yarn): beta_fast must exceed beta_slow")
    if kind == "llama3" and out["high_freq_factor"] <= out["low_freq_factor"]:
        raise ValueError("rope_scaling (llama3): high_freq_factor must exceed low_freq_factor")
    return out


def length_dependent(scaling: dict | None) -> bool:
    """Whether the frequencies depend on the length of the sequence in use (only `dynamic`)."""
    return scaling is not None and scaling["rope_type"] == "dynamic"


def _exponents(dim: int, device) -> torch.Tensor:
    """0, 2, ..., dim-2 over dim, in float32: theta ** this is each pair's wavelength / 2 pi."""
    return torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim


def rope_frequencies(
    head_dim: int, theta: float, scaling: dict | None = None, seq_len: int | None = None, device=None
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim / 2] (float32) and the factor that scales cos and sin.

    `seq_len` is the length in use (the largest position + 1), read only by `dynamic`: like
    transformers, it keeps the unscaled frequencies up to the original length and recomputes the base
    from the current length beyond it. (Transformers' module also remembers the longest length it has
    seen until a call shorter than the original resets it; a call here depends on its own length only,
    which equals a freshly loaded transformers model.)
    """
    dim = head_dim
    if scaling is None:  # plain RoPE
        return 1.0 / (theta ** _exponents(dim, device)), 1.0
    kind, factor = scaling["rope_type"], scaling["factor"]
    if kind == "linear":  # Position Interpolation: positions divided by the factor
        return 1.0 / (theta ** _exponents(dim, device)) / factor, 1.0
    original = scaling["original_max_position_embeddings"]
    if kind == "dynamic":  # NTK-aware: a larger base once the sequence outgrows the original length
        if seq_len is None or seq_len <= original:  # transformers' frequencies from __init__ (Python floats)
            base = theta * ((factor * original / original) - (factor - 1)) ** (dim / (dim - 2))
        else:  # transformers' recomputation in forward, where the length is a tensor (float32 arithmetic)
            length = torch.tensor(seq_len, device=device)
            base = theta * ((factor * length / original) - (factor - 1)) ** (dim / (dim - 2))
        return 1.0 / (base ** _exponents(dim, device)), 1.0
    if kind == "yarn":
        return _yarn(dim, theta, scaling, device)
    return _llama3(dim, theta, scaling, device)


def yarn_get_mscale(scale: float = 1.0, mscale: float = 1.0) -> float:
    """YaRN's attention temperature (eq. 21 of the paper): 0.1 * mscale * ln(scale) + 1."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(dim: int, theta: float, scaling: dict, device) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023): pairs that turn more than beta_fast times over the original length keep
    their frequency, those turning less than beta_slow times are interpolated by the factor, a linear ramp
    between; cos and sin are scaled by the attention factor."""
    factor, original = scaling["factor"], scaling["original_max_position_embeddings"]
    attention_factor = scaling.get("attention_factor")
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = yarn_get_mscale(factor)
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(rotations):  # the pair index that turns `rotations` times over the original length
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = theta ** (torch.arange(0, dim, 2).to(device=device, dtype=torch.float) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp.to(device=device, dtype=torch.float)  # 1: the original frequency, 0: interpolated
    return interpolation * (1 - keep) + extrapolation * keep, attention_factor


def _llama3(dim: int, theta: float, scaling: dict, device) -> tuple[torch.Tensor, float]:
    """Llama 3.1: wavelengths longer than original / low_freq_factor are interpolated by the factor,
    shorter than original / high_freq_factor kept, and those between blended smoothly."""
    factor, original = scaling["factor"], scaling["original_max_position_embeddings"]
    low_freq_factor, high_freq_factor = scaling["low_freq_factor"], scaling["high_freq_factor"]
    inv_freq = 1.0 / (theta ** _exponents(dim, device))
    low_freq_wavelen, high_freq_wavelen = original / low_freq_factor, original / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled), 1.0


def rotary_tables(
    seq_len: int,
    head_dim: int,
    theta: float = 10000.0,
    device=None,
    dtype: torch.dtype = torch.float32,
    scaling: dict | None = None,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables: [seq_len, head_dim] for positions 0..seq_len-1, or [B, S, head_dim] at
    `positions` [B, S] (packed documents), each row cos/sin(position * inv_freq) times the attention
    factor, computed in float32 and cast at the end as `LlamaRotaryEmbedding` does.

    For `dynamic` scaling the length in use is seq_len, or the largest of `positions` + 1 (transformers:
    max(position_ids) + 1), which costs one device sync.
    """
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    length = seq_len
    if positions is not None and length_dependent(scaling):
        length = int(positions.max()) + 1
    inv_freq, attention_factor = rope_frequencies(head_dim, theta, scaling, length, device)
    freqs = torch.arange(seq_len, device=device).float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = (emb.cos() * attention_factor).to(dtype), (emb.sin() * attention_factor).to(dtype)
    if positions is not None:
        cos, sin = cos[positions], sin[positions]
    return cos, sin


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
    if (
        _HAS_TRITON
        and q.is_cuda
        and q.dtype == k.dtype
        and q.dtype in TRITON_DTYPES
        and cos.dtype in TRITON_DTYPES
        and not (cos.requires_grad or sin.requires_grad)
    ):
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

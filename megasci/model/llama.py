"""The LLaMA-style decoder, in one file.

tokens -> embedding -> n_layers x [x + attn(norm(x)); x + mlp(norm(x))] -> norm -> output projection.
Attention is causal with RoPE (rotate-half) and grouped-query heads; the MLP is SwiGLU; norms are
RMSNorm; no linear layer has a bias; input and output embeddings are separate matrices (one matrix
with `tie_embeddings`). The numerics live in `megasci.ops`, so kernels can change without touching
this file. Parameter names map one to
one onto transformers' LlamaForCausalLM (see hf_mapping.py). Training policy (activation
checkpointing, torch.compile) is applied from outside, by `megasci.training.parallelize`; the
weightless attention core and SwiGLU activation are submodules so that it can wrap them.

Packed samples (document masking): `forward` takes each token's position in its document and its
document's id; positions pick the RoPE rows, so every document starts at position 0, and the ids go
to the attention op, which masks block-causally. Without them, positions are 0..S-1 and one causal
mask spans the sample.

For generation, `Transformer.decode` runs new tokens against a `KVCache` of the keys and values of
the tokens before them, so a step computes the projections and MLP of the new tokens only
(see generate.py).
"""

import math

import torch
import torch.nn as nn

from megasci import ops
from megasci.ops.rotary import length_dependent

from .config import ModelConfig
from .dtypes import DTYPES


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return ops.rms_norm(x, self.weight, self.eps)


class AttentionCore(nn.Module):
    """Everything between the QKV and output projections (RoPE, softmax(QK^T)V): no weights, so a
    module of its own that an activation-checkpointing policy can wrap and rerun cheaply."""

    def forward(self, q, k, v, cos, sin, segment_ids=None):
        q, k = ops.apply_rotary(q, k, cos, sin)
        return ops.attention(q, k, v, causal=True, segment_ids=segment_ids)


class SwiGLU(nn.Module):
    """The MLP's activation, silu(gate) * up: a module of its own for the same reason."""

    def forward(self, gate, up):
        return ops.swiglu(gate, up)


class KVCache:
    """Every layer's keys and values (after RoPE) for the positions decoded so far.

    Preallocated for `max_len` positions so that a decode step writes in place and computes only the
    new tokens' keys and values. `length` counts the positions filled; `Transformer.decode` advances it.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        if max_len > cfg.max_seq_len:
            raise ValueError(f"cache of {max_len} positions exceeds max_seq_len {cfg.max_seq_len}")
        shape = (cfg.n_layers, batch_size, max_len, cfg.n_kv_heads, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len, self.length = max_len, 0

    def repeat(self, n: int) -> None:
        """Copy a one-sequence cache for `n` sequences that continue the same prefix (scoring several
        continuations of one context without running the context again)."""
        if self.k.shape[1] != 1:
            raise ValueError(f"repeat needs a cache of one sequence, this one holds {self.k.shape[1]}")
        self.k = self.k.expand(-1, n, -1, -1, -1).contiguous()
        self.v = self.v.expand(-1, n, -1, -1, -1).contiguous()

    def update(self, layer: int, k, v):
        """Store one layer's k, v [B, S, Hkv, D] at the next S positions; return all of its so far."""
        end = self.length + k.shape[1]
        self.k[layer, :, self.length : end] = k
        self.v[layer, :, self.length : end] = v
        return self.k[layer, :, :end], self.v[layer, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx  # which slot of a KVCache is this layer's
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.hidden_size, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        self.core = AttentionCore()

    def forward(self, x, cos, sin, cache: KVCache | None = None, segment_ids=None):
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.n_heads, self.head_dim)
        k = self.wk(x).view(b, s, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(b, s, self.n_kv_heads, self.head_dim)
        if cache is None:
            y = self.core(q, k, v, cos, sin, segment_ids)
        else:
            q, k = ops.apply_rotary(q, k, cos, sin)
            k, v = cache.update(self.layer_idx, k, v)
            y = ops.cached_attention(q, k, v, cache.length)
        return self.wo(y.reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size, bias=False)
        self.up = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size, bias=False)
        self.down = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=False)
        self.act = SwiGLU()

    def forward(self, x):
        return self.down(self.act(self.gate(x), self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache: KVCache | None = None, segment_ids=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache=cache, segment_ids=segment_ids)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.output = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        self.init_weights()

    def tie_weights(self):
        """With `cfg.tie_embeddings` the output projection is the embedding matrix itself, as in HF's tied
        models; `build_model` calls it again after `to_empty`, which gives each module a new parameter."""
        if self.cfg.tie_embeddings:
            self.output.weight = self.embed.weight

    @torch.no_grad()
    def init_weights(self):
        """Normal(0, init_std) for the embedding and every matmul weight, including the output
        projection; the two projections that write into the residual stream (attn.wo, mlp.down)
        get init_std / sqrt(2 * n_layers), so the residual's variance stays flat with depth
        (GPT-2, Megatron). Norm gains are 1. On the meta device this is free."""
        std = self.cfg.init_std
        residual_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("attn.wo.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=residual_std)
            else:
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, tokens, labels=None, positions=None, segment_ids=None, **loss_options):
        """tokens [B, S] -> logits [B, S, V]; with labels [B, S] (already shifted, -100 = ignore),
        the mean cross-entropy instead, computed in chunks so the full logits never exist
        (`loss_options` go to `ops.cross_entropy_loss`). `positions` and `segment_ids` [B, S]
        describe packed documents (see the module docstring); give both or neither."""
        x = self.hidden_states(tokens, positions, segment_ids)
        if labels is None:
            return self.output(x)
        return ops.cross_entropy_loss(x, self.output.weight, labels, **loss_options)

    def hidden_states(self, tokens, positions=None, segment_ids=None):
        """The final norm's output [B, S, H], which the output projection turns into logits: a caller
        that needs the logits of a long sequence a slice at a time starts here."""
        seq_len = tokens.shape[1]
        if seq_len > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {seq_len} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        if (positions is None) != (segment_ids is None):
            raise ValueError("packed documents need both positions and segment_ids")
        x = self.embed(tokens)
        cos, sin = self.rotary_tables(seq_len, x, positions)  # [S, D], or [B, S, D] from each document's start
        for layer in self.layers:
            x = layer(x, cos, sin, segment_ids=segment_ids)
        return self.norm(x)

    def rotary_tables(self, seq_len: int, x, positions=None):
        """cos, sin for positions 0..seq_len-1 (or at `positions`), by the config's RoPE base and scaling."""
        return ops.rotary_tables(
            seq_len,
            self.cfg.head_dim,
            self.cfg.rope_theta,
            x.device,
            x.dtype,
            scaling=self.cfg.rope_scaling,
            positions=positions,
        )

    def prefix_cache(self, max_len: int, device=None) -> KVCache | None:
        """An empty one-sequence cache whose prefill gives the same keys as a full forward pass over any
        longer sequence; None for dynamic NTK, whose RoPE base depends on the sequence's length."""
        if length_dependent(self.cfg.rope_scaling):
            return None
        return KVCache(self.cfg, 1, max_len, device=device, dtype=self.embed.weight.dtype)

    def decode(self, tokens, cache: KVCache, last_only: bool = False):
        """Logits [B, S, V] for tokens [B, S] at positions cache.length onwards, attending to the
        cached ones before them; the tokens' keys and values are added to the cache. For inference:
        no loss. `last_only` gives [B, 1, V], sparing a long prompt's
        prefill the full [B, S, V] logits."""
        start, seq_len = cache.length, tokens.shape[1]
        if start + seq_len > cache.max_len:
            raise ValueError(f"{seq_len} more tokens after {start} overflow the cache of {cache.max_len} positions")
        x = self.embed(tokens)
        cos, sin = self.rotary_tables(start + seq_len, x)  # a length-dependent RoPE sees start + seq_len
        cos, sin = cos[start:], sin[start:]
        for layer in self.layers:
            x = layer(x, cos, sin, cache=cache)
        cache.length += seq_len
        return self.output(self.norm(x[:, -1:] if last_only else x))


def build_model(cfg: ModelConfig, device="cpu", dtype=None) -> Transformer:
    """Construct on the meta device, then allocate once on `device` and initialise there.

    Meta tensors have shapes but no storage, so the weights are never held twice (a default-init
    float32 copy on the host, then the real one). `device="meta"` returns the model unallocated,
    for counting. `dtype` defaults to `cfg.dtype`; seed with torch.manual_seed beforehand.
    """
    dtype = dtype or DTYPES[cfg.dtype]
    with torch.device("meta"):
        model = Transformer(cfg).to(dtype)
    if torch.device(device).type == "meta":
        return model
    model.to_empty(device=device)
    model.tie_weights()
    model.init_weights()
    return model

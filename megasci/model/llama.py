"""The LLaMA-style decoder, in one file.

tokens -> embedding -> n_layers x [x + attn(norm(x)); x + mlp(norm(x))] -> norm -> output projection.
Attention is causal with RoPE (rotate-half) and grouped-query heads; the MLP is SwiGLU; norms are
RMSNorm; no linear layer has a bias; input and output embeddings are separate matrices. The numerics
live in `megasci.ops`, so kernels can change without touching this file. Parameter names map one to
one onto transformers' LlamaForCausalLM (see hf_mapping.py).
"""

import math

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from megasci import ops

from .config import ModelConfig


def _run(fn, *args, recompute: bool = False):
    """fn(*args); with recompute, fn's internal activations are not kept and backward reruns fn."""
    return checkpoint(fn, *args, use_reentrant=False) if recompute else fn(*args)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return ops.rms_norm(x, self.weight, self.eps)


def _attention_core(q, k, v, cos, sin):
    """Everything between the QKV and output projections: no weights, so cheap to recompute."""
    q, k = ops.apply_rotary(q, k, cos, sin)
    return ops.attention(q, k, v, causal=True)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.hidden_size, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, recompute_core: bool = False):
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.n_heads, self.head_dim)
        k = self.wk(x).view(b, s, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(b, s, self.n_kv_heads, self.head_dim)
        y = _run(_attention_core, q, k, v, cos, sin, recompute=recompute_core)
        return self.wo(y.reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size, bias=False)
        self.up = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size, bias=False)
        self.down = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x, recompute_act: bool = False):
        gate, up = self.gate(x), self.up(x)
        return self.down(_run(ops.swiglu, gate, up, recompute=recompute_act))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, selective: bool = False):
        x = x + self.attn(self.attn_norm(x), cos, sin, recompute_core=selective)
        return x + self.mlp(self.mlp_norm(x), recompute_act=selective)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.checkpointing = cfg.checkpointing  # "none" | "full" | "selective"; may be changed later
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.output = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.init_weights()

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

    def forward(self, tokens, labels=None):
        """tokens [B, S] -> logits [B, S, V]; with labels [B, S] (already shifted, -100 = ignore),
        the mean cross-entropy instead, computed in chunks so the full logits never exist."""
        seq_len = tokens.shape[1]
        if seq_len > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {seq_len} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        x = self.embed(tokens)
        cos, sin = ops.rotary_tables(seq_len, self.cfg.head_dim, self.cfg.rope_theta, x.device, x.dtype)
        selective, full = self.checkpointing == "selective", self.checkpointing == "full"
        for layer in self.layers:
            x = _run(layer, x, cos, sin, selective, recompute=full)
        x = self.norm(x)
        if labels is None:
            return self.output(x)
        return ops.cross_entropy_loss(x, self.output.weight, labels)


def build_model(cfg: ModelConfig, device="cpu", dtype=None) -> Transformer:
    """Construct on the meta device, then allocate once on `device` and initialise there.

    Meta tensors have shapes but no storage, so the weights are never held twice (a default-init
    float32 copy on the host, then the real one). `device="meta"` returns the model unallocated,
    for counting. `dtype` defaults to `cfg.dtype`; seed with torch.manual_seed beforehand.
    """
    dtype = dtype or getattr(torch, cfg.dtype)
    with torch.device("meta"):
        model = Transformer(cfg).to(dtype)
    if torch.device(device).type == "meta":
        return model
    model.to_empty(device=device)
    model.init_weights()
    return model

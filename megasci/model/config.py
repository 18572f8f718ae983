"""Model configuration, presets, and the analytic parameter and FLOP counts.

The counts are computed from the configuration alone, so they can be checked
against a model built on the meta device without allocating it.
"""

from dataclasses import dataclass, field, replace

from megasci.ops import check_rope_scaling


@dataclass(frozen=True)
class ModelConfig:
    """A LLaMA-style decoder: pre-norm RMSNorm, RoPE, SwiGLU, GQA, no biases.

    Only what the model computes lives here; how training runs it (activation checkpointing,
    compile, gradient accumulation) is `train.*` policy applied from outside
    (`megasci.training.parallelize`).

    `rope_scaling` is transformers' dict of that name, with its keys: `{"rope_type": "linear" | "dynamic"
    | "yarn" | "llama3", "factor": ..., ...}` (see `megasci.ops.rotary.ROPE_SCALING_KEYS`), or None for
    plain RoPE at base `rope_theta`. Checkpoints written before it existed load as None.
    """

    vocab_size: int = 102_400
    hidden_size: int = 2048
    n_layers: int = 24
    n_heads: int = 16
    n_kv_heads: int = 16
    kv_channels: int | None = None  # per-head width when not hidden_size / n_heads (HF's head_dim), as in Megatron
    tie_embeddings: bool = False  # the output projection is the input embedding (HF's tie_word_embeddings)
    ffn_hidden_size: int = 5504
    max_seq_len: int = 4096
    rope_theta: float = 10_000.0
    rope_scaling: dict | None = field(default=None, hash=False)
    norm_eps: float = 1e-6
    init_std: float = 0.02
    dtype: str = "bfloat16"
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        if self.kv_channels is None and self.hidden_size % self.n_heads:
            raise ValueError(f"n_heads {self.n_heads} does not divide hidden_size {self.hidden_size}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        object.__setattr__(self, "rope_scaling", check_rope_scaling(self.rope_scaling, self.max_seq_len))

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.n_heads


PRESETS = {
    "tiny": ModelConfig(
        vocab_size=256,
        hidden_size=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=4,
        ffn_hidden_size=160,
        max_seq_len=128,
        dtype="float32",
        name="tiny",
    ),
    "1p36b": ModelConfig(name="1p36b"),
}


def get_config(name: str, **overrides) -> ModelConfig:
    """A preset by name, or a HuggingFace model directory's config.json (megasci/model/hf_import.py, so
    `model.preset` and `train.init_from` can name the same download), with fields replaced by `overrides`."""
    import os

    if name not in PRESETS and os.path.isdir(name):
        from .hf_import import hf_model_config, is_hf_model_dir

        if is_hf_model_dir(name):
            return replace(hf_model_config(name), **overrides)
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def parameter_breakdown(cfg: ModelConfig) -> dict:
    """Exact parameter counts by kind; they sum to the model's `numel()` total."""
    h, q, kv = cfg.hidden_size, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    attn = 2 * h * q + 2 * h * kv  # wq, wo; wk, wv
    mlp = 3 * h * cfg.ffn_hidden_size  # gate, up, down
    norms = 2 * h * cfg.n_layers + h  # two per block plus the final norm
    return {
        "input_embedding": cfg.vocab_size * h,
        "output_embedding": 0 if cfg.tie_embeddings else cfg.vocab_size * h,  # tied: the input embedding's
        "blocks_matmul": cfg.n_layers * (attn + mlp),
        "norms": norms,
    }


def num_parameters(cfg: ModelConfig, embeddings: bool = True) -> int:
    """Total parameters; `embeddings=False` drops both the input and output embedding."""
    b = parameter_breakdown(cfg)
    total = b["blocks_matmul"] + b["norms"]
    return total + b["input_embedding"] + b["output_embedding"] if embeddings else total


def num_matmul_parameters(cfg: ModelConfig) -> int:
    """N_matmul for MFU: every weight used in a matmul, including the output
    projection, excluding the input embedding (a lookup) and the norm gains."""
    b = parameter_breakdown(cfg)
    return b["blocks_matmul"] + cfg.vocab_size * cfg.hidden_size  # the output projection, tied or not


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Training FLOPs per token (forward + backward): 6*N_matmul + 12*L*h*s.

    6*N_matmul is the weight matmuls (2 forward, 4 backward per weight);
    12*L*h*s is QK^T and softmax*V (2*2*h*s per layer forward, times 3),
    with h = n_heads*head_dim, counted over the full square: no causal discount,
    no recomputation, as in the PaLM/Megatron MFU convention.
    """
    return 6 * num_matmul_parameters(cfg) + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len

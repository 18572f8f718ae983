"""Conversion between our state dict and transformers' `LlamaForCausalLM`.

The layouts agree tensor for tensor: our RoPE uses the same rotate_half
convention as HuggingFace, so q/k weights need no permutation, only renaming.
"""

from .config import ModelConfig

_GLOBAL = {
    "embed.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_PER_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}


def _name_map(cfg: ModelConfig) -> dict:
    """Our name -> HF name, for every parameter of a model with `cfg`."""
    names = dict(_GLOBAL)
    if cfg.tie_embeddings:  # HF has no lm_head.weight then; ours is embed.weight itself
        del names["output.weight"]
    for i in range(cfg.n_layers):
        for ours, theirs in _PER_LAYER.items():
            names[f"layers.{i}.{ours}"] = f"model.layers.{i}.{theirs}"
    return names


def _rename(sd: dict, names: dict, direction: str) -> dict:
    missing = [k for k in names if k not in sd]
    extra = [k for k in sd if k not in names]
    if missing or extra:
        raise KeyError(
            f"{direction}: state dict does not match the config; "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    return {names[k]: v for k, v in sd.items()}


def to_hf_state_dict(our_sd: dict, cfg: ModelConfig) -> dict:
    """Our state dict under `LlamaForCausalLM` names (tensors are shared, not copied); a tied model's
    `output.weight` is its `embed.weight` and is left out, as transformers saves a tied model."""
    if cfg.tie_embeddings:
        our_sd = {k: v for k, v in our_sd.items() if k != "output.weight"}
    return _rename(our_sd, _name_map(cfg), "to_hf")


def from_hf_state_dict(hf_sd: dict, cfg: ModelConfig) -> dict:
    """A `LlamaForCausalLM` state dict under our names.

    HF's non-persistent `rotary_emb.inv_freq` is dropped if present; we
    recompute the RoPE tables from `cfg.rope_theta` and `cfg.rope_scaling`.
    """
    hf_sd = {k: v for k, v in hf_sd.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings:  # a file may still hold lm_head.weight; transformers ties it to the embedding
        hf_sd.pop("lm_head.weight", None)
    inverse = {theirs: ours for ours, theirs in _name_map(cfg).items()}
    ours = _rename(hf_sd, inverse, "from_hf")
    if cfg.tie_embeddings:
        ours["output.weight"] = ours["embed.weight"]
    return ours


def hf_config_dict(
    cfg: ModelConfig, bos_token_id: int = 1, eos_token_id: int = 2, pad_token_id: int | None = 3
) -> dict:
    """Keyword arguments for `transformers.LlamaConfig` (and a valid config.json).

    The special-token defaults are our tokenizer's (unk 0, bos 1, eos 2, pad 3). The RoPE keys are
    written for both readers: transformers 5 reads `rope_parameters` (base and scaling in one dict), 4.x
    the flat `rope_theta` and `rope_scaling`, which 5 also takes (before `rope_parameters`), so they hold
    the same values. `max_position_embeddings` is what transformers' variant expects there: our
    `max_seq_len` (for `yarn`, original length x factor, which our config enforces), except for `dynamic`,
    which reads its original length from that field.
    """
    scaling = dict(cfg.rope_scaling or {"rope_type": "default"})
    max_positions = cfg.max_seq_len
    if scaling["rope_type"] == "dynamic":
        max_positions = scaling.pop("original_max_position_embeddings")
    rope = {
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {**scaling, "rope_theta": cfg.rope_theta},
        **({"rope_scaling": scaling} if cfg.rope_scaling else {}),
    }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max_positions,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        **rope,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": cfg.dtype,
    }

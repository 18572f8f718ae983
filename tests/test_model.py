"""The decoder against transformers' LlamaForCausalLM, its counts and initialisation
(activation checkpointing, applied from outside, is tested in test_parallelize.py)."""

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from megasci.model import (
    PRESETS,
    Transformer,
    build_model,
    flops_per_token,
    from_hf_state_dict,
    get_config,
    hf_config_dict,
    num_matmul_parameters,
    num_parameters,
    parameter_breakdown,
    to_hf_state_dict,
)

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
# A larger init than 0.02 so attention is far from uniform and a RoPE or masking mistake moves the
# logits by O(1) (checked below), well above the 1e-5 tolerance.
TINY = replace(PRESETS["tiny"], init_std=0.1)
TINY_GQA = replace(TINY, n_kv_heads=2)


def _tiny(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg, device="cpu", dtype=torch.float32)


def _hf_model(cfg, our_model, attn_implementation="eager"):
    hf_cfg = transformers.LlamaConfig(**hf_config_dict(cfg))
    hf_cfg._attn_implementation = attn_implementation
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf.load_state_dict(to_hf_state_dict(our_model.state_dict(), cfg), strict=True)
    return hf


def _tokens(cfg, batch=2, seq=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)


# --- counts -------------------------------------------------------------------------------------


def test_1p36b_parameter_count_on_meta():
    cfg = PRESETS["1p36b"]
    model = build_model(cfg, device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert total == 1_633_781_760 == num_parameters(cfg)
    b = parameter_breakdown(cfg)
    assert b["input_embedding"] == b["output_embedding"] == 102_400 * 2048 == 209_715_200
    assert num_parameters(cfg, embeddings=False) == 1_214_351_360
    assert model.embed.weight is not model.output.weight  # untied


@pytest.mark.parametrize("cfg", [PRESETS["tiny"], TINY_GQA, get_config("1p36b", n_kv_heads=4)])
def test_num_parameters_matches_module(cfg):
    model = build_model(cfg, device="meta")
    assert sum(p.numel() for p in model.parameters()) == num_parameters(cfg)
    norms = sum(p.numel() for n, p in model.named_parameters() if n.endswith("norm.weight"))
    assert num_matmul_parameters(cfg) == num_parameters(cfg) - norms - model.embed.weight.numel()


def test_flops_per_token_1p36b():
    cfg = PRESETS["1p36b"]
    n_matmul = 24 * (4 * 2048 * 2048 + 3 * 2048 * 5504) + 102_400 * 2048
    assert num_matmul_parameters(cfg) == n_matmul == 1_423_966_208
    for s in (768, 4096):
        assert flops_per_token(cfg, s) == 6 * n_matmul + 12 * 24 * 2048 * s
    assert flops_per_token(cfg, 768) == 8_996_782_080
    assert flops_per_token(cfg, 4096) == 10_959_716_352


def test_model_info_tool():
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "model_info.py")], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    for number in (
        "1,633,781,760",
        "1,214,351,360",
        "209,715,200",
        "1,423,966,208",
        "8,996,782,080",
        "10,959,716,352",
        "1,345,423,360",
    ):
        assert number in out


def test_config_validation():
    with pytest.raises(ValueError):
        replace(PRESETS["tiny"], n_kv_heads=3)
    with pytest.raises(TypeError):  # training policy, not a model field (train.activation_checkpointing)
        replace(PRESETS["tiny"], checkpointing="full")
    with pytest.raises(KeyError):
        get_config("7b")


# --- HuggingFace equivalence --------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [TINY, TINY_GQA], ids=["mha", "gqa"])
@pytest.mark.parametrize("hf_attn", ["eager", "sdpa"])
@pytest.mark.parametrize("our_attn", ["auto", "reference"])
def test_logits_match_hf_llama(cfg, hf_attn, our_attn, attention_backend):
    attention_backend(our_attn)
    model = _tiny(cfg).eval()
    hf = _hf_model(cfg, model, hf_attn)
    tokens = _tokens(cfg)
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert ours.shape == theirs.shape == (2, 64, cfg.vocab_size)
    assert (ours - theirs).abs().max().item() < 1e-5


def test_hf_comparison_is_sensitive():
    """The tolerance above means something: a different RoPE base moves the logits by far more."""
    model = _tiny(TINY).eval()
    hf = _hf_model(replace(TINY, rope_theta=500.0), model)
    tokens = _tokens(TINY)
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max().item() > 1e-2


def test_hf_state_dict_round_trip():
    model = _tiny(TINY_GQA)
    sd = model.state_dict()
    hf_sd = to_hf_state_dict(sd, TINY_GQA)
    assert "lm_head.weight" in hf_sd and "model.layers.1.mlp.down_proj.weight" in hf_sd
    back = from_hf_state_dict(hf_sd, TINY_GQA)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # and from a model that transformers initialised itself
    torch.manual_seed(2)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_dict(TINY_GQA))).eval()
    ours = build_model(TINY_GQA, dtype=torch.float32)
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), TINY_GQA), strict=True)
    tokens = _tokens(TINY_GQA)
    with torch.no_grad():
        assert (ours.eval()(tokens) - hf(tokens).logits).abs().max().item() < 1e-5


def test_hf_mapping_rejects_mismatched_config():
    sd = _tiny(TINY).state_dict()
    with pytest.raises(KeyError):
        to_hf_state_dict(sd, replace(TINY, n_layers=3))


def test_hf_config_dict():
    d = hf_config_dict(PRESETS["1p36b"], bos_token_id=1, eos_token_id=2, pad_token_id=3)
    assert d["tie_word_embeddings"] is False and d["attention_bias"] is False and d["mlp_bias"] is False
    assert d["rope_theta"] == 10_000.0 and d["rms_norm_eps"] == 1e-6
    hf_cfg = transformers.LlamaConfig(**d)
    assert (hf_cfg.hidden_size, hf_cfg.num_hidden_layers, hf_cfg.intermediate_size) == (2048, 24, 5504)
    assert (hf_cfg.num_attention_heads, hf_cfg.num_key_value_heads, hf_cfg.vocab_size) == (16, 16, 102_400)
    assert (hf_cfg.bos_token_id, hf_cfg.eos_token_id, hf_cfg.pad_token_id) == (1, 2, 3)
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(hf_cfg)
    assert sum(p.numel() for p in hf.parameters()) == 1_633_781_760


# --- loss, construction ------------------------------------------------------------------------


def test_loss_equals_cross_entropy_of_logits():
    model = _tiny(TINY_GQA)
    tokens = _tokens(TINY_GQA, seq=33)
    labels = torch.roll(tokens, -1, dims=1)
    labels[:, -1] = -100
    labels[0, :5] = -100
    logits = model(tokens)
    expected = F.cross_entropy(logits.reshape(-1, TINY_GQA.vocab_size), labels.reshape(-1))
    loss = model(tokens, labels)
    assert loss.shape == () and torch.allclose(loss, expected, rtol=1e-6, atol=1e-6)
    g_loss = torch.autograd.grad(loss, model.output.weight)[0]
    g_ref = torch.autograd.grad(
        F.cross_entropy(model(tokens).reshape(-1, TINY_GQA.vocab_size), labels.reshape(-1)), model.output.weight
    )[0]
    assert torch.allclose(g_loss, g_ref, atol=1e-6)


def test_meta_construction_then_materialisation():
    cfg = replace(PRESETS["tiny"], hidden_size=128, n_heads=4, n_kv_heads=2, ffn_hidden_size=320)
    with torch.device("meta"):
        meta = Transformer(cfg)
    assert all(p.is_meta for p in meta.parameters())
    torch.manual_seed(0)
    a = build_model(cfg, device="cpu", dtype=torch.bfloat16)
    assert not any(p.is_meta for p in a.parameters())
    assert all(p.dtype == torch.bfloat16 for p in a.parameters())
    torch.manual_seed(0)
    b = build_model(cfg, device="cpu", dtype=torch.bfloat16)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    logits = a(_tokens(cfg, seq=16))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_sequence_longer_than_context_is_rejected():
    model = _tiny(TINY)
    with pytest.raises(ValueError):
        model(torch.zeros(1, TINY.max_seq_len + 1, dtype=torch.long))


def test_init_std_follows_documented_scheme():
    cfg = replace(
        PRESETS["1p36b"],
        vocab_size=4096,
        hidden_size=512,
        n_layers=8,
        n_heads=8,
        n_kv_heads=4,
        ffn_hidden_size=1376,
        name="mid",
    )
    torch.manual_seed(0)
    model = build_model(cfg, device="cpu", dtype=torch.float32)
    residual_std = 0.02 / math.sqrt(2 * cfg.n_layers)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
            continue
        expected = residual_std if name.endswith(("attn.wo.weight", "mlp.down.weight")) else 0.02
        assert abs(p.mean().item()) < 0.05 * expected, name
        assert abs(p.std().item() / expected - 1) < 0.02, (name, p.std().item(), expected)

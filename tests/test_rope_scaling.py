"""RoPE scaling (`model.rope_scaling`) against transformers' own LlamaForCausalLM and LlamaRotaryEmbedding.

For each of transformers' variants (linear, dynamic, yarn, llama3), with the same config and weights, our
logits equal transformers' at every position up to 4x the original length (float32, 1e-5 of the largest
logit), through each attention backend that runs here, through the cached decode, and for packed
documents; the tables equal transformers' bit for bit. Each variant moves the logits far more than the
tolerance, so none of these comparisons passes by default.
"""

import os
import subprocess
import sys
from dataclasses import asdict, replace

import pytest
import torch

from megasci import ops
from megasci.model import PRESETS, ModelConfig, build_model, hf_config_dict, to_hf_state_dict
from megasci.model.llama import KVCache

transformers = pytest.importorskip("transformers")
from transformers.models.llama import modeling_llama as hf_llama  # noqa: E402

ORIGINAL = 32  # the "training length"; the model runs to 4x that (the tiny preset's max_seq_len, 128)
BASE = replace(PRESETS["tiny"], init_std=0.1, n_kv_heads=2, max_seq_len=4 * ORIGINAL)
SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
    "yarn-options": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": ORIGINAL,
        "beta_fast": 16.0,
        "beta_slow": 2.0,
        "mscale": 1.0,
        "mscale_all_dim": 0.5,
        "truncate": False,
    },
    "yarn-attention-factor": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": ORIGINAL,
        "attention_factor": 1.3,
    },
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": ORIGINAL,
    },
}
RTOL = 1e-5


def _cfg(name):
    return replace(BASE, rope_scaling=SCALINGS[name], rope_theta=10_000.0 if name != "llama3" else 50_000.0)


def _models(cfg, seed=0):
    torch.manual_seed(seed)
    ours = build_model(cfg, dtype=torch.float32).eval()
    hf_cfg = transformers.LlamaConfig(**hf_config_dict(cfg))
    hf_cfg._attn_implementation = "eager"
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), cfg), strict=True)
    return ours, hf


def _tokens(cfg, n, batch=2, seed=1):
    return torch.randint(0, cfg.vocab_size, (batch, n), generator=torch.Generator().manual_seed(seed))


def _assert_equal_logits(ours, theirs):
    assert ours.shape == theirs.shape
    diff = (ours - theirs).abs().max().item()
    assert diff <= RTOL * max(1.0, theirs.abs().max().item()), f"max |diff| {diff:.3g}"


@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_tables_equal_transformers_bit_for_bit(name):
    cfg = _cfg(name)
    hf_cfg = transformers.LlamaConfig(**hf_config_dict(cfg))
    module = hf_llama.LlamaRotaryEmbedding(hf_cfg)
    for n in (ORIGINAL // 2, ORIGINAL, ORIGINAL + 1, 3 * ORIGINAL, 4 * ORIGINAL):  # ascending, see below
        for dtype in (torch.float32, torch.bfloat16):
            cos, sin = ops.rotary_tables(n, cfg.head_dim, cfg.rope_theta, dtype=dtype, scaling=cfg.rope_scaling)
            hf_cos, hf_sin = module(torch.zeros(1, dtype=dtype), torch.arange(n)[None])
            assert torch.equal(cos, hf_cos[0]) and torch.equal(sin, hf_sin[0]), (n, dtype)


BACKENDS = [b for b in ("reference", "sdpa", "flex") if b in ops.available_backends("attention")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_logits_equal_transformers_up_to_4x_the_original_length(name, backend, attention_backend):
    attention_backend(backend)
    cfg = _cfg(name)
    ours, hf = _models(cfg)
    tokens = _tokens(cfg, cfg.max_seq_len)
    with torch.no_grad():
        # dynamic depends on the length in use: each length is a separate forward, ascending, because
        # transformers' module keeps the longest length it has seen (a fresh model's state at each step)
        for n in (ORIGINAL, ORIGINAL + 7, cfg.max_seq_len) if name == "dynamic" else (cfg.max_seq_len,):
            _assert_equal_logits(ours(tokens[:, :n]), hf(tokens[:, :n]).logits)


@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_scaling_changes_the_logits_beyond_the_tolerance(name):
    """The same weights with plain RoPE: past the original length the logits move by O(0.1) or more, so
    the comparisons above would catch a variant computed as plain RoPE."""
    cfg = _cfg(name)
    scaled, _ = _models(cfg)
    plain = build_model(replace(cfg, rope_scaling=None), dtype=torch.float32).eval()
    plain.load_state_dict(scaled.state_dict())
    tokens = _tokens(cfg, cfg.max_seq_len)
    with torch.no_grad():
        assert (scaled(tokens) - plain(tokens))[:, ORIGINAL:].abs().max() > 1e-1


@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_cached_decode_equals_transformers_generation_steps(name):
    """Our KVCache decode against transformers with its own cache, a prefill then one token at a time to
    4x the original length: for dynamic, each step's new keys use the frequencies of the length so far
    while the cached ones keep theirs, in both."""
    cfg = _cfg(name)
    ours, hf = _models(cfg)
    tokens = _tokens(cfg, cfg.max_seq_len, batch=1)
    cache, hf_cache, prefill = KVCache(cfg, 1, cfg.max_seq_len), transformers.DynamicCache(), ORIGINAL - 4
    with torch.no_grad():
        steps = [(0, prefill)] + [(i, i + 1) for i in range(prefill, cfg.max_seq_len)]
        for start, end in steps:
            out = hf(tokens[:, start:end], cache=hf_cache, use_cache=True)
            _assert_equal_logits(ours.decode(tokens[:, start:end], cache), out.logits)


def test_dynamic_decode_differs_from_a_full_forward():
    """Why the cached test above is needed for dynamic: past the original length a cache holds keys
    rotated at the frequencies of shorter lengths, so its logits are not those of a full forward."""
    cfg = _cfg("dynamic")
    ours, _ = _models(cfg)
    tokens = _tokens(cfg, cfg.max_seq_len, batch=1)
    cache = KVCache(cfg, 1, cfg.max_seq_len)
    with torch.no_grad():
        ours.decode(tokens[:, :-1], cache)
        last = ours.decode(tokens[:, -1:], cache)[:, -1]
        assert (last - ours(tokens)[:, -1]).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["linear", "yarn", "llama3"])
def test_packed_documents_equal_each_document_alone(name, attention_backend):
    attention_backend("sdpa")
    cfg = _cfg(name)
    ours, _ = _models(cfg)
    lengths = (70, 9, 49)
    tokens = _tokens(cfg, sum(lengths), batch=1)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    segments = torch.cat([torch.full((n,), d) for d, n in enumerate(lengths)])[None]
    with torch.no_grad():
        packed = ours(tokens, positions=positions, segment_ids=segments)
        start = 0
        for n in lengths:
            _assert_equal_logits(packed[:, start : start + n], ours(tokens[:, start : start + n]))
            start += n


def test_dynamic_packed_uses_the_longest_position_as_transformers_does():
    """transformers scales dynamic RoPE by max(position_ids) + 1: in a packed sample, the longest document
    runs as it does alone (and as transformers runs it), a shorter one past the original length does not."""
    cfg = _cfg("dynamic")
    ours, hf = _models(cfg)
    lengths = (90, 38)
    tokens = _tokens(cfg, sum(lengths), batch=1)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    segments = torch.cat([torch.full((n,), d) for d, n in enumerate(lengths)])[None]
    with torch.no_grad():
        packed = ours(tokens, positions=positions, segment_ids=segments)
        _assert_equal_logits(packed[:, :90], hf(tokens[:, :90]).logits)
        assert (packed[:, 90:] - ours(tokens[:, 90:])).abs().max() > 1e-3


def test_fused_triton_rope_reads_the_same_tables():
    """The model with the Triton RoPE kernel (Triton's CPU interpreter here) gives the reference path's
    logits under yarn, whose tables carry the attention factor."""
    pytest.importorskip("triton")
    code = (
        "import torch; from dataclasses import replace\n"
        "from megasci import ops\nfrom megasci.model import PRESETS, build_model\n"
        f"cfg = replace(PRESETS['tiny'], init_std=0.1, n_kv_heads=2, rope_scaling={SCALINGS['yarn']!r})\n"
        "torch.manual_seed(0); model = build_model(cfg, dtype=torch.float32).eval()\n"
        "tokens = torch.randint(0, cfg.vocab_size, (1, cfg.max_seq_len), generator=torch.Generator().manual_seed(1))\n"
        "with torch.no_grad():\n"
        "    ops.set_backend('apply_rotary', 'reference'); ref = model(tokens)\n"
        "    from megasci.ops.rotary import apply_rotary_triton\n"
        "    ops.register_backend('apply_rotary', 'interpreted', apply_rotary_triton)\n"
        "    ops.set_backend('apply_rotary', 'interpreted'); fused = model(tokens)\n"
        "print((ref - fused).abs().max().item() / ref.abs().max().item())\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.split()[-1]) <= RTOL


# --- the config ---------------------------------------------------------------------------------


def test_config_round_trips_through_a_checkpoint_dict():
    cfg = _cfg("yarn-options")
    assert ModelConfig(**asdict(cfg)) == cfg
    old = asdict(BASE)
    del old["rope_scaling"]  # a checkpoint written before the field existed
    assert ModelConfig(**old).rope_scaling is None
    assert replace(BASE, rope_scaling={"rope_type": "default"}).rope_scaling is None
    assert hash(cfg) == hash(replace(cfg))  # the dict does not make the config unhashable


def test_config_normalises_numbers_as_transformers_types_them():
    cfg = replace(
        BASE,
        rope_scaling={
            "rope_type": "yarn",
            "factor": 4,
            "original_max_position_embeddings": 32.0,
            "attention_factor": 1,
        },
    )
    assert cfg.rope_scaling == {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 32,
        "attention_factor": 1.0,
    }
    assert isinstance(cfg.rope_scaling["factor"], float) and isinstance(cfg.rope_scaling["attention_factor"], float)


@pytest.mark.parametrize(
    "scaling,message",
    [
        ({"type": "linear", "factor": 2.0}, "rope_type"),
        ({"rope_type": "longrope", "factor": 2.0}, "rope_type must be one of"),
        ({"rope_type": "linear"}, "missing \\['factor'\\]"),
        ({"rope_type": "linear", "factor": 2.0, "beta_fast": 3}, "unknown \\['beta_fast'\\]"),
        ({"rope_type": "linear", "factor": 0.5}, "at least 1"),
        ({"rope_type": "linear", "factor": "2"}, "positive number"),
        ({"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32}, "must equal max_seq_len"),
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 1.0}, "beta_fast"),
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "truncate": 1}, "true or false"),
        ({"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 128}, "below max_seq_len"),
        ({"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 31.5}, "integer"),
        (
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 4.0,
                "high_freq_factor": 1.0,
                "original_max_position_embeddings": 32,
            },
            "high_freq_factor",
        ),
    ],
)
def test_config_rejects_what_transformers_would_warn_about(scaling, message):
    with pytest.raises(ValueError, match=message):
        replace(BASE, rope_scaling=scaling)

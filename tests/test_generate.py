"""KV-cached decoding against full recomputation and transformers, the samplers, and tools/generate.py."""

import dataclasses
import math
import os
import runpy
from dataclasses import replace

import pytest
import torch

from megasci.corpus.synthetic import generate_papers
from megasci.model import PRESETS, build_model, hf_config_dict, to_hf_state_dict
from megasci.model.generate import generate, sample_next, top_k_filter, top_p_filter
from megasci.model.llama import KVCache
from megasci.tokenizer import SentencePieceTrainConfig, load_tokenizer, train_sentencepiece
from megasci.training.checkpoint import save_checkpoint

TOOL = os.path.join(os.path.dirname(__file__), "..", "tools", "generate.py")
# As in test_model.py: a large init makes attention far from uniform, so a wrong RoPE offset or mask
# moves the logits by O(1), far above the 1e-5 tolerance used here (float32 on CPU).
TINY = replace(PRESETS["tiny"], init_std=0.1)
TINY_GQA = replace(TINY, n_kv_heads=2)  # 4 query heads share 2 key/value heads
TOL = 1e-5


def _tiny(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg, device="cpu", dtype=torch.float32).eval()


def _tokens(cfg, batch=2, seq=24, seed=1):
    return torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _greedy_by_full_forward(model, tokens, n):
    """Greedy decoding the slow way: the whole sequence through the training forward at every step."""
    for _ in range(n):
        tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens


# --- the cached forward -------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [TINY, TINY_GQA], ids=["mha", "gqa"])
@pytest.mark.parametrize(
    "chunks", [[9] + [1] * 15, [1] * 24, [5, 4, 1, 1, 7, 6], [24]], ids=["prefill+steps", "steps", "chunked", "prefill"]
)
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_cached_logits_equal_full_forward(cfg, chunks, backend, attention_backend):
    """Every position's logits, whether from a prefill, a one-token step or a chunk after a cached
    prefix (the bottom-right causal mask), equal the training forward's over the whole sequence."""
    attention_backend(backend)
    model, tokens = _tiny(cfg), _tokens(cfg)
    cache = KVCache(cfg, batch_size=2, max_len=24)
    with torch.no_grad():
        full = model(tokens)
        pieces, start = [], 0
        for n in chunks:
            pieces.append(model.decode(tokens[:, start : start + n], cache))
            start += n
        cached = torch.cat(pieces, dim=1)
    assert cache.length == 24 and cached.shape == full.shape
    assert (cached - full).abs().max().item() < TOL


def test_cached_comparison_is_sensitive():
    """The tolerance above means something: the same token without its cached prefix is far off."""
    model, tokens = _tiny(TINY_GQA), _tokens(TINY_GQA)
    with torch.no_grad():
        alone = model.decode(tokens[:, 9:10], KVCache(TINY_GQA, 2, 1))
        assert (alone[:, 0] - model(tokens)[:, 9]).abs().max().item() > 1e-2


def test_last_only_and_cache_limits():
    model, tokens = _tiny(TINY), _tokens(TINY)
    with torch.no_grad():
        last = model.decode(tokens, KVCache(TINY, 2, 24), last_only=True)
        assert last.shape == (2, 1, TINY.vocab_size)
        assert (last[:, 0] - model(tokens)[:, -1]).abs().max().item() < TOL
        with pytest.raises(ValueError, match="overflow the cache of 20 positions"):
            model.decode(tokens, KVCache(TINY, 2, 20))
    with pytest.raises(ValueError, match="exceeds max_seq_len 128"):
        KVCache(TINY, 1, 129)


# --- greedy generation --------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [TINY, TINY_GQA], ids=["mha", "gqa"])
def test_greedy_equals_full_recompute(cfg):
    model, prompt = _tiny(cfg), _tokens(cfg, seq=7)
    out = generate(model, prompt, 40, temperature=0)
    with torch.no_grad():
        assert torch.equal(out, _greedy_by_full_forward(model, prompt, 40))
    assert out.shape == (2, 47) and torch.equal(out[:, :7], prompt)


@pytest.mark.parametrize("cfg", [TINY, TINY_GQA], ids=["mha", "gqa"])
def test_greedy_equals_transformers_generate(cfg):
    transformers = pytest.importorskip("transformers")
    model, prompt = _tiny(cfg), _tokens(cfg, seq=10)
    hf_cfg = transformers.LlamaConfig(**hf_config_dict(cfg))
    hf_cfg._attn_implementation = "eager"
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), cfg), strict=True)
    eos = hf_cfg.eos_token_id
    ours = generate(model, prompt, 30, temperature=0, eos_id=eos)
    with torch.no_grad():  # HF pads a finished sequence with pad_token_id; ours with EOS
        theirs = hf.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=30, pad_token_id=eos
        )
    assert torch.equal(ours, theirs)
    assert ours.shape[1] > 30  # most of the 30 steps were compared


def test_prompt_forms_and_errors():
    model = _tiny(TINY)
    one = generate(model, [5, 6, 7], 4, temperature=0)
    assert one.shape == (1, 7) and one[0, :3].tolist() == [5, 6, 7]
    assert torch.equal(generate(model, [[5, 6, 7], [5, 6, 7]], 4, temperature=0), one.expand(2, -1))
    assert torch.equal(generate(model, [5, 6, 7], 0), torch.tensor([[5, 6, 7]]))
    with pytest.raises(ValueError, match="prompt of 129 tokens exceeds the model's max_seq_len 128"):
        generate(model, [1] * 129, 1)
    with pytest.raises(ValueError, match="plus 10 new ones exceeds"):
        generate(model, [1] * 120, 10)
    with pytest.raises(ValueError, match="equal lengths"):
        generate(model, [[1, 2], [3]], 2)
    with pytest.raises(ValueError, match="empty"):
        generate(model, [], 2)


def _stop_at_eos(greedy, prompt_len, eos_id):
    """Greedy output as generate() should return it given `eos_id`: each row padded with eos_id after
    its first one, the columns cut once every row has one."""
    out, ends = greedy.clone(), []
    for row in out:
        hits = (row[prompt_len:] == eos_id).nonzero().flatten().tolist()
        if hits:
            row[prompt_len + hits[0] :] = eos_id
        ends.append(prompt_len + hits[0] if hits else len(row) - 1)
    return out[:, : max(ends) + 1]


def test_eos_stops_each_sequence():
    model, prompt = _tiny(TINY), _tokens(TINY, seq=5)
    greedy = generate(model, prompt, 30, temperature=0)
    eos = greedy[0, 5 + 3].item()  # row 0 makes this token at its fourth step
    out = generate(model, prompt, 30, temperature=0, eos_id=eos)
    assert torch.equal(out, _stop_at_eos(greedy, 5, eos))
    assert (out[0, 8:] == eos).all()
    single = generate(model, prompt[:1], 30, temperature=0, eos_id=eos)
    assert single.shape[1] <= 9 and single[0, -1].item() == eos  # stopped early, EOS kept


# --- filters and sampling -----------------------------------------------------------------------


def test_top_p_filter_hand_computed():
    probs = torch.tensor([[0.5, 0.1, 0.25, 0.15], [0.1, 0.2, 0.3, 0.4]])
    logits = probs.log()
    # Row 0 ranked: 0.5 (id 0), 0.25 (id 2), 0.15 (id 3), 0.1 (id 1); cumulative 0.5, 0.75, 0.9, 1.
    # Row 1 ranked: 0.4 (id 3), 0.3 (id 2), 0.2 (id 1), 0.1 (id 0); cumulative 0.4, 0.7, 0.9, 1.
    # Thresholds sit away from the cumulative sums, where float rounding could go either way.
    expected_kept = {
        0.3: [[0], [3]],
        0.6: [[0, 2], [3, 2]],
        0.8: [[0, 2, 3], [3, 2, 1]],
        0.95: [[0, 2, 3, 1], [3, 2, 1, 0]],
        1.0: [[0, 1, 2, 3], [0, 1, 2, 3]],
    }
    for top_p, kept in expected_kept.items():
        filtered = top_p_filter(logits, top_p)
        for row, ids in enumerate(kept):
            assert sorted(torch.isfinite(filtered[row]).nonzero().flatten().tolist()) == sorted(ids), top_p
            assert torch.equal(filtered[row, ids], logits[row, ids])  # kept logits untouched
    # A tiny top_p still keeps the most likely token.
    assert torch.isfinite(top_p_filter(logits, 1e-9)).sum(-1).tolist() == [1, 1]
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="top_p"):
            top_p_filter(logits, bad)


def test_top_k_filter():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [[False, True, True, False]]
    assert torch.equal(top_k_filter(logits, None), logits) and torch.equal(top_k_filter(logits, 10), logits)
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)


def test_sampling_follows_the_renormalised_nucleus():
    """Samples come only from the nucleus, in proportion to their renormalised probabilities."""
    logits = torch.tensor([0.5, 0.1, 0.25, 0.15]).log().expand(20000, -1)
    ids = sample_next(logits, temperature=1.0, top_p=0.6, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(ids, minlength=4).float() / len(ids)
    assert counts[1] == counts[3] == 0
    assert math.isclose(counts[0].item(), 2 / 3, abs_tol=0.02) and math.isclose(counts[2].item(), 1 / 3, abs_tol=0.02)


def test_sampling_is_reproducible_with_a_seed():
    model, prompt = _tiny(TINY), _tokens(TINY, seq=5)

    def run(seed):
        return generate(
            model, prompt, 30, temperature=1.0, top_p=0.9, top_k=50, generator=torch.Generator().manual_seed(seed)
        )

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, generate(model, prompt, 30, temperature=0))  # it does sample


def test_near_zero_temperature_is_greedy():
    model, prompt = _tiny(TINY_GQA), _tokens(TINY_GQA, seq=5)
    greedy = generate(model, prompt, 30, temperature=0)
    cold = generate(model, prompt, 30, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cold, greedy)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, prompt, 3, temperature=-1.0)


# --- tools/generate.py --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model with a 512-token LaTeX tokenizer, saved as training saves it."""
    out = tmp_path_factory.mktemp("gen")
    docs = [p["text"] for p in generate_papers(30, seed=0)]
    train_sentencepiece(
        docs, str(out / "latex.model"), SentencePieceTrainConfig(vocab_size=512, num_threads=2, mined_commands=50)
    )
    tok = load_tokenizer(str(out / "latex.model"))
    cfg = replace(TINY, vocab_size=tok.vocab_size)
    model = _tiny(cfg)
    save_checkpoint(
        str(out / "ckpt"),
        10,
        rank=0,
        rank_state={},
        model_state=model.state_dict(),
        meta={"model_config": dataclasses.asdict(cfg), "tokenizer": tok.identity()},
        tokenizer=tok,
    )
    return out / "ckpt", model, tok


def _run_tool(argv, capsys):
    code = runpy.run_path(TOOL)["main"](argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_tool_prints_prompt_and_continuation(checkpoint, capsys, tmp_path):
    save_dir, model, tok = checkpoint
    prompt = "\\begin{abstract}\nWe study"
    code, out, err = _run_tool(
        ["--checkpoint", str(save_dir), "--prompt", prompt, "--max-new-tokens", "20", "--temperature", "0"], capsys
    )
    assert code == 0, err
    ids = [tok.eod_id] + tok.encode(prompt)
    new = generate(model, ids, 20, temperature=0, eos_id=tok.eos_id)[0, len(ids) :].tolist()
    new = new[: new.index(tok.eos_id)] if tok.eos_id in new else new
    assert len(new) > 0 and out == tok.decode(ids[1:] + new) + "\n"
    assert out.startswith(prompt) and len(out) > len(prompt) + 1
    assert "tokens/s on cpu" in err
    # Sampling, a prompt file, two prompts, the save directory's latest checkpoint.
    (tmp_path / "p.txt").write_text("\\section{Introduction}\n", encoding="utf-8")
    args = [
        "--checkpoint",
        str(save_dir),
        "--prompt",
        "Let",
        "--prompt-file",
        str(tmp_path / "p.txt"),
        "--max-new-tokens",
        "15",
        "--top-p",
        "0.9",
        "--seed",
        "3",
    ]
    code, out, err = _run_tool(args, capsys)
    assert code == 0, err
    assert out.startswith("Let") and "-" * 80 + "\n\\section{Introduction}\n" in out
    assert err.count("tokens/s") == 2
    assert _run_tool(args, capsys)[1] == out  # same seed, same text


def test_generate_tool_errors(checkpoint, capsys, tmp_path):
    save_dir, _, _ = checkpoint
    code, _, err = _run_tool(["--checkpoint", str(tmp_path / "nope"), "--prompt", "x"], capsys)
    assert code == 1 and "neither a checkpoint" in err
    code, _, err = _run_tool(["--checkpoint", str(save_dir), "--prompt", "x", "--max-new-tokens", "500"], capsys)
    assert code == 1 and "exceeds the model's max_seq_len 128" in err

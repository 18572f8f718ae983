"""HuggingFace export: transformers reloads the same model and tokenizer, and tampering is caught."""

import dataclasses
import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open

from megasci.corpus.synthetic import generate_papers
from megasci.export.verify import LOGIT_RTOL, _check_logits
from megasci.export_hf import (
    ExportError,
    Report,
    export_checkpoint,
    literal_text_caveats,
    sentencepiece_to_tokenizers,
    verify_export,
    write_tokenizer_files,
)
from megasci.model import build_model, get_config, hf_config_dict, to_hf_state_dict
from megasci.tokenizer import SentencePieceTokenizer, SentencePieceTrainConfig, train_sentencepiece
from megasci.training.checkpoint import save_checkpoint

transformers = pytest.importorskip("transformers")


def _bf16_attention_error() -> str | None:
    """Why this torch cannot run bfloat16 SDPA on this CPU, or None. Forcing ATEN_CPU_CAPABILITY=avx2 on an
    AVX512 host (to test the AVX2 kernels) makes torch's bf16 attention kernel refuse ("pack_vnni2 is only
    supported when avx512 is supported"); a real AVX2 host runs it, as earlier CI runs there showed."""
    q = torch.zeros(1, 4, 64, 16, dtype=torch.bfloat16)
    try:
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    except RuntimeError as error:
        return str(error)
    return None


needs_bf16_attention = pytest.mark.skipif(
    _bf16_attention_error() is not None, reason=f"torch cannot run bf16 SDPA on this CPU: {_bf16_attention_error()}"
)

VOCAB = 1200
TEXT = (
    "\\begin{align}\n\t\\sum_{i=1}^{42} x_i^2 &\\le 3.14 \\\\\n\\end{align}\n\n\n"
    "Ünïcödé ∂Ω 中文 😀  two  spaces, a literal </s> and <0x41>, 2024\n"
)


def _train(path, seed, papers=40):
    docs = [p["text"] for p in generate_papers(papers, seed=seed)]
    train_sentencepiece(docs, str(path), SentencePieceTrainConfig(vocab_size=VOCAB, num_threads=2, mined_commands=100))
    return SentencePieceTokenizer(str(path))


@pytest.fixture(scope="module")
def tokenizers_(tmp_path_factory):
    """The training tokenizer and another one with the same vocabulary size, trained on other papers."""
    out = tmp_path_factory.mktemp("tok")
    return _train(out / "train.model", seed=0), _train(out / "other.model", seed=1, papers=30)


def _checkpoint(save_dir, tok, **overrides):
    """A tiny model (init large enough that logits are far from uniform) saved with its tokenizer."""
    cfg = get_config("tiny", **{"vocab_size": tok.vocab_size, "init_std": 0.1, **overrides})
    torch.manual_seed(0)
    model = build_model(cfg, dtype=torch.float32)
    meta = {"model_config": dataclasses.asdict(cfg), "tokenizer": tok.identity()}
    save_checkpoint(str(save_dir), 10, rank=0, rank_state={}, model_state=model.state_dict(), meta=meta, tokenizer=tok)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizers_):
    out = tmp_path_factory.mktemp("export")
    model = _checkpoint(out / "ckpt", tokenizers_[0])
    report = export_checkpoint(str(out / "ckpt"), str(out / "hf"))
    return out, model, report


def _tampered(exported, tmp_path):
    """A copy of the export to break, and the checkpoint it came from."""
    out, _, _ = exported
    shutil.copytree(out / "hf", tmp_path / "hf")
    return tmp_path / "hf", str(out / "ckpt")


def _edit_json(path, **changes):
    with open(path) as f:
        obj = json.load(f)
    obj.update(changes)
    with open(path, "w") as f:
        json.dump(obj, f)


def _greedy(model, prompt, steps):
    ids = prompt
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_export_writes_a_transformers_directory(exported):
    out, model, report = exported
    hf_dir = out / "hf"
    assert sorted(os.listdir(hf_dir)) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    assert not [p for p in os.listdir(out) if ".tmp-" in p or p.endswith(".failed")]
    config = json.load(open(hf_dir / "config.json"))
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["vocab_size"] == VOCAB and config["tie_word_embeddings"] is False
    assert config["rope_theta"] == 10_000.0 and config["rms_norm_eps"] == 1e-6
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 3)
    with safe_open(str(hf_dir / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("lm_head.weight").dtype == torch.float32  # the training dtype
    assert report.dtype == "float32" and report.greedy_tokens == 16 and report.probe_tokens > 1000
    assert report.max_logit_diff <= report.tolerance and report.tolerance >= LOGIT_RTOL[torch.float32]


def test_transformers_reload_gives_our_logits_and_greedy_continuation(exported, tokenizers_):
    out, model, _ = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(out / "hf")
    ids = tok(TEXT)["input_ids"]
    assert ids == tokenizers_[0].encode(TEXT) and tok.decode(ids) == TEXT
    tokens = torch.tensor([ids[:48], list(range(900, 948))])
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert ours.abs().max() > 1.0  # far from uniform, so the comparison means something
    assert (ours - theirs).abs().max().item() < 1e-5
    prompt = tokens[:1, :20]
    generated = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=24,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=3,
    )
    assert torch.equal(generated, _greedy(model, prompt, 24))


@needs_bf16_attention
def test_bfloat16_export(tmp_path, tokenizers_):
    _checkpoint(tmp_path / "ckpt", tokenizers_[0])
    report = export_checkpoint(str(tmp_path / "ckpt"), str(tmp_path / "hf"), dtype="bfloat16")
    assert report.dtype == "bfloat16" and report.max_logit_diff <= report.tolerance
    assert json.load(open(tmp_path / "hf" / "config.json"))["torch_dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())


def test_padded_vocabulary_is_exported_whole(tmp_path, tokenizers_):
    """Embedding rows beyond the tokenizer (padding to a multiple of 64) stay; config says the row count."""
    _checkpoint(tmp_path / "ckpt", tokenizers_[0], vocab_size=1216)
    export_checkpoint(str(tmp_path / "ckpt"), str(tmp_path / "hf"))
    assert json.load(open(tmp_path / "hf" / "config.json"))["vocab_size"] == 1216
    assert len(transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")) == VOCAB


def test_swapped_tokenizer_files_are_caught(exported, tokenizers_, tmp_path):
    hf_dir, ckpt = _tampered(exported, tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    write_tokenizer_files(str(other_dir), tokenizers_[1].path, tokenizers_[1].identity())
    shutil.copyfile(other_dir / "tokenizer.json", hf_dir / "tokenizer.json")
    with pytest.raises(ExportError, match=r"tokenizer\.json: token \d+ is .*, the training tokenizer's is"):
        verify_export(str(hf_dir), ckpt)
    shutil.copyfile(other_dir / "tokenizer.model", hf_dir / "tokenizer.model")
    with pytest.raises(ExportError, match="tokenizer.model: missing or not a copy of the training tokenizer"):
        verify_export(str(hf_dir), ckpt)


def test_tokenizer_scores_changed_are_caught_by_ids(exported, tmp_path):
    """Same pieces, different segmentation: the probe texts' ids name the first position that differs."""
    hf_dir, ckpt = _tampered(exported, tmp_path)
    with open(hf_dir / "tokenizer.json") as f:
        tj = json.load(f)
    tj["model"]["vocab"] = [[piece, -len(piece) if score < 0 else score] for piece, score in tj["model"]["vocab"]]
    with open(hf_dir / "tokenizer.json", "w") as f:
        json.dump(tj, f)
    message = r"tokenizer ids differ at position \d+: exported \d+ vs training \d+ for text"
    with pytest.raises(ExportError, match=message):
        verify_export(str(hf_dir), ckpt)


def test_special_text_that_cannot_be_cut_cleanly_is_reported(tokenizers_, tmp_path):
    """If normal pieces span every place to cut "<s>", its literal text is a caveat, all other text exact."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(open(tokenizers_[0].path, "rb").read())
    lowest = sorted((p.score, i) for i, p in enumerate(proto.pieces) if p.type == p.NORMAL)[:2]
    for (_, i), piece in zip(lowest, ["q<s", "s>q"]):
        proto.pieces[i].piece = piece
    path = tmp_path / "spanned.model"
    path.write_bytes(proto.SerializeToString())
    assert literal_text_caveats(str(path)) == ["<s>"]
    sp, hf = SentencePieceTokenizer(str(path)), sentencepiece_to_tokenizers(str(path))
    for text in (TEXT, "q<s q s>q <0x41> q<sx"):
        assert hf.encode(text).ids == sp.encode(text)
    assert literal_text_caveats(tokenizers_[0].path) == []


def test_export_with_a_different_tokenizer_is_refused(exported, tokenizers_, tmp_path):
    out, _, _ = exported
    with pytest.raises(ExportError, match="not the tokenizer this checkpoint was trained with"):
        export_checkpoint(str(out / "ckpt"), str(tmp_path / "hf"), tokenizer=tokenizers_[1].path)
    assert not os.path.exists(tmp_path / "hf")


def test_wrong_vocab_size_is_caught(exported, tmp_path):
    hf_dir, ckpt = _tampered(exported, tmp_path)
    _edit_json(hf_dir / "config.json", vocab_size=VOCAB + 64)
    message = f"config.json: vocab_size is {VOCAB + 64}, but the model has {VOCAB} embedding rows"
    with pytest.raises(ExportError, match=message):
        verify_export(str(hf_dir), ckpt)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "mistral"}, "model_type is 'mistral', expected 'llama'"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings is True, expected False"),
        ({"eos_token_id": 3}, "eos_token_id is 3, expected 2 \\(the training tokenizer's EOS id\\)"),
        ({"rope_theta": 500000.0}, "rope_theta is 500000.0, expected 10000.0"),
    ],
)
def test_wrong_config_fields_are_caught(exported, tmp_path, change, message):
    hf_dir, ckpt = _tampered(exported, tmp_path)
    _edit_json(hf_dir / "config.json", **change)
    with pytest.raises(ExportError, match="config.json: " + message):
        verify_export(str(hf_dir), ckpt)


def test_changed_weights_are_caught(exported, tmp_path):
    from safetensors.torch import load_file, save_file

    hf_dir, ckpt = _tampered(exported, tmp_path)
    tensors = load_file(hf_dir / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][0, 0] += 1e-3
    save_file(tensors, hf_dir / "model.safetensors")
    with pytest.raises(ExportError, match="model.layers.1.mlp.up_proj.weight differs from the checkpoint"):
        verify_export(str(hf_dir), ckpt)


def test_logit_comparison_is_sensitive(exported):
    """The logit check alone (past config and weights) fails for a model with a different RoPE base."""
    _, model, _ = exported
    cfg = dataclasses.replace(model.cfg, rope_theta=500.0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_dict(cfg))).eval()
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), cfg))
    tokens = torch.randint(0, VOCAB, (2, 64), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ExportError, match="logits of the reloaded model differ from ours by up to"):
        _check_logits("config.json", model, hf, tokens, Report("", "", "float32"))


def test_failed_export_leaves_no_output(tmp_path, tokenizers_):
    """A model whose vocabulary is smaller than the tokenizer's fails; its files are kept in .failed."""
    _checkpoint(tmp_path / "ckpt", tokenizers_[0], vocab_size=VOCAB - 8)
    with pytest.raises(ExportError, match=f"vocab_size {VOCAB - 8} is smaller than the tokenizer's {VOCAB} tokens"):
        export_checkpoint(str(tmp_path / "ckpt"), str(tmp_path / "hf"))
    assert not os.path.exists(tmp_path / "hf")
    assert os.path.isfile(tmp_path / "hf.failed" / "config.json")
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


@needs_bf16_attention
def test_cli_end_to_end(exported, tmp_path, capsys, run_tool):
    out, _, _ = exported
    save_dir, hf_dir = str(out / "ckpt"), str(tmp_path / "hf")
    assert run_tool("export_hf.py", ["--checkpoint", save_dir, "--output", hf_dir, "--dtype", "bfloat16"]) == 0
    assert "16 greedy tokens equal" in capsys.readouterr().out
    assert json.load(open(os.path.join(hf_dir, "config.json")))["torch_dtype"] == "bfloat16"
    assert run_tool("export_hf.py", ["--checkpoint", save_dir, "--output", hf_dir, "--verify-only"]) == 0
    assert capsys.readouterr().out.startswith("verified ")
    assert run_tool("export_hf.py", ["--checkpoint", save_dir, "--output", hf_dir]) == 1
    assert "already exists" in capsys.readouterr().err
    _edit_json(os.path.join(hf_dir, "config.json"), tie_word_embeddings=True)
    assert run_tool("export_hf.py", ["--checkpoint", save_dir, "--output", hf_dir, "--verify-only"]) == 1
    assert "tie_word_embeddings is True, expected False" in capsys.readouterr().err


# --- chat template ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_export(tmp_path_factory):
    """A checkpoint whose tokenizer has the megasci-v1 chat template, and its export."""
    out = tmp_path_factory.mktemp("chat")
    docs = [p["text"] for p in generate_papers(40, seed=0)]
    train_sentencepiece(
        docs,
        str(out / "chat.model"),
        SentencePieceTrainConfig(vocab_size=VOCAB, num_threads=2, mined_commands=100, chat_template="megasci-v1"),
    )
    tok = SentencePieceTokenizer(str(out / "chat.model"))
    _checkpoint(out / "ckpt", tok)
    export_checkpoint(str(out / "ckpt"), str(out / "hf"))
    return out, tok


def test_chat_template_is_exported_and_gives_our_ids(chat_export):
    out, tok = chat_export
    with open(out / "hf" / "tokenizer_config.json") as f:
        assert json.load(f)["chat_template"] == tok.chat_template.jinja()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out / "hf"))
    encoder = tok.chat_template.bind(tok)
    conversations = [
        [
            {"role": "user", "content": "Is $x^2 \\ge 0$?"},
            {"role": "assistant", "content": "Yes, for real x."},
            {"role": "user", "content": "Why?"},
            {"role": "assistant", "content": "A square is never negative."},
        ],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a prime."},
            {"role": "assistant", "content": "Seven."},
            {"role": "user", "content": "Another one."},
        ],
    ]
    for messages in conversations:
        prompt = messages[-1]["role"] == "user"
        out_ids = hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt)
        theirs = list(out_ids["input_ids"] if hasattr(out_ids, "keys") else out_ids)
        assert theirs == encoder.encode(messages, add_generation_prompt=prompt)[0].tolist()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda jinja: jinja.replace("<|end|>", "\n<|end|>"), "apply_chat_template ids differ"),
        (lambda jinja: jinja.replace("'<|system|>'", "'<|user|>'"), "apply_chat_template ids differ"),
        (lambda jinja: None, "no chat_template"),
    ],
    ids=["newline-before-end", "system-as-user", "removed"],
)
def test_a_tampered_chat_template_is_caught(chat_export, tmp_path, change, message):
    out, _ = chat_export
    shutil.copytree(out / "hf", tmp_path / "hf")
    path = tmp_path / "hf" / "tokenizer_config.json"
    with open(path) as f:
        config = json.load(f)
    tampered = change(config["chat_template"])
    if tampered is None:
        del config["chat_template"]
    else:
        assert tampered != config["chat_template"]
        config["chat_template"] = tampered
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(ExportError, match=message):
        verify_export(str(tmp_path / "hf"), str(out / "ckpt"))


def test_a_template_on_a_tokenizer_without_one_is_caught(exported, tmp_path):
    hf_dir, checkpoint = _tampered(exported, tmp_path)
    _edit_json(hf_dir / "tokenizer_config.json", chat_template="{{ messages[0]['content'] }}")
    with pytest.raises(ExportError, match="training tokenizer has none"):
        verify_export(str(hf_dir), checkpoint)

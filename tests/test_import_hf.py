"""HuggingFace import (tools/import_hf.py, megasci/model/hf_import.py): tiny random models made by transformers
itself give our logits, export back to the same tensors and config fields, and what we cannot reproduce
exactly is refused naming the file and the key, before anything is written."""

import json
import os
import runpy

import pytest
import torch
from safetensors.torch import load_file

from megasci.corpus.synthetic import generate_papers
from megasci.export_hf import export_checkpoint, write_tokenizer_files
from megasci.model import num_parameters
from megasci.model.hf_import import HFImportError
from megasci.tokenizer import SentencePieceTokenizer, SentencePieceTrainConfig, load_tokenizer, train_sentencepiece
from megasci.training.checkpoint import checkpoint_tokenizer_path, load_model, read_meta

transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "import_hf.py")
import_hf = runpy.run_path(TOOL)["import_hf"]
# The config.json fields that define the model; an import followed by an export must give them back.
MODEL_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_parameters",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
CASES = {
    "mha": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa": dict(num_attention_heads=4, num_key_value_heads=2, rope_theta=500_000.0, vocab_extra=7),
    "tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "head_dim": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24),
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    docs = [p["text"] for p in generate_papers(30, seed=0)]
    train_sentencepiece(
        docs, str(out / "sp.model"), SentencePieceTrainConfig(vocab_size=512, num_threads=2, mined_commands=50)
    )
    return SentencePieceTokenizer(str(out / "sp.model"))


def _hf_model(path, tok, seed=0, vocab_extra=0, rope_theta=10_000.0, max_shard_size=None, **overrides):
    """A random LlamaForCausalLM saved by transformers (norm gains perturbed too), with our tokenizer's files."""
    cfg = transformers.LlamaConfig(
        vocab_size=tok.vocab_size + vocab_extra,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        initializer_range=0.2,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
        **overrides,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(path), **kwargs)
    write_tokenizer_files(str(path), tok.path, tok.identity())
    return model


def _hf_tensors(path):
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.load(open(index))["weight_map"].values())) if index.exists() else ["model.safetensors"]
    out = {}
    for f in files:
        out.update(load_file(str(path / f)))
    return out


def _assert_same_logits(ckpt, hf_model, vocab):
    ours, _ = load_model(str(ckpt), dtype=torch.float32)
    tokens = torch.randint(0, vocab, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mine, theirs = ours.eval()(tokens), hf_model(tokens).logits
    assert mine.abs().max() > 1.0  # far from uniform, so the comparison means something
    assert (mine - theirs).abs().max().item() <= 1e-5 * mine.abs().max().item()
    return ours


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_gives_transformers_logits_and_exports_back(case, tokenizer, tmp_path):
    hf = _hf_model(tmp_path / "hf", tokenizer, **CASES[case])
    path = import_hf(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    assert path == str(tmp_path / "ckpt" / "step_00000000")
    meta = read_meta(path)
    # recorded as for our own tokenizers: the directory's tokenizer.model, the same file as ours
    assert meta["tokenizer"] == SentencePieceTokenizer(str(tmp_path / "hf" / "tokenizer.model")).identity()
    assert meta["tokenizer"]["sha256"] == tokenizer.identity()["sha256"]
    assert checkpoint_tokenizer_path(path) == os.path.join(path, "tokenizer.model")
    ours = _assert_same_logits(path, hf, hf.config.vocab_size)
    tied = CASES[case].get("tie_word_embeddings", False)
    assert meta["model_config"]["tie_embeddings"] is tied
    assert (ours.output.weight is ours.embed.weight) is tied
    assert ours.cfg.head_dim == CASES[case].get("head_dim", 16)
    assert num_parameters(ours.cfg) == sum(p.numel() for p in ours.parameters()) == hf.num_parameters()

    report = export_checkpoint(path, str(tmp_path / "back"))
    assert report.max_logit_diff <= report.tolerance
    original, exported = _hf_tensors(tmp_path / "hf"), _hf_tensors(tmp_path / "back")
    assert sorted(exported) == sorted(original) and ("lm_head.weight" in exported) is not tied
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name
    before, after = (json.load(open(tmp_path / d / "config.json")) for d in ("hf", "back"))
    for key in MODEL_FIELDS:
        assert after[key] == before[key], key


def test_llama3_rope_scaling_imports(tokenizer, tmp_path):
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "original_max_position_embeddings": 32,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    }
    hf = _hf_model(tmp_path / "hf", tokenizer, num_attention_heads=4, num_key_value_heads=2)
    config = json.load(open(tmp_path / "hf" / "config.json"))
    config["rope_parameters"] = {**scaling, "rope_theta": 500_000.0}
    json.dump(config, open(tmp_path / "hf" / "config.json", "w"))
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf")).float().eval()
    path = import_hf(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    assert read_meta(path)["model_config"]["rope_scaling"] == scaling
    _assert_same_logits(path, hf, hf.config.vocab_size)


def test_sharded_safetensors_import_and_a_missing_shard_is_named(tokenizer, tmp_path):
    hf = _hf_model(tmp_path / "hf", tokenizer, num_attention_heads=4, num_key_value_heads=2, max_shard_size="60KB")
    shards = sorted(p for p in os.listdir(tmp_path / "hf") if p.startswith("model-"))
    assert len(shards) > 2 and (tmp_path / "hf" / "model.safetensors.index.json").exists()
    _assert_same_logits(import_hf(str(tmp_path / "hf"), str(tmp_path / "ckpt")), hf, hf.config.vocab_size)

    os.remove(tmp_path / "hf" / shards[1])
    with pytest.raises(HFImportError, match=rf"{shards[1]}: missing; .*model\.safetensors\.index\.json lists it"):
        import_hf(str(tmp_path / "hf"), str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    "changes, keys",
    [
        ({"attention_bias": True}, ["attention_bias"]),
        ({"mlp_bias": True}, ["mlp_bias"]),
        (
            {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": 4096},
            ["model_type", "architectures", "sliding_window"],
        ),
        ({"hidden_act": "gelu"}, ["hidden_act"]),
        ({"num_local_experts": 8}, ["num_local_experts"]),
        ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, ["rope_type"]),
    ],
)
def test_unsupported_config_is_refused_before_writing(changes, keys, tokenizer, tmp_path):
    _hf_model(tmp_path / "hf", tokenizer, num_attention_heads=4, num_key_value_heads=4)
    config = json.load(open(tmp_path / "hf" / "config.json"))
    config.update(changes)
    json.dump(config, open(tmp_path / "hf" / "config.json", "w"))
    with pytest.raises(HFImportError) as raised:
        import_hf(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    message = str(raised.value)
    assert message.startswith(str(tmp_path / "hf" / "config.json"))
    assert all(k in message for k in keys), message
    assert not (tmp_path / "ckpt").exists()


def test_tokenizer_json_directory_carries_its_tokenizer(tmp_path):
    """A directory with only tokenizer.json (LLaMA-3 style): the checkpoint holds it and its config."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>", "<pad>"] + [f"w{i}" for i in range(60)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "hf").mkdir()
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    json.dump(
        {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
        open(tmp_path / "hf" / "tokenizer_config.json", "w"),
    )
    ours_tok = load_tokenizer(str(tmp_path / "hf" / "tokenizer.json"))
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        initializer_range=0.3,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).float().eval()
    hf.save_pretrained(str(tmp_path / "hf"))
    path = import_hf(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    identity = read_meta(path)["tokenizer"]
    assert identity == ours_tok.identity() and identity["kind"] == "huggingface"
    assert (identity["bos_id"], identity["eos_id"], identity["pad_id"]) == (1, 2, 3)
    carried = checkpoint_tokenizer_path(path)
    assert carried == os.path.join(path, "tokenizer.json") and not os.path.exists(os.path.join(path, "tokenizer.model"))
    assert os.path.isfile(os.path.join(path, "tokenizer_config.json"))
    assert load_tokenizer(carried).encode("w3 w7 w59") == ours_tok.encode("w3 w7 w59") == [7, 11, 63]
    _assert_same_logits(path, hf, 64)


def test_tool_reports_errors_and_refuses_a_used_output(tokenizer, tmp_path, capsys):
    main = runpy.run_path(TOOL)["main"]
    _hf_model(tmp_path / "hf", tokenizer, num_attention_heads=4, num_key_value_heads=4)
    assert main(["--hf-model", str(tmp_path / "hf"), "--output", str(tmp_path / "ckpt")]) == 0
    assert "imported" in capsys.readouterr().out
    assert main(["--hf-model", str(tmp_path / "hf"), "--output", str(tmp_path / "ckpt")]) == 1
    assert "already holds checkpoints" in capsys.readouterr().err
    os.remove(tmp_path / "hf" / "config.json")
    assert main(["--hf-model", str(tmp_path / "hf"), "--output", str(tmp_path / "new")]) == 1
    assert "config.json: missing" in capsys.readouterr().err

"""Chat markers for a tokenizer trained without them (tools/add_chat_template.py, issue 19): the markers are
appended (every old id keeps its piece), our chat encoding equals transformers' `apply_chat_template` on the
written directory, embeddings grow to the new vocabulary with the mean of the old rows, and a model whose
tokenizer had no markers fine-tunes on SFT data written with the new tokenizer and exports a template
that reproduces our ids."""

import json
import os
import runpy

import pytest
import torch

from megasci.corpus.synthetic import generate_papers
from megasci.data.synthetic_chat import generate_conversations
from megasci.export.verify import CHAT_PROBES
from megasci.model import get_config
from megasci.tokenizer import SentencePieceTrainConfig, load_tokenizer, train_sentencepiece
from megasci.training.checkpoint import grow_vocab
from megasci.training.config import load_config
from megasci.training.trainer import Trainer

transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = runpy.run_path(os.path.join(ROOT, "tools", "add_chat_template.py"))["main"]
PREPROCESS_SFT = runpy.run_path(os.path.join(ROOT, "tools", "preprocess_sft.py"))["main"]
MARKERS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def bpe_tokenizer_dir(path, vocab_size=600):
    """A LLaMA-3-style byte-level BPE tokenizer.json (BOS added by its post-processor, cleanup on), without
    chat markers, as a model download carries it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    texts = [p["text"] for p in generate_papers(30, seed=0)]
    texts += [m["content"] for c in generate_conversations(100, seed=2) for m in c["messages"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
    )
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    json.dump(
        {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|end_of_text|>",
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": True,
        },
        open(os.path.join(path, "tokenizer_config.json"), "w"),
    )
    return str(path)


def _transformers_ids(directory, conversation, prompt):
    out = transformers.AutoTokenizer.from_pretrained(directory).apply_chat_template(
        conversation, tokenize=True, add_generation_prompt=prompt
    )
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _check_extended(source_path, extended_dir):
    old, new = load_tokenizer(source_path), load_tokenizer(extended_dir)
    assert new.vocab_size == old.vocab_size + len(MARKERS)
    assert [new.id_to_piece(i) for i in range(old.vocab_size)] == [old.id_to_piece(i) for i in range(old.vocab_size)]
    assert [new.encode(m) for m in MARKERS] == [[old.vocab_size + k] for k in range(len(MARKERS))]
    assert new.chat_template is not None and new.chat_template.name == "megasci-v1"
    encoder = new.chat_template.bind(new)
    for conversation in CHAT_PROBES:
        for prompt in (False, True):
            history = (
                conversation
                if not prompt
                else conversation[:-1]
                if conversation[-1]["role"] == "assistant"
                else conversation
            )
            ids = encoder.encode(history, add_generation_prompt=prompt)[0].tolist()
            assert ids == _transformers_ids(extended_dir, history, prompt)
            # the rendered string encodes to the turn-by-turn ids: no piece crosses a marker
            assert new.encode(new.chat_template.render(history, add_generation_prompt=prompt)) == ids
    text = "Let $x \\in \\mathbb{R}$.\n\n  Then x^2 >= 0."
    assert new.encode(text) == old.encode(text)


def test_markers_are_appended_to_a_tokenizer_json_and_match_apply_chat_template(tmp_path, capsys):
    source = bpe_tokenizer_dir(tmp_path / "hf")
    assert load_tokenizer(source).encode("<|user|>") != [600]  # no markers: several byte-level pieces
    assert TOOL(["--tokenizer", source, "--output", str(tmp_path / "chat")]) == 0
    assert "<|system|> = 600, <|user|> = 601, <|assistant|> = 602, <|end|> = 603" in capsys.readouterr().out
    _check_extended(os.path.join(source, "tokenizer.json"), str(tmp_path / "chat"))
    config = json.load(open(tmp_path / "chat" / "tokenizer_config.json"))
    assert config["clean_up_tokenization_spaces"] is True  # the original's settings are kept
    assert TOOL(["--tokenizer", source, "--output", str(tmp_path / "chat")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_a_sentencepiece_model_is_converted_then_extended(tmp_path):
    docs = [p["text"] for p in generate_papers(30, seed=0)]
    model = str(tmp_path / "sp.model")
    train_sentencepiece(docs, model, SentencePieceTrainConfig(vocab_size=512, num_threads=2, mined_commands=50))
    assert TOOL(["--tokenizer", model, "--output", str(tmp_path / "chat")]) == 0
    _check_extended(model, str(tmp_path / "chat"))
    # the exported SentencePiece config splits special-token text, so the markers are plain added tokens
    added = json.load(open(tmp_path / "chat" / "tokenizer.json"))["added_tokens"]
    assert {t["content"]: t["special"] for t in added} == dict.fromkeys(MARKERS, False)


def test_a_bpe_sentencepiece_model_is_refused_with_the_reason(tmp_path, capsys):
    docs = [p["text"] for p in generate_papers(20, seed=0)]
    model = str(tmp_path / "bpe.model")
    train_sentencepiece(
        docs, model, SentencePieceTrainConfig(vocab_size=400, num_threads=2, mined_commands=0, model_type="bpe")
    )
    assert TOOL(["--tokenizer", model, "--output", str(tmp_path / "chat")]) == 1
    assert "only unigram SentencePiece models" in capsys.readouterr().err
    assert not (tmp_path / "chat" / "tokenizer.json").exists()


@pytest.mark.parametrize("tied", [False, True])
def test_grow_vocab_appends_the_mean_of_the_old_rows(tied):
    cfg = get_config("tiny", vocab_size=10, tie_embeddings=tied)
    embed = torch.randn(7, cfg.hidden_size)
    state = {"embed.weight": embed, "output.weight": embed if tied else torch.randn(7, cfg.hidden_size)}
    grown = grow_vocab(state, cfg)
    for name in ("embed.weight", "output.weight"):
        assert grown[name].shape == (10, cfg.hidden_size)
        assert torch.equal(grown[name][:7], state[name])
        assert torch.allclose(grown[name][7:], state[name].mean(0).expand(3, -1))
    assert (grown["output.weight"] is grown["embed.weight"]) is tied


def test_finetuning_a_model_whose_tokenizer_had_no_markers(tmp_path):
    """Markers added, embeddings grown (new rows the old mean), the SFT loss falls, and the export's
    chat template reproduces our ids."""
    from megasci.export_hf import export_checkpoint

    hf_dir = bpe_tokenizer_dir(tmp_path / "hf")
    cfg = transformers.LlamaConfig(
        vocab_size=600,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.1,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).float()
    hf.save_pretrained(hf_dir)
    chat_dir = str(tmp_path / "chat")
    assert TOOL(["--tokenizer", hf_dir, "--output", chat_dir]) == 0
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps(c) + "\n" for c in generate_conversations(200, seed=1)))
    assert (
        PREPROCESS_SFT(
            [
                "--input",
                str(chats),
                "--output-prefix",
                str(tmp_path / "sft"),
                "--tokenizer-model",
                chat_dir,
                "--append-eod",
                "--no-progress",
            ]
        )
        == 0
    )
    save_dir = str(tmp_path / "ft")
    trainer = Trainer(
        load_config(
            None,
            [
                f"model.preset={hf_dir}",
                f"data.tokenizer={chat_dir}",
                f"train.init_from={hf_dir}",
                f"data.blend=[1.0, {tmp_path / 'sft_text_document'}]",
                "data.document_mask=true",
                "data.seq_length=32",
                "data.split=[0.9, 0.1, 0.0]",
                "data.eval_samples=8",
                "optim.lr=3e-3",
                "optim.min_lr=3e-4",
                "optim.warmup_steps=2",
                "optim.bucket_numel=20000",
                "train.micro_batch_size=2",
                "train.global_batch_size=8",
                "train.train_steps=8",
                "train.device=cpu",
                f"train.save_dir={save_dir}",
                "train.save_interval=8",
                "train.eval_interval=8",
                "train.log_interval=2",
                "train.peak_tflops=1.0",
            ],
        )
    )
    assert trainer.model.cfg.vocab_size == 604
    trainer.restore()
    embed = trainer.model.embed.weight.detach()
    original = hf.model.embed_tokens.weight.detach()
    assert torch.equal(embed[:600], original)
    assert torch.allclose(embed[600:], original.mean(0).expand(4, -1), atol=1e-7)
    assert trainer.model.output.weight is trainer.model.embed.weight
    summary = trainer.train()
    before, after = summary.validation[0]["sft_text_document"], summary.validation[8]["sft_text_document"]
    assert after < before - 0.3, (before, after)

    report = export_checkpoint(save_dir, str(tmp_path / "export"))
    assert report.max_logit_diff <= report.tolerance
    tok = load_tokenizer(chat_dir)
    question = [{"role": "user", "content": "What is three plus four?"}]
    want = tok.chat_template.bind(tok).encode(question, add_generation_prompt=True)[0].tolist()
    assert _transformers_ids(str(tmp_path / "export"), question, True) == want
    exported = json.load(open(tmp_path / "export" / "config.json"))
    assert exported["vocab_size"] == 604 and exported["tie_word_embeddings"] is True

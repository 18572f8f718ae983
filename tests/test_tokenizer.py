"""Tokenizer training for LaTeX: exact round trips, no unknown tokens, newlines and commands kept whole."""

import json
import os

import pytest
import sentencepiece as spm

from megasci.corpus.synthetic import generate_papers
from megasci.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    SentencePieceTrainConfig,
    load_tokenizer,
    train_sentencepiece,
)

UNUSUAL = (
    "Schrödinger’s ∮ 𝔄 𝓗 ∂Ω — naïve café; 中文 テスト 한국어 עברית العربية 😀👩‍👩‍👧 e\u0301 \u200b\t\ttab\r\n"
    "\\begin{equation}\n  \\mathbb{R}^{10^{23}} \\ni x \\mapsto 3.14159 \\end{equation}\n\n\n\x07 \u2028 end  "
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    docs = [p["text"] for p in generate_papers(120, seed=0)]
    cfg = SentencePieceTrainConfig(vocab_size=3000, num_threads=2, mined_commands=200)
    report = train_sentencepiece(docs, str(out / "latex.model"), cfg)
    return report, load_tokenizer(str(out / "latex.model"))


def test_round_trip_is_exact_on_unseen_text(trained):
    _, tok = trained
    for paper in generate_papers(30, seed=99):
        assert tok.decode(tok.encode(paper["text"])) == paper["text"]
    assert tok.decode(tok.encode(UNUSUAL)) == UNUSUAL


def test_no_unknown_tokens_on_unusual_unicode(trained):
    _, tok = trained
    ids = tok.encode(UNUSUAL)
    assert 0 not in ids  # unk id
    assert any(tok.id_to_piece(i).startswith("<0x") for i in ids)  # byte fallback did the work


def test_newlines_are_their_own_tokens(trained):
    _, tok = trained
    pieces = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
    assert "\n" in pieces and "\n\n" in pieces
    assert [p for p in pieces if "\n" in p] == ["\n", "\n\n"]
    pieces = tok.pieces("a\n\n\nb")
    assert pieces[0] == "a" and pieces[-1] == "b" and sorted(pieces[1:-1]) == ["\n", "\n\n"]


def test_digits_are_split(trained):
    _, tok = trained
    pieces = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
    assert not [p for p in pieces if sum(c.isdigit() for c in p) > 1 and not p.startswith("<0x")]
    assert [p for p in tok.pieces("12345") if p != "▁"] == list("12345")


def test_frequent_commands_are_whole_pieces(trained):
    report, tok = trained
    assert len(report.commands_mined) > 20
    assert report.commands_not_whole == []
    for command in ("\\begin", "\\end", "\\frac", "\\section"):
        assert command in report.commands_mined
        assert tok.pieces(command) == [command]
        assert any(command in piece for piece in tok.pieces(f"x {command}{{y}}"))  # never cut, maybe extended


def test_short_command_does_not_break_a_longer_one(tmp_path):
    """`\\in` mined as a piece must not cut `\\input` the way a user-defined symbol would."""
    docs = [f"Let $x \\in A_{i}$ and $y \\in B$.\n\\input{{part{i}}}\n\\int_0^1 f\n" * 3 for i in range(300)]
    train_sentencepiece(
        docs, str(tmp_path / "t.model"), SentencePieceTrainConfig(vocab_size=300, num_threads=1, mined_commands=10)
    )
    tok = load_tokenizer(str(tmp_path / "t.model"))
    assert tok.pieces("\\input") == ["\\input"]
    assert tok.pieces("\\int") == ["\\int"]
    assert tok.pieces("\\in") == ["\\in"]


def test_special_ids_are_explicit_and_saved(trained, tmp_path):
    report, tok = trained
    meta = json.load(open(report.model_path[: -len(".model")] + ".meta.json"))
    assert (meta["unk_id"], meta["bos_id"], meta["eos_id"], meta["pad_id"]) == (0, 1, 2, 3)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.eod_id) == (1, 2, 3, 2)
    assert [tok.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert tok.vocab_size == 3000 and meta["vocab_size"] == 3000
    assert meta["sha256"] == tok.identity()["sha256"]


def test_bpe_model_type_round_trips(tmp_path):
    docs = [p["text"] for p in generate_papers(40, seed=3)]
    report = train_sentencepiece(
        docs, str(tmp_path / "bpe.model"), SentencePieceTrainConfig(vocab_size=1500, model_type="bpe", num_threads=2)
    )
    tok = load_tokenizer(report.model_path)
    assert tok.decode(tok.encode(UNUSUAL)) == UNUSUAL
    text = next(generate_papers(1, seed=4))["text"]
    assert tok.decode(tok.encode(text)) == text


def test_loads_a_foreign_sentencepiece_model_without_meta(tmp_path):
    """A LLaMA-style model trained elsewhere: special ids come from the model, -1 means none."""
    text = tmp_path / "c.txt"
    text.write_text("\n".join(line for p in generate_papers(20, seed=5) for line in p["text"].splitlines() if line))
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(tmp_path / "foreign"), vocab_size=500, minloglevel=2
    )
    tok = SentencePieceTokenizer(str(tmp_path / "foreign.model"))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, None)
    assert tok.encode("hello world") == spm.SentencePieceProcessor(model_file=str(tmp_path / "foreign.model")).encode(
        "hello world"
    )


def test_loads_a_huggingface_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    hf = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<|begin_of_text|>", "<|end_of_text|>"])
    hf.train_from_iterator([p["text"] for p in generate_papers(10, seed=6)], trainer)
    os.makedirs(tmp_path / "hf")
    hf.save(str(tmp_path / "hf" / "tokenizer.json"))
    tok = load_tokenizer(str(tmp_path / "hf"))
    assert isinstance(tok, HFTokenizer)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    text = "\\frac{a}{b} = 42"
    assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<unk>"}))
    assert load_tokenizer(str(tmp_path / "hf" / "tokenizer.json")).eos_id == 0


def test_missing_or_bad_model_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.model"):
        load_tokenizer(str(tmp_path / "nothing.model"))
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.model: not a SentencePiece model"):
        load_tokenizer(str(tmp_path / "junk.model"))


def test_train_tokenizer_tool(tmp_path, run_tool, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": p["text"]}) + "\n" for p in generate_papers(30, seed=7)))
    args = ["--input", str(corpus), "--output", str(tmp_path / "tok"), "--vocab-size", "800", "--num-threads", "1"]
    assert run_tool("train_tokenizer.py", args) == 0
    assert "vocabulary 800" in capsys.readouterr().out
    assert load_tokenizer(str(tmp_path / "tok.model")).vocab_size == 800


def test_array_encoding_matches_list_encoding(trained):
    _, tok = trained
    texts = [p["text"] for p in generate_papers(5, seed=8)] + [UNUSUAL, ""]
    arrays = tok.encode_to_arrays(texts)
    assert [a.tolist() for a in arrays] == [tok.encode(t) for t in texts]


REAL_PACKAGES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "arxiv_sample", "packages")


def test_round_trip_on_real_arxiv_latex(trained):
    """Real papers (one in Latin-1, one LaTeX 2.09) tokenize without unknown tokens and decode exactly."""
    names = ["polch.tex", "paper-t4.1_Vienna_preprint.tex"]
    if not all(os.path.isfile(os.path.join(REAL_PACKAGES, n)) for n in names):
        pytest.skip(f"real arXiv sample not present at {os.path.abspath(REAL_PACKAGES)}")
    _, tok = trained
    for name in names:
        raw = open(os.path.join(REAL_PACKAGES, name), "rb").read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        ids = tok.encode(text)
        assert tok.unk_id not in ids
        assert tok.decode(ids) == text, name

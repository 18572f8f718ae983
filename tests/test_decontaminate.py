"""Decontamination: every planted 13-gram overlap is found (JSONL, .jsonl.zst, .bin/.idx), none in disjoint
text, with lm-evaluation-harness's own normalisation as the reference."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import zstandard

from downstream_fixtures import make_tokenizer, write_task
from megasci.corpus.synthetic import generate_papers
from megasci.data.indexed_dataset import IndexedDatasetWriter
from megasci.downstream.decontaminate import (
    NgramIndex,
    find_contamination,
    iter_documents,
    normalize,
    read_contaminated,
    word_ngrams,
)
from megasci.downstream.tasks import load_jsonl

NO_LM_EVAL = "lm-evaluation-harness is a test-only dependency: pip install lm-eval"
WORDS = (
    "quark lepton boson fermion gluon photon muon tau neutrino hadron meson baryon pion kaon axion "
    "graviton soliton instanton monopole vortex"
).split()


def _examples(n=12, seed=0):
    """Questions of 10 to 20 random words (so the gold-answer choice completes a 13-gram or not)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 20)))
        choices = [" " + " ".join(rng.choice(WORDS) for _ in range(4)) for _ in range(3)]
        out.append({"id": f"q{i}", "context": f"Question: {question}?\nAnswer:", "choices": choices, "gold": i % 3})
    return out


def _planted(example):
    """13 consecutive words of the example's text, with case and punctuation changed, in other text."""
    words = (example["context"] + example["choices"][example["gold"]]).split()
    start = len(words) - 13 if len(words) >= 13 else 0
    window = [w.upper() if k % 2 else w + "," for k, w in enumerate(words[start : start + 13])]
    return "Some unrelated preamble about \\LaTeX. " + " ".join(window) + " And then the paper goes on."


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tok.model")


def test_normalisation_is_lm_evals():
    janitor = pytest.importorskip("lm_eval.decontamination.janitor", reason=NO_LM_EVAL)
    text = 'Ünïcödé Ω: THE Quick, brown fox\'s "jump" -- 3.14 \\alpha_{i}!\t\nNew   line'
    assert normalize(text) == janitor.Janitor().normalize_string(text)
    long = " ".join(normalize(p["text"]) for p in generate_papers(1, seed=3))
    assert list(word_ngrams(long, 13)) == list(janitor.word_ngrams(long, 13))


def test_every_planted_overlap_and_none_in_disjoint_text(tmp_path, tok):
    examples = _examples()
    task = load_jsonl(write_task(tmp_path / "physics.jsonl", examples))
    clean = [p["text"] for p in generate_papers(20, seed=7)]
    planted = {"q1", "q4", "q7", "q10"}
    by_id = {e["id"]: e for e in examples}
    docs = list(clean)
    for k, example_id in enumerate(sorted(planted)):
        docs.insert(3 * k + 1, clean[k][:500] + "\n" + _planted(by_id[example_id]))
    # the corpus in three forms: a .jsonl shard, a .jsonl.zst shard and a .bin/.idx dataset
    half = len(docs) // 2
    with open(tmp_path / "a.jsonl", "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs[:half])
    with open(tmp_path / "b.jsonl.zst", "wb") as f:
        lines = "".join(json.dumps({"text": d}) + "\n" for d in docs[half:])
        f.write(zstandard.ZstdCompressor().compress(lines.encode()))
    with IndexedDatasetWriter(str(tmp_path / "ds"), dtype=np.uint16) as writer:
        for d in docs:
            writer.add_document(tok.encode(d))
    for corpus in ([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl.zst")], [str(tmp_path / "ds")]):
        [report] = find_contamination([task], iter_documents(corpus, tokenizer=tok))
        assert set(report.contaminated) == planted, corpus
        assert report.examples == len(examples)
    [none] = find_contamination([task], ((f"doc {i}", d) for i, d in enumerate(clean)))
    assert none.contaminated == [] and none.examples == len(examples)


def test_short_text_has_no_13_gram(tmp_path):
    """As in lm-eval: an example of fewer than 13 words can never be found."""
    short = [{"context": "Question: what is a boson?\nAnswer:", "choices": [" a particle"], "gold": 0}]
    task = load_jsonl(write_task(tmp_path / "short.jsonl", short))
    assert NgramIndex([task]).owners == {}
    assert find_contamination([task], [("d", "question what is a boson answer a particle")])[0].contaminated == []


def test_cli_writes_ids_that_eval_reads(tmp_path, run_tool, capsys):
    examples = _examples()
    task_path = write_task(tmp_path / "physics.jsonl", examples)
    with open(tmp_path / "corpus.jsonl", "w") as f:
        f.write(json.dumps({"text": _planted(examples[2])}) + "\n")
        f.write(json.dumps({"text": "nothing to see"}) + "\n")
    out = tmp_path / "contamination.json"
    assert (
        run_tool(
            "decontaminate.py", ["--tasks", task_path, "--corpus", str(tmp_path / "corpus.jsonl"), "--out", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "2 corpus documents" in printed and "q2: first seen in" in printed
    assert read_contaminated(str(out)) == {"physics": {"q2"}}


def test_a_bad_corpus_record_names_file_and_line(tmp_path, run_tool, capsys):
    task_path = write_task(tmp_path / "physics.jsonl", _examples(2))
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    assert run_tool("decontaminate.py", ["--tasks", task_path, "--corpus", str(tmp_path / "bad.jsonl")]) == 1
    assert f"{tmp_path / 'bad.jsonl'}:2: no string 'text' field" in capsys.readouterr().err

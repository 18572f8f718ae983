"""tools/make_arxiv_tasks.py: seeded tasks from held-out papers, answerable from the paper (the ceiling), at
chance for a scorer that ignores the text, refusing papers the training data holds in any version."""

from __future__ import annotations

import json

import pytest

from megasci.corpus.synthetic import generate_papers
from megasci.downstream import Score, example_metrics, load_jsonl

KINDS = ("arxiv_next_equation", "arxiv_abstract_sentence")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("arxiv")
    papers = list(generate_papers(60, seed=11))
    with open(root / "heldout.jsonl", "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in papers)
    trained = [{"id": papers[0]["id"] + "v2"}, {"id": "arXiv:" + papers[1]["id"]}, {"id": "9912.00001"}]
    with open(root / "train.jsonl", "w") as f:
        f.writelines(json.dumps(t) + "\n" for t in trained)
    return root, {p["id"]: p for p in papers}


def _make(run_tool, root, out, seed=0):
    return run_tool(
        "make_arxiv_tasks.py",
        [
            "--input",
            str(root / "heldout.jsonl"),
            "--training",
            str(root / "train.jsonl"),
            "--out-dir",
            str(out),
            "--seed",
            str(seed),
        ],
    )


def test_items_are_answerable_from_their_paper_and_refuse_trained_papers(corpus, tmp_path, run_tool, capsys):
    root, papers = corpus
    assert _make(run_tool, root, tmp_path / "a") == 0
    assert "60 papers read, 2 refused (in the training data), 58 used" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert set(manifest["refused_in_training"]) == {list(papers)[0], list(papers)[1]}
    for kind in KINDS:
        task = load_jsonl(str(tmp_path / "a" / f"{kind}.jsonl"))  # our format, as eval_tasks reads it
        assert len(task.examples) >= 40, kind
        golds = [e.gold for e in task.examples]
        for example in task.examples:
            paper = papers[example.id.split("#")[0]]  # the id records the paper
            assert example.id.split("#")[0] not in manifest["refused_in_training"]
            # ceiling: the gold is the paper's own continuation of the context; no distractor is
            assert (example.context + example.choices[example.gold]) in paper["text"]
            assert len(set(example.choices)) == 4
            assert all(
                example.context + c not in paper["text"] for i, c in enumerate(example.choices) if i != example.gold
            )
        # chance: a scorer that ignores the text scores 1/4: a uniform one (equal log-likelihoods, so
        # argmax picks choice 0) or any that always picks one position
        uniform = [
            example_metrics(e.choices, e.gold, [Score(-1.0, 1, 1, 1, False, False)] * 4)["acc"] for e in task.examples
        ]
        assert abs(sum(uniform) / len(uniform) - 0.25) <= 1 / len(uniform)
        assert max(golds.count(k) for k in range(4)) - min(golds.count(k) for k in range(4)) <= 1


def test_the_same_seed_gives_the_same_files(corpus, tmp_path, run_tool):
    root, _ = corpus
    for name in ("a", "b", "c"):
        assert _make(run_tool, root, tmp_path / name, seed=1 if name == "c" else 0) == 0
    for kind in KINDS:
        a, b, c = ((tmp_path / n / f"{kind}.jsonl").read_bytes() for n in "abc")
        assert a == b and a != c


def test_training_data_without_ids_is_an_error(corpus, tmp_path, run_tool, capsys):
    root, _ = corpus
    (tmp_path / "noid.jsonl").write_text('{"text": "a paper"}\n')
    assert (
        run_tool(
            "make_arxiv_tasks.py",
            [
                "--input",
                str(root / "heldout.jsonl"),
                "--training",
                str(tmp_path / "noid.jsonl"),
                "--out-dir",
                str(tmp_path / "x"),
            ],
        )
        == 1
    )
    assert f"{tmp_path / 'noid.jsonl'}:1: no id" in capsys.readouterr().err

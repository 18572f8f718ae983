"""Downstream tasks in the training loop (issue 22, point 3): the scores a 2-rank gloo run logs are the
offline tool's on the same checkpoint, they reach metrics.jsonl and the RunSummary with a macro average,
evaluating leaves training untouched, and the `eval` config section checks its values."""

from __future__ import annotations

import json
import math
import os

import pytest

from downstream_fixtures import EXAMPLES, write_task
from megasci.corpus.synthetic import generate_papers
from megasci.downstream import TaskError, TaskResult
from megasci.training.config import EvalSection, load_config
from megasci.training.downstream_eval import DownstreamEval, load_tasks, scalars
from megasci.training.metrics import read_metrics
from megasci.training.trainer import Trainer, pretrain
from training_fixtures import make_training_data, run_pretrain, training_overrides


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_training_data(str(tmp_path_factory.mktemp("inloop") / "data"))


def paper_task(path, n: int = 12) -> str:
    """Sentences of synthetic papers with the next sentence among three others: text the model trains on
    the kind of, so its log-likelihoods are far from uniform after a few steps."""
    sentences = [
        s.strip() + "."
        for p in generate_papers(30, seed=11)
        for s in p["text"].split(". ")
        if 20 < len(s) < 120 and "\\" not in s
    ]
    rows = []
    for i in range(n):
        context, *choices = sentences[5 * i : 5 * i + 5]
        rows.append({"id": f"p{i}", "context": context, "choices": [" " + c for c in choices], "gold": i % 4})
    return write_task(path, rows)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    return [write_task(root / "sci.jsonl", EXAMPLES), paper_task(root / "papers.jsonl")]


def _eval_overrides(tasks, **extra) -> dict:
    return {"eval.tasks": f"[{', '.join(tasks)}]", "eval.interval": 4, "eval.batch_size": 3, **extra}


def test_in_loop_scores_of_a_two_rank_run_equal_the_offline_tools(data, tasks, tmp_path, run_tool, capsys):
    save_dir = str(tmp_path / "run")
    overrides = _eval_overrides(tasks, **{"eval.per_example": "true"})
    result = run_pretrain(2, training_overrides(data, save_dir, **overrides))
    out = result.stdout
    for step in (0, 4, 8):
        assert f"downstream eval at step {step} (" in out
    assert "% of the" in out and "s of training steps since the last" in out  # the share of step time
    assert "downstream evaluation took" in out and "% of the" in out.split("downstream evaluation took")[1]
    assert "  sci (6 examples): acc " in out and "  macro: acc " in out

    rows = read_metrics(os.path.join(save_dir, "tensorboard"))
    assert sorted(s for s, r in rows.items() if "eval/macro/acc" in r) == [0, 4, 8]
    for step in (4, 8):
        in_loop = [
            json.loads(line)
            for line in open(os.path.join(save_dir, "downstream", f"step_{step:08d}.jsonl"), encoding="utf-8")
        ]
        per_example = tmp_path / f"offline_{step}.jsonl"
        assert (
            run_tool(
                "eval_tasks.py",
                [
                    "--checkpoint",
                    os.path.join(save_dir, f"step_{step:08d}"),
                    "--tasks",
                    *tasks,
                    "--device",
                    "cpu",
                    "--batch-size",
                    "3",
                    "--per-example",
                    str(per_example),
                ],
            )
            == 0
        )
        capsys.readouterr()
        offline = [json.loads(line) for line in per_example.read_text().splitlines()]
        assert [(r["task"], r["id"]) for r in in_loop] == [(r["task"], r["id"]) for r in offline]
        assert len(in_loop) == len(EXAMPLES) + 12
        for a, b in zip(in_loop, offline):
            assert (a["acc"], a["acc_norm"], a["tokens"], a["greedy"]) == (
                b["acc"],
                b["acc_norm"],
                b["tokens"],
                b["greedy"],
            ), (a, b)
            for x, y in zip(a["loglikelihoods"], b["loglikelihoods"]):
                assert abs(x - y) <= 1e-6 * max(1.0, abs(x)), (a["task"], a["id"], x, y)
        for name in ("sci", "papers"):  # the logged task means are the offline rows' means
            mine = [r for r in offline if r["task"] == name]
            for metric in ("acc", "acc_norm", "bpb"):
                expected = sum(r[metric] for r in mine) / len(mine)
                assert rows[step][f"eval/{name}/{metric}"] == pytest.approx(expected, abs=1e-9)
        assert rows[step]["eval/macro/acc"] == pytest.approx(
            (rows[step]["eval/sci/acc"] + rows[step]["eval/papers/acc"]) / 2, abs=1e-12
        )
    assert rows[8]["eval/papers/bpb"] < rows[0]["eval/papers/bpb"]  # the model learnt something of the papers


def _single_rank(data, save_dir, **extra):
    overrides = training_overrides(
        data, save_dir, **{"train.train_steps": 6, "train.eval_interval": 3, "train.save_interval": 0, **extra}
    )
    return load_config(None, overrides)


def test_the_run_summary_holds_the_scores_and_evaluating_changes_no_training_number(data, tasks, tmp_path, capsys):
    plain = pretrain(_single_rank(data, str(tmp_path / "plain")))
    save_dir = str(tmp_path / "evaluated")
    evaluated = pretrain(_single_rank(data, save_dir, **_eval_overrides(tasks, **{"eval.interval": 3})))
    assert not plain.downstream and sorted(evaluated.downstream) == [0, 3, 6]
    assert evaluated.losses == plain.losses and evaluated.validation == plain.validation
    rows = read_metrics(os.path.join(save_dir, "tensorboard"))
    for step, values in evaluated.downstream.items():
        assert {k: v for k, v in rows[step].items() if k.startswith("eval/")} == {
            k: v for k, v in values.items() if k.startswith("eval/")
        }
        assert set(values) >= {
            "eval/sci/acc",
            "eval/sci/acc_stderr",
            "eval/papers/bpb",
            "eval/macro/acc_norm",
            "eval/macro/bpb_stderr",
            "time/downstream_eval_s",
        }
    assert "time/downstream_eval_share" not in evaluated.downstream[0]  # no training step before step 0
    assert 0 < evaluated.downstream[3]["time/downstream_eval_share"]
    assert not os.path.isdir(os.path.join(save_dir, "downstream"))  # per-example rows only when asked
    capsys.readouterr()


def test_a_bad_task_fails_at_set_up_naming_the_file_and_line(data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "Q?", "choices": [" a"], "gold": 0}\n{"context": "Q?", "choices": [" a"], "gold": 1}\n')
    with pytest.raises(TaskError, match=f"{bad}:2: 'gold' is 1, but there are 1 choices"):
        Trainer(_single_rank(data, str(tmp_path / "run"), **{"eval.tasks": f"[{bad}]"}))
    assert not os.path.exists(tmp_path / "run" / "index_cache")  # before any dataset was built


def test_scalars_macro_average_and_its_stderr():
    results = [
        TaskResult("a", "mc", 10, None, {"acc": (0.5, 0.1), "acc_norm": (0.4, 0.1), "bpb": (2.0, 0.3)}),
        TaskResult("b", "mc", 10, None, {"acc": (0.3, 0.2), "acc_norm": (0.2, 0.1), "bpb": (1.0, 0.4)}),
        TaskResult("g", "bpb", 10, None, {"bpb": (3.0, 0.0)}),
    ]
    values = scalars(results)
    assert values["eval/a/acc"] == 0.5 and values["eval/b/acc_stderr"] == 0.2 and values["eval/g/bpb"] == 3.0
    assert values["eval/macro/acc"] == pytest.approx(0.4)  # over the tasks that have acc: a and b
    assert values["eval/macro/acc_stderr"] == pytest.approx(math.sqrt(0.1**2 + 0.2**2) / 2)
    assert values["eval/macro/bpb"] == pytest.approx(2.0)  # over all three
    assert values["eval/macro/bpb_stderr"] == pytest.approx(0.5 / 3)


def test_cadence_and_duplicate_task_names(tasks, tmp_path):
    task = load_tasks(tasks[:1], None)
    every_4 = DownstreamEval(None, task, None, None, device=None, rank=0, world_size=1, interval=4)
    assert [s for s in range(1, 13) if every_4.due(s)] == [4, 8, 12]
    assert not any(
        DownstreamEval(None, task, None, None, device=None, rank=0, world_size=1, interval=0).due(s)
        for s in range(1, 13)
    )
    assert not DownstreamEval(None, [], None, None, device=None, rank=0, world_size=1, interval=4)
    other = tmp_path / "x"
    other.mkdir()
    twin = write_task(other / "sci.jsonl", EXAMPLES[:2])
    with pytest.raises(ValueError, match="more than one task is named sci"):
        load_tasks([tasks[0], twin], None)
    assert [len(t.examples) for t in load_tasks(tasks, 2)] == [2, 2]


def test_eval_section_defaults_and_checks():
    cfg = load_config(None, [])  # a config without an eval section: no tasks, nothing evaluated
    assert cfg.eval == EvalSection() and cfg.eval.tasks == [] and "eval:" in cfg.to_yaml()
    assert load_config(None, ["eval.tasks=[a.jsonl, sciq_rc_0shot]", "eval.limit=50"]).eval.tasks == [
        "a.jsonl",
        "sciq_rc_0shot",
    ]
    for override, message in (
        ("eval.interval=-1", "eval.interval"),
        ("eval.limit=0", "eval.limit"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("eval.tasks=[3]", "eval.tasks[0]"),
        ("eval.tasks=sciq", "eval.tasks"),
        ("eval.task=[x]", "eval.task"),
    ):
        with pytest.raises(ValueError, match=message.replace("[", r"\[")):
            load_config(None, [override])

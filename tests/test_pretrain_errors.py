"""tools/pretrain.py reports a set-up error once, as one line naming the file and the problem (rank 0
prints, the other ranks exit quietly, non-zero), not as a traceback per rank."""

import json
import os
import socket
import subprocess
import sys

import pytest

from training_fixtures import REPO

PRETRAIN = os.path.join(REPO, "tools", "pretrain.py")


def _overrides(save_dir, tokenizer="/nonexistent/tok.model"):
    return [
        f"data.tokenizer={tokenizer}",
        f"train.save_dir={save_dir}",
        "train.device=cpu",
        "data.blend=[1, /nonexistent/arxiv_text_document]",
        "train.train_steps=4",
        "optim.warmup_steps=1",
    ]


def _run(cmd):
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=240, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    return done.returncode, done.stdout, done.stderr


def _ours(stderr):
    """The workers' lines: torchrun's own failure block (its agent's log and traceback) left out."""
    block = stderr.find('Traceback (most recent call last):\n  File "<frozen runpy>"')
    return [
        line
        for line in (stderr if block < 0 else stderr[:block]).splitlines()
        if line.strip() and "torch/distributed/elastic" not in line
    ]


def test_one_process_one_line(tmp_path):
    rc, out, err = _run([sys.executable, PRETRAIN, *_overrides(tmp_path / "run")])
    assert rc == 2 and out == ""
    assert err.splitlines() == ["error: /nonexistent/tok.model: SentencePiece model not found"]


@pytest.mark.parametrize("problem", ["missing tokenizer", "save_dir in use"])
def test_two_ranks_one_line(tmp_path, problem):
    save_dir = tmp_path / "run"
    sleeper = None
    if problem == "save_dir in use":
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        save_dir.mkdir()
        (save_dir / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid}))
    try:
        rc, out, err = _run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                PRETRAIN,
                *_overrides(save_dir),
            ]
        )
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
    assert rc != 0
    lines = _ours(err) + [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if problem == "save_dir in use":
        assert f"pid {sleeper.pid} on this host" in lines[0] and "run.lock" in lines[0]
        assert (save_dir / "run.lock").exists()  # still the other run's
    else:
        assert lines[0] == "error: /nonexistent/tok.model: SentencePiece model not found"
        assert not (save_dir / "run.lock").exists()  # released at the failed set-up

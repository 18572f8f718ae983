"""A small real-text training set for the training tests: synthetic papers, a trained tokenizer,
and one `.bin/.idx` of labelled section documents (sidecar `section`), as preprocessing makes."""

import os
import signal
import subprocess
import sys

import numpy as np

from megasci.corpus.synthetic import generate_papers
from megasci.data.indexed_dataset import IndexedDatasetWriter
from megasci.data.sidecar import SidecarWriter
from megasci.tokenizer import SentencePieceTrainConfig, load_tokenizer, train_sentencepiece

PROSE = ["abstract", "introduction", "conclusion"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_training_data(root, papers: int = 80, vocab_size: int = 512) -> dict:
    """{"tokenizer": path, "prefix": dataset prefix, "vocab_size": n}; sections are documents."""
    os.makedirs(root, exist_ok=True)
    records = list(generate_papers(papers, seed=7))
    model = os.path.join(root, "tok.model")
    train_sentencepiece(
        (r["text"] for r in records),
        model,
        SentencePieceTrainConfig(vocab_size=vocab_size, num_threads=2, mined_commands=50),
    )
    tokenizer = load_tokenizer(model)
    prefix = os.path.join(root, "arxiv_text_document")
    sidecar = SidecarWriter(prefix)
    with IndexedDatasetWriter(prefix, dtype=np.uint16) as writer:
        for record in records:
            for span in record["sections"]:
                ids = tokenizer.encode(record["text"][span["start"] : span["end"]])
                if ids:
                    writer.add_document(np.array(ids + [tokenizer.eod_id], dtype=np.uint16))
                    sidecar.add({"id": record["id"], "section": span["label"]})
    sidecar.finalize()
    return {"tokenizer": model, "prefix": prefix, "vocab_size": tokenizer.vocab_size}


def training_overrides(data: dict, save_dir: str, **extra) -> list[str]:
    """A tiny-model, two-stage curriculum run: prose sections first, then everything."""
    values = {
        "model.preset": "tiny",
        "model.overrides": f"{{vocab_size: {data['vocab_size']}}}",
        "data.tokenizer": data["tokenizer"],
        "data.seq_length": 32,
        "data.curriculum": (
            f"[{{name: prose, end_samples: 32, blend: [{{prefix: {data['prefix']}, weight: 1, "
            f"filter: {{section: [{', '.join(PROSE)}]}}}}]}}, "
            f"{{name: all, blend: [{{prefix: {data['prefix']}, weight: 1}}]}}]"
        ),
        "data.split": "[0.9, 0.1, 0.0]",
        "data.eval_samples": 8,
        "data.prefetch": 2,
        "optim.lr": 3e-3,
        "optim.min_lr": 3e-4,
        "optim.warmup_steps": 2,
        "optim.bucket_numel": 20000,
        "train.micro_batch_size": 2,
        "train.global_batch_size": 8,
        "train.train_steps": 8,
        "train.device": "cpu",
        "train.save_dir": save_dir,
        "train.save_interval": 4,
        "train.log_interval": 2,
        "train.eval_interval": 4,
        "train.peak_tflops": 1.0,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def pretrain_command(nproc: int, overrides: list[str]) -> list[str]:
    """tools/pretrain.py under torchrun on this machine, with `nproc` processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        os.path.join(REPO, "tools", "pretrain.py"),
        *overrides,
    ]


def run_pretrain(nproc: int, overrides: list[str], timeout: int = 300, check: bool = True):
    cmd = pretrain_command(nproc, overrides)
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=REPO
    )
    if check:
        assert result.returncode == 0, f"pretrain failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


def kill_tree(pid: int) -> None:
    """SIGKILL to `pid` and every descendant (torchrun starts its workers in their own sessions)."""

    def descendants(p):
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            return []
        return [c for child in children for c in [child, *descendants(child)]]

    for victim in [pid, *descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def pretrain_killed_after_save(nproc: int, overrides: list[str], step: int) -> None:
    """Runs tools/pretrain.py under torchrun and SIGKILLs the whole tree as soon as it reports the
    checkpoint of `step` saved, as a node failure would."""
    cmd = pretrain_command(nproc, overrides)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("saved") and line.rstrip().endswith(f"step_{step:08d}"):
            kill_tree(proc.pid)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-3000:]

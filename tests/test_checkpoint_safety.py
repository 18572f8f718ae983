"""Checkpoints are safe and checked: no file runs code when loaded (weights_only), every file's sha256
is in meta.json and verified, a damaged newest checkpoint falls back to the newest that verifies,
eval/export refuse damaged weights, and a resume with another tokenizer is an error."""

import hashlib
import json
import os
import random
import re

import numpy as np
import pytest
import torch

from checkpoint_fixtures import make_checkpointer, save_at
from megasci.distributed import AdamWConfig, ZeroAdamW
from megasci.model import build_model, get_config
from megasci.training import checkpoint as ckpt
from megasci.training.guard import SpikeGuard

MARKER_ENV = "MEGASCI_TEST_MARKER"


class _Payload:
    """Unpickling this writes a marker file: what a crafted checkpoint would do instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _Tokenizer:
    """A tokenizer with no file to copy (the checkpoint records its identity only)."""

    def files(self):
        return {}

    def __init__(self, sha="ab" * 32):
        self.sha = sha

    def identity(self):
        return {"kind": "test", "sha256": self.sha, "vocab_size": 256}


def _run(save_dir, steps=(2, 4), seed=0, tokenizer=None):
    """A tiny model trained a few optimizer steps, saved at `steps`; its Checkpointer."""
    cfg = get_config("tiny")
    torch.manual_seed(seed)
    model = build_model(cfg)
    optimizer = ZeroAdamW(model, AdamWConfig(lr=1e-2), bucket_numel=5000)
    guard = SpikeGuard(3.0, 0, 5)
    saver = make_checkpointer(
        save_dir, model=model, optimizer=optimizer, guard=guard, tokenizer=tokenizer or _Tokenizer(), model_cfg=cfg
    )
    tokens = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(seed))
    for step in range(1, max(steps, default=0) + 1):
        optimizer.prepare_backward(True)
        loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        norm = optimizer.finish_gradient_sync()
        guard.check(step - 1, float(loss.detach()), float(norm))
        optimizer.step(1e-2, norm)
        if step in steps:
            save_at(saver, step, 8 * step)
    return saver


def _fresh(save_dir, tokenizer=None):
    return _run(save_dir, steps=(), seed=1, tokenizer=tokenizer)


def _rewrite_checksum(path, name):
    """What an attacker who can write the checkpoint also does: meta.json made to match the new file."""
    meta_file = os.path.join(path, ckpt.META_NAME)
    with open(meta_file) as f:
        meta = json.load(f)
    data = open(os.path.join(path, name), "rb").read()
    meta["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    with open(meta_file, "w") as f:
        json.dump(meta, f)


def _resume(save_dir, tokenizer=None):
    start = ckpt.choose_start(str(save_dir), rank=0, world_size=1, global_batch_size=8)
    _fresh(save_dir, tokenizer).load(start)
    return start


def test_meta_records_every_file_and_its_sha256(tmp_path):
    path = _run(tmp_path).last_saved
    files = ckpt.read_meta(path)["files"]
    assert set(files) == {ckpt.MODEL_NAME, ckpt.CONFIG_NAME, ckpt.rank_file_name(0)}
    for name, record in files.items():
        data = open(os.path.join(path, name), "rb").read()
        assert record == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert not any(n.endswith(".sha256") for n in os.listdir(path))  # folded into meta.json
    assert ckpt.checksum_problems(path) == []


def test_a_planted_pickle_payload_is_refused_and_never_runs(tmp_path):
    saver = _run(tmp_path / "run")
    rank_file = os.path.join(saver.last_saved, ckpt.rank_file_name(0))
    marker = str(tmp_path / "payload-ran")
    state = torch.load(rank_file, weights_only=True)
    state["rng"]["payload"] = _Payload(marker)
    torch.save(state, rank_file)
    _rewrite_checksum(saver.last_saved, ckpt.rank_file_name(0))
    with pytest.raises(ckpt.CheckpointError, match=re.escape(rank_file) + ".*refused"):
        _resume(tmp_path / "run")
    assert not os.path.exists(marker)
    # the same payload in model.pt: eval, generate and export load through load_model
    model_file = os.path.join(saver.last_saved, ckpt.MODEL_NAME)
    torch.save({"w": _Payload(marker)}, model_file)
    _rewrite_checksum(saver.last_saved, ckpt.MODEL_NAME)
    with pytest.raises(ckpt.CheckpointError, match=re.escape(model_file) + ".*refused"):
        ckpt.load_model(saver.last_saved)
    assert not os.path.exists(marker)


def test_a_payload_that_breaks_the_checksum_is_skipped_for_the_previous_checkpoint(tmp_path, capsys):
    saver = _run(tmp_path / "run")
    rank_file = os.path.join(saver.last_saved, ckpt.rank_file_name(0))
    marker = str(tmp_path / "payload-ran")
    torch.save({"optimizer": _Payload(marker)}, rank_file)
    start = _resume(tmp_path / "run")
    assert start.step == 2 and not os.path.exists(marker)
    out = capsys.readouterr().out
    assert f"({rank_file}: " in out and "falling back" in out


def test_a_checkpoint_from_before_safe_loading_fails_naming_the_file(tmp_path):
    """The old per-rank format pickled numpy's RNG state: refused (not unpickled), with the way out."""
    saver = _run(tmp_path / "run", steps=(2,))
    path = saver.last_saved
    rank_file = os.path.join(path, ckpt.rank_file_name(0))
    old = torch.load(rank_file, weights_only=True)
    old["rng"] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.save(old, rank_file)
    with open(os.path.join(path, ckpt.META_NAME)) as f:
        meta = json.load(f)
    del meta["files"]  # old checkpoints carried no checksums
    with open(os.path.join(path, ckpt.META_NAME), "w") as f:
        json.dump(meta, f)
    with pytest.raises(ckpt.CheckpointError, match=re.escape(rank_file) + ".*refused.*train.init_from"):
        _resume(tmp_path / "run")
    model, _ = ckpt.load_model(path)  # its weights still load (weights_only), with a warning
    assert model.cfg == get_config("tiny")


@pytest.mark.parametrize("damage", ["truncated", "empty", "bit flip"])
def test_a_damaged_newest_checkpoint_is_named_and_resume_falls_back(tmp_path, capsys, damage):
    saver = _run(tmp_path / "run")
    model_file = os.path.join(saver.last_saved, ckpt.MODEL_NAME)
    data = bytearray(open(model_file, "rb").read())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = b""
    else:
        data[len(data) // 2] ^= 0x10  # inside the tensor data: torch.load alone would not notice
    open(model_file, "wb").write(bytes(data))
    start = _resume(tmp_path / "run")
    assert start.step == 2 and start.path.endswith("step_00000002")
    out = capsys.readouterr().out
    assert f"checkpoint {saver.last_saved} fails verification ({model_file}:" in out
    assert "resuming from" in out and "step_00000002" in out
    with pytest.raises(ckpt.CheckpointError, match=re.escape(model_file)):
        ckpt.load_model(saver.last_saved)


def test_no_checkpoint_that_verifies_is_an_error(tmp_path):
    saver = _run(tmp_path / "run", steps=(2,))
    open(os.path.join(saver.last_saved, ckpt.rank_file_name(0)), "wb").close()
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint verifies"):
        _resume(tmp_path / "run")


def test_a_bit_flip_in_the_tensor_data_is_invisible_without_the_checksum(tmp_path):
    """Why checksums: the flipped file loads and gives other weights, silently."""
    saver = _run(tmp_path / "run", steps=(2,))
    model_file = os.path.join(saver.last_saved, ckpt.MODEL_NAME)
    before = torch.load(model_file, weights_only=True)
    data = bytearray(open(model_file, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(model_file, "wb").write(bytes(data))
    after = torch.load(model_file, weights_only=True)
    assert not all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ckpt.CheckpointError, match="sha256 differs"):
        ckpt.load_model(saver.last_saved)


def test_resuming_with_another_tokenizer_is_an_error(tmp_path):
    _run(tmp_path / "run", steps=(2,))
    with pytest.raises(ckpt.CheckpointError, match="another tokenizer"):
        _resume(tmp_path / "run", tokenizer=_Tokenizer("cd" * 32))


def test_the_export_refuses_corrupted_weights(tmp_path):
    """export_checkpoint checks its output against the checkpoint it loaded; a flipped model.pt used to
    load fine and pass that check. Now the load fails, naming the file."""
    pytest.importorskip("transformers")
    from megasci.corpus.synthetic import generate_papers
    from megasci.export_hf import export_checkpoint
    from megasci.tokenizer import SentencePieceTokenizer, SentencePieceTrainConfig, train_sentencepiece

    train_sentencepiece(
        [p["text"] for p in generate_papers(20, seed=0)],
        str(tmp_path / "tok.model"),
        SentencePieceTrainConfig(vocab_size=512, num_threads=1, mined_commands=20),
    )
    tok = SentencePieceTokenizer(str(tmp_path / "tok.model"))
    cfg = get_config("tiny", vocab_size=tok.vocab_size)
    model = build_model(cfg, dtype=torch.float32)
    import dataclasses

    ckpt.save_checkpoint(
        str(tmp_path / "ckpt"),
        10,
        rank=0,
        rank_state={},
        model_state=model.state_dict(),
        meta={"model_config": dataclasses.asdict(cfg), "tokenizer": tok.identity()},
        tokenizer=tok,
    )
    model_file = os.path.join(tmp_path, "ckpt", "step_00000010", ckpt.MODEL_NAME)
    data = bytearray(open(model_file, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(model_file, "wb").write(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=re.escape(model_file) + ": sha256 differs"):
        export_checkpoint(str(tmp_path / "ckpt"), str(tmp_path / "hf"))
    assert not os.path.exists(tmp_path / "hf")

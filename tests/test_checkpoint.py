"""Checkpoints: directories made complete before they are named, pruning, and the Checkpointer's
save and resume of the model, optimizer shards, spike guard, data position and RNG streams."""

import os
import random

import numpy as np
import pytest
import torch

from checkpoint_fixtures import Position, make_checkpointer, save_at
from megasci.distributed import AdamWConfig, ZeroAdamW
from megasci.model import build_model, get_config
from megasci.tokenizer import load_tokenizer
from megasci.training import checkpoint as ckpt
from megasci.training.guard import SpikeGuard


def test_interrupted_checkpoint_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    model_state = {"w": torch.arange(4.0)}
    meta = {"model_config": {}, "consumed_samples": 8}
    ckpt.save_checkpoint(str(tmp_path), 1, rank=0, rank_state={"x": 1}, model_state=model_state, meta=meta)
    real_save = torch.save

    def crash_on_model(obj, path, *args, **kwargs):
        if os.path.basename(str(getattr(path, "name", path))).startswith(ckpt.MODEL_NAME):  # or its temp file
            real_save(obj, path, *args, **kwargs)
            raise OSError("disk full")  # crash after the model file, before meta.json
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", crash_on_model)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(
            str(tmp_path), 2, rank=0, rank_state={"x": 2}, model_state={"w": torch.zeros(4)}, meta=meta
        )
    monkeypatch.setattr(torch, "save", real_save)
    assert os.path.isdir(tmp_path / "step_00000002.tmp")
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("step_00000001")
    assert ckpt.load_rank_state(ckpt.latest_checkpoint(str(tmp_path)), 0) == {"x": 1}
    # the pointer lost too: the newest complete directory is still found, never the .tmp one
    os.remove(tmp_path / "latest")
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("step_00000001")
    ckpt.save_checkpoint(str(tmp_path), 2, rank=0, rank_state={"x": 2}, model_state={"w": torch.zeros(4)}, meta=meta)
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("step_00000002")
    assert not os.path.exists(tmp_path / "step_00000002.tmp")


def test_keep_last_never_deletes_the_new_checkpoint_after_a_rewind(tmp_path):
    """`latest` rewound to step 100 while step 200 exists: saving step 150 with keep_last=1 keeps 150."""

    def save(step, keep_last):
        ckpt.save_checkpoint(
            str(tmp_path), step, rank=0, rank_state={}, model_state={}, meta={"s": step}, keep_last=keep_last
        )

    save(100, None)
    save(200, None)
    (tmp_path / "latest").write_text("step_00000100\n")  # an operator rewinds past a loss spike
    save(150, 1)
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("step_00000150")
    assert not (tmp_path / "step_00000100").exists()  # older than the new one: pruned
    save(160, 2)
    assert [os.path.basename(p) for p in ckpt.complete_checkpoints(str(tmp_path))] == [
        "step_00000150",
        "step_00000160",
        "step_00000200",
    ]


class _Tokenizer:
    """A tokenizer with no file to copy (the checkpoint records its identity only)."""

    def files(self):
        return {}

    def identity(self):
        return {"kind": "test", "sha256": "ab" * 32, "vocab_size": 256}


def _trained(seed):
    """A tiny model and its ZeroAdamW after two steps, and a guard that has seen them."""
    cfg = get_config("tiny")
    torch.manual_seed(seed)
    model = build_model(cfg)
    optimizer = ZeroAdamW(model, AdamWConfig(lr=1e-2), bucket_numel=5000)
    guard = SpikeGuard(3.0, 0, 5)
    tokens = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(seed))
    for step in range(2):
        optimizer.prepare_backward(True)
        loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        norm = optimizer.finish_gradient_sync()
        guard.check(step, float(loss.detach()), float(norm))
        optimizer.step(1e-2, norm)
    return cfg, model, optimizer, guard


def _checkpointer(save_dir, cfg, model, optimizer, guard):
    position = Position(stage_of=lambda i: 0 if i < 8 else 1, stages=("prose", "all"))
    return make_checkpointer(
        save_dir,
        model=model,
        optimizer=optimizer,
        guard=guard,
        tokenizer=_Tokenizer(),
        model_cfg=cfg,
        position=position,
    )


def test_checkpointer_resume_restores_what_save_wrote(tmp_path):
    cfg, model, optimizer, guard = _trained(seed=0)
    saver = _checkpointer(tmp_path, cfg, model, optimizer, guard)
    assert saver.latest() is None
    torch.manual_seed(42)
    np.random.seed(42)
    random.seed(42)
    path = save_at(saver, 2, 16)
    expected_draws = (torch.rand(3), np.random.rand(3), random.random())
    meta = ckpt.read_meta(path)
    assert (meta["step"], meta["data"], meta["dp_size"]) == (2, {"consumed_samples": 16, "stage": "all"}, 1)
    assert meta["spike_guard"] == guard.state_dict() and ckpt.model_config_from_meta(meta) == cfg

    _, other_model, other_optimizer, other_guard = _trained(seed=1)  # different weights, moments and history
    loader = _checkpointer(tmp_path, cfg, other_model, other_optimizer, other_guard)
    assert loader.latest() == path
    assert loader.load(path)["step"] == 2
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other_model.state_dict().values()))
    assert other_guard.state_dict() == guard.state_dict()
    assert other_optimizer.step_count == optimizer.step_count
    for mine, theirs in zip(optimizer.buckets, other_optimizer.buckets):
        assert torch.equal(mine.master, theirs.master) and torch.equal(mine.exp_avg_sq, theirs.exp_avg_sq)
    draws = (torch.rand(3), np.random.rand(3), random.random())  # the streams continue from the save
    assert torch.equal(draws[0], expected_draws[0]) and np.array_equal(draws[1], expected_draws[1])
    assert draws[2] == expected_draws[2]


class _Counter:
    """A component the checkpointer has never heard of: shared, JSON state."""

    def __init__(self, value=0):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


class _PerRankTensor:
    """A per-rank component holding a tensor, loading its own rank's state."""

    per_rank = True

    def __init__(self, fill):
        self.tensor = torch.full((3,), float(fill))

    def state_dict(self):
        return {"tensor": self.tensor}

    def load_state_dict(self, saved):
        self.tensor = saved.own()["tensor"].clone()


def test_a_new_component_is_saved_and_loaded_with_no_edit_to_the_checkpointer(tmp_path):
    cfg, model, optimizer, guard = _trained(seed=0)
    saver = _checkpointer(tmp_path, cfg, model, optimizer, guard)
    saver.components.update(counter=_Counter(7), tensor=_PerRankTensor(2.5))
    path = save_at(saver, 2, 16)
    assert ckpt.read_meta(path)["counter"] == {"value": 7}
    _, other_model, other_optimizer, other_guard = _trained(seed=1)
    loader = _checkpointer(tmp_path, cfg, other_model, other_optimizer, other_guard)
    loader.components.update(counter=_Counter(), tensor=_PerRankTensor(0))
    loader.load(path)
    assert loader.components["counter"].value == 7
    assert torch.equal(loader.components["tensor"].tensor, torch.full((3,), 2.5))


def test_a_huggingface_tokenizer_is_copied_as_itself_and_loads_back(tmp_path):
    """Each tokenizer names its own files: a tokenizer.json travels as tokenizer.json with its config,
    never under the SentencePiece name `tokenizer.model` (which generate and export would open as
    SentencePiece and fail)."""
    tokenizers = pytest.importorskip("tokenizers")
    words = ["<unk>", "<s>", "</s>", "a", "b", "c"]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    source = tmp_path / "hf"
    source.mkdir()
    tok.save(str(source / "tokenizer.json"))
    (source / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": "</s>"}')
    hf = load_tokenizer(str(source / "tokenizer.json"))
    path = ckpt.save_checkpoint(
        str(tmp_path / "run"),
        1,
        rank=0,
        rank_state={},
        model_state={"w": torch.zeros(2)},
        meta={"tokenizer": hf.identity()},
        tokenizer=hf,
    )
    assert ckpt.TOKENIZER_NAME not in os.listdir(path)
    copied = ckpt.checkpoint_tokenizer_path(path)
    assert os.path.basename(copied) == "tokenizer.json"
    again = load_tokenizer(copied)
    assert again.identity()["sha256"] == hf.identity()["sha256"] and again.encode("a b c") == hf.encode("a b c")
    assert (again.bos_id, again.eos_id) == (1, 2)


def test_a_checkpoint_without_a_components_state_is_a_clear_error(tmp_path):
    cfg, model, optimizer, guard = _trained(seed=0)
    saver = _checkpointer(tmp_path, cfg, model, optimizer, guard)
    path = save_at(saver, 2, 16)
    saver.components["counter"] = _Counter()
    with pytest.raises(ckpt.CheckpointError, match=r"meta.json: no state for the run's 'counter' component"):
        saver.load(path)

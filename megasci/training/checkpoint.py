"""Checkpoints: one directory per step, made complete before it gets its final name.

    <save_dir>/
      latest                      name of the newest complete checkpoint, written last (atomically)
      step_00000100/
        meta.json                 step, consumed samples, curriculum stage, data-parallel size,
                                  model config, tokenizer identity, training config (as a dict)
        config.yaml               the training config as run (readable, reusable with --config)
        model.pt                  model state dict (our parameter names, training dtype), rank 0
        tokenizer.model           copy of the training tokenizer, so a checkpoint is self-contained
        tokenizer.meta.json       with its .meta.json when it has one (special ids, chat template)
        rank_00000.pt ...         each rank's own state: its optimizer shard, RNG states, scheduler

Every rank writes into `step_XXXXXXXX.tmp` (on a filesystem all ranks share); after a barrier,
rank 0 writes the shared files, renames the directory to its final name, updates `latest` and
deletes checkpoints beyond the newest `keep_last`. A crash at any point leaves at worst a `.tmp`
directory, which is never read and is removed by the next save of the same step; the previous
checkpoint and `latest` stay intact. Readers resolve `latest`, falling back to the newest
complete `step_*` directory when `latest` is missing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from megasci.distributed import barrier, print_rank0
from megasci.model import ModelConfig, build_model
from megasci.tokenizer.sp_tokenizer import meta_path as tokenizer_meta_path
from megasci.utils.io import atomic_output, atomic_text_output

_STEP_DIR = re.compile(r"^step_(\d{8})$")
META_NAME, MODEL_NAME, CONFIG_NAME, TOKENIZER_NAME = "meta.json", "model.pt", "config.yaml", "tokenizer.model"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_file_name(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def complete_checkpoints(save_dir: str) -> list[str]:
    """Complete checkpoint directories under `save_dir`, oldest first."""
    if not os.path.isdir(save_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(save_dir) if (m := _STEP_DIR.match(name))
             and os.path.isfile(os.path.join(save_dir, name, META_NAME))]
    return [os.path.join(save_dir, name) for _, name in sorted(found)]


def latest_checkpoint(save_dir: str) -> str | None:
    """The checkpoint `latest` names, else the newest complete one, else None."""
    pointer = os.path.join(save_dir, "latest")
    if os.path.isfile(pointer):
        with open(pointer, encoding="utf-8") as f:
            path = os.path.join(save_dir, f.read().strip())
        if os.path.isfile(os.path.join(path, META_NAME)):
            return path
    complete = complete_checkpoints(save_dir)
    return complete[-1] if complete else None


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory from either itself or the save directory holding it."""
    if os.path.isfile(os.path.join(path, META_NAME)):
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path}: neither a checkpoint (no {META_NAME}) nor a save directory holding one")
    return found


def read_meta(path: str) -> dict:
    with open(os.path.join(resolve_checkpoint(path), META_NAME), encoding="utf-8") as f:
        return json.load(f)


def model_config_from_meta(meta: dict) -> ModelConfig:
    return ModelConfig(**meta["model_config"])


def load_model(path: str, device="cpu", dtype: torch.dtype | None = None):
    """(model, meta) from a checkpoint or save directory; `dtype` defaults to the training dtype."""
    path = resolve_checkpoint(path)
    meta = read_meta(path)
    cfg = model_config_from_meta(meta)
    model = build_model(cfg, device=device, dtype=dtype)
    state = torch.load(os.path.join(path, MODEL_NAME), map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model, meta


def checkpoint_tokenizer_path(path: str) -> str | None:
    """The tokenizer copied into the checkpoint, if any."""
    candidate = os.path.join(resolve_checkpoint(path), TOKENIZER_NAME)
    return candidate if os.path.isfile(candidate) else None


def load_rank_state(path: str, rank: int) -> dict:
    # mmap: re-sharding reads every rank's file on every rank; only the pages used are read
    return torch.load(os.path.join(path, rank_file_name(rank)), map_location="cpu", weights_only=False, mmap=True)


def _step_of(path: str) -> int:
    return int(_STEP_DIR.match(os.path.basename(path)).group(1))


def _save_synced(obj, path: str) -> None:
    """torch.save, on disk (fsynced) before the directory can be renamed to its final name."""
    with atomic_output(path, "wb") as f:
        torch.save(obj, f)


def save_checkpoint(save_dir: str, step: int, *, rank: int, rank_state: dict, model_state: dict | None = None,
                    meta: dict | None = None, config_yaml: str | None = None, tokenizer_path: str | None = None,
                    keep_last: int | None = None, barrier: Callable[[], None] = lambda: None) -> str:
    """Collective: every rank calls it with its `rank_state`; rank 0 also passes the shared parts.

    Returns the final checkpoint path. `keep_last` None or 0 keeps everything.
    """
    final = os.path.join(save_dir, step_dir_name(step))
    tmp = final + ".tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save of this step that crashed
        os.makedirs(tmp, exist_ok=True)  # rmtree may leave a network filesystem's .nfs* files behind
    barrier()
    _save_synced(rank_state, os.path.join(tmp, rank_file_name(rank)))
    barrier()
    if rank == 0:
        if model_state is None or meta is None:
            raise ValueError("rank 0 must pass model_state and meta")
        _save_synced(model_state, os.path.join(tmp, MODEL_NAME))
        if config_yaml is not None:
            with atomic_text_output(os.path.join(tmp, CONFIG_NAME)) as f:
                f.write(config_yaml)
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, os.path.join(tmp, TOKENIZER_NAME))
            if os.path.isfile(tokenizer_meta_path(tokenizer_path)):  # special ids and the chat template travel too
                shutil.copyfile(tokenizer_meta_path(tokenizer_path), tokenizer_meta_path(os.path.join(tmp, TOKENIZER_NAME)))
        with atomic_output(os.path.join(tmp, META_NAME), "w") as f:
            json.dump({**meta, "step": step}, f, indent=2, sort_keys=True)  # last: marks the directory complete
        if os.path.exists(final):  # an older save of the same step (e.g. after a rewind): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        with atomic_text_output(os.path.join(save_dir, "latest")) as f:
            f.write(step_dir_name(step) + "\n")
        if keep_last:  # older than this step only: never this one, nor a newer one left by a rewind
            older = [p for p in complete_checkpoints(save_dir) if _step_of(p) < step]
            for old in older[:max(0, len(older) - (keep_last - 1))]:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def rng_state() -> dict:
    """Every random stream of this process, so that a resumed rank draws what it would have."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    """The training run's checkpoints: what goes into one (model, every rank's optimizer shard and
    RNG streams, the spike guard, the data position and curriculum stage) and how a run resumes.

    Collective: every rank calls `resume` and `save` together."""

    def __init__(self, save_dir: str, *, model, optimizer, guard, data, tokenizer, model_cfg: ModelConfig,
                 train_cfg, rank: int, world_size: int, device, keep_last: int | None):
        self.save_dir, self.model, self.optimizer, self.guard, self.data = save_dir, model, optimizer, guard, data
        self.tokenizer, self.model_cfg, self.train_cfg = tokenizer, model_cfg, train_cfg
        self.rank, self.world_size, self.device, self.keep_last = rank, world_size, device, keep_last

    def latest(self) -> str | None:
        """The checkpoint to resume from: rank 0's answer for every rank, even where a shared
        filesystem's caches disagree."""
        found = latest_checkpoint(self.save_dir)
        if self.world_size > 1:
            chosen = [found]
            dist.broadcast_object_list(chosen, src=0)
            found = chosen[0]
        return found

    def resume(self, path: str) -> dict:
        """Loads the checkpoint at `path` into the model, optimizer, guard and (same ranks) RNG
        streams; returns its meta. A different number of ranks re-shards the optimizer state."""
        meta = read_meta(path)
        self.model.load_state_dict(torch.load(os.path.join(path, MODEL_NAME), map_location=self.device,
                                              weights_only=True))
        own = load_rank_state(path, self.rank) if meta["dp_size"] == self.world_size else None
        self.optimizer.load_state_dict(lambda r: own["optimizer"] if own is not None and r == self.rank
                                       else load_rank_state(path, r)["optimizer"], meta["dp_size"])
        self.guard.load_state_dict(meta["spike_guard"])
        if own is not None:  # same ranks: each gets its own RNG streams back
            set_rng_state(own["rng"])
        if meta["tokenizer"].get("sha256") != self.tokenizer.identity().get("sha256"):
            print_rank0(f"warning: {self.train_cfg.data.tokenizer} differs from the tokenizer the checkpoint "
                        f"was trained with")
        print_rank0(f"resumed from {path}: step {meta['step']}, {meta['consumed_samples']:,} samples consumed "
                    f"(saved with {meta['dp_size']} rank(s), now {self.world_size})")
        return meta

    def load_weights(self, path: str) -> str:
        """Fine-tuning's start: the weights of the checkpoint at `path` (or the newest in a save dir)
        and nothing else (no optimizer state, step, data position or guard); returns the checkpoint.
        The model and the tokenizer must be the ones it was trained with."""
        path = resolve_checkpoint(path)
        meta = read_meta(path)
        if model_config_from_meta(meta) != self.model_cfg:
            raise ValueError(f"train.init_from {path}: its model config {meta['model_config']} is not this run's "
                             f"{dataclasses.asdict(self.model_cfg)}")
        if meta["tokenizer"].get("sha256") != self.tokenizer.identity().get("sha256"):
            raise ValueError(f"train.init_from {path} was trained with another tokenizer than "
                             f"{self.train_cfg.data.tokenizer}; its token ids would mean other things")
        self.model.load_state_dict(torch.load(os.path.join(path, MODEL_NAME), map_location=self.device,
                                              weights_only=True))
        print_rank0(f"initialised the weights from {path} (step {meta['step']}); optimizer, schedule and step start fresh")
        return path

    def save(self, step: int, consumed_samples: int) -> str:
        """Writes the checkpoint of `step`, after `consumed_samples` samples; returns its path."""
        self.optimizer.wait_for_parameters()
        meta = {"consumed_samples": consumed_samples, "dp_size": self.world_size,
                "model_config": dataclasses.asdict(self.model_cfg), "tokenizer": self.tokenizer.identity(),
                "train_config": self.train_cfg.to_dict(), "spike_guard": self.guard.state_dict(),
                "stage": self.data.stages[self.data.stage_of(max(0, consumed_samples - 1))].name}
        rank0 = self.rank == 0
        model_state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()} if rank0 else None
        path = save_checkpoint(self.save_dir, step, rank=self.rank,
                               rank_state={"optimizer": self.optimizer.state_dict(), "rng": rng_state()},
                               model_state=model_state, meta=meta, config_yaml=self.train_cfg.to_yaml(),
                               tokenizer_path=getattr(self.tokenizer, "path", None), keep_last=self.keep_last,
                               barrier=barrier)
        print_rank0(f"saved {path}")
        return path

"""Checkpoints: one directory per step, made complete before it gets its final name.

    <save_dir>/
      latest                      name of the newest complete checkpoint, written last (atomically)
      step_00000100/
        meta.json                 step, consumed samples, curriculum stage, data-parallel size,
                                  model config, tokenizer identity, training config (as a dict)
        config.yaml               the training config as run (readable, reusable with --config)
        model.pt                  model state dict (our parameter names, training dtype), rank 0
        tokenizer.model           copy of the training tokenizer, so a checkpoint is self-contained
        rank_00000.pt ...         each rank's own state: its optimizer shard, RNG states, scheduler

Every rank writes into `step_XXXXXXXX.tmp` (on a filesystem all ranks share); after a barrier,
rank 0 writes the shared files, renames the directory to its final name, updates `latest` and
deletes checkpoints beyond the newest `keep_last`. A crash at any point leaves at worst a `.tmp`
directory, which is never read and is removed by the next save of the same step; the previous
checkpoint and `latest` stay intact. Readers resolve `latest`, falling back to the newest
complete `step_*` directory when `latest` is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Callable

import torch

from megasci.model import ModelConfig, build_model
from megasci.utils.io import atomic_text_output

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
    """torch.save, flushed to disk before the directory can be renamed to its final name."""
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


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
            with open(os.path.join(tmp, CONFIG_NAME), "w", encoding="utf-8") as f:
                f.write(config_yaml)
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, os.path.join(tmp, TOKENIZER_NAME))
        with open(os.path.join(tmp, META_NAME), "w", encoding="utf-8") as f:
            json.dump({**meta, "step": step}, f, indent=2, sort_keys=True)  # last: marks the directory complete
            f.flush()
            os.fsync(f.fileno())
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

"""Checkpoints: one directory per step, made complete before it gets its final name, verified on load.

    <save_dir>/
      run.lock                    host and pid of the run writing here (lock.py)
      latest                      name of the newest complete checkpoint, written last (atomically)
      step_00000100/
        meta.json                 step, consumed samples, curriculum stage, data-parallel size,
                                  model config, tokenizer identity, training config (as a dict),
                                  spike guard, and `files`: the sha256 and size of every other file
        config.yaml               the training config as run (readable, reusable with --config)
        model.pt                  model state dict (our parameter names, training dtype), rank 0
        tokenizer.model           copy of the training tokenizer, so a checkpoint is self-contained
        tokenizer.meta.json       with its .meta.json when it has one (special ids, chat template)
        rank_00000.pt ...         each rank's own state: its optimizer shard, RNG states
      step_00000060.rolled-back   a checkpoint abandoned by a rollback (train.resume_step); never read

Every rank writes into `step_XXXXXXXX.tmp` (on a filesystem all ranks share), hashing its file
while writing it; after a barrier, rank 0 writes the shared files, records every file's sha256 in
meta.json (written last: it marks the directory complete), renames the directory to its final name,
updates `latest` and deletes checkpoints beyond the newest `keep_last` (never the one pinned as the
last saved before a skip streak). A crash at any point leaves at worst a `.tmp` directory, which is
never read and is removed by the next save of the same step.

Loading is safe and checked: every file is read with `torch.load(weights_only=True)` (tensors and
plain containers only, so a crafted file cannot run code), and checked against meta.json's sha256
first. A resume falls back from a damaged newest checkpoint to the newest one that verifies, saying
which file failed; `load_model` (eval, generate, export) refuses a damaged model.pt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import random
import re
import shutil
import sys
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist

from megasci.distributed import barrier, print_rank0
from megasci.model import ModelConfig, build_model, hf_import
from megasci.tokenizer.sp_tokenizer import meta_path as tokenizer_meta_path
from megasci.utils.io import atomic_output, atomic_text_output, file_sha256

_STEP_DIR = re.compile(r"^step_(\d{8})$")
META_NAME, MODEL_NAME, CONFIG_NAME, TOKENIZER_NAME = "meta.json", "model.pt", "config.yaml", "tokenizer.model"
ROLLED_BACK_SUFFIX = ".rolled-back"
_SUM_SUFFIX = ".sha256"  # a rank's checksum of its own file, folded into meta.json by rank 0


class CheckpointError(ValueError):
    """A checkpoint file that is damaged, unsafe to unpickle, or not this run's; the message names it."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_file_name(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def step_of(path: str) -> int:
    return int(_STEP_DIR.match(os.path.basename(path)).group(1))


def complete_checkpoints(save_dir: str) -> list[str]:
    """Complete checkpoint directories under `save_dir`, oldest first."""
    if not os.path.isdir(save_dir):
        return []
    found = [
        (int(m.group(1)), name)
        for name in os.listdir(save_dir)
        if (m := _STEP_DIR.match(name)) and os.path.isfile(os.path.join(save_dir, name, META_NAME))
    ]
    return [os.path.join(save_dir, name) for _, name in sorted(found)]


def latest_checkpoint(save_dir: str) -> str | None:
    """The checkpoint `latest` names, else the newest complete one, else None."""
    pointer = os.path.join(save_dir, "latest")
    if os.path.isfile(pointer):
        with open(pointer, encoding="utf-8") as f:
            name = f.read().strip()
        path = os.path.join(save_dir, name)
        if _STEP_DIR.match(name) and os.path.isfile(os.path.join(path, META_NAME)):
            return path
    complete = complete_checkpoints(save_dir)
    return complete[-1] if complete else None


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory from either itself or the save directory holding it; a HuggingFace model
    directory (config.json) is its own checkpoint, read through megasci/model/hf_import.py."""
    if os.path.isfile(os.path.join(path, META_NAME)) or hf_import.is_hf_model_dir(path):
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path}: neither a checkpoint (no {META_NAME}) nor a save directory holding one")
    return found


def read_meta(path: str) -> dict:
    path = resolve_checkpoint(path)
    if hf_import.is_hf_model_dir(path):
        return hf_checkpoint_meta(path)
    file = os.path.join(path, META_NAME)
    try:
        with open(file, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{file}: unreadable ({error})") from None
    if not isinstance(meta, dict) or "step" not in meta:
        raise CheckpointError(f"{file}: not a checkpoint's metadata (no step)")
    return meta


def hf_checkpoint_meta(hf_dir: str) -> dict:
    """What a checkpoint's meta.json would say of a HuggingFace model directory as a step-0 import: its model
    config and its tokenizer's identity (megasci/model/hf_import.py reads them); the shards the index lists
    are checked to exist. No weight is read."""
    from megasci.tokenizer import load_tokenizer

    cfg = hf_import.hf_model_config(hf_dir)
    hf_import.weight_files(hf_dir)
    tokenizer_path = hf_import.tokenizer_file(hf_dir)
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise hf_import.HFImportError(
            f"{tokenizer_path}: {tokenizer.vocab_size} tokens, more than vocab_size "
            f"{cfg.vocab_size} in {hf_import.config_path(hf_dir)}"
        )
    return {
        "step": 0,
        "data": {"consumed_samples": 0},
        "dp_size": 1,
        "model_config": dataclasses.asdict(cfg),
        "tokenizer": tokenizer.identity(),
        "imported_from": os.path.abspath(hf_dir),
    }


def load_hf_model(hf_dir: str, device="cpu", dtype: torch.dtype | None = None):
    """(model, meta) from a HuggingFace model directory, as `load_model` gives them from a checkpoint: the one
    loading path of `train.init_from`, the evaluation tools, generation, export and tools/import_hf.py."""
    meta = hf_checkpoint_meta(hf_dir)
    cfg = model_config_from_meta(meta)
    state = hf_import.load_hf_state_dict(hf_dir, cfg)
    model = build_model(cfg, device=device, dtype=dtype)
    model.load_state_dict(state)
    return model, meta


def model_config_from_meta(meta: dict) -> ModelConfig:
    """The model config a checkpoint records; `checkpointing`, training policy that older checkpoints
    recorded with the model, is not part of it and is dropped."""
    return ModelConfig(**{k: v for k, v in meta["model_config"].items() if k != "checkpointing"})


# ---- safe loading and checksums ----------------------------------------------------------------


def safe_load(file: str, **kwargs):
    """`torch.load(weights_only=True)`: tensors and plain containers only, so loading cannot run code.
    Anything else (a crafted pickle, or a per-rank file from before checkpoints held only such
    values) is refused with an error naming the file."""
    try:
        return torch.load(file, weights_only=True, **kwargs)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)|Unsupported (?:global|operand)[^\n]*", str(error))
        what = f" ({found.group(0)})" if found else ""
        raise CheckpointError(
            f"{file}: refused: it holds Python objects beyond tensors and plain containers{what}, and unpickling "
            f"them could run code. It is either altered or written by a megasci from before checkpoints were "
            f"made safe (numpy's RNG state pickled); its weights alone can still start a run through "
            f"train.init_from={os.path.dirname(file)}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{file}: unreadable ({first})") from None


class _HashingWriter(io.RawIOBase):
    """Passes writes through to `file` while hashing them, so a checksum costs no second read."""

    def __init__(self, file):
        self.file, self.digest, self.size = file, hashlib.sha256(), 0

    @property
    def name(self):
        return self.file.name

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def _save_synced(obj, path: str) -> dict:
    """torch.save, on disk (fsynced) before the directory can be renamed; returns {sha256, bytes}."""
    with atomic_output(path, "wb") as f:
        writer = _HashingWriter(f)
        torch.save(obj, writer)
    return {"sha256": writer.digest.hexdigest(), "bytes": writer.size}


def _file_record(path: str) -> dict:
    return {"sha256": file_sha256(path), "bytes": os.path.getsize(path)}


def checksum_problems(path: str, names=None, meta: dict | None = None) -> list[str]:
    """What is wrong with the files `names` (default: all) of checkpoint `path` against meta.json's
    sha256 and size, one "file: problem" each; [] when they verify."""
    meta = read_meta(path) if meta is None else meta
    recorded = meta.get("files")
    if recorded is None:
        return []  # written before checksums: nothing to check against (callers say so)
    problems = []
    for name in sorted(recorded) if names is None else names:
        file = os.path.join(path, name)
        want = recorded.get(name)
        if want is None:
            problems.append(f"{file}: not listed in {META_NAME}")
        elif not os.path.isfile(file):
            problems.append(f"{file}: missing")
        elif (size := os.path.getsize(file)) != want["bytes"]:
            problems.append(
                f"{file}: {'empty' if size == 0 else f'{size:,} bytes'}, {META_NAME} records "
                f"{want['bytes']:,} (truncated or overwritten)"
            )
        elif file_sha256(file) != want["sha256"]:
            problems.append(f"{file}: sha256 differs from the one {META_NAME} records (the file is damaged)")
    return problems


def verify_checkpoint(path: str, names=None) -> dict:
    """meta.json of `path` after checking `names` (default: every file); raises CheckpointError naming
    each damaged file. A checkpoint from before checksums is loaded with a warning. A HuggingFace directory
    has no checksums: its config, tokenizer and shards are checked as the import checks them."""
    meta = read_meta(path)
    if hf_import.is_hf_model_dir(path):
        return meta
    if "files" not in meta:
        print(
            f"warning: {path}: written before checkpoints carried checksums; its files are not verified",
            file=sys.stderr,
        )
    problems = checksum_problems(path, names, meta)
    if problems:
        raise CheckpointError("; ".join(problems))
    return meta


def position_fields(cfg: ModelConfig) -> dict:
    """The fields a continuation may change without touching a weight's shape: RoPE's base and scaling
    and the maximum length (context extension, issue 20: LLaMA-2-Long raises the base at continuation)."""
    return {"rope_theta": cfg.rope_theta, "rope_scaling": cfg.rope_scaling, "max_seq_len": cfg.max_seq_len}


def load_model(path: str, device="cpu", dtype: torch.dtype | None = None):
    """(model, meta) from a checkpoint or save directory, model.pt verified against its checksum, or from
    a HuggingFace model directory; `dtype` defaults to the training dtype."""
    path = resolve_checkpoint(path)
    if hf_import.is_hf_model_dir(path):
        return load_hf_model(path, device=device, dtype=dtype)
    meta = verify_checkpoint(path, [MODEL_NAME])
    cfg = model_config_from_meta(meta)
    model = build_model(cfg, device=device, dtype=dtype)
    model.load_state_dict(safe_load(os.path.join(path, MODEL_NAME), map_location=device))
    return model, meta


def grow_vocab(state: dict, cfg: ModelConfig) -> dict:
    """`state` with its input and output embeddings grown to `cfg.vocab_size` rows, each new row the mean
    of the existing rows of its matrix (computed in float32), the common initialisation for added tokens;
    a tied model's output projection is its grown embedding."""
    grown = dict(state)
    for name in ("embed.weight", "output.weight"):
        if name not in state or (name == "output.weight" and cfg.tie_embeddings):
            continue
        old = state[name]
        mean = old.float().mean(dim=0, keepdim=True).to(old.dtype)
        grown[name] = torch.cat([old, mean.expand(cfg.vocab_size - old.shape[0], -1)], dim=0)
    if cfg.tie_embeddings:
        grown["output.weight"] = grown["embed.weight"]
    return grown


HF_TOKENIZER_NAME = "tokenizer.json"  # a HuggingFace tokenizer travels with the configs naming its special tokens
HF_TOKENIZER_CONFIGS = ("tokenizer_config.json", "special_tokens_map.json")


def checkpoint_tokenizer_path(path: str) -> str | None:
    """The tokenizer copied into the checkpoint, if any (verified against its checksum); a HuggingFace
    directory's own tokenizer file."""
    path = resolve_checkpoint(path)
    if hf_import.is_hf_model_dir(path):
        return hf_import.tokenizer_file(path)
    hf_files = [n for n in (HF_TOKENIZER_NAME, *HF_TOKENIZER_CONFIGS) if os.path.isfile(os.path.join(path, n))]
    if not os.path.isfile(os.path.join(path, TOKENIZER_NAME)) and HF_TOKENIZER_NAME in hf_files:
        verify_checkpoint(path, hf_files)
        return os.path.join(path, HF_TOKENIZER_NAME)
    candidate = os.path.join(path, TOKENIZER_NAME)
    if not os.path.isfile(candidate):
        return None
    names = [
        name
        for name in (TOKENIZER_NAME, os.path.basename(tokenizer_meta_path(candidate)))
        if os.path.isfile(os.path.join(path, name))
    ]
    verify_checkpoint(path, names)
    return candidate


def load_rank_state(path: str, rank: int) -> dict:
    # mmap: re-sharding reads every rank's file on every rank; only the pages used are read
    return safe_load(os.path.join(path, rank_file_name(rank)), map_location="cpu", mmap=True)


# ---- writing ------------------------------------------------------------------------------------


def save_checkpoint(
    save_dir: str,
    step: int,
    *,
    rank: int,
    rank_state: dict,
    model_state: dict | None = None,
    meta: dict | None = None,
    config_yaml: str | None = None,
    tokenizer=None,
    keep_last: int | None = None,
    keep: tuple[str, ...] = (),
    barrier: Callable[[], None] = lambda: None,
) -> str:
    """Collective: every rank calls it with its `rank_state`; rank 0 also passes the shared parts.

    Returns the final checkpoint path. `keep_last` None or 0 keeps everything; checkpoints named in
    `keep` are never pruned and do not count toward it."""
    final = os.path.join(save_dir, step_dir_name(step))
    tmp = final + ".tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save of this step that crashed
        os.makedirs(tmp, exist_ok=True)  # rmtree may leave a network filesystem's .nfs* files behind
    barrier()
    own = rank_file_name(rank)
    record = _save_synced(rank_state, os.path.join(tmp, own))
    with atomic_text_output(os.path.join(tmp, own + _SUM_SUFFIX)) as f:
        json.dump(record, f)
    barrier()
    if rank == 0:
        if model_state is None or meta is None:
            raise ValueError("rank 0 must pass model_state and meta")
        files = {}
        for name in sorted(os.listdir(tmp)):  # every rank's checksum, then the shared files'
            if name.endswith(_SUM_SUFFIX):
                with open(os.path.join(tmp, name), encoding="utf-8") as f:
                    files[name[: -len(_SUM_SUFFIX)]] = json.load(f)
                os.remove(os.path.join(tmp, name))
        files[MODEL_NAME] = _save_synced(model_state, os.path.join(tmp, MODEL_NAME))
        if config_yaml is not None:
            with atomic_text_output(os.path.join(tmp, CONFIG_NAME)) as f:
                f.write(config_yaml)
            files[CONFIG_NAME] = _file_record(os.path.join(tmp, CONFIG_NAME))
        for name, source in (tokenizer.files() if tokenizer is not None else {}).items():
            shutil.copyfile(source, os.path.join(tmp, name))
            files[name] = _file_record(os.path.join(tmp, name))
        with atomic_output(os.path.join(tmp, META_NAME), "w") as f:
            json.dump({**meta, "step": step, "files": files}, f, indent=2, sort_keys=True)  # last: marks it complete
        if os.path.exists(final):  # an older save of the same step (e.g. after a rewind): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        with atomic_text_output(os.path.join(save_dir, "latest")) as f:
            f.write(step_dir_name(step) + "\n")
        if keep_last:  # older than this step only: never this one, nor a newer one left by a rewind
            older = [p for p in complete_checkpoints(save_dir) if step_of(p) < step and os.path.basename(p) not in keep]
            for old in older[: max(0, len(older) - (keep_last - 1))]:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


# ---- RNG streams in a form weights_only loading accepts ----------------------------------------


def rng_state() -> dict:
    """Every random stream of this process, so that a resumed rank draws what it would have; tensors,
    numbers and lists only (numpy's state array as an int64 tensor), so `weights_only` loads it."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["bit_generator"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---- choosing where a run starts ---------------------------------------------------------------


@dataclasses.dataclass
class Start:
    """Where a run starts: `path` None for a fresh run; `rollback` the record of a rollback done now
    or inherited from the checkpoint (so rerunning the rollback command continues instead of
    rolling back again)."""

    path: str | None = None
    meta: dict | None = None
    step: int = 0
    consumed_samples: int = 0
    rollback: dict | None = None
    rolling_back: bool = False


def _agree(value, world_size: int):
    """Rank 0's `value` on every rank."""
    if world_size > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        value = box[0]
    return value


def _verified(path: str, rank: int, world_size: int) -> list[str]:
    """Problems of checkpoint `path`, its files hashed in turn by the ranks; the same list on every rank."""
    try:
        meta = read_meta(path)
        names = sorted(meta.get("files", {}))
        problems = checksum_problems(path, names[rank::world_size], meta)
    except CheckpointError as error:
        problems = [str(error)]
    if world_size > 1:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, problems)
        problems = sorted({p for part in gathered for p in part})
    return problems


def choose_start(
    save_dir: str,
    *,
    rank: int,
    world_size: int,
    global_batch_size: int,
    resume_step: int | None = None,
    skip_batches: int = 0,
) -> Start:
    """Collective. The checkpoint a run resumes from: the newest that verifies (falling back past
    damaged ones, saying which file failed), or with `resume_step` that step's (a rollback), whose
    newer checkpoints are set aside and whose next `skip_batches` batches are skipped."""
    if resume_step is not None:
        return _roll_back(save_dir, resume_step, skip_batches, rank, world_size, global_batch_size)
    newest = _agree(latest_checkpoint(save_dir), world_size)
    if newest is None:
        return Start()
    candidates = [newest] + [
        p for p in reversed(_agree(complete_checkpoints(save_dir), world_size)) if step_of(p) < step_of(newest)
    ]
    for i, path in enumerate(candidates):
        problems = _verified(path, rank, world_size)
        if not problems:
            if i:
                print_rank0(f"resuming from {path}, the newest checkpoint that verifies")
            return _start_at(path)
        following = "falling back to the next older checkpoint" if i + 1 < len(candidates) else "no older one is left"
        print_rank0(f"warning: checkpoint {path} fails verification ({'; '.join(problems)}); {following}")
    raise CheckpointError(
        f"{save_dir}: no checkpoint verifies (see the warnings above); move the damaged ones "
        f"away to start afresh, or restore them"
    )


def _start_at(path: str) -> Start:
    meta = read_meta(path)
    return Start(
        path=path,
        meta=meta,
        step=meta["step"],
        consumed_samples=meta["data"]["consumed_samples"] if "data" in meta else meta["consumed_samples"],
        rollback=meta.get("rollback"),
    )


def _roll_back(
    save_dir: str, step: int, skip_batches: int, rank: int, world_size: int, global_batch_size: int
) -> Start:
    newest = _agree(latest_checkpoint(save_dir), world_size)
    if newest is not None:  # this rollback done already, by an earlier run of the same command: continue
        newest_meta = read_meta(newest)
        done = newest_meta.get("rollback")
        if done and done.get("to_step") == step and step_of(newest) > step:
            problems = _verified(newest, rank, world_size)
            if problems:
                raise CheckpointError("; ".join(problems))
            print_rank0(
                f"train.resume_step={step}: the rollback to step {step} was done by an earlier run "
                f"(skipping {done['skip_batches']} batches); resuming from {newest}"
            )
            return _start_at(newest)
    target = os.path.join(save_dir, step_dir_name(step))
    if not os.path.isfile(os.path.join(target, META_NAME)):
        steps = ", ".join(str(step_of(p)) for p in complete_checkpoints(save_dir)) or "none"
        raise CheckpointError(
            f"train.resume_step={step}: {target} is not a complete checkpoint (checkpoints in {save_dir}: {steps})"
        )
    problems = _verified(target, rank, world_size)
    if problems:
        raise CheckpointError(f"train.resume_step={step}: " + "; ".join(problems))
    start = _start_at(target)
    abandoned = [p for p in _agree(complete_checkpoints(save_dir), world_size) if step_of(p) > step]
    if rank == 0:
        for path in abandoned:  # out of the step_* namespace: never resumed, verified or pruned again
            aside, n = path + ROLLED_BACK_SUFFIX, 1
            while os.path.exists(aside):
                n += 1
                aside = f"{path}{ROLLED_BACK_SUFFIX}-{n}"
            os.rename(path, aside)
        with atomic_text_output(os.path.join(save_dir, "latest")) as f:
            f.write(step_dir_name(step) + "\n")
    barrier()
    skipped = skip_batches * global_batch_size
    start.rollback = {
        "to_step": step,
        "skip_batches": skip_batches,
        "abandoned": [os.path.basename(p) for p in abandoned],
    }
    start.rolling_back = True
    start.step += skip_batches
    start.consumed_samples += skipped
    start.meta["data"] = {**start.meta.get("data", {}), "consumed_samples": start.consumed_samples}
    print_rank0(
        f"rolling back to {target}"
        + (
            f"; {len(abandoned)} newer checkpoint(s) set aside as "
            f"step_*{ROLLED_BACK_SUFFIX} (delete them when no longer wanted)"
            if abandoned
            else ""
        )
        + (
            f"; skipping the next {skip_batches} batch(es) ({skipped:,} samples): the run continues at "
            f"step {start.step}"
            if skip_batches
            else ""
        )
    )
    return start


def check_tokenizer_matches(start: Start, identity: dict, tokenizer_path: str) -> None:
    """A resume with another tokenizer is an error: the checkpoint's token ids would mean other things."""
    if start.path is None:
        return
    saved = start.meta["tokenizer"].get("sha256")
    if saved != identity.get("sha256"):
        raise CheckpointError(
            f"{start.path} was trained with another tokenizer (sha256 {str(saved)[:12]}...) than data.tokenizer "
            f"{tokenizer_path} (sha256 {str(identity.get('sha256'))[:12]}...); its token ids would mean other "
            f"things. Resume with the checkpoint's own copy, "
            f"data.tokenizer={os.path.join(start.path, TOKENIZER_NAME)}, or train into another save_dir"
        )


@runtime_checkable
class Stateful(Protocol):
    """A part of the run whose state a checkpoint holds. It saves and loads itself: the checkpointer
    only stores what `state_dict` returns, under the component's name, so adding a component needs
    no edit here. A shared component's state (the same on every rank: plain JSON values) goes into
    meta.json; a component with `per_rank = True` keeps one state per rank (tensors allowed) in that
    rank's `rank_*.pt`, and loads from a `SavedRanks`, which lets it read any saved rank's state."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state) -> None: ...


@dataclasses.dataclass
class SavedRanks:
    """What a per-rank component loads from: any saved rank's state under its name (`read`), and
    how many ranks saved them; with another count than now the component re-shards or starts afresh."""

    saved_world_size: int
    world_size: int
    rank: int
    read: Callable[[int], dict]

    @property
    def same_ranks(self) -> bool:
        return self.saved_world_size == self.world_size

    def own(self) -> dict:
        return self.read(self.rank)


class RNGStreams:
    """Every random stream of this rank (torch, numpy, python, CUDA); restored only when the run has
    as many ranks as the one that saved them, where each rank's streams are its own."""

    per_rank = True

    def state_dict(self) -> dict:
        return rng_state()

    def load_state_dict(self, saved: SavedRanks) -> None:
        if saved.same_ranks:
            set_rng_state(saved.own())


class ShardedOptimizer:
    """The ZeRO optimizer as a checkpoint component: each rank saves its own shard; a run with another
    number of ranks re-shards from every saved rank's file."""

    per_rank = True

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def state_dict(self) -> dict:
        self.optimizer.wait_for_parameters()
        return self.optimizer.state_dict()

    def load_state_dict(self, saved: SavedRanks) -> None:
        self.optimizer.load_state_dict(saved.read, saved.saved_world_size)


class Checkpointer:
    """The run's checkpoints: the model and tokenizer they describe, the components whose state they
    hold (`components`, each saving and loading itself), when one is due (`interval`), how a run
    resumes, and the rollback advice after a divergence.

    Collective: every rank calls `load` and `save` together."""

    def __init__(
        self,
        save_dir: str,
        *,
        model,
        tokenizer,
        model_cfg: ModelConfig,
        train_cfg,
        components: dict[str, Stateful],
        rank: int,
        world_size: int,
        device,
        keep_last: int | None = None,
        interval: int | None = None,
    ):
        self.save_dir, self.model, self.tokenizer = save_dir, model, tokenizer
        self.model_cfg, self.train_cfg, self.components = model_cfg, train_cfg, components
        self.rank, self.world_size, self.device = rank, world_size, device
        self.keep_last, self.interval = keep_last, interval
        self.last_saved: str | None = None  # the newest checkpoint of this run (saved or resumed from)
        self.pinned: str | None = None  # the last checkpoint saved before a skip streak: never pruned
        self.rollback: dict | None = None  # the rollback this run's line descends from
        self._skipped_at_save = 0

    def due(self, step: int, final: bool = False) -> bool:
        """Whether `step` ends with a checkpoint: every `interval` steps, and the last one."""
        return final or bool(self.interval) and step % self.interval == 0

    def latest(self) -> str | None:
        """The checkpoint to resume from (verified; rank 0's answer for every rank)."""
        return choose_start(self.save_dir, rank=self.rank, world_size=self.world_size, global_batch_size=1).path

    def load(self, path: str | Start) -> dict:
        """Loads the checkpoint at `path` (or a `choose_start` answer) into the model and every
        component; returns its meta. Files are read with weights_only and checked against
        meta.json's checksums."""
        start = path if isinstance(path, Start) else _start_at(path)
        path, meta = start.path, start.meta
        check_tokenizer_matches(start, self.tokenizer.identity(), self.train_cfg.data.tokenizer)
        if "files" not in meta:
            print_rank0(f"warning: {path}: written before checkpoints carried checksums; not verified")
        self.model.load_state_dict(safe_load(os.path.join(path, MODEL_NAME), map_location=self.device))
        cache: dict[int, dict] = {}

        def rank_state(r: int) -> dict:
            if r not in cache:
                cache[r] = load_rank_state(path, r)
            return cache[r]

        for name, component in self.components.items():
            if getattr(component, "per_rank", False):
                component.load_state_dict(
                    SavedRanks(
                        saved_world_size=meta["dp_size"],
                        world_size=self.world_size,
                        rank=self.rank,
                        read=lambda r, name=name: rank_state(r)[name],
                    )
                )
            elif name not in meta:
                raise CheckpointError(
                    f"{os.path.join(path, META_NAME)}: no state for the run's {name!r} component "
                    f"(written by another megasci version?); train.init_from can still start a "
                    f"run from its weights"
                )
            else:
                component.load_state_dict(meta[name])
        self.last_saved, self.pinned, self.rollback = path, meta.get("pinned"), start.rollback
        self._skipped_at_save = meta.get("skipped_steps", 0)
        print_rank0(
            f"resumed from {path}: step {meta['step']} (saved with {meta['dp_size']} rank(s), now {self.world_size})"
        )
        return meta

    def load_weights(self, path: str) -> str:
        """Fine-tuning's start: the weights of the checkpoint at `path` (or the newest in a save dir, or a
        HuggingFace model directory, read through hf_import) and nothing else (no optimizer state, step,
        data position or guard); returns the checkpoint. The model must be this run's and the tokenizer
        the one it was trained with, or that tokenizer with tokens added after its own (the chat markers
        of tools/add_chat_template.py): then the embeddings grow to this run's vocabulary (`grow_vocab`).
        The dtype may differ (a float32 download trained in bf16): the weights are cast to the run's."""
        path = resolve_checkpoint(path)
        meta = verify_checkpoint(path, [MODEL_NAME])
        saved_cfg = model_config_from_meta(meta)
        grows = saved_cfg.vocab_size < self.model_cfg.vocab_size
        if (
            dataclasses.replace(
                saved_cfg,
                vocab_size=self.model_cfg.vocab_size,
                dtype=self.model_cfg.dtype,  # the weights are cast to the run's dtype (model.overrides.dtype)
                **position_fields(self.model_cfg),
            )
            != self.model_cfg
        ):
            raise ValueError(
                f"train.init_from {path}: its model config {meta['model_config']} is not this run's "
                f"{dataclasses.asdict(self.model_cfg)}"
            )
        if saved_cfg.vocab_size > self.model_cfg.vocab_size:
            raise ValueError(
                f"train.init_from {path}: vocab_size {saved_cfg.vocab_size} is larger than this "
                f"run's {self.model_cfg.vocab_size}"
            )
        if meta["tokenizer"].get("sha256") != self.tokenizer.identity().get("sha256"):
            self._check_extends(path)
        if hf_import.is_hf_model_dir(path):
            state = hf_import.load_hf_state_dict(path, saved_cfg)
        else:
            state = safe_load(os.path.join(path, MODEL_NAME), map_location="cpu")
        if grows:
            state = grow_vocab(state, self.model_cfg)
            print_rank0(
                f"embeddings grown from {saved_cfg.vocab_size} to {self.model_cfg.vocab_size} rows "
                f"(new rows: the mean of the existing ones)"
            )
        self.model.load_state_dict({k: v.to(self.device) for k, v in state.items()})  # cast to the run's dtype
        cast = ""
        if saved_cfg.dtype != self.model_cfg.dtype:
            cast = f", cast from {saved_cfg.dtype} to {self.model_cfg.dtype}"
        print_rank0(
            f"initialised the weights from {path} (step {meta['step']}{cast}); optimizer, schedule and step start fresh"
        )
        return path

    def _check_extends(self, path: str) -> None:
        """The run's tokenizer is the checkpoint's with tokens appended: every id it had means the same piece."""
        theirs_path = checkpoint_tokenizer_path(path)
        ours_path = self.train_cfg.data.tokenizer
        refusal = (
            f"train.init_from {path} was trained with another tokenizer ({theirs_path}) than "
            f"data.tokenizer {ours_path}; its token ids would mean other things"
        )
        if theirs_path is None:
            raise ValueError(refusal)
        from megasci.tokenizer import load_tokenizer

        theirs = load_tokenizer(theirs_path)
        if theirs.vocab_size >= self.tokenizer.vocab_size:
            raise ValueError(refusal)
        for i in range(theirs.vocab_size):
            if theirs.id_to_piece(i) != self.tokenizer.id_to_piece(i):
                raise ValueError(
                    f"{refusal}: token {i} is {theirs.id_to_piece(i)!r} in {theirs_path}, "
                    f"{self.tokenizer.id_to_piece(i)!r} in {ours_path}"
                )
        print_rank0(
            f"data.tokenizer {ours_path} is {theirs_path} with {self.tokenizer.vocab_size - theirs.vocab_size} "
            f"token(s) added"
        )

    def save(self, step: int, skipped_steps: int = 0) -> str:
        """Writes the checkpoint of `step`; returns its path. `skipped_steps`, the guard's running
        count, pins the previous checkpoint when steps were skipped since it was saved."""
        if skipped_steps > self._skipped_at_save and self.last_saved is not None:
            self.pinned = os.path.basename(self.last_saved)  # the last one saved before the skipped steps
        shared = {n: c.state_dict() for n, c in self.components.items() if not getattr(c, "per_rank", False)}
        per_rank = {n: c.state_dict() for n, c in self.components.items() if getattr(c, "per_rank", False)}
        meta = {
            **shared,
            "skipped_steps": skipped_steps,
            "dp_size": self.world_size,
            "model_config": dataclasses.asdict(self.model_cfg),
            "tokenizer": self.tokenizer.identity(),
            "train_config": self.train_cfg.to_dict(),
        }
        if self.pinned:
            meta["pinned"] = self.pinned
        if self.rollback:
            meta["rollback"] = self.rollback
        rank0 = self.rank == 0
        model_state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()} if rank0 else None
        path = save_checkpoint(
            self.save_dir,
            step,
            rank=self.rank,
            rank_state=per_rank,
            model_state=model_state,
            meta=meta,
            config_yaml=self.train_cfg.to_yaml(),
            tokenizer=self.tokenizer,
            keep_last=self.keep_last,
            keep=(self.pinned,) if self.pinned else (),
            barrier=barrier,
        )
        self.last_saved, self._skipped_at_save = path, skipped_steps
        print_rank0(f"saved {path}")
        return path

    def rollback_overrides(self, diverged_step: int) -> tuple[str | None, list[str]]:
        """(checkpoint, overrides) that roll back past a divergence detected at step `diverged_step`
        (1-based): the newest checkpoint of this run, which no skipped step reached, and every batch
        from it through the diverged step skipped. (None, []) when the run has no checkpoint."""
        if self.last_saved is None or not os.path.isdir(self.last_saved):
            return None, []
        good = step_of(self.last_saved)
        return self.last_saved, [f"train.resume_step={good}", f"train.skip_batches={max(0, diverged_step - good)}"]

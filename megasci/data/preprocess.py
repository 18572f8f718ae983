"""JSONL, JSON array or Parquet documents to Megatron `.bin/.idx` datasets, one per key, with a metadata sidecar.

The main process only cuts the input into ~1 MB blocks at line boundaries (Parquet: row groups; a
JSON array: whole elements, which it finds with the standard library's C scanner, see
megasci/data/records.py) and appends finished token buffers to the output; workers parse JSON,
tokenize and pack each block into one flat array, so per-document Python work never happens in the
main process. Blocks come back in input order.
"""

from __future__ import annotations

import collections
import json
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from megasci.data.indexed_dataset import IndexedDatasetWriter, best_token_dtype, finalize_together
from megasci.data.naming import output_prefix_for, report_path_for, tokenizer_record_path
from megasci.data.records import BadRecord, RecordBlock, iter_blocks, read_block
from megasci.data.sidecar import SidecarWriter
from megasci.tokenizer import Tokenizer, load_tokenizer
from megasci.utils.io import COMPRESSED_SUFFIXES, expand_inputs, jsonable, write_json_atomic
from megasci.utils.parallel import bounded_imap


class PreprocessError(ValueError):
    """A bad input line under `--strict`, or unusable input."""


@dataclass
class PreprocessConfig:
    inputs: Sequence[str]
    output_prefix: str
    tokenizer_model: str
    json_keys: Sequence[str] = ("text",)
    metadata_keys: Sequence[str] = ("id", "source", "section")  # copied into the sidecar when present
    workers: int = 1
    append_eod: bool = False
    strict: bool = False
    block_bytes: int = 1 << 20
    # fork starts workers fastest (measured in docs/benchmarks.md); the pool is created before the
    # progress bar's thread. Use "forkserver" when embedding in a program that runs threads of its own.
    start_method: str = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    max_reported_errors: int = 20


@dataclass
class PreprocessSummary:
    inputs: list[str]
    outputs: dict[str, str]
    input_bytes: int = 0
    lines: int = 0
    documents: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    empty_skipped: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    workers: int = 1
    worker_cpu_seconds: float = (
        0.0  # time workers spent on blocks: the rest of workers x seconds is start-up and waiting
    )
    vocab_size: int = 0
    dtype: str = ""

    def format(self) -> str:
        rows = [
            f"inputs       {len(self.inputs)} file(s), {self.input_bytes / 1e6:.1f} MB, {self.lines:,} lines",
            f"time         {self.seconds:.2f} s with {self.workers} worker(s), "
            f"busy {self.worker_cpu_seconds:.2f} CPU-s "
            f"on blocks ({self.worker_cpu_seconds / max(self.seconds * max(self.workers, 1), 1e-9):.0%} of their time)",
        ]
        for key, prefix in self.outputs.items():
            tokens, docs = self.tokens[key], self.documents[key]
            rows.append(
                f"[{key}] {docs:,} documents, {tokens:,} tokens ({self.dtype}), "
                f"{self.empty_skipped[key]:,} empty skipped"
                f" -> {prefix}.bin/.idx"
            )
            rows.append(
                f"[{key}] {docs / max(self.seconds, 1e-9):,.0f} docs/s, "
                f"{tokens / max(self.seconds, 1e-9):,.0f} tokens/s,"
                f" {self.input_bytes / 1e6 / max(self.seconds, 1e-9):.1f} MB/s"
            )
        bad = sum(self.errors.values())
        rows.append(
            "errors       " + (", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) if bad else "none")
        )
        return "\n".join(rows)


# Set in each worker by init_worker, so the tokenizer is loaded once per process.
_worker_tokenizer: Tokenizer | None = None
_worker_settings: dict = {}


def init_worker(tokenizer_model: str, settings: dict) -> None:
    global _worker_tokenizer, _worker_settings
    _worker_tokenizer = load_tokenizer(tokenizer_model)
    _worker_settings = settings


def encode_block(block: RecordBlock) -> dict:
    """Parse and tokenize one block: per key a flat token array, document lengths and sidecar lines."""
    cpu_start = time.process_time()
    settings = _worker_settings
    keys, meta_keys, dtype = settings["json_keys"], settings["metadata_keys"], settings["dtype"]
    eod = [np.array([_worker_tokenizer.eod_id], dtype=np.int32)] if settings["append_eod"] else []
    errors: list[tuple[str, int, str]] = []
    texts = {k: [] for k in keys}
    metas = {k: [] for k in keys}
    empty = dict.fromkeys(keys, 0)
    units, items = read_block(block, columns=list(keys) + list(meta_keys))
    # Errors carry the record's index within the block; the main process, seeing blocks in order, adds the base.
    for line_no, record in items:
        if isinstance(record, BadRecord):
            errors.append((record.kind, line_no, record.message))
            continue
        meta = {k: record[k] for k in meta_keys if k in record}
        for key in keys:
            text = record.get(key)
            if text is None:
                errors.append(("missing_key", line_no, f"no key {key!r}"))
            elif not isinstance(text, str):
                errors.append(("not_a_string", line_no, f"key {key!r} holds a {type(text).__name__}"))
            elif not text:
                empty[key] += 1
            else:
                texts[key].append(text)
                metas[key].append(meta)
    out = {"errors": errors, "bytes": block.length, "lines": units, "keys": {}}
    for key in keys:
        arrays = _worker_tokenizer.encode_to_arrays(texts[key]) if texts[key] else []
        # Documents that tokenize to nothing (possible with some tokenizers) are skipped like empty text.
        keep = [len(a) > 0 for a in arrays]
        empty[key] += keep.count(False)
        parts = []
        for array, kept in zip(arrays, keep):
            if kept:
                parts.append(array)
                parts.extend(eod)
        lengths = np.array([len(a) + len(eod) for a, kept in zip(arrays, keep) if kept], dtype=np.int64)
        flat = np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)
        # default=str: Parquet metadata columns may hold dates or decimals, which JSON has no type for.
        sidecar = [json.dumps(m, ensure_ascii=False, default=str) for m, kept in zip(metas[key], keep) if kept]
        out["keys"][key] = (flat, lengths, sidecar, empty[key])
    out["cpu_seconds"] = time.process_time() - cpu_start
    return out


def preprocess(cfg: PreprocessConfig, progress: bool = True, log=print) -> PreprocessSummary:
    """Tokenize `cfg.inputs` into one dataset (+ sidecar) per JSON key; outputs appear only when complete."""
    from tqdm import tqdm

    paths = expand_inputs(cfg.inputs)
    tokenizer = load_tokenizer(cfg.tokenizer_model)
    if cfg.append_eod:
        _ = tokenizer.eod_id  # fail now, not in a worker, if there is no EOS
    dtype = best_token_dtype(tokenizer.vocab_size)
    outputs = {key: output_prefix_for(cfg.output_prefix, key) for key in cfg.json_keys}
    summary = PreprocessSummary(
        inputs=paths,
        outputs=outputs,
        workers=cfg.workers,
        vocab_size=tokenizer.vocab_size,
        dtype=np.dtype(dtype).name,
        documents=dict.fromkeys(outputs, 0),
        tokens=dict.fromkeys(outputs, 0),
        empty_skipped=dict.fromkeys(outputs, 0),
    )
    settings = {
        "json_keys": list(cfg.json_keys),
        "metadata_keys": list(cfg.metadata_keys),
        "dtype": dtype,
        "append_eod": cfg.append_eod,
    }
    writers = {key: IndexedDatasetWriter(prefix, dtype=dtype) for key, prefix in outputs.items()}
    sidecars = {key: SidecarWriter(prefix) for key, prefix in outputs.items()}
    for key, prefix in outputs.items():  # committed with their datasets (commit.py), not after them
        writers[key].attach(sidecars[key].target)
        writers[key].attach_json(tokenizer_record_path(prefix), tokenizer.identity())
    errors: collections.Counter = collections.Counter()
    reported = 0
    lines_before = collections.Counter()  # per file: lines in the blocks already written
    compressed = any(p.endswith(COMPRESSED_SUFFIXES) for p in paths)
    start = time.perf_counter()
    pool = bar = None
    try:
        # The pool starts before anything here starts a thread (the progress bar does), so fork is safe.
        pool = _start_pool(cfg, settings)
        bar = tqdm(
            total=None if compressed else sum(os.path.getsize(p) for p in paths),
            unit="B",
            unit_scale=True,
            disable=not progress,
            desc="preprocess",
            dynamic_ncols=True,
        )
        blocks = iter_blocks(paths, cfg.block_bytes)
        for block, result in bounded_imap(pool, encode_block, blocks, in_flight=4 * max(cfg.workers, 1)):
            for kind, line_in_block, message in result["errors"]:
                errors[kind] += 1
                where = f"{block.where(lines_before[block.path] + line_in_block + 1)}: {message}"
                if cfg.strict:
                    raise PreprocessError(f"{where} (--strict stops at the first bad line)")
                if reported < cfg.max_reported_errors:
                    (bar.write if progress else log)(f"skipped {where}")
                    reported += 1
            for key, (flat, lengths, sidecar_lines, empty) in result["keys"].items():
                writers[key].add_documents_flat(flat, lengths)
                sidecars[key].add_lines(sidecar_lines)
                summary.documents[key] += len(lengths)
                summary.tokens[key] += len(flat)
                summary.empty_skipped[key] += empty
            summary.worker_cpu_seconds += result["cpu_seconds"]
            summary.input_bytes += result["bytes"]
            summary.lines += result["lines"]
            lines_before[block.path] += result["lines"]
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.update(result["bytes"])
            first = cfg.json_keys[0]
            bar.set_postfix_str(
                f"{summary.documents[first] / elapsed:,.0f} docs/s {summary.tokens[first] / elapsed:,.0f} tok/s",
                refresh=False,
            )
        finalize_together(list(writers.values()))
    except BaseException:
        for key in outputs:
            writers[key].discard()
        raise
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.terminate()
    summary.seconds = time.perf_counter() - start
    summary.errors = dict(errors)
    if reported < sum(errors.values()):
        log(f"... {sum(errors.values()) - reported} more bad lines not shown (counts below)")
    write_json_atomic(
        report_path_for(cfg.output_prefix),
        {"config": jsonable(cfg), "summary": asdict(summary), "tokenizer": tokenizer.identity()},
    )
    return summary


def _start_pool(cfg: PreprocessConfig, settings: dict):
    """A worker pool, or None to encode in this process (workers <= 0: for debugging and profiling)."""
    if cfg.workers <= 0:
        init_worker(cfg.tokenizer_model, settings)
        return None
    return mp.get_context(cfg.start_method).Pool(
        cfg.workers, initializer=init_worker, initargs=(cfg.tokenizer_model, settings)
    )

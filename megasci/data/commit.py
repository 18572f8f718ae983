"""Datasets made visible all at once: the commit protocol of `.bin`, `.idx` and their companions.

A dataset is several files (`.bin`, `.idx`, the `.docs.jsonl` sidecar, the `.tokenizer.json`
record; an SFT run writes two datasets, tokens and loss mask). Each is written under a temporary
name, but renaming them is several steps, and a crash between two renames could pair a new `.bin`
with an old `.idx`: a dataset that opens and trains on the wrong tokens. So every write records
itself in `<prefix>.commit.json` (megasci/data/naming.py), outside Megatron's two files, which stay
byte-compatible:

1. every temporary file is flushed and fsynced, and its size (and for the small ones, and the
   `.bin` as it streamed, its sha256) taken;
2. the commit record of every dataset of the write becomes `{"state": "writing", "write_id": ...}`;
3. the files are renamed into place;
4. each commit record becomes `"committed"`, holding the write id, each file's size and checksum,
   and the dataset's facts (dtype, counts, the largest token id).

A reader (`verify_commit`, called whenever a dataset is opened) refuses a dataset whose record says
`writing` (a write stopped between steps 2 and 4, so its files may come from two writes) or whose
files do not have the sizes and checksums recorded. Datasets of one write share the write id, so
a loss mask from another run than its tokens is caught too. A dataset without a record (written by
Megatron-LM or an older megasci) opens with the structural checks of the reader alone.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from typing import Protocol

from megasci.data.naming import commit_record_path
from megasci.utils.io import AtomicFile, atomic_output, file_sha256

COMMIT_FORMAT = 1
# Files hashed at every open: small ones. The `.bin` is hashed while it is written and checked
# where it is read whole anyway (merging) or on request (`verify_commit(..., data=True)`).
_HASHED_AT_OPEN = (".idx", ".tokenizer.json")


class DatasetCommitError(ValueError):
    """A dataset whose files do not match its commit record, or whose write did not finish."""


class Committable(Protocol):
    """A dataset writer whose files are ready under temporary names (IndexedDatasetWriter)."""

    prefix: str

    def staged_files(self) -> list[AtomicFile]: ...

    def commit_facts(self) -> dict: ...


def new_write_id() -> str:
    return secrets.token_hex(8)


def _suffix(prefix: str, path: str) -> str:
    if not path.startswith(prefix):
        raise ValueError(f"{path} is not a file of dataset {prefix}")
    return path[len(prefix) :]


def _sync_directories(paths: Sequence[str]) -> None:
    """Make renames in these files' directories durable (POSIX; a no-op where directories cannot be opened)."""
    for directory in sorted({os.path.dirname(os.path.abspath(p)) for p in paths}):
        try:
            fd = os.open(directory, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _write_record(prefix: str, record: dict) -> None:
    with atomic_output(commit_record_path(prefix), "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")


def commit_datasets(writers: Sequence[Committable], links: dict[str, dict] | None = None) -> str:
    """Rename the staged files of `writers` into place by the protocol above; returns the write id.

    `links` adds fields to a dataset's record by prefix (an SFT token dataset names its loss mask).
    If this fails before the renames, nothing is renamed and the temporary files are left to the
    caller's `discard()`; after that, the records say `writing` until a write completes.
    """
    write_id = new_write_id()
    records = {}
    for writer in writers:
        files = {}
        for target in writer.staged_files():
            target.file.flush()
            os.fsync(target.file.fileno())
            entry: dict = {"bytes": os.path.getsize(target.tmp)}
            suffix = _suffix(writer.prefix, target.path)
            if suffix in _HASHED_AT_OPEN:
                entry["sha256"] = file_sha256(target.tmp)
            files[suffix] = entry
        facts = dict(writer.commit_facts())
        bin_sha256 = facts.pop("bin_sha256", None)
        if bin_sha256 is not None and ".bin" in files:
            files[".bin"]["sha256"] = bin_sha256
        records[writer.prefix] = {
            "format": COMMIT_FORMAT,
            "state": "committed",
            "write_id": write_id,
            "files": files,
            **facts,
            **(links or {}).get(writer.prefix, {}),
        }
    for writer in writers:
        _write_record(writer.prefix, {"format": COMMIT_FORMAT, "state": "writing", "write_id": write_id})
    _sync_directories([w.prefix for w in writers])
    for writer in writers:
        for target in writer.staged_files():
            target.commit()
    _sync_directories([w.prefix for w in writers])
    for writer in writers:
        _write_record(writer.prefix, records[writer.prefix])
    _sync_directories([w.prefix for w in writers])
    return write_id


def read_commit(prefix: str) -> dict | None:
    """The commit record of dataset `prefix` as written, or None when it has none."""
    path = commit_record_path(prefix)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except ValueError as e:
        raise DatasetCommitError(f"{path}: not a JSON commit record ({e})") from None
    if not isinstance(record, dict) or "state" not in record or "write_id" not in record:
        raise DatasetCommitError(f"{path}: not a commit record (no state or write_id)")
    return record


def verify_commit(prefix: str, data: bool = False) -> dict | None:
    """The committed record of `prefix` after checking its files against it; None without a record.

    Sizes are always checked and the small files' sha256; `data=True` hashes the `.bin` too.
    """
    prefix = os.fspath(prefix)
    record = read_commit(prefix)
    if record is None:
        return None
    path = commit_record_path(prefix)
    if record["state"] != "committed":
        raise DatasetCommitError(
            f"{path}: write {record['write_id']} of dataset {prefix} did not finish (state {record['state']!r}): "
            "its files may come from two different writes; write the dataset again"
        )
    for suffix, expected in (record.get("files") or {}).items():
        file = prefix + suffix
        if not os.path.isfile(file):
            raise DatasetCommitError(f"{file}: missing, but {path} records it as part of the dataset")
        size = os.path.getsize(file)
        if size != expected.get("bytes"):
            raise DatasetCommitError(
                f"{file}: {size} bytes, but {path} records {expected.get('bytes')}: the file "
                "was replaced, truncated or mixed with another write"
            )
        if "sha256" in expected and (suffix in _HASHED_AT_OPEN or data):
            digest = file_sha256(file)
            if digest != expected["sha256"]:
                raise DatasetCommitError(
                    f"{file}: sha256 {digest[:16]}... differs from the {expected['sha256'][:16]}... that {path} "
                    "records: the file was changed or damaged after the write"
                )
    return record

"""Per-document metadata stored beside a dataset, one JSON line per document, in document order.

`<dataset prefix>.docs.jsonl` line d describes document d of `<prefix>.bin/.idx` (paper id,
source name, section label, ...): what sampling needs to select or weight documents without
touching the tokens. JSON lines stay readable with `head` and `grep`, and merge by concatenation
(`indexed_dataset.merge_datasets`). A writer of a dataset attaches the sidecar's `target` to its
`IndexedDatasetWriter`, so both are committed together; `finalize()` commits a sidecar alone.
"""

from __future__ import annotations

import json

from megasci.data.indexed_dataset import IndexedDataset
from megasci.data.naming import sidecar_path
from megasci.utils.io import AtomicFile


class SidecarWriter:
    """Appends metadata lines to a temp file; `finalize()` renames it beside the dataset."""

    def __init__(self, prefix: str):
        self.path = sidecar_path(prefix)
        self.target = AtomicFile(self.path, "w")
        self._file = self.target.file
        self.count = 0

    def add(self, record: dict) -> None:
        self.add_lines([json.dumps(record, ensure_ascii=False)])

    def add_lines(self, lines: list[str]) -> None:
        """Lines already serialised as JSON objects (workers serialise, the writer only appends)."""
        for line in lines:
            self._file.write(line)
            self._file.write("\n")
        self.count += len(lines)

    def finalize(self) -> None:
        self.target.commit()

    def discard(self) -> None:
        self.target.discard()


def read_sidecar(prefix: str, check_against_dataset: bool = True) -> list[dict]:
    """All metadata records; by default verifies there is exactly one per document of the dataset."""
    path = sidecar_path(prefix)
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                records.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{path}:{line_no}: not a JSON line ({e})") from None
    if check_against_dataset:
        documents = IndexedDataset(prefix).num_documents
        if documents != len(records):
            raise ValueError(f"{path}: {len(records)} metadata lines for {documents} documents in {prefix}.idx")
    return records

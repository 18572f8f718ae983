"""The rejected-paper log: every input the funnel dropped, with its stage and reason, for inspection.

The yield report counts rejections; this log lists them, one JSON line per input, in the order
finalize meets them (units in key order, inputs in unit order, then the corpus-wide dedup drops):

    {"id": ..., "source": ..., "stage": ..., "reason": ..., "kept": ..., "excerpt": ...}

`id` is null where the input never yielded a paper id (a broken archive). `kept` names the source
kept in a dropped duplicate's place (null for every other reason). `excerpt` is the start of the
paper's text when it left (`units.EXCERPT_CHARS` at most; its clean text from the cleaning step on,
its LaTeX before; empty where there was none). The log is zstd-compressed, as the shards are,
and written atomically: `<rejected_dir>/rejected.jsonl.zst`.
"""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager, nullcontext
from typing import TextIO

from megasci.utils.io import atomic_text_output

REJECTED_FILE = "rejected.jsonl.zst"


class RejectedLog:
    """Writes the log line by line; a log of `None` (no directory asked for) writes nothing."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out

    @property
    def active(self) -> bool:
        return self.out is not None

    def add(
        self, paper_id: str | None, source: str, stage: str, reason: str, excerpt: str = "", kept: str | None = None
    ) -> None:
        if self.out is None:
            return
        self.out.write(
            json.dumps(
                {"id": paper_id, "source": source, "stage": stage, "reason": reason, "kept": kept, "excerpt": excerpt},
                ensure_ascii=False,
            )
            + "\n"
        )


def open_rejected_log(rejected_dir: str | None) -> AbstractContextManager[TextIO | None]:
    """The log's file in `rejected_dir` (made if missing), or `None` when no directory is given."""
    if rejected_dir is None:
        return nullcontext(None)
    os.makedirs(rejected_dir, exist_ok=True)
    return atomic_text_output(os.path.join(rejected_dir, REJECTED_FILE))

"""Conversations, the unit of post-training data, and the reader of chat and instruction records.

A reader turns its source's records into `Example`s (one conversation each, with what its sidecar
line says about it), `Skip`s (a malformed record, its place and why) and, for sources that hold
more than conversations, `Ignored` counts. This module reads the two record shapes the JSON and
Parquet sources ship: chat records `{"messages": [{"role", "content"}, ...]}` (UltraChat 200k; a
system turn is allowed) and instruction records `{"instruction", "output"[, "input"][, "source"]}`
(MathInstruct, Alpaca). Stack Exchange dumps have their own reader (stackexchange.py); the SFT
driver (sft.py) renders and writes what the readers give.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Example:
    """One conversation and what its sidecar line says about it."""

    where: str
    messages: list
    meta: dict


@dataclass
class Skip:
    where: str
    kind: str
    message: str


@dataclass
class Ignored:
    """Posts a Stack Exchange file holds that are not question/answer pairs, by kind (not errors)."""

    counts: dict


def source_of_file(path: str) -> str:
    """A record file's name without its extensions: the source of records that name none."""
    name = os.path.basename(path)
    for suffix in (".gz", ".zst", ".zstd", ".jsonl", ".json", ".parquet", ".pq"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name


def example_from_record(record: dict, where: str, default_source: str) -> Example | Skip:
    """A chat or instruction record as a conversation; anything else is a Skip naming why."""
    source = record.get("source") if isinstance(record.get("source"), str) else default_source
    conversation_id = next(
        (
            record[k]
            for k in ("id", "prompt_id", "conversation_id")
            if isinstance(record.get(k), (str, int)) and not isinstance(record.get(k), bool)
        ),
        where,
    )
    if "messages" in record:
        messages = record["messages"]
    elif "instruction" in record or "output" in record:
        prompt, extra = record.get("instruction"), record.get("input")
        if isinstance(prompt, str) and isinstance(extra, str) and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": record.get("output")}]
        for message in messages:
            if message["content"] is None:
                del message["content"]
    else:
        return Skip(
            where,
            "unknown_format",
            f"neither 'messages' nor 'instruction'/'output' (keys: {', '.join(sorted(record))[:120]})",
        )
    return Example(where, messages, {"source": source, "id": conversation_id})

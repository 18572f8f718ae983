"""Contamination: task examples whose 13-grams occur in a training corpus.

Text is normalised as lm-evaluation-harness's `Janitor.normalize_string` does
(`lm_eval/decontamination/janitor.py`): ASCII letters lower-cased, every character of
`string.punctuation` deleted, nothing else touched; then split on whitespace and joined into word
n-grams (`word_ngrams`, n = 13). An example is contaminated when any n-gram of its text (its own
question and gold answer, without few-shot demonstrations: `Example.overlap_text`) occurs in any
corpus document. Text shorter than 13 words has no 13-gram and is never contaminated, as in lm-eval.

The corpus is streamed one document at a time; memory holds only the tasks' n-grams (a dict from
n-gram to the examples that contain it) and the current document.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from megasci.data.indexed_dataset import IndexedDataset
from megasci.data.provenance import tokenizer_warnings
from megasci.data.records import BadRecord, iter_records

from .tasks import Task

NGRAM = 13
_TABLE = str.maketrans(string.ascii_lowercase + string.ascii_uppercase, string.ascii_lowercase * 2, string.punctuation)


def normalize(text: str) -> str:
    """lm-eval's Janitor normalisation: ASCII lower-case, punctuation deleted."""
    return text.translate(_TABLE)


def word_ngrams(text: str, n: int = NGRAM) -> Iterator[str]:
    """The whitespace-word n-grams of already normalised text, joined by one space (lm-eval's word_ngrams)."""
    words = text.split()
    for i in range(len(words) - n + 1):
        yield " ".join(words[i : i + n])


@dataclass
class TaskContamination:
    task: str
    examples: int
    contaminated: list[str] = field(default_factory=list)  # example ids, in task order
    first_seen: dict[str, str] = field(default_factory=dict)  # example id -> corpus document where found

    def to_dict(self) -> dict:
        return {"examples": self.examples, "contaminated": self.contaminated, "first_seen": self.first_seen}


class NgramIndex:
    """The tasks' n-grams, each mapped to the (task, example) pairs containing it."""

    def __init__(self, tasks: Sequence[Task], n: int = NGRAM):
        self.n, self.tasks = n, list(tasks)
        self.owners: dict[str, list[tuple[int, int]]] = {}
        for t, task in enumerate(self.tasks):
            for e, example in enumerate(task.examples):
                for gram in set(word_ngrams(normalize(example.overlap_text), n)):
                    self.owners.setdefault(gram, []).append((t, e))
        self.first_words = {gram.split(" ", 1)[0] for gram in self.owners}

    def matches(self, text: str) -> set[tuple[int, int]]:
        """The (task, example) pairs sharing an n-gram with `text`."""
        words, n, found = normalize(text).split(), self.n, set()
        owners, first = self.owners, self.first_words
        for i in range(len(words) - n + 1):
            if words[i] in first:  # cheap filter before building the n-gram string
                hit = owners.get(" ".join(words[i : i + n]))
                if hit:
                    found.update(hit)
        return found


def _is_dataset(path: str) -> str | None:
    """The .bin/.idx prefix `path` names (the prefix itself, or either file), or None."""
    prefix = path[:-4] if path.endswith((".bin", ".idx")) else path
    return prefix if os.path.isfile(prefix + ".idx") and os.path.isfile(prefix + ".bin") else None


def iter_documents(
    paths: Iterable[str], text_key: str = "text", tokenizer=None, warn=print
) -> Iterator[tuple[str, str]]:
    """(where, text) for every document of JSONL shards (plain, .gz, .zst) and .bin/.idx datasets.

    A dataset's documents are decoded with `tokenizer` (required for them); a dataset whose recorded
    tokenizer differs is warned about. A bad JSONL record is an error naming file:line."""
    for path in paths:
        prefix = _is_dataset(path)
        if prefix is not None:
            if tokenizer is None:
                raise ValueError(f"{prefix}: a .bin/.idx dataset is decoded with its tokenizer; pass one")
            for w in tokenizer_warnings(prefix, tokenizer.identity()):
                warn(f"warning: {w}")
            dataset = IndexedDataset(prefix)
            for d in range(dataset.num_documents):
                yield f"{prefix} document {d}", tokenizer.decode(dataset.get_document(d))
            continue
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such corpus file (nor a .bin/.idx dataset prefix)")
        for where, record in iter_records(path, columns=[text_key]):
            if isinstance(record, BadRecord):
                raise ValueError(f"{where}: {record.message}")
            text = record.get(text_key)
            if not isinstance(text, str):
                raise ValueError(f"{where}: no string {text_key!r} field")
            yield where, text


def find_contamination(
    tasks: Sequence[Task], documents: Iterable[tuple[str, str]], n: int = NGRAM
) -> list[TaskContamination]:
    """Per task, the examples sharing an n-gram with any document (streamed once)."""
    index = NgramIndex(tasks, n)
    first: dict[tuple[int, int], str] = {}
    for where, text in documents:
        for key in index.matches(text):
            first.setdefault(key, where)
    out = []
    for t, task in enumerate(tasks):
        report = TaskContamination(task.name, len(task.examples))
        for e, example in enumerate(task.examples):
            if (t, e) in first:
                report.contaminated.append(example.id)
                report.first_seen[example.id] = first[(t, e)]
        out.append(report)
    return out


def read_contaminated(path: str) -> dict[str, set[str]]:
    """Task name -> contaminated example ids, from the JSON `tools/decontaminate.py --out` writes."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
        return {name: set(map(str, entry["contaminated"])) for name, entry in report["tasks"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a decontamination report ({e!r})") from None

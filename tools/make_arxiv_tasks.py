#!/usr/bin/env python
"""Scientific multiple-choice tasks from held-out arXiv papers, seeded and reproducible.

Reads corpus records (`id`, `title`, `text`, `sections`; JSONL, .gz or .zst) of papers the run never
trained on, e.g. the validation shard, and writes two tasks in our JSONL task format
(docs/evaluation.md), four choices an item, the gold equally often in each position (seeded):

- `arxiv_next_equation.jsonl`: the text before a display equation; the choices are that equation
  and three other display equations of the same paper (same environment first), each as written.
- `arxiv_abstract_sentence.jsonl`: the paper up to its abstract's first words; the choices are the
  abstract's first sentence and the first sentences of its three nearest neighbours' abstracts
  (cosine similarity of abstract word counts among the held-out papers).

Every item's id is `<paper id>#<kind><n>`, so each records its paper. Papers whose arXiv id (any
version) appears in the training data (`--training`: JSONL shards with an `id` field, or dataset
prefixes whose `<prefix>.docs.jsonl` sidecar holds `id`) are refused and listed in manifest.json.

Example:
    python tools/make_arxiv_tasks.py --input corpus/heldout/*.jsonl.zst --training data/arxiv_text_document \\
        --out-dir tasks/arxiv --seed 0 --per-paper 2
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import re
import sys

from megasci.corpus.arxiv_ids import canonical_id
from megasci.data.records import BadRecord, iter_records
from megasci.utils.io import atomic_text_output, write_json_atomic

CHOICES = 4
DISPLAY = re.compile(
    r"\\begin\{(equation|align|gather|multline|eqnarray|displaymath)(\*?)\}.*?\\end\{\1\2\}"
    r"|\\\[.*?\\\]|\$\$.*?\$\$",
    re.S,
)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\\$])")
WORD = re.compile(r"[a-z]{3,}")


class GoldPositions:
    """The gold's position for each next item: seeded shuffles of 0..3 in turn, so every position is gold
    equally often (to one item) and a scorer that ignores the text scores chance, 1/4, exactly."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.block: list[int] = []

    def next(self) -> int:
        if not self.block:
            self.block = list(range(CHOICES))
            self.rng.shuffle(self.block)
        return self.block.pop()


def paper_key(raw) -> str:
    """The canonical arXiv id (version dropped); an id that is not arXiv's is kept as written."""
    try:
        return canonical_id(str(raw))
    except ValueError:
        return str(raw).strip()


def training_ids(paths: list[str]) -> set[str]:
    """Canonical ids of every document of the training data (JSONL shards, or dataset sidecars)."""
    ids = set()
    for path in paths:
        source = path + ".docs.jsonl" if os.path.isfile(path + ".docs.jsonl") else path
        if not os.path.isfile(source):
            raise FileNotFoundError(f"{path}: neither a JSONL file nor a dataset prefix with a .docs.jsonl sidecar")
        for where, record in iter_records(source, columns=["id"]):
            if isinstance(record, BadRecord) or record.get("id") is None:
                raise ValueError(f"{where}: no id (the training data must name its papers to be excluded)")
            ids.add(paper_key(record["id"]))
    return ids


def read_papers(paths: list[str]) -> list[dict]:
    papers = []
    for path in paths:
        for where, record in iter_records(path, columns=["id", "title", "text", "sections"]):
            if isinstance(record, BadRecord):
                raise ValueError(f"{where}: {record.message}")
            if not isinstance(record.get("text"), str) or record.get("id") is None:
                raise ValueError(f"{where}: a corpus record needs 'id' and 'text'")
            papers.append({**record, "where": where})
    return papers


def _start_of_line(text: str, start: int, chars: int) -> int:
    """A context start at most `chars` before `start`, moved forward to the next line start."""
    begin = max(0, start - chars)
    if begin > 0:
        newline = text.find("\n", begin, start)
        begin = newline + 1 if newline != -1 else begin
    return begin


def next_equation_items(
    paper: dict, rng: random.Random, golds: GoldPositions, per_paper: int, context_chars: int, max_equation_chars: int
) -> list[dict]:
    text = paper["text"]
    found = [
        (m.start(), m.end(), m.group(0), m.group(1) or m.group(0)[:2])
        for m in DISPLAY.finditer(text)
        if len(m.group(0)) <= max_equation_chars
    ]
    distinct = {eq for _, _, eq, _ in found}
    if len(distinct) < CHOICES:
        return []
    candidates = [f for f in found if f[0] >= 200]  # enough text before it to condition on
    items = []
    for k, (start, _, true, env) in enumerate(rng.sample(candidates, min(per_paper, len(candidates)))):
        others = sorted(distinct - {true})
        rng.shuffle(others)
        others.sort(key=lambda eq: next(e for _, _, q, e in found if q == eq) != env)  # same environment first
        choices = others[: CHOICES - 1]
        gold = golds.next()
        choices.insert(gold, true)
        context = text[_start_of_line(text, start, context_chars) : start]
        items.append({"id": f"{paper['key']}#eq{k}", "context": context, "choices": choices, "gold": gold})
    return items


def abstract_of(paper: dict) -> tuple[int, str] | None:
    """(where the abstract's words start, its first sentence), or None."""
    text = paper["text"]
    for s in paper.get("sections") or []:
        if s.get("label") == "abstract":
            body = text[s["start"] : s["end"]]
            opener = re.match(r"\s*(\\begin\{abstract\}\s*)?", body)  # always matches (all optional)
            start = s["start"] + (opener.end() if opener else 0)
            words = re.sub(r"\\end\{abstract\}.*", "", text[start : s["end"]], flags=re.S).strip()
            first = SENTENCE_END.split(words, maxsplit=1)[0].strip()
            return (start, first) if len(first.split()) >= 5 else None
    return None


def _vector(text: str) -> tuple[collections.Counter, float]:
    counts = collections.Counter(WORD.findall(text.lower()))
    return counts, math.sqrt(sum(v * v for v in counts.values())) or 1.0


def abstract_sentence_items(papers: list[dict], golds: GoldPositions, context_chars: int) -> list[dict]:
    found = [(p, a) for p in papers if (a := abstract_of(p)) is not None]
    if len(found) < CHOICES:
        return []
    vectors = [_vector(p["text"][a[0] : a[0] + 2000]) for p, a in found]
    items = []
    for i, (paper, (start, first)) in enumerate(found):
        ci, ni = vectors[i]
        near = sorted(
            (-sum(ci[w] * cj[w] for w in ci) / (ni * nj), found[j][0]["key"], j)
            for j, (cj, nj) in enumerate(vectors)
            if j != i and found[j][1][1] != first
        )
        choices = []
        for _, _, j in near:
            if found[j][1][1] not in choices:
                choices.append(found[j][1][1])
            if len(choices) == CHOICES - 1:
                break
        if len(choices) < CHOICES - 1:
            continue
        gold = golds.next()
        choices.insert(gold, first)
        text = paper["text"]
        context = text[_start_of_line(text, start, context_chars) : start]
        items.append({"id": f"{paper['key']}#abstract0", "context": context, "choices": choices, "gold": gold})
    return items


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="held-out corpus records (JSONL, .gz, .zst)")
    p.add_argument(
        "--training",
        nargs="+",
        required=True,
        help="the training data: JSONL shards with 'id', or dataset prefixes with a .docs.jsonl sidecar",
    )
    p.add_argument("--out-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-paper", type=int, default=2, help="next-equation items per paper at most")
    p.add_argument("--context-chars", type=int, default=1500, help="characters of text before the answer")
    p.add_argument(
        "--max-equation-chars",
        type=int,
        default=400,
        help="longer display equations are neither asked nor offered as choices",
    )
    args = p.parse_args(argv)
    if min(args.per_paper, args.context_chars, args.max_equation_chars) < 1:
        p.error("--per-paper, --context-chars and --max-equation-chars must be positive")
    try:
        trained = training_ids(args.training)
        papers = read_papers(args.input)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    kept, refused, seen = [], [], set()
    for paper in papers:
        paper["key"] = paper_key(paper["id"])
        if paper["key"] in trained:
            refused.append(paper["key"])
        elif paper["key"] not in seen:
            seen.add(paper["key"])
            kept.append(paper)
    kept.sort(key=lambda paper: paper["key"])
    rng = random.Random(args.seed)
    equation_golds = GoldPositions(random.Random(rng.random()))
    abstract_golds = GoldPositions(random.Random(rng.random()))
    tasks = {
        "arxiv_next_equation": [
            item
            for paper in kept
            for item in next_equation_items(
                paper, rng, equation_golds, args.per_paper, args.context_chars, args.max_equation_chars
            )
        ],
        "arxiv_abstract_sentence": abstract_sentence_items(kept, abstract_golds, args.context_chars),
    }
    os.makedirs(args.out_dir, exist_ok=True)
    for name, items in tasks.items():
        with atomic_text_output(os.path.join(args.out_dir, f"{name}.jsonl")) as f:
            for item in items:
                f.write(json.dumps(item, ensure_ascii=False) + "\n")
    write_json_atomic(
        os.path.join(args.out_dir, "manifest.json"),
        {
            "seed": args.seed,
            "input": args.input,
            "training": args.training,
            "papers_read": len(papers),
            "papers_used": len(kept),
            "refused_in_training": sorted(set(refused)),
            "items": {name: len(items) for name, items in tasks.items()},
        },
    )
    print(f"{len(papers)} papers read, {len(set(refused))} refused (in the training data), {len(kept)} used")
    for name, items in tasks.items():
        print(f"{name}: {len(items)} items -> {os.path.join(args.out_dir, name + '.jsonl')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

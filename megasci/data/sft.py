"""Post-training (SFT) data: conversations from the formats sources ship in, to tokens plus a loss mask.

Inputs: JSONL (plain, `.gz`, `.zst`) or Parquet records, read through megasci/data/records.py, in
either of two shapes: chat records `{"messages": [{"role", "content"}, ...]}` (UltraChat 200k; a
system turn is allowed) and instruction records `{"instruction", "output"[, "input"][, "source"]}`
(MathInstruct, Alpaca); and Stack Exchange data dumps' `Posts.xml` (each question with its
accepted answer). Every conversation is rendered with the tokenizer's chat template
(megasci/tokenizer/chat.py).

Outputs, all appearing only when complete: `<prefix>_text_document.{bin,idx}` (one document of one
sequence per conversation), `<prefix>_loss_mask_document.{bin,idx}` (uint8, the same lengths: 1 on
assistant tokens and each assistant turn's end marker), the sidecar `<prefix>_text_document.docs.jsonl`
(source and conversation id; tags and scores for Stack Exchange) and the report `<prefix>_sft.json`
(counts per source, every skipped record with its reason and place).
"""

from __future__ import annotations

import collections
import os
import re
import time
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from typing import Iterator, Sequence
from xml.parsers import expat

import numpy as np

from megasci.data.indexed_dataset import IndexedDatasetWriter, best_token_dtype
from megasci.data.provenance import record_tokenizer
from megasci.data.records import BadRecord, iter_records
from megasci.data.sidecar import SidecarWriter
from megasci.tokenizer import ChatFormatError, load_tokenizer
from megasci.utils.io import expand_inputs, jsonable, open_binary, write_json_atomic

XML_SUFFIXES = (".xml", ".xml.gz", ".xml.zst")
FILTERED_KINDS = ("score_below_minimum",)  # dropped by an option, not malformed: --strict lets them pass


class SFTError(ValueError):
    """A malformed record under `--strict`, or unusable input (no chat template, no inputs)."""


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


# --- records: chat and instruction -----------------------------------------------------------------


def _default_source(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".gz", ".zst", ".zstd", ".jsonl", ".json", ".parquet", ".pq"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name


def example_from_record(record: dict, where: str, default_source: str) -> Example | Skip:
    """A chat or instruction record as a conversation; anything else is a Skip naming why."""
    source = record.get("source") if isinstance(record.get("source"), str) else default_source
    conversation_id = next((record[k] for k in ("id", "prompt_id", "conversation_id")
                            if isinstance(record.get(k), (str, int)) and not isinstance(record.get(k), bool)), where)
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
        return Skip(where, "unknown_format", f"neither 'messages' nor 'instruction'/'output' (keys: "
                                             f"{', '.join(sorted(record))[:120]})")
    return Example(where, messages, {"source": source, "id": conversation_id})


# --- Stack Exchange Posts.xml ----------------------------------------------------------------------


class _HtmlToText(HTMLParser):
    """Stack Exchange's rendered HTML back to plain text: paragraphs, lists, quotes and code kept as
    text, inline code in backticks, code blocks fenced; text itself (LaTeX included) is untouched."""

    BLOCKS = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr", "ul", "ol", "dl"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.pending_breaks = 0
        self.pre = 0
        self.quote = 0
        self.lists: list[list] = []  # [ordered, next number]

    def _break(self, newlines: int) -> None:
        self.pending_breaks = max(self.pending_breaks, newlines)

    def _emit(self, text: str) -> None:
        if self.pending_breaks:
            while self.parts and not self.parts[-1].strip():
                self.parts.pop()
            if self.parts:
                self.parts[-1] = self.parts[-1].rstrip()
                self.parts.append("\n" * self.pending_breaks + "> " * self.quote)
            elif self.quote:
                self.parts.append("> " * self.quote)
            self.pending_breaks = 0
        elif not self.parts and self.quote:
            self.parts.append("> " * self.quote)
        self.parts.append(text)

    def handle_starttag(self, tag, attrs):
        if tag in self.BLOCKS:
            self._break(2)
            if tag in ("ul", "ol"):
                self.lists.append([tag == "ol", 1])
        elif tag == "li":
            self._break(1)
            ordered = self.lists[-1] if self.lists else [False, 1]
            self._emit(f"{ordered[1]}. " if ordered[0] else "- ")
            ordered[1] += 1
        elif tag == "blockquote":
            self._break(2)
            self.quote += 1
        elif tag == "pre":
            self._break(2)
            self._emit("```")
            self._break(1)
            self.pre += 1
        elif tag == "code" and not self.pre:
            self._emit("`")
        elif tag == "br":
            self._emit("\n")
        elif tag == "hr":
            self._break(2)
            self._emit("---")
            self._break(2)
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self._emit(alt)

    def handle_endtag(self, tag):
        if tag in self.BLOCKS:
            self._break(2)
            if tag in ("ul", "ol") and self.lists:
                self.lists.pop()
        elif tag == "blockquote":
            self._break(2)
            self.quote = max(0, self.quote - 1)
        elif tag == "pre" and self.pre:
            self.pre -= 1
            if self.parts and not self.parts[-1].endswith("\n"):
                self.parts.append("\n")
            self.parts.append("> " * self.quote + "```")
            self._break(2)
        elif tag == "code" and not self.pre:
            self._emit("`")

    def handle_data(self, data):
        if self.pre:
            self._emit(data)
        elif data.strip():
            self._emit(data.lstrip() if self.pending_breaks or not self.parts else data)
        elif self.parts and not self.pending_breaks:
            self.parts.append(data)  # the space between two inline elements; dropped before a block

    def text(self) -> str:
        self.close()
        return "".join(self.parts).strip()


def html_to_text(html: str) -> str:
    parser = _HtmlToText()
    parser.feed(html)
    return parser.text()


_ANGLE_TAGS = re.compile(r"<([^<>]+)>")


def parse_tags(tags: str | None) -> list[str]:
    """`<a><b>` (dumps before 2024) or `|a|b|` (2024) as ["a", "b"]."""
    if not tags:
        return []
    if tags.startswith("<"):
        return _ANGLE_TAGS.findall(tags)
    return [t for t in tags.split("|") if t]


def iter_post_rows(path: str) -> Iterator[tuple[int, dict]]:
    """(line, attributes) of every <row> element, streamed: expat keeps no tree, so memory stays flat.

    Raises expat.ExpatError (with .lineno) where the XML stops being well formed, after the rows before it.
    """
    parser = expat.ParserCreate()
    rows: list[tuple[int, dict]] = []

    def start(name, attributes):
        if name == "row":
            rows.append((parser.CurrentLineNumber, attributes))

    parser.StartElementHandler = start
    with open_binary(path) as f:
        while True:
            chunk = f.read(1 << 20)
            try:
                parser.Parse(chunk, not chunk)
            finally:
                yield from rows
                rows.clear()
            if not chunk:
                return


def _row_int(row: dict, name: str) -> int | None:
    value = row.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _row_where(path: str, line: int, row: dict) -> str:
    return f"{path}:{line} (row Id {row['Id']})" if "Id" in row else f"{path}:{line}"


def iter_stackexchange(path: str, min_score: int | None = None) -> Iterator[Example | Skip | Ignored]:
    """Each question of a `Posts.xml` with its accepted answer, as a user/assistant conversation.

    Two passes, neither holding bodies it does not need. The first maps accepted answer ids to their
    questions (ids only) and reports bad rows. The second keeps, for each such pair, whichever post
    comes first until its partner arrives (dumps are not in Id order: the 2024 one groups rows by
    post type), then emits the pair. Questions without an accepted answer and other post types are
    counted in one closing `Ignored`.
    """
    site = os.path.basename(os.path.dirname(os.path.abspath(path)))
    source = f"stackexchange/{site}"
    accepted: dict[int, int] = {}  # answer id -> question id
    ignored = collections.Counter()
    try:
        for line, row in iter_post_rows(path):
            post_id, post_type = _row_int(row, "Id"), _row_int(row, "PostTypeId")
            if post_id is None or post_type is None:
                missing = "Id" if post_id is None else "PostTypeId"
                yield Skip(_row_where(path, line, row), "bad_row", f"no integer {missing} "
                                                                   f"({row.get(missing)!r})")
                continue
            if post_type == 1:
                answer = _row_int(row, "AcceptedAnswerId")
                if answer is not None:
                    accepted[answer] = post_id
                elif "AcceptedAnswerId" in row:
                    yield Skip(_row_where(path, line, row), "bad_row",
                               f"AcceptedAnswerId {row['AcceptedAnswerId']!r} is not an integer")
                else:
                    ignored["question_without_accepted_answer"] += 1
            elif post_type != 2:
                ignored[f"post_type_{post_type}"] += 1
    except expat.ExpatError as e:
        yield Skip(f"{path}:{e.lineno}", "bad_xml", f"not well-formed XML ({expat.ErrorString(e.code)}); "
                                                    f"the rest of the file is unread")
    questions_wanted = set(accepted.values())
    held_questions: dict[int, tuple[str, dict]] = {}
    held_answers: dict[int, tuple[str, dict]] = {}
    try:
        for line, row in iter_post_rows(path):
            post_id, post_type = _row_int(row, "Id"), _row_int(row, "PostTypeId")
            where = _row_where(path, line, row)
            if post_type == 1 and post_id in questions_wanted:
                if post_id in held_answers:
                    yield _pair(source, site, (where, row), held_answers.pop(post_id), min_score)
                else:
                    held_questions[post_id] = (where, row)
            elif post_type == 2 and post_id in accepted:
                question = accepted[post_id]
                if _row_int(row, "ParentId") != question:
                    yield Skip(where, "bad_row", f"accepted answer of question {question} has ParentId "
                                                 f"{row.get('ParentId')!r}")
                    questions_wanted.discard(question)
                    held_questions.pop(question, None)
                elif question in held_questions:
                    yield _pair(source, site, held_questions.pop(question), (where, row), min_score)
                else:
                    held_answers[question] = (where, row)
    except expat.ExpatError:
        pass  # reported by the first pass, which stopped at the same place
    for question, (where, row) in held_questions.items():
        yield Skip(where, "accepted_answer_missing", f"accepted answer {row.get('AcceptedAnswerId')} is not in the file")
    if ignored:
        yield Ignored(dict(ignored))


def _pair(source: str, site: str, question: tuple[str, dict], answer: tuple[str, dict],
          min_score: int | None) -> Example | Skip:
    (where, q), (answer_where, a) = question, answer
    for post, post_where in ((q, where), (a, answer_where)):
        if _row_int(post, "Score") is None:
            return Skip(post_where, "bad_row", f"no integer Score ({post.get('Score')!r})")
        if post.get("Body") is None:
            return Skip(post_where, "bad_row", "no Body")
    if q.get("Title") is None:
        return Skip(where, "bad_row", "question has no Title")
    score, answer_score = _row_int(q, "Score"), _row_int(a, "Score")
    if min_score is not None and min(score, answer_score) < min_score:
        return Skip(where, "score_below_minimum", f"question score {score}, answer score {answer_score} "
                                                  f"(minimum {min_score})")
    question_text = html_to_text(q["Body"])
    messages = [{"role": "user", "content": f"{q['Title'].strip()}\n\n{question_text}".strip()},
                {"role": "assistant", "content": html_to_text(a["Body"])}]
    meta = {"source": source, "id": f"{site}/{q['Id']}", "answer_id": int(a["Id"]),
            "tags": parse_tags(q.get("Tags")), "score": score, "answer_score": answer_score}
    return Example(where, messages, meta)


# --- the writer ------------------------------------------------------------------------------------


@dataclass
class SFTConfig:
    inputs: Sequence[str]
    output_prefix: str
    tokenizer_model: str
    source: str | None = None  # source name for records without a `source` field (default: the file's name)
    min_score: int | None = None  # Stack Exchange: both posts need at least this score
    append_eod: bool = False  # end each conversation with EOS (unscored)
    strict: bool = False
    batch_size: int = 256  # conversations encoded together
    max_logged_skips: int = 20


@dataclass
class SourceCounts:
    conversations: int = 0
    turns: int = 0
    tokens: int = 0
    scored_tokens: int = 0
    skipped: int = 0


@dataclass
class SFTSummary:
    inputs: list[str]
    outputs: dict[str, str]
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # by reason
    ignored: dict[str, int] = field(default_factory=dict)  # Stack Exchange posts that are not Q&A pairs
    seconds: float = 0.0

    @property
    def conversations(self) -> int:
        return sum(c.conversations for c in self.sources.values())

    def format(self) -> str:
        rows = [f"inputs       {len(self.inputs)} file(s), {self.conversations:,} conversations in {self.seconds:.2f} s"]
        for name, c in sorted(self.sources.items()):
            rows.append(f"[{name}] {c.conversations:,} conversations, {c.turns:,} turns, {c.tokens:,} tokens "
                        f"({c.scored_tokens / max(c.tokens, 1):.0%} scored), {c.skipped:,} skipped")
        rows.append("skipped      " + (", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"))
        if self.ignored:
            rows.append("ignored      " + ", ".join(f"{k}: {v}" for k, v in sorted(self.ignored.items())))
        rows.append("outputs      " + ", ".join(f"{p}.bin/.idx" for p in self.outputs.values()))
        return "\n".join(rows)


def sft_output_prefixes(output_prefix: str) -> dict[str, str]:
    return {"tokens": f"{output_prefix}_text_document", "loss_mask": f"{output_prefix}_loss_mask_document"}


def _examples(path: str, cfg: SFTConfig) -> Iterator[Example | Skip | Ignored]:
    if path.endswith(XML_SUFFIXES):
        yield from iter_stackexchange(path, cfg.min_score)
        return
    default_source = cfg.source or _default_source(path)
    for where, record in iter_records(path):
        if isinstance(record, BadRecord):
            yield Skip(where, record.kind, record.message)
        else:
            yield example_from_record(record, where, default_source)


def preprocess_sft(cfg: SFTConfig, progress: bool = True, log=print) -> SFTSummary:
    """Write the token and loss-mask datasets, the sidecar and the report for `cfg.inputs`."""
    from tqdm import tqdm

    paths = expand_inputs(cfg.inputs)
    tokenizer = load_tokenizer(cfg.tokenizer_model)
    if tokenizer.chat_template is None:
        raise SFTError(f"{cfg.tokenizer_model}: the tokenizer has no chat template "
                       f"(train it with tools/train_tokenizer.py --chat-template ...)")
    encoder = tokenizer.chat_template.bind(tokenizer)
    outputs = sft_output_prefixes(cfg.output_prefix)
    summary = SFTSummary(inputs=paths, outputs=outputs)
    skips: list[dict] = []
    eod = [tokenizer.eod_id] if cfg.append_eod else []
    tokens_out = IndexedDatasetWriter(outputs["tokens"], dtype=best_token_dtype(tokenizer.vocab_size))
    mask_out = IndexedDatasetWriter(outputs["loss_mask"], dtype=np.uint8)
    sidecar = SidecarWriter(outputs["tokens"])
    start = time.perf_counter()
    bar = tqdm(unit=" conv", disable=not progress, desc="preprocess_sft", dynamic_ncols=True)

    def record_skip(skip: Skip) -> None:
        if cfg.strict and skip.kind not in FILTERED_KINDS:
            raise SFTError(f"{skip.where}: {skip.message} (--strict stops at the first bad record)")
        summary.skipped[skip.kind] = summary.skipped.get(skip.kind, 0) + 1
        skips.append(asdict(skip))
        if len(skips) <= cfg.max_logged_skips:
            (bar.write if progress else log)(f"skipped {skip.where}: {skip.message}")

    def flush(batch: list[tuple[Example, list]]) -> None:
        contents = tokenizer.encode_batch([content for _, turns in batch for _, content in turns])
        at = 0
        for example, turns in batch:
            ids, mask = encoder.encode_turns(turns, contents[at: at + len(turns)])
            at += len(turns)
            ids, mask = np.concatenate([ids, eod]).astype(np.int64), np.concatenate([mask, [0] * len(eod)])
            tokens_out.add_document(ids)
            mask_out.add_document(mask.astype(np.uint8))
            sidecar.add(example.meta)
            counts = summary.sources.setdefault(example.meta["source"], SourceCounts())
            counts.conversations += 1
            counts.turns += len(turns)
            counts.tokens += len(ids)
            counts.scored_tokens += int(mask.sum())
        bar.update(len(batch))
        batch.clear()

    try:
        for path in paths:
            batch: list[tuple[Example, list]] = []
            for item in _examples(path, cfg):
                if isinstance(item, Ignored):
                    for kind, n in item.counts.items():
                        summary.ignored[kind] = summary.ignored.get(kind, 0) + n
                    continue
                if isinstance(item, Skip):
                    record_skip(item)
                    continue
                try:
                    turns = tokenizer.chat_template.check(item.messages)
                except ChatFormatError as e:
                    record_skip(Skip(item.where, e.kind, str(e)))
                    summary.sources.setdefault(item.meta["source"], SourceCounts()).skipped += 1
                    continue
                batch.append((item, turns))
                if len(batch) >= cfg.batch_size:
                    flush(batch)
            flush(batch)
        tokens_out.finalize()
        mask_out.finalize()
        sidecar.finalize()
        record_tokenizer(outputs["tokens"], tokenizer.identity())
    except BaseException:
        tokens_out.discard()
        mask_out.discard()
        sidecar.discard()
        raise
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    if len(skips) > cfg.max_logged_skips:
        log(f"... {len(skips) - cfg.max_logged_skips} more skipped records not shown (all are in the report)")
    write_json_atomic(f"{cfg.output_prefix}_sft.json", {
        "config": jsonable(cfg), "tokenizer": tokenizer.identity(), "summary": asdict(summary),
        "skipped_records": skips,
    })
    return summary

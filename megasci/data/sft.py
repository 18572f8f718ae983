"""Post-training (SFT) data: the driver that renders conversations with the chat template and writes
token and loss-mask datasets.

Inputs: JSONL or JSON array (plain, `.gz`, `.zst`) or Parquet records, read through
megasci/data/records.py and turned into conversations by conversations.py (chat and instruction
records), and Stack Exchange data dumps' `Posts.xml` (stackexchange.py). Every conversation is
rendered with the tokenizer's chat template (megasci/tokenizer/chat.py).

Outputs (names: megasci/data/naming.py), committed together only when complete:
`<prefix>_text_document.{bin,idx}` (one document of one sequence per conversation),
`<prefix>_loss_mask_document.{bin,idx}` (uint8, the same lengths: 1 on assistant tokens and each
assistant turn's end marker), the sidecar `<prefix>_text_document.docs.jsonl` (source and
conversation id; tags and scores for Stack Exchange); then the report `<prefix>_sft.json` (counts
per source, every skipped record with its reason and place).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from megasci.data.conversations import Example, Ignored, Skip, example_from_record, source_of_file
from megasci.data.indexed_dataset import IndexedDatasetWriter, best_token_dtype, finalize_together
from megasci.data.naming import sft_output_prefixes, sft_report_path, tokenizer_record_path
from megasci.data.records import BadRecord, iter_records
from megasci.data.sidecar import SidecarWriter
from megasci.data.stackexchange import XML_SUFFIXES, iter_stackexchange
from megasci.tokenizer import ChatFormatError, load_tokenizer
from megasci.utils.io import expand_inputs, jsonable, write_json_atomic

FILTERED_KINDS = ("score_below_minimum",)  # dropped by an option, not malformed: --strict lets them pass


class SFTError(ValueError):
    """A malformed record under `--strict`, or unusable input (no chat template, no inputs)."""


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
        rows = [
            f"inputs       {len(self.inputs)} file(s), {self.conversations:,} conversations in {self.seconds:.2f} s"
        ]
        for name, c in sorted(self.sources.items()):
            rows.append(
                f"[{name}] {c.conversations:,} conversations, {c.turns:,} turns, {c.tokens:,} tokens "
                f"({c.scored_tokens / max(c.tokens, 1):.0%} scored), {c.skipped:,} skipped"
            )
        rows.append("skipped      " + (", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"))
        if self.ignored:
            rows.append("ignored      " + ", ".join(f"{k}: {v}" for k, v in sorted(self.ignored.items())))
        rows.append("outputs      " + ", ".join(f"{p}.bin/.idx" for p in self.outputs.values()))
        return "\n".join(rows)


class MaskedDatasetWriter:
    """The token and loss-mask datasets of one write (`sft_output_prefixes`), with the tokenizer record
    beside the tokens. They commit as one write whose tokens' record names the mask, so a reader can
    tell a masked dataset whose mask went missing from a pretraining one (gpt_dataset.loss_mask_prefix)."""

    def __init__(self, output_prefix: str, tokenizer):
        self.outputs = sft_output_prefixes(output_prefix)
        self.tokens = IndexedDatasetWriter(self.outputs["tokens"], dtype=best_token_dtype(tokenizer.vocab_size))
        self.mask = IndexedDatasetWriter(self.outputs["loss_mask"], dtype=np.uint8)
        self.tokens.attach_json(tokenizer_record_path(self.outputs["tokens"]), tokenizer.identity())

    def add_document(self, ids, mask) -> None:
        self.tokens.add_document(ids)
        self.mask.add_document(np.asarray(mask, dtype=np.uint8))

    def finalize(self) -> None:
        finalize_together(
            [self.tokens, self.mask],
            links={self.outputs["tokens"]: {"loss_mask": os.path.basename(self.outputs["loss_mask"])}},
        )

    def discard(self) -> None:
        self.tokens.discard()
        self.mask.discard()


def _examples(path: str, cfg: SFTConfig) -> Iterator[Example | Skip | Ignored]:
    if path.endswith(XML_SUFFIXES):
        yield from iter_stackexchange(path, cfg.min_score)
        return
    default_source = cfg.source or source_of_file(path)
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
        raise SFTError(
            f"{cfg.tokenizer_model}: the tokenizer has no chat template "
            f"(train it with tools/train_tokenizer.py --chat-template ...)"
        )
    encoder = tokenizer.chat_template.bind(tokenizer)
    out = MaskedDatasetWriter(cfg.output_prefix, tokenizer)
    summary = SFTSummary(inputs=paths, outputs=out.outputs)
    skips: list[dict] = []
    eod = [tokenizer.eod_id] if cfg.append_eod else []
    sidecar = SidecarWriter(out.outputs["tokens"])
    out.tokens.attach(sidecar.target)
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
            ids, mask = encoder.encode_turns(turns, contents[at : at + len(turns)])
            at += len(turns)
            ids, mask = np.concatenate([ids, eod]).astype(np.int64), np.concatenate([mask, [0] * len(eod)])
            out.add_document(ids, mask)
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
        out.finalize()
    except BaseException:
        out.discard()
        raise
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    if len(skips) > cfg.max_logged_skips:
        log(f"... {len(skips) - cfg.max_logged_skips} more skipped records not shown (all are in the report)")
    write_json_atomic(
        sft_report_path(cfg.output_prefix),
        {
            "config": jsonable(cfg),
            "tokenizer": tokenizer.identity(),
            "summary": asdict(summary),
            "skipped_records": skips,
        },
    )
    return summary

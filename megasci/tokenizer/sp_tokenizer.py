"""SentencePiece tokenizers: loading ours or anyone's `.model`, and training one tuned for LaTeX."""

from __future__ import annotations

import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import sentencepiece as spm

from megasci.tokenizer.base import Tokenizer
from megasci.tokenizer.chat import ChatTemplate, crosses_a_marker, get_chat_template
from megasci.utils.io import atomic_output, file_sha256, write_json_atomic

# Special ids are fixed so every tokenizer we train agrees on them (saved beside the model too).
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3

LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
# Training "sentences" are lines with the newlines before them: SentencePiece strips a sentence's
# trailing whitespace and drops whitespace-only ones, which would hide newlines from training.
_LINE_WITH_BREAKS = re.compile(r"\n*[^\n]+|\n+")
# Newline runs are always tokens of their own, so no piece spans a line break; being whitespace,
# they cannot split a word or a command the way a user-defined `\in` splits `\input`.
NEWLINE_PIECES = ["\n", "\n\n"]


def meta_path(model_path: str) -> str:
    return model_path[: -len(".model")] + ".meta.json" if model_path.endswith(".model") else model_path + ".meta.json"


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; special ids from our `.meta.json` when present, else from the model itself."""

    def __init__(self, model_path: str):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"{model_path}: SentencePiece model not found")
        self.path = model_path
        self.name = os.path.basename(model_path)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.load(model_path)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{model_path}: not a SentencePiece model ({e})") from None
        own = lambda i: i if i is not None and i >= 0 else None  # noqa: E731 - spm says -1 for "none"
        self.bos_id, self.eos_id, self.pad_id = own(self._sp.bos_id()), own(self._sp.eos_id()), own(self._sp.pad_id())
        meta_file = meta_path(model_path)
        self.meta = {}
        if os.path.isfile(meta_file):
            with open(meta_file, encoding="utf-8") as f:
                self.meta = json.load(f)
            self.bos_id, self.eos_id, self.pad_id = self.meta["bos_id"], self.meta["eos_id"], self.meta["pad_id"]
            if self.meta.get("chat_template"):
                self.chat_template = ChatTemplate.from_meta(self.meta["chat_template"])
                self.chat_template.bind(self)  # its markers must be single tokens of this model

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def unk_id(self):
        return self._sp.unk_id()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts, num_threads=1)

    def encode_to_arrays(self, texts: list[str]) -> list[np.ndarray]:
        try:
            return self._sp.encode(texts, num_threads=1, out_type="numpy")
        except (ValueError, TypeError):  # older sentencepiece has no array output
            return super().encode_to_arrays(texts)

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def pieces(self, text: str) -> list[str]:
        return self._sp.encode(text, out_type=str)

    def identity(self) -> dict:
        return {**super().identity(), "kind": "sentencepiece", "sha256": file_sha256(self.path)}

    def files(self) -> dict[str, str]:
        """The model as `tokenizer.model`, with its `.meta.json` (special ids, chat template) beside it."""
        copies = {"tokenizer.model": self.path}
        if os.path.isfile(meta_path(self.path)):
            copies[meta_path("tokenizer.model")] = meta_path(self.path)
        return copies


@dataclass
class SentencePieceTrainConfig:
    """Training settings; defaults are the reference run's (vocabulary 102,400, unigram)."""

    vocab_size: int = 102400
    model_type: str = "unigram"  # or "bpe"
    character_coverage: float = 0.9999  # rarer characters fall back to bytes
    input_sentence_size: int = 5_000_000  # lines sampled (reservoir, shuffled) from the corpus
    max_documents: int | None = None  # stop reading the corpus after this many documents
    max_line_chars: int = 4096  # longer lines are cut for training only, never for encoding
    max_sentencepiece_length: int = 24  # room for `\begin{equation}` (16) and `\operatorname` pieces
    mined_commands: int = 1000  # most frequent `\commands` guaranteed as whole pieces (unigram)
    min_command_count: int = 5
    num_threads: int = os.cpu_count() or 1
    seed: int = 1234
    chat_template: str | None = None  # a megasci.tokenizer.chat template whose markers become pieces
    extra_options: dict = field(default_factory=dict)


@dataclass
class TrainReport:
    model_path: str
    vocab_size: int
    documents: int
    lines: int
    characters: int
    commands_seen: int
    commands_mined: list[str]
    commands_added: list[str]
    commands_not_whole: list[str]
    pieces_unused_for_chat: list[str] = field(default_factory=list)


def _training_lines(documents: Iterable[str], cfg: SentencePieceTrainConfig, stats: dict) -> Iterator[str]:
    """Cut documents into lines (newlines kept) and count LaTeX commands on the way."""
    commands: Counter = stats["commands"]
    for doc in documents:
        if cfg.max_documents is not None and stats["documents"] >= cfg.max_documents:
            return
        stats["documents"] += 1
        stats["characters"] += len(doc)
        commands.update(LATEX_COMMAND.findall(doc))
        for line in _LINE_WITH_BREAKS.findall(doc):
            for start in range(0, len(line), cfg.max_line_chars):
                stats["lines"] += 1
                yield line[start : start + cfg.max_line_chars]


def _add_whole_pieces(model_proto: bytes, commands: list[str]) -> tuple[bytes, list[str]]:
    """Make each command a vocabulary piece of a unigram model, keeping the vocabulary size.

    Each new piece replaces the lowest-scoring multi-character piece and gets the best score of
    any learned piece, so Viterbi takes a command whole wherever it occurs as a command. It stays
    an ordinary piece: a longer piece (`\\input`) still wins over a split (`\\in` + `put`), which
    `user_defined_symbols` would force.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model_proto)
    vocab = {p.piece for p in proto.pieces}
    protected = set(commands)
    missing = [c for c in commands if c not in vocab]
    victims = sorted(
        (
            i
            for i, p in enumerate(proto.pieces)
            if p.type == pb.ModelProto.SentencePiece.NORMAL and len(p.piece) > 1 and p.piece not in protected
        ),
        key=lambda i: proto.pieces[i].score,
    )
    best_score = max(p.score for p in proto.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL)
    added = []
    for command, victim in zip(missing, victims):
        proto.pieces[victim].piece = command
        proto.pieces[victim].score = best_score
        added.append(command)
    return proto.SerializeToString(), added


def _make_markers_atomic(model_proto: bytes, markers: list[str]) -> tuple[bytes, list[str]]:
    """Make each chat marker one token wherever it occurs, with nothing of its neighbours.

    Every learned piece that could cover part of a marker and text beside it becomes UNUSED (never
    matched, ids kept), so no path crosses a marker's edges. The markers, reserved as user-defined
    symbols in training, become normal pieces with the best learned score: any split of a marker
    into two or more pieces scores lower (scores are negative), so it is always taken whole. Being
    normal, they score like every other piece in exported tokenizers too (a user-defined piece's
    `length * max_score - 0.1` would fall below every learned score for a long marker).
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    kind = pb.ModelProto.SentencePiece
    proto = pb.ModelProto()
    proto.ParseFromString(model_proto)
    best_score = max(p.score for p in proto.pieces if p.type == kind.NORMAL)
    if best_score >= 0:
        raise ValueError(f"the best piece scores {best_score}, not below 0: chat markers could be split")
    unused = []
    for p in proto.pieces:
        if p.piece in markers:
            p.type, p.score = kind.NORMAL, best_score
        elif p.type in (kind.NORMAL, kind.USER_DEFINED) and any(crosses_a_marker(p.piece, m) for m in markers):
            p.type = kind.UNUSED
            unused.append(p.piece)
    return proto.SerializeToString(), unused


def _train(lines: Iterator[str], buffer: io.BytesIO, cfg: SentencePieceTrainConfig, chat) -> None:
    """SentencePiece's trainer with the settings that keep LaTeX byte-exact (see train_sentencepiece)."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines,
        model_writer=buffer,
        vocab_size=cfg.vocab_size,
        model_type=cfg.model_type,
        character_coverage=cfg.character_coverage,
        input_sentence_size=cfg.input_sentence_size,
        shuffle_input_sentence=True,
        max_sentence_length=cfg.max_line_chars * 4,  # bytes; a UTF-8 character is at most 4
        max_sentencepiece_length=cfg.max_sentencepiece_length,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        split_by_unicode_script=False,  # lets `\frac` and `{equation}` be pieces
        allow_whitespace_only_pieces=True,  # indentation runs
        byte_fallback=True,
        user_defined_symbols=NEWLINE_PIECES + (chat.markers if chat is not None else []),
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=PAD_ID,
        num_threads=cfg.num_threads,
        minloglevel=2,
        **cfg.extra_options,
    )


def train_sentencepiece(documents: Iterable[str], model_path: str, cfg: SentencePieceTrainConfig) -> TrainReport:
    """Train on raw documents and write `model_path` plus its `.meta.json`, atomically.

    Identity normalisation and no whitespace collapsing keep text byte-exact (decode(encode(x)) == x,
    newlines and indentation included); byte fallback means no unknown tokens; digits are split.
    """
    if not model_path.endswith(".model"):
        raise ValueError(f"{model_path}: the model file name must end in .model")
    if cfg.model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {cfg.model_type!r}")
    chat = get_chat_template(cfg.chat_template) if cfg.chat_template is not None else None
    if chat is not None and cfg.model_type != "unigram":
        raise ValueError("a chat template needs a unigram model (its markers are made atomic by their scores)")
    stats = {"documents": 0, "lines": 0, "characters": 0, "commands": Counter()}
    buffer = io.BytesIO()
    input_errors: list[Exception] = []

    def lines() -> Iterator[str]:
        try:
            yield from _training_lines(documents, cfg, stats)
        except Exception as e:  # sentencepiece would report it as "INTERNAL: ..." with a C++ trace
            input_errors.append(e)
            raise

    spm.set_random_generator_seed(cfg.seed)  # reservoir sampling and shuffling
    try:
        _train(lines(), buffer, cfg, chat)
    except RuntimeError:
        if input_errors:  # the reader's own error (a truncated file, a bad record under strict) names the file
            raise input_errors[0] from None
        raise
    if stats["documents"] == 0:
        raise ValueError("no training documents: the corpus is empty")
    proto = buffer.getvalue()
    mined = [c for c, n in stats["commands"].most_common(cfg.mined_commands) if n >= cfg.min_command_count]
    added: list[str] = []
    if cfg.model_type == "unigram" and mined:
        proto, added = _add_whole_pieces(proto, mined)
    unused_for_chat: list[str] = []
    if chat is not None:
        proto, unused_for_chat = _make_markers_atomic(proto, chat.markers)
    with atomic_output(model_path) as f:
        f.write(proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    not_whole = [c for c in mined if len(sp.encode(c)) != 1]
    report = TrainReport(
        model_path=model_path,
        vocab_size=sp.get_piece_size(),
        documents=stats["documents"],
        lines=stats["lines"],
        characters=stats["characters"],
        commands_seen=len(stats["commands"]),
        commands_mined=mined,
        commands_added=added,
        commands_not_whole=not_whole,
        pieces_unused_for_chat=unused_for_chat,
    )
    write_json_atomic(
        meta_path(model_path),
        {
            "kind": "sentencepiece",
            "bos_id": BOS_ID,
            "eos_id": EOS_ID,
            "pad_id": PAD_ID,
            "unk_id": UNK_ID,
            "vocab_size": report.vocab_size,
            "sha256": file_sha256(model_path),
            "config": asdict(cfg),
            "documents": report.documents,
            "mined_commands": mined,
            **({"chat_template": chat.to_meta()} if chat is not None else {}),
        },
    )
    return report

"""The tokenizer interface every stage after tokenization relies on."""

from __future__ import annotations

import abc

import numpy as np

from megasci.tokenizer.chat import ChatTemplate


class Tokenizer(abc.ABC):
    """Text to token ids and back, plus the special ids datasets and training need.

    `eod_id` ends a document in `.bin` files (`--append-eod`); it is the EOS id.
    """

    name: str = ""
    # Set by each tokenizer's constructor; None where the tokenizer has no such token.
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    # The conversation format this tokenizer was trained for (its markers are tokens of it), if any.
    chat_template: ChatTemplate | None = None

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @property
    def unk_id(self) -> int | None:
        """The unknown-token id, where the tokenizer has one (byte fallback means ours is never produced)."""
        return None

    @property
    def eod_id(self) -> int:
        if self.eos_id is None:
            raise ValueError(f"tokenizer {self.name!r} has no EOS id to end documents with")
        return self.eos_id

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_to_arrays(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids as arrays: the bulk path for preprocessing, which never needs Python ints."""
        return [np.asarray(ids, dtype=np.int64) for ids in self.encode_batch(texts)]

    @abc.abstractmethod
    def decode(self, ids) -> str: ...

    @abc.abstractmethod
    def id_to_piece(self, token_id: int) -> str: ...

    def files(self) -> dict[str, str]:
        """The files that make this tokenizer, by the name a copy gives each (a checkpoint's copy
        loads back with `load_tokenizer` on the first one): each tokenizer names its own, so no
        caller guesses whether it is a SentencePiece `.model` or a HuggingFace `tokenizer.json`."""
        raise NotImplementedError(f"tokenizer {self.name!r} cannot be copied into a checkpoint")

    def identity(self) -> dict:
        """What identifies this tokenizer in checkpoints and exports (kind, file hash, vocab, special ids,
        and the chat template where it has one)."""
        identity = {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
        }
        if self.chat_template is not None:
            identity["chat_template"] = self.chat_template.to_meta()
        return identity

"""HuggingFace `tokenizer.json` files (LLaMA-3, DeepSeek, ...) through the `tokenizers` library.

A `chat_template` in the `tokenizer_config.json` beside the file that is one of ours (megasci/tokenizer/chat.py,
written by tools/add_chat_template.py) is the tokenizer's chat template; another model's own Jinja is left to
transformers (our SFT encoder cannot reproduce an arbitrary template).
"""

from __future__ import annotations

import json
import os

from megasci.tokenizer.base import Tokenizer
from megasci.tokenizer.chat import CHAT_TEMPLATES
from megasci.utils.io import file_sha256

# Names the common model families give their special tokens, tried when no config names them.
_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<｜begin▁of▁sentence｜>", "<|endoftext|>")
_EOS_NAMES = ("</s>", "<|end_of_text|>", "<｜end▁of▁sentence｜>", "<|endoftext|>")
_PAD_NAMES = ("<pad>", "<|pad|>", "<｜▁pad▁｜>")


class HFTokenizer(Tokenizer):
    """Special tokens come from `tokenizer_config.json` beside the file when present, else by well-known names."""

    def __init__(self, path: str):
        try:
            from tokenizers import Tokenizer as _HFTokenizer
        except ImportError:
            raise ImportError(
                "loading a tokenizer.json needs the `tokenizers` package: pip install tokenizers"
            ) from None
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: tokenizer.json not found")
        self.path = path
        self.name = os.path.basename(os.path.dirname(os.path.abspath(path))) + "/" + os.path.basename(path)
        try:
            self._tok = _HFTokenizer.from_file(path)
        except Exception as e:  # the Rust library raises its own exception type
            raise ValueError(f"{path}: not a HuggingFace tokenizer file ({e})") from None
        config_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
        names = self._special_names(config_path)
        self.bos_id = self._first_id(names.get("bos_token"), _BOS_NAMES)
        self.eos_id = self._first_id(names.get("eos_token"), _EOS_NAMES)
        self.pad_id = self._first_id(names.get("pad_token"), _PAD_NAMES)
        jinja = names.get("chat_template")
        self.chat_template = next(
            (t for t in CHAT_TEMPLATES.values() if isinstance(jinja, str) and t.jinja() == jinja), None
        )
        if self.chat_template is not None:
            try:
                self.chat_template.bind(self)  # its markers must be single tokens of this tokenizer
            except ValueError as error:
                raise ValueError(f"{config_path}: chat_template {self.chat_template.name!r}: {error}") from None

    @staticmethod
    def _special_names(config_path: str) -> dict:
        """The special tokens' names and the chat template from tokenizer_config.json, if there is one."""
        if not os.path.isfile(config_path):
            return {}
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{config_path}: unreadable ({error})") from None
        out = {"chat_template": config.get("chat_template")}
        for key in ("bos_token", "eos_token", "pad_token"):
            value = config.get(key)
            out[key] = value.get("content") if isinstance(value, dict) else value
        return out

    def _first_id(self, configured, fallbacks):
        for name in ([configured] if configured else []) + list(fallbacks):
            token_id = self._tok.token_to_id(name)
            if token_id is not None:
                return token_id
        return None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def unk_id(self):
        model = self._tok.model
        unk = getattr(model, "unk_token", None)
        return self._tok.token_to_id(unk) if unk else None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def id_to_piece(self, token_id: int) -> str:
        return self._tok.id_to_token(int(token_id))

    def identity(self) -> dict:
        return {**super().identity(), "kind": "huggingface", "sha256": file_sha256(self.path)}

    def files(self) -> dict[str, str]:
        """`tokenizer.json` with the configs beside it that name its special tokens (and chat template)."""
        folder = os.path.dirname(self.path)
        copies = {"tokenizer.json": self.path}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if os.path.isfile(os.path.join(folder, name)):
                copies[name] = os.path.join(folder, name)
        return copies

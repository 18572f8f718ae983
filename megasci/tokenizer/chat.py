"""Chat templates: a conversation rendered to token ids and a loss mask, and the same rendering as Jinja.

A template is part of a tokenizer's identity (stored in its `.meta.json`): its markers are single
tokens of that tokenizer, reserved when it was trained (`train_sentencepiece(chat_template=...)`).
The rendering puts nothing but a marker on either side of every turn's content, and no vocabulary
piece crosses a marker's edge (training ensures it), so encoding the whole rendered string gives
exactly the ids of encoding turn by turn: the ids transformers' `apply_chat_template` produces
from the Jinja string are the ids the SFT data was written with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ROLES = ("system", "user", "assistant")
SCORED_ROLE = "assistant"


class ChatFormatError(ValueError):
    """A conversation the template cannot render; `kind` names the reason for skip reports."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ChatTemplate:
    """`<role marker>content<end marker>` per turn, in order, nothing between turns.

    The assistant's content and its end marker are scored (loss mask 1): the model learns to say
    the end marker, which is where generation stops. A generation prompt is the assistant marker.
    """

    name: str
    role_markers: tuple[tuple[str, str], ...]  # (role, marker) for every role in ROLES
    end_marker: str

    @property
    def markers(self) -> list[str]:
        """Every control string, in the order they are reserved as vocabulary pieces."""
        return [marker for _, marker in self.role_markers] + [self.end_marker]

    def marker_of(self, role: str) -> str:
        return dict(self.role_markers)[role]

    def to_meta(self) -> dict:
        return {
            "name": self.name,
            "role_markers": dict(self.role_markers),
            "end_marker": self.end_marker,
            "jinja": self.jinja(),
        }

    @classmethod
    def from_meta(cls, meta: dict) -> ChatTemplate:
        template = cls(meta["name"], tuple((role, meta["role_markers"][role]) for role in ROLES), meta["end_marker"])
        if "jinja" in meta and meta["jinja"] != template.jinja():
            raise ValueError(f"chat template {template.name!r}: stored Jinja differs from its markers' rendering")
        return template

    def jinja(self) -> str:
        """The rendering for transformers' `apply_chat_template` (tokenizer_config.json `chat_template`)."""
        branches = "".join(
            f"{{%- {'if' if i == 0 else 'elif'} message['role'] == '{role}' -%}}{{{{ '{marker}' }}}}"
            for i, (role, marker) in enumerate(self.role_markers)
        )
        return (
            "{%- for message in messages -%}"
            f"{branches}"
            "{%- else -%}{{ raise_exception('unknown chat role: ' + message['role']) }}"
            "{%- endif -%}"
            f"{{{{ message['content'] + '{self.end_marker}' }}}}"
            "{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{ '{self.marker_of(SCORED_ROLE)}' }}}}{{%- endif -%}}"
        )

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        """The conversation as text, exactly as the Jinja string renders it."""
        turns = self.check(messages, require_assistant=False)
        text = "".join(self.marker_of(role) + content + self.end_marker for role, content in turns)
        return text + (self.marker_of(SCORED_ROLE) if add_generation_prompt else "")

    def check(self, messages, require_assistant: bool = True) -> list[tuple[str, str]]:
        """(role, content) per turn, or ChatFormatError: the one list of what a usable conversation is."""
        if not isinstance(messages, list):
            raise ChatFormatError("not_a_list", f"messages is a {type(messages).__name__}, not a list")
        if not messages:
            raise ChatFormatError("empty_conversation", "no messages")
        turns = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise ChatFormatError("bad_turn", f"message {i} is a {type(message).__name__}, not an object")
            role, content = message.get("role"), message.get("content")
            if role is None:
                raise ChatFormatError("missing_role", f"message {i} has no role")
            if role not in ROLES:
                raise ChatFormatError("unknown_role", f"message {i} has role {role!r}, not one of {', '.join(ROLES)}")
            if content is None:
                raise ChatFormatError("missing_content", f"message {i} ({role}) has no content")
            if not isinstance(content, str):
                raise ChatFormatError(
                    "non_string_content", f"message {i} ({role}) content is a {type(content).__name__}"
                )
            if not content.strip():
                raise ChatFormatError("empty_turn", f"message {i} ({role}) is empty")
            marker = next((m for m in self.markers if m in content), None)
            if marker is not None:
                raise ChatFormatError(
                    "marker_in_content", f"message {i} ({role}) contains the control marker {marker!r}"
                )
            turns.append((role, content))
        if require_assistant and not any(role == SCORED_ROLE for role, _ in turns):
            raise ChatFormatError("no_assistant_turn", "no assistant turn: nothing to train on")
        return turns

    def bind(self, tokenizer) -> ChatEncoder:
        return ChatEncoder(self, tokenizer)


class ChatEncoder:
    """A template bound to a tokenizer whose markers are single tokens of it."""

    def __init__(self, template: ChatTemplate, tokenizer):
        self.template = template
        self.tokenizer = tokenizer
        ids = {}
        for marker in template.markers:
            encoded = tokenizer.encode(marker)
            if len(encoded) != 1:
                raise ValueError(
                    f"tokenizer {tokenizer.name!r}: chat marker {marker!r} is {len(encoded)} tokens, not one "
                    f"(train the tokenizer with chat_template={template.name!r})"
                )
            ids[marker] = int(encoded[0])
        self.role_ids = {role: ids[marker] for role, marker in template.role_markers}
        self.end_id = ids[template.end_marker]

    def encode(self, messages, add_generation_prompt: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(token ids int64, loss mask uint8) of one conversation; see `encode_turns`."""
        turns = self.template.check(messages, require_assistant=not add_generation_prompt)
        return self.encode_turns(turns, self.tokenizer.encode_batch([c for _, c in turns]), add_generation_prompt)

    def encode_turns(
        self,
        turns: Sequence[tuple[str, str]],
        content_ids: Sequence[Sequence[int]],
        add_generation_prompt: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Assemble checked turns from their contents' ids (encoded in bulk by the caller).

        Mask 1 on an assistant turn's content and its end marker, 0 on markers that open turns and
        on every other turn.
        """
        ids, mask = [], []
        for (role, _), content in zip(turns, content_ids):
            scored = int(role == SCORED_ROLE)
            ids.append(self.role_ids[role])
            mask.append(0)
            ids.extend(int(t) for t in content)
            mask.extend([scored] * len(content))
            ids.append(self.end_id)
            mask.append(scored)
        if add_generation_prompt:
            ids.append(self.role_ids[SCORED_ROLE])
            mask.append(0)
        return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.uint8)


CHAT_TEMPLATES = {
    "megasci-v1": ChatTemplate(
        name="megasci-v1",
        role_markers=(("system", "<|system|>"), ("user", "<|user|>"), ("assistant", "<|assistant|>")),
        end_marker="<|end|>",
    ),
}


def get_chat_template(name: str) -> ChatTemplate:
    try:
        return CHAT_TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown chat template {name!r}; known: {', '.join(sorted(CHAT_TEMPLATES))}") from None


def crosses_a_marker(piece: str, marker: str) -> bool:
    """Whether `piece`, matched somewhere in text, could cover part of `marker` and text beside it.

    It crosses the marker's start if it ends with a prefix of the marker and is longer than that
    prefix, its end if it starts with a suffix of the marker and is longer, and both if it holds it.
    """
    if piece == marker:
        return False
    if marker in piece:
        return True
    for k in range(1, min(len(marker), len(piece) - 1) + 1):
        if piece.endswith(marker[:k]) or piece.startswith(marker[-k:]):
            return True
    return False

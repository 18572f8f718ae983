"""Chat markers for a tokenizer trained without them (LLaMA's, SmolLM's, ours without --chat-template).

The markers become added tokens of a HuggingFace `tokenizer.json`: `tokenizers` cuts them out of text
before normalising or splitting anything else, so no vocabulary piece crosses a marker's edge and the
rendered conversation encodes to exactly the ids of encoding turn by turn (megasci/tokenizer/chat.py),
which is what transformers' `apply_chat_template` does with the `chat_template` written beside it.
The existing ids keep their pieces; the new ones are appended, so a model trained with the original
grows its embeddings to match (`train.init_from`, megasci/training/checkpoint.py `grow_vocab`).

A SentencePiece `.model` is converted to tokenizer.json first by the export's conversion
(megasci/export/tokenizer.py: unigram models with the identity normaliser, as ours are); others are
refused there with the reason. A directory's tokenizer.json is preferred over its tokenizer.model,
which LLaMA-family downloads carry both of. Tokens are added as special tokens unless the tokenizer
config asks transformers to split special tokens (our SentencePiece exports do, so a literal "</s>"
stays text): there the markers are plain added tokens, which transformers never splits.
"""

from __future__ import annotations

import json
import os

from megasci.tokenizer.chat import get_chat_template

CONFIG_NAME, SPECIALS_NAME = "tokenizer_config.json", "special_tokens_map.json"


def source_tokenizer(path: str) -> str:
    """The file to extend: `path` itself, or a directory's tokenizer.json, else its tokenizer.model."""
    if not os.path.isdir(path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such tokenizer file or directory")
        return path
    for name in ("tokenizer.json", "tokenizer.model"):
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(f"{path}: directory holds neither tokenizer.json nor tokenizer.model")


def add_chat_markers(source: str, output: str, template: str = "megasci-v1") -> dict:
    """Write `output`/tokenizer.json (+ tokenizer_config.json with the template's Jinja, and the special
    tokens map) from the tokenizer at `source` with the template's markers added where missing.

    Returns {"source", "tokenizer", "added": {marker: id}, "vocab_size"}. `output` must not hold a tokenizer.
    """
    from tokenizers import AddedToken, Tokenizer

    from megasci.tokenizer import load_tokenizer

    chat = get_chat_template(template)
    path = source_tokenizer(source)
    out_file = os.path.join(output, "tokenizer.json")
    for name in ("tokenizer.json", "tokenizer.model"):
        if os.path.exists(os.path.join(output, name)):
            raise FileExistsError(f"{os.path.join(output, name)}: already exists; write into a new directory")
    folder = os.path.dirname(path)
    if path.endswith(".json"):
        tok = Tokenizer.from_file(path)
        config = _read_json(os.path.join(folder, CONFIG_NAME))
        specials = _read_json(os.path.join(folder, SPECIALS_NAME))
    else:
        from megasci.export.tokenizer import sentencepiece_to_tokenizers
        from megasci.export.writer import sentencepiece_tokenizer_config

        sp = load_tokenizer(path)
        tok = sentencepiece_to_tokenizers(path)
        specials, config = sentencepiece_tokenizer_config(sp, sp.identity())
    before = tok.get_vocab_size(with_added_tokens=True)
    special = not config.get("split_special_tokens", False)
    missing = [m for m in chat.markers if tok.token_to_id(m) is None]
    tok.add_tokens(
        [
            AddedToken(m, special=special, normalized=False, single_word=False, lstrip=False, rstrip=False)
            for m in missing
        ]
    )
    ids = {m: tok.token_to_id(m) for m in missing}
    if sorted(ids.values()) != list(range(before, before + len(missing))):
        raise ValueError(f"{path}: the markers got ids {ids}, not the {len(missing)} after its {before} tokens")
    config["chat_template"] = chat.jinja()
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    os.makedirs(output, exist_ok=True)
    tok.save(out_file)
    _write_json(os.path.join(output, CONFIG_NAME), config)
    if specials:
        _write_json(os.path.join(output, SPECIALS_NAME), specials)
    extended = load_tokenizer(out_file)  # reads the template back and checks each marker is one token
    if extended.chat_template is None or extended.chat_template.name != chat.name:
        raise ValueError(f"{os.path.join(output, CONFIG_NAME)}: the chat template does not read back")
    return {"source": path, "tokenizer": out_file, "added": ids, "vocab_size": extended.vocab_size}


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: not a JSON object")
    return value


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")

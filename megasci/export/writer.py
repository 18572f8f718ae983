"""Writing an export directory: the model half (config.json, generation_config.json, model.safetensors)
and the tokenizer half (tokenizer.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json).
`expected_config` is also what verification compares config.json against."""

from __future__ import annotations

import json
import os
import shutil

import torch

from megasci.export.tokenizer import sentencepiece_to_tokenizers
from megasci.model import ModelConfig, hf_config_dict, to_hf_state_dict
from megasci.model.dtypes import dtype_name
from megasci.tokenizer.sp_tokenizer import SentencePieceTokenizer


def expected_config(cfg: ModelConfig, identity: dict, dtype: torch.dtype) -> dict:
    """config.json as we write it: our HF mapping's fields, the tokenizer's special ids, the export dtype."""
    d = hf_config_dict(
        cfg,
        bos_token_id=identity.get("bos_id"),
        eos_token_id=identity.get("eos_id"),
        pad_token_id=identity.get("pad_id"),
    )
    d["torch_dtype"] = d["dtype"] = dtype_name(dtype)
    return d


def write_model_files(out_dir: str, model, identity: dict, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    config = expected_config(model.cfg, identity, dtype)
    write_json(os.path.join(out_dir, "config.json"), config)
    write_json(
        os.path.join(out_dir, "generation_config.json"),
        {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
    )
    hf_sd = to_hf_state_dict(model.state_dict(), model.cfg)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in hf_sd.items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})


def write_tokenizer_files(out_dir: str, tokenizer_path: str, identity: dict) -> None:
    """The training tokenizer for transformers: a SentencePiece `.model` as tokenizer.model (copied),
    tokenizer.json and the two configs transformers reads beside it (with the identity's chat template as
    `chat_template`); a HuggingFace `tokenizer.json` copied byte for byte with the configs beside it, the
    identity's chat template written into tokenizer_config.json.

    SentencePiece: special tokens are the training identity's ids. No BOS/EOS is added because training
    documents carry none at the start (only EOD at the end), and `split_special_tokens` keeps a literal
    "</s>" in text as the characters it is, as in training.
    """
    if tokenizer_path.endswith(".json"):
        _write_hf_tokenizer_files(out_dir, tokenizer_path, identity)
        return
    shutil.copyfile(tokenizer_path, os.path.join(out_dir, "tokenizer.model"))
    sentencepiece_to_tokenizers(tokenizer_path).save(os.path.join(out_dir, "tokenizer.json"))
    specials, config = sentencepiece_tokenizer_config(SentencePieceTokenizer(tokenizer_path), identity)
    write_json(os.path.join(out_dir, "special_tokens_map.json"), specials)
    write_json(
        os.path.join(out_dir, "tokenizer_config.json"),
        {
            **config,
            **({"chat_template": identity["chat_template"]["jinja"]} if identity.get("chat_template") else {}),
        },
    )


def sentencepiece_tokenizer_config(sp: SentencePieceTokenizer, identity: dict) -> tuple[dict, dict]:
    """(special_tokens_map, tokenizer_config) for a SentencePiece model converted to tokenizer.json: the
    identity's special ids by name, nothing added around the text, special-token text not parsed."""
    ids = {
        "bos_token": identity.get("bos_id"),
        "eos_token": identity.get("eos_id"),
        "unk_token": sp.unk_id,
        "pad_token": identity.get("pad_id"),
    }
    specials = {name: sp.id_to_piece(i) for name, i in ids.items() if i is not None}
    return specials, {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "add_bos_token": False,
        "add_eos_token": False,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
    }


def _write_hf_tokenizer_files(out_dir: str, tokenizer_path: str, identity: dict) -> None:
    """tokenizer.json as trained with (its sha256 is the identity's), the configs beside it copied, with
    the identity's chat template as `chat_template` (the configs a checkpoint carries are the run's own)."""
    folder = os.path.dirname(tokenizer_path)
    shutil.copyfile(tokenizer_path, os.path.join(out_dir, "tokenizer.json"))
    specials = os.path.join(folder, "special_tokens_map.json")
    if os.path.isfile(specials):
        shutil.copyfile(specials, os.path.join(out_dir, "special_tokens_map.json"))
    config_path = os.path.join(folder, "tokenizer_config.json")
    config = {}
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    if identity.get("chat_template"):
        config["chat_template"] = identity["chat_template"]["jinja"]
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    write_json(os.path.join(out_dir, "tokenizer_config.json"), config)


def make_readable(directory: str) -> None:
    """safetensors writes owner-only files; give them the permissions the umask allows, like the rest."""
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(directory):
        os.chmod(os.path.join(directory, name), 0o666 & ~umask)


def write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")

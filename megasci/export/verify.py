"""Verifying an export directory against the checkpoint it claims to be (`verify_export`).

The checks: config.json fields against the checkpoint's model config and tokenizer identity (vocab size
equals the embedding rows and covers the tokenizer); every tensor in model.safetensors equal to the
checkpoint's, cast to the export dtype; tokenizer.model (or, for a HuggingFace tokenizer, tokenizer.json) a
copy of the training tokenizer; the exported tokenizer against the training one (the file meta.json names by
sha256, read by our SentencePieceTokenizer or HFTokenizer): every piece, the special ids, and the ids and
decoded text of probe texts (a HuggingFace tokenizer's ids without its own post-processor's BOS, as trained)
with LaTeX, Unicode, newline runs, tabs, spaces, digits;
with a chat template, `apply_chat_template` on multi-turn probe conversations (with and without a
system turn, with and without the generation prompt) against our ids (`CHAT_PROBES`); transformers
loading every tensor into a LlamaForCausalLM; logits of the reloaded model against ours in the export
dtype on a probe batch, and on one row as long as the model's max_seq_len, so that every position a RoPE
scaling extends to is compared (tolerances in `LOGIT_RTOL`; a bfloat16 export is compared with our model
run in bfloat16, the same rounded weights); greedy continuation with `generate` (KV cache) against ours by
repeated full forward passes (by our KV cache for dynamic RoPE, whose cached keys keep the frequencies of
the length they were made at; a flip at a near-tie within the tolerance ends the comparison with a note
instead of failing).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from megasci.export.source import EXPORT_DTYPES, ExportError, tokenizer_identity, training_tokenizer_path
from megasci.export.tokenizer import literal_text_caveats
from megasci.export.writer import expected_config
from megasci.model import ModelConfig, to_hf_state_dict
from megasci.model.dtypes import DTYPES, dtype_name
from megasci.model.llama import KVCache
from megasci.tokenizer import Tokenizer, load_tokenizer
from megasci.tokenizer.chat import ChatTemplate
from megasci.tokenizer.probes import PROBE_TEXTS
from megasci.training.checkpoint import load_model, model_config_from_meta, read_meta, resolve_checkpoint
from megasci.utils.io import file_sha256

# Largest |HF logit - our logit| allowed, as a fraction of max(1, largest |our logit|). Both models get the
# same weights in the same dtype; only the order of floating-point operations may differ. On CPU (where we
# verify) the difference measured 0 in both dtypes for the tiny test model and a 6-layer, 512-wide one; the
# bounds leave room for other kernels: float32 as in tests/test_model.py, bfloat16 about 5 ulps (2^-8 each).
LOGIT_RTOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
GREEDY_TOKENS = 16
LOGIT_SLICE = 256  # positions per slice of the long row's logits: [LOGIT_SLICE, vocab] at a time, not [S, vocab]
_MISSING = "<missing>"
# Conversations the exported chat template must encode to our ids: multi-turn, with and without a system
# turn, LaTeX, Unicode and newlines in the content.
CHAT_PROBES = [
    [
        {"role": "user", "content": "What is $\\int_0^1 x^2\\,dx$?"},
        {"role": "assistant", "content": "It is $\\frac{1}{3}$.\n\nBy the power rule."},
        {"role": "user", "content": "And Ω ≥ 2?"},
    ],
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Define a manifold."},
        {"role": "assistant", "content": "A space locally like $\\mathbb{R}^n$."},
        {"role": "user", "content": "Thanks.\tOne more:  two spaces"},
        {"role": "assistant", "content": "Ask away."},
    ],
]


@dataclass
class Report:
    """What verification measured; `max_logit_diff` is in units of the logits, `tolerance` likewise."""

    export_dir: str
    checkpoint: str
    dtype: str
    max_logit_diff: float = 0.0
    tolerance: float = 0.0
    greedy_tokens: int = 0
    probe_tokens: int = 0
    logit_positions: int = 0  # the longest row whose logits were compared at every position
    notes: list[str] = field(default_factory=list)


def verify_export(
    export_dir: str, checkpoint: str, tokenizer: str | None = None, model=None, device: str = "cpu"
) -> Report:
    """Check an export directory against the checkpoint it claims to be; raise ExportError on any difference.

    `tokenizer` is the training SentencePiece model (default: the checkpoint's copy); `model` saves
    reloading the checkpoint when the caller has it on `device` in the export dtype already. Both models
    run on `device`; the tolerances were measured on CPU.
    """
    import transformers

    checkpoint = resolve_checkpoint(checkpoint)
    meta = read_meta(checkpoint)
    cfg = model_config_from_meta(meta)
    tokenizer = training_tokenizer_path(checkpoint, tokenizer, meta)
    sp = load_tokenizer(tokenizer)
    hf_kind = tokenizer.endswith(".json")
    identity = meta.get("tokenizer") or tokenizer_identity(tokenizer)
    config_path = os.path.join(export_dir, "config.json")
    dtype = _check_config(config_path, cfg, identity, sp.vocab_size)
    report = Report(export_dir=export_dir, checkpoint=checkpoint, dtype=dtype_name(dtype))
    if model is None or next(model.parameters()).dtype != dtype:
        model, _ = load_model(checkpoint, device=device, dtype=dtype)
    model.eval()
    _check_weights(os.path.join(export_dir, "model.safetensors"), model, dtype)

    copied = os.path.join(export_dir, "tokenizer.json" if hf_kind else "tokenizer.model")
    if not os.path.isfile(copied) or file_sha256(copied) != file_sha256(tokenizer):
        raise ExportError(f"{copied}: missing or not a copy of the training tokenizer {tokenizer}")
    hf_tok = transformers.AutoTokenizer.from_pretrained(export_dir)
    caveats = [] if hf_kind else literal_text_caveats(tokenizer)
    report.probe_tokens = _check_tokenizer(export_dir, hf_tok, sp, identity, caveats, hf_kind)
    _check_chat_template(export_dir, hf_tok, sp, identity, hf_kind)
    if caveats:
        report.notes.append(
            f"literal {', '.join(map(repr, caveats[:5]))} in text may tokenize differently: "
            f"normal pieces span every place to cut them"
        )

    hf, info = transformers.AutoModelForCausalLM.from_pretrained(export_dir, dtype=dtype, output_loading_info=True)
    hf.to(device).eval()
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise ExportError(f"{export_dir}: transformers loaded model.safetensors with {problems}")
    if type(hf).__name__ != "LlamaForCausalLM":
        raise ExportError(f"{config_path}: transformers built {type(hf).__name__}, expected LlamaForCausalLM")
    _check_logits(config_path, model, hf, _probe_batch(sp, cfg).to(device), report)
    _check_greedy(config_path, model, hf, sp, cfg, report)
    _check_logits(config_path, model, hf, _long_row(cfg).to(device), report)
    return report


def _check_config(path: str, cfg: ModelConfig, identity: dict, tokenizer_vocab: int) -> torch.dtype:
    """The config fields against the checkpoint; returns the export dtype it declares."""
    if not os.path.isfile(path):
        raise ExportError(f"{path}: missing")
    with open(path, encoding="utf-8") as f:
        actual = json.load(f)
    vocab = actual.get("vocab_size")
    if vocab != cfg.vocab_size:
        raise ExportError(f"{path}: vocab_size is {vocab}, but the model has {cfg.vocab_size} embedding rows")
    if vocab < tokenizer_vocab:
        raise ExportError(f"{path}: vocab_size {vocab} is smaller than the tokenizer's {tokenizer_vocab} tokens")
    name = actual.get("torch_dtype", actual.get("dtype"))
    if name not in EXPORT_DTYPES:
        raise ExportError(f"{path}: dtype {name!r} is not one of {sorted(EXPORT_DTYPES)}")
    for key, want in expected_config(cfg, identity, DTYPES[name]).items():
        if actual.get(key, want if key == "dtype" else _MISSING) == want:  # older writers give torch_dtype only
            continue
        special = key[:3].upper() if key in ("bos_token_id", "eos_token_id", "pad_token_id") else None
        what = f" (the training tokenizer's {special} id)" if special else ""
        raise ExportError(f"{path}: {key} is {actual.get(key, _MISSING)!r}, expected {want!r}{what}")
    return DTYPES[name]


def _check_weights(path: str, model, dtype: torch.dtype) -> None:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise ExportError(f"{path}: missing")
    ours = to_hf_state_dict(model.state_dict(), model.cfg)
    with safe_open(path, framework="pt") as f:
        names = set(f.keys())
        if names != set(ours):
            raise ExportError(
                f"{path}: tensor names differ from the model's: missing {sorted(set(ours) - names)[:5]}, "
                f"unexpected {sorted(names - set(ours))[:5]}"
            )
        for name in sorted(names):
            theirs, want = f.get_tensor(name), ours[name].detach().to("cpu", dtype)
            if theirs.dtype != dtype or theirs.shape != want.shape:
                raise ExportError(
                    f"{path}: {name} is {theirs.dtype} {tuple(theirs.shape)}, expected {dtype} {tuple(want.shape)}"
                )
            if not torch.equal(theirs, want):
                diff = (theirs.float() - want.float()).abs().max().item()
                raise ExportError(f"{path}: {name} differs from the checkpoint (max |diff| {diff:.3g})")


def _check_tokenizer(
    export_dir: str, hf_tok, sp: Tokenizer, identity: dict, caveats: list[str], hf_kind: bool = False
) -> int:
    """Every piece, the special ids, and the probe texts' ids and decoded text; returns probe tokens seen.

    Probe texts holding a `caveats` string are skipped: the exported tokenizer may split it differently. A
    HuggingFace tokenizer keeps its own post-processor (a BOS its model's users expect) and cleanup setting,
    so its ids are compared without added special tokens and its text without cleanup, as training saw them.
    """
    call = {"add_special_tokens": False} if hf_kind else {}
    decode = {"clean_up_tokenization_spaces": False} if hf_kind else {}
    where = os.path.join(export_dir, "tokenizer.json")
    if len(hf_tok) != sp.vocab_size:
        raise ExportError(f"{where}: {len(hf_tok)} tokens, the training tokenizer has {sp.vocab_size}")
    pieces = hf_tok.convert_ids_to_tokens(list(range(sp.vocab_size)))
    for i, piece in enumerate(pieces):
        if piece != sp.id_to_piece(i):
            raise ExportError(f"{where}: token {i} is {piece!r}, the training tokenizer's is {sp.id_to_piece(i)!r}")
    for name in ("bos", "eos", "pad"):
        theirs, want = getattr(hf_tok, f"{name}_token_id"), identity.get(f"{name}_id")
        if theirs != want:
            raise ExportError(
                f"{os.path.join(export_dir, 'tokenizer_config.json')}: {name} id is {theirs}, "
                f"the training tokenizer's is {want}"
            )
    seen = 0
    for text in PROBE_TEXTS:
        if any(c in text for c in caveats):
            continue
        want, theirs = sp.encode(text), hf_tok(text, **call)["input_ids"]
        if theirs != want:
            i = _first_difference(theirs, want)
            got = repr(theirs[i]) if i < len(theirs) else "end of ids"
            expect = repr(want[i]) if i < len(want) else "end of ids"
            raise ExportError(
                f"{where}: tokenizer ids differ at position {i}: exported {got} vs training {expect} "
                f"for text {_excerpt(sp, want, i)}"
            )
        decoded, want_text = hf_tok.decode(theirs, **decode), sp.decode(want)
        if decoded != want_text:
            i = _first_difference(decoded, want_text)
            raise ExportError(
                f"{where}: decoded text differs at character {i}: exported "
                f"{decoded[max(0, i - 20) : i + 20]!r} vs training {want_text[max(0, i - 20) : i + 20]!r}"
            )
        seen += len(want)
    return seen


def _check_chat_template(export_dir: str, hf_tok, sp: Tokenizer, identity: dict, hf_kind: bool = False) -> None:
    """`apply_chat_template` of the exported tokenizer gives our ids for every probe conversation. A
    HuggingFace tokenizer without one of our templates may keep its model's own, which we do not check."""
    where = os.path.join(export_dir, "tokenizer_config.json")
    if not identity.get("chat_template"):
        if getattr(hf_tok, "chat_template", None) and not hf_kind:
            raise ExportError(f"{where}: has a chat_template, but the training tokenizer has none")
        return
    if not getattr(hf_tok, "chat_template", None):
        raise ExportError(
            f"{where}: no chat_template, but the training tokenizer has {identity['chat_template']['name']!r}"
        )
    encoder = ChatTemplate.from_meta(identity["chat_template"]).bind(sp)
    for k, conversation in enumerate(CHAT_PROBES):
        for prompt in (False, True):
            history = conversation if not prompt or conversation[-1]["role"] == "user" else conversation[:-1]
            want = encoder.encode(history, add_generation_prompt=prompt)[0].tolist()
            try:
                out = hf_tok.apply_chat_template(history, tokenize=True, add_generation_prompt=prompt)
            except Exception as e:  # a broken Jinja string fails inside transformers in many ways
                raise ExportError(f"{where}: apply_chat_template fails on probe conversation {k}: {e}") from None
            theirs = list(out["input_ids"] if hasattr(out, "keys") else out)
            if theirs != want:
                i = _first_difference(theirs, want)
                raise ExportError(
                    f"{where}: apply_chat_template ids differ from ours at position {i} of probe "
                    f"conversation {k} (generation prompt {prompt}): exported "
                    f"{theirs[i] if i < len(theirs) else 'end of ids'} vs ours "
                    f"{want[i] if i < len(want) else 'end of ids'}"
                )


def _check_logits(where: str, model, hf, tokens: torch.Tensor, report: Report) -> None:
    """Logits at every position of `tokens`, through each model's final hidden states and output projection
    a slice of positions at a time, so a long row's [S, vocab] logits never exist whole."""
    dtype = next(model.parameters()).dtype
    _forget_dynamic_length(hf, model.cfg)
    with torch.no_grad():
        ours_h, theirs_h = model.hidden_states(tokens), hf.model(tokens).last_hidden_state
        if theirs_h.shape != ours_h.shape:
            raise ExportError(
                f"{where}: transformers' hidden states have shape {tuple(theirs_h.shape)}, ours {tuple(ours_h.shape)}"
            )
        diff, largest = 0.0, 0.0
        for start in range(0, tokens.shape[1], LOGIT_SLICE):
            part = slice(start, start + LOGIT_SLICE)
            ours, theirs = model.output(ours_h[:, part]).float(), hf.lm_head(theirs_h[:, part]).float()
            diff, largest = max(diff, (ours - theirs).abs().max().item()), max(largest, ours.abs().max().item())
    tolerance = LOGIT_RTOL[dtype] * max(1.0, largest)
    if not diff <= tolerance:
        raise ExportError(
            f"{where}: logits of the reloaded model differ from ours by up to {diff:.3g} "
            f"(tolerance {tolerance:.3g} in {dtype_name(dtype)}) over {tokens.shape[1]} positions"
        )
    report.max_logit_diff = max(report.max_logit_diff, diff)
    report.tolerance = max(report.tolerance, tolerance)
    report.logit_positions = max(report.logit_positions, tokens.shape[1])


def _long_row(cfg: ModelConfig) -> torch.Tensor:
    """One row of seeded random ids as long as the model's context: the positions past the training length
    are where a RoPE scaling acts, and the probe batch stops at 64."""
    return torch.randint(0, cfg.vocab_size, (1, cfg.max_seq_len), generator=torch.Generator().manual_seed(1))


def _forget_dynamic_length(hf, cfg: ModelConfig) -> None:
    """transformers' dynamic RoPE keeps the frequencies of the longest sequence it has run until a call
    shorter than the original length resets them; ours depend on each call's own length. A one-token call
    puts it back in a freshly loaded model's state: each check starts from there, comparing like with like."""
    if cfg.rope_scaling and cfg.rope_scaling["rope_type"] == "dynamic":
        with torch.no_grad():
            hf(torch.zeros(1, 1, dtype=torch.long, device=hf.device))


def _check_greedy(where: str, model, hf, sp: Tokenizer, cfg: ModelConfig, report: Report) -> None:
    """`generate` (KV cache) against our repeated full forward passes (our KV cache for dynamic RoPE, where a
    cache holds keys rotated at shorter lengths' frequencies); a near-tie in our logits may flip."""
    steps = min(GREEDY_TOKENS, cfg.max_seq_len // 2)
    prompt = torch.tensor([sp.encode(PROBE_TEXTS[0])[: cfg.max_seq_len - steps]], device=model.embed.weight.device)
    ours = prompt
    cache = None
    if cfg.rope_scaling and cfg.rope_scaling["rope_type"] == "dynamic":  # as generate's cache: see the docstring
        cache = KVCache(cfg, 1, prompt.shape[1] + steps, prompt.device, model.embed.weight.dtype)
    _forget_dynamic_length(hf, cfg)
    with torch.no_grad():
        theirs = hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=steps,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=sp.pad_id,
        )
        for step in range(steps):
            logits = (model(ours) if cache is None else model.decode(ours[:, cache.length :], cache))[0, -1].float()
            top2 = logits.topk(2).values
            nxt = logits.argmax()
            if theirs.shape[1] <= ours.shape[1]:
                raise ExportError(f"{where}: generate stopped after {step} tokens, ours continues")
            if theirs[0, ours.shape[1]] != nxt:
                if (top2[0] - top2[1]).item() <= report.tolerance:
                    report.notes.append(f"greedy step {step}: near-tie in our logits, continuations may diverge")
                    break
                raise ExportError(
                    f"{where}: greedy continuation differs at new token {step}: exported "
                    f"{theirs[0, ours.shape[1]].item()} vs ours {nxt.item()}"
                )
            ours = torch.cat([ours, nxt.view(1, 1)], dim=1)
            report.greedy_tokens = step + 1


def _probe_batch(sp: Tokenizer, cfg: ModelConfig) -> torch.Tensor:
    """Two rows: probe text ids, and random ids that reach every part of the embedding."""
    n = min(64, cfg.max_seq_len)
    ids = [i for text in PROBE_TEXTS for i in sp.encode(text)][:n]
    ids += [0] * (n - len(ids))
    rand = torch.randint(0, cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(0))
    return torch.stack([torch.tensor(ids), rand])


def _first_difference(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _excerpt(sp: Tokenizer, ids: list[int], i: int) -> str:
    return repr(sp.decode(ids[max(0, i - 8) : i + 8]))

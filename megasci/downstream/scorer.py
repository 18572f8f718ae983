"""The log-likelihood scorer every downstream metric is built on, offline and in the training loop.

A request is a context and a continuation. The scorer returns, per request, the continuation's
summed log-probability given the context, its token count, its character and UTF-8 byte count, and
whether greedy decoding from the context would produce exactly that continuation.

Tokenisation follows lm-evaluation-harness's `HFLM` (`lm_eval/api/model.py` `loglikelihood` and
`_encode_pair`), so a score here is the score lm-eval gives the exported model:

- trailing whitespace of the context moves to the front of the continuation;
- the whole text and the context alone are encoded, and the continuation's tokens are the whole's
  tokens past the context's (a token spanning the boundary belongs to the continuation);
- an empty context becomes the tokenizer's BOS id (EOS when it has none), unless the continuation
  itself starts with that id, whose first token then becomes the context;
- the model reads `(context + continuation)[-(max_length + 1):][:-1]`: left-truncated to its window.

Batches are sorted by length (longest first, as HFLM does) and right-padded; a causal model needs no
attention mask for right padding, because no real position attends to a later one. With
`world_size > 1` each data-parallel rank scores every `world_size`-th request of the sorted order and
the results are gathered to every rank, so every rank returns the same list in the caller's order.

The model is anything that maps token ids [B, S] to logits [B, S, V]: our `Transformer`, or a
transformers model (its output's `.logits`). The caller puts it in eval mode and on `device`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TokenRequest:
    """One request as token ids; `chars`/`bytes` count the continuation's text, when there is one."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]
    chars: int | None = None
    bytes: int | None = None


@dataclass(frozen=True)
class Score:
    loglikelihood: float  # summed natural-log probability of the continuation's tokens
    tokens: int  # continuation tokens scored
    chars: int | None  # continuation characters (the string as given, leading space included)
    bytes: int | None  # continuation UTF-8 bytes
    greedy: bool  # every continuation token is the argmax at its position
    truncated: bool  # the context was cut on the left to fit the model's window


class Encoder:
    """A tokenizer seen the way HFLM sees it: `encode` (HFLM's `tok_encode` with its defaults),
    `encode_plain` (no special tokens: the continuation of an empty context) and the prefix id."""

    def __init__(
        self, encode: Callable[[str], list[int]], prefix_id: int, encode_plain: Callable[[str], list[int]] | None = None
    ):
        self.encode = encode
        self.encode_plain = encode_plain or encode
        self.prefix_id = prefix_id


def as_encoder(tokenizer) -> Encoder:
    """An Encoder for a megasci tokenizer (`encode`, `bos_id`, `eos_id`) or a transformers tokenizer.

    A transformers tokenizer encodes with its own default special tokens, except that a string already
    starting with the BOS text gets none (HFLM's `has_bos_prefix` rule). Our SentencePiece tokenizer
    adds no special tokens, as our export's tokenizer does not (`add_bos_token: false`).
    """
    if isinstance(tokenizer, Encoder):
        return tokenizer
    if hasattr(tokenizer, "bos_token_id"):  # transformers
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        prefix_text = tokenizer.decode(prefix)

        def encode(text: str) -> list[int]:
            if prefix_text and text.startswith(prefix_text):
                return list(tokenizer.encode(text, add_special_tokens=False))
            return list(tokenizer.encode(text))

        return Encoder(encode, prefix, lambda text: list(tokenizer.encode(text, add_special_tokens=False)))
    if hasattr(tokenizer, "bos_id"):  # megasci.tokenizer.base.Tokenizer
        prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        if prefix is None:
            raise ValueError("the tokenizer has neither a BOS nor an EOS id: an empty context cannot be scored")
        return Encoder(lambda text: list(tokenizer.encode(text)), prefix)
    raise TypeError(
        f"not a tokenizer: {type(tokenizer).__name__} (need encode and bos_id, or a transformers tokenizer)"
    )


def encode_pair(context: str, continuation: str, encoder: Encoder) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) exactly as HFLM's `loglikelihood` splits them."""
    if context == "":
        cont = encoder.encode_plain(continuation)
        if not cont:
            raise ValueError(f"continuation {continuation!r} encodes to no tokens")
        return ([encoder.prefix_id], cont) if encoder.prefix_id != cont[0] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encoder.encode(context + continuation)
    context_ids = encoder.encode(context)
    return context_ids, whole[len(context_ids) :]


def encode_requests(requests: Sequence[tuple[str, str]], tokenizer) -> list[TokenRequest]:
    """TokenRequests for (context, continuation) strings; a continuation that adds no token of its own
    (it merged into the context's last token, or is empty) is an error naming the request."""
    encoder = as_encoder(tokenizer)
    out = []
    for i, (context, continuation) in enumerate(requests):
        ctx, cont = encode_pair(context, continuation, encoder)
        if not ctx or not cont:
            raise ValueError(
                f"request {i}: context {context[-40:]!r} and continuation {continuation[:40]!r} "
                f"leave the {'continuation' if ctx else 'context'} without tokens of its own"
            )
        out.append(TokenRequest(tuple(ctx), tuple(cont), len(continuation), len(continuation.encode("utf-8"))))
    return out


def model_max_length(model) -> int:
    """The model's context window: our `cfg.max_seq_len`, or a transformers config's
    `max_position_embeddings` (what HFLM uses for a Llama config)."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "max_seq_len"):
        return int(cfg.max_seq_len)
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        if config is not None and getattr(config, key, None):
            return int(getattr(config, key))
    raise ValueError(f"cannot tell the context window of {type(model).__name__}; pass max_length")


def _logits(model, tokens: torch.Tensor) -> torch.Tensor:
    out = model(tokens)
    return out if isinstance(out, torch.Tensor) else out.logits


def _score_batch(model, batch: list[TokenRequest], max_length: int, device) -> list[Score]:
    rows, spans = [], []
    for r in batch:
        whole = (r.context + r.continuation)[-(max_length + 1) :]
        rows.append(whole[:-1])
        spans.append(len(r.context) + len(r.continuation) > max_length + 1)
    width = max(len(row) for row in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    logits = _logits(model, tokens.to(device))
    out = []
    for i, r in enumerate(batch):
        n, end = len(r.continuation), len(rows[i])
        logprobs = F.log_softmax(logits[i, end - n : end].float(), dim=-1)
        target = torch.tensor(r.continuation, dtype=torch.long, device=logprobs.device)
        ll = logprobs.gather(1, target[:, None]).sum().item()
        greedy = bool((logprobs.argmax(-1) == target).all().item())
        out.append(Score(ll, n, r.chars, r.bytes, greedy, spans[i]))
    return out


def score(
    model,
    requests: Sequence[TokenRequest],
    *,
    device="cpu",
    batch_size: int = 16,
    max_length: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    group=None,
) -> list[Score]:
    """Scores of `requests`, in their order, on every rank (see the module docstring).

    Under `world_size > 1` every rank must call this with the same requests (a collective)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    max_length = max_length or model_max_length(model)
    for i, r in enumerate(requests):
        if not r.context or not r.continuation:
            raise ValueError(f"request {i}: empty context or continuation (encode with encode_requests)")
        if len(r.continuation) > max_length:
            raise ValueError(
                f"request {i}: continuation of {len(r.continuation)} tokens exceeds the model's window of {max_length}"
            )
    order = sorted(
        range(len(requests)),
        key=lambda i: (
            -(len(requests[i].context) + len(requests[i].continuation)),
            requests[i].context + requests[i].continuation,
        ),
    )
    mine = order[rank::world_size]
    results: list[tuple[int, Score]] = []
    with torch.inference_mode():
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            results += zip(chunk, _score_batch(model, [requests[i] for i in chunk], max_length, device))
    if world_size > 1:
        import torch.distributed as dist

        gathered: list = [None] * world_size
        dist.all_gather_object(gathered, results, group=group)
        results = [item for part in gathered for item in part]
    scores: list[Score | None] = [None] * len(requests)
    for i, s in results:
        scores[i] = s
    missing = [i for i, s in enumerate(scores) if s is None]
    if missing:
        raise RuntimeError(f"requests {missing[:5]} were scored by no rank (ranks disagree on the request list?)")
    return scores  # type: ignore[return-value]


def bits_per_byte(loglikelihood: float, n_bytes: int) -> float:
    """OLMo's bpb: -loglikelihood / bytes / ln 2 (the gold continuation's bytes, leading space included)."""
    return -loglikelihood / n_bytes / math.log(2)

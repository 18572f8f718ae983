"""Autoregressive generation with a KV cache: greedy, temperature, top-k and top-p (nucleus) sampling.

The prompt is run once (the prefill) and fills the cache; each later step runs only the newest
token against it, so generating n tokens costs n single-token forwards rather than n full ones.
Prompts in a batch must have the same length: there is no left padding (which would need per-sample
positions and a key mask); generate prompts of different lengths separately.
"""

from __future__ import annotations

import torch

from .llama import KVCache, Transformer


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Logits [..., V] with all but the k largest set to -inf (ties at the k-th value are kept)."""
    if k is not None and k < 1:
        raise ValueError(f"top_k must be at least 1, got {k}")
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits [..., V] with every token outside the nucleus set to -inf.

    The nucleus is the smallest set of most probable tokens whose probabilities sum to at least
    top_p. A token is in it when the tokens ranked above it sum to less than top_p, so the most
    probable token always is.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_p == 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_above >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids [B] from last-position logits [B, V]; temperature 0 is greedy (argmax)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = top_p_filter(top_k_filter(logits.float() / temperature, top_k), top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt_ids,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue prompts and return prompt + continuation, LongTensor [B, S + n] with n <= max_new_tokens.

    `prompt_ids` is one prompt (a list of ids), several of equal length (a list of lists) or a
    LongTensor [B, S]. A sequence that produces `eos_id` keeps it and is padded with `eos_id` from
    then on; generation stops early once every sequence has. `generator` (on the model's device)
    makes sampling reproducible.
    """
    device = next(model.parameters()).device
    ragged = isinstance(prompt_ids, list) and prompt_ids and isinstance(prompt_ids[0], (list, tuple))
    if ragged and len({len(p) for p in prompt_ids}) > 1:
        raise ValueError(
            "prompts in a batch must have equal lengths (there is no left padding); generate them separately"
        )
    tokens = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    if tokens.dim() == 1:
        tokens = tokens[None]
    batch, prompt_len = tokens.shape
    if prompt_len == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. BOS or EOD)")
    if prompt_len > model.cfg.max_seq_len:
        raise ValueError(f"prompt of {prompt_len} tokens exceeds the model's max_seq_len {model.cfg.max_seq_len}")
    if prompt_len + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(
            f"prompt of {prompt_len} tokens plus {max_new_tokens} new ones exceeds the model's "
            f"max_seq_len {model.cfg.max_seq_len}"
        )
    if max_new_tokens <= 0:
        return tokens
    # The last new token is never fed back, so the cache needs one position less than the output.
    cache = KVCache(model.cfg, batch, prompt_len + max_new_tokens - 1, device, model.embed.weight.dtype)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    logits = model.decode(tokens, cache, last_only=True)[:, -1]  # the prefill
    out = [tokens]
    for step in range(max_new_tokens):
        next_ids = sample_next(logits, temperature, top_p, top_k, generator)
        if eos_id is not None:
            next_ids = next_ids.masked_fill(finished, eos_id)
            finished |= next_ids == eos_id
        out.append(next_ids[:, None])
        if step == max_new_tokens - 1 or (eos_id is not None and bool(finished.all())):
            break
        logits = model.decode(next_ids[:, None], cache)[:, -1]
    return torch.cat(out, dim=1)

"""Language-model cross-entropy fused with the output projection, chunked over tokens.

Full float32 logits are the largest activation in LLM training (tokens x vocab x 4 bytes: 8k tokens
and a 128k vocabulary make 4 GiB, plus as much again for their gradient). ``chunked`` never holds more
than one chunk of them: the forward pass keeps only each token's log-sum-exp, and the backward pass
recomputes each chunk's logits to form its gradient. Only a chunk's logits are upcast to float32; the
matmuls run in the input dtype, and the weight gradient is summed over chunks in float32.
``reference`` is the plain ``F.cross_entropy(hidden @ weight.T)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends import dispatch, register_backend, register_op


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (h @ weight.t()).to(torch.promote_types(h.dtype, torch.float32))


class _ChunkedCrossEntropy(torch.autograd.Function):
    # Under CUDA autocast, the backward matmuls run in the forward's autocast dtype rather than float32.
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, hidden, weight, labels, chunk_size, ignore_index):
        n = hidden.shape[0]
        valid = labels != ignore_index
        n_valid = valid.sum()
        safe_labels = labels.masked_fill(~valid, 0)
        acc = torch.promote_types(hidden.dtype, torch.float32)
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        loss_sum = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            logits = _chunk_logits(hidden[start:end], weight)
            lse[start:end] = torch.logsumexp(logits, dim=-1)
            target = logits.gather(1, safe_labels[start:end, None]).squeeze(1)
            loss_sum += ((lse[start:end] - target) * valid[start:end]).sum()
        ctx.save_for_backward(hidden, weight, safe_labels, valid, lse, n_valid)
        ctx.chunk_size = chunk_size
        return loss_sum / n_valid

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        hidden, weight, labels, valid, lse, n_valid = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        acc = lse.dtype
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        scale = grad_out.to(acc) / n_valid
        n = hidden.shape[0]
        for start in range(0, n, ctx.chunk_size):
            end = min(start + ctx.chunk_size, n)
            h = hidden[start:end]
            logits = _chunk_logits(h, weight)
            grad = logits.sub_(lse[start:end, None]).exp_()
            rows = torch.arange(end - start, device=grad.device)
            grad[rows, labels[start:end]] -= 1.0
            grad *= (valid[start:end, None] * scale)
            grad = grad.to(hidden.dtype)
            if need_h:
                grad_h[start:end] = grad @ weight
            if need_w and grad.dtype == acc:
                grad_w.addmm_(grad.t(), h)
            elif need_w:
                grad_w += (grad.t() @ h).to(acc)
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None


def cross_entropy_chunked(hidden, weight, labels, chunk_size: int = 4096, ignore_index: int = -100):
    return _ChunkedCrossEntropy.apply(hidden, weight, labels, chunk_size, ignore_index)


def cross_entropy_reference(hidden, weight, labels, chunk_size: int = 4096, ignore_index: int = -100):
    logits = hidden @ weight.t()
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels,
                           ignore_index=ignore_index)


register_op("cross_entropy_loss", lambda *args, **kwargs: "chunked")
register_backend("cross_entropy_loss", "reference", cross_entropy_reference)
register_backend("cross_entropy_loss", "chunked", cross_entropy_chunked)


def cross_entropy_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                       chunk_size: int = 4096, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``labels`` over tokens not equal to ``ignore_index``.

    hidden [N, H] (or [..., H]), weight [V, H], labels [N] (or [...]). Returns a 0-dim float32 tensor
    (float64 for float64 inputs); NaN when every label is ignored, as ``F.cross_entropy`` does.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    if labels.shape[0] != hidden.shape[0]:
        raise ValueError(f"{hidden.shape[0]} tokens but {labels.shape[0]} labels")
    return dispatch("cross_entropy_loss", hidden, weight, labels, chunk_size, ignore_index)

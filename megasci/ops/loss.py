"""Language-model cross-entropy fused with the output projection, chunked over tokens.

Full float32 logits are the largest activation in LLM training (tokens x vocab x 4 bytes: 8k tokens
and a 128k vocabulary make 4 GiB, plus as much again for their gradient). The fused paths never hold
more than one chunk of them, and do all the work in the forward pass, as Liger's fused linear
cross-entropy does, so the logits are computed once (three matmuls in all, not four): for each chunk,
``logits = h @ weight.T``, then one kernel turns the chunk into its gradient in place (log-sum-exp in
one pass over the row, ``(softmax * (1 + 2 z lse) - onehot) * scale`` written over it in a second),
then ``grad_h = grad @ weight`` and ``grad_weight += grad.T @ h`` summed in float32. The backward pass
only scales what the forward kept (the input-sized ``grad_h`` and the float32 weight gradient) by the
incoming gradient.

Backends: ``triton`` (the chunk kernel in triton_kernels.py, working on the chunk in its own dtype: on
CUDA with triton), ``chunked`` (the same loop with the chunk kernel in PyTorch, on a float32 copy of a
low-precision chunk: everywhere else) and ``reference`` (``F.cross_entropy(hidden @ weight.T)``).

``z_loss`` adds ``z_loss * mean(lse**2)`` over the scored tokens (PaLM's auxiliary loss, which keeps
the log-partition near 0), in every backend.

The weight gradient and ``main_grad`` (Megatron's gradient-accumulation fusion): if the weight has a
``main_grad`` attribute (a tensor of its shape, usually the optimizer's float32 accumulator), the
backward pass adds the float32 weight gradient into it, calls ``weight.main_grad_added()`` if the
weight has that attribute, and returns no gradient for the weight, so ``weight.grad`` is not touched by
this op and no low-precision copy of the gradient exists. Without ``main_grad`` the gradient is returned
in the weight's dtype as autograd requires (rounded once, after the float32 sum over chunks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .accumulate import accumulate_matmul
from .backends import dispatch, module_available, register_backend, register_op

_HAS_TRITON = module_available("triton")
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def chunk_loss_and_grad_torch(
    logits: torch.Tensor,
    labels: torch.Tensor,
    token_loss: torch.Tensor,
    scale: torch.Tensor,
    ignore_index: int,
    z_loss: float,
    write_grad: bool,
) -> torch.Tensor:
    """PyTorch version of the chunk kernel: fills ``token_loss`` and overwrites ``logits`` (float32 or
    float64 here) with the gradient of ``scale * sum(token_loss)``; returns it."""
    valid = labels != ignore_index
    safe_labels = labels.masked_fill(~valid, 0)
    lse = torch.logsumexp(logits, dim=-1)
    target = logits.gather(1, safe_labels[:, None]).squeeze(1)
    token_loss.copy_(torch.where(valid, lse - target + z_loss * lse * lse, 0.0))
    if write_grad:
        row_scale = scale * valid
        grad = logits.sub_(lse[:, None]).exp_().mul_((row_scale * (1.0 + 2.0 * z_loss * lse))[:, None])
        grad[torch.arange(grad.shape[0], device=grad.device), safe_labels] -= row_scale
    return logits


def chunk_loss_and_grad_triton(logits, labels, token_loss, scale, ignore_index, z_loss, write_grad):
    """The fused chunk kernel; triton is imported on first use, not with megasci."""
    from .triton_kernels import cross_entropy_chunk_triton

    return cross_entropy_chunk_triton(logits, labels, token_loss, scale, ignore_index, z_loss, write_grad)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    # Under CUDA autocast, the matmuls run in the autocast dtype, as the model's other matmuls do.
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, hidden, weight, labels, chunk_size, ignore_index, z_loss, use_triton, grad_enabled):
        n = hidden.shape[0]
        acc = _accumulation_dtype(hidden.dtype)
        n_valid = (labels != ignore_index).sum()
        scale = 1.0 / n_valid.to(acc)
        # needs_input_grad is set under no_grad too (validation): grad_enabled spares the gradient work there.
        need_h, need_w = grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1]
        write_grad = need_h or need_w
        token_loss = torch.empty(n, dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        chunk_fn = chunk_loss_and_grad_triton if use_triton else chunk_loss_and_grad_torch
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            h = hidden[start:end]
            logits = h @ weight.t()
            if not use_triton:
                logits = logits.to(_accumulation_dtype(logits.dtype))
            grad = chunk_fn(logits, labels[start:end], token_loss[start:end], scale, ignore_index, z_loss, write_grad)
            if need_h:
                grad_h[start:end] = grad.to(hidden.dtype) @ weight
            if need_w:
                accumulate_matmul(grad_w, grad.t(), h)
            del logits, grad
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight = weight if need_w else None
        return token_loss.sum() * scale

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        weight = ctx.weight
        if grad_h is not None:
            grad_h = grad_h * grad_out.to(grad_h.dtype)
        if grad_w is not None:  # not scaled in place: a retained graph may run backward again
            if hasattr(weight, "main_grad"):
                weight.main_grad.addcmul_(grad_w, grad_out.to(grad_w.dtype))
                added = getattr(weight, "main_grad_added", None)
                if added is not None:
                    added()
                grad_w = None
            else:
                grad_w = (grad_w * grad_out.to(grad_w.dtype)).to(weight.dtype)
        return grad_h, grad_w, None, None, None, None, None, None


def cross_entropy_chunked(
    hidden, weight, labels, chunk_size: int = 4096, ignore_index: int = -100, z_loss: float = 0.0
):
    return _FusedLinearCrossEntropy.apply(
        hidden, weight, labels, chunk_size, ignore_index, z_loss, False, torch.is_grad_enabled()
    )


def cross_entropy_triton(hidden, weight, labels, chunk_size: int = 4096, ignore_index: int = -100, z_loss: float = 0.0):
    return _FusedLinearCrossEntropy.apply(
        hidden, weight, labels, chunk_size, ignore_index, z_loss, True, torch.is_grad_enabled()
    )


def cross_entropy_reference(
    hidden, weight, labels, chunk_size: int = 4096, ignore_index: int = -100, z_loss: float = 0.0
):
    logits = hidden @ weight.t()
    logits = logits.to(_accumulation_dtype(logits.dtype))
    loss = F.cross_entropy(logits, labels, ignore_index=ignore_index)
    if z_loss:
        loss = loss + z_loss * torch.logsumexp(logits, dim=-1)[labels != ignore_index].pow(2).mean()
    return loss


def _triton_available() -> bool:
    """Triton kernels need a GPU; the CPU interpreter is for tests, which call the backend directly."""
    return _HAS_TRITON and torch.cuda.is_available()


def _auto(hidden, weight, *args, **kwargs) -> str:
    if _HAS_TRITON and hidden.is_cuda and hidden.dtype == weight.dtype and hidden.dtype in _TRITON_DTYPES:
        return "triton"
    return "chunked"


register_op("cross_entropy_loss", _auto)
register_backend("cross_entropy_loss", "reference", cross_entropy_reference)
register_backend("cross_entropy_loss", "chunked", cross_entropy_chunked)
register_backend("cross_entropy_loss", "triton", cross_entropy_triton, _triton_available)


def cross_entropy_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 4096,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    scored_only: bool = False,
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``labels`` over tokens not equal to ``ignore_index``,
    plus ``z_loss * mean(logsumexp(logits)**2)`` over the same tokens.

    ``scored_only`` drops the ignored tokens' rows before the projection: the same loss and gradients,
    with the projection (the largest matmul of a small model) paid only for scored tokens. Finding them
    waits for the device, so it is for batches whose labels are mostly ignored (SFT, answer-only data).

    hidden [N, H] (or [..., H]), weight [V, H], labels [N] (or [...]). Returns a 0-dim float32 tensor
    (float64 for float64 inputs); NaN when every label is ignored, as ``F.cross_entropy`` does. See the
    module docstring for the weight's ``main_grad``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if z_loss < 0:
        raise ValueError(f"z_loss must be non-negative, got {z_loss}")
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    if labels.shape[0] != hidden.shape[0]:
        raise ValueError(f"{hidden.shape[0]} tokens but {labels.shape[0]} labels")
    if scored_only:
        rows = (labels != ignore_index).nonzero().squeeze(1)
        if 0 < rows.numel() < labels.numel():
            hidden, labels = hidden.index_select(0, rows), labels.index_select(0, rows)
    return dispatch("cross_entropy_loss", hidden, weight, labels, chunk_size, ignore_index, z_loss)

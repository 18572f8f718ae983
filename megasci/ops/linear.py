"""A bias-free linear layer whose weight gradient is added straight into an fp32 `main_grad`.

Megatron's gradient-accumulation fusion: with bf16 parameters, autograd would materialise a bf16
`weight.grad` per micro-batch, round it, and the optimizer would then add it into its fp32
accumulator. Here the backward pass adds `grad_out^T @ input` into `weight.main_grad` (an fp32 view
into the optimizer's gradient buffer) itself and returns no weight gradient, so no bf16 gradient
exists and nothing is rounded before the sum.

The contract with the owner of `main_grad` (the ZeRO optimizer sets both attributes):

- `weight.main_grad`: a tensor of the weight's shape, in the accumulation dtype, summed into;
- `weight.main_grad_added`: optional, called with no arguments after each addition, so the owner
  can count the gradient as arrived (autograd's post-accumulate hooks do not fire for it).

A weight without `main_grad` gets an ordinary gradient, so the layer is always safe to use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .accumulate import accumulate_matmul


def add_to_main_grad(weight: torch.Tensor, grad_out: torch.Tensor, inputs: torch.Tensor) -> None:
    """`weight.main_grad += grad_out^T @ inputs` summed in main_grad's dtype (ops/accumulate.py), then
    the owner told; grad_out [N, out], inputs [N, in]."""
    accumulate_matmul(weight.main_grad, grad_out.t(), inputs)  # type: ignore[attr-defined]  # set by the owner
    added = getattr(weight, "main_grad_added", None)
    if added is not None:
        added()


class _LinearIntoMainGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, weight):
        ctx.save_for_backward(inputs, weight)
        return F.linear(inputs, weight)

    @staticmethod
    def backward(ctx, grad_out):
        inputs, weight = ctx.saved_tensors
        grad_in = grad_out @ weight if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            flat_out = grad_out.reshape(-1, grad_out.shape[-1])
            flat_in = inputs.reshape(-1, inputs.shape[-1])
            if hasattr(weight, "main_grad"):
                add_to_main_grad(weight, flat_out, flat_in)
            else:
                grad_weight = flat_out.t() @ flat_in
        return grad_in, grad_weight


def linear_into_main_grad(inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.linear(inputs, weight)` (no bias) whose weight gradient goes into `weight.main_grad` when it has one."""
    return _LinearIntoMainGrad.apply(inputs, weight)

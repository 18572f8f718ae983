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


def add_to_main_grad(weight: torch.Tensor, grad_out: torch.Tensor, inputs: torch.Tensor) -> None:
    """`weight.main_grad += grad_out^T @ inputs` accumulated in main_grad's dtype; grad_out [N, out], inputs [N, in].

    Same dtypes: one in-place `addmm_`. bf16 operands into fp32 on CUDA: cuBLAS's mixed-precision
    GEMM (`out_dtype`), summing into main_grad in place. Elsewhere (bf16 on a CPU) the operands are
    upcast, which is exact and only slower.
    """
    main_grad = weight.main_grad
    if grad_out.dtype == main_grad.dtype:
        main_grad.addmm_(grad_out.t(), inputs)
    elif grad_out.is_cuda:
        torch.addmm(main_grad, grad_out.t(), inputs, out_dtype=main_grad.dtype, out=main_grad)
    else:
        main_grad.addmm_(grad_out.t().to(main_grad.dtype), inputs.to(main_grad.dtype))
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

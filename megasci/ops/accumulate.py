"""``acc += a @ b`` summed in the accumulator's dtype: the one rule for float32 weight gradients from
low-precision operands (the fused cross-entropy's output weight, the main_grad linear layers)."""

from __future__ import annotations

import torch


def accumulate_matmul(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` in place, with no rounding of the product to the operands' dtype on the way.

    Equal dtypes: one ``addmm_``. Low-precision operands on CUDA: cuBLAS's mixed-precision GEMM
    (``out_dtype``) into ``acc`` in place. Elsewhere (bf16 on a CPU) the operands are upcast, which is
    exact and only slower.
    """
    if a.dtype == b.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif a.is_cuda and a.dtype == b.dtype:
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    else:
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))

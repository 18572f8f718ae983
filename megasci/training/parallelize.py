"""Training policy applied to a built model from outside it: activation checkpointing, fp32 gradient
accumulation in the matmuls, and torch.compile.

The model (`megasci.model.llama`) holds only the math; as in torchtitan's `parallelize` step, the
trainer wraps its modules here. Wrapping replaces a module's `forward` on the instance, so parameter
names, state dicts and the module tree stay exactly as built, and applying another mode (or "none")
undoes the previous one.

Modes (`ModelConfig.checkpointing`):

- "none": every activation is kept for the backward pass;
- "full": each block keeps only its input and reruns itself in the backward pass;
- "selective": each block's attention core (RoPE, softmax(QK^T)V) and SwiGLU activation rerun, every
  matmul output is kept, so recomputation costs almost no matmul FLOPs.

Recomputation happens only where autograd records a graph: under `no_grad` or `inference_mode`
(validation, KV-cache decoding) a wrapped module simply runs.

`apply_fp32_grad_accumulation` swaps the blocks' `nn.Linear` forwards for
`megasci.ops.linear.linear_into_main_grad` (same math), so that with the optimizer's `main_grads`
their weight gradients are added into the fp32 accumulator directly (see megasci/ops/linear.py).
"""

from __future__ import annotations

import functools
import types

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from megasci.model.config import CHECKPOINTING_MODES
from megasci.model.llama import Transformer
from megasci.ops.linear import linear_into_main_grad

_WRAPPED = "_megasci_recomputed"  # marks an instance whose forward this module replaced
_INTO_MAIN_GRAD = "_megasci_into_main_grad"  # marks a linear whose forward adds its weight gradient into main_grad


def _recompute(module: nn.Module) -> None:
    """Replace `module.forward` by one that saves nothing inside it and reruns it in backward."""
    forward = type(module).forward.__get__(module)

    @functools.wraps(forward)
    def recomputed(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    module.forward = recomputed
    setattr(module, _WRAPPED, True)


def _restore(module: nn.Module) -> None:
    if getattr(module, _WRAPPED, False):
        del module.forward
        delattr(module, _WRAPPED)


def recomputed_modules(model: Transformer) -> list[nn.Module]:
    """The modules whose forward is currently rerun in the backward pass."""
    return [m for m in model.modules() if getattr(m, _WRAPPED, False)]


def apply_activation_checkpointing(model: Transformer, mode: str) -> Transformer:
    """Set `model`'s activation checkpointing to `mode` (see the module docstring); returns `model`."""
    if mode not in CHECKPOINTING_MODES:
        raise ValueError(f"checkpointing must be one of {CHECKPOINTING_MODES}, not {mode!r}")
    for module in model.modules():
        _restore(module)
    for block in model.layers:
        if mode == "full":
            _recompute(block)
        elif mode == "selective":
            _recompute(block.attn.core)
            _recompute(block.mlp.act)
    return model


def _linear_forward_into_main_grad(linear: nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
    return linear_into_main_grad(inputs, linear.weight)


def apply_fp32_grad_accumulation(model: Transformer, enabled: bool = True) -> Transformer:
    """Every block's bias-free `nn.Linear` computes its weight gradient into `weight.main_grad`
    (when the weight has one); `enabled=False` restores the plain `nn.Linear`. Returns `model`.

    The output projection is not a module call (the loss reads its weight), so it is not swapped here.
    """
    for block in model.layers:
        for module in block.modules():
            if not isinstance(module, nn.Linear):
                continue
            if module.bias is not None:
                raise ValueError("fp32 gradient accumulation covers bias-free linears only")
            if getattr(module, _INTO_MAIN_GRAD, False):
                del module.forward
                delattr(module, _INTO_MAIN_GRAD)
            if enabled:
                module.forward = types.MethodType(_linear_forward_into_main_grad, module)
                setattr(module, _INTO_MAIN_GRAD, True)
    return model


def fp32_accumulating_linears(model: Transformer) -> list[nn.Module]:
    """The linears whose weight gradients currently go into `main_grad`."""
    return [m for m in model.modules() if getattr(m, _INTO_MAIN_GRAD, False)]


def apply_compile(model: Transformer, backend: str) -> Transformer:
    """torch.compile each block with `backend` (compiled on first use).

    Call it after the optimizer has re-pointed the parameters into its buffers, and after
    `apply_activation_checkpointing`, so that the compiled code is what recomputation reruns.
    """
    for block in model.layers:
        block.compile(backend=backend)
    return model

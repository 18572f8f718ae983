"""Training policy applied to a built model from outside it: activation checkpointing and torch.compile.

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
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from megasci.model.config import CHECKPOINTING_MODES
from megasci.model.llama import Transformer

_WRAPPED = "_megasci_recomputed"  # marks an instance whose forward this module replaced


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


def apply_compile(model: Transformer, backend: str) -> Transformer:
    """torch.compile each block with `backend` (compiled on first use).

    Call it after the optimizer has re-pointed the parameters into its buffers, and after
    `apply_activation_checkpointing`, so that the compiled code is what recomputation reruns.
    """
    for block in model.layers:
        block.compile(backend=backend)
    return model

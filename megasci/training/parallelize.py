"""Training policy applied to a built model from outside it: activation checkpointing, fp32 gradient
accumulation in the matmuls, and torch.compile.

The model (`megasci.model.llama`) holds only the math; as in torchtitan's `parallelize` step, the
trainer wraps its modules here. Wrapping replaces a module's `forward` on the instance, so parameter
names, state dicts and the module tree stay exactly as built, and applying another mode (or "none")
undoes the previous one.

Modes (`train.activation_checkpointing`):

- "none": every activation is kept for the backward pass;
- "full": each block keeps only its input and reruns itself in the backward pass;
- "selective": each block reruns in the backward pass, but keeps the outputs of its expensive ops
  (selective activation checkpointing): the q, k, v, gate and up matmuls and the attention kernel.
  What reruns is cheap: both norms, RoPE, SwiGLU, the residual adds, and the two matmuls that write
  into the residual stream (attn.wo, mlp.down), of which only wo actually reruns (the backward needs
  its output for the second norm; recomputation stops before down). At 1p36b a block keeps 64.6% of
  its `none` activation bytes (67.6% with the loss's), for 2.3% more FLOPs (benchmarks/bench_activations.py,
  docs/benchmarks.md).

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
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from megasci.model.llama import Transformer
from megasci.ops.linear import linear_into_main_grad

CHECKPOINTING_MODES = ("none", "full", "selective")

_WRAPPED = "_megasci_recomputed"  # marks an instance whose forward this module replaced
_INTO_MAIN_GRAD = "_megasci_into_main_grad"  # marks a linear whose forward adds its weight gradient into main_grad
_SELECTIVE_HOOKS = "_megasci_selective_hooks"  # a selective block's forward hooks on its residual writers
_MATMULS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default)


def _is_attention_kernel(op) -> bool:
    """SDPA's fused kernels (flash, efficient, cuDNN, CPU flash) and flash-attn's, by op name."""
    name = op.name() if hasattr(op, "name") else str(op)
    return "scaled_dot_product" in name or "flash" in name or "attention" in name


class _SavedOpsPolicy:
    """Which op outputs a selectively checkpointed block keeps: matmuls and attention kernels,
    except the matmuls run inside a residual writer (counted by its forward hooks)."""

    def __init__(self):
        self.writers_running = 0

    def __call__(self, ctx, op, *args, **kwargs):
        if not self.writers_running and (op in _MATMULS or _is_attention_kernel(op)):
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE


def _recompute(module: nn.Module, context_fn=None) -> None:
    """Replace `module.forward` by one that reruns it in backward, saving nothing inside it
    (or, with `context_fn`, what its selective-checkpoint policy keeps)."""
    forward = type(module).forward.__get__(module)
    options = {} if context_fn is None else {"context_fn": context_fn}

    @functools.wraps(forward)
    def recomputed(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **options, **kwargs)

    module.forward = recomputed
    setattr(module, _WRAPPED, True)


def _recompute_selectively(block: nn.Module) -> None:
    policy = _SavedOpsPolicy()
    hooks = []
    for writer in (block.attn.wo, block.mlp.down):
        hooks.append(writer.register_forward_pre_hook(lambda module, args: _count_writer(policy, +1)))
        hooks.append(writer.register_forward_hook(lambda module, args, output: _count_writer(policy, -1)))
    setattr(block, _SELECTIVE_HOOKS, hooks)
    _recompute(block, functools.partial(create_selective_checkpoint_contexts, policy))


def _count_writer(policy: _SavedOpsPolicy, change: int) -> None:
    policy.writers_running += change


def _restore(module: nn.Module) -> None:
    if getattr(module, _WRAPPED, False):
        del module.forward
        delattr(module, _WRAPPED)
    for hook in getattr(module, _SELECTIVE_HOOKS, ()):
        hook.remove()
    if hasattr(module, _SELECTIVE_HOOKS):
        delattr(module, _SELECTIVE_HOOKS)


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
            _recompute_selectively(block)
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

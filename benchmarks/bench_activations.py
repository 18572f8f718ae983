#!/usr/bin/env python
"""Activation memory and recomputation FLOPs of each checkpointing mode, device-independent.

What a mode costs in memory is every tensor the forward pass leaves alive for the backward pass:
autograd's saved tensors, the inputs a checkpointed region keeps, and what a selective-checkpoint
policy caches. All three are storages created during the forward pass that are still alive once it
has returned, so that is what is counted (saved_tensors_hooks alone see only the first kind; their
count is reported beside it as a cross-check, and agrees for `none`): a dispatch mode records every
op output's storage during the forward (the loss included), and after it the live ones are summed,
each storage once however many views share it, except the parameters' own storages (a transposed
weight is an op output that views one). Recomputation is counted with
`torch.utils.flop_counter.FlopCounterMode` over forward + backward: recomputed ops appear twice.

By default it runs on the meta device at full size (1p36b, bf16, seq 768, micro-batch 8): shapes
and dtypes, no data, seconds on a CPU. Because the meta device has no fused kernels, the ops run as
"kernel models": PyTorch autograd functions that save exactly what the GPU kernels save (RMSNorm:
x and rstd, like the Triton kernel; SwiGLU: gate and up; attention: q, k, v, out and the fp32
log-sum-exp, like flash attention), with real forward and backward math, so that `none` is measured
as it runs on a GPU, not as the CPU reference paths would (those keep fp32 copies and S x S scores).
RoPE and the chunked cross-entropy run as they are.

Long context: several lengths in one run, the model's max_seq_len raised to each where it is shorter
(RoPE tables grow with it, nothing else). The kernel model is flash attention's contract, which
variable-length attention over packed documents (document masking) shares: q, k, v, out and the
log-sum-exp, linear in the length, so these figures hold with `data.document_mask` on as well.

    python benchmarks/bench_activations.py                       # 1p36b, meta device, the table
    python benchmarks/bench_activations.py --seq 4096 8192 16384 --micro-batch 1   # long context
    python benchmarks/bench_activations.py --preset tiny --device cpu --dtype float32 --seq 64 --micro-batch 2
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
from dataclasses import replace

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from megasci import ops
from megasci.model import build_model, flops_per_token, get_config
from megasci.model.dtypes import DTYPES
from megasci.training.parallelize import CHECKPOINTING_MODES, apply_activation_checkpointing

KERNEL_MODEL = "kernel_model"  # the backend name these models register under


class _LiveOutputs(TorchDispatchMode):
    """Records a weak reference to the storage of every op output while active."""

    def __init__(self):
        super().__init__()
        self.storages: dict[int, tuple[StorageWeakRef, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                self.storages[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
        return out

    def live_bytes(self, excluded: set[int]) -> int:
        gc.collect()
        return sum(nbytes for key, (ref, nbytes) in self.storages.items() if key not in excluded and not ref.expired())


def saved_tensor_bytes(forward, model: torch.nn.Module) -> tuple[int, torch.Tensor]:
    """Bytes of the storages autograd's saved_tensors_hooks see during `forward()` (each once, parameters
    excluded): the cross-check for `none`, where every retained tensor is a saved one."""
    excluded = {t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage._cdata not in excluded:
            seen[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    return sum(seen.values()), out


def retained_activation_bytes(forward, model: torch.nn.Module) -> tuple[int, torch.Tensor]:
    """Bytes the forward pass `forward()` leaves alive for backward, not counting `model`'s parameters
    and buffers, and its output (keep it until the count is taken: the saved tensors are its graph's)."""
    excluded = {t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]}
    recorder = _LiveOutputs()
    with recorder:
        out = forward()
    return recorder.live_bytes(excluded), out


# ---- kernel models: the GPU kernels' saved tensors, in PyTorch ------------------------------------
class _RMSNormModel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        acc = torch.promote_types(x.dtype, torch.float32)
        rstd = torch.rsqrt(x.to(acc).pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return (x.to(acc) * rstd).to(x.dtype) * weight

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, rstd = ctx.saved_tensors
        acc = rstd.dtype
        normed = x.to(acc) * rstd
        grad_normed = grad_y.to(acc) * weight.to(acc)
        grad_x = rstd * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))
        grad_w = (grad_y.to(acc) * normed).reshape(-1, x.shape[-1]).sum(0)
        return grad_x.to(x.dtype), grad_w.to(weight.dtype), None


class _SwiGLUModel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return torch.nn.functional.silu(gate) * up

    @staticmethod
    def backward(ctx, grad_out):
        gate, up = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        silu = gate * sig
        return grad_out * up * sig * (1 + gate * (1 - sig)), grad_out * silu


@torch.library.custom_op("megasci_bench::attention", mutates_args=())
def attention_kernel_model(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash attention's contract: q, k, v [B, H, S, D] -> out [B, H, S, D] and the log-sum-exp [B, H, S]
    (fp32; fp64 for fp64 inputs)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * scale
    if causal:
        scores = scores.masked_fill(_causal_mask(q.shape[-2], q.device), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = (torch.exp(scores - lse[..., None]) @ v.to(acc)).to(q.dtype)
    return out, lse


@attention_kernel_model.register_fake
def _(q, k, v, causal, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=torch.promote_types(q.dtype, torch.float32))


def _causal_mask(n: int, device) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


def _attention_setup(ctx, inputs, output):
    q, k, v, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.causal, ctx.scale = causal, scale


def _attention_backward(ctx, grad_out, grad_lse):
    """Flash attention's backward: the probabilities rebuilt from q, k and the log-sum-exp."""
    q, k, v, out, lse = ctx.saved_tensors
    qf, kf, vf, gf = (t.to(lse.dtype) for t in (q, k, v, grad_out))
    scores = (qf @ kf.transpose(-1, -2)) * ctx.scale
    if ctx.causal:
        scores = scores.masked_fill(_causal_mask(q.shape[-2], q.device), float("-inf"))
    probs = torch.exp(scores - lse[..., None])
    grad_v = probs.transpose(-1, -2) @ gf
    grad_probs = gf @ vf.transpose(-1, -2)
    grad_scores = probs * (grad_probs - (gf * out.to(lse.dtype)).sum(-1, keepdim=True)) * ctx.scale
    grad_q, grad_k = (grad_scores @ kf).to(q.dtype), (grad_scores.transpose(-1, -2) @ qf).to(k.dtype)
    return grad_q, grad_k, grad_v.to(v.dtype), None, None


attention_kernel_model.register_autograd(_attention_backward, setup_context=_attention_setup)


@register_flop_formula(torch.ops.megasci_bench.attention)
def _attention_flops(q_shape, k_shape, v_shape, *args, **kwargs) -> int:
    b, h, s, d = q_shape
    return 4 * b * h * s * k_shape[-2] * d  # QK^T and PV, no causal discount (as flops_per_token)


def _rms_norm(x, weight, eps=1e-6):
    return _RMSNormModel.apply(x, weight, eps)


def _attention(q, k, v, causal=True, softmax_scale=None, segment_ids=None):
    if segment_ids is not None or q.shape[2] != k.shape[2]:
        raise ValueError("the attention kernel model covers causal attention with as many kv heads as q heads")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out, _ = attention_kernel_model(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal, scale)
    return out.transpose(1, 2)


_models_active = [False]  # the kernel models count as available backends only inside kernel_models()
for _op, _model in (("rms_norm", _rms_norm), ("swiglu", _SwiGLUModel.apply), ("attention", _attention)):
    ops.register_backend(_op, KERNEL_MODEL, _model, lambda: _models_active[0])


@contextlib.contextmanager
def kernel_models():
    """rms_norm, swiglu and attention forced to the kernel models, restored afterwards; outside it
    they are not among the available backends, so nothing else (a test iterating backends) meets them."""
    previous = {op: ops.get_backend(op) for op in ("rms_norm", "swiglu", "attention")}
    _models_active[0] = True
    try:
        for op in previous:
            ops.set_backend(op, KERNEL_MODEL)
        yield
    finally:
        for op, name in previous.items():
            ops.set_backend(op, name)
        _models_active[0] = False


# ---- the measurement ------------------------------------------------------------------------------
def measure(cfg, device: str, dtype: torch.dtype, seq: int, micro_batch: int, modes=CHECKPOINTING_MODES) -> list[dict]:
    """One row per mode: retained activation bytes and forward + backward FLOPs of one micro-batch."""
    torch.manual_seed(0)
    model = build_model(cfg, device=device, dtype=dtype)
    tokens = torch.randint(0, cfg.vocab_size, (micro_batch, seq), device=device)
    labels = torch.randint(0, cfg.vocab_size, (micro_batch, seq), device=device)
    rows = []
    for mode in modes:
        apply_activation_checkpointing(model, mode)
        retained, loss = retained_activation_bytes(lambda: model(tokens, labels), model)
        del loss
        saved, loss = saved_tensor_bytes(lambda: model(tokens, labels), model)
        del loss
        counter = FlopCounterMode(display=False)
        with counter:
            model(tokens, labels).backward()
        model.zero_grad(set_to_none=True)
        rows.append(
            {
                "kind": "activations",
                "preset": cfg.name,
                "device": device,
                "dtype": str(dtype).removeprefix("torch."),
                "seq": seq,
                "micro_batch": micro_batch,
                "mode": mode,
                "retained_bytes": retained,
                "saved_tensor_bytes": saved,
                "bytes_per_token_per_layer": retained / (micro_batch * seq * cfg.n_layers),
                "flops": counter.get_total_flops(),
            }
        )
    none = next(r for r in rows if r["mode"] == "none")
    for r in rows:
        r["bytes_vs_none"] = r["retained_bytes"] / none["retained_bytes"]
        r["extra_flops_vs_none"] = r["flops"] / none["flops"] - 1
        r["analytic_step_flops"] = flops_per_token(cfg, seq) * micro_batch * seq
    apply_activation_checkpointing(model, "none")
    return rows


def print_table(rows: list[dict]) -> None:
    first = rows[0]
    print(
        f"{first['preset']}, {first['dtype']}, seq {first['seq']}, micro-batch {first['micro_batch']}, "
        f"{first['device']} device, kernel models"
    )
    print(
        f"{'mode':<10} {'retained GiB':>12} {'saved-hook GiB':>14} {'bytes/token/layer':>18} {'of none':>8} "
        f"{'TFLOP fwd+bwd':>14} {'extra FLOPs':>11}"
    )
    for r in rows:
        print(
            f"{r['mode']:<10} {r['retained_bytes'] / 2**30:>12.3f} {r['saved_tensor_bytes'] / 2**30:>14.3f} "
            f"{r['bytes_per_token_per_layer']:>18,.0f} "
            f"{r['bytes_vs_none']:>8.1%} {r['flops'] / 1e12:>14.2f} {r['extra_flops_vs_none']:>+11.1%}"
        )


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="1p36b")
    p.add_argument("--device", default="meta")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--seq", type=int, nargs="+", default=[768], help="one table per length")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--json-out", help="append JSON lines here")
    args = p.parse_args(argv)
    rows = []
    for seq in args.seq:
        cfg = get_config(args.preset)
        cfg = replace(cfg, max_seq_len=max(cfg.max_seq_len, seq))
        with kernel_models():
            rows += (table := measure(cfg, args.device, DTYPES[args.dtype], seq, args.micro_batch))
        print_table(table)
    if args.json_out:
        with open(args.json_out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return rows


if __name__ == "__main__":
    main()

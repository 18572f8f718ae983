#!/usr/bin/env python
"""Model benchmarks for a GPU session: fused ops against their reference paths, then the full model.

1. ops: each backend of rms_norm, swiglu and cross_entropy_loss, plus `torch.compile` of the
   reference, on model-sized bf16 inputs. It checks forward and backward against the reference
   (relative max error) and times forward+backward (median of repeats, synchronised).
2. model: forward+backward of a preset at each sequence length over a micro-batch sweep, reporting
   tokens/s, TFLOP/s, MFU (FLOPs per token = 6·N_matmul + 12·L·h·s, no causal discount, over the
   device's dense bf16 peak) and peak memory. A micro-batch that runs out of memory ends its sweep.

Prints a table and appends JSON lines to --json-out. On a CPU it runs as a smoke test
(`--device cpu --preset tiny --seq 64 --micro-batches 1 2 --tokens 256`).

    python benchmarks/bench_model.py --json-out /tmp/model.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from megasci import ops
from megasci.model import build_model, get_config
from megasci.model.config import flops_per_token
from megasci.model.dtypes import DTYPES
from megasci.training.metrics import device_peak_tflops
from megasci.training.parallelize import apply_activation_checkpointing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.float(), want.float()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def op_cases(cfg, tokens: int, device, dtype):
    """(op name, make inputs, call with a backend, reference backend) for each op at model size."""
    h, f, v = cfg.hidden_size, cfg.ffn_hidden_size, cfg.vocab_size

    def rms_inputs():
        return [
            torch.randn(tokens, h, device=device, dtype=dtype, requires_grad=True),
            torch.rand(h, device=device, dtype=dtype).add_(0.5).requires_grad_(),
        ]

    def swiglu_inputs():
        return [
            torch.randn(tokens, f, device=device, dtype=dtype, requires_grad=True),
            torch.randn(tokens, f, device=device, dtype=dtype, requires_grad=True),
        ]

    def loss_inputs():
        return [
            torch.randn(tokens, h, device=device, dtype=dtype, requires_grad=True),
            (torch.randn(v, h, device=device, dtype=dtype) * 0.02).requires_grad_(),
            torch.randint(0, v, (tokens,), device=device),
        ]

    return [
        ("rms_norm", rms_inputs, lambda x, w: ops.rms_norm(x, w, cfg.norm_eps)),
        ("swiglu", swiglu_inputs, ops.swiglu),
        ("cross_entropy_loss", loss_inputs, ops.cross_entropy_loss),
    ]


def bench_ops(cfg, args, device, dtype) -> list[dict]:
    rows = []
    for op, make_inputs, call in op_cases(cfg, args.tokens, device, dtype):
        inputs = make_inputs()

        # Loop values are bound as defaults: each closure is used within its own iteration only.
        def run(fn=call, inputs=inputs):
            out = fn(*inputs)
            out.float().sum().backward() if out.dim() else out.backward()
            return out

        def grads_of(backend, op=op, inputs=inputs, run=run):
            for t in inputs:
                t.grad = None
            ops.set_backend(op, backend)
            try:
                out = run()
            finally:
                ops.set_backend(op, "auto")
            return out.detach(), [t.grad.detach().clone() for t in inputs if t.requires_grad]

        ref_out, ref_grads = grads_of("reference")
        variants = [(b, None) for b in ops.available_backends(op)] + [
            (f"compile(reference, {args.compile_backend})", "reference")
        ]
        for name, backend in variants:
            if backend is None:
                ops.set_backend(op, name)
                fn = call
            else:
                ops.set_backend(op, backend)
                fn = torch.compile(call, backend=args.compile_backend)
            try:
                for t in inputs:
                    t.grad = None
                out = run(fn)
                errors = [relative_error(out.detach(), ref_out)] + [
                    relative_error(t.grad, g) for t, g in zip((t for t in inputs if t.requires_grad), ref_grads)
                ]
                seconds = median_seconds(lambda fn=fn: run(fn), device, args.repeats)
                rows.append(
                    {
                        "kind": "op",
                        "op": op,
                        "variant": name,
                        "tokens": args.tokens,
                        "ms": seconds * 1e3,
                        "max_rel_error": max(errors),
                    }
                )
            except Exception as e:  # a backend that cannot run here is reported, not fatal
                rows.append({"kind": "op", "op": op, "variant": name, "error": f"{type(e).__name__}: {e}"[:200]})
            finally:
                ops.set_backend(op, "auto")
    for op in ("rms_norm", "swiglu", "cross_entropy_loss"):
        reference = next(
            (r["ms"] for r in rows if r.get("op") == op and r["variant"] == "reference" and "ms" in r), None
        )
        for r in rows:
            if r.get("op") == op and "ms" in r and reference:
                r["speedup_vs_reference"] = reference / r["ms"]
    return rows


def bench_model(cfg, args, device, dtype) -> list[dict]:
    rows = []
    peak = args.peak_tflops or device_peak_tflops(device)
    torch.manual_seed(0)
    model = apply_activation_checkpointing(build_model(cfg, device=device, dtype=dtype), args.checkpointing)
    for seq in args.seq:
        for micro in args.micro_batches:
            tokens = torch.randint(0, cfg.vocab_size, (micro, seq), device=device)
            labels = torch.randint(0, cfg.vocab_size, (micro, seq), device=device)

            def step(tokens=tokens, labels=labels):
                model(tokens, labels).backward()

            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds = median_seconds(step, device, args.repeats, warmup=2)
            except torch.cuda.OutOfMemoryError:
                rows.append({"kind": "model", "preset": cfg.name, "seq": seq, "micro_batch": micro, "error": "OOM"})
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                break
            model.zero_grad(set_to_none=True)
            tokens_per_s = micro * seq / seconds
            tflops = flops_per_token(cfg, seq) * tokens_per_s / 1e12
            rows.append(
                {
                    "kind": "model",
                    "preset": cfg.name,
                    "seq": seq,
                    "micro_batch": micro,
                    "checkpointing": args.checkpointing,
                    "step_s": seconds,
                    "tokens_per_s": tokens_per_s,
                    "tflops": tflops,
                    "mfu": tflops / peak if peak else None,
                    "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
                    if device.type == "cuda"
                    else None,
                }
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="1p36b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--only", nargs="+", choices=["ops", "model"], default=["ops", "model"])
    p.add_argument("--tokens", type=int, default=8192, help="rows of the op inputs (micro-batch x sequence)")
    p.add_argument("--seq", type=int, nargs="+", default=[768, 2048])
    p.add_argument("--micro-batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--checkpointing", default="none", choices=["none", "full", "selective"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled reference")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, if the device is not known")
    p.add_argument("--json-out")
    args = p.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    cfg = get_config(args.preset)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, preset {cfg.name}, {args.dtype}")
    rows = []
    if "ops" in args.only:
        rows += bench_ops(cfg, args, device, dtype)
    if "model" in args.only:
        rows += bench_model(cfg, args, device, dtype)
    for r in rows:
        if r["kind"] == "op":
            detail = (
                (
                    f"{r['ms']:9.3f} ms  x{r.get('speedup_vs_reference', 0):5.2f} vs reference  "
                    f"max rel err {r['max_rel_error']:.2e}"
                )
                if "ms" in r
                else r["error"]
            )
            print(f"op    {r['op']:<20} {r['variant']:<20} {detail}")
        elif "error" in r:
            print(f"model seq {r['seq']:>5} micro {r['micro_batch']:>3}  {r['error']}")
        else:
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
            memory = f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "-"
            print(
                f"model seq {r['seq']:>5} micro {r['micro_batch']:>3}  {r['tokens_per_s']:>10,.0f} tokens/s  "
                f"{r['tflops']:7.1f} TFLOP/s  MFU {mfu:>6}  peak {memory}"
            )
    if args.json_out:
        with open(args.json_out, "a") as f:
            for r in rows:
                f.write(json.dumps({"device": name, "preset": cfg.name, **r}) + "\n")


if __name__ == "__main__":
    main()

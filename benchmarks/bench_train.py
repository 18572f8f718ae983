#!/usr/bin/env python
"""Full training-step throughput: our stack against transformers' LlamaForCausalLM, in one run.

Contenders, each training the same preset on the same tokens from the same initial weights:

* ours: the trainer's own `TrainStep` (megasci/training/train_step.py): `accumulation` micro-batches of
  forward + backward
  through `build_model` (fused ops as `megasci.ops` picks them, chunked cross-entropy, optional
  activation checkpointing), the ZeRO AdamW hooks accumulating fp32 gradients (`--gradients`: the
  matmuls adding theirs into the fp32 buffer directly, as the trainer does by default; `reference`,
  through bf16 `.grad`; `shard`, reduce-scattered per micro-batch), the global norm, the spike guard
  and the AdamW step on fp32 masters (Megatron-style mixed precision, dp = 1).
* hf: what a user would otherwise pick: `LlamaForCausalLM` with the same config and SDPA attention,
  parameters, gradients and AdamW moments all in bf16 (`--hf-precision params`, the default; `amp`
  keeps fp32 parameters under bf16 autocast instead, as the HF Trainer's `bf16=True` does), fused
  `torch.optim.AdamW` with the same hyperparameters and decay groups, `clip_grad_norm_`, the loss
  from `model(input_ids, labels=...)`. If it runs out of memory, it is rerun with HF's gradient
  checkpointing (`--hf-checkpointing auto`); the OOM is reported, never fatal.

Alignment: each sample is seq + 1 random tokens; both see its first seq tokens as input and are
scored on the next token at all seq positions. Ours gets the shifted labels directly; HF shifts
labels itself and would drop the last position, so it also gets `shift_labels` (the already shifted
targets), which its loss uses as they are. Same init (ours, copied into HF by `to_hf_state_dict`),
same tokens: the first step's loss and gradient norm agree up to rounding (about 1e-6 in float32).

Method: random uniform tokens (the throughput of a step does not depend on their values), made
before timing and kept on the device, so data loading is excluded for both. `--warmup` steps are run
and excluded; then `--steps` timed steps between `torch.cuda.synchronize()` calls (each step also
synchronises once, reading its loss and gradient norm, as the training loop does). tokens/s =
micro x accumulation x seq x steps / time. TFLOP/s and MFU use the same FLOPs per token for both,
`flops_per_token` = 6 N_matmul + 12 L h s (no causal discount, recomputation not counted), over the
device's dense bf16 peak (`--peak-tflops` overrides). Peak memory is `max_memory_allocated` from
after set-up (model and optimizer built) through the last step, so it includes weights, optimizer
state, gradients and activations. Each contender runs in its own subprocess by default
(`--isolation process`): a fresh CUDA context and allocator for each, so one's cached or fragmented
memory cannot inflate the other's peak or cause its OOM, and a crash in one still reports the other.
`--isolation none` runs them in this process one after the other, freeing memory in between.

Prints a side-by-side table and appends JSON lines (one per contender, then one comparison) to
--json-out; `--summarize FILE` prints one line per run of such a file. On a CPU it runs as a smoke test:

    python benchmarks/bench_train.py --device cpu --preset tiny --dtype float32 --seq 32 \\
        --micro-batch 2 --steps 3 --warmup 1
    python benchmarks/bench_train.py --seq 768 --micro-batch 8 --json-out /tmp/train.jsonl  # a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import torch

from megasci import ops
from megasci.distributed import AdamWConfig, ZeroAdamW, default_decay
from megasci.model import build_model, flops_per_token, get_config, hf_config_dict, num_parameters, to_hf_state_dict
from megasci.model.dtypes import DTYPES
from megasci.training.guard import SpikeGuard
from megasci.training.metrics import device_peak_tflops
from megasci.training.parallelize import apply_activation_checkpointing, apply_compile, apply_fp32_grad_accumulation
from megasci.training.train_step import TrainStep

CONTENDERS = ("ours", "hf")
# The training loop's defaults (megasci/training/config.py), used by both contenders.
BETAS, EPS, WEIGHT_DECAY, CLIP = (0.9, 0.95), 1e-8, 0.1, 1.0
BUCKET_NUMEL = 40_000_000
SPIKE_FACTOR, SPIKE_WARMUP, MAX_SKIPPED = 3.0, 20, 5
GOAL_SPEEDUP, GOAL_MFU = 1.5, 0.5
# --gradients -> ZeroAdamW's gradient mode (the trainer's optim.fp32_grad_accumulation / optim.shard_gradients)
GRADIENT_MODES = {"fp32_accumulation": {"main_grads": True}, "reference": {}, "shard": {"shard_gradients": True}}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def make_batches(cfg, args, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, shifted targets) per micro-batch of every step, from seq + 1 random tokens per sample."""
    n = (args.warmup + args.steps) * args.accumulation
    g = torch.Generator().manual_seed(args.seed + 1)
    samples = torch.randint(0, cfg.vocab_size, (n, args.micro_batch, args.seq + 1), generator=g).to(device)
    return [(s[:, :-1].contiguous(), s[:, 1:].contiguous()) for s in samples]


def init_ours(cfg, args, device, dtype):
    """Our model, seeded as the trainer seeds it: the initial weights of both contenders."""
    torch.manual_seed(args.seed)
    return build_model(cfg, device=device, dtype=dtype)


def resolved_backends(cfg, device, dtype) -> dict:
    """The backend `auto` gives each op for this model's tensors on this device."""
    x = torch.zeros(1, cfg.hidden_size, device=device, dtype=dtype)
    output_weight = torch.zeros(cfg.vocab_size, cfg.hidden_size, device=device, dtype=dtype)
    q = torch.zeros(1, 1, cfg.n_heads, cfg.head_dim, device=device, dtype=dtype)
    kv = torch.zeros(1, 1, cfg.n_kv_heads, cfg.head_dim, device=device, dtype=dtype)
    return {
        "rms_norm": ops.resolve_backend("rms_norm", x, x[0]),
        "swiglu": ops.resolve_backend("swiglu", x, x),
        "attention": ops.resolve_backend("attention", q, kv, kv, causal=True),
        "cross_entropy_loss": ops.resolve_backend("cross_entropy_loss", x, output_weight),
    }


def setup_ours(cfg, args, device, dtype):
    """The trainer's step: ZeRO hooks, chunked loss, global norm, spike guard, AdamW on fp32 masters."""
    model = apply_activation_checkpointing(init_ours(cfg, args, device, dtype), args.checkpointing)
    model.train()
    mode = GRADIENT_MODES[args.gradients]
    apply_fp32_grad_accumulation(model, mode.get("main_grads", False))
    optimizer = ZeroAdamW(
        model,
        AdamWConfig(lr=args.lr, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, max_grad_norm=CLIP),
        bucket_numel=BUCKET_NUMEL,
        **mode,
    )
    if args.compile:  # as train.compile does: each block, after the optimizer owns the parameters
        apply_compile(model, args.compile)
    guard = SpikeGuard(SPIKE_FACTOR, SPIKE_WARMUP, MAX_SKIPPED)
    train_step = TrainStep(
        model,
        optimizer,
        guard,
        accumulation=args.accumulation,
        device=device,
        world_size=1,
        timing_sync=False,
        data_wait=lambda: 0.0,
    )

    def step(index, batches):
        """The trainer's own TrainStep over this step's micro-batches."""
        micro = batches[index * args.accumulation : (index + 1) * args.accumulation]
        result = train_step(iter({"tokens": tokens, "labels": labels} for tokens, labels in micro), index, args.lr)
        return result.loss, result.grad_norm

    accumulator = {
        "fp32_accumulation": "fp32 gradient accumulator (matmul weight gradients added in directly)",
        "reference": "fp32 gradient accumulator",
        "shard": "fp32 gradient shard",
    }[args.gradients]
    info = {
        "checkpointing": args.checkpointing,
        "compile": args.compile,
        "gradients": args.gradients,
        "backends": resolved_backends(cfg, device, dtype),
        "precision": f"{dtype_name(dtype)} parameters, {accumulator}, fp32 master weights and AdamW moments",
        "optimizer": "ZeroAdamW (dp=1)",
    }
    return (model, optimizer), step, info


def setup_hf(cfg, args, device, dtype, checkpointing: str):
    """LlamaForCausalLM as a user would train it, from our initial weights."""
    import transformers

    amp = args.hf_precision == "amp"
    param_dtype = torch.float32 if amp else dtype
    ours = init_ours(cfg, args, device, dtype)
    config = transformers.LlamaConfig(**hf_config_dict(cfg))
    with torch.device(device):
        model = transformers.LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=param_dtype)
    model.to(device)  # in case this transformers version builds on the CPU despite the device context
    model.load_state_dict(to_hf_state_dict(ours.state_dict(), cfg), strict=True)
    ours_params = dict(ours.named_parameters())
    decays = {
        hf_name: default_decay(name, p)
        for (name, p), hf_name in zip(ours_params.items(), to_hf_state_dict(ours_params, cfg))
    }
    del ours, ours_params
    free_memory(device)
    if checkpointing == "full":
        if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.2x
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    decay = [p for n, p in model.named_parameters() if decays[n]]
    no_decay = [p for n, p in model.named_parameters() if not decays[n]]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=BETAS, eps=EPS, fused=True)
        kind = "torch.optim.AdamW(fused=True)"
    except RuntimeError:  # fused AdamW does not support this device or dtype
        optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=BETAS, eps=EPS, foreach=True)
        kind = "torch.optim.AdamW(foreach=True), fused unsupported here"
    params = list(model.parameters())
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if amp else contextlib.nullcontext
    accumulation = args.accumulation

    def step(index, batches):
        loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        for micro in range(accumulation):
            tokens, labels = batches[index * accumulation + micro]
            with autocast():
                loss = model(input_ids=tokens, labels=labels, shift_labels=labels, use_cache=False).loss
            (loss / accumulation).backward()
            loss_sum += loss.detach().float()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, CLIP)
        loss_value, norm_value = float(loss_sum) / accumulation, float(grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_value, norm_value

    precision = (
        f"fp32 parameters, gradients and AdamW moments, {dtype_name(dtype)} autocast"
        if amp
        else f"{dtype_name(param_dtype)} parameters, gradients and AdamW moments (no fp32 master weights)"
    )
    info = {
        "checkpointing": checkpointing,
        "attention": model.config._attn_implementation,
        "precision": precision,
        "optimizer": kind,
        "transformers": transformers.__version__,
    }
    return (model, optimizer), step, info


def run_contender(name: str, cfg, args, device, dtype, hf_checkpointing: str = "none") -> dict:
    """Set up, warm up, time; a row with the numbers, or with `error` (OOM included) instead."""
    peak = args.peak_tflops or device_peak_tflops(device)
    seq, tokens_per_step = args.seq, args.micro_batch * args.accumulation * args.seq
    row = {
        "kind": "train",
        "contender": name,
        "device": device_name(device),
        "torch": torch.__version__,
        "preset": cfg.name,
        "parameters": num_parameters(cfg),
        "dtype": dtype_name(dtype),
        "seq": seq,
        "micro_batch": args.micro_batch,
        "accumulation": args.accumulation,
        "tokens_per_step": tokens_per_step,
        "warmup": args.warmup,
        "steps": args.steps,
        "flops_per_token": flops_per_token(cfg, seq),
        "peak_tflops": peak,
        "data": "random uniform tokens",
        "checkpointing": hf_checkpointing if name == "hf" else args.checkpointing,
    }
    state = step = batches = error = None
    try:
        batches = make_batches(cfg, args, device)
        if name == "ours":
            state, step, info = setup_ours(cfg, args, device, dtype)
        else:
            state, step, info = setup_hf(cfg, args, device, dtype, hf_checkpointing)
        row.update(info)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        losses, norms, times = [], [], []
        for index in range(args.warmup + args.steps):
            if index == args.warmup:
                synchronize(device)
                start = time.perf_counter()
            began = time.perf_counter()
            loss, norm = step(index, batches)
            synchronize(device)
            times.append(time.perf_counter() - began)
            losses.append(loss)
            norms.append(norm)
        synchronize(device)
        elapsed = time.perf_counter() - start
    except torch.cuda.OutOfMemoryError as e:
        error = "OOM", str(e).splitlines()[0][:200]
    except Exception as e:  # a contender that fails is reported; the other still runs
        traceback.print_exc()
        error = f"{type(e).__name__}: {e}"[:300], None
    peak_memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del state, step, batches  # the step closure holds the model and optimizer too
    free_memory(device)
    if error is not None:
        row.update(error=error[0], detail=error[1], peak_memory_gib=peak_memory)
        return row
    timed = times[args.warmup :]
    tokens_per_s = tokens_per_step * args.steps / elapsed
    tflops = tokens_per_s * row["flops_per_token"] / 1e12
    row.update(
        {
            "elapsed_s": elapsed,
            "step_s_median": statistics.median(timed),
            "step_s_min": min(timed),
            "step_s_max": max(timed),
            "tokens_per_s": tokens_per_s,
            "tflops": tflops,
            "mfu": tflops / peak if peak else None,
            "peak_memory_gib": peak_memory,
            "first_loss": losses[0],
            "final_loss": losses[-1],
            "first_grad_norm": norms[0],
            "losses": losses,
        }
    )
    return row


def child_command(args, name: str, json_out: str, hf_checkpointing: str) -> list[str]:
    """This script, running one contender in a fresh process."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--only",
        name,
        "--isolation",
        "none",
        "--json-out",
        json_out,
        "--hf-checkpointing",
        hf_checkpointing,
    ]
    for option in (
        "preset",
        "seq",
        "micro_batch",
        "accumulation",
        "steps",
        "warmup",
        "checkpointing",
        "device",
        "dtype",
        "hf_precision",
        "lr",
        "seed",
        "peak_tflops",
        "compile",
        "gradients",
    ):
        value = getattr(args, option)
        if value is not None:
            command += [f"--{option.replace('_', '-')}", str(value)]
    return command


def run_isolated(name: str, args, hf_checkpointing: str) -> dict:
    """One contender in a subprocess; its output goes to ours, its row comes back through a file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "row.jsonl")
        code = subprocess.run(child_command(args, name, path, hf_checkpointing)).returncode
        rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    if rows:
        return rows[-1]
    checkpointing = hf_checkpointing if name == "hf" else args.checkpointing
    return {
        "kind": "train",
        "contender": name,
        "checkpointing": checkpointing,
        "error": f"the subprocess exited with code {code} and no result",
    }


def run_all(cfg, args, device, dtype) -> list[dict]:
    """Each contender asked for; the HF baseline again with gradient checkpointing if it ran out of memory."""

    def run(name, hf_checkpointing="none"):
        if args.isolation == "process":
            return run_isolated(name, args, hf_checkpointing)
        return run_contender(name, cfg, args, device, dtype, hf_checkpointing)

    rows = []
    for name in args.only:
        if name == "ours":
            rows.append(run("ours"))
            continue
        first = "full" if args.hf_checkpointing == "full" else "none"
        rows.append(run("hf", first))
        if args.hf_checkpointing == "auto" and rows[-1].get("error") == "OOM":
            print("hf: out of memory; rerunning with gradient checkpointing", flush=True)
            rows.append(run("hf", "full"))
    return rows


def comparison(rows: list[dict]) -> dict | None:
    """ours / hf, against the HF run that completed (without checkpointing if both did)."""
    ours = next((r for r in rows if r["contender"] == "ours" and "error" not in r), None)
    hf = next((r for r in rows if r["contender"] == "hf" and "error" not in r), None)
    if ours is None or hf is None:
        return None
    speedup = ours["tokens_per_s"] / hf["tokens_per_s"]
    row = {
        "kind": "compare",
        "preset": ours["preset"],
        "seq": ours["seq"],
        "micro_batch": ours["micro_batch"],
        "accumulation": ours["accumulation"],
        "device": ours["device"],
        "ours_checkpointing": ours["checkpointing"],
        "hf_checkpointing": hf["checkpointing"],
        "hf_precision": hf["precision"],
        "speedup_tokens_per_s": speedup,
        "memory_ratio": (ours["peak_memory_gib"] / hf["peak_memory_gib"]) if hf["peak_memory_gib"] else None,
        "first_loss_difference": abs(ours["first_loss"] - hf["first_loss"]),
        "goal": f"ours >= {GOAL_SPEEDUP}x hf tokens/s and MFU > {GOAL_MFU:.0%}",
        "goal_speedup_met": speedup >= GOAL_SPEEDUP,
    }
    row["goal_mfu_met"] = ours["mfu"] > GOAL_MFU if ours["mfu"] is not None else None
    return row


def print_table(rows: list[dict], compare: dict | None) -> None:
    def fmt(value, spec, missing="-"):
        return missing if value is None else format(value, spec)

    print(
        f"\n{'contender':<10} {'ckpt':<10} {'tokens/s':>12} {'step s':>8} {'TFLOP/s':>8} {'MFU':>7} "
        f"{'peak GiB':>9} {'loss 1st':>9} {'loss last':>9}"
    )
    for r in rows:
        label = f"{r['contender']:<10} {r.get('checkpointing', '-'):<10}"
        if "error" in r:
            print(f"{label} {r['error']}")
            continue
        print(
            f"{label} {r['tokens_per_s']:>12,.0f} {r['step_s_median']:>8.3f} {r['tflops']:>8.1f} "
            f"{fmt(r['mfu'], '.1%'):>7} {fmt(r['peak_memory_gib'], '.1f'):>9} "
            f"{r['first_loss']:>9.4f} {r['final_loss']:>9.4f}"
        )
    if compare:
        ratio = f"ours/hf: tokens/s x{compare['speedup_tokens_per_s']:.2f}"
        if compare["memory_ratio"] is not None:
            ratio += f", peak memory x{compare['memory_ratio']:.2f}"
        ratio += f", |first loss difference| {compare['first_loss_difference']:.2e}"
        goal = "met" if compare["goal_speedup_met"] and compare["goal_mfu_met"] else "not met"
        if compare["goal_mfu_met"] is None:
            goal = "MFU unknown (no peak for this device; --peak-tflops)"
        print(f"{ratio}\ngoal ({compare['goal']}): {goal}")


def summarize(path: str) -> None:
    """One line per run in a JSON-lines file of several invocations: the tail a device call returns."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    mfu_goal = {True: "met", False: "not met", None: "unknown"}
    print(
        f"{'contender':<10} {'seq':>5} {'micro':>5} {'accum':>5} {'ckpt':<10} {'precision':<10} {'tokens/s':>10} "
        f"{'MFU':>6} {'peak GiB':>8}  ours/hf"
    )
    for r in rows:
        if r["kind"] == "compare":
            print(
                f"{'':>55} x{r['speedup_tokens_per_s']:.2f} tokens/s (ours {r['ours_checkpointing']}, "
                f"hf {r['hf_checkpointing']}), speedup goal {'met' if r['goal_speedup_met'] else 'not met'}, "
                f"MFU goal {mfu_goal[r['goal_mfu_met']]}"
            )
            continue
        precision = "amp" if "autocast" in r.get("precision", "") else r.get("dtype", "-")
        head = (
            f"{r['contender']:<10} {r.get('seq', '-'):>5} {r.get('micro_batch', '-'):>5} "
            f"{r.get('accumulation', '-'):>5} {r.get('checkpointing', '-'):<10} {precision:<10}"
        )
        if "error" in r:
            print(f"{head} {r['error']}")
        else:
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
            memory = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
            print(f"{head} {r['tokens_per_s']:>10,.0f} {mfu:>6} {memory:>8}")


def describe(rows: list[dict]) -> None:
    for r in rows:
        if "precision" in r:
            extra = f", ops {r['backends']}" if "backends" in r else f", attention {r['attention']}"
            print(f"{r['contender']}: {r['precision']}; {r['optimizer']}{extra}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="1p36b")
    p.add_argument("--seq", type=int, default=768)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--accumulation", type=int, default=1)
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="optimizer steps run before timing")
    p.add_argument("--checkpointing", default="none", choices=["none", "full", "selective"], help="ours")
    p.add_argument(
        "--gradients",
        default="fp32_accumulation",
        choices=list(GRADIENT_MODES),
        help="ours: how gradients reach the fp32 state (the trainer's default: fp32_accumulation)",
    )
    p.add_argument(
        "--compile",
        default=None,
        metavar="BACKEND",
        help="ours: torch.compile each block with this backend (inductor), as train.compile does",
    )
    p.add_argument(
        "--hf-checkpointing",
        default="auto",
        choices=["none", "full", "auto"],
        help="HF gradient checkpointing; auto: none, then full if that runs out of memory",
    )
    p.add_argument(
        "--hf-precision",
        default="params",
        choices=["params", "amp"],
        help="params: HF parameters and AdamW state in --dtype; amp: fp32 parameters, --dtype autocast",
    )
    p.add_argument("--only", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    p.add_argument(
        "--isolation",
        default="process",
        choices=["process", "none"],
        help="process: each contender in its own subprocess; none: one after the other in this one",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype", choices=sorted(DTYPES), default="bfloat16", help="parameter dtype (float32 for the CPU smoke test)"
    )
    p.add_argument("--lr", type=float, default=3e-4, help="constant learning rate")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, if the device is not known")
    p.add_argument("--json-out", help="append JSON lines here")
    p.add_argument("--summarize", metavar="JSONL", help="only print a summary of the runs in this file")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.micro_batch < 1 or args.accumulation < 1:
        p.error("--steps, --micro-batch and --accumulation must be positive, --warmup not negative")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.summarize:
        summarize(args.summarize)
        return []
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    cfg = get_config(args.preset)
    if args.seq > cfg.max_seq_len:
        raise SystemExit(f"--seq {args.seq} exceeds the {cfg.name} preset's max_seq_len {cfg.max_seq_len}")
    print(
        f"device {device_name(device)}, torch {torch.__version__}, preset {cfg.name} "
        f"({num_parameters(cfg) / 1e6:,.1f}M parameters), {args.dtype}, seq {args.seq}, micro-batch "
        f"{args.micro_batch} x accumulation {args.accumulation}, {args.warmup} warm-up + {args.steps} timed steps, "
        f"random tokens, {flops_per_token(cfg, args.seq) / 1e9:.2f} GFLOP/token for both",
        flush=True,
    )
    rows = run_all(cfg, args, device, dtype)
    compare = comparison(rows)
    describe(rows)
    print_table(rows, compare)
    if args.json_out:
        with open(args.json_out, "a") as f:
            for r in rows + ([compare] if compare else []):
                f.write(json.dumps(r) + "\n")
    return rows + ([compare] if compare else [])


if __name__ == "__main__":
    main()

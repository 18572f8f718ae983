"""Context extension on CPU (issue 20): the demo model (`make demo`) continued at 4x its training length,
once with a raised RoPE base and once, as the control, at the same base; loss by position and passkey
retrieval at 4x before and after, for both.

    python -m megasci.demo_long --output demo_output        # after python -m megasci.demo --output demo_output

Stages, each running the tools/ commands it prints (`$ ...`) from the repository root:

1. retrieval training data (tools/make_passkey_data.py): passkey and span-copy documents, filler from
   the *training* split of the papers, scored on the answers only, at the training length and at 4x.
   A tiny model learns no retrieval from papers alone, so there would be nothing to extend.
2. retrieval at the training length: the demo model trained on the short documents alone
   (train.init_from, --retrieval-steps); it then retrieves at its own length but not at 4x, and is
   the model both arms extend.
3. the "before" checkpoint: one step at learning rate 0 (warm-up 0, decay 0, floor 0) from that model
   with max_seq_len at 4x, so the evaluation tools accept the longer window; its weights are the
   model's, checked tensor by tensor.
4. two short continuations at 4x the length, papers and the long retrieval documents blended: raised
   RoPE base, control. Both get exactly the same data, so the difference between them is the base.
   Short (--steps 20): given 100 steps at 4x the control catches up, so what the demo shows is how
   much sooner the raised base retrieves there (docs/benchmarks.md has both).
5. tools/eval_ppl.py --by-position and tools/eval_passkey.py --compact (held-out papers, at 4x) on
   each of the three checkpoints.

Passkey accuracy is scored at the training length and at 4x, two ways: greedy exact match of the
whole key (the check, as Position Interpolation and YaRN report it) and, beside it, the
log-likelihood choice of the true key against four random keys (chance 20%), which moves first.

The figures printed at the end are read back from the tools' TensorBoard event files (the values
TensorBoard shows); the number of examples and the standard errors come from their JSON beside them.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shlex
import subprocess
import sys
import time

import torch
import yaml

from megasci.demo import REPO
from megasci.training.checkpoint import read_meta, resolve_checkpoint, safe_load

FACTOR = 4  # the new length over the training length
RAISED_THETA = 500_000.0  # LLaMA-2-Long's "ABF" base, as examples/configs/extend_4096.yaml
PASSKEY_DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
RETRIEVAL_MICRO_BATCH = 32  # per process in the retrieval stage (global batch 64)
DISTRACTORS = 4  # other keys in the log-likelihood choice: chance is 1 / (DISTRACTORS + 1)


def _stage(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _path(path: str) -> str:
    """`path` as typed from the repository root, where every command runs: relative inside it, else absolute."""
    path = os.path.abspath(path)
    relative = os.path.relpath(path, REPO)
    return path if relative == ".." or relative.startswith(".." + os.sep) else relative


def _command(args: list[str]) -> None:
    """Prints the command as typed from the repository root, then runs exactly that ("python" being this
    interpreter) as a subprocess there, as megasci/demo.py does; a failure stops the demo."""
    print("$ " + " ".join(shlex.quote(a) for a in args), flush=True)
    argv = [sys.executable if a == "python" else a for a in args]
    result = subprocess.run(argv, check=False, cwd=REPO, env=dict(os.environ))
    if result.returncode:
        raise SystemExit(f"demo-long: the command above failed with exit code {result.returncode}")


def read_tensorboard(log_dir: str) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from the TensorBoard event files under `log_dir`, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            for event in events.Scalars(tag):
                values.setdefault(tag, {})[event.step] = event.value
    if not values:
        raise SystemExit(f"demo-long: no TensorBoard scalars under {log_dir}")
    return values


def _scalar(values: dict, tag: str) -> float:
    """The newest step's value of `tag`."""
    by_step = values[tag]
    return by_step[max(by_step)]


def _tokenizer(meta: dict) -> str:
    return meta["train_config"]["data"]["tokenizer"]


def stage_config(
    base_run: str,
    save_dir: str,
    length: int,
    window: int,
    blend: list[dict],
    steps: int,
    micro_batch: int,
    lr: float,
    warmup: int,
    logs: int,
    args,
) -> dict:
    """A continuation of `base_run`: its architecture with max_seq_len `window`, trained at `length` on
    `blend` for `steps` (2 processes, `logs` console lines, one checkpoint at the end; cosine from `lr`
    to a tenth of it), with the demo's split and seed (held-out papers stay held out)."""
    meta = read_meta(base_run)
    model = {k: v for k, v in meta["model_config"].items() if k not in ("name", "checkpointing")}
    model.update(max_seq_len=window)
    data = meta["train_config"]["data"]
    return {
        "model": {"preset": "tiny", "overrides": model},
        "data": {
            "tokenizer": _tokenizer(meta),
            "seq_length": length,
            "blend": blend,
            "document_mask": True,  # the retrieval documents are scored on their answers only (a loss mask)
            "split": data["split"],
            "seed": data["seed"],
            "eval_samples": args.eval_samples,
        },
        "optim": {
            "lr": lr,
            "min_lr": lr / 10,
            "warmup_steps": min(warmup, steps),
            "weight_decay": 0.1,
            "clip_grad": 1.0,
            "bucket_numel": 200000,
        },
        "train": {
            "init_from": _path(base_run),
            "micro_batch_size": micro_batch,
            "global_batch_size": 2 * micro_batch,
            "train_steps": steps,
            "device": "cpu",
            "save_dir": _path(save_dir),
            "save_interval": steps,
            "keep_last": 1,
            "log_interval": max(1, steps // logs),
            "eval_interval": 0,
        },
    }


def _write_config(path: str, config: dict, comment: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# {comment}\n")
        yaml.safe_dump(config, f, sort_keys=False)
    print(f"wrote {_path(path)}")


def _train(config: str, overrides: list[str], processes: int) -> None:
    if processes == 1:
        _command(["python", "tools/pretrain.py", "--config", _path(config), *overrides])
    else:
        _command(
            [
                "python",
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={processes}",
                "tools/pretrain.py",
                "--config",
                _path(config),
                *overrides,
            ]
        )


def _same_weights(a: str, b: str) -> bool:
    sa = safe_load(os.path.join(resolve_checkpoint(a), "model.pt"), map_location="cpu")
    sb = safe_load(os.path.join(resolve_checkpoint(b), "model.pt"), map_location="cpu")
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def evaluate(checkpoint: str, out_dir: str, papers: str, length: int, trained: int, args) -> dict:
    """eval_ppl --by-position and eval_passkey --compact on `checkpoint`; the figures as TensorBoard has them."""
    by_position = os.path.join(out_dir, "by_position")
    _command(
        [
            "python",
            "tools/eval_ppl.py",
            "--checkpoint",
            _path(checkpoint),
            "--data",
            _path(papers),
            "--seq-length",
            str(length),
            "--by-position",
            str(trained),
            "--max-samples",
            str(args.ppl_samples),
            "--out-dir",
            _path(by_position),
        ]
    )
    passkey_dir = os.path.join(out_dir, "passkey")
    _command(
        [
            "python",
            "tools/eval_passkey.py",
            "--checkpoint",
            _path(checkpoint),
            "--data",
            _path(papers),
            "--lengths",
            str(trained),
            str(length),
            "--depths",
            *map(str, PASSKEY_DEPTHS),
            "--per-cell",
            str(args.per_cell),
            "--digits",
            str(args.digits),
            "--distractors",
            str(DISTRACTORS),
            "--compact",
            "--out-dir",
            _path(passkey_dir),
        ]
    )
    tb = {
        **read_tensorboard(os.path.join(by_position, "tensorboard")),
        **read_tensorboard(os.path.join(passkey_dir, "tensorboard")),
    }
    with open(os.path.join(by_position, "by_position.json"), encoding="utf-8") as f:
        buckets = json.load(f)["by_position"]
    with open(os.path.join(passkey_dir, "passkey.json"), encoding="utf-8") as f:
        cells = json.load(f)["summary"]["by_length"]
    rows = []
    for b in buckets:
        tag = f"eval/loss_by_position/{b['start']:05d}-{b['end']:05d}"
        rows.append(
            {
                "start": b["start"],
                "end": b["end"],
                "loss": _scalar(tb, tag),
                "stderr": b["stderr"],
                "samples": b["samples"],
                "tag": tag,
            }
        )
    beyond = [r for r in rows if r["start"] >= trained]
    result = {
        "by_position": rows,
        # Equal-width buckets over the same samples: their mean is the mean loss over those positions.
        "loss_beyond": sum(r["loss"] for r in beyond) / len(beyond),
        "loss_beyond_stderr": math.sqrt(sum(r["stderr"] ** 2 for r in beyond)) / len(beyond),
        "passkey": {
            str(n): {
                "ll_acc": _scalar(tb, f"eval/passkey/ll_acc/{n:05d}"),
                "ll_stderr": cells[str(n)]["ll_stderr"],
                "greedy_acc": _scalar(tb, f"eval/passkey/greedy_acc/{n:05d}"),
                "greedy_stderr": cells[str(n)]["greedy_stderr"],
                "n": cells[str(n)]["n"],
                "mean_logprob": cells[str(n)]["mean_logprob"],
            }
            for n in (trained, length)
        },
        "tensorboard": [_path(os.path.join(d, "tensorboard")) for d in (by_position, passkey_dir)],
    }
    return result


def print_figures(results: dict, arms: dict, trained: int, length: int) -> dict:
    """The before/after tables and the acceptance checks; returns the checks."""
    names = list(results)
    width = 22
    print(
        f"\nloss by position on held-out papers at {length} tokens (mean nats ± stderr; trained length "
        f"{trained}; from TensorBoard eval/loss_by_position/*):"
    )
    print("positions".ljust(12) + "".join(n.rjust(width) for n in names) + "   samples")
    for i, row in enumerate(results[names[0]]["by_position"]):
        cells = "".join(
            f"{results[n]['by_position'][i]['loss']:.3f} ± {results[n]['by_position'][i]['stderr']:.3f}".rjust(width)
            for n in names
        )
        print(f"{row['start']}-{row['end']}".ljust(12) + cells + f"   {row['samples']}")
    print(
        f"{trained}-{length} mean".ljust(12)
        + "".join(
            f"{results[n]['loss_beyond']:.3f} ± {results[n]['loss_beyond_stderr']:.3f}".rjust(width) for n in names
        )
    )
    print(
        f"\npasskey retrieval (compact prompt, key at depths {', '.join(map(str, PASSKEY_DEPTHS))}; held-out filler; "
        f"from TensorBoard eval/passkey/*): greedy exact match of the whole key, and the key chosen by "
        f"log-likelihood over {DISTRACTORS} random others (chance {100 / (DISTRACTORS + 1):.0f}%)"
    )
    for n in names:
        for at in (trained, length):
            p = results[n]["passkey"][str(at)]
            print(
                f"  {n:<{width}} at {at:>5} ({at // trained}x): greedy {100 * p['greedy_acc']:5.1f}% ± "
                f"{100 * p['greedy_stderr']:.1f};  key chosen {100 * p['ll_acc']:5.1f}% ± {100 * p['ll_stderr']:.1f}"
                f"  (n={p['n']}; mean log-probability of the key {p['mean_logprob']:.2f} nats)"
            )
    before = results[names[0]]
    checks = {}
    for arm in arms:
        checks[f"{arm}: loss beyond {trained} falls"] = results[arm]["loss_beyond"] < before["loss_beyond"]
    raised, control = results[names[1]]["passkey"][str(length)], results[names[2]]["passkey"][str(length)]
    gap = raised["greedy_acc"] - control["greedy_acc"]
    se = math.sqrt(raised["greedy_stderr"] ** 2 + control["greedy_stderr"] ** 2)
    apart = gap / se if se > 0 else (math.inf if gap > 0 else 0.0)
    checks[f"passkey at {length}: {names[1]} above the control by more than 2 stderr"] = apart > 2
    print(
        f"\npasskey at {length} (greedy) {names[1]} - control: {100 * gap:.1f} points, combined stderr "
        f"{100 * se:.1f} ({apart:.1f} stderr apart)"
    )
    for check, ok in checks.items():
        print(f"  [{'yes' if ok else 'NO'}] {check}")
    return {"checks": checks, "gap": gap, "gap_stderr": se}


def _retrieval_data(base_run: str, papers: str, prefix: str, length: int, count: int, args) -> str:
    _command(
        [
            "python",
            "tools/make_passkey_data.py",
            "--checkpoint",
            _path(base_run),
            "--filler",
            _path(papers),
            "--length",
            str(length),
            "--count",
            str(count),
            "--digits",
            str(args.digits),
            "--seed",
            str(args.seed + length),
            "--output-prefix",
            _path(prefix),
        ]
    )
    return prefix + "_text_document"


def run(output: str, args) -> dict:
    started = time.perf_counter()
    output = os.path.abspath(output)
    base_run = os.path.join(output, "run")
    if not os.path.isfile(os.path.join(base_run, "latest")):
        raise SystemExit(f"demo-long: no demo model in {base_run}; run `make demo` (python -m megasci.demo) first")
    meta = read_meta(base_run)
    trained = int(meta["train_config"]["data"]["seq_length"])
    theta = float(meta["model_config"]["rope_theta"])
    length = FACTOR * trained
    long_dir = os.path.join(output, "long")
    papers = os.path.join(output, "data", "arxiv_text_document")
    data_dir = os.path.join(long_dir, "data")

    _stage(
        f"long 1/5: retrieval training documents (passkey and span copy, filler from the papers' training split, "
        f"answers scored) at {trained} and {length} tokens"
    )
    short_data = _retrieval_data(
        base_run,
        papers,
        os.path.join(data_dir, f"retrieval_{trained}"),
        trained,
        max(256, args.retrieval_steps * 2 * RETRIEVAL_MICRO_BATCH),
        args,
    )
    long_data = _retrieval_data(
        base_run,
        papers,
        os.path.join(data_dir, f"retrieval_{length}"),
        length,
        max(256, 4 * args.steps * args.micro_batch),
        args,
    )

    t = _stage(f"long 2/5: retrieval at the training length: the demo model on the {trained}-token documents")
    retrieval_run = os.path.join(long_dir, "retrieval")
    config = stage_config(
        base_run,
        retrieval_run,
        trained,
        trained * 2,
        [{"prefix": _path(short_data), "weight": 1.0, "name": "retrieval"}],
        steps=args.retrieval_steps,
        micro_batch=RETRIEVAL_MICRO_BATCH,
        lr=args.retrieval_lr,
        warmup=20,
        logs=8,
        args=args,
    )
    retrieval_config = os.path.join(long_dir, "retrieval.yaml")
    _write_config(retrieval_config, config, f"python -m megasci.demo_long: retrieval at {trained} tokens")
    _train(retrieval_config, [], processes=2)
    print(f"retrieval stage: {time.perf_counter() - t:.1f} s")

    config = stage_config(
        retrieval_run,
        os.path.join(long_dir, "control"),
        length,
        length,
        [
            {"prefix": _path(papers), "weight": args.paper_share, "name": "papers"},
            {"prefix": _path(long_data), "weight": 1 - args.paper_share, "name": "retrieval"},
        ],
        steps=args.steps,
        micro_batch=args.micro_batch,
        lr=args.lr,
        warmup=5,
        logs=6,
        args=args,
    )
    config_path = os.path.join(long_dir, "extend.yaml")
    _write_config(
        config_path,
        config,
        f"python -m megasci.demo_long: continued at {length} tokens ({FACTOR}x {trained}); the raised-base arm adds "
        "model.overrides.rope_theta",
    )

    t = _stage(f"long 3/5: the model as it is, saved with max_seq_len {length} (one step at learning rate 0)")
    before = os.path.join(long_dir, "before")
    _train(
        config_path,
        [
            "train.train_steps=1",
            "optim.warmup_steps=0",
            "optim.decay_steps=0",
            "optim.min_lr=0",
            "data.eval_samples=1",
            f"train.save_dir={_path(before)}",
        ],
        processes=1,
    )
    same = _same_weights(retrieval_run, before)
    print(f"weights identical to the retrieval stage's: {same} ({time.perf_counter() - t:.1f} s)")
    if not same:
        raise SystemExit("demo-long: the learning-rate-0 step changed the weights")

    arms = {
        f"rope_theta {args.rope_theta:g}": os.path.join(long_dir, "raised_base"),
        f"control ({theta:g})": os.path.join(long_dir, "control"),
    }
    for i, (arm, save_dir) in enumerate(arms.items()):
        t = _stage(f"long 4/5: continued training at {length} tokens, {args.steps} steps: {arm}")
        overrides = [f"train.save_dir={_path(save_dir)}"]
        if i == 0:
            overrides.insert(0, f"model.overrides.rope_theta={args.rope_theta:g}")
        _train(config_path, overrides, processes=2)
        print(f"{arm}: training took {time.perf_counter() - t:.1f} s")

    results = {}
    for name, checkpoint in {"before": before, **arms}.items():
        t = _stage(f"long 5/5: loss by position and passkey at {length} tokens: {name}")
        results[name] = evaluate(
            checkpoint, os.path.join(long_dir, "eval", os.path.basename(checkpoint)), papers, length, trained, args
        )
        print(f"evaluation took {time.perf_counter() - t:.1f} s")
    verdict = print_figures(results, arms, trained, length)
    total = time.perf_counter() - started
    summary = {
        "trained_length": trained,
        "length": length,
        "steps": args.steps,
        "rope_theta": args.rope_theta,
        "control_theta": theta,
        "retrieval_steps": args.retrieval_steps,
        "paper_share": args.paper_share,
        "results": results,
        **verdict,
        "seconds": total,
    }
    with open(os.path.join(long_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print("TensorBoard: tensorboard --logdir " + _path(os.path.join(long_dir, "eval")))
    print(f"demo-long finished in {total:.1f} s; outputs under {_path(long_dir)}/ (summary.json)")
    return summary


QUICK = {"steps": 3, "retrieval_steps": 3, "per_cell": 2, "ppl_samples": 4, "eval_samples": 2, "micro_batch": 2}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="demo_output", help="the demo's output directory (its run/ is the base model)")
    p.add_argument("--retrieval-steps", type=int, default=400, help="steps of retrieval at the training length")
    p.add_argument("--retrieval-lr", type=float, default=3e-3)
    p.add_argument("--steps", type=int, default=20, help="continued-training steps at 4x for each arm")
    p.add_argument("--rope-theta", type=float, default=RAISED_THETA, help="the raised RoPE base")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--digits", type=int, default=5, help="digits of the passkey, in training and evaluation")
    p.add_argument("--micro-batch", type=int, default=8, help="per process at 4x; global batch = 2 x this")
    p.add_argument("--paper-share", type=float, default=0.5, help="weight of the papers in the 4x blend")
    p.add_argument("--per-cell", type=int, default=200, help="passkey examples per depth (5 depths)")
    p.add_argument("--ppl-samples", type=int, default=32, help="held-out samples for loss by position")
    p.add_argument("--eval-samples", type=int, default=8, help="validation samples per source during training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smoke run in about a minute: " + str(QUICK))
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    run(args.output, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

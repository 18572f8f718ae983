"""Context extension on CPU (issue 20): the demo model (`make demo`) continued at 4x its training length,
once with a raised RoPE base and once, as the control, at the same base; loss by position and passkey
retrieval at 4x before and after, for both.

    python -m megasci.demo_long --output demo_output        # after python -m megasci.demo --output demo_output

Stages, each running the tools/ commands it prints (`$ ...`) from the repository root:

1. passkey-style training documents (megasci/downstream/passkey.py's compact format, filler from the
   *training* split of the papers, fresh keys, every other document stating its key again at random
   points for more answers to learn from) -> JSONL -> tools/preprocess_data.py. A tiny model learns no
   retrieval from the papers alone, so the extension data mixes these in (--passkey-share); both arms
   get exactly the same data, so the difference between them is the RoPE base alone.
2. the "before" checkpoint: one step at learning rate 0 (warm-up 0, decay 0, floor 0) from the demo
   model with max_seq_len at 4x, so the evaluation tools accept the longer window; its weights are the
   demo model's, checked tensor by tensor.
3. two continuations from the demo model (train.init_from) at 4x the length: raised base, control.
4. tools/eval_ppl.py --by-position and tools/eval_passkey.py --compact (held-out papers, at 4x) on
   each of the three checkpoints.

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

import numpy as np
import torch
import yaml

from megasci.demo import REPO
from megasci.downstream.passkey import PasskeyConfig, make_examples
from megasci.evaluation import passkey_filler
from megasci.tokenizer import load_tokenizer
from megasci.training.checkpoint import read_meta, resolve_checkpoint, safe_load

FACTOR = 4  # the new length over the training length
RAISED_THETA = 500_000.0  # LLaMA-2-Long's "ABF" base, as examples/configs/extend_4096.yaml
PASSKEY_DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


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


def write_passkey_documents(
    path: str, checkpoint: str, data_prefix: str, count: int, length: int, seed: int, digits: int, repeats: int = 6
) -> int:
    """`count` compact passkey documents of up to `length` tokens as JSONL text, filler from the papers'
    training split (the evaluation's filler is the held-out split), keys at every depth; returns the count."""
    meta = read_meta(checkpoint)
    tokenizer = load_tokenizer(_tokenizer(meta))
    lengths = tuple(range(length // 8, length + 1, length // 8))  # distances from short to the whole window
    depths = tuple(float(d) for d in np.linspace(0.0, 1.0, 11))
    per_cell = max(1, math.ceil(count / (len(lengths) * len(depths))))
    filler = passkey_filler(data_prefix, meta, resolve_checkpoint(checkpoint), 100 * length, split="train")
    config = PasskeyConfig(
        lengths=lengths, depths=depths, per_cell=per_cell, seed=seed, compact=True, digits=digits, distractors=0
    )
    examples = make_examples(tokenizer.encode, filler, config)
    order = np.random.default_rng(seed).permutation(len(examples))[:count]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    with open(path, "w", encoding="utf-8") as f:
        for j, i in enumerate(order.tolist()):
            ex = examples[i]
            text = tokenizer.decode(list(ex.context + ex.answer))
            if j % 2:  # every other document asks again at random points after the needle: more answers to learn from
                needle = f"The pass key is {ex.key}."
                head, tail = text.split(needle, 1)
                words = tail.split(" ")
                for at in sorted(rng.integers(0, len(words), size=repeats).tolist(), reverse=True):
                    words.insert(at, needle)
                text = head + needle + " ".join(words)
            f.write(json.dumps({"id": f"passkey-{i}", "text": text}) + "\n")
    return len(order)


def _tokenizer(meta: dict) -> str:
    return meta["train_config"]["data"]["tokenizer"]


def extension_config(base_run: str, output: str, length: int, passkey_prefix: str, paper_prefix: str, args) -> dict:
    """The continuation's config: the demo model's architecture with max_seq_len `length`, the demo's
    split and seed (held-out papers stay held out), papers and passkey documents blended."""
    meta = read_meta(base_run)
    model = {k: v for k, v in meta["model_config"].items() if k not in ("name", "checkpointing")}
    model.update(max_seq_len=length)
    data = meta["train_config"]["data"]
    return {
        "model": {"preset": "tiny", "overrides": model},
        "data": {
            "tokenizer": _tokenizer(meta),
            "seq_length": length,
            "blend": [
                {"prefix": paper_prefix, "weight": 1 - args.passkey_share, "name": "papers"},
                {"prefix": passkey_prefix, "weight": args.passkey_share, "name": "passkey"},
            ],
            "split": data["split"],
            "seed": data["seed"],
            "eval_samples": args.eval_samples,
        },
        "optim": {
            "lr": args.lr,
            "min_lr": args.lr / 10,
            "warmup_steps": min(10, args.steps),
            "weight_decay": 0.1,
            "clip_grad": 1.0,
            "bucket_numel": 200000,
        },
        "train": {
            "init_from": _path(base_run),
            "micro_batch_size": args.micro_batch,
            "global_batch_size": 2 * args.micro_batch,
            "train_steps": args.steps,
            "device": "cpu",
            "save_dir": _path(os.path.join(output, "control")),
            "save_interval": args.steps,
            "keep_last": 1,
            "log_interval": max(1, args.steps // 6),
            "eval_interval": 0,
        },
    }


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
            str(length),
            "--depths",
            *map(str, PASSKEY_DEPTHS),
            "--per-cell",
            str(args.per_cell),
            "--digits",
            str(args.digits),
            "--distractors",
            "0",
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
        cell = json.load(f)["summary"]["by_length"][str(length)]
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
            "greedy_acc": _scalar(tb, f"eval/passkey/greedy_acc/{length:05d}"),
            "greedy_stderr": cell["greedy_stderr"],
            "n": cell["n"],
            "mean_logprob": cell["mean_logprob"],
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
        f"\npasskey retrieval at {length} tokens = {FACTOR}x the training length (compact prompt, key at depths "
        f"{', '.join(map(str, PASSKEY_DEPTHS))}; held-out filler; from TensorBoard eval/passkey/*):"
    )
    for n in names:
        p = results[n]["passkey"]
        print(
            f"  {n:<{width}} greedy exact match {100 * p['greedy_acc']:5.1f}% ± {100 * p['greedy_stderr']:.1f} "
            f"(n={p['n']});  mean log-probability of the key {p['mean_logprob']:.2f} nats (passkey.json)"
        )
    before = results[names[0]]
    checks = {}
    for arm in arms:
        checks[f"{arm}: loss beyond {trained} falls"] = results[arm]["loss_beyond"] < before["loss_beyond"]
    raised, control = results[names[1]]["passkey"], results[names[2]]["passkey"]
    gap = raised["greedy_acc"] - control["greedy_acc"]
    se = math.sqrt(raised["greedy_stderr"] ** 2 + control["greedy_stderr"] ** 2)
    apart = gap / se if se > 0 else (math.inf if gap > 0 else 0.0)
    checks[f"passkey at {length}: {names[1]} above the control by more than 2 stderr"] = apart > 2
    print(
        f"\npasskey gap {names[1]} - control: {100 * gap:.1f} points, combined stderr {100 * se:.1f} "
        f"({apart:.1f} stderr apart)"
    )
    for check, ok in checks.items():
        print(f"  [{'yes' if ok else 'NO'}] {check}")
    return {"checks": checks, "gap": gap, "gap_stderr": se}


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
    passkey_jsonl = os.path.join(long_dir, "passkey_train.jsonl")

    _stage(
        f"long 1/4: {args.passkey_docs} passkey training documents (compact, up to {length} tokens, filler from "
        f"the papers' training split) -> tokens"
    )
    n = write_passkey_documents(passkey_jsonl, base_run, papers, args.passkey_docs, length, args.seed, args.digits)
    print(f"wrote {n} documents -> {_path(passkey_jsonl)}")
    passkey_prefix = os.path.join(long_dir, "data", "passkey")
    _command(
        [
            "python",
            "tools/preprocess_data.py",
            "--input",
            _path(passkey_jsonl),
            "--output-prefix",
            _path(passkey_prefix),
            "--tokenizer-model",
            _path(_tokenizer(meta)),
            "--workers",
            "2",
            "--append-eod",
            "--no-progress",
        ]
    )
    config_path = os.path.join(long_dir, "extend.yaml")
    config = extension_config(base_run, long_dir, length, passkey_prefix + "_text_document", papers, args)
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(
            f"# python -m megasci.demo_long: the demo model continued at {length} tokens ({FACTOR}x {trained}); "
            f"the raised-base arm adds model.overrides.rope_theta\n"
        )
        yaml.safe_dump(config, f, sort_keys=False)
    print(f"wrote the continuation's config -> {_path(config_path)}")

    t = _stage(f"long 2/4: the demo model as it is, saved with max_seq_len {length} (one step at learning rate 0)")
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
    same = _same_weights(base_run, before)
    print(f"weights identical to the demo model's: {same} ({time.perf_counter() - t:.1f} s)")
    if not same:
        raise SystemExit("demo-long: the learning-rate-0 step changed the weights")

    arms = {
        f"rope_theta {args.rope_theta:g}": os.path.join(long_dir, "raised_base"),
        f"control ({theta:g})": os.path.join(long_dir, "control"),
    }
    for i, (arm, save_dir) in enumerate(arms.items()):
        t = _stage(f"long 3/4: continued training at {length} tokens, {args.steps} steps: {arm}")
        overrides = [f"train.save_dir={_path(save_dir)}"]
        if i == 0:
            overrides.insert(0, f"model.overrides.rope_theta={args.rope_theta:g}")
        _train(config_path, overrides, processes=2)
        print(f"{arm}: training took {time.perf_counter() - t:.1f} s")

    results = {}
    for name, checkpoint in {"before": before, **arms}.items():
        t = _stage(f"long 4/4: loss by position and passkey at {length} tokens: {name}")
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
        "passkey_docs": n,
        "passkey_share": args.passkey_share,
        "results": results,
        **verdict,
        "seconds": total,
    }
    with open(os.path.join(long_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print("TensorBoard: tensorboard --logdir " + _path(os.path.join(long_dir, "eval")))
    print(f"demo-long finished in {total:.1f} s; outputs under {_path(long_dir)}/ (summary.json)")
    return summary


QUICK = {"steps": 3, "passkey_docs": 60, "per_cell": 2, "ppl_samples": 4, "eval_samples": 2, "micro_batch": 2}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="demo_output", help="the demo's output directory (its run/ is the base model)")
    p.add_argument("--steps", type=int, default=150, help="continued-training steps for each arm")
    p.add_argument("--rope-theta", type=float, default=RAISED_THETA, help="the raised RoPE base")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--digits", type=int, default=5, help="digits of the passkey, in training and evaluation")
    p.add_argument("--micro-batch", type=int, default=4, help="per process; global batch = 2 x this")
    p.add_argument("--passkey-docs", type=int, default=2400)
    p.add_argument("--passkey-share", type=float, default=0.8, help="weight of the passkey documents in the blend")
    p.add_argument("--per-cell", type=int, default=30, help="passkey examples per depth (5 depths)")
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

"""benchmarks/bench_train.py on the CPU: both contenders complete, and they train the same model on the same tokens.

The GPU numbers come from a device session; what can be checked here is that the script runs end to
end, that its JSON lines carry the fields docs/benchmarks.md is written from, and that the side-by-side
comparison is fair: from the same initial weights and data, ours and transformers' LlamaForCausalLM
must report the same first-step loss and gradient norm (float32), so neither trains on fewer tokens.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"
TRAIN_FIELDS = {
    "contender",
    "preset",
    "seq",
    "micro_batch",
    "accumulation",
    "steps",
    "warmup",
    "tokens_per_s",
    "tflops",
    "mfu",
    "peak_memory_gib",
    "first_loss",
    "final_loss",
    "first_grad_norm",
    "losses",
    "flops_per_token",
    "checkpointing",
    "precision",
    "optimizer",
    "step_s_median",
}
SMOKE = [
    "--device",
    "cpu",
    "--preset",
    "tiny",
    "--dtype",
    "float32",
    "--seq",
    "32",
    "--micro-batch",
    "2",
    "--accumulation",
    "2",
    "--steps",
    "3",
    "--warmup",
    "1",
]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_contenders_train_the_same_model_on_the_same_tokens(bench, tmp_path, capsys):
    out = tmp_path / "train.jsonl"
    bench.main(SMOKE + ["--isolation", "none", "--peak-tflops", "1.0", "--json-out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["train", "train", "compare"]
    ours, hf, compare = rows
    assert (ours["contender"], hf["contender"]) == ("ours", "hf")
    for row in (ours, hf):
        assert "error" not in row, row
        assert TRAIN_FIELDS <= row.keys()
        assert len(row["losses"]) == 4 and all(math.isfinite(v) for v in row["losses"])
        assert row["tokens_per_s"] > 0 and row["mfu"] == pytest.approx(row["tflops"] / 1.0)
        assert row["flops_per_token"] == ours["flops_per_token"]
    assert ours["backends"]["cross_entropy_loss"] == "chunked" and hf["attention"] == "sdpa"
    assert "fused=True" in hf["optimizer"]
    assert abs(ours["first_loss"] - hf["first_loss"]) < 1e-4
    assert ours["first_grad_norm"] == pytest.approx(hf["first_grad_norm"], rel=1e-4)
    assert ours["final_loss"] == pytest.approx(hf["final_loss"], abs=1e-3)  # same optimizer, same updates
    assert compare["speedup_tokens_per_s"] == pytest.approx(ours["tokens_per_s"] / hf["tokens_per_s"])
    assert compare["first_loss_difference"] < 1e-4
    table = capsys.readouterr().out
    assert "ours/hf: tokens/s x" in table and "goal (" in table


def test_each_contender_subprocess_gets_the_same_options(bench):
    args = bench.parse_args(
        SMOKE + ["--checkpointing", "selective", "--peak-tflops", "2.5", "--lr", "1e-3", "--gradients", "shard"]
    )
    command = bench.child_command(args, "hf", "/tmp/rows.jsonl", "full")
    assert command[1] == str(SCRIPT)
    child = bench.parse_args(command[2:])
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
        "gradients",
    ):
        assert getattr(child, option) == getattr(args, option), option
    assert (child.only, child.isolation, child.hf_checkpointing, child.json_out) == (
        ["hf"],
        "none",
        "full",
        "/tmp/rows.jsonl",
    )


def test_an_out_of_memory_baseline_is_reported_and_rerun_with_checkpointing(bench, monkeypatch, capsys):
    real_setup = bench.setup_hf

    def setup_hf(cfg, args, device, dtype, checkpointing):
        if checkpointing == "none":
            raise bench.torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real_setup(cfg, args, device, dtype, checkpointing)

    monkeypatch.setattr(bench, "setup_hf", setup_hf)
    rows = bench.main(SMOKE + ["--isolation", "none", "--only", "hf"])
    assert [(r["contender"], r["checkpointing"], r.get("error")) for r in rows] == [
        ("hf", "none", "OOM"),
        ("hf", "full", None),
    ]
    assert rows[1]["first_loss"] > 0
    out = capsys.readouterr().out
    assert "rerunning with gradient checkpointing" in out and "OOM" in out

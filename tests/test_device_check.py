"""benchmarks/device_check.sh --cpu-dry-run: every part of the one GPU check runs (tiny preset, CPU) and
reports, so the script is known to work before a GPU minute is spent on it."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = [
    "gpu_tests",
    "op_model_tests",
    "ops",
    "train",
    "train_compiled",
    "memory_micro_large",
    "train_4096",
    "eval_share",
]


def test_cpu_dry_run_runs_every_part_and_writes_the_summary(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    result = subprocess.run(
        ["bash", os.path.join(REPO, "benchmarks", "device_check.sh"), "--cpu-dry-run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    rows = [json.loads(line) for line in (tmp_path / "device_check.jsonl").read_text().splitlines()]
    parts = [r for r in rows if r["kind"] == "part"]
    assert [p["part"] for p in parts] == PARTS
    assert all(p["rc"] == 0 and not p["timed_out"] for p in parts), parts
    tests = {p["part"]: p for p in parts if "tests" in p}
    assert tests["op_model_tests"]["tests"] > 0 and tests["op_model_tests"]["failures"] == 0
    trains = [r for r in rows if r["kind"] == "train"]
    assert [
        (r["contender"], r["compile"] if r["contender"] == "ours" else None, r["micro_batch"], r["seq"]) for r in trains
    ] == [
        ("ours", None, 2, 32),
        ("hf", None, 2, 32),
        ("ours", "aot_eager", 2, 32),
        ("ours", None, 4, 32),
        ("ours", None, 1, 128),
    ]  # the last: the long-context part
    assert all("error" not in r and r["accumulation"] == 2 for r in trains), trains
    assert {r["op"] for r in rows if r["kind"] == "op"} >= {"rms_norm", "swiglu", "cross_entropy_loss"}
    assert any(r["kind"] == "compare" for r in rows)
    [share] = [r for r in rows if r["kind"] == "eval_share"]  # the scorer's part, with part train's tokens/s
    assert share["preset"] == "tiny" and share["scorer_tokens_per_s"] > 0 and share["share"] > 0
    assert share["train_tokens_per_s"] == trains[0]["tokens_per_s"]
    log = (tmp_path / "device_check.log").read_text()
    assert "== summary" in log and "parts failed: 0" in log
    assert "train ours seq   128 mb   1" in log  # the long-context step's line in the summary
    assert "downstream eval tiny: scorer" in log

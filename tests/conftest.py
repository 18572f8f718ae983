"""Fixtures shared by several test files."""

import os
import runpy
import sys

import pytest

from megasci import ops

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools")
ARXIV_SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "arxiv_sample")

# Modules that train, spawn processes, run tools end to end, build a corpus or run the Triton
# interpreter. `make test-fast` (pytest -m "not slow") skips them to stay under 3 minutes on 2 cores;
# `make test` runs everything. A new module whose tests take more than a few seconds belongs here.
SLOW_MODULES = frozenset(
    {
        "test_bench_train",
        "test_chat_template",
        "test_corpus_builder",
        "test_corpus_fast_paths",
        "test_corpus_residue",
        "test_demo_and_tools",
        "test_demo_long",
        "test_device_check",
        "test_eval_ppl",
        "test_export_hf",
        "test_finetune",
        "test_generate",
        "test_gradient_modes_training",
        "test_multinode",
        "test_parquet_preprocess",
        "test_plan_run",
        "test_preprocess",
        "test_profiler",
        "test_readme",
        "test_sft_data",
        "test_sft_loss",
        "test_slurm",
        "test_tokenizer",
        "test_training",
        "test_training_data",
        "test_triton_ops",
        "test_zero",
        "test_attention_memory",
        "test_chat_markers",
        "test_checkpoint_safety",
        "test_divergence",
        "test_eval_tasks",
        "test_export_rope",
        "test_import_hf",
        "test_in_loop_eval",
        "test_init_from_hf",
        "test_pretrain_errors",
        "test_rope_scaling",
        "test_scorer",
        "test_seq_length_stages",
        "test_shutdown",
    }
)
_missing = sorted(m for m in SLOW_MODULES if not os.path.exists(os.path.join(os.path.dirname(__file__), m + ".py")))
assert not _missing, f"SLOW_MODULES names modules that do not exist (renamed?): {_missing}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.stem in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared_sample_corpus(tmp_path_factory):
    """(records, yield report) of the real arXiv sample built once (bulk, packages and hostile inputs)."""
    from megasci.corpus.builder import BuildConfig, build
    from megasci.utils.io import iter_json_records

    if not os.path.isdir(ARXIV_SAMPLE):
        pytest.skip(f"real arXiv sample not present at {ARXIV_SAMPLE}")
    out = str(tmp_path_factory.mktemp("sample_corpus"))
    report = build(
        BuildConfig(sources=[os.path.join(ARXIV_SAMPLE, d) for d in ("bulk", "packages", "hostile")], output=out),
        progress=False,
    )
    records = [
        r
        for name in sorted(os.listdir(os.path.join(out, "shards")))
        for r in iter_json_records(os.path.join(out, "shards", name))
    ]
    assert len(records) == report.written > 0
    return records, report


@pytest.fixture
def attention_backend():
    """Yields a setter for our attention backend and restores "auto" afterwards."""
    yield lambda name: ops.set_backend("attention", name)
    ops.set_backend("attention", "auto")


@pytest.fixture
def run_tool(monkeypatch):
    """`run_tool("eval_ppl.py", [args...])` runs tools/<name> as a script; returns its exit code."""

    def run(name: str, args: list[str]) -> int:
        monkeypatch.setattr(sys, "argv", [name] + list(args))
        with pytest.raises(SystemExit) as done:
            runpy.run_path(os.path.join(TOOLS, name), run_name="__main__")
        return done.value.code

    return run

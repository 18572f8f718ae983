"""benchmarks/bench_corpus.py runs the real builder: its stage split names every paper stage, its
replicated sample really holds every input once per copy under new ids, and the rows count inputs
as the yield report does."""

import os
import tarfile

import pytest

from benchmark_modules import load_benchmark
from megasci.corpus.steps import DEFAULT_PIPELINE
from megasci.corpus.synthetic import generate_papers, write_arxiv_metadata, write_source_packages

bench = load_benchmark("bench_corpus")


def test_a_run_reports_every_stage_and_its_inputs(tmp_path):
    records = list(generate_papers(6, seed=4))
    tars = [
        p
        for p in write_source_packages(str(tmp_path / "src"), records, bulk_tar=True)
        if os.path.basename(p).startswith("arXiv_src_")
    ]
    write_arxiv_metadata(str(tmp_path / "meta.jsonl"), records)
    row = bench.run("synthetic", tars, [str(tmp_path / "meta.jsonl")], workers=1)
    assert row["inputs"] == 6 and 0 < row["written"] <= 6
    assert set(row["stage_seconds"]) == {step.name for step in DEFAULT_PIPELINE} | {"archive"}
    assert row["stage_seconds"]["archive"] > 0  # opening the objects, timed in the run itself
    assert row["phase1_cpu_s"] > 0 and row["papers_per_s"] == row["inputs"] / row["phase1_s"]


def test_the_replicated_sample_holds_each_input_once_per_copy(tmp_path):
    sample = tmp_path / "sample"
    for folder in ("bulk", "packages", "hostile"):
        (sample / folder).mkdir(parents=True)
    (sample / "packages" / "2101.00001.gz").write_bytes(b"a")
    (sample / "hostile" / "2101.00002.pdf").write_bytes(b"b")
    tars = bench.write_replicated_sample(str(sample), str(tmp_path / "rep"), copies=3)
    names = []
    for path in tars:
        with tarfile.open(path) as tar:
            names += [(member.name, tar.extractfile(member).read()) for member in tar.getmembers()]
    assert len(tars) == 3 and len(names) == 6 and len({name for name, _ in names}) == 6
    assert sorted(data for _, data in names) == [b"a"] * 3 + [b"b"] * 3


def test_the_dedup_index_figure_counts_at_least_each_signature():
    figures = bench.dedup_index(300)
    assert figures["papers"] == 300 and figures["us_per_paper"] > 0
    assert figures["bytes_per_paper"] > 128 * 4  # every paper keeps its uint32 signature at least


def test_metadata_loading_figure_loads_every_line(tmp_path):
    if not os.path.isdir(bench.SAMPLE):
        pytest.skip(f"real arXiv sample not present at {bench.SAMPLE}")
    figures = bench.metadata_loading(bench.SAMPLE, 450, str(tmp_path))
    assert figures["lines"] == 450 and figures["us_per_line"] > 0 and 0 < figures["kept"] <= 450

"""The arXiv corpus builder: source archives (+ metadata) to clean, deduplicated, section-tagged shards.

Two phases, so work splits across machines and survives being killed:
1. `units.process_units`: inputs are cut into units, each finished unit is written atomically and
   skipped on a rerun; `--num-shards/--shard-index` takes every K-th unit, so K machines share one
   output directory.
2. `finalize.finalize`: dedup over the whole run, `shards/arxiv-NNNNN.jsonl.zst`, the yield report
   (`yield.json`, a printed funnel, `yield.png`) and, with `BuildConfig.rejected_dir`, the log of
   every rejected paper (`rejected.py`).

The funnel is declared by the caller: `BuildConfig.pipeline` lists the per-paper steps
(`steps.DEFAULT_PIPELINE` unless given; what a step is: `pipeline.py`), between the fixed input
stages (archive, metadata) and the corpus-wide ones (exact and near dedup).

    config.py    BuildConfig          pipeline.py  Paper, Step, the funnel's stage names
    steps.py     the default steps    units.py     phase 1: units, workers, per-paper time limit
    finalize.py  phase 2: dedup, shards   report.py  the yield report and its plot
    rejected.py  the rejected-paper log
"""

from __future__ import annotations

import os
import time

from megasci.corpus.config import BuildConfig
from megasci.corpus.finalize import finalize
from megasci.corpus.rejected import REJECTED_FILE
from megasci.corpus.report import YieldReport
from megasci.corpus.units import process_units


def build(cfg: BuildConfig, progress: bool = True, finalize_run: bool | None = None) -> YieldReport | None:
    """Phase 1 for this shard, then phase 2 when this is the only shard (or when asked)."""
    started = time.perf_counter()
    process_units(cfg, progress=progress)
    if finalize_run is None:
        finalize_run = cfg.num_shards == 1
    if not finalize_run:
        return None
    report = finalize(cfg)
    report_seconds = time.perf_counter() - started
    print(report.format())
    print(f"built in {report_seconds:.1f} s -> {cfg.output}/shards, {cfg.output}/yield.json, {cfg.output}/yield.png")
    if cfg.rejected_dir:
        print(f"rejected papers, with stage and reason: {os.path.join(cfg.rejected_dir, REJECTED_FILE)}")
    return report

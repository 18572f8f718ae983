#!/usr/bin/env python
"""The JSON lines and the summary table of benchmarks/device_check.sh.

    device_report.py part JSONL NAME RC SECONDS [JUNIT_XML]   one line for a part of the check
    device_report.py summary JSONL                            the table, from every line in JSONL

A part's line holds its exit status (124: it hit its cap) and, for a pytest part, the counts from
its JUnit XML. The benchmarks append their own lines (kind "op", "model", "train", "compare") to
the same file; the summary puts the figures the issue asks for in one table.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ElementTree


def pytest_counts(junit_xml: str) -> dict:
    """tests, failures, errors and skipped from a JUnit XML report (every testsuite summed)."""
    try:
        root = ElementTree.parse(junit_xml).getroot()
    except (OSError, ElementTree.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    return {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}


def record_part(path: str, name: str, rc: int, seconds: float, junit_xml: str | None = None) -> dict:
    row = {"kind": "part", "part": name, "rc": rc, "seconds": round(seconds, 1), "timed_out": rc in (124, 137)}
    if junit_xml:
        row.update(pytest_counts(junit_xml))
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def summary_lines(rows: list[dict]) -> list[str]:
    lines = [f"{'part':<22} {'rc':>4} {'seconds':>8}  detail"]
    for r in (r for r in rows if r["kind"] == "part"):
        detail = "TIMED OUT (its cap)" if r["timed_out"] else ""
        if "tests" in r:
            passed = r["tests"] - r["failures"] - r["errors"] - r["skipped"]
            detail += f" {passed} passed, {r['failures']} failed, {r['errors']} errors, {r['skipped']} skipped"
        lines.append(f"{r['part']:<22} {r['rc']:>4} {r['seconds']:>8.1f} {detail}")
    for r in (r for r in rows if r["kind"] == "op"):
        detail = (
            f"{r['ms']:.3f} ms, max rel err {r['max_rel_error']:.1e}, "
            f"x{r.get('speedup_vs_reference', 0):.2f} vs reference"
            if "ms" in r
            else r["error"]
        )
        lines.append(f"op {r['op']:<19} {r['variant']:<28} {detail}")
    for r in (r for r in rows if r["kind"] == "train"):
        head = (
            f"train {r['contender']:<4} seq {r.get('seq', '-'):>5} mb {r.get('micro_batch', '-'):>3} "
            f"x{r.get('accumulation', '-'):<3} "
            f"compile {r.get('compile') or '-':<9} ckpt {r.get('checkpointing', '-'):<9}"
        )
        if "error" in r:
            lines.append(f"{head} {r['error']}")
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        memory = f"{r['peak_memory_gib']:.1f} GiB" if r.get("peak_memory_gib") is not None else "-"
        lines.append(f"{head} {r['tokens_per_s']:>10,.0f} tokens/s  MFU {mfu:>6}  peak {memory}")
    for r in (r for r in rows if r["kind"] == "eval_share"):
        lines.append(
            f"downstream eval {r['preset']}: scorer {r['scorer_tokens_per_s']:,.0f} input tokens/s; one "
            f"evaluation {r['eval_s']:,.1f} s = {r['share']:.2%} of the training between two "
            f"(interval {r['interval']})"
        )
    for r in (r for r in rows if r["kind"] == "compare"):
        mfu_goal = "met" if r["goal_mfu_met"] else "not met" if r["goal_mfu_met"] is False else "unknown"
        lines.append(
            f"ours/hf at mb {r['micro_batch']}: tokens/s x{r['speedup_tokens_per_s']:.2f} "
            f"(goal x1.5: {'met' if r['goal_speedup_met'] else 'not met'}), MFU goal {mfu_goal}"
        )
    return lines


def main(argv: list[str]) -> int:
    if argv[:1] == ["part"] and len(argv) in (5, 6):
        record_part(argv[1], argv[2], int(argv[3]), float(argv[4]), argv[5] if len(argv) == 6 else None)
        return 0
    if argv[:1] == ["summary"] and len(argv) == 2:
        with open(argv[1]) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        print("\n".join(summary_lines(rows)))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

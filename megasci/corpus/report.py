"""The yield report: papers and characters left after each funnel stage, every rejection by reason.

`FunnelTally` counts finalize's one pass over the unit results and its dedup decisions into a
`YieldReport`; the report prints as the funnel table and plots as `yield.png`.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from megasci.corpus.pipeline import INPUT_STAGES, INPUTS_ROW
from megasci.corpus.units import InputResult
from megasci.utils.io import atomic_output


@dataclass
class YieldReport:
    inputs: int = 0
    written: int = 0
    funnel: list[dict] = field(default_factory=list)  # per stage: papers and characters left after it
    rejections: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> reason -> papers
    language_flips: int = 0
    emails_removed: int = 0  # e-mail addresses taken out of the papers that reached cleaning
    metadata_lines: dict[str, int] = field(default_factory=dict)  # snapshot lines by filter outcome
    sources_with_metadata: int = 0  # packages that reached assembly with / without a metadata record
    sources_without_metadata: int = 0
    skipped_members: dict[str, int] = field(default_factory=dict)  # members dropped inside sound packages
    encodings: dict[str, int] = field(default_factory=dict)
    near_duplicate_clusters: list[list[str]] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{'stage':<12} {'papers left':>12} {'chars left':>15}  rejected (reason: papers)"]
        for row in self.funnel:
            reasons = self.rejections.get(row["stage"], {})
            chars = f"{row['chars']:,}" if row["stage"] not in (INPUTS_ROW, *INPUT_STAGES) else "-"
            lines.append(
                f"{row['stage']:<12} {row['papers']:>12,} {chars:>15}  "
                + ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
            )
        lines.append(
            f"{self.written:,} of {self.inputs:,} inputs written; language detection changed for "
            f"{self.language_flips:,} papers when math was masked; "
            f"{self.emails_removed:,} e-mail addresses removed"
        )
        if self.metadata_lines:
            lines.append(
                f"metadata: {sum(self.metadata_lines.values()):,} snapshot lines, "
                f"{self.metadata_lines.get('kept', 0):,} in scope; sources with metadata "
                f"{self.sources_with_metadata:,}, without {self.sources_without_metadata:,}"
            )
        if self.skipped_members:
            lines.append(
                "members skipped inside packages: "
                + ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped_members.items()))
            )
        return "\n".join(lines)


class FunnelTally:
    """Counts the funnel of one finalize: every input's result, then the corpus-wide stages' drops."""

    def __init__(self, stages: tuple[str, ...]) -> None:
        self.stages = stages
        self.report = YieldReport()
        self.rejections: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.left_after: dict[str, int] = collections.Counter()
        self.chars_after: dict[str, int] = collections.Counter()
        self.skipped: collections.Counter[str] = collections.Counter()

    def add_input(self, result: InputResult) -> None:
        report = self.report
        report.inputs += 1
        report.language_flips += result.language_flip
        report.emails_removed += result.emails_removed
        self.skipped.update(result.skipped_members)
        if result.has_metadata is not None:
            report.sources_with_metadata += result.has_metadata
            report.sources_without_metadata += not result.has_metadata
        if result.rejection:
            self.reject(result.rejection.stage, result.rejection.reason)
        for stage in result.passed(self.stages):
            self.left_after[stage] += 1
            self.chars_after[stage] += result.chars.get(stage, 0)  # the input stages leave no text yet

    def reject(self, stage: str, reason: str, papers: int = 1) -> None:
        self.rejections[stage][reason] += papers

    def survivors(self, stage: str, papers: int, chars: int) -> None:
        """What a corpus-wide stage leaves, counted by finalize itself."""
        self.left_after[stage], self.chars_after[stage] = papers, chars

    def finish(self) -> YieldReport:
        """The report with the funnel rows and rejections filled in (the caller sets what finalize wrote)."""
        report = self.report
        report.funnel = [{"stage": INPUTS_ROW, "papers": report.inputs, "chars": 0}] + [
            {"stage": stage, "papers": self.left_after[stage], "chars": self.chars_after[stage]}
            for stage in self.stages
        ]
        report.rejections = {stage: dict(counter) for stage, counter in self.rejections.items()}
        report.skipped_members = dict(self.skipped)
        return report


def plot_funnel(report: YieldReport, path: str) -> None:
    """`yield.png`: papers left after each stage, as horizontal bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [row["stage"] for row in report.funnel]
    papers = [row["papers"] for row in report.funnel]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(stages[::-1], papers[::-1], color="#4c72b0")
    for y, value in enumerate(papers[::-1]):
        ax.text(value, y, f" {value:,}", va="center")
    ax.set_xlabel("papers left after stage")
    ax.set_title(f"arXiv corpus yield: {report.written:,} of {report.inputs:,} inputs written")
    fig.tight_layout()
    with atomic_output(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)

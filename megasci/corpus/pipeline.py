"""What a corpus pipeline is: the `Paper` its steps share, a `Step`, and the funnel a list of steps makes.

The caller declares the per-paper part of the funnel as a list of steps (`BuildConfig.pipeline`,
`steps.DEFAULT_PIPELINE` by default), in the style of datatrove: each step gets the paper and either
hands it on (keep) or returns `Rejected(reason)` (drop, and why). The stages around it are fixed,
because the executor owns them: `INPUT_STAGES` are decided on an input's bytes and id before any
text exists, `CORPUS_STAGES` compare every paper of the run in finalize. A pipeline ends with the
step named `EXACT_DEDUP`, which makes the keys finalize compares (so the exact_dedup stage starts
in the workers and ends in finalize); `check_pipeline` holds that rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from megasci.corpus.assemble import AssembledPaper
from megasci.corpus.clean import CleanedPaper
from megasci.corpus.package import Rejected, SourcePackage

if TYPE_CHECKING:
    from megasci.corpus.config import BuildConfig

ARCHIVE, METADATA, EXACT_DEDUP, NEAR_DEDUP = "archive", "metadata", "exact_dedup", "near_dedup"
# Decided on the input's bytes and id, before any text exists: the reading process rejects broken bulk-tar
# members and looks up the metadata, a worker opens the object (its archive stage proper).
INPUT_STAGES = (ARCHIVE, METADATA)
CORPUS_STAGES = (EXACT_DEDUP, NEAR_DEDUP)  # decided in finalize, over every unit at once
INPUTS_ROW = "inputs"  # the funnel's first row: every input, before any stage


@dataclass
class Paper:
    """One paper on its way through the pipeline; each step fills in what it produces."""

    package: SourcePackage
    meta: dict | None  # title, abstract, categories and year from the metadata, when it has a record
    assembled: AssembledPaper | None = None
    cleaned: CleanedPaper | None = None
    title: str | None = None
    abstract: str | None = None
    text: str = ""
    sections: list[dict] = field(default_factory=list)
    math_fraction: float = 0.0
    language_flip: bool = False
    exact_key: str = ""
    minhash: list[int] = field(default_factory=list)

    @property
    def chars(self) -> int:
        """Characters it has now: the clean text once cleaned, the assembled LaTeX before, 0 before assembly."""
        if self.cleaned is not None:
            return len(self.text)
        return len(self.assembled.text) if self.assembled is not None else 0

    def excerpt(self, limit: int) -> str:
        """The start of the text it has now (clean text, else assembled LaTeX), for the rejected-paper log."""
        if self.cleaned is not None:
            return self.text[:limit]
        return self.assembled.text[:limit] if self.assembled is not None else ""

    def record(self) -> dict:
        """The corpus record, one line of a shard."""
        assert self.assembled is not None, "a paper that passed the pipeline was assembled"
        return {
            "id": self.package.paper_id,
            "title": self.title or "",
            "text": self.text,
            "sections": self.sections,
            "categories": self.meta["categories"] if self.meta else [],
            "year": self.meta["year"] if self.meta else None,
            "math_fraction": self.math_fraction,
            "source": self.package.source,
            "encoding": self.assembled.encoding,
        }


@dataclass(frozen=True)
class Step:
    """A declared step of the funnel. `run(paper, cfg)` returns the paper carried on, or `Rejected`
    with the reason it goes no further; `name` is the funnel stage where that rejection, the
    characters left and the step's time are counted. A step that changes `paper.text` keeps
    `paper.sections` partitioning it (they are written with the record)."""

    name: str
    run: Callable[[Paper, BuildConfig], Paper | Rejected]


@dataclass(frozen=True)
class Rejection:
    """Where and why an input left the funnel: a stage of the funnel and a stable reason key."""

    stage: str
    reason: str


def check_pipeline(pipeline: Sequence[Step]) -> None:
    """Refuse a pipeline the funnel cannot count: names must be unique, must not be a fixed stage, and
    the last step must be `EXACT_DEDUP`, whose keys (`paper.exact_key`, `paper.minhash`) finalize compares."""
    names = [step.name for step in pipeline]
    if not names or names[-1] != EXACT_DEDUP:
        raise ValueError(
            f"the pipeline {names} must end with the {EXACT_DEDUP!r} step (steps.dedup_keys or a "
            "step of that name filling paper.exact_key and paper.minhash): finalize compares its keys"
        )
    fixed = {INPUTS_ROW, *INPUT_STAGES, NEAR_DEDUP}
    clashes = sorted({name for name in names if name in fixed or names.count(name) > 1})
    if clashes:
        raise ValueError(
            f"the pipeline {names} repeats or reuses fixed stage names {clashes}: each step needs its own funnel row"
        )


def funnel_stages(pipeline: Sequence[Step]) -> tuple[str, ...]:
    """The funnel, in order, for a pipeline; a paper leaves at the first stage that rejects it."""
    return tuple(dict.fromkeys(INPUT_STAGES + tuple(step.name for step in pipeline) + CORPUS_STAGES))

"""The corpus build's settings: inputs, the declared pipeline, filter thresholds, parallelism, outputs."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from megasci.corpus.archive import ArchiveLimits
from megasci.corpus.filters import LanguageConfig
from megasci.corpus.metadata import MetadataFilterConfig
from megasci.corpus.pipeline import Step, check_pipeline, funnel_stages
from megasci.corpus.steps import DEFAULT_PIPELINE
from megasci.utils.io import jsonable

# Fields that say how the run is carried out or inspected, not what it keeps: the yield report's
# config leaves them out. The pipeline is code; the report's funnel rows name its steps.
NOT_REPORTED = ("pipeline", "rejected_dir")


@dataclass
class BuildConfig:
    sources: list[str]
    output: str
    metadata: list[str] = field(default_factory=list)
    metadata_filter: MetadataFilterConfig = field(default_factory=MetadataFilterConfig)
    keep_without_metadata: bool = True  # sources the metadata never mentions: title/abstract from LaTeX
    min_body_chars: int = 2000
    language: str = "en"
    language_seed: int = 0
    near_dup_threshold: float = 0.8
    keep_captions: bool = True
    paper_time_limit_s: float = 60.0
    workers: int = 1
    files_per_unit: int = 500
    num_shards: int = 1
    shard_index: int = 0
    records_per_shard: int = 10_000
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    pipeline: tuple[Step, ...] = DEFAULT_PIPELINE  # the per-paper steps, in funnel order (see pipeline.py)
    rejected_dir: str | None = None  # where finalize writes every rejected paper with stage and reason

    def __post_init__(self) -> None:
        self.pipeline = tuple(self.pipeline)
        check_pipeline(self.pipeline)

    @property
    def language_filter(self) -> LanguageConfig:
        """The language stage's settings (flat fields here, so yield.json keeps its config layout)."""
        return LanguageConfig(seed=self.language_seed, expected=self.language)

    @property
    def stages(self) -> tuple[str, ...]:
        """The funnel this config's pipeline makes."""
        return funnel_stages(self.pipeline)

    def reported(self) -> dict:
        """The settings the yield report records (every field but `NOT_REPORTED`), as plain JSON data."""
        return {f.name: jsonable(getattr(self, f.name)) for f in fields(self) if f.name not in NOT_REPORTED}

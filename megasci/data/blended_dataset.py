"""Blends of GPT datasets, optionally as a curriculum of stages with their own blends.

**Sources.** A source is a `.bin/.idx` prefix plus an optional `document_filter` on its sidecar, so
"prose sections of arxiv" and "all of arxiv" are two sources over one `.bin` with no copies. Each
distinct (prefix, filter) becomes one `GPTDataset` whose `num_samples` is exactly the number of
samples all stages together draw from it.

**Weights.** A blend is written Megatron-style as `weight path` pairs, or as dicts in a config.
A weight is one of two kinds, and one blend may not mix them (the two cannot be normalised together):

- *share* (`"0.7"`): the fraction of the stage's samples taken from the source; weights are
  normalised over the blend, so `0.7 / 0.3` and `7 / 3` mean the same. The source is repeated or
  cut to whatever that share needs, however large its split is.
- *epoch multiplier* (`"2.0x"`): the source should contribute `mult × samples_per_epoch` samples,
  where `samples_per_epoch = tokens in its split (after the filter) // seq_length`; so the share of
  source s is proportional to `mult_s × samples_per_epoch_s`. A stage without an explicit end
  then lasts the sum of those samples (rounded to nearest); with an end, the shares are kept and
  the realised epochs scale by `end / sum` (`describe()` shows them).

**Curriculum.** Stage k covers global samples `[end_{k-1}, end_k)`. Ends are cumulative and given
in samples or in tokens; a token boundary becomes `ceil(tokens / seq_length)` samples, because
each sample advances the stream by `seq_length` tokens (its extra label token overlaps the next).
The blending index (`helpers.build_curriculum_blending_indices`, Tijdeman's fair rule: every prefix
within 1 - 1/(2(S-1)) samples of each share) switches exactly at each
end, and a source reused in a later stage continues with its next sample instead of repeating.

**Sequence length per stage.** A stage may set its own `seq_length` (and `micro_batch_size`, which
the loader reads): its samples are that long, drawn from one `GPTDataset` per (source, length), so
each length has its own sample index (the cache key includes the length). A token end is counted
in the stage's own length: the stage's samples are `ceil((end_tokens - tokens before it) / its
length)`. A source used at two lengths is two datasets; the second is named `name@length`.

**Length filter.** A source's `min_doc_tokens` keeps only its documents of at least that many
tokens (`GPTDatasetConfig.min_document_tokens`): the long stage's way to upsample long papers,
e.g. one source "all of arxiv" and one "arxiv papers of 4096+ tokens" with their own weights.

Every index is a pure function of the stages, their lengths, `seed` and `split`, so building the
dataset again yields identical samples: resuming at sample i needs only i.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from megasci.data import helpers
from megasci.data.gpt_dataset import GPTDataset, GPTDatasetConfig, split_tokens

SHARE, EPOCHS = "share", "epochs"


@dataclasses.dataclass
class SourceSpec:
    """One weighted source of a blend; `weight_kind` says whether `weight` is a share or an epoch multiplier."""

    prefix: str
    weight: float = 1.0
    weight_kind: str = SHARE
    name: str | None = None  # default: the prefix's file name plus the filter
    document_filter: dict[str, set] | None = None
    min_doc_tokens: int = 0  # keep only documents at least this long (0: all)

    def __post_init__(self):
        if self.min_doc_tokens < 0:
            raise ValueError(f"{self.prefix}: min_doc_tokens must be >= 0, got {self.min_doc_tokens}")
        if self.weight_kind not in (SHARE, EPOCHS):
            raise ValueError(f"weight_kind must be {SHARE!r} or {EPOCHS!r}, got {self.weight_kind!r}")
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"{self.prefix}: weight must be finite and non-negative, got {self.weight}")
        if self.document_filter is not None:
            self.document_filter = {key: set(allowed) for key, allowed in self.document_filter.items()}
        if self.name is None:
            self.name = os.path.basename(os.fspath(self.prefix))
            if self.document_filter:
                self.name += (
                    "["
                    + ";".join(
                        f"{key}={','.join(sorted(map(str, allowed)))}"
                        for key, allowed in sorted(self.document_filter.items())
                    )
                    + "]"
                )
            if self.min_doc_tokens:
                self.name += f"[tokens>={self.min_doc_tokens}]"

    @property
    def weight_text(self) -> str:
        return f"{self.weight:g}x" if self.weight_kind == EPOCHS else f"{self.weight:g}"

    @property
    def key(self) -> tuple[str, str | None, int]:
        """What makes two specs the same dataset: the prefix and the filters."""
        canonical = (
            None
            if self.document_filter is None
            else json.dumps(
                {
                    key: sorted(json.dumps(v, sort_keys=True) for v in allowed)
                    for key, allowed in self.document_filter.items()
                },
                sort_keys=True,
            )
        )
        return os.path.abspath(os.fspath(self.prefix)), canonical, self.min_doc_tokens


def parse_weight(text) -> tuple[float, str]:
    """`"0.7"` or `0.7` → (0.7, "share"); `"2.0x"` → (2.0, "epochs")."""
    kind = SHARE
    if isinstance(text, str):
        text = text.strip()
        if text.lower().endswith("x"):
            text, kind = text[:-1], EPOCHS
    try:
        return float(text), kind
    except (TypeError, ValueError):
        raise ValueError(
            f"bad blend weight {text!r}: expected a share like 0.7 or an epoch multiplier like 2.0x"
        ) from None


def parse_blend(blend) -> list[SourceSpec]:
    """A blend from `"w1 p1 w2 p2"`, a flat `[w1, p1, w2, p2, ...]` list, or dicts with
    `prefix` (or `path`), `weight` and optional `name`, `filter` (or `document_filter`) and
    `min_doc_tokens`."""
    if isinstance(blend, str):
        blend = blend.split()
    blend = list(blend)
    if blend and all(isinstance(item, dict) for item in blend):
        specs = []
        for item in blend:
            weight, kind = parse_weight(item.get("weight", 1.0))
            specs.append(
                SourceSpec(
                    prefix=item.get("prefix", item.get("path")),
                    weight=weight,
                    weight_kind=kind,
                    name=item.get("name"),
                    document_filter=item.get("filter", item.get("document_filter")),
                    min_doc_tokens=int(item.get("min_doc_tokens", 0)),
                )
            )
    else:
        if len(blend) % 2:
            raise ValueError(f"a blend list is `weight path` pairs, but it has {len(blend)} items: {blend}")
        specs = [
            SourceSpec(prefix=str(path), weight=weight, weight_kind=kind)
            for weight, kind, path in ((*parse_weight(w), p) for w, p in zip(blend[::2], blend[1::2]))
        ]
    if not specs:
        raise ValueError("a blend needs at least one source")
    kinds = {spec.weight_kind for spec in specs}
    if len(kinds) > 1:
        given = ", ".join(f"{s.name}: {s.weight_text}" for s in specs)
        raise ValueError(
            f"a blend mixes shares and epoch multipliers ({given}); write all weights as shares "
            f"(like 0.7) or all as epoch multipliers (like 2.0x)"
        )
    return specs


@dataclasses.dataclass
class CurriculumStage:
    """Samples up to a cumulative end (in samples or tokens) drawn from `blend`.

    Without an end, the stage must use epoch multipliers and lasts the epochs they ask for.
    `seq_length` and `micro_batch_size` (None: the run's) change the sample length and the loader's
    micro-batch from this stage on; the global batch stays in samples.
    """

    name: str
    blend: list[SourceSpec]
    end_samples: int | None = None
    end_tokens: int | None = None
    seq_length: int | None = None
    micro_batch_size: int | None = None

    def __post_init__(self):
        if not self.blend or not all(isinstance(s, SourceSpec) for s in self.blend):
            self.blend = parse_blend(self.blend)
        if self.end_samples is not None and self.end_tokens is not None:
            raise ValueError(f"stage {self.name!r}: give end_samples or end_tokens, not both")
        for key in ("seq_length", "micro_batch_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"stage {self.name!r}: {key} must be >= 1, got {getattr(self, key)}")

    def end_in_samples(self, seq_length: int, start_samples: int = 0, start_tokens: int = 0) -> int | None:
        """The cumulative end in samples; a token end counts this stage's samples in its own length
        from where the previous stage ended (`start_samples` samples holding `start_tokens` tokens)."""
        if self.end_tokens is None:
            return self.end_samples
        return start_samples + max(0, -(-(int(self.end_tokens) - start_tokens) // seq_length))


def parse_curriculum(config: list[dict]) -> list[CurriculumStage]:
    """Stages from config dicts: `name`, `blend` (any `parse_blend` form), `end_samples` or `end_tokens`,
    and optionally `seq_length` and `micro_batch_size`; any other key is an error naming the stage."""
    known = {"name", "blend", "end_samples", "end_tokens", "seq_length", "micro_batch_size"}
    stages = []
    for k, item in enumerate(config):
        unknown = sorted(set(item) - known)
        if unknown:
            raise ValueError(
                f"curriculum stage {item.get('name', k + 1)!r}: unknown key(s) {', '.join(unknown)}; "
                f"a stage has {', '.join(sorted(known))}"
            )
        stages.append(
            CurriculumStage(
                name=item.get("name", f"stage{k + 1}"),
                blend=item["blend"],
                end_samples=item.get("end_samples"),
                end_tokens=item.get("end_tokens"),
                seq_length=item.get("seq_length"),
                micro_batch_size=item.get("micro_batch_size"),
            )
        )
    return stages


class BlendedDataset:
    """`ds[i]` is global sample i (int64, its stage's seq_length + 1 tokens), a pure function of i.

    `may_build` and `vocab_size` are passed to each source's `GPTDataset`: False only loads cached
    indices; a vocabulary size makes a token id outside it an error naming the source's dataset.
    """

    def __init__(
        self,
        stages: list[CurriculumStage],
        seq_length: int,
        seed: int = 1234,
        split: str = "train",
        cache_dir: str | None = None,
        split_fractions=(0.98, 0.01, 0.01),
        may_build: bool = True,
        vocab_size: int | None = None,
    ):
        if not stages:
            raise ValueError("a blended dataset needs at least one stage")
        self.stages, self.seq_length = list(stages), seq_length  # seq_length: the run's, for stages without one
        self.stage_seq_lengths = [stage.seq_length or seq_length for stage in self.stages]
        base = dict(split=split, split_fractions=split_fractions, seed=seed, cache_dir=cache_dir)
        # One dataset per distinct (prefix, filters, length), in order of first use.
        self.sources: list[SourceSpec] = []
        self.source_seq_lengths: list[int] = []
        self.base_names: list[str] = []  # each source's own name (without the @length of a second length)
        position = {}
        for stage, length in zip(self.stages, self.stage_seq_lengths):
            for spec in stage.blend:
                if (spec.key, length) in position:
                    continue
                if any(s.name == spec.name and s.key != spec.key for s in self.sources):
                    raise ValueError(f"two different sources are both named {spec.name!r}; name them apart")
                renamed = (
                    spec
                    if not any(s.key == spec.key for s in self.sources)
                    else dataclasses.replace(spec, name=f"{spec.name}@{length}")
                )
                position[(spec.key, length)] = len(self.sources)
                self.sources.append(renamed)
                self.source_seq_lengths.append(length)
                self.base_names.append(spec.name)
        configs = [
            GPTDatasetConfig(
                prefix=s.prefix,
                document_filter=s.document_filter,
                min_document_tokens=s.min_doc_tokens,
                seq_length=length,
                **base,
            )
            for s, length in zip(self.sources, self.source_seq_lengths)
        ]
        self.samples_per_epoch = np.array([split_tokens(c) // c.seq_length for c in configs], dtype=np.int64)

        weights = np.zeros((len(self.stages), len(self.sources)))
        ends, previous, previous_tokens = [], 0, 0
        for k, (stage, length) in enumerate(zip(self.stages, self.stage_seq_lengths)):
            for spec in stage.blend:
                j = position[(spec.key, length)]
                weights[k, j] += spec.weight * (self.samples_per_epoch[j] if spec.weight_kind == EPOCHS else 1)
            end = stage.end_in_samples(length, previous, previous_tokens)
            if end is None:
                if stage.blend[0].weight_kind != EPOCHS:
                    raise ValueError(f"stage {stage.name!r} uses shares, so it needs end_samples or end_tokens")
                end = previous + int(math.floor(weights[k].sum() + 0.5))
            if end <= previous:
                raise ValueError(f"stage {stage.name!r} ends at sample {end}, not after the previous end {previous}")
            if not weights[k].any():
                raise ValueError(f"stage {stage.name!r}: every source has zero weight (or an empty split)")
            ends.append(end)
            previous_tokens += (end - previous) * length
            previous = end
        self.stage_ends = np.array(ends, dtype=np.int64)
        self.source_index, self.source_sample_index, self.stage_index = helpers.build_curriculum_blending_indices(
            self.stage_ends, weights
        )
        self.samples_per_source = np.bincount(self.source_index, minlength=len(self.sources))
        self.datasets = [
            GPTDataset(dataclasses.replace(c, num_samples=int(n)), may_build=may_build, vocab_size=vocab_size)
            for c, n in zip(configs, self.samples_per_source)
        ]

    def __len__(self) -> int:
        return int(self.stage_ends[-1])

    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        return i

    def stage_of(self, i: int) -> int:
        return int(self.stage_index[self._check(i)])

    def seq_length_at(self, i: int) -> int:
        """The sequence length of global sample i (its stage's)."""
        return self.stage_seq_lengths[self.stage_of(i)]

    def micro_batch_size_at(self, i: int) -> int | None:
        """The micro-batch size global sample i's stage asks for (None: the run's)."""
        return self.stages[self.stage_of(i)].micro_batch_size

    def tokens_before(self, i: int) -> int:
        """Tokens the stream advanced by in global samples [0, i) (each sample by its own length)."""
        tokens, start = 0, 0
        for end, length in zip(self.stage_ends.tolist(), self.stage_seq_lengths):
            tokens += (min(i, end) - start) * length if i > start else 0
            start = end
        return tokens

    def source_of(self, i: int) -> tuple[str, int]:
        """(source name, sample number in that source's GPTDataset) of global sample i."""
        i = self._check(i)
        return self.sources[int(self.source_index[i])].name, int(self.source_sample_index[i])

    def __getitem__(self, i: int) -> np.ndarray:
        i = self._check(i)
        return self.datasets[int(self.source_index[i])][int(self.source_sample_index[i])]

    def sample(self, i: int):
        """Global sample i as a `gpt_dataset.Sample` (document pieces, loss mask)."""
        i = self._check(i)
        return self.datasets[int(self.source_index[i])].sample(int(self.source_sample_index[i]))

    @property
    def has_loss_mask(self) -> bool:
        """Whether any source is an SFT source, so some labels go unscored."""
        return any(d.has_loss_mask for d in self.datasets)

    def describe(self) -> str:
        """The realised blend, from the built indices: per stage and source, and totals per source."""

        def epochs(samples, j):
            return f"{samples / self.samples_per_epoch[j]:.3f}" if self.samples_per_epoch[j] else "-"

        rows = [("stage", "source", "weight", "share", "samples", "epochs")]
        start = 0
        for k, (stage, end) in enumerate(zip(self.stages, self.stage_ends)):
            counts = np.bincount(self.source_index[start:end], minlength=len(self.sources))
            given = {(spec.key, self.stage_seq_lengths[k]): spec.weight_text for spec in stage.blend}
            label = (
                stage.name if len(set(self.stage_seq_lengths)) == 1 else f"{stage.name} ({self.stage_seq_lengths[k]})"
            )
            for j, source in enumerate(self.sources):
                here = (source.key, self.source_seq_lengths[j])
                if here in given or counts[j]:
                    rows.append(
                        (
                            label,
                            source.name,
                            given.get(here, "-"),
                            f"{counts[j] / (end - start):.4f}",
                            str(counts[j]),
                            epochs(counts[j], j),
                        )
                    )
            start = end
        for j, source in enumerate(self.sources):
            rows.append(
                (
                    "total",
                    source.name,
                    "-",
                    f"{self.samples_per_source[j] / len(self):.4f}",
                    str(self.samples_per_source[j]),
                    epochs(self.samples_per_source[j], j),
                )
            )
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lengths = sorted(set(self.stage_seq_lengths))
        lines.append(
            f"{len(self)} samples of {'/'.join(map(str, lengths))} tokens = "
            f"{self.tokens_before(len(self))} tokens, "
            f"{len(self.stages)} stage(s), {len(self.sources)} source(s)"
        )
        return "\n".join(lines)

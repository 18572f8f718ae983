"""The training run's datasets, built once in a distributed job: rank 0 builds, the others load.

Sequence length per stage: a curriculum stage may set `seq_length` and `micro_batch_size`; the global
batch stays `train.global_batch_size` samples, so a step's tokens scale with its length. A step never
mixes lengths: a stage boundary where the length or micro-batch changes must fall on a multiple of
the global batch (`check_stage_boundaries`). Validation runs at `data.seq_length`.

The data layer does no distributed coordination, so it is done here: rank 0 constructs the
datasets (building any missing sample-index cache), every rank meets at a barrier, then the
other ranks construct them with `may_build=False`, loading what rank 0 wrote. The cache
directory must therefore be on a filesystem all ranks share.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

from megasci.data.blended_dataset import BlendedDataset, CurriculumStage, parse_blend, parse_curriculum
from megasci.data.gpt_dataset import GPTDataset, GPTDatasetConfig, select_documents, split_documents
from megasci.data.indexed_dataset import IndexedDataset
from megasci.data.provenance import tokenizer_warnings
from megasci.distributed import barrier, print_rank0

from .config import TrainConfig

T = TypeVar("T")


def built_on_rank0(make: Callable[[bool], T], rank: int, world_size: int) -> T:
    """`make(may_build)`: with True on rank 0, then after a barrier with False on the other ranks.

    If rank 0 fails, it still reaches the barrier before raising, so the other ranks fail on the
    missing cache instead of waiting forever."""
    if world_size == 1:
        return make(True)
    made, error = None, None
    if rank == 0:
        try:
            made = make(True)
        except Exception as e:
            error = e
    barrier()
    if error is not None:
        raise error
    return made if rank == 0 else make(False)


def stage_seq_lengths(cfg: TrainConfig) -> list[int]:
    """The sequence length of each curriculum stage (the run's `data.seq_length` where a stage has none)."""
    return [int(stage.get("seq_length") or cfg.data.seq_length) for stage in (cfg.data.curriculum or [{}])]


def check_stage_boundaries(dataset: BlendedDataset, global_batch_size: int) -> None:
    """A stage that changes the length or micro-batch must start on a global-batch boundary."""
    for k in range(1, len(dataset.stages)):
        before, after = dataset.stages[k - 1], dataset.stages[k]
        changes = (
            dataset.stage_seq_lengths[k - 1] != dataset.stage_seq_lengths[k]
            or before.micro_batch_size != after.micro_batch_size
        )
        start = int(dataset.stage_ends[k - 1])
        if changes and start % global_batch_size:
            raise ValueError(
                f"curriculum stage {after.name!r} changes seq_length or micro_batch_size but starts at "
                f"sample {start:,}, not a multiple of global_batch_size {global_batch_size}: one step "
                f"cannot mix lengths; end stage {before.name!r} at "
                f"{-(-start // global_batch_size) * global_batch_size:,} samples"
            )


def build_train_dataset(cfg: TrainConfig, cache_dir: str, may_build: bool = True) -> BlendedDataset:
    """The training stream: the curriculum's stages, or one stage of the blend covering every step."""
    needed = cfg.train.train_steps * cfg.train.global_batch_size
    if cfg.data.curriculum:
        stages = parse_curriculum(cfg.data.curriculum)
        last = stages[-1]
        if last.end_samples is None and last.end_tokens is None:  # the last stage runs to the end of training,
            stages[-1] = dataclasses.replace(last, end_samples=needed)  # epoch multipliers then give its shares
    elif cfg.data.blend:
        stages = [CurriculumStage("main", parse_blend(cfg.data.blend), end_samples=needed)]
    else:
        raise ValueError("the config needs data.blend or data.curriculum")
    dataset = BlendedDataset(
        stages,
        cfg.data.seq_length,
        seed=cfg.data.seed,
        split="train",
        cache_dir=cache_dir,
        split_fractions=cfg.data.split,
        may_build=may_build,
        vocab_size=cfg.model.build().vocab_size,
    )  # token ids checked before the embedding
    check_stage_boundaries(dataset, cfg.train.global_batch_size)
    if len(dataset) < needed:
        raise ValueError(
            f"the curriculum covers {len(dataset):,} samples but {cfg.train.train_steps:,} steps of "
            f"{cfg.train.global_batch_size} need {needed:,}; extend the last stage"
        )
    return dataset


def build_eval_datasets(
    cfg: TrainConfig, train: BlendedDataset, cache_dir: str, may_build: bool = True
) -> dict[str, GPTDataset]:
    """Each source's first `eval_samples` validation samples (fewer if its validation split is small)."""
    datasets, seen = {}, set()
    for source, name in zip(train.sources, train.base_names):
        if source.key in seen:  # a source used at a second length is validated once, at data.seq_length
            continue
        seen.add(source.key)
        config = GPTDatasetConfig(
            prefix=source.prefix,
            document_filter=source.document_filter,
            min_document_tokens=source.min_doc_tokens,
            split="valid",
            split_fractions=cfg.data.split,
            seq_length=cfg.data.seq_length,
            seed=cfg.data.seed,
            cache_dir=cache_dir,
        )
        dataset = IndexedDataset(source.prefix)
        documents = select_documents(config, dataset)
        tokens = int(dataset.document_lengths()[documents].sum())
        if tokens == 0:
            if config.split_fractions[1] == 0:  # data.split asks for no validation
                print_rank0(f"validation: data.split has no valid share; source {name} not evaluated")
                continue
            raise ValueError(empty_validation_split(config, dataset, len(documents)))
        available = (tokens - 1) // cfg.data.seq_length  # one pass, label included
        if available == 0:
            print_rank0(
                f"validation: source {name} has no full sample in its validation split ({len(documents):,} "
                f"documents, {tokens:,} tokens for samples of {cfg.data.seq_length + 1}); not evaluated"
            )
            continue
        datasets[name] = GPTDataset(
            dataclasses.replace(config, num_samples=min(cfg.data.eval_samples, available)),
            may_build=may_build,
            vocab_size=cfg.model.build().vocab_size,
        )
    return datasets


def empty_validation_split(config: GPTDatasetConfig, dataset: IndexedDataset, kept: int) -> str:
    """Why `config`'s validation split holds no tokens and what to change: the error of a run that asks for
    validation (a valid share in data.split) of a source too small for it. Caught here, the run would
    otherwise fail building a dataset of -1 samples, a message that does not say the split is empty."""
    fractions = config.split_fractions
    total = sum(fractions)
    n = dataset.num_documents
    documents = split_documents(n, fractions, config.effective_split_seed)["valid"]
    in_split, tokens = len(documents), int(dataset.document_lengths()[documents].sum())
    where = (
        f"{config.prefix}: the valid split is empty: data.split={list(fractions)} gives it {in_split:,} documents "
        f"({tokens:,} tokens) of the dataset's {n:,} ({dataset.num_tokens:,} tokens)"
    )
    if in_split > 0:  # the split has documents, but the source's filter keeps none with tokens
        return (
            f"{where}, and the source's filter keeps {kept:,} of them, with 0 tokens. Raise data.split's valid "
            "share, loosen the filter, or set the valid share to 0 to train without validation"
        )
    # A share above one document's rounds to at least one document; the example gives two documents' worth.
    valid = float(f"{2 / max(n, 1):.2g}")
    test = fractions[2] / total
    example = f", e.g. data.split=[{1 - valid - test:.4g}, {valid:.4g}, {test:.4g}]" if valid + test < 0.5 else ""
    return (
        f"{where}: a valid share of {fractions[1] / total:.3g} of {n:,} documents rounds to none. Raise "
        f"data.split's valid share above 1/{n:,} = {1 / max(n, 1):.3g}{example}, add documents, or set the "
        "valid share to 0 to train without validation"
    )


def check_tokenizer(train: BlendedDataset, tokenizer_path: str, identity: dict) -> None:
    """Refuses data written with another tokenizer: a model trained on its ids loads, runs and means nothing."""
    mismatched = [w for source in train.sources for w in tokenizer_warnings(source.prefix, identity)]
    if mismatched:
        raise ValueError(
            f"data.tokenizer {tokenizer_path} is not the tokenizer the data was written with:\n" + "\n".join(mismatched)
        )

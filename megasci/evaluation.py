"""Perplexity of a checkpoint on held-out data, per source (data prefix) and per sidecar label.

**Which documents.** `split="valid"` (the default) evaluates the documents the checkpoint never
trained on. Training splits every source the same way (`gpt_dataset.split_documents`): a
permutation of *all* the dataset's document ids, seeded by the run's `data.seed`, cut at its
`data.split` fractions, before any curriculum filter. So the held-out documents are a pure
function of the document count, the fractions and the seed, all recorded in the checkpoint's
`train_config`; recomputing them here gives exactly the documents training left out, provided
the dataset has not changed since (another document count moves every boundary). `"test"` and
`"train"` use the same split; `"all"` takes every document, for a separate held-out dataset that
training never saw.

**Groups.** Each prefix is one group; `by=KEY` adds one group per distinct value of that key in
the prefix's sidecar (`<prefix>.docs.jsonl`), selected with a document filter over the same
`.bin`, so nothing is copied. Documents without the key form a group of their own.

**Samples.** As in training (Megatron style), a group's documents are concatenated in a shuffled
order into one token stream that is cut into samples of `seq_length + 1` tokens, so a sample
crosses document boundaries but never leaves its group. A group's loss is the mean over the
`seq_length` predicted tokens of every full sample of one pass over its documents (or of the
first `max_samples`); the stream's first token and its tail shorter than a sample are not
predicted. Because a label group packs only its own documents, the label losses do not average
exactly to the source's loss: each is measured in its own context.

**By position** (`by_position=W`, issue 20; 0: W = seq_length / 8). The source groups' samples are also scored token by
token, and the loss is averaged per bucket of W positions within the sample (the model's context
index, 0-based), with its standard error over samples: whether positions past the length a model
was trained at are used or merely tolerated. `by_position_scalars` names them for TensorBoard.

**Passkey** (`evaluate_passkey`): `megasci.downstream.passkey`'s retrieval grid on a checkpoint,
its filler the held-out documents of a prefix (the split the checkpoint never trained on).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from megasci.data.blended_dataset import parse_blend, parse_curriculum
from megasci.data.gpt_dataset import GPTDataset, GPTDatasetConfig, select_documents
from megasci.data.indexed_dataset import IndexedDataset, data_file_path
from megasci.data.provenance import tokenizer_warnings
from megasci.data.sidecar import read_sidecar, sidecar_path
from megasci.downstream import passkey
from megasci.tokenizer import load_tokenizer
from megasci.training.checkpoint import checkpoint_tokenizer_path, load_model, resolve_checkpoint
from megasci.training.config import DataSection
from megasci.training.validator import evaluate, perplexity

EVAL_SPLITS = ("valid", "test", "train", "all")
MISSING_LABEL = "(none)"


@dataclasses.dataclass
class EvalGroup:
    """One row of the report: a prefix, optionally narrowed to one sidecar label."""

    name: str
    prefix: str
    config: GPTDatasetConfig  # num_samples 0 until planned
    documents: np.ndarray  # sorted document ids of the group
    tokens: int  # tokens in those documents
    label_key: str | None = None
    label: object = None
    loss: float | None = None

    @property
    def samples(self) -> int:
        return self.config.num_samples

    @property
    def tokens_evaluated(self) -> int:
        return self.samples * self.config.seq_length

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "prefix": self.prefix,
            "label_key": self.label_key,
            "label": self.label,
            "documents": len(self.documents),
            "tokens": self.tokens,
            "samples": self.samples,
            "tokens_evaluated": self.tokens_evaluated,
            "loss": self.loss,
            "perplexity": perplexity(self.loss),
        }


def held_out_settings(meta: dict, checkpoint: str) -> tuple[tuple[float, float, float], int, int]:
    """(split fractions, split seed, seq_length) the checkpoint was trained with."""
    data = (meta.get("train_config") or {}).get("data")
    if not data:
        raise ValueError(
            f"{checkpoint}: meta.json records no training config, so which documents were held out "
            f"is unknown; use --split all for a dataset the model never trained on"
        )
    defaults = DataSection()
    return (
        tuple(float(f) for f in data.get("split", defaults.split)),
        int(data.get("seed", defaults.seed)),
        int(data.get("seq_length", defaults.seq_length)),
    )


def training_prefixes(train_config: dict) -> set[str] | None:
    """Absolute prefixes of the run's blend or curriculum; None when they cannot be read."""
    data = (train_config or {}).get("data") or {}
    try:
        if data.get("curriculum"):
            specs = [s for stage in parse_curriculum(data["curriculum"]) for s in stage.blend]
        elif data.get("blend"):
            specs = parse_blend(data["blend"])
        else:
            return None
    except (ValueError, TypeError, KeyError):
        return None
    return {os.path.abspath(s.prefix) for s in specs}


def dataset_config(
    prefix: str,
    split: str,
    fractions,
    seed: int,
    seq_length: int,
    cache_dir: str | None,
    document_filter: dict | None = None,
) -> GPTDatasetConfig:
    """The `GPTDatasetConfig` of a group; "all" is the train part of a 100/0/0 split."""
    if split == "all":
        split, fractions = "train", (1.0, 0.0, 0.0)
    return GPTDatasetConfig(
        prefix=prefix,
        split=split,
        split_fractions=fractions,
        seq_length=seq_length,
        seed=seed,
        cache_dir=cache_dir,
        document_filter=document_filter,
    )


def _labels(prefix: str, documents: np.ndarray, key: str) -> list:
    """Distinct values of `key` over the documents, in order of first appearance in the whole
    sidecar, so sections come in paper order (title, abstract, ...) whichever documents are held out."""
    if not os.path.isfile(sidecar_path(prefix)):
        raise FileNotFoundError(f"{sidecar_path(prefix)}: no sidecar, so {prefix} cannot be grouped by {key!r}")
    records = read_sidecar(prefix)
    present = np.zeros(len(records), dtype=bool)
    present[documents] = True
    labels = {}
    for d, record in enumerate(records):
        value = record.get(key)
        try:
            labels.setdefault(value, False)
        except TypeError:
            raise ValueError(
                f"{sidecar_path(prefix)}: line {d + 1} has {key}={value!r}, which cannot name a group"
            ) from None
        labels[value] |= bool(present[d])
    return [value for value, held in labels.items() if held]


def _source_names(prefixes: list[str]) -> list[str]:
    """File names, unless two prefixes share one: then the prefixes as given."""
    names = [os.path.basename(p) for p in prefixes]
    return names if len(set(names)) == len(names) else list(prefixes)


def plan_groups(
    prefixes: list[str],
    split: str,
    fractions,
    seed: int,
    seq_length: int,
    by: str | None = None,
    max_samples: int | None = None,
    cache_dir: str | None = None,
    warn=print,
) -> list[EvalGroup]:
    """Every group with its documents and sample count (all full samples, at most `max_samples`).

    A prefix whose split cannot fill one sample is an error; a label group that cannot is kept
    in the report without a loss.
    """
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    if len(set(map(os.path.abspath, prefixes))) != len(prefixes):
        raise ValueError(f"a prefix is given twice: {prefixes}")
    groups = []
    for prefix, name in zip(prefixes, _source_names(prefixes)):
        config = dataset_config(prefix, split, fractions, seed, seq_length, cache_dir)
        source = _planned(EvalGroup(name, prefix, config, *_documents_and_tokens(config)), max_samples)
        if source.samples == 0:
            raise ValueError(
                f"{data_file_path(prefix)}: the {split} split (fractions {list(fractions)}, seed {seed}) "
                f"has {len(source.documents)} documents and {source.tokens} tokens, fewer than the "
                f"{seq_length + 1} one sample needs"
            )
        groups.append(source)
        if by is None:
            continue
        for label in _labels(prefix, source.documents, by):
            sub = dataset_config(prefix, split, fractions, seed, seq_length, cache_dir, {by: {label}})
            shown = MISSING_LABEL if label is None else label
            group = _planned(
                EvalGroup(f"{name}[{by}={shown}]", prefix, sub, *_documents_and_tokens(sub), label_key=by, label=label),
                max_samples,
            )
            if group.samples == 0:
                warn(
                    f"warning: {group.name}: {len(group.documents)} documents, {group.tokens} tokens: "
                    f"not one sample of {seq_length + 1} tokens; not evaluated"
                )
            groups.append(group)
    return groups


def _documents_and_tokens(config: GPTDatasetConfig) -> tuple[np.ndarray, int]:
    documents = select_documents(config)
    return documents, int(IndexedDataset(config.prefix).document_lengths()[documents].sum())


def _planned(group: EvalGroup, max_samples: int | None) -> EvalGroup:
    """Full samples of one pass: n samples read n * seq_length + 1 tokens, so none repeats a document."""
    available = max(group.tokens - 1, 0) // group.config.seq_length
    n = available if max_samples is None else min(available, max_samples)
    group.config = dataclasses.replace(group.config, num_samples=n)
    return group


class _CheckedSamples:
    """A group's samples, failing with the file's name on a token id the model has no embedding for
    (a dataset made with another tokenizer) instead of an index error inside the model."""

    def __init__(self, dataset: GPTDataset, vocab_size: int):
        self.dataset, self.vocab_size = dataset, vocab_size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> np.ndarray:
        sample = self.dataset[i]
        if len(sample) and (sample.max() >= self.vocab_size or sample.min() < 0):
            bad = int(sample.max() if sample.max() >= self.vocab_size else sample.min())
            raise ValueError(
                f"{data_file_path(self.dataset.config.prefix)}: token id {bad} is outside the model's "
                f"vocabulary of {self.vocab_size}; the dataset was tokenized with another tokenizer"
            )
        return sample


def evaluate_groups(model, groups: list[EvalGroup], batch_size: int, device) -> float:
    """Fills each group's loss; returns the token-weighted loss over the source groups only
    (label groups re-cover the same documents, so counting them too would count tokens twice)."""
    vocab_size = model.cfg.vocab_size
    sources = [g for g in groups if g.label_key is None]
    labelled = [g for g in groups if g.label_key is not None and g.samples]
    overall = None
    for part in (sources, labelled):
        if not part:
            continue
        datasets = {g.name: _CheckedSamples(GPTDataset(g.config), vocab_size) for g in part}
        losses = evaluate(model, datasets, batch_size, device)
        for g in part:
            g.loss = losses[g.name]
        if part is sources:
            overall = losses["all"]
    return overall


def loss_by_position(model, datasets: list, bucket: int, batch_size: int, device) -> list[dict]:
    """Mean loss per bucket of `bucket` positions over every sample of `datasets` (each a map-style
    dataset of seq_length + 1 tokens), with the standard error over samples and the sample count."""
    per_sample = []
    with torch.no_grad():
        for dataset in datasets:
            for start in range(0, len(dataset), batch_size):
                rows = torch.from_numpy(
                    np.stack(
                        [
                            np.asarray(dataset[i], dtype=np.int64)
                            for i in range(start, min(start + batch_size, len(dataset)))
                        ]
                    )
                )
                rows = rows.to(device)
                logits = model(rows[:, :-1]).float()
                losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), rows[:, 1:], reduction="none")
                per_sample.append(losses.double().cpu())
    if not per_sample:
        return []
    losses = torch.cat(per_sample)  # [N, S]
    n, length = losses.shape
    buckets = []
    for first in range(0, length, bucket):
        means = losses[:, first : first + bucket].mean(dim=1)
        err = float(means.std(unbiased=True) / n**0.5) if n > 1 else float("nan")
        buckets.append(
            {
                "start": first,
                "end": min(first + bucket, length),
                "samples": n,
                "loss": float(means.mean()),
                "stderr": err,
            }
        )
    return buckets


def by_position_scalars(buckets: list[dict]) -> dict[str, float]:
    """TensorBoard tags of a by-position report: `eval/loss_by_position/<start>-<end>`."""
    return {f"eval/loss_by_position/{b['start']:05d}-{b['end']:05d}": b["loss"] for b in buckets}


def plot_by_position(buckets: list[dict], path: str, title: str, trained_length: int | None = None) -> None:
    """Mean loss per position bucket with its standard error as a PNG; a line marks the trained length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = [(b["start"] + b["end"]) / 2 for b in buckets]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.errorbar(centres, [b["loss"] for b in buckets], yerr=[b["stderr"] for b in buckets], marker="o", capsize=2)
    if trained_length:
        ax.axvline(trained_length, color="grey", linestyle="--", label=f"trained length {trained_length}")
        ax.legend()
    ax.set_xlabel("position in the sample")
    ax.set_ylabel("mean loss (nats)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate_perplexity(
    checkpoint: str,
    prefixes: list[str],
    split: str = "valid",
    by: str | None = None,
    seq_length: int | None = None,
    max_samples: int | None = None,
    batch_size: int = 8,
    device="cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | None = None,
    warn=print,
    by_position: int | None = None,
) -> dict:
    """The report: every group's documents, tokens evaluated, loss and perplexity, and the overall
    token-weighted loss over the prefixes (see the module docstring for what is evaluated)."""
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    path = resolve_checkpoint(checkpoint)
    for prefix in prefixes:
        IndexedDataset(prefix)  # a missing or broken .bin/.idx fails here, naming the file, before the model loads
    model, meta = load_model(path, device=device, dtype=dtype)
    model.eval()
    if split == "all":
        data = (meta.get("train_config") or {}).get("data") or {}
        fractions, seed = (1.0, 0.0, 0.0), int(data.get("seed", DataSection().seed))
        trained_length = data.get("seq_length")
    else:
        fractions, seed, trained_length = held_out_settings(meta, path)
        trained = training_prefixes(meta.get("train_config"))
        for prefix in prefixes:
            if trained is not None and os.path.abspath(prefix) not in trained:
                warn(
                    f"warning: {prefix} is not a source of this checkpoint's training data; its {split} split is "
                    f"only a slice of it (--split all evaluates every document)"
                )
    seq_length = seq_length or trained_length
    if not seq_length:
        raise ValueError(f"{path}: no data.seq_length recorded; pass seq_length")
    if seq_length > model.cfg.max_seq_len:
        raise ValueError(f"seq_length {seq_length} exceeds the model's max_seq_len {model.cfg.max_seq_len}")
    warnings = [
        f"warning: {w}; the perplexity may be meaningless"
        for prefix in prefixes
        for w in tokenizer_warnings(prefix, meta.get("tokenizer"))
    ]
    for w in warnings:
        warn(w)
    groups = plan_groups(prefixes, split, fractions, seed, seq_length, by, max_samples, cache_dir, warn)
    overall = evaluate_groups(model, groups, batch_size, torch.device(device))
    sources = [g for g in groups if g.label_key is None]
    positions = None
    if by_position is not None:  # 0: an eighth of the sequence
        if by_position < 0:
            raise ValueError(f"by_position must be a bucket width of at least 1 token, got {by_position}")
        width = by_position or max(1, seq_length // 8)
        positions = loss_by_position(
            model, [GPTDataset(g.config) for g in sources if g.samples], width, batch_size, torch.device(device)
        )
    return {
        "checkpoint": path,
        "step": meta.get("step"),
        "split": split,
        "split_fractions": list(fractions),
        "split_seed": seed,
        "seq_length": seq_length,
        "by": by,
        "max_samples": max_samples,
        "groups": [g.to_dict() for g in groups],
        "overall": {
            "documents": sum(len(g.documents) for g in sources),
            "tokens_evaluated": sum(g.tokens_evaluated for g in sources),
            "loss": overall,
            "perplexity": perplexity(overall),
        },
        "warnings": warnings,
        "trained_seq_length": trained_length,
        "by_position": positions,
    }


def passkey_filler(prefix: str, meta: dict, checkpoint: str, tokens: int, split: str = "valid") -> np.ndarray:
    """`tokens` tokens of `prefix`'s held-out documents (the checkpoint's split), concatenated in
    document order and repeated if the split is shorter: the passkey documents' filler text."""
    if split == "all":
        fractions, seed, split = (1.0, 0.0, 0.0), 0, "train"
    else:
        fractions, seed, _ = held_out_settings(meta, checkpoint)
    config = GPTDatasetConfig(prefix=prefix, split=split, split_fractions=fractions, seed=seed)
    dataset = IndexedDataset(prefix)
    documents = select_documents(config, dataset)
    if not len(documents):
        raise ValueError(f"{prefix}: its {split} split holds no documents to take filler text from")
    parts, have = [], 0
    while have < tokens:
        for d in documents.tolist():
            part = np.asarray(dataset.get_document(d), dtype=np.int64)
            parts.append(part)
            have += len(part)
            if have >= tokens:
                break
    return np.concatenate(parts)[:tokens]


def evaluate_passkey(
    checkpoint: str,
    prefix: str,
    config: passkey.PasskeyConfig,
    device="cpu",
    dtype: torch.dtype | None = None,
    split: str = "valid",
) -> dict:
    """The passkey grid on a checkpoint: per-example results and the depth x length summary.

    Lengths above the model's max_seq_len are refused (the caller picks them, e.g. up to the maximum)."""
    path = resolve_checkpoint(checkpoint)
    model, meta = load_model(path, device=device, dtype=dtype)
    model.eval()
    config = passkey.resolve_lengths(config, model.cfg.max_seq_len)
    too_long = [n for n in config.lengths if n > model.cfg.max_seq_len]
    if too_long:
        raise ValueError(f"passkey lengths {too_long} exceed the model's max_seq_len {model.cfg.max_seq_len}")
    tokenizer = load_tokenizer(run_tokenizer_path(path, meta))
    filler = passkey_filler(prefix, meta, path, max(config.lengths) * 4, split)
    examples = passkey.make_examples(tokenizer.encode, filler, config)
    results = passkey.score_examples(model, examples, torch.device(device))
    return {
        "checkpoint": path,
        "step": meta.get("step"),
        "config": dataclasses.asdict(config),
        "max_seq_len": model.cfg.max_seq_len,
        "summary": passkey.summarize(results),
        "examples": results,
    }


def run_tokenizer_path(path: str, meta: dict) -> str:
    """The tokenizer copied into the checkpoint (verified), else the run's data.tokenizer."""
    found = checkpoint_tokenizer_path(path) or ((meta.get("train_config") or {}).get("data") or {}).get("tokenizer")
    if not found:
        raise ValueError(f"{path}: no tokenizer in the checkpoint and none recorded in its config")
    return found


def format_report(report: dict) -> str:
    """A table: group, documents, tokens evaluated, loss, perplexity; then the overall line."""

    def cells(name, row):
        missing = row["loss"] is None
        return (
            name,
            f"{row['documents']:,}",
            f"{row['tokens_evaluated']:,}",
            "-" if missing else f"{row['loss']:.4f}",
            "-" if missing else f"{row['perplexity']:.3f}",
        )

    rows = [("group", "documents", "tokens evaluated", "loss", "perplexity")]
    rows += [cells(("  " if g["label_key"] else "") + g["name"], g) for g in report["groups"]]
    rows.append(cells("overall", report["overall"]))
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    lines = [
        "  ".join([row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]) for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    lines.append(
        f"{report['split']} split (fractions {report['split_fractions']}, seed {report['split_seed']}) of "
        f"{report['checkpoint']} (step {report['step']}); samples of {report['seq_length']} + 1 tokens packed "
        f"across the documents of each group; overall = token-weighted over the prefixes"
    )
    return "\n".join(lines)

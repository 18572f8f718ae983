"""Passkey retrieval: can the model find a key hidden at a chosen depth of a long document?

The test of Mohtashami & Jaggi (2023, "Landmark Attention", as used by Position Interpolation, YaRN
and LongLoRA): filler text with one sentence stating a random number, and a question at the end
asking for it. Here the filler is real text (token ids from the corpus, a seeded random slice per
example), so the model cannot spot the needle as the one odd sentence in repeated boilerplate.
`keys > 1` is the multi-key variant in the spirit of RULER's needle tasks (Hsieh et al. 2024,
MK-NIAH): several named keys are hidden at seeded random depths, the queried one at the cell's
depth, and the others are distractors the model must not return.

An example has a target `length` (context + answer tokens, at most the model's window) and a
`depth` in [0, 1]: where in the filler the queried needle starts. Everything is a pure function of
the seed, the filler and the tokenizer, so two runs score the same documents.

Scoring, from one forward pass per example (the model maps ids [B, S] to logits [B, S, V]):

- **greedy**: greedy decoding from the context produces exactly the key's tokens. This equals the
  teacher-forced check "the argmax at every answer position is the answer token" (each decoded token
  is the argmax given the previous answer tokens, so the two agree token by token);
- **log-likelihood**: the key's summed log-probability, and with `distractors > 0` whether the true
  key scores strictly higher than every one of that many other random keys of the same format
  (chance: 1 / (distractors + 1)); strictly, so a model that is indifferent scores 0.

Accuracies come with their binomial standard error sqrt(p (1 - p) / n).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

NAMES = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")
INTRO = "There is a pass key hidden in this text. Find it and remember it."


@dataclasses.dataclass(frozen=True)
class PasskeyConfig:
    """What to generate: a grid of lengths x depths, `per_cell` examples each. Empty `lengths` means
    powers of two from `min_length` up to the model's maximum (`resolve_lengths`)."""

    lengths: tuple[int, ...] = ()
    min_length: int = 1024
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    per_cell: int = 20
    seed: int = 1234
    digits: int = 5  # the key is a random number of this many digits (no leading zero)
    keys: int = 1  # > 1: multi-key, named keys, one queried
    distractors: int = 4  # other keys the log-likelihood choice compares against (0: none)
    compact: bool = False  # no introduction, one-clause needle and question: for models with short windows

    def __post_init__(self):
        if (self.lengths and min(self.lengths) < 1) or self.min_length < 1 or not self.depths or self.per_cell < 1:
            raise ValueError("passkey: need lengths >= 1, at least one depth and per_cell >= 1")
        if any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"passkey: depths must lie in [0, 1], got {self.depths}")
        if not 1 <= self.keys <= len(NAMES) or not 1 <= self.digits <= 18 or self.distractors < 0:
            raise ValueError(f"passkey: keys in 1..{len(NAMES)}, digits in 1..18, distractors >= 0")


def resolve_lengths(config: PasskeyConfig, max_seq_len: int) -> PasskeyConfig:
    """`config` with its lengths: as given, or powers of two from min_length plus the maximum itself."""
    if config.lengths:
        return config
    lengths, n = [], config.min_length
    while n < max_seq_len:
        lengths.append(n)
        n *= 2
    return dataclasses.replace(config, lengths=tuple(lengths + [max_seq_len]))


@dataclasses.dataclass(frozen=True)
class PasskeyExample:
    length: int
    depth: float
    context: tuple[int, ...]
    answer: tuple[int, ...]
    key: str
    wrong: tuple[tuple[int, ...], ...] = ()  # distractor answers for the log-likelihood choice


def _needle(name: str | None, key: str, compact: bool = False) -> str:
    if compact:
        return f" The pass key is {key}. " if name is None else f" The pass key for {name} is {key}. "
    if name is None:
        return f" The pass key is {key}. Remember it. {key} is the pass key. "
    return f" The pass key for {name} is {key}. Remember it. {key} is the pass key for {name}. "


def _question(name: str | None, compact: bool = False) -> str:
    if compact:
        return " The pass key is" if name is None else f" The pass key for {name} is"
    return (
        " What is the pass key? The pass key is"
        if name is None
        else f" What is the pass key for {name}? The pass key for {name} is"
    )


def _random_key(rng: np.random.Generator, digits: int) -> str:
    return str(int(rng.integers(10 ** (digits - 1), 10**digits)))


def make_examples(
    encode: Callable[[str], list[int]], filler: np.ndarray, config: PasskeyConfig
) -> list[PasskeyExample]:
    """The grid's examples, lengths outer, depths inner, `per_cell` each; `filler` is a token stream
    (e.g. held-out documents, concatenated) at least as long as the longest example."""
    if not config.lengths:
        raise ValueError("passkey: no lengths; resolve_lengths(config, max_seq_len) first")
    filler = np.asarray(filler, dtype=np.int64)
    rng = np.random.default_rng([config.seed, 20])
    intro = [] if config.compact else encode(INTRO)
    examples = []
    for length in config.lengths:
        for depth in config.depths:
            for _ in range(config.per_cell):
                keys = [_random_key(rng, config.digits) for _ in range(config.keys)]
                names = list(rng.choice(len(NAMES), size=config.keys, replace=False)) if config.keys > 1 else [None]
                names = [None if n is None else NAMES[int(n)] for n in names]
                needles = [encode(_needle(name, key, config.compact)) for name, key in zip(names, keys)]
                question = encode(_question(names[0], config.compact))
                answer = encode(" " + keys[0])
                wrong = []
                while len(wrong) < config.distractors:
                    other = _random_key(rng, config.digits)
                    if other != keys[0] and encode(" " + other) != answer:
                        wrong.append(tuple(encode(" " + other)))
                n_filler = length - len(intro) - sum(map(len, needles)) - len(question) - len(answer)
                if n_filler < 0:
                    raise ValueError(
                        f"passkey: length {length} is too short for the prompt "
                        f"({length - n_filler} tokens without filler)"
                    )
                if n_filler > len(filler):
                    raise ValueError(f"passkey: the filler has {len(filler)} tokens, length {length} needs {n_filler}")
                start = int(rng.integers(0, len(filler) - n_filler + 1))
                text = filler[start : start + n_filler].tolist()
                # The queried needle at the cell's depth; the others at random depths, inserted from the back
                # so earlier insertion points stay where they were drawn.
                at = [round(depth * n_filler)] + [int(rng.integers(0, n_filler + 1)) for _ in needles[1:]]
                for point, needle in sorted(zip(at, needles), key=lambda pair: -pair[0]):
                    text[point:point] = needle
                examples.append(
                    PasskeyExample(
                        length=length,
                        depth=float(depth),
                        context=tuple(intro + text + question),
                        answer=tuple(answer),
                        key=keys[0],
                        wrong=tuple(wrong),
                    )
                )
    return examples


def _answer_logprobs_cached(model, cache, context: Sequence[int], answers: Sequence[Sequence[int]], device) -> list:
    """Per answer, log-probabilities [len(answer), V] of its positions, the shared context run once: a
    prefill into `cache`, copied for every answer, then the answers' tokens as one batch. Rows of
    different lengths are padded at the end, which the causal mask keeps from the tokens before it."""
    width = max(map(len, answers))
    with torch.no_grad():
        first = model.decode(torch.tensor([list(context)], device=device), cache, last_only=True).float()
        cache.repeat(len(answers))
        tokens = torch.zeros(len(answers), width - 1, dtype=torch.long, device=device)
        for r, answer in enumerate(answers):
            tokens[r, : len(answer) - 1] = torch.tensor(list(answer[:-1]))
        rest = model.decode(tokens, cache).float() if width > 1 else first.new_zeros(len(answers), 0, first.shape[-1])
    logprobs = F.log_softmax(torch.cat([first.expand(len(answers), -1, -1), rest], dim=1), dim=-1)
    return [logprobs[r, : len(answer)] for r, answer in enumerate(answers)]


def _answer_logprobs(model, context: Sequence[int], answers: Sequence[Sequence[int]], device) -> list:
    """As `_answer_logprobs_cached` where the model offers an exact prefix cache (megasci's
    `Transformer.prefix_cache`), else for any callable mapping ids [B, S] to logits: one row per answer."""
    make_cache = getattr(model, "prefix_cache", None)
    cache = make_cache(len(context) + max(map(len, answers)), device) if make_cache else None
    if cache is not None:
        return _answer_logprobs_cached(model, cache, context, answers, device)
    rows = [list(context) + list(a) for a in answers]
    width = max(map(len, rows))
    tokens = torch.zeros(len(rows), width - 1, dtype=torch.long)
    for r, row in enumerate(rows):
        tokens[r, : len(row) - 1] = torch.tensor(row[:-1])
    with torch.no_grad():
        logits = model(tokens.to(device))
        logits = getattr(logits, "logits", logits).float()
    logprobs = F.log_softmax(logits, dim=-1)
    start = len(context) - 1  # the logits at this position predict the answer's first token
    return [logprobs[r, start : start + len(answer)] for r, answer in enumerate(answers)]


def _score_answers(model, context: Sequence[int], answers: Sequence[Sequence[int]], device) -> tuple[list[float], bool]:
    """Summed log-probability of each answer after `context`, and whether greedy decoding gives the first."""
    scores, greedy = [], False
    for r, (answer, rows_lp) in enumerate(zip(answers, _answer_logprobs(model, context, answers, device))):
        target = torch.tensor(list(answer), device=rows_lp.device)
        scores.append(float(rows_lp.gather(1, target[:, None]).sum()))
        if r == 0:
            greedy = bool((rows_lp.argmax(-1) == target).all())
    return scores, greedy


def stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def score_examples(model, examples: Sequence[PasskeyExample], device="cpu") -> list[dict]:
    """Per example: length, depth, greedy (bool), logprob of the key, ll_correct (bool or None)."""
    results = []
    for ex in examples:
        scores, greedy = _score_answers(model, ex.context, [ex.answer, *ex.wrong], device)
        results.append(
            {
                "length": ex.length,
                "depth": ex.depth,
                "key": ex.key,
                "greedy": greedy,
                "logprob": scores[0],
                "ll_correct": (scores[0] > max(scores[1:])) if ex.wrong else None,
            }
        )
    return results


def summarize(results: Sequence[dict]) -> dict:
    """The depth x length table and per-length means: accuracy with standard error and n per cell."""

    def cell(rows):
        n = len(rows)
        greedy = sum(r["greedy"] for r in rows) / n
        out = {
            "n": n,
            "greedy_acc": greedy,
            "greedy_stderr": stderr(greedy, n),
            "mean_logprob": sum(r["logprob"] for r in rows) / n,
        }
        if rows[0]["ll_correct"] is not None:
            ll = sum(r["ll_correct"] for r in rows) / n
            out.update(ll_acc=ll, ll_stderr=stderr(ll, n))
        return out

    lengths = sorted({r["length"] for r in results})
    depths = sorted({r["depth"] for r in results})
    table = {
        f"{d:g}": {str(n): cell([r for r in results if r["length"] == n and r["depth"] == d]) for n in lengths}
        for d in depths
    }
    by_length = {str(n): cell([r for r in results if r["length"] == n]) for n in lengths}
    return {"lengths": lengths, "depths": depths, "table": table, "by_length": by_length, "overall": cell(results)}


def format_table(summary: dict, metric: str = "greedy_acc") -> str:
    """Depth rows x length columns of `metric` in percent, then the per-length line with its stderr."""
    lengths, depths = summary["lengths"], summary["depths"]
    header = ["depth \\ length"] + [str(n) for n in lengths]
    rows = [[f"{d:g}"] + [f"{100 * summary['table'][f'{d:g}'][str(n)][metric]:.0f}%" for n in lengths] for d in depths]
    err = metric.replace("_acc", "_stderr")
    rows.append(
        ["all"]
        + [
            f"{100 * summary['by_length'][str(n)][metric]:.1f}% ± "
            f"{100 * summary['by_length'][str(n)][err]:.1f} (n={summary['by_length'][str(n)]['n']})"
            for n in lengths
        ]
    )
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows])


def plot_heatmap(summary: dict, path: str, metric: str = "greedy_acc", title: str = "passkey retrieval") -> None:
    """The depth x length table as a PNG heatmap (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, depths = summary["lengths"], summary["depths"]
    grid = np.array([[summary["table"][f"{d:g}"][str(n)][metric] for n in lengths] for d in depths])
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.5 * len(depths)))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("key depth")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            ax.text(j, i, f"{100 * grid[i, j]:.0f}", ha="center", va="center", fontsize=8)
    ax.set_title(f"{title} ({metric})")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclasses.dataclass(frozen=True)
class RetrievalDataConfig:
    """Synthetic retrieval training documents for a long-context stage: what a small model needs to
    learn to retrieve at all before a context extension can show anything (a tiny model learns no
    retrieval from papers alone; the pilot in shared/research trained on such documents).

    Every document is exactly `length` tokens, the stage's `data.seq_length`: samples are cut every
    `length` tokens (Megatron's sample index), so each sample is then one whole document and no
    question is cut off from its key. A document is one episode of `min_episode..length` tokens, then
    unscored filler up to `length`:

    - passkey (1 - `copy_share`): `make_examples`' compact format (the evaluation's prompt), the key at
      a random depth; scored: the answer's tokens;
    - span copy (`copy_share`): a span of `span` tokens of filler text at a random depth, and the same
      span again at the episode's end; scored: the repeat after its first token. Copying a span seen
      earlier is what passkey retrieval needs (an induction head), with one target per token instead
      of one per digit.
    """

    length: int
    count: int
    min_episode: int = 32
    digits: int = 5
    copy_share: float = 0.5
    span: tuple[int, int] = (8, 32)
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.min_episode <= self.length or self.count < 1:
            raise ValueError(
                f"retrieval data: need 1 <= min_episode <= length and count >= 1, got min_episode "
                f"{self.min_episode}, length {self.length}, count {self.count}"
            )
        if not 0.0 <= self.copy_share <= 1.0:
            raise ValueError(f"retrieval data: copy_share must lie in [0, 1], got {self.copy_share}")
        if not 1 <= self.span[0] <= self.span[1] or 2 * self.span[0] > self.min_episode:
            raise ValueError(
                f"retrieval data: spans of {self.span[0]}..{self.span[1]} tokens do not fit twice in an "
                f"episode of {self.min_episode} tokens"
            )


def retrieval_documents(
    encode: Callable[[str], list[int]], filler: np.ndarray, config: RetrievalDataConfig
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`config.count` (token ids, loss mask) pairs, both `config.length` long, in a seeded order."""
    filler = np.asarray(filler, dtype=np.int64)
    if len(filler) < 2 * config.length:
        raise ValueError(f"retrieval data: the filler has {len(filler)} tokens, need at least {2 * config.length}")
    rng = np.random.default_rng([config.seed, 21])
    n_copy = int(round(config.count * config.copy_share))
    episodes = np.linspace(config.min_episode, config.length, 8).round().astype(int)
    documents = []
    n_passkey = config.count - n_copy
    if n_passkey:
        depths = tuple(float(d) for d in np.linspace(0.0, 1.0, 11))
        per_cell = math.ceil(n_passkey / (len(episodes) * len(depths)))
        passkey = PasskeyConfig(
            lengths=tuple(int(e) for e in episodes),
            depths=depths,
            per_cell=per_cell,
            seed=config.seed,
            compact=True,
            digits=config.digits,
            distractors=0,
        )
        examples = make_examples(encode, filler, passkey)
        for i in rng.permutation(len(examples))[:n_passkey].tolist():
            ex = examples[i]
            ids = list(ex.context + ex.answer)
            documents.append((ids, [0] * len(ex.context) + [1] * len(ex.answer)))
    for _ in range(n_copy):
        episode = int(rng.integers(config.min_episode, config.length + 1))
        span = int(rng.integers(config.span[0], min(config.span[1], episode // 2) + 1))
        start = int(rng.integers(0, len(filler) - span + 1))
        copied = filler[start : start + span].tolist()
        n_filler = episode - 2 * span
        start = int(rng.integers(0, len(filler) - n_filler + 1))
        text = filler[start : start + n_filler].tolist()
        at = int(rng.integers(0, n_filler + 1))
        ids = text[:at] + copied + text[at:] + copied
        documents.append((ids, [0] * (n_filler + span + 1) + [1] * (span - 1)))
    out = []
    for j in rng.permutation(len(documents)).tolist():
        ids, mask = documents[j]
        pad = config.length - len(ids)
        start = int(rng.integers(0, len(filler) - pad + 1))
        out.append(
            (
                np.asarray(ids + filler[start : start + pad].tolist(), dtype=np.int64),
                np.asarray(mask + [0] * pad, dtype=np.uint8),
            )
        )
    return out

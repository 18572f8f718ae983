"""What a dataset records about how it was made: the tokenizer that wrote its ids, and its report.

Every writer of token datasets (preprocess, preprocess_sft, merge) records the identity of its
tokenizer beside the dataset, in `<prefix>.tokenizer.json` (committed with the dataset's files, see
megasci/data/commit.py; `record_tokenizer` writes one alone); that is the rule,
and merging keeps it only when every input agrees. Datasets written before that record existed are
traced through their preprocessing report instead: preprocessing names a run's outputs
`output_prefix_for(out, key)` = `<out>_<key>_document` and writes one report, `<out>_preprocess.json`,
whose `summary.outputs[key]` is that prefix and whose `tokenizer` is the identity of the tokenizer used.
From a dataset prefix alone `<out>` is ambiguous
(both `<out>` and the JSON key may contain underscores), so the rule is: the report of a prefix is
`<out>_preprocess.json` for the longest `<out>` for which the report exists and names this very
prefix under the key that the rest of the name spells. A report that lists the prefix under another
key, or not at all, describes some other dataset.
"""

from __future__ import annotations

import json
import os

from megasci.data.naming import DOCUMENT_SUFFIX, output_prefix_for, report_path_for, tokenizer_record_path
from megasci.utils.io import file_sha256, write_json_atomic


def record_tokenizer(prefix: str, identity: dict) -> None:
    """Write the identity (`Tokenizer.identity()`) of the tokenizer that produced dataset `prefix`."""
    write_json_atomic(tokenizer_record_path(prefix), identity)


def recorded_tokenizer(prefix: str) -> dict | None:
    path = tokenizer_record_path(prefix)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise ValueError(f"{path}: not a JSON tokenizer identity ({e})") from None


def common_tokenizer(prefixes: list[str]) -> dict | None:
    """The tokenizer every input records, for their merge; None when some input records none. Inputs
    that record different tokenizers cannot be merged into one id space: that is an error."""
    records = [recorded_tokenizer(p) for p in prefixes]
    known = [(p, r) for p, r in zip(prefixes, records) if r is not None]
    for prefix, record in known[1:]:
        if _compare_identity(tokenizer_record_path(prefix), record, known[0][1]):
            raise ValueError(
                f"{tokenizer_record_path(prefix)} and {tokenizer_record_path(known[0][0])} record "
                f"different tokenizers: their token ids do not mean the same thing"
            )
    return known[0][1] if known and len(known) == len(prefixes) else None


def preprocess_report(prefix: str) -> str | None:
    """The report preprocessing wrote for dataset `prefix` (see the module docstring), or None."""
    prefix = os.fspath(prefix)
    if not prefix.endswith(DOCUMENT_SUFFIX):
        return None
    stem = prefix[: -len(DOCUMENT_SUFFIX)]
    for cut in range(len(stem) - 1, 0, -1):
        out, key = stem[:cut], stem[cut + 1 :]
        if stem[cut] != "_" or not key or output_prefix_for(out, key) != prefix:
            continue
        candidate = report_path_for(out)
        if not os.path.isfile(candidate):
            continue
        try:
            with open(candidate, encoding="utf-8") as f:
                named = ((json.load(f).get("summary") or {}).get("outputs") or {}).get(key)
        except ValueError:
            continue
        if named is not None and os.path.abspath(named) == os.path.abspath(prefix):
            return candidate
    return None


def tokenizer_warnings(prefix: str, identity: dict | None) -> list[str]:
    """Reasons to doubt that `prefix` was tokenized with the tokenizer of `identity`, from what the
    dataset records: its `<prefix>.tokenizer.json`, else its preprocessing report. Nothing
    recorded: no warnings. Training refuses data with warnings; evaluation prints them."""
    if not identity:
        return []
    warnings = []
    record = recorded_tokenizer(prefix)
    if record is not None:
        return _compare_identity(tokenizer_record_path(prefix), record, identity)
    report = preprocess_report(prefix)
    if report is not None:
        with open(report, encoding="utf-8") as f:
            content = json.load(f)
        model_path = (content.get("config") or {}).get("tokenizer_model")
        vocab_size = (content.get("summary") or {}).get("vocab_size")
        if (content.get("tokenizer") or {}).get("sha256"):  # the identity preprocessing recorded
            warnings += _compare_identity(report, content["tokenizer"], identity)
        elif model_path and os.path.isfile(model_path) and identity.get("sha256"):
            warnings += _compare_identity(report, {"sha256": file_sha256(model_path)}, identity)
        elif vocab_size is not None:
            warnings += _compare_identity(report, {"vocab_size": vocab_size}, identity)
    return warnings


def _compare_identity(where: str, recorded: dict, identity: dict) -> list[str]:
    for key in ("sha256", "vocab_size"):
        if recorded.get(key) is not None and identity.get(key) is not None:
            if recorded[key] != identity[key]:
                return [
                    f"{where}: the dataset's tokenizer {key} {recorded[key]} differs from the "
                    f"tokenizer in use ({identity[key]})"
                ]
            return []
    return []

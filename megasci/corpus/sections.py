"""Math spans and section tagging over cleaned, LaTeX-preserving text.

The cleaner keeps math verbatim and headings as ``\\section{...}`` lines; this module finds the math
(for ``math_fraction`` and for masking before language ID) and cuts a record's text into labelled
``{label, start, end}`` spans (end exclusive, contiguous, covering the whole text) so that sampling
can weight sections by label (``labels.SECTION_LABELS``).
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict

from megasci.corpus.labels import SECTION_LABELS
from megasci.corpus.latex import MATH_ENVIRONMENT_PATTERN, closing_brace

# Tokens that can open or close math, found in one left-to-right regex scan. Escaped \$ and \\ are
# tokens too, so that \$5 is a dollar sign and \\[2pt] a line break, never math delimiters.
# The backslash tokens share one branch, tried once per backslash instead of once per form.
MATH_TOKEN = re.compile(
    r"""
  \\(?: begin\{(?:ENVS)\*?\} | end\{(?:ENVS)\*?\} | [()\[\]] | [\\$] )
| \$\$? | \n[ \t]*\n
""".replace("ENVS", MATH_ENVIRONMENT_PATTERN),
    re.X,
)
_CLOSER = {"\\(": "\\)", "\\[": "\\]", "$$": "$$", "$": "$"}


def _closer(token: str) -> str | None:
    if token.startswith("\\begin"):
        return "\\end" + token[len("\\begin") :]
    return _CLOSER.get(token)


def math_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every math span, delimiters included, in order and non-overlapping.

    An opener pairs with the next matching closer in the same paragraph (a blank line is a TeX
    error in math mode) or, without one, is plain text. Closers are looked up by bisection in
    per-closer position lists, so one stray ``$`` or unclosed ``\\[`` costs O(log n), not a rescan.
    """
    matches = list(MATH_TOKEN.finditer(text))
    at = defaultdict(list)  # each token's indices in `matches`
    for k, token in enumerate(map(re.Match.group, matches)):
        at[token].append(k)
    breaks = sorted(k for token, indices in at.items() if token[0] == "\n" for k in indices) + [len(matches)]
    closers = {token: closer for token in at if (closer := _closer(token)) in at}
    spans, resume = [], 0
    for k in sorted(k for token in closers for k in at[token]):  # openers whose closer occurs at all
        if k < resume:
            continue
        candidates = at[closers[matches[k].group()]]
        j = bisect.bisect_right(candidates, k)
        if j < len(candidates) and candidates[j] < breaks[bisect.bisect_right(breaks, k)]:
            resume = candidates[j] + 1
            spans.append((matches[k].start(), matches[candidates[j]].end()))
    return spans


def math_fraction(text: str) -> float:
    """Share of characters inside math spans (delimiters included); 0.0 for empty text."""
    if not text:
        return 0.0
    return sum(end - start for start, end in math_spans(text)) / len(text)


def mask_math(text: str, replacement: str = " ") -> str:
    """``text`` with every math span replaced by ``replacement`` (for language ID on prose only)."""
    pieces, last = [], 0
    for start, end in math_spans(text):
        pieces += [text[last:start], replacement]
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


# Heading keyword table: the heading's first (leftmost) keyword decides its label, so
# "Introduction and background" is introduction and "Results and discussion" is results.
# Keys are lowercase word tuples, matched against the heading's words with math masked.
HEADING_KEYWORDS: dict[tuple[str, ...], str] = {
    **{(w,): "introduction" for w in ("introduction", "intro", "overview", "motivation")},
    **{
        (w,): "background"
        for w in ("background", "preliminaries", "preliminary", "notation", "notations", "setup", "setting")
    },
    ("related", "work"): "background",
    ("related", "works"): "background",
    **{
        (w,): "method"
        for w in (
            "method",
            "methods",
            "methodology",
            "approach",
            "model",
            "models",
            "construction",
            "algorithm",
            "algorithms",
        )
    },
    **{
        (w,): "results"
        for w in (
            "result",
            "results",
            "experiment",
            "experiments",
            "experimental",
            "evaluation",
            "numerical",
            "simulations",
            "analysis",
            "estimates",
        )
    },
    **{(w,): "proof" for w in ("proof", "proofs")},
    **{(w,): "discussion" for w in ("discussion", "remarks")},
    ("open", "problems"): "discussion",
    **{(w,): "conclusion" for w in ("conclusion", "conclusions", "summary", "concluding", "outlook")},
    **{(w,): "appendix" for w in ("appendix", "appendices")},
}
_LONGEST_KEY = max(len(key) for key in HEADING_KEYWORDS)
assert set(HEADING_KEYWORDS.values()) <= set(SECTION_LABELS)

# Body text before the first \section shorter than this (stray whitespace, a lone \maketitle
# remnant) is not worth its own "other" span; it joins the first section.
SHORT_PREAMBLE_CHARS = 200

_SECTION_HEADING = re.compile(r"\\section\{")
_APPENDIX = re.compile(r"\\appendix(?![a-zA-Z])|\\begin\{appendices\}")
_WORD = re.compile(r"[a-z]+")


def heading_label(heading: str) -> str:
    """Label for a ``\\section`` heading by the keyword table; "other" when no keyword occurs."""
    words = _WORD.findall(mask_math(heading).lower())
    for i in range(len(words)):
        for width in range(_LONGEST_KEY, 0, -1):
            label = HEADING_KEYWORDS.get(tuple(words[i : i + width]))
            if label:
                return label
    return "other"


def _body_cuts(body: str) -> list[tuple[int, str]]:
    """``(offset, label)`` where each body span starts; ``\\subsection`` never cuts."""
    appendix = _APPENDIX.search(body)
    appendix_at = appendix.start() if appendix else len(body)
    cuts = [(0, "other")]
    for m in _SECTION_HEADING.finditer(body, 0, appendix_at):
        close = closing_brace(body, m.end() - 1)
        heading = body[m.end() : close if close >= 0 else len(body)]
        cuts.append((m.start(), heading_label(heading)))
    if appendix:
        cuts.append((appendix_at, "appendix"))
    if len(cuts) > 1 and cuts[1][0] < SHORT_PREAMBLE_CHARS:
        cuts[1] = (0, cuts[1][1])
    return [cut for k, cut in enumerate(cuts) if k + 1 == len(cuts) or cuts[k + 1][0] > cut[0]]


def compose_document(title: str | None, abstract: str | None, body: str | None) -> tuple[str, list[dict]]:
    """Record ``text`` and its section spans.

    Layout: ``\\title{T}``, ``\\begin{abstract}\\nA\\n\\end{abstract}`` and the body, joined by blank
    lines; missing parts are left out. A separating blank line belongs to the span before it, and
    adjacent spans with one label are merged, so spans are contiguous from 0 to ``len(text)``.
    """
    parts = []
    if title:
        parts.append(("title", f"\\title{{{title}}}"))
    if abstract:
        parts.append(("abstract", f"\\begin{{abstract}}\n{abstract}\n\\end{{abstract}}"))
    if body:
        parts.append(("body", body))
    starts, offset = [], 0
    for k, (label, part) in enumerate(parts):
        if label == "body":
            starts += [(offset + cut, cut_label) for cut, cut_label in _body_cuts(part)]
        else:
            starts.append((offset, label))
        offset += len(part) + (2 if k + 1 < len(parts) else 0)
    text = "\n\n".join(part for _, part in parts)
    sections: list[dict] = []
    for k, (start, label) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(text)
        if sections and sections[-1]["label"] == label:
            sections[-1]["end"] = end
        else:
            sections.append({"label": label, "start": start, "end": end})
    return text, sections


def section_documents(paper: dict):
    """One record per non-blank labelled span of a corpus record: `{"id", "section", "text"}`.

    Preprocessing these gives one document per section with its label in the sidecar, so
    curriculum stages select sections (e.g. prose first) from a single `.bin`."""
    for span in paper["sections"]:
        text = paper["text"][span["start"] : span["end"]]
        if text.strip():
            yield {"id": paper["id"], "section": span["label"], "text": text}


def write_section_records(corpus_paths: list[str], out_path: str) -> tuple[int, int]:
    """`section_documents` of every record in the corpus files, as JSONL at `out_path` (atomically).

    Returns (papers, sections). A record without `text` and `sections` is an error naming its file."""
    import json

    from megasci.utils.io import atomic_text_output, iter_json_records

    papers = sections = 0
    with atomic_text_output(out_path) as out:
        for path in corpus_paths:
            for paper in iter_json_records(path):
                if "sections" not in paper or "text" not in paper:
                    raise ValueError(
                        f"{path}: record {paper.get('id', papers)!r} has no text or sections "
                        f"(is it a corpus builder shard?)"
                    )
                papers += 1
                for record in section_documents(paper):
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    sections += 1
    return papers, sections

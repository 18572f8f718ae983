"""Canonical section labels, shared by the corpus builder (span tagging) and sampling (per-label weights)."""

SECTION_LABELS = (
    "title",
    "abstract",
    "introduction",
    "background",
    "method",
    "results",
    "proof",
    "discussion",
    "conclusion",
    "appendix",
    "other",
)

PROSE_LABELS = ("title", "abstract", "introduction", "discussion", "conclusion")

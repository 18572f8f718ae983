"""The default corpus pipeline: assembly -> cleaning -> length -> language -> exact_dedup keys.

Each step wraps one stage module (assemble.py, clean.py with sections.py, filters.py, dedup.py)
as a `pipeline.Step`; `DEFAULT_PIPELINE` lists them in the order the funnel counts them. A caller
who wants another funnel passes its own list (`BuildConfig(pipeline=...)`), reusing these steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from megasci.corpus.assemble import assemble
from megasci.corpus.clean import clean_latex
from megasci.corpus.dedup import NearDuplicateIndex, exact_key
from megasci.corpus.filters import check_language, detect_language_raw, passes_length
from megasci.corpus.package import Rejected
from megasci.corpus.pipeline import EXACT_DEDUP, Paper, Step, funnel_stages
from megasci.corpus.sections import compose_document, math_fraction

if TYPE_CHECKING:
    from megasci.corpus.config import BuildConfig


def assemble_step(paper: Paper, cfg: BuildConfig) -> Paper | Rejected:
    try:
        paper.assembled = assemble(paper.package)
    except Rejected as rejected:
        return rejected
    return paper


def clean_step(paper: Paper, cfg: BuildConfig) -> Paper | Rejected:
    """Clean the LaTeX; metadata, when present, gives the title and abstract instead of the source."""
    assert paper.assembled is not None, "cleaning follows assembly"
    paper.cleaned = clean_latex(paper.assembled.text, keep_captions=cfg.keep_captions)
    paper.title = paper.meta["title"] if paper.meta else paper.cleaned.title
    paper.abstract = paper.meta["abstract"] if paper.meta else paper.cleaned.abstract
    paper.text, paper.sections = compose_document(paper.title, paper.abstract, paper.cleaned.text)
    paper.math_fraction = round(math_fraction(paper.text), 4)
    return paper


def length_step(paper: Paper, cfg: BuildConfig) -> Paper | Rejected:
    assert paper.cleaned is not None, "the length filter follows cleaning"
    return paper if passes_length(paper.cleaned.text, cfg.min_body_chars) else Rejected("too_short")


def language_step(paper: Paper, cfg: BuildConfig) -> Paper | Rejected:
    """Language of the prose; also notes whether masking math changed the answer, for the report."""
    assert paper.cleaned is not None, "the language filter follows cleaning"
    settings = cfg.language_filter
    language, passes = check_language(paper.title, paper.abstract, paper.cleaned.text, settings)
    paper.language_flip = detect_language_raw(paper.text, settings.seed, settings.min_chars) != language
    return paper if passes else Rejected(f"language_{language}")


def dedup_keys(paper: Paper, cfg: BuildConfig) -> Paper | Rejected:
    """The keys finalize compares, made here beside the text so finalize never holds the corpus."""
    paper.exact_key = exact_key(paper.text)
    paper.minhash = near_dup_signature(paper.text)
    return paper


_signer: NearDuplicateIndex | None = None  # per process: holds the MinHash permutations


def near_dup_signature(text: str) -> list[int]:
    global _signer
    if _signer is None:
        _signer = NearDuplicateIndex()
    return _signer.signature(text)


# Run per paper, in the workers, under the per-paper time limit. exact_dedup starts here (its keys,
# which near_dedup uses too) and ends in finalize, where the corpus-wide comparison drops papers.
DEFAULT_PIPELINE = (
    Step("assembly", assemble_step),
    Step("cleaning", clean_step),
    Step("length", length_step),
    Step("language", language_step),
    Step(EXACT_DEDUP, dedup_keys),
)
DEFAULT_STAGES = funnel_stages(DEFAULT_PIPELINE)  # the default funnel, for planning before any build

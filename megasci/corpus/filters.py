"""Document filters of the corpus builder: length and language.

Language ID runs on prose only. langdetect works on character n-grams, and LaTeX math
(``$\\alpha_{ij}$``, ``\\begin{align}…``) has n-gram statistics of no natural language; on raw
math-heavy text it often answers Catalan, Slovak or similar, and an English paper is dropped.
So ``detect_language`` masks math spans and control words first; ``detect_language_raw`` runs on
the unmasked text so the builder can report how many papers the masking flips.

langdetect is random (it samples n-grams). Each call here gets a fresh detector from a private,
loaded-once ``DetectorFactory`` with the seed set on that call, so results are a pure function of
(text, seed) and do not depend on what else in the process touched langdetect's global factory.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from langdetect.detector import Detector
from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
from langdetect.lang_detect_exception import LangDetectException
from langdetect.utils.ngram import NGram

from megasci.corpus.sections import mask_math

# langdetect's cost grows with its input and it converges long before this on prose; the start of
# a paper (title, abstract, introduction) is the most prose-like part. Measured: language ID was
# 80% of the builder's time at 5,000 characters (docs/benchmarks.md).
DETECTION_CHARS = 1_500
UNKNOWN = "unknown"

_CONTROL_WORD = re.compile(r"\\[a-zA-Z@]+\*?")
_LETTER = re.compile(r"[^\W\d_]")
_factory: DetectorFactory | None = None
_factory_lock = threading.Lock()


@dataclass(frozen=True)
class LanguageConfig:
    """Language filter settings. ``min_chars``: fewer prose letters than this → "unknown" (too little to judge)."""

    seed: int = 0
    expected: str = "en"
    min_chars: int = 50


def _detector_factory() -> DetectorFactory:
    """The profiles take ~0.5 s to load; load them once per process."""
    global _factory
    with _factory_lock:
        if _factory is None:
            factory = DetectorFactory()
            factory.load_profile(PROFILES_DIRECTORY)
            _factory = factory
    return _factory


class _Detector(Detector):
    """langdetect's detector with its two inner loops written for speed; the n-gram list, the random
    draws and every floating-point operation are langdetect's own, so the answers are the same
    (tests/test_corpus_filters.py compares the probabilities)."""

    _normalized: dict[str, str] = {}  # NGram.normalize is a pure function of one character

    def _extract_ngrams(self) -> list[str]:
        known, normalized, result = self.word_lang_prob_map, self._normalized, []
        grams, capital = " ", False
        for ch in self.text:
            norm = normalized.get(ch)
            if norm is None:
                norm = normalized[ch] = NGram.normalize(ch)
            last = grams[-1]
            if last == " ":
                grams, capital = " ", False
                if norm == " ":
                    continue
            elif len(grams) >= NGram.N_GRAM:
                grams = grams[1:]
            grams += norm
            if norm.isupper():
                if last.isupper():
                    capital = True
            else:
                capital = False
            if capital:
                continue
            for n in range(1, min(len(grams), NGram.N_GRAM) + 1):
                gram = grams[-n:]
                if gram != " " and gram in known:
                    result.append(gram)
        return result

    def _update_lang_prob(self, prob: list[float], word: str, alpha: float) -> bool:
        lang_prob_map = self.word_lang_prob_map.get(word)
        if lang_prob_map is None:
            return False
        weight = alpha / self.BASE_FREQ
        prob[:] = [p * (weight + q) for p, q in zip(prob, lang_prob_map)]
        return True


def load_language_profiles() -> None:
    """Load langdetect's profiles now, e.g. before forking workers, so each worker need not (~0.5 s)."""
    _detector_factory()


def _detect(text: str, seed: int, min_chars: int) -> str:
    """langdetect's top language for ``text`` with a per-call seed; "unknown" when it cannot tell."""
    if len(_LETTER.findall(text)) < min_chars:
        return UNKNOWN
    detector = _Detector(_detector_factory())
    detector.seed = seed
    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException:
        return UNKNOWN


def prose_for_detection(title: str | None, abstract: str | None, body: str | None) -> str:
    """The first ``DETECTION_CHARS`` of title, abstract and body, with math and control words masked."""
    # Only the start of the body can reach the detector: masking the rest would cost time on long papers.
    text = "\n\n".join(part for part in (title, abstract, (body or "")[: 4 * DETECTION_CHARS]) if part)
    return re.sub(r"\s+", " ", _CONTROL_WORD.sub(" ", mask_math(text)))[:DETECTION_CHARS]


def detect_language(title: str | None, abstract: str | None, body: str | None, seed: int = 0,
                    min_chars: int = LanguageConfig.min_chars) -> str:
    """ISO 639-1 code of the paper's prose (math masked), or "unknown"."""
    return _detect(prose_for_detection(title, abstract, body), seed, min_chars)


def detect_language_raw(text: str, seed: int = 0, min_chars: int = LanguageConfig.min_chars) -> str:
    """Language of the first ``DETECTION_CHARS`` of ``text`` as is (math included), for reporting flips."""
    return _detect(text[:DETECTION_CHARS], seed, min_chars)


def check_language(title: str | None, abstract: str | None, body: str | None,
                   config: LanguageConfig = LanguageConfig()) -> tuple[str, bool]:
    """(detected language, whether the paper passes); the builder records the former for its report."""
    language = detect_language(title, abstract, body, config.seed, config.min_chars)
    return language, language == config.expected


def passes_length(body: str, min_chars: int = 2000) -> bool:
    """Bodies shorter than ``min_chars`` (stripped) are stubs, withdrawals or failed extractions."""
    return len(body.strip()) >= min_chars

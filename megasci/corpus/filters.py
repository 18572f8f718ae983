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

import numpy as np
from langdetect.detector import Detector
from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
from langdetect.lang_detect_exception import ErrorCode, LangDetectException
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
_table: _ProbabilityTable | None = None
_factory_lock = threading.Lock()


@dataclass(frozen=True)
class LanguageConfig:
    """Language filter settings. ``min_chars``: fewer prose letters than this → "unknown" (too little to judge)."""

    seed: int = 0
    expected: str = "en"
    min_chars: int = 50


def _detector_factory() -> DetectorFactory:
    """The profiles take ~0.5 s to load, their table ~0.3 s more; both once per process."""
    global _factory, _table
    with _factory_lock:
        if _factory is None:
            factory = DetectorFactory()
            factory.load_profile(PROFILES_DIRECTORY)
            _table = _ProbabilityTable(factory.word_lang_prob_map)
            _factory = factory
    return _factory


def _probability_table() -> _ProbabilityTable:
    _detector_factory()
    return _table


class _Normalized(dict):
    """Character ordinal -> `NGram.normalize` of it, filled on first use, for `str.translate`."""

    def __missing__(self, ordinal: int) -> str:
        self[ordinal] = NGram.normalize(chr(ordinal))
        return self[ordinal]


_NORMALIZED = _Normalized()
_SPACE_RUN = re.compile(" {2,}")
_LATIN_RANGE = re.compile("[A-z]")  # langdetect's 'A' <= ch <= 'z', the six ASCII signs between included
_NON_LATIN = re.compile("[\u0300-\U0010ffff]")  # its non-Latin test: its block comparison is always true
_word_grams: dict[tuple[str, bool], list[int]] = {}  # (normalized word, space after it) -> its n-gram rows
_WORD_CACHE_LIMIT = 200_000


class _ProbabilityTable:
    """langdetect's n-gram -> per-language probability map as one float64 matrix (a row per n-gram,
    ~40 MB for the 55 shipped profiles), so one update multiplies a numpy row instead of 55 floats."""

    def __init__(self, word_lang_prob_map: dict[str, list[float]]):
        self.built_from = word_lang_prob_map
        self.row = {gram: i for i, gram in enumerate(word_lang_prob_map)}
        self.matrix = np.array(list(word_lang_prob_map.values()), dtype=np.float64)


class _Detector(Detector):
    """langdetect's detector with its loops written for speed; the n-grams, their order, the random
    draws and every floating-point operation are langdetect's own, so the answers are the same
    (tests/test_corpus_fast_paths.py compares the probabilities with langdetect's `Detector`).

    The n-grams of a text are those of its words (a word's grams depend only on the word and on
    whether a space follows it), so they are cached per word; the trials draw the same n-grams in
    the same order and apply them five at a time between langdetect's convergence checks."""

    def append(self, text: str) -> None:
        text = NGram.normalize_vi(self.MAIL_RE.sub(" ", self.URL_RE.sub(" ", text)))
        self.text += _SPACE_RUN.sub(" ", text[: self.max_text_length])

    def cleaning_text(self) -> None:
        if 2 * len(_LATIN_RANGE.findall(self.text)) < len(_NON_LATIN.findall(self.text)):
            self.text = _LATIN_RANGE.sub("", self.text)

    def _extract_rows(self, known: dict[str, int]) -> list[int]:
        rows, cache = [], _word_grams
        words = self.text.translate(_NORMALIZED).split(" ")
        last = len(words) - 1
        for position, word in enumerate(words):
            if not word:
                continue
            key = (word, position < last)
            grams = cache.get(key)
            if grams is None:
                if len(cache) >= _WORD_CACHE_LIMIT:
                    cache.clear()
                grams = cache[key] = _word_rows(word, position < last, known)
            rows += grams
        return rows

    def _detect_block(self) -> None:
        table = _probability_table()
        if self.word_lang_prob_map is not table.built_from:
            return super()._detect_block()  # another factory's profiles: the table is this module's
        self.cleaning_text()
        rows = self._extract_rows(table.row)
        if not rows:
            raise LangDetectException(ErrorCode.CantDetectError, "No features in text.")
        matrix, choice, trials = table.matrix, self.random.choice, self.n_trial
        langprob = np.zeros(len(self.langlist))
        self.random.seed(self.seed)
        for _ in range(trials):
            prob = np.array(self._init_probability(), dtype=np.float64)
            weight = (self.alpha + self.random.gauss(0.0, 1.0) * self.ALPHA_WIDTH) / self.BASE_FREQ
            updates, done = 1, 0  # langdetect checks convergence after update 0, then after every fifth
            while True:
                for factor in weight + matrix[[choice(rows) for _ in range(updates)]]:
                    prob *= factor
                done += updates
                prob /= sum(prob.tolist())  # Python's sum, as langdetect's: same rounding
                if prob.max() > self.CONV_THRESHOLD or done - 1 >= self.ITERATION_LIMIT:
                    break
                updates = 5
            langprob += prob / trials
        self.langprob = langprob.tolist()


def _word_rows(word: str, space_after: bool, known: dict[str, int]) -> list[int]:
    """Rows of the n-grams langdetect's `NGram` buffer yields while reading one word (after a space)
    and the space after it: at each character not inside a run of capitals, its 1-, 2- and 3-gram
    suffixes that reach back no further than the space before the word."""
    chars, rows = " " + word + (" " if space_after else ""), []
    for end in range(1, len(chars)):
        if chars[end].isupper() and chars[end - 1].isupper():
            continue
        for n in range(1, min(end + 1, NGram.N_GRAM) + 1):
            gram = chars[end - n + 1 : end + 1]
            if gram != " " and gram in known:
                rows.append(known[gram])
    return rows


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


def detect_language(
    title: str | None, abstract: str | None, body: str | None, seed: int = 0, min_chars: int = LanguageConfig.min_chars
) -> str:
    """ISO 639-1 code of the paper's prose (math masked), or "unknown"."""
    return _detect(prose_for_detection(title, abstract, body), seed, min_chars)


def detect_language_raw(text: str, seed: int = 0, min_chars: int = LanguageConfig.min_chars) -> str:
    """Language of the first ``DETECTION_CHARS`` of ``text`` as is (math included), for reporting flips."""
    return _detect(text[:DETECTION_CHARS], seed, min_chars)


def check_language(
    title: str | None, abstract: str | None, body: str | None, config: LanguageConfig = LanguageConfig()
) -> tuple[str, bool]:
    """(detected language, whether the paper passes); the builder records the former for its report."""
    language = detect_language(title, abstract, body, config.seed, config.min_chars)
    return language, language == config.expected


def passes_length(body: str, min_chars: int = 2000) -> bool:
    """Bodies shorter than ``min_chars`` (stripped) are stubs, withdrawals or failed extractions."""
    return len(body.strip()) >= min_chars

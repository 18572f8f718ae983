"""Deterministic synthetic arXiv-style papers: corpus records (id, title, LaTeX text, section spans,
categories, year, math fraction) written from Zipf-distributed words and templated math.

We must never ship real arXiv files, yet cleaning, section labelling, tokenizer training and packing
all need inputs that look like them. Everything here is a pure function of its arguments: the same
seed gives the same records and bytes. `dump.py` packages these records as arXiv serves them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator

import numpy as np

from megasci.corpus.labels import SECTION_LABELS
from megasci.utils.io import atomic_text_output

_FUNCTION_WORDS = tuple(
    """
the of and a to in is we that for this with as by on be are it which an from can let then if at not our
where such there all these any each one two has have its also show given or more than into only but since
thus hence however therefore follows holds obtain consider denote assume define prove
""".split()
)
_CONTENT_WORDS = tuple(
    w
    for w in dict.fromkeys(
        """
proof theorem lemma
result results estimate bound bounds function functions space spaces operator operators equation equations
solution solutions problem problems model models method methods data training network networks learning
algorithm algorithms error rate convergence condition conditions case cases set sets map maps group groups
field fields measure energy state states system systems matrix matrices vector vectors norm finite infinite
linear nonlinear smooth compact bounded continuous random stochastic uniform uniformly local global sharp
optimal small large new first second third general standard following previous section paper work analysis
approach framework structure property properties value values order term terms example examples number
parameter parameters distribution probability variance sample samples loss gradient quantum particle
particles mass symmetry gauge theory scattering amplitude amplitudes dimension dimensional boundary domain
regularity existence uniqueness stability limit sequence sequences series integral derivative constant
constants independent dependent respectively namely particular arbitrary positive negative real complex
integer prime polynomial polynomials graph graphs vertex edges tree path cycle metric manifold curvature
surface geometry algebra algebraic module ring category functor invariant invariants representation kernel
basis eigenvalue eigenvalues spectrum spectral decomposition approximation numerical simulation simulations
experiment experiments performance accuracy dataset benchmark baseline baselines feature features layer
layers attention transformer inference estimator estimators likelihood posterior prior regression
classification noise signal time frequency dynamics flow flows wave waves heat transport diffusion scale
scales scaling critical phase transition correlation correlations entropy information channel capacity code
codes complexity lower upper weak strong dual convex concave inequality identity corollary proposition
definition remark assumption hypothesis construction argument step steps above below here when while because
although whose both between under over via using without within across towards they their them whether most
many several some every no other same different further main key simple natural
""".split()
    )
    if w not in _FUNCTION_WORDS
)
_COMMON_WORDS = _FUNCTION_WORDS + _CONTENT_WORDS
_TITLE_TEMPLATES = (
    "{a} {b} of {c} {d}",
    "On the {a} of {b} {c}",
    "{a} {b} for {c} {d} {e}",
    "{a} and {b} in {c} {d}",
    "The {name} {noun} and {a} {b}",
    "{a} {b}: {c} {d} and {e}",
)
_NAMES = (
    "Schrödinger Erdős Gödel Poincaré Hölder Fréchet Lévy Łojasiewicz Möbius Kähler Gröbner Bézout Plücker "
    "Cauchy–Schwarz Gagliardo–Nirenberg Navier–Stokes Calderón–Zygmund Erdős–Rényi Sobolev Banach"
).split()
_NAMED_NOUNS = (
    "equation inequality operator theorem space embedding estimate conjecture graph manifold transform "
    "condition property decomposition"
).split()
_GREEK_PHRASES = "α-stable|σ-algebra|ε-regularity|μ-almost everywhere|Γ-convergence|naïve|ω-limit set".split("|")
FIRST_NAMES = (
    "Anna Bálint Chen Dmitri Élodie François Gábor Hiroshi Ingrid Jürgen Kateřina Lars María Nikolaj "
    "Olga Paweł Priya Søren Tomás Wei Yuki Zoë Ahmed Björn Camille Ravi Sofía Łukasz"
).split()
LAST_NAMES = (
    "Müller García Nowak Kovács Østergaard Dvořák Şahin Nguyen Wang Smith Ivanov Tanaka Rossi Lefèvre "
    "Sørensen Kim Patel Hernández Böhm Novák Zhang Okafor Lindqvist Fernández Çelik Yılmaz Schmidt"
).split()
_OPENERS = (
    "Moreover, |In particular, |However, |Therefore |Recall that |Note that |It follows that |"
    "In this paper we |By construction, |Consequently, |Finally, "
).split("|")

# Math is assembled from templates; each {name} is filled from the table of the same name.
_ATOM_TEMPLATES = (
    "{v}",
    "{v}",
    "{v}",
    "{v}_{{{i}}}",
    "{v}_{{{i}}}",
    "{v}^{{{p}}}",
    "{acc}{{{v}}}",
    "{d} {v}",
    "{c}",
    "{c}",
    "{num}",
)
_ATOM_PARTS = {
    "v": (
        r"x y z t u v f g h n k N \alpha \beta \gamma \lambda \mu \varepsilon \sigma \theta \varphi \psi "
        r"\omega \xi"
    ).split(),
    "i": r"i j k n 0 1 i,j n+1 k-1 \ell".split(),
    "p": r"2 p -1 * \prime s n 1/2 \alpha -s".split(),
    "acc": r"\hat \tilde \bar".split(),
    "d": r"\partial_{t} \partial_{x} \partial_{i} \Delta \nabla".split(),
    "c": r"\infty \mathbb{R}^{d} \mathbb{Z} \mathcal{H} \mathcal{O}(n^{2}) \Omega \mathbb{C} L^{2}(\mathbb{R}^{n}) "
    r"\pi \hbar \mathcal{L} e^{-t}".split(),
    "num": "0 1 2 3 4 10 12 64 100 0.5 1.25 3.14".split(),
}
_EXPR_TEMPLATES = (
    r"\frac{{{a}}}{{{b}}}",
    r"\sum{s} {a}",
    r"\int{lim} {a} \, d{dx}",
    r"\left( {a} \right)",
    r"\sqrt{{{a}}}",
    r"\langle {a}, {b} \rangle",
    r"\|{a}\|_{{{norm}}}",
    r"\operatorname{{{op}}}({a})",
    r"\mathbb{{E}}\left[ {a} \right]",
    "{a} {bin} {b}",
    "{a} {bin} {b}",
    "{a} {bin} {b}",
)
_EXPR_PARTS = {
    "s": r"_{i=1}^{n} _{k=0}^{\infty} _{j=1}^{N} _{n\geq1}".split(),
    "lim": r"_{\Omega} _{\mathbb{R}^{d}} _{0}^{1} _{0}^{T} _{\partial\Omega} _{M}".split(),
    "dx": "xtsy",
    "norm": r"L^{2} L^{p}(\Omega) H^{1} \infty 2 \mathrm{op} C^{\alpha}".split(),
    "op": "Tr div supp Var rank dist sgn".split(),
    "bin": r"+ - \cdot \otimes \times \circ".split(),
}
_RELATIONS = r"= = \leq \geq < \to \sim \approx \in \subset \lesssim".split()

_HEADINGS = {
    "background": ("Preliminaries", "Background", "Notation and Preliminaries", "Related Work", "Setting"),
    "method": ("Method", "Methodology", "The Construction", "Our Approach", "Proposed Algorithm", "The Model"),
    "results": ("Main Results", "Results", "Experiments", "Numerical Experiments", "Estimates", "Analysis"),
    "proof": ("Proof of the Main Theorem", "Proofs", "Proof of Theorem 1"),
    "discussion": ("Discussion", "Remarks and Open Problems", "Further Discussion"),
    "conclusion": ("Conclusion", "Conclusions", "Summary and Outlook", "Concluding Remarks"),
    "appendix": ("Auxiliary Lemmas", "Technical Details", "Additional Proofs", "Computations"),
}
# (label, share of the length budget, probability a paper has it); "proof" only in math-heavy papers.
_SECTION_PLAN = (
    ("background", 1.0, 0.7),
    ("method", 1.2, 0.6),
    ("results", 1.8, 1.0),
    ("proof", 1.2, 0.35),
    ("discussion", 0.6, 0.45),
    ("conclusion", 0.4, 0.7),
    ("appendix", 0.8, 0.3),
)
_THEOREM_PREFIXES = {
    "theorem": "thm",
    "lemma": "lem",
    "proposition": "prop",
    "corollary": "cor",
    "definition": "def",
    "remark": "rem",
}
_THEOREM_SECTIONS = frozenset(("background", "method", "results", "appendix"))
assert set(_HEADINGS) | {"title", "abstract", "introduction", "other"} == set(SECTION_LABELS)

_KEPT_CATEGORIES = (
    "math.AP math.FA math.PR math.NT math.AG math.CO math.DG math.OC math.NA cs.LG cs.CL cs.IT "
    "cs.DS cs.CC cs.AI hep-th hep-ph quant-ph stat.ML stat.TH"
).split()
_DROPPED_CATEGORIES = "astro-ph.CO astro-ph.GA astro-ph.HE cond-mat.stat-mech cond-mat.str-el cond-mat.mes-hall".split()
_MATHY_PREFIXES = ("math", "hep-th", "stat.TH", "quant-ph")


def pick(rng: np.random.Generator, options):
    return options[int(rng.random() * len(options))]


def _fill(rng: np.random.Generator, template: str, parts: dict, **given: str) -> str:
    """Format ``template``, drawing every table in ``parts`` with one RNG call (speed matters here)."""
    draws = rng.random(len(parts)).tolist()
    return template.format(
        **{name: table[int(u * len(table))] for (name, table), u in zip(parts.items(), draws)}, **given
    )


def _pseudo_words(count: int) -> tuple[str, ...]:
    """Invented words built from syllables, so a tokenizer sees a realistic long tail."""
    onsets = "b c d f g h k l m n p r s t v z br cr dr gr pl pr st tr ch sh th ph qu sc".split()
    vowels = "a e i o u ai ea io ou y".split()
    codas = ["", "", "", "n", "r", "s", "l", "m", "t", "x", "nd", "st", "ng"]
    suffixes = [""] * 14 + "ation ity ic al ize ous ment ial ive oid".split()
    rng, seen, words = np.random.default_rng(20240229), set(_COMMON_WORDS), list[str]()
    while len(words) < count:
        tables = (onsets, vowels, codas) * (3 if rng.random() < 0.15 else 2) + (suffixes,)
        word = "".join(table[int(u * len(table))] for table, u in zip(tables, rng.random(len(tables))))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return tuple(words)


PSEUDO_WORDS = _pseudo_words(4000)
_VOCAB = np.array(_COMMON_WORDS + PSEUDO_WORDS, dtype=object)
_ZIPF = 1.0 / (np.arange(1, len(_VOCAB) + 1) + 2.7)  # Zipf-Mandelbrot: "the" near 4%, as in real prose
_VOCAB_CDF = np.cumsum(_ZIPF) / _ZIPF.sum()


class _Text:
    """Accumulates text while recording section spans and math characters as they are written."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = self.math_chars = 0
        self.starts: list[tuple[str, int]] = []

    def label(self, label: str) -> None:
        if not self.starts or self.starts[-1][0] != label:
            self.starts.append((label, self.length))

    def add(self, piece: str, math_chars: int = 0) -> None:
        self.parts.append(piece)
        self.length += len(piece)
        self.math_chars += math_chars

    def math(self, piece: str) -> None:
        self.add(piece, len(piece))

    def spans(self) -> list[dict]:
        ends = [start for _, start in self.starts[1:]] + [self.length]
        return [{"label": label, "start": start, "end": end} for (label, start), end in zip(self.starts, ends)]


class _PaperWriter:
    """Writes one paper body; the primary category decides how math-heavy it is."""

    def __init__(self, rng: np.random.Generator, categories: list[str]) -> None:
        self.rng, self.text = rng, _Text()
        self.mathy = categories[0].startswith(_MATHY_PREFIXES)
        self.jargon = np.array([pick(rng, PSEUDO_WORDS) for _ in range(24)], dtype=object)
        self.cite_keys = [f"{pick(rng, PSEUDO_WORDS)}{rng.integers(1950, 2025)}" for _ in range(rng.integers(6, 25))]
        self.equation_labels: list[str] = []
        self.theorem_labels: list[tuple[str, str]] = []
        self.section_labels = ["sec:introduction"]

    def words(self, count: int) -> list[str]:
        """Zipf-distributed words, with the paper's own jargon mixed in as a real topic would."""
        rng = self.rng
        words = _VOCAB[np.minimum(np.searchsorted(_VOCAB_CDF, rng.random(count)), len(_VOCAB) - 1)]
        topical = rng.random(count) < 0.08
        words[topical] = self.jargon[rng.integers(0, len(self.jargon), int(topical.sum()))]
        return words.tolist()

    def expr(self, depth: int) -> str:
        rng = self.rng
        if depth <= 0 or rng.random() < 0.3:
            return _fill(rng, pick(rng, _ATOM_TEMPLATES), _ATOM_PARTS)
        template = pick(rng, _EXPR_TEMPLATES)
        second = self.expr(depth - 1) if "{b}" in template else ""
        return _fill(rng, template, _EXPR_PARTS, a=self.expr(depth - 1), b=second)

    def relation(self, depth: int) -> str:
        return f"{self.expr(depth)} {pick(self.rng, _RELATIONS)} {self.expr(depth)}"

    def inline_math(self) -> str:
        body = self.relation(1) if self.rng.random() < 0.4 else self.expr(1)
        return rf"\({body}\)" if self.rng.random() < 0.15 else f"${body}$"

    def display_math(self) -> str:
        rng, kind = self.rng, self.rng.random()
        if kind < 0.35:
            return f"\\[\n{self.relation(3)}\n\\]"
        if kind < 0.75:
            self.equation_labels.append(f"eq:{pick(rng, PSEUDO_WORDS)}")
            return f"\\begin{{equation}}\n{self.relation(3)}\n\\label{{{self.equation_labels[-1]}}}\n\\end{{equation}}"
        env = pick(rng, ("align", "align*"))
        lines = [f"{self.expr(2)} &= {self.expr(2)}"]
        lines += [f"&{pick(rng, _RELATIONS)} {self.expr(2)}" for _ in range(int(rng.integers(1, 4)))]
        return f"\\begin{{{env}}}\n" + " \\\\\n".join(lines) + f"\n\\end{{{env}}}"

    def ref(self) -> str:
        rng, kind = self.rng, self.rng.random()
        if kind < 0.4 and self.equation_labels:
            key = pick(rng, self.equation_labels)
            return rf"\eqref{{{key}}}" if kind < 0.2 else rf"(\ref{{{key}}})"
        if kind < 0.75 and self.theorem_labels:
            env, key = pick(rng, self.theorem_labels)
            return rf"{env.capitalize()}~\ref{{{key}}}"
        return rf"Section~\ref{{{pick(rng, self.section_labels)}}}"

    def aside(self, kind: float, allow_refs: bool) -> str:
        """What may follow a word: citation, reference, emphasis, a famous name, a number, or nothing."""
        rng = self.rng
        if kind < 0.012 and allow_refs:
            return r"~\cite{" + ",".join(pick(rng, self.cite_keys) for _ in range(1 + (rng.random() < 0.25))) + "}"
        if kind < 0.02 and allow_refs:
            return " " + self.ref()
        if kind < 0.03:
            return rf" \emph{{{' '.join(self.words(2))}}}"
        if kind < 0.037:
            return " " + (
                pick(rng, _GREEK_PHRASES) if rng.random() < 0.3 else f"{pick(rng, _NAMES)} {pick(rng, _NAMED_NOUNS)}"
            )
        if kind < 0.047:
            low, width, shape = int(rng.integers(1, 2000)), int(rng.integers(1, 40)), rng.random()
            return f" {low}" if shape < 0.4 else f" {low / 97:.2f}" if shape < 0.7 else f" {low}–{low + width}"
        return ""

    def sentences(self, n_words: int, allow_refs: bool = True, final: str = ".", capitalize: bool = True) -> None:
        """Prose: Zipf words broken into sentences, sprinkled with inline math, citations, names and numbers."""
        rng, pieces, math_chars = self.rng, [], 0
        words, kinds = self.words(n_words), rng.random(n_words).tolist()
        stops = (rng.random(n_words) < 0.075).tolist()
        math_rate, at_start = (0.06 if self.mathy else 0.03), capitalize
        for i, word in enumerate(words):
            if at_start:
                if rng.random() < 0.2:
                    word = (f"By {self.ref()}, " if allow_refs and rng.random() < 0.15 else pick(rng, _OPENERS)) + word
                else:
                    word = word.capitalize()
            pieces.append(word)
            if kinds[i] < math_rate:
                formula = self.inline_math()
                pieces += (" ", formula)
                math_chars += len(formula)
            elif kinds[i] < math_rate + 0.05:
                pieces.append(self.aside(kinds[i] - math_rate, allow_refs))
            at_start = stops[i] and i < n_words - 1
            pieces.append(final if i == n_words - 1 else ". " if at_start else " ")
        self.text.add("".join(pieces), math_chars)

    def display_block(self) -> None:
        rng = self.rng
        self.sentences(int(rng.integers(10, 40)), final=pick(rng, (":", ",", "")))
        self.text.add("\n")
        self.text.math(self.display_math())
        if rng.random() < 0.6:
            self.text.add("\nwhere ")
            self.sentences(int(rng.integers(8, 30)), capitalize=False)

    def theorem_block(self) -> None:
        """A theorem-like environment, usually followed by a proof that gets its own span."""
        rng, text = self.rng, self.text
        env = pick(rng, tuple(_THEOREM_PREFIXES))
        key = f"{_THEOREM_PREFIXES[env]}:{pick(rng, PSEUDO_WORDS)}"
        self.theorem_labels.append((env, key))
        name = f"[{pick(rng, _NAMES)} {pick(rng, _NAMED_NOUNS)}]" if rng.random() < 0.15 else ""
        text.add(f"\\begin{{{env}}}{name}\\label{{{key}}}\n")
        self.sentences(int(rng.integers(15, 50)))
        if rng.random() < 0.4:
            text.add("\n")
            text.math(self.display_math())
        text.add(f"\n\\end{{{env}}}\n\n")
        if env in ("definition", "remark") or rng.random() < 0.2:
            return
        text.label("proof")
        text.add("\\begin{proof}\n")
        if rng.random() < 0.6:
            self.display_block()
        else:
            self.sentences(int(rng.integers(30, 90)))
        text.add("\n\\end{proof}\n\n")

    def itemize(self) -> None:
        env = pick(self.rng, ("itemize", "itemize", "enumerate"))
        self.text.add(f"\\begin{{{env}}}\n")
        for _ in range(int(self.rng.integers(2, 6))):
            self.text.add("\\item ")
            self.sentences(int(self.rng.integers(6, 25)))
            self.text.add("\n")
        self.text.add(f"\\end{{{env}}}\n\n")

    def block(self, label: str) -> None:
        """One paragraph-level unit of a section; math-heavy papers get more displays and theorems."""
        kind = self.rng.random()
        self.text.label(label)
        theorem_rate = 0.22 if self.mathy and label in _THEOREM_SECTIONS else 0.0
        display_rate = theorem_rate + (0.2 if self.mathy else 0.1)
        if kind < theorem_rate:
            self.theorem_block()
        elif kind < display_rate:
            self.display_block()
            self.text.add("\n\n")
        elif kind < display_rate + 0.07:
            self.itemize()
        else:
            self.sentences(int(self.rng.integers(40, 140)))
            self.text.add("\n\n")

    def section(self, label: str, heading: str, budget: float) -> None:
        key = "sec:" + re.sub(r"[^a-z0-9]+", "-", heading.lower())
        self.section_labels.append(key)
        self.text.label(label)
        self.text.add(f"\\section{{{heading}}}\\label{{{key}}}\n\n")
        start = self.text.length
        while self.text.length - start < budget:
            if self.text.length > start and self.rng.random() < 0.12:
                self.text.label(label)
                self.text.add(f"\\subsection{{{' '.join(self.words(int(self.rng.integers(2, 5)))).capitalize()}}}\n\n")
            self.block(label)

    def title(self) -> str:
        rng = self.rng
        topic = [pick(rng, _CONTENT_WORDS if rng.random() < 0.5 else self.jargon).capitalize() for _ in range(5)]
        words = pick(rng, _TITLE_TEMPLATES).format(
            **dict(zip("abcde", topic)), name=pick(rng, _NAMES), noun=pick(rng, _NAMED_NOUNS).capitalize()
        )
        math = f"${self.expr(0)}$" if rng.random() < 0.25 else ""
        self.text.label("title")
        self.text.add(r"\title{" + words + (" in " if math else ""))
        self.text.math(math)
        self.text.add("}\n\n")
        return words + (f" in {math}" if math else "")

    def acknowledgments(self) -> None:
        rng = self.rng
        names = [f"{pick(rng, FIRST_NAMES)} {pick(rng, LAST_NAMES)}" for _ in range(2)]
        grant = pick(rng, ("NSF grant DMS-", "ERC grant No. ", "DFG project ", "JSPS KAKENHI grant "))
        self.text.label("other")
        self.text.add(
            f"\\section*{{Acknowledgments}}\n\nWe thank {names[0]} and {names[1]} for helpful "
            f"discussions. This work was supported by {grant}{rng.integers(100000, 999999)}.\n\n"
        )

    def record(self, arxiv_id: str, year: int, categories: list[str]) -> dict:
        rng = self.rng
        target = 4000 + 15000 * rng.beta(1.6, 2.4)
        title = self.title()
        self.text.label("abstract")
        self.text.add("\\begin{abstract}\n")
        self.sentences(int(rng.integers(80, 220)), allow_refs=False)
        self.text.add("\n\\end{abstract}\n\n")
        plan = [("introduction", "Introduction", 1.3)] + [
            (label, pick(rng, _HEADINGS[label]), share)
            for label, share, chance in _SECTION_PLAN
            if rng.random() < chance and (self.mathy or label != "proof")
        ]
        budget_per_share = max(target - self.text.length, 1500.0) / sum(share for _, _, share in plan)
        thanks_pending = rng.random() < 0.45
        for label, heading, share in plan:
            if label == "appendix":
                if thanks_pending:
                    self.acknowledgments()
                    thanks_pending = False
                self.text.label("appendix")
                self.text.add("\\appendix\n\n")
            self.section(label, heading, share * budget_per_share)
        if thanks_pending:
            self.acknowledgments()
        text = "".join(self.text.parts)
        return {
            "id": arxiv_id,
            "title": title,
            "text": text,
            "sections": self.text.spans(),
            "categories": categories,
            "year": year,
            "math_fraction": round(self.text.math_chars / len(text), 6),
            "source": f"synthetic/{arxiv_id}",
            "encoding": "utf-8",
        }


def _draw_categories(rng: np.random.Generator, old_style: bool) -> list[str]:
    """Primary first; ~10% come from archives (astro-ph, cond-mat) that a corpus filter is expected to drop."""
    pool = _DROPPED_CATEGORIES if rng.random() < 0.1 else _KEPT_CATEGORIES
    pool = [c for c in pool if not (old_style and c.startswith("stat"))]
    primary = pick(rng, pool)
    siblings = [c for c in pool if c != primary and c[:4] == primary[:4]] or [c for c in pool if c != primary]
    return [primary] + sorted({pick(rng, siblings) for _ in range(int(rng.integers(0, 3)))})


def _draw_id(rng: np.random.Generator, primary: str, old_style: bool) -> tuple[str, int]:
    """An arXiv id and its year: old-style ids predate April 2007, new-style ones follow it."""
    if old_style:
        yy = int(rng.integers(0, 8))
        mm = int(rng.integers(1, 13 if yy < 7 else 4))
        return f"{primary.split('.')[0]}/{yy:02d}{mm:02d}{rng.integers(1, 1000):03d}", 2000 + yy
    yy = 7 + int(19 * rng.random() ** 0.7)
    mm = int(rng.integers(4 if yy == 7 else 1, 13))
    number = f"{rng.integers(1, 10000):04d}" if yy * 100 + mm < 1501 else f"{rng.integers(1, 25000):05d}"
    return f"{yy:02d}{mm:02d}.{number}", 2000 + yy


def generate_papers(n: int, seed: int = 0) -> Iterator[dict]:
    """Yield ``n`` synthetic paper records; a shorter run is a prefix of a longer one with the same seed."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    for _ in range(n):
        old_style = rng.random() < 0.1
        categories = _draw_categories(rng, old_style)
        arxiv_id, year = _draw_id(rng, categories[0], old_style)
        while arxiv_id in seen:
            arxiv_id, year = _draw_id(rng, categories[0], old_style)
        seen.add(arxiv_id)
        yield _PaperWriter(rng, categories).record(arxiv_id, year, categories)


def write_lines_atomically(path: str | os.PathLike, lines: Iterable[str]) -> int:
    """Write text lines compressed by extension; readers never see half a file."""
    count = 0
    with atomic_text_output(path) as out:
        for line in lines:
            out.write(line + "\n")
            count += 1
    return count


def write_corpus_jsonl(path: str | os.PathLike, n: int, seed: int = 0) -> int:
    """Write ``n`` records as JSON lines (``.jsonl``, ``.jsonl.gz`` or ``.jsonl.zst``); returns the count."""
    return write_lines_atomically(path, (json.dumps(r, ensure_ascii=False) for r in generate_papers(n, seed)))

"""Stack Exchange data dumps' `Posts.xml` as conversations: each question with its accepted answer.

Posts are streamed with expat (no tree in memory), bodies turned from Stack Exchange's rendered HTML
back to plain text (LaTeX untouched), and each pair becomes an `Example` (conversations.py) whose
sidecar line holds the site, ids, tags and scores. Rows that are malformed are `Skip`s with their
line and row id; posts that are not question/answer pairs are counted in one `Ignored`.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from xml.parsers import expat

from megasci.data.conversations import Example, Ignored, Skip
from megasci.utils.io import open_binary

XML_SUFFIXES = (".xml", ".xml.gz", ".xml.zst")


class _HtmlToText(HTMLParser):
    """Stack Exchange's rendered HTML back to plain text: paragraphs, lists, quotes and code kept as
    text, inline code in backticks, code blocks fenced; text itself (LaTeX included) is untouched."""

    BLOCKS = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr", "ul", "ol", "dl"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.pending_breaks = 0
        self.pre = 0
        self.quote = 0
        self.lists: list[list] = []  # [ordered, next number]

    def _break(self, newlines: int) -> None:
        self.pending_breaks = max(self.pending_breaks, newlines)

    def _emit(self, text: str) -> None:
        if self.pending_breaks:
            while self.parts and not self.parts[-1].strip():
                self.parts.pop()
            if self.parts:
                self.parts[-1] = self.parts[-1].rstrip()
                self.parts.append("\n" * self.pending_breaks + "> " * self.quote)
            elif self.quote:
                self.parts.append("> " * self.quote)
            self.pending_breaks = 0
        elif not self.parts and self.quote:
            self.parts.append("> " * self.quote)
        self.parts.append(text)

    def handle_starttag(self, tag, attrs):
        if tag in self.BLOCKS:
            self._break(2)
            if tag in ("ul", "ol"):
                self.lists.append([tag == "ol", 1])
        elif tag == "li":
            self._break(1)
            ordered = self.lists[-1] if self.lists else [False, 1]
            self._emit(f"{ordered[1]}. " if ordered[0] else "- ")
            ordered[1] += 1
        elif tag == "blockquote":
            self._break(2)
            self.quote += 1
        elif tag == "pre":
            self._break(2)
            self._emit("```")
            self._break(1)
            self.pre += 1
        elif tag == "code" and not self.pre:
            self._emit("`")
        elif tag == "br":
            self._emit("\n")
        elif tag == "hr":
            self._break(2)
            self._emit("---")
            self._break(2)
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self._emit(alt)

    def handle_endtag(self, tag):
        if tag in self.BLOCKS:
            self._break(2)
            if tag in ("ul", "ol") and self.lists:
                self.lists.pop()
        elif tag == "blockquote":
            self._break(2)
            self.quote = max(0, self.quote - 1)
        elif tag == "pre" and self.pre:
            self.pre -= 1
            if self.parts and not self.parts[-1].endswith("\n"):
                self.parts.append("\n")
            self.parts.append("> " * self.quote + "```")
            self._break(2)
        elif tag == "code" and not self.pre:
            self._emit("`")

    def handle_data(self, data):
        if self.pre:
            self._emit(data)
        elif data.strip():
            self._emit(data.lstrip() if self.pending_breaks or not self.parts else data)
        elif self.parts and not self.pending_breaks:
            self.parts.append(data)  # the space between two inline elements; dropped before a block

    def text(self) -> str:
        self.close()
        return "".join(self.parts).strip()


def html_to_text(html: str) -> str:
    parser = _HtmlToText()
    parser.feed(html)
    return parser.text()


_ANGLE_TAGS = re.compile(r"<([^<>]+)>")


def parse_tags(tags: str | None) -> list[str]:
    """`<a><b>` (dumps before 2024) or `|a|b|` (2024) as ["a", "b"]."""
    if not tags:
        return []
    if tags.startswith("<"):
        return _ANGLE_TAGS.findall(tags)
    return [t for t in tags.split("|") if t]


def iter_post_rows(path: str) -> Iterator[tuple[int, dict]]:
    """(line, attributes) of every <row> element, streamed: expat keeps no tree, so memory stays flat.

    Raises expat.ExpatError (with .lineno) where the XML stops being well formed, after the rows before it.
    """
    parser = expat.ParserCreate()
    rows: list[tuple[int, dict]] = []

    def start(name, attributes):
        if name == "row":
            rows.append((parser.CurrentLineNumber, attributes))

    parser.StartElementHandler = start
    with open_binary(path) as f:
        while True:
            chunk = f.read(1 << 20)
            try:
                parser.Parse(chunk, not chunk)
            finally:
                yield from rows
                rows.clear()
            if not chunk:
                return


def _row_int(row: dict, name: str) -> int | None:
    value = row.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _row_where(path: str, line: int, row: dict) -> str:
    return f"{path}:{line} (row Id {row['Id']})" if "Id" in row else f"{path}:{line}"


def iter_stackexchange(path: str, min_score: int | None = None) -> Iterator[Example | Skip | Ignored]:
    """Each question of a `Posts.xml` with its accepted answer, as a user/assistant conversation.

    Two passes, neither holding bodies it does not need. The first maps accepted answer ids to their
    questions (ids only) and reports bad rows. The second keeps, for each such pair, whichever post
    comes first until its partner arrives (dumps are not in Id order: the 2024 one groups rows by
    post type), then emits the pair. Questions without an accepted answer and other post types are
    counted in one closing `Ignored`.
    """
    site = os.path.basename(os.path.dirname(os.path.abspath(path)))
    source = f"stackexchange/{site}"
    accepted: dict[int, int] = {}  # answer id -> question id
    ignored = collections.Counter()
    try:
        for line, row in iter_post_rows(path):
            post_id, post_type = _row_int(row, "Id"), _row_int(row, "PostTypeId")
            if post_id is None or post_type is None:
                missing = "Id" if post_id is None else "PostTypeId"
                yield Skip(_row_where(path, line, row), "bad_row", f"no integer {missing} ({row.get(missing)!r})")
                continue
            if post_type == 1:
                answer = _row_int(row, "AcceptedAnswerId")
                if answer is not None:
                    accepted[answer] = post_id
                elif "AcceptedAnswerId" in row:
                    yield Skip(
                        _row_where(path, line, row),
                        "bad_row",
                        f"AcceptedAnswerId {row['AcceptedAnswerId']!r} is not an integer",
                    )
                else:
                    ignored["question_without_accepted_answer"] += 1
            elif post_type != 2:
                ignored[f"post_type_{post_type}"] += 1
    except expat.ExpatError as e:
        yield Skip(
            f"{path}:{e.lineno}",
            "bad_xml",
            f"not well-formed XML ({expat.ErrorString(e.code)}); the rest of the file is unread",
        )
    questions_wanted = set(accepted.values())
    held_questions: dict[int, tuple[str, dict]] = {}
    held_answers: dict[int, tuple[str, dict]] = {}
    try:
        for line, row in iter_post_rows(path):
            post_id, post_type = _row_int(row, "Id"), _row_int(row, "PostTypeId")
            where = _row_where(path, line, row)
            if post_type == 1 and post_id in questions_wanted:
                if post_id in held_answers:
                    yield _pair(source, site, (where, row), held_answers.pop(post_id), min_score)
                else:
                    held_questions[post_id] = (where, row)
            elif post_type == 2 and post_id in accepted:
                question = accepted[post_id]
                if _row_int(row, "ParentId") != question:
                    yield Skip(
                        where, "bad_row", f"accepted answer of question {question} has ParentId {row.get('ParentId')!r}"
                    )
                    questions_wanted.discard(question)
                    held_questions.pop(question, None)
                elif question in held_questions:
                    yield _pair(source, site, held_questions.pop(question), (where, row), min_score)
                else:
                    held_answers[question] = (where, row)
    except expat.ExpatError:
        pass  # reported by the first pass, which stopped at the same place
    for _question, (where, row) in held_questions.items():
        yield Skip(
            where, "accepted_answer_missing", f"accepted answer {row.get('AcceptedAnswerId')} is not in the file"
        )
    if ignored:
        yield Ignored(dict(ignored))


def _pair(
    source: str, site: str, question: tuple[str, dict], answer: tuple[str, dict], min_score: int | None
) -> Example | Skip:
    (where, q), (answer_where, a) = question, answer
    for post, post_where in ((q, where), (a, answer_where)):
        if _row_int(post, "Score") is None:
            return Skip(post_where, "bad_row", f"no integer Score ({post.get('Score')!r})")
        if post.get("Body") is None:
            return Skip(post_where, "bad_row", "no Body")
    if q.get("Title") is None:
        return Skip(where, "bad_row", "question has no Title")
    score, answer_score = _row_int(q, "Score"), _row_int(a, "Score")
    if min_score is not None and min(score, answer_score) < min_score:
        return Skip(
            where, "score_below_minimum", f"question score {score}, answer score {answer_score} (minimum {min_score})"
        )
    question_text = html_to_text(q["Body"])
    messages = [
        {"role": "user", "content": f"{q['Title'].strip()}\n\n{question_text}".strip()},
        {"role": "assistant", "content": html_to_text(a["Body"])},
    ]
    meta = {
        "source": source,
        "id": f"{site}/{q['Id']}",
        "answer_id": int(a["Id"]),
        "tags": parse_tags(q.get("Tags")),
        "score": score,
        "answer_score": answer_score,
    }
    return Example(where, messages, meta)

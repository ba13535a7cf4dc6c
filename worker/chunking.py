"""Chunking long inputs the way Elasticsearch's ``chunking_settings`` describe, as a pure function.

Every chunk carries character offsets into the original text (``text[start:end]`` is the chunk).
Elasticsearch is written in Java, whose strings count UTF-16 code units: ``semantic_text`` stores,
and its chunked-inference results report, offsets in those units (``ChunkedInference.TextOffset``
indexes the Java ``String``). A character outside the Basic Multilingual Plane (most emoji) is one
Python character but two Java ones, so offsets go out through :func:`utf16_index`.

- ``word``: windows of ``max_chunk_size`` words; consecutive windows share ``overlap`` words.
- ``sentence``: whole sentences packed into chunks of at most ``max_chunk_size`` words; with
  ``sentence_overlap: 1`` each chunk starts with the last sentence of the one before. A sentence
  longer than ``max_chunk_size`` words is split into word windows.
- ``none``: the whole input is one chunk.
- ``recursive`` (Elasticsearch 9.1+): split at ``separators`` (regular expressions, or a
  ``separator_group``: ``plaintext`` splits at paragraphs then lines, ``markdown`` at headings then
  horizontal rules), merging neighbouring pieces up to ``max_chunk_size`` words; a piece still too
  long is split at the next separator, and past the last one into sentences.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WORD = re.compile(r"\S+")
# A sentence ends at . ! ? (or their CJK forms) followed by white space, or at a blank line.
SENTENCE_END = re.compile(r"(?<=[.!?\u3002\uff01\uff1f])[\"')\]\u201d\u2019]*\s+|\n\s*\n")


# Characters that UTF-16 writes as a surrogate pair (two code units).
ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def utf16_index(text: str) -> Callable[[int], int]:
    """Maps a character index of ``text`` to its UTF-16 code-unit index (what Java's String.substring takes)."""
    astral = [m.start() for m in ASTRAL.finditer(text)]
    if not astral:
        return lambda i: i
    return lambda i: i + bisect.bisect_left(astral, i)


@dataclass(frozen=True)
class Chunk:
    start: int
    end: int


def _words(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    end = len(text) if end is None else end
    return [(m.start(), m.end()) for m in WORD.finditer(text, start, end)]


def _windows(words: list[tuple[int, int]], size: int, overlap: int) -> list[Chunk]:
    if not words:
        return []
    step = max(1, size - overlap)
    chunks = []
    i = 0
    while True:
        window = words[i : i + size]
        chunks.append(Chunk(window[0][0], window[-1][1]))
        if i + size >= len(words):
            return chunks
        i += step


def word_chunks(text: str, max_chunk_size: int, overlap: int) -> list[Chunk]:
    return _windows(_words(text), max_chunk_size, overlap) or [Chunk(0, len(text))]


def sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans (trimmed of surrounding white space), in order."""
    spans = []
    start = 0
    for m in SENTENCE_END.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    out = []
    for s, e in spans:
        words = _words(text, s, e)
        if words:
            out.append((words[0][0], words[-1][1]))
    return out


def sentence_chunks(text: str, max_chunk_size: int, sentence_overlap: int) -> list[Chunk]:
    units: list[tuple[int, int, int]] = []  # (start, end, words), long sentences already split
    for s, e in sentences(text):
        words = _words(text, s, e)
        if len(words) > max_chunk_size:
            units += [(c.start, c.end, len(_words(text, c.start, c.end))) for c in _windows(words, max_chunk_size, 0)]
        else:
            units.append((s, e, len(words)))
    if not units:
        return [Chunk(0, len(text))]
    chunks: list[Chunk] = []
    i = 0
    while i < len(units):
        j, count = i, 0
        while j < len(units) and count + units[j][2] <= max_chunk_size:
            count += units[j][2]
            j += 1
        j = max(j, i + 1)
        chunks.append(Chunk(units[i][0], units[j - 1][1]))
        if j >= len(units):
            break
        # Start the next chunk with the last sentence of this one, when it fits beside the next sentence and
        # the chunk held more than that sentence (so every chunk moves forward).
        overlap_fits = units[j - 1][2] + units[j][2] <= max_chunk_size
        i = j - 1 if sentence_overlap and j - 1 > i and overlap_fits else j
    return chunks


# Elasticsearch's separator groups for the recursive strategy (regular expressions, tried in order).
SEPARATOR_GROUPS: dict[str, list[str]] = {
    "plaintext": [r"(?<!\n)\n\n(?!\n)", r"(?<!\n)\n(?!\n)"],
    "markdown": [r"\n# ", r"\n## ", r"\n### ", r"\n#### ", r"\n##### ", r"\n###### ",
                 r"\n^(?!\s*$).*\n\*{3,}\n", r"\n^(?!\s*$).*\n-{3,}\n", r"\n^(?!\s*$).*\n_{3,}\n"],
}


# User-given separators are regular expressions run on every input: a pattern that backtracks catastrophically
# (``(a+)+$``) must not stall a worker. Such shapes are refused when the endpoint is created
# (:func:`separator_errors`), and every search runs with a time limit (the ``regex`` module's ``timeout``).
MAX_SEPARATOR_LENGTH = 256
SEPARATOR_TIMEOUT_S = 1.0


class SeparatorTimeout(ValueError):
    """A separator took longer than :data:`SEPARATOR_TIMEOUT_S` on one input (a 400, never a stalled worker)."""


def separator_errors(pattern: str) -> list[str]:
    """Why a user-given separator is refused: not a regular expression, too long, a back-reference, or a
    quantified group that holds an unbounded quantifier (``(a+)+``, ``(\\s*\\w+)*``: exponential backtracking)."""
    from re import _constants as c, _parser  # the standard library's own regex parser

    if len(pattern) > MAX_SEPARATOR_LENGTH:
        return [f"[separators] holds a regular expression longer than {MAX_SEPARATOR_LENGTH} characters"]
    try:
        tree = _parser.parse(pattern)
    except re.error as exc:
        return [f"[separators] holds an invalid regular expression [{pattern}]: {exc}"]
    repeats = (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT)
    problems: list[str] = []

    def walk(items: Any, inside_repeat: bool) -> None:
        for op, av in items:
            if op in (c.GROUPREF, c.GROUPREF_EXISTS):
                problems.append("back-references")
            if op in repeats:
                low, high, sub = av
                if inside_repeat and high == c.MAXREPEAT:
                    problems.append("nested quantifiers")
                walk(sub, inside_repeat or high > 1)
            elif op == c.SUBPATTERN:
                walk(av[3], inside_repeat)
            elif op in (c.ASSERT, c.ASSERT_NOT):
                walk(av[1], inside_repeat)
            elif op == c.ATOMIC_GROUP:
                walk(av, inside_repeat)
            elif op == c.BRANCH:
                for branch in av[1]:
                    walk(branch, inside_repeat)
            elif op == c.GROUPREF_EXISTS:
                walk(av[1], inside_repeat)
                if av[2] is not None:
                    walk(av[2], inside_repeat)

    walk(tree, False)
    if problems:
        return [f"[separators] regular expression [{pattern}] is refused: {sorted(set(problems))[0]} can backtrack "
                "catastrophically; use a simpler pattern"]
    return []


def recursive_chunks(text: str, max_chunk_size: int, separators: list[str],
                     timeout: float = SEPARATOR_TIMEOUT_S) -> list[Chunk]:
    """Split at the first separator; merge neighbouring pieces up to ``max_chunk_size`` words; split a piece
    still too long at the next separator; past the last one, fall back to sentence chunks."""
    import regex

    patterns = [regex.compile(p, regex.MULTILINE) for p in separators]

    def matches(level: int, start: int, end: int) -> list[int]:
        try:
            return [m.start() for m in patterns[level].finditer(text, start, end, timeout=timeout)
                    if start < m.start() < end]
        except TimeoutError:
            raise SeparatorTimeout(f"[separators] regular expression [{separators[level]}] took longer than "
                                   f"{timeout:g}s on an input of {len(text)} characters; use a simpler pattern"
                                   ) from None

    def count(start: int, end: int) -> int:
        return len(_words(text, start, end))

    def split(start: int, end: int, level: int) -> list[Chunk]:
        if count(start, end) <= max_chunk_size:
            return [Chunk(start, end)]
        if level >= len(patterns):
            return [Chunk(start + c.start, start + c.end)
                    for c in sentence_chunks(text[start:end], max_chunk_size, 0)]
        # A piece ends where the next separator match starts (the separator opens the next piece).
        cuts = matches(level, start, end)
        if not cuts:
            return split(start, end, level + 1)
        bounds = [start, *cuts, end]
        pieces = list(zip(bounds, bounds[1:]))
        out: list[Chunk] = []
        i = 0
        while i < len(pieces):
            j, words = i, 0
            while j < len(pieces) and words + count(*pieces[j]) <= max_chunk_size:
                words += count(*pieces[j])
                j += 1
            if j == i:  # one piece too long on its own: the next separator splits it
                out += split(pieces[i][0], pieces[i][1], level + 1)
                i += 1
            else:
                out.append(Chunk(pieces[i][0], pieces[j - 1][1]))
                i = j
        return out

    return [c for c in split(0, len(text), 0) if c.end > c.start] or [Chunk(0, len(text))]


def chunk(text: str, settings: dict[str, Any]) -> list[Chunk]:
    strategy = settings.get("strategy", "sentence")
    if strategy == "none":
        return [Chunk(0, len(text))]
    size = int(settings.get("max_chunk_size") or 250)
    if strategy == "recursive":
        separators = settings.get("separators") or SEPARATOR_GROUPS[settings.get("separator_group") or "plaintext"]
        return recursive_chunks(text, size, list(separators))
    if strategy == "word":
        return word_chunks(text, size, int(settings.get("overlap") or 0))
    overlap = settings.get("sentence_overlap")
    return sentence_chunks(text, size, 1 if overlap is None else int(overlap))

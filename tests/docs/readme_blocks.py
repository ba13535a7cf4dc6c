"""README as tests: which blocks of README.md run, in what order, and what output they must show.

Rules (README.md's Development section says the same to authors):

- Every ```bash, ```sh and ```python block runs, in the README's order, against one
  ``infernetes serve --demo`` started the way the Quick start starts it. The only change made to a
  block: ``127.0.0.1:9200`` / ``localhost:9200`` become the test server's address.
- A block that cannot run here (a real cluster, a model hub, docker) is preceded by the marker
  ``<!-- readme-test: skip -->`` and, visibly, a paragraph beginning "*Not run by the README test:"
  that says why. A marker without that visible line is an error.
- Output shown in the README is compared where it is deterministic:
  - a ```json or ```text block that directly follows a run block is that block's output;
  - inside a shell block, a comment group whose first line is ``# {`` (continued by ``#  ``
    lines) shows the output of the command above it.
  ``...`` (or ``…``) stands for anything; numbers written with decimals match within one unit of
  their last decimal or 0.01 % of their value, whichever is larger (a model's float32 output varies in
  its last digits across CPUs, instruction sets and batch shapes); whitespace is ignored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from markdown_it import MarkdownIt

RUN_LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "console": "bash", "python": "python", "py": "python"}
OUTPUT_LANGS = {"json", "text", ""}
SKIP_MARKER = re.compile(r"<!--\s*readme-test:\s*skip\s*-->")
ANY_MARKER = re.compile(r"<!--\s*readme-test:\s*([a-z-]+)\s*-->")
VISIBLE_SKIP = "Not run by the README test:"
# float32 embeddings computed on another CPU (AVX-512 vs AVX2, other thread counts) differ in the 7th
# significant digit: CI saw 0.07501718 where the README shows 0.07501715.
REL_TOLERANCE = 1e-4


class ReadmeError(ValueError):
    """README.md breaks one of the rules above."""


@dataclass
class Block:
    lang: str  # bash | python
    code: str
    line: int  # 1-based line of the opening fence
    skip_reason: str | None = None
    expected: list[str] = field(default_factory=list)  # shown outputs, compared in order

    @property
    def runs(self) -> bool:
        return self.skip_reason is None


def parse(text: str) -> list[Block]:
    """The README's shell and Python blocks, with their skip reasons and shown outputs."""
    tokens = MarkdownIt("commonmark").parse(text)
    blocks: list[Block] = []
    previous_run: Block | None = None  # the last run block, while only markers came after it
    pending_skip = False
    for i, tok in enumerate(tokens):
        if tok.type == "html_block":
            for name in ANY_MARKER.findall(tok.content):
                if name != "skip":
                    raise ReadmeError(f"README.md line {tok.map[0] + 1}: unknown marker [readme-test: {name}]")
                pending_skip = True
            continue
        if tok.type != "fence":
            previous_run = None
            continue
        lang = (tok.info.split() or [""])[0].lower()
        line = tok.map[0] + 1
        if lang in RUN_LANGS:
            reason = None
            if pending_skip:
                reason = _visible_reason(tokens, i)
                if reason is None:
                    raise ReadmeError(f"README.md line {line}: a skipped block needs a visible line "
                                      f"'*{VISIBLE_SKIP} <why>*' right before it")
            block = Block(RUN_LANGS[lang], tok.content, line, reason)
            if block.runs and block.lang == "bash":
                block.expected = shell_comment_outputs(block.code)
            blocks.append(block)
            previous_run = block if block.runs else None
        else:
            if pending_skip:
                raise ReadmeError(f"README.md line {line}: [readme-test: skip] before a block that never runs")
            if lang in OUTPUT_LANGS and previous_run is not None:
                previous_run.expected.append(tok.content)
            previous_run = None
        pending_skip = False
    if pending_skip:
        raise ReadmeError("README.md ends with a [readme-test: skip] marker that applies to nothing")
    return blocks


def _visible_reason(tokens: list, index: int) -> str | None:
    """The visible "*Not run by the README test: ...*" paragraph just before the block (markers aside)."""
    for tok in reversed(tokens[:index]):
        if tok.type in ("html_block", "paragraph_open", "paragraph_close"):
            continue
        if tok.type == "inline":
            text = tok.content.strip().strip("*_").strip()
            if text.startswith(VISIBLE_SKIP):
                return text[len(VISIBLE_SKIP):].strip() or None
        return None
    return None


def shell_comment_outputs(code: str) -> list[str]:
    """Comment groups of a shell block that show output: ``# {...}`` plus ``#  ...`` continuations."""
    groups: list[list[str]] = []
    current: list[str] | None = None
    for raw in code.splitlines():
        line = raw.strip()
        if current is not None and line.startswith("#  "):
            current.append(line[1:])
            continue
        current = None
        if line.startswith("# {") or line.startswith("# ["):
            current = [line[1:]]
            groups.append(current)
    return ["\n".join(g).strip() for g in groups]


# -- comparing shown output with real output -----------------------------------------------------

# A number stands alone: digits inside a word ("l6", a hex id like "8e400f") are characters like the others.
_TOKEN = re.compile(r"\.\.\.|…|(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])|\S")


@dataclass(frozen=True)
class _Num:
    value: float
    tolerance: float


_ELLIPSIS = object()


def _tokens(text: str, *, pattern: bool) -> list[object]:
    out: list[object] = []
    for tok in _TOKEN.findall(text):
        if tok in ("...", "…"):
            out.append(_ELLIPSIS if pattern else tok)
        elif tok[0].isdigit() or (tok[0] == "-" and len(tok) > 1):
            mantissa = tok.split("e")[0].split("E")[0]
            decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
            exponent = int(re.split("[eE]", tok)[1]) if re.search("[eE]", tok) else 0
            tolerance = 10.0 ** max(-300, min(300, exponent - decimals)) if decimals or exponent else 0.0
            out.append(_Num(float(tok), tolerance))
        else:
            out.append(tok)
    return out


def _same(expected: object, actual: object) -> bool:
    if isinstance(expected, _Num):
        if not isinstance(actual, _Num):
            return False
        if expected.tolerance == 0.0:
            return expected.value == actual.value
        return math.isclose(expected.value, actual.value, rel_tol=REL_TOLERANCE,
                            abs_tol=expected.tolerance * 1.0001)
    return expected == actual


def matches(shown: str, actual: str) -> bool:
    """Does the output shown in the README describe this real output? (See the module docstring.)"""
    pat, act = _tokens(shown, pattern=True), _tokens(actual, pattern=False)

    @lru_cache(maxsize=None)
    def from_(i: int, j: int) -> bool:
        while i < len(pat) and pat[i] is not _ELLIPSIS:
            if j >= len(act) or not _same(pat[i], act[j]):
                return False
            i, j = i + 1, j + 1
        if i == len(pat):
            return j == len(act)
        # An ellipsis: try every split point, shortest first.
        return any(from_(i + 1, k) for k in range(j, len(act) + 1))

    return from_(0, 0)  # recursion depth: one level per ellipsis


def expected_pattern(block: Block) -> str | None:
    """All outputs shown for a block, as one pattern over its whole stdout."""
    if not block.expected:
        return None
    if block.lang == "bash" and any(s for s in shell_comment_outputs(block.code)):
        # Comments show some commands' output among others': anything may come before, between, after.
        return "...\n" + "\n...\n".join(block.expected) + "\n..."
    return "\n...\n".join(block.expected) if len(block.expected) > 1 else block.expected[0]


def substitute_address(code: str, host_port: str) -> str:
    """The one change made to a block: the README's 127.0.0.1:9200 becomes the test server's address."""
    return re.sub(r"(127\.0\.0\.1|localhost):9200\b", host_port, code)


def load(path: Path) -> list[Block]:
    return parse(path.read_text())

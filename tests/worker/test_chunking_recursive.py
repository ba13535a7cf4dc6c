"""The ``recursive`` chunking strategy (Elasticsearch 9.1+): separators in order, merging up to the size."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infernetes.operator.errors import ValidationFailed
from infernetes.operator.spec import parse_endpoint
from infernetes.worker.chunking import SEPARATOR_GROUPS, WORD, chunk

TEXT = ("Para one has some words here.\n\n"
        "Para two is a bit longer, it has more words in it than one.\nSecond line of para two.\n\n"
        "Three.")


def pieces(text: str, settings_: dict) -> list[str]:
    return [text[c.start:c.end] for c in chunk(text, settings_)]


def test_paragraphs_then_lines_then_sentences():
    got = pieces(TEXT, {"strategy": "recursive", "max_chunk_size": 10})
    assert got[0] == "Para one has some words here."
    # Paragraph two (18 words) is split at its line break; its first line (14 words) into word windows.
    assert [len(WORD.findall(g)) for g in got[1:3]] == [10, 4]
    assert got[3] == "\nSecond line of para two."
    assert got[4] == "\n\nThree."


def test_neighbouring_pieces_merge_up_to_the_size():
    text = "a b\n\nc d\n\ne f g h i j k l m n"
    assert pieces(text, {"strategy": "recursive", "max_chunk_size": 10}) == ["a b\n\nc d", "\n\ne f g h i j k l m n"]
    assert pieces(text, {"strategy": "recursive", "max_chunk_size": 14}) == [text]


def test_custom_separators_and_markdown_group():
    text = "intro words\n# One\nbody of one\n# Two\nbody of two and more words here"
    md = pieces(text, {"strategy": "recursive", "max_chunk_size": 6, "separator_group": "markdown"})
    # Split at the headings; the second section, still too long, falls back to sentences (word windows).
    assert md == ["intro words", "\n# One\nbody of one", "# Two\nbody of two and", "more words here"]
    custom = pieces("x1 x2 | y1 y2 | z1 z2", {"strategy": "recursive", "max_chunk_size": 3, "separators": [r"\|"]})
    assert custom == ["x1 x2 ", "| y1 y2 ", "| z1 z2"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["w", "word", "\n", "\n\n", ". ", " "]), max_size=120), st.integers(10, 40))
def test_every_chunk_fits_and_the_chunks_cover_every_word_in_order(tokens, size):
    text = "".join(tokens)
    chunks = chunk(text, {"strategy": "recursive", "max_chunk_size": size,
                          "separators": SEPARATOR_GROUPS["plaintext"]})
    words = []
    for c in chunks:
        found = WORD.findall(text[c.start:c.end])
        assert len(found) <= size
        words += found
    assert words == WORD.findall(text)


BASE = {"service": "elasticsearch", "service_settings": {"num_allocations": 1, "num_threads": 1, "model_id": "m"}}


def test_settings_are_echoed_with_the_separators():
    spec = parse_endpoint("text_embedding", "ep", {**BASE, "chunking_settings": {
        "strategy": "recursive", "max_chunk_size": 100, "separator_group": "plaintext"}})
    assert spec.chunking.resolved() == {"strategy": "recursive", "max_chunk_size": 100,
                                        "separators": SEPARATOR_GROUPS["plaintext"]}


@pytest.mark.parametrize(("chunking", "reason"), [
    ({"strategy": "recursive", "max_chunk_size": 5}, "between 10 and 300 for the [recursive]"),
    ({"strategy": "recursive"}, "does not contain the required setting [max_chunk_size]"),
    ({"strategy": "recursive", "max_chunk_size": 50, "separators": ["("]}, "invalid regular expression"),
    ({"strategy": "recursive", "max_chunk_size": 50, "separators": ["x"], "separator_group": "markdown"},
     "only one of [separators] and [separator_group]"),
    ({"strategy": "recursive", "max_chunk_size": 50, "overlap": 3}, "[overlap]"),
    ({"strategy": "word", "max_chunk_size": 50, "overlap": 0, "separator_group": "markdown"},
     "only applicable to the [recursive] chunking strategy"),
])
def test_refused(chunking, reason):
    with pytest.raises(ValidationFailed) as exc:
        parse_endpoint("text_embedding", "ep", {**BASE, "chunking_settings": chunking})
    assert reason in exc.value.reason

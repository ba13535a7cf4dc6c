"""Chunking: every word covered, sizes and overlaps within bounds, offsets that slice the original text."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from infernetes.worker.chunking import chunk, sentence_chunks, sentences, word_chunks

WORD = re.compile(r"\S+")
words_st = st.lists(st.sampled_from(["alpha", "beta", "gamma.", "delta!", "eps?", "zeta,", "eta", "Θ", "dog."]),
                    min_size=0, max_size=400)
spaces_st = st.sampled_from([" ", "  ", "\n", " \n\n ", "\t"])


@st.composite
def texts(draw):
    words = draw(words_st)
    out = draw(st.sampled_from(["", " ", "\n"]))
    for w in words:
        out += w + draw(spaces_st)
    return out


def word_spans(text, start=0, end=None):
    return [(m.start(), m.end()) for m in WORD.finditer(text, start, len(text) if end is None else end)]


def check_common(text, chunks, max_words):
    assert chunks, "at least one chunk"
    spans = word_spans(text)
    for c in chunks:
        piece = text[c.start:c.end]
        if spans:
            assert piece == piece.strip() and piece, (c, piece)
            n = len(word_spans(text, c.start, c.end))
            assert 1 <= n <= max_words
            assert (c.start, ) in [(s,) for s, _ in spans] and c.end in [e for _, e in spans]
    covered = set()
    for c in chunks:
        covered |= {s for s, e in spans if c.start <= s and e <= c.end}
    assert covered == {s for s, _ in spans}, "every word is in a chunk"
    starts = [c.start for c in chunks]
    assert starts == sorted(starts) and len(set(starts)) == len(starts), "chunks move forward"


@settings(max_examples=300, deadline=None)
@given(texts(), st.integers(10, 60), st.data())
def test_word_chunks(text, size, data):
    overlap = data.draw(st.integers(0, size // 2))
    chunks = word_chunks(text, size, overlap)
    check_common(text, chunks, size)
    spans = word_spans(text)
    for a, b in zip(chunks, chunks[1:]):
        shared = [s for s, e in spans if b.start <= s and e <= a.end]
        assert len(shared) == overlap
    if spans:
        assert all(len(word_spans(text, c.start, c.end)) == size for c in chunks[:-1])


@settings(max_examples=300, deadline=None)
@given(texts(), st.integers(20, 60), st.sampled_from([0, 1]))
def test_sentence_chunks(text, size, overlap):
    chunks = sentence_chunks(text, size, overlap)
    check_common(text, chunks, size)
    bounds = {s for s, _ in sentences(text)} | {e for _, e in sentences(text)}
    for c in chunks if word_spans(text) else []:
        # A chunk starts at a sentence start, or inside a sentence longer than the chunk size.
        if c.start not in bounds:
            sentence = next(sp for sp in sentences(text) if sp[0] <= c.start < sp[1])
            assert len(word_spans(text, *sentence)) > size
    if overlap == 0:
        for a, b in zip(chunks, chunks[1:]):
            assert b.start >= a.end


def test_sentence_overlap_repeats_the_last_sentence():
    text = "One two three. Four five six. Seven eight nine. Ten eleven twelve."
    chunks = sentence_chunks(text, 20, 1)
    assert len(chunks) == 1
    many = " ".join(f"Sentence number {i} has exactly seven words here." for i in range(6))
    pieces = [many[c.start:c.end] for c in sentence_chunks(many, 20, 1)]
    assert pieces[0].endswith("number 1 has exactly seven words here.")
    assert pieces[1].startswith("Sentence number 1 ")
    pieces0 = [many[c.start:c.end] for c in sentence_chunks(many, 20, 0)]
    assert pieces0[1].startswith("Sentence number 2 ")


def test_long_sentence_is_split_by_words():
    text = " ".join(f"w{i}" for i in range(55)) + "."
    chunks = sentence_chunks(text, 20, 1)
    assert [len(word_spans(text, c.start, c.end)) for c in chunks] == [20, 20, 15]


def test_dispatch_and_edge_cases():
    assert chunk("", {"strategy": "sentence", "max_chunk_size": 20}) == chunk("", {"strategy": "none"})
    assert len(chunk("a b c", {"strategy": "word", "max_chunk_size": 10, "overlap": 0})) == 1
    assert chunk("hello", {"strategy": "none"})[0].end == 5


# -- offsets in UTF-16 code units, as Elasticsearch (Java) reports them (issue 13, D11) --------


def _java_substring(text: str, start: int, end: int) -> str:
    """What Java's String.substring(start, end) returns: offsets count UTF-16 code units."""
    units = text.encode("utf-16-le")
    return units[2 * start : 2 * end].decode("utf-16-le")


def test_utf16_index_counts_surrogate_pairs():
    from infernetes.worker.chunking import utf16_index

    text = "a😀b é e\u0301 𝔘x"  # an emoji and a math letter (both outside the BMP), accents both ways
    index = utf16_index(text)
    assert [index(i) for i in range(len(text) + 1)] == [
        len(text[:i].encode("utf-16-le")) // 2 for i in range(len(text) + 1)
    ]
    assert index(1) == 1 and index(2) == 3  # after the emoji, Java is one unit ahead
    plain = utf16_index("café crème")  # accented letters are single UTF-16 units: nothing shifts
    assert [plain(i) for i in range(11)] == list(range(11))


def test_chunk_offsets_slice_the_text_as_java_does():
    from infernetes.worker.engine import Engine, InferRequest, Job
    from infernetes.worker.modelstore import ModelInfo

    text = ("Señor 😀 said hi. " * 3 + "Déjà vu 👍🏽 again! ") * 4
    request = InferRequest(inputs=[text, "no emoji here."], chunking={"strategy": "word", "max_chunk_size": 10,
                                                                      "overlap": 2})
    engine = Engine(ModelInfo(model_id="m", task_type="text_embedding", kind="sentence-transformers",
                              path=__import__("pathlib").Path(".")), 1)
    job = engine.new_job(request, None, None)
    results = engine.by_input(job, lambda row: {})
    chunks = results[0]["chunks"]
    assert len(chunks) > 3
    for c in chunks:
        assert _java_substring(text, c["start_offset"], c["end_offset"]) == c["text"]
    # The offsets are not code points: past the first emoji they differ.
    assert any(text[c["start_offset"] : c["end_offset"]] != c["text"] for c in chunks)
    assert [(c["start_offset"], c["end_offset"]) for c in results[1]["chunks"]] == [(0, 14)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["😀", "é", "e\u0301", "word", "𝔘", "中文", ".", "!"]), max_size=80),
       st.sampled_from(["word", "sentence"]))
def test_utf16_offsets_of_any_chunking_slice_like_java(pieces, strategy):
    from infernetes.worker.chunking import utf16_index

    text = " ".join(pieces)
    index = utf16_index(text)
    for c in chunk(text, {"strategy": strategy, "max_chunk_size": 20}):
        assert _java_substring(text, index(c.start), index(c.end)) == text[c.start : c.end]

"""Tokenizers rebuilt from an uploaded vocabulary give the ids Hugging Face's tokenizers give (what Eland traced)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infernetes.worker.elastic_tokenizers import (
    ElasticTokenizer,
    TokenizationError,
    check_vocabulary,
    parse_tokenization,
)

TEXTS = ["Héllo World, how are you?", "北京 is a city", "Über naïve café " * 30, "a", "don't   stop!"]
PAIRS = [("what is up", "the sky is up there " * 40), ("q", "d"), ("a long question " * 40, "short")]


def vocab_of(tokenizer) -> list[str]:
    return [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]


@pytest.fixture(scope="module")
def bert(minilm_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.mark.parametrize("lower", [True, False])
def test_bert_matches_hugging_face(bert, minilm_dir, lower):
    from transformers import BertTokenizer

    hf = BertTokenizer(vocab=bert.get_vocab(), do_lower_case=lower)
    et = ElasticTokenizer(parse_tokenization({"bert": {"do_lower_case": lower, "max_sequence_length": 24}}),
                          {"vocabulary": vocab_of(bert)})
    features, truncated = et.encode(TEXTS)
    want = hf(TEXTS, padding=True, truncation=True, max_length=24, return_tensors="pt")
    assert features["input_ids"].tolist() == want["input_ids"].tolist()
    assert features["attention_mask"].tolist() == want["attention_mask"].tolist()
    assert truncated == [False, False, True, False, False]
    assert features["position_ids"][0].tolist() == list(range(features["input_ids"].shape[1]))


@pytest.mark.parametrize(("truncate", "strategy"), [("second", "only_second"), ("first", "only_first")])
def test_bert_pairs_truncate_the_configured_side(bert, truncate, strategy):
    et = ElasticTokenizer(parse_tokenization({"bert": {"do_lower_case": True, "max_sequence_length": 32,
                                                       "truncate": truncate}}), {"vocabulary": vocab_of(bert)})
    rows = PAIRS[:2] if truncate == "second" else [PAIRS[1], PAIRS[2]]
    features, truncated = et.encode(rows)
    want = bert([q for q, _ in rows], [d for _, d in rows], padding=True, truncation=strategy, max_length=32,
                return_tensors="pt")
    assert features["input_ids"].tolist() == want["input_ids"].tolist()
    assert features["token_type_ids"].tolist() == want["token_type_ids"].tolist()
    assert truncated == [truncate == "second", truncate == "first"]


def test_truncate_none_refuses_long_input(bert):
    et = ElasticTokenizer(parse_tokenization({"bert": {"truncate": "none", "max_sequence_length": 16}}),
                          {"vocabulary": vocab_of(bert)})
    assert et.encode(["short"])[1] == [False]
    with pytest.raises(TokenizationError, match=r"exceeds the maximum sequence length \[16\]"):
        et.encode(["short", "a much longer input " * 10])


def test_mpnet_matches_hugging_face(bert, minilm_dir, tmp_path):
    from transformers import MPNetTokenizer

    words = ["<s>", "<pad>", "</s>", "<unk>"] + vocab_of(bert) + ["<mask>"]
    hf = MPNetTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    et = ElasticTokenizer(parse_tokenization({"mpnet": {"do_lower_case": True, "max_sequence_length": 24}}),
                          {"vocabulary": words})
    features, _ = et.encode(TEXTS)
    want = hf(TEXTS, padding=True, truncation=True, max_length=24, return_tensors="pt")
    assert features["input_ids"].tolist() == want["input_ids"].tolist()
    assert set(features) == {"input_ids", "attention_mask"}  # what an MPNet trace takes
    pairs, _ = et.encode(PAIRS[1:2])
    assert pairs["input_ids"].tolist() == hf([PAIRS[1][0]], [PAIRS[1][1]])["input_ids"]


def test_roberta_matches_hugging_face(tmp_path):
    import json

    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator([t for t in TEXTS] * 20 + ["the sky is up there, don't stop"] * 20, vocab_size=400,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    trainer.save_model(str(tmp_path))
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    words = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m for m in (tmp_path / "merges.txt").read_text().splitlines() if m and not m.startswith("#")]
    hf = RobertaTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    et = ElasticTokenizer(parse_tokenization({"roberta": {"max_sequence_length": 40}}),
                          {"vocabulary": words, "merges": merges})
    features, _ = et.encode(TEXTS)
    want = hf(TEXTS, padding=True, truncation=True, max_length=40, return_tensors="pt")
    assert features["input_ids"].tolist() == want["input_ids"].tolist()


@pytest.mark.parametrize(("raw", "reason"), [
    ({"bert": {}, "mpnet": {}}, "exactly one tokenizer"),
    ({"bpe": {}}, "unsupported tokenization [bpe]"),
    ({"bert": {"max_sequence_length": 0}}, "positive integer"),
    ({"bert": {"span": 64}}, "only be set when [truncate] is [none]"),
    ({"bert": {"do_lower_case": "yes"}}, "[do_lower_case] must be a boolean"),
    ({"roberta": {"do_lower_case": True}}, "unknown field [do_lower_case]"),
])
def test_bad_tokenization_configs(raw, reason):
    with pytest.raises(TokenizationError, match=re.escape(reason)):
        parse_tokenization(raw)


@pytest.mark.parametrize(("kind", "vocab", "reason"), [
    ("bert", {"vocabulary": ["[CLS]", "[SEP]", "[PAD]"]}, "[UNK]"),
    ("roberta", {"vocabulary": ["<s>", "</s>", "<pad>", "<unk>"]}, "[merges] are required"),
    ("xlm_roberta", {"vocabulary": ["<s>", "</s>", "<pad>", "<unk>"], "scores": [0.0]}, "one score per"),
    ("bert", {"vocabulary": []}, "non-empty array"),
])
def test_vocabularies_missing_what_the_kind_needs(kind, vocab, reason):
    with pytest.raises(TokenizationError, match=re.escape(reason)):
        check_vocabulary(kind, vocab)


@pytest.fixture(scope="module")
def unigram() -> list[tuple[str, float]]:
    """A small SentencePiece Unigram vocabulary (token, score), as Eland uploads for XLM-RoBERTa and DeBERTa-v2."""
    import json

    from tokenizers import SentencePieceUnigramTokenizer

    corpus = ["the sky is up there", "don't stop believing", "Über naïve café", "what causes the northern lights",
              "How do I bake bread at home?"] * 30
    trainer = SentencePieceUnigramTokenizer()
    trainer.train_from_iterator(corpus, vocab_size=120, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                show_progress=False)
    return [tuple(x) for x in json.loads(trainer.to_str())["model"]["vocab"]]


UNIGRAM_TEXTS = ["the sky is up", "Über café  lights", "How   do I bake?", "zzz qqq"]


def test_xlm_roberta_matches_hugging_face(unigram):
    from transformers import XLMRobertaTokenizer

    hf = XLMRobertaTokenizer(vocab=unigram)
    et = ElasticTokenizer(parse_tokenization({"xlm_roberta": {"max_sequence_length": 64}}),
                          {"vocabulary": [w for w, _ in unigram], "scores": [s for _, s in unigram]})
    features, _ = et.encode(UNIGRAM_TEXTS)
    assert features["input_ids"].tolist() == hf(UNIGRAM_TEXTS, padding=True, return_tensors="pt")["input_ids"].tolist()
    pair, _ = et.encode([("q one", "d two")])
    assert pair["input_ids"][0].tolist() == hf(["q one"], ["d two"])["input_ids"][0]


def test_deberta_v2_matches_hugging_face(unigram):
    from transformers import DebertaV2Tokenizer

    vocab = [("[PAD]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[UNK]", 0.0)] + [
        x for x in unigram if x[0] not in ("<s>", "<pad>", "</s>", "<unk>")]
    hf = DebertaV2Tokenizer(vocab=vocab, unk_id=3)
    et = ElasticTokenizer(parse_tokenization({"deberta_v2": {"max_sequence_length": 64}}),
                          {"vocabulary": [w for w, _ in vocab], "scores": [s for _, s in vocab]})
    features, _ = et.encode(UNIGRAM_TEXTS)
    assert features["input_ids"].tolist() == hf(UNIGRAM_TEXTS, padding=True, return_tensors="pt")["input_ids"].tolist()
    assert set(features) == {"input_ids", "attention_mask", "token_type_ids"}  # what a DeBERTa trace takes
    pair, _ = et.encode([("q one", "d two")])
    want = hf(["q one"], ["d two"])
    assert pair["input_ids"][0].tolist() == want["input_ids"][0]
    assert pair["token_type_ids"][0].tolist() == want["token_type_ids"][0]

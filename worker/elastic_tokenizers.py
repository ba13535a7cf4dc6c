"""Tokenizers for Elastic's TorchScript models, built from the uploaded vocabulary.

Elasticsearch never stores a Hugging Face tokenizer: Eland uploads the vocabulary (and, for BPE
and Unigram models, the merges or scores) and the model's ``tokenization`` config names the
tokenizer kind. Each kind is rebuilt here with the ``tokenizers`` library so that its ids equal
the ones Eland traced the model with: ``bert`` and ``mpnet`` (WordPiece), ``roberta`` (byte-level
BPE), ``xlm_roberta`` and ``deberta_v2`` (SentencePiece Unigram).

What each model takes as input differs too (Elasticsearch's request builders and Eland's
``_compatible_inputs``): BERT-style traces take ids, attention mask, token type ids and position
ids; MPNet, RoBERTa and XLM-RoBERTa take ids and mask; DeBERTa-v2 takes ids, mask and token types.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Elasticsearch's tokenization kinds and the defaults of their settings (Tokenization.java and subclasses).
KINDS = ("bert", "mpnet", "roberta", "xlm_roberta", "deberta_v2")
TRUNCATE = ("first", "second", "none", "balanced")
COMMON_DEFAULTS: dict[str, Any] = {"with_special_tokens": True, "max_sequence_length": 512, "truncate": "first",
                                   "span": -1}
KIND_SETTINGS: dict[str, dict[str, Any]] = {
    "bert": {"do_lower_case": False},
    "mpnet": {"do_lower_case": False},
    "roberta": {"add_prefix_space": False},
    "xlm_roberta": {},
    "deberta_v2": {"do_lower_case": False},
}
# The tensors each kind's trace takes, in order.
MODEL_INPUTS: dict[str, tuple[str, ...]] = {
    "bert": ("input_ids", "attention_mask", "token_type_ids", "position_ids"),
    "mpnet": ("input_ids", "attention_mask"),
    "roberta": ("input_ids", "attention_mask"),
    "xlm_roberta": ("input_ids", "attention_mask"),
    "deberta_v2": ("input_ids", "attention_mask", "token_type_ids"),
}
_SPECIAL = {
    # kind: (cls/bos, sep/eos, pad, unk, second-sequence separator is doubled, pair token type)
    "bert": ("[CLS]", "[SEP]", "[PAD]", "[UNK]", False, 1),
    "mpnet": ("<s>", "</s>", "<pad>", "[UNK]", True, 0),  # MPNet's vocabulary keeps BERT's [UNK]
    "roberta": ("<s>", "</s>", "<pad>", "<unk>", True, 0),
    "xlm_roberta": ("<s>", "</s>", "<pad>", "<unk>", True, 0),
    "deberta_v2": ("[CLS]", "[SEP]", "[PAD]", "[UNK]", False, 1),
}


CHARSMAP = Path(__file__).with_name("spm_nmt_nfkc_charsmap.bin.gz")


@functools.cache
def precompiled_charsmap() -> bytes:
    """SentencePiece's nmt_nfkc map, precompiled (as ``normalizer_spec.precompiled_charsmap`` of a model trained
    with the default normalization, and Hugging Face's ``normalizer.precompiled_charsmap``)."""
    return gzip.decompress(CHARSMAP.read_bytes())


class TokenizationError(ValueError):
    """A tokenization config or vocabulary that cannot be used, or an input it refuses."""


@dataclass(frozen=True)
class Tokenization:
    kind: str
    settings: dict[str, Any]

    @property
    def max_sequence_length(self) -> int:
        return int(self.settings["max_sequence_length"])

    @property
    def truncate(self) -> str:
        return str(self.settings["truncate"])

    @property
    def inputs(self) -> tuple[str, ...]:
        return MODEL_INPUTS[self.kind]


def parse_tokenization(raw: Any) -> Tokenization:
    """``{"bert": {...}}`` -> the kind and its settings with Elasticsearch's defaults filled in."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise TokenizationError(f"[tokenization] must name exactly one tokenizer, one of [{', '.join(KINDS)}]")
    kind, settings = next(iter(raw.items()))
    if kind not in KINDS:
        raise TokenizationError(f"unsupported tokenization [{kind}]; supported: [{', '.join(KINDS)}]")
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise TokenizationError(f"[tokenization.{kind}] must be an object")
    allowed = {**COMMON_DEFAULTS, **KIND_SETTINGS[kind]}
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise TokenizationError(f"[tokenization.{kind}] unknown field [{unknown[0]}]")
    merged = {**allowed, **{k: v for k, v in settings.items() if v is not None}}
    msl = merged["max_sequence_length"]
    if isinstance(msl, bool) or not isinstance(msl, int) or msl < 1:
        raise TokenizationError(f"[max_sequence_length] must be a positive integer, got [{msl}]")
    if merged["truncate"] not in TRUNCATE:
        raise TokenizationError(f"[truncate] must be one of [{', '.join(TRUNCATE)}], got [{merged['truncate']}]")
    span = merged["span"]
    if isinstance(span, bool) or not isinstance(span, int) or span < -1:
        raise TokenizationError(f"[span] must be -1 or a non-negative integer, got [{span}]")
    if span > msl:
        raise TokenizationError(f"[span] provided [{span}] must not be greater than [max_sequence_length] provided "
                                f"[{msl}]")
    if span != -1 and merged["truncate"] != "none":
        raise TokenizationError(f"[span] [{span}] can only be set when [truncate] is [none]")
    for flag in ("with_special_tokens", "do_lower_case", "add_prefix_space"):
        if flag in merged and not isinstance(merged[flag], bool):
            raise TokenizationError(f"[{flag}] must be a boolean, got [{merged[flag]}]")
    return Tokenization(kind, merged)


def check_vocabulary(kind: str, vocab: dict[str, Any]) -> None:
    """The vocabulary upload has what the kind needs (Elasticsearch checks the same at deployment start)."""
    words = vocab.get("vocabulary")
    if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
        raise TokenizationError("[vocabulary] must be a non-empty array of strings")
    if kind == "roberta" and not vocab.get("merges"):
        raise TokenizationError("[merges] are required for the [roberta] tokenizer")
    if kind in ("xlm_roberta", "deberta_v2"):
        scores = vocab.get("scores")
        if not isinstance(scores, list) or len(scores) != len(words):
            raise TokenizationError(f"[scores] with one score per vocabulary entry are required for the [{kind}] "
                                    "tokenizer")
    cls, sep, pad, unk, *_ = _SPECIAL[kind]
    missing = [t for t in (cls, sep, pad, unk) if t not in set(words)]
    if missing:
        raise TokenizationError(f"the vocabulary lacks the [{kind}] special tokens [{', '.join(missing)}]")


def build_tokenizer(tokenization: Tokenization, vocab: dict[str, Any]) -> Any:
    """A ``tokenizers.Tokenizer`` that splits text and adds special tokens as the model was traced with."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    kind, s = tokenization.kind, tokenization.settings
    check_vocabulary(kind, vocab)
    words: list[str] = vocab["vocabulary"]
    ids = {w: i for i, w in enumerate(words)}
    cls, sep, pad, unk, doubled, pair_type = _SPECIAL[kind]
    if kind in ("bert", "mpnet"):
        tok = Tokenizer(models.WordPiece(ids, unk_token=unk, max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                    lowercase=bool(s["do_lower_case"]))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
    elif kind == "roberta":
        merges = [tuple(m.split(" ", 1)) for m in vocab["merges"]]
        tok = Tokenizer(models.BPE(ids, merges, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(s["add_prefix_space"]))
        tok.decoder = decoders.ByteLevel()
    else:  # SentencePiece Unigram: xlm_roberta, deberta_v2
        scored = [(w, float(sc)) for w, sc in zip(words, vocab["scores"])]
        tok = Tokenizer(models.Unigram(scored, unk_id=ids[unk], byte_fallback=False))
        # SentencePiece's nmt_nfkc normalization through its precompiled character map, which an uploaded
        # vocabulary does not carry: Elasticsearch applies the one it ships (spm_precompiled_normalizer.txt), the
        # map every nmt_nfkc model holds; so do we. The steps around it are Hugging Face's converters'.
        charsmap = normalizers.Precompiled(precompiled_charsmap())
        if kind == "xlm_roberta":
            steps = [charsmap, normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), "▁")]
        else:
            steps = [normalizers.Lowercase()] if s.get("do_lower_case") else []
            steps += [normalizers.Strip(), charsmap, normalizers.Replace(Regex(" {2,}"), " ")]
        tok.normalizer = normalizers.Sequence(steps)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    if s["with_special_tokens"]:
        special = [(cls, ids[cls]), (sep, ids[sep])]
        if doubled:
            pair = f"{cls} $A:0 {sep} {sep} $B:{pair_type} {sep}:{pair_type}"
        else:
            pair = f"{cls} $A:0 {sep}:0 $B:{pair_type} {sep}:{pair_type}"
        if kind == "roberta":
            tok.post_processor = processors.Sequence([
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(single=f"{cls} $A {sep}", pair=pair, special_tokens=special),
            ])
        else:
            tok.post_processor = processors.TemplateProcessing(single=f"{cls} $A {sep}", pair=pair,
                                                               special_tokens=special)
    elif kind == "roberta":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


@dataclass(frozen=True)
class Window:
    """One window of a long input (``truncate: none`` with a ``span``): its ids and token types, special tokens
    included, and which row it belongs to."""

    ids: list[int]
    type_ids: list[int]
    row: int = 0


def window_bounds(word_ids: list[Any], size: int, span: int) -> list[tuple[int, int]]:
    """Elasticsearch's windows over a token sequence (``NlpTokenizer.tokenize`` with a span): ``size`` tokens each,
    never ending inside a word; the next starts ``span`` tokens before the previous end, backed up to a word's
    first token. ``word_ids`` says which word each token belongs to."""
    n, out = len(word_ids), []
    start = end = 0
    while end < n:
        end = min(start + size, n)
        if end != n:  # do not end inside a word
            while end > start + 1 and word_ids[end] == word_ids[end - 1]:
                end -= 1
        out.append((start, end))
        previous = start
        start = max(end - span, previous + 1)  # always forward (Elasticsearch loops on a span as long as the window)
        if start < n:  # start at a word's first token
            while start > previous + 1 and word_ids[start] == word_ids[start - 1]:
                start -= 1
    return out


class ElasticTokenizer:
    """Batches of texts (or text pairs) to the padded tensors the kind's trace takes."""

    def __init__(self, tokenization: Tokenization, vocab: dict[str, Any]) -> None:
        self.tokenization = tokenization
        self.tokenizer = build_tokenizer(tokenization, vocab)
        words = vocab["vocabulary"]
        cls, sep, pad, _unk, self._doubled, self._pair_type = _SPECIAL[tokenization.kind]
        self.pad_id = words.index(pad)
        self._cls, self._sep = words.index(cls), words.index(sep)
        self.vocabulary: list[str] = list(words)

    @property
    def span(self) -> int:
        """Tokens that neighbouring windows share; -1: no windows (long inputs are truncated or refused)."""
        return int(self.tokenization.settings["span"]) if self.tokenization.truncate == "none" else -1

    def encode(self, rows: list[Any]) -> tuple[dict[str, Any], list[bool]]:
        """Tensors for the rows and, per row, whether it was truncated. ``truncate: none`` refuses long rows, or
        with a ``span`` keeps their first window, as Elasticsearch answers an input that is not chunked."""
        limit = self.tokenization.max_sequence_length
        encodings = self.tokenizer.encode_batch(rows)
        truncated = [len(e.ids) > limit for e in encodings]
        if any(truncated):
            mode = self.tokenization.truncate
            if mode == "none" and self.span == -1:
                longest = max(len(e.ids) for e in encodings)
                raise TokenizationError(f"Input too large. The tokenized input length [{longest}] exceeds the "
                                        f"maximum sequence length [{limit}]")
            if mode == "none":
                encodings = [self.windows(r)[0] if t else e for r, e, t in zip(rows, encodings, truncated)]
                truncated = [False] * len(rows)  # windows are not truncation (Elasticsearch's is_truncated)
            else:
                encodings = [self._truncated(r, mode) if t else e for r, e, t in zip(rows, encodings, truncated)]
        return self.tensors(encodings), truncated

    def tensors(self, encodings: list[Any]) -> dict[str, Any]:
        """Padded tensors of encodings (or windows): anything with ``ids`` and ``type_ids``."""
        import torch

        width = max(1, max(len(e.ids) for e in encodings))
        n = len(encodings)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        types = torch.zeros((n, width), dtype=torch.long)
        for i, e in enumerate(encodings):
            k = len(e.ids)
            input_ids[i, :k] = torch.tensor(e.ids, dtype=torch.long)
            mask[i, :k] = 1
            types[i, :k] = torch.tensor(e.type_ids, dtype=torch.long)
        features = {"input_ids": input_ids, "attention_mask": mask}
        names = self.tokenization.inputs
        if "token_type_ids" in names:
            features["token_type_ids"] = types
        if "position_ids" in names:
            features["position_ids"] = torch.arange(width, dtype=torch.long).expand(n, width).contiguous()
        return features

    def windows(self, row: Any, index: int = 0) -> list[Window]:
        """A row as Elasticsearch feeds it with ``truncate: none`` and a ``span``: one window if it fits, else
        overlapping windows of ``max_sequence_length`` tokens. For a (query, document) pair the document is
        windowed and every window repeats the query (Elasticsearch's text_similarity)."""
        limit, span = self.tokenization.max_sequence_length, max(0, self.span)
        special = bool(self.tokenization.settings["with_special_tokens"])
        if isinstance(row, (tuple, list)):
            if not special:
                raise TokenizationError("Unable to do sequence pair tokenization without special tokens")
            query = self.tokenizer.encode(row[0], add_special_tokens=False)
            doc = self.tokenizer.encode(row[1], add_special_tokens=False)
            extra = 4 if self._doubled else 3
            if len(query.ids) + len(doc.ids) + extra < limit:
                whole = self.tokenizer.encode(row[0], row[1])
                return [Window(list(whole.ids), list(whole.type_ids), index)]
            size = limit - extra - len(query.ids)
            if size <= 0:
                raise TokenizationError(
                    f"Unable to do sequence pair tokenization: the first sequence [{len(query.ids) + extra} tokens] "
                    f"is longer than the max sequence length [{limit} tokens]")
            if span > size:
                raise TokenizationError(
                    "Unable to do sequence pair tokenization: the combined first sequence, span length and "
                    f"delimiting tokens [{len(query.ids)} + {span} + {extra} = {len(query.ids) + span + extra} "
                    f"tokens] is longer than the max sequence length [{limit} tokens]. Reduce the size of the "
                    "[span] window.")
            head = [self._cls, *query.ids, self._sep] + ([self._sep] if self._doubled else [])
            out = []
            for a, b in window_bounds(doc.word_ids, size, span):
                tail = [*doc.ids[a:b], self._sep]
                out.append(Window(head + tail, [0] * len(head) + [self._pair_type] * len(tail), index))
            return out
        enc = self.tokenizer.encode(row, add_special_tokens=False)
        extra = 2 if special else 0
        if len(enc.ids) + extra <= limit:
            whole = self.tokenizer.encode(row)
            return [Window(list(whole.ids), list(whole.type_ids), index)]
        out = []
        for a, b in window_bounds(enc.word_ids, limit - extra, span):
            ids = [self._cls, *enc.ids[a:b], self._sep] if special else list(enc.ids[a:b])
            out.append(Window(ids, [0] * len(ids), index))
        return out

    def _truncated(self, row: Any, mode: str) -> Any:
        pair = isinstance(row, (tuple, list))
        self.tokenizer.enable_truncation(self.tokenization.max_sequence_length,
                                         strategy=_STRATEGY[mode] if pair else "longest_first")
        try:
            return self.tokenizer.encode(*row) if pair else self.tokenizer.encode(row)
        finally:
            self.tokenizer.no_truncation()


# Elasticsearch's truncate modes in the tokenizers library's terms ("first": cut the first sequence).
_STRATEGY = {"first": "only_first", "second": "only_second", "balanced": "longest_first"}

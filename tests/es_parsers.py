"""Python ports of the response parsers Elasticsearch's inference services run on an external server's
answer, strict where the Java code is strict, lenient where it is lenient. We cannot run Elasticsearch
here: these ports are how the tests check that what Infernetes answers is what those services read.

Sources (elastic/elasticsearch, x-pack/plugin/inference/src/main/java/org/elasticsearch/xpack/inference/):
- services/openai/response/OpenAiEmbeddingsResponseEntity.java (service ``openai``)
- services/huggingface/response/HuggingFaceEmbeddingsResponseEntity.java (``hugging_face``, text_embedding)
- services/huggingface/response/HuggingFaceRerankResponseEntity.java (``hugging_face``, rerank)
- services/huggingface/response/HuggingFaceElserResponseEntity.java (``hugging_face_elser``, sparse_embedding)
- common/MapPathExtractor.java and services/custom/response/TextEmbeddingResponseParser.java,
  RerankResponseParser.java (service ``custom``)
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import numpy as np


class ParseFailure(Exception):
    """What Elasticsearch would report as a failed parse of the external service's answer."""


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ParseFailure(f"expected a number, got {value!r}")
    return float(np.float32(value))


def openai_embeddings(body: bytes) -> list[np.ndarray]:
    """OpenAiEmbeddingsResponseEntity: ``data`` (required, an array of objects; other fields ignored); each
    entry's ``embedding`` is a base64 string (little-endian float32, strict RFC 4648, length a multiple of 4)
    or an array of floats. Entries are taken in array order (``index`` is not read)."""
    doc = json.loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ParseFailure("[EmbeddingFloatResult] failed to parse field [data]")
    out = []
    for entry in doc["data"]:
        if not isinstance(entry, dict) or "embedding" not in entry:
            raise ParseFailure("Required [embedding]")
        emb = entry["embedding"]
        if isinstance(emb, str):
            try:
                raw = base64.b64decode(emb, validate=True)
            except binascii.Error as exc:
                raise ParseFailure(f"[embedding] is not valid base64: {exc}") from None
            if len(raw) % 4:
                raise ParseFailure(f"[embedding] base64-decoded length [{len(raw)}] is not a multiple of 4")
            out.append(np.frombuffer(raw, dtype="<f4").copy())
        elif isinstance(emb, list):
            out.append(np.array([_number(x) for x in emb], dtype=np.float32))
        else:
            raise ParseFailure("[embedding] expected base64 string or float array")
    return out


def hf_embeddings(body: bytes) -> list[np.ndarray]:
    """HuggingFaceEmbeddingsResponseEntity: ``[[floats], ...]`` or ``{"embeddings": [[floats], ...]}``."""
    doc = json.loads(body)
    if isinstance(doc, dict):
        if "embeddings" not in doc:
            raise ParseFailure("Failed to find required field [embeddings] in Hugging Face embeddings response")
        doc = doc["embeddings"]
    if not isinstance(doc, list):
        raise ParseFailure("expected an array")
    out = []
    for entry in doc:
        if not isinstance(entry, list):
            raise ParseFailure("expected START_ARRAY for an embedding")
        out.append(np.array([_number(x) for x in entry], dtype=np.float32))
    return out


def hf_rerank(body: bytes, top_n: int | None = None) -> list[tuple[int, float, str | None]]:
    """HuggingFaceRerankResponseEntity: an array of objects whose fields are only ``index``, ``score`` or
    ``relevance_score``, ``text`` and ``document: {text}`` (any other field: throwUnknownField); sorted by
    score, cut to top_n."""
    doc = json.loads(body)
    if not isinstance(doc, list):
        raise ParseFailure("expected START_ARRAY")
    ranked = []
    for obj in doc:
        if not isinstance(obj, dict):
            raise ParseFailure("expected START_OBJECT")
        index, score, text = -1, -1.0, None
        for name, value in obj.items():
            if name == "index":
                index = int(value)
            elif name in ("score", "relevance_score"):
                score = _number(value)
            elif name == "text":
                text = str(value)
            elif name == "document":
                if not isinstance(value, dict):
                    raise ParseFailure("expected START_OBJECT for [document]")
                text = value.get("text", text)
            else:
                raise ParseFailure(f"unknown field [{name}]")
        ranked.append((index, score, text))
    ranked.sort(key=lambda r: -r[1])
    return ranked[:top_n] if top_n is not None else ranked


def hf_elser(body: bytes) -> list[dict[str, float]]:
    """HuggingFaceElserResponseEntity: an array with one object per input, each field a token and each
    value a number (VALUE_NUMBER, nothing else)."""
    doc = json.loads(body)
    if not isinstance(doc, list):
        raise ParseFailure("expected START_ARRAY")
    out = []
    for obj in doc:
        if not isinstance(obj, dict):
            raise ParseFailure("expected START_OBJECT")
        out.append({token: _number(weight) for token, weight in obj.items()})
    return out


_DOT = re.compile(r"^\.([^.\[]+)(.*)$", re.S)
_WILDCARD = re.compile(r"^\[\*\](.*)$", re.S)


def map_path(data: Any, path: str) -> Any:
    """MapPathExtractor.extract: ``$.a.b[*].c``, keeping nested lists (unlike JSONPath). The root must be a
    map, as the custom service parses the answer into one."""
    if not isinstance(data, dict) or not data:
        raise ParseFailure("the custom service reads a JSON object at the top")
    path = path.strip()
    if not path.startswith("$"):
        raise ParseFailure(f"Path [{path}] must start with a dollar sign ($)")

    def navigate(current: Any, rest: str) -> Any:
        if current is None or not rest:
            return current
        if m := _DOT.match(rest):
            if not isinstance(current, dict):
                raise ParseFailure(f"Current path [{rest}] matched the dot field pattern but the current object "
                                   "is not a map")
            if current.get(m.group(1)) is None:
                raise ParseFailure(f"Unable to find field [{m.group(1)}] in map")
            return navigate(current[m.group(1)], m.group(2))
        if m := _WILDCARD.match(rest):
            if not isinstance(current, list):
                raise ParseFailure(f"Current path [{rest}] matched the array field pattern but the current object "
                                   "is not a list")
            return [r for r in (navigate(item, m.group(1)) for item in current) if r is not None]
        raise ParseFailure(f"Invalid path received [{rest}], unable to extract a field name.")

    return navigate(data, path[1:])


def custom_text_embeddings(body: bytes, path: str) -> list[np.ndarray]:
    """TextEmbeddingResponseParser (embedding_type float): the path gives a list, each entry a list of floats."""
    found = map_path(json.loads(body), path)
    if not isinstance(found, list):
        raise ParseFailure("Extracted field is not a list")
    out = []
    for i, entry in enumerate(found):
        if not isinstance(entry, list):
            raise ParseFailure(f"Failed to parse text embedding entry [{i}]")
        out.append(np.array([_number(x) for x in entry], dtype=np.float32))
    return out


def custom_rerank(body: bytes, score_path: str, index_path: str | None = None,
                  text_path: str | None = None) -> list[tuple[int, float, str | None]]:
    """The custom service's rerank parser: relevance_score (required), reranked_index and document_text
    (optional) paths give parallel lists; without an index path, the position is the index."""
    doc = json.loads(body)
    scores = map_path(doc, score_path)
    if not isinstance(scores, list):
        raise ParseFailure("Extracted field [relevance_score] is not a list")
    indices = map_path(doc, index_path) if index_path else list(range(len(scores)))
    texts = map_path(doc, text_path) if text_path else [None] * len(scores)
    if not (len(scores) == len(indices) == len(texts)):
        raise ParseFailure("The extracted lists must be of the same size")
    out = []
    for score, index, text in zip(scores, indices, texts):
        if isinstance(index, bool) or not isinstance(index, int):
            raise ParseFailure(f"reranked_index must be an integer, got {index!r}")
        out.append((index, _number(score), text))
    return out

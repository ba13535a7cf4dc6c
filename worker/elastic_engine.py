"""Engines for Elastic's TorchScript format (Eland uploads, Elastic's model repository).

The trace takes positional tensors (which ones depends on the tokenizer kind, see
:mod:`.elastic_tokenizers`), as Elasticsearch's native process feeds it, and gives:

- ``text_embedding``: the pooled embedding per row ``[rows, dims]``;
- ``text_expansion``: either the token weights per row ``[rows, vocab]`` (ELSER, pooled inside the
  trace) or a masked-LM's logits ``[rows, seq, vocab]`` (an Eland upload of a SPLADE checkpoint),
  which are pooled here as SPLADE does: max over tokens of ``log(1 + relu(logit))``;
- ``text_similarity``: one logit per (query, document) pair, the relevance score as is.

These subclass the task engines of :mod:`.engine`, so batching, rendering and chunking are shared;
only loading, tokenising and the forward pass differ. Tokens containing a ``.`` are renamed with
``__`` in sparse results, as Elasticsearch does (a ``.`` would make a sub-field of a sparse vector).
"""

from __future__ import annotations

from typing import Any

from .elastic_format import DEFINITION, read_config, read_vocabulary, task_of, tokenization_of
from .elastic_tokenizers import ElasticTokenizer, Window
from .engine import (
    Cancelled,
    Engine,
    Job,
    RerankEngine,
    Segment,
    SparseEmbeddingEngine,
    TextEmbeddingEngine,
    _slice_features,
)


class ElasticEngine(Engine):
    """Loading, tokenising and the forward pass of an Elastic-format trace."""

    def load(self) -> None:
        import torch

        torch.set_num_threads(self.num_threads)
        config = read_config(self.info)
        self.es_task = task_of(config)
        self.tokenization = tokenization_of(config)
        self.elastic_tokenizer = ElasticTokenizer(self.tokenization, read_vocabulary(self.info))
        self.pad_id = self.elastic_tokenizer.pad_id
        self.max_seq_length = self.tokenization.max_sequence_length
        # A TorchScript archive: torch.jit.load rebuilds the graph and tensors, never arbitrary Python objects.
        self.model = torch.jit.load(str(self.info.path / DEFINITION), map_location="cpu")
        self.model.eval()
        self.traced = True
        self._loaded()

    def _loaded(self) -> None:
        """Task-specific set-up once the model and tokenizer are there."""

    @property
    def tokenizer(self) -> Any:
        return self.elastic_tokenizer.tokenizer

    def tokenize(self, rows: list[Any], prompt: str | None, task: str | None) -> dict[str, Any]:
        if prompt:
            rows = [prompt + r if isinstance(r, str) else r for r in rows]
        features, truncated = self.elastic_tokenizer.encode(rows)
        features["_truncated"] = truncated
        return features

    def prepare(self, job: Job, max_tokens: int, max_rows: int) -> list[Segment]:
        segments = super().prepare(job, max_tokens, max_rows)
        for seg in segments:
            truncated = seg.features.pop("_truncated")
            for row in seg.rows:
                job.truncated[row] = truncated[row]
        return segments

    def _exceeds(self, row: Any, prompt: str | None) -> bool:  # the tokenizer reports truncation itself
        return False

    def forward(self, features: dict[str, Any]) -> Any:
        import torch

        args = tuple(features[name] for name in self.tokenization.inputs)
        with torch.inference_mode():
            out = self.model(*args)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return self._reduce(out, features["attention_mask"])

    def _reduce(self, output: Any, mask: Any) -> Any:
        return output


class ElasticTextEmbeddingEngine(ElasticEngine, TextEmbeddingEngine):
    flags_truncation = False


class ElasticSparseEmbeddingEngine(ElasticEngine, SparseEmbeddingEngine):
    flags_truncation = False

    def _loaded(self) -> None:
        vocab = self.elastic_tokenizer.vocabulary
        self.id_to_token = [t.replace(".", "__") for t in vocab]
        self.max_batch_tokens = max(1, self.LOGITS_BYTES_PER_BATCH // (4 * len(vocab)))

    def _reduce(self, output: Any, mask: Any) -> Any:
        import torch

        if output.dim() == 3:  # masked-LM logits per token: SPLADE max pooling
            weights = torch.log1p(torch.relu(output)) * mask.unsqueeze(-1).to(output.dtype)
            return weights.max(dim=1).values
        return output


class ElasticRerankEngine(ElasticEngine, RerankEngine):
    """With ``truncate: none`` and a ``span``, a long document is scored window by window (each window repeats the
    query) and its score is the windows' ``max`` or ``mean`` (``span_score_combination_function``), as
    Elasticsearch's text_similarity does. Windows are the job's rows, so the queue and its metrics count the work."""

    def _loaded(self) -> None:
        self.activation = None  # Elasticsearch answers the model's logit as the score
        task_config = read_config(self.info)["inference_config"].get("text_similarity", {})
        self.span_score = task_config.get("span_score_combination_function") or "max"

    def _reduce(self, output: Any, mask: Any) -> Any:
        return output.reshape(output.shape[0], -1)[:, 0]

    def rows(self, request: Any) -> list[Any]:
        pairs = super().rows(request)
        if self.elastic_tokenizer.span == -1:
            return pairs
        return [w for i, pair in enumerate(pairs) for w in self.elastic_tokenizer.windows(pair, i)]

    def prepare(self, job: Job, max_tokens: int, max_rows: int) -> list[Segment]:
        if not job.rows or not isinstance(job.rows[0], Window):
            return super().prepare(job, max_tokens, max_rows)
        features = self.elastic_tokenizer.tensors(job.rows)
        lengths = features["attention_mask"].sum(1).tolist()
        job.tokens = int(sum(lengths))
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        key = (None, self.routed_task(job.request))  # as Engine.prepare keys a rerank job's segments
        segments: list[Segment] = []
        start = 0
        while start < len(order):
            if job.cancelled:
                raise Cancelled()
            width = max(1, lengths[order[start]])
            idx = order[start : start + max(1, min(max_rows, max_tokens // width))]
            segments.append(Segment(job, idx, _slice_features(features, idx, width), width * len(idx), key))
            start += len(idx)
        job.segments_left = len(segments)
        return segments

    def render(self, job: Job) -> bytes:
        if job.rows and isinstance(job.rows[0], Window):  # one score per document from its windows' scores
            combine = max if self.span_score == "max" else (lambda xs: sum(xs) / len(xs))
            per_doc: dict[int, list[float]] = {}
            for window, score in zip(job.rows, job.outputs):
                per_doc.setdefault(window.row, []).append(float(score))
            job.outputs = [combine(per_doc[i]) for i in range(len(per_doc))]
        return super().render(job)


ENGINES: dict[str, type[ElasticEngine]] = {
    "text_embedding": ElasticTextEmbeddingEngine,
    "sparse_embedding": ElasticSparseEmbeddingEngine,
    "rerank": ElasticRerankEngine,
}

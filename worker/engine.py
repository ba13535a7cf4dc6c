"""Model engines: pre (tokenise), core (forward under ``inference_mode``), post (shape the answer).

One engine per task type, all built on sentence-transformers' ``preprocess`` + ``forward`` so
that results equal ``encode`` / ``predict`` in-process. The batcher calls :meth:`Engine.prepare`
on the tokeniser thread, :meth:`Engine.forward` on the model thread, and the HTTP handler calls
:meth:`Engine.render` when every row of a request is done.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from .chunking import Chunk, chunk, utf16_index
from .modelstore import ModelInfo

# Keys of the feature dict that are per-row tensors [rows, seq]; anything else is batch-wide.
_PAD_KEYS_ZERO = ("attention_mask", "token_type_ids")
# Inputs longer than this many characters per token of the model's window are cut before tokenising
# (a token is rarely longer than a word; the cut is checked to keep more than the window).
CLIP_CHARS_PER_TOKEN = 8
_LAST_SPACE = re.compile(r"\s\S*\Z")


class Cancelled(Exception):
    """The request was given up (client gone, or its deadline passed) while it was being prepared."""


class TooManyRows(ValueError):
    """Chunking made more rows than an allocation's queue holds."""

    def __init__(self, at_least: int, capacity: int) -> None:
        super().__init__(f"the request has at least {at_least} inputs (chunks included); "
                         f"at most {capacity} fit in the queue of an allocation")


DEVICES = ("auto", "cpu", "cuda")
# A reduced precision is used on a GPU only when every output of the check batch keeps this cosine with fp32's.
MIN_HALF_COSINE = 0.999
# The check batch: short and long, several languages, so padding and attention masks are exercised.
DTYPE_CHECK = [
    "How do I bake bread at home?",
    "what causes the northern lights",
    "Wie backe ich Brot zu Hause? Mehl, Wasser, Salz und Hefe.",
    "A longer passage: " + " ".join(f"sentence {i} about solar wind and the polar sky." for i in range(20)),
]


def select_device(requested: str, cuda_available: bool) -> str:
    """``auto`` runs on the GPU when there is one; ``cuda`` without a GPU is an error, not a silent CPU."""
    if requested not in DEVICES:
        raise ValueError(f"unknown device [{requested}]; use one of {', '.join(DEVICES)}")
    if requested == "cuda" and not cuda_available:
        raise ValueError("device [cuda] was asked for, but torch sees no CUDA device")
    if requested == "auto":
        return "cuda" if cuda_available else "cpu"
    return requested


def min_cosine(reference: Any, candidate: Any) -> float:
    """The lowest cosine similarity between rows of two outputs (a 1-D output, e.g. rerank scores, is one row)."""
    import torch

    reference, candidate = reference.detach(), candidate.detach()
    a = reference.float().reshape(reference.shape[0], -1) if reference.dim() > 1 else reference.float()[None]
    b = candidate.float().reshape(a.shape).to(a.device)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)
    # Two all-zero rows (a sparse row with no weights) agree; cosine_similarity would call them 0.
    both_zero = (a.abs().amax(1) == 0) & (b.abs().amax(1) == 0)
    return float(torch.where(both_zero, torch.ones_like(cos), cos).min())


def choose_dtype(model: Any, run: Any, candidates: tuple[Any, ...], threshold: float = MIN_HALF_COSINE
                 ) -> tuple[Any, Any, dict[str, float]]:
    """The first reduced precision whose outputs stay within ``threshold`` cosine of fp32's on the check batch.

    ``run(model)`` gives the model's output for the check batch. Each candidate is tried on a copy, so the
    fp32 weights stay exact for the next one; returns (model to serve, its dtype, cosine per dtype tried)."""
    import copy

    import torch

    reference = run(model)
    measured: dict[str, float] = {}
    for dtype in candidates:
        trial = copy.deepcopy(model).to(dtype)
        try:
            cosine = min_cosine(reference, run(trial))
        except RuntimeError:  # an operation without a kernel for this dtype on this device
            cosine = float("nan")
        measured[str(dtype).removeprefix("torch.")] = cosine
        if cosine >= threshold:
            return trial, dtype, measured
        del trial
    return model, torch.float32, measured


@dataclass
class InferRequest:
    inputs: list[str]
    input_type: str | None = None
    query: str | None = None
    return_documents: bool = True
    top_n: int | None = None
    # Chunked inference: Elasticsearch chunking settings; each input answers with its chunks.
    chunking: dict[str, Any] | None = None


@dataclass(eq=False)
class Job:
    """One HTTP request inside the worker; rows are texts (or query/document pairs)."""

    request: InferRequest
    rows: list[Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    # For chunked inference: (input index, chunk) of every row.
    chunks: list[tuple[int, Chunk]] | None = None
    arrived: float = field(default_factory=time.perf_counter)
    started: float | None = None
    outputs: list[Any] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    segments_left: int = 0
    cancelled: bool = False
    tokens: int = 0  # tokens the model reads for this job, special tokens and prompts included (OpenAI's usage)

    def __post_init__(self) -> None:
        self.outputs = [None] * len(self.rows)
        self.truncated = [False] * len(self.rows)


@dataclass(eq=False)
class Segment:
    """Rows of one job that go into one batch, already tokenised."""

    job: Job
    rows: list[int]
    features: dict[str, Any]
    tokens: int  # padded: rows x sequence length
    key: Any = None  # only segments with equal keys share a batch


def _slice_features(features: dict[str, Any], idx: list[int], length: int) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    index = torch.tensor(idx, dtype=torch.long)
    for k, v in features.items():
        if isinstance(v, torch.Tensor) and v.dim() == 2:
            out[k] = v.index_select(0, index)[:, :length]
        else:
            out[k] = v
    return out


def collate(segments: list[Segment], pad_id: int) -> dict[str, Any]:
    """Pad the segments' tensors to the longest one and stack them into one batch."""
    import torch

    if len(segments) == 1:
        return segments[0].features
    width = max(s.features["input_ids"].shape[1] for s in segments)
    out: dict[str, Any] = {}
    for k, v in segments[0].features.items():
        if isinstance(v, torch.Tensor) and v.dim() == 2:
            parts = []
            fill = 0 if k in _PAD_KEYS_ZERO else pad_id
            for s in segments:
                t = s.features[k]
                if t.shape[1] < width:
                    t = torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill)
                parts.append(t)
            out[k] = torch.cat(parts, 0)
        else:
            out[k] = v
    return out


class Engine:
    """Shared machinery; subclasses say how to load the model and shape rows and outputs."""

    task_type: str = ""
    output_key: str = ""

    def __init__(self, info: ModelInfo, num_threads: int) -> None:
        self.info = info
        self.num_threads = num_threads
        self.model: Any = None
        self.max_seq_length = info.max_seq_length or 512
        self.pad_id = 0
        self.group_by_prompt = False
        self.traced = False  # the transformer runs as one TorchScript graph (tracing.py)
        # The model's own cap on padded tokens per batch, where larger batches run slower (None: no cap).
        self.max_batch_tokens: int | None = None
        self.device = "cpu"
        self.dtype_check: dict[str, float] = {}  # cosine with fp32 of each reduced precision tried on the GPU

    # -- lifecycle -----------------------------------------------------------------------------

    def load(self) -> None:
        import torch

        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        torch.set_num_threads(self.num_threads)
        self.model = self._load()
        self.model.eval()
        if os.environ.get("INFERNETES_WORKER_TORCHSCRIPT", "1") != "0":
            from .tracing import trace_transformer

            self.traced = trace_transformer(self.model)
        tokenizer = self.tokenizer
        self.pad_id = tokenizer.pad_token_id or 0
        self.max_seq_length = self._model_max_length() or self.max_seq_length

    def _load(self) -> Any:
        raise NotImplementedError

    def _model_max_length(self) -> int | None:
        return getattr(self.model, "max_seq_length", None)

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def runs_on_gpu(self) -> bool:
        """Only the sentence-transformers forward below moves its inputs to the model's device; engines with
        a forward of their own (ONNX Runtime, Elastic's TorchScript traces) stay on the CPU."""
        return type(self).forward is Engine.forward

    def place(self, requested: str, cuda_available: bool | None = None) -> str:
        """Move a loaded model to its device (after any fork: a zygote never touches CUDA); returns the device.

        On a GPU the model runs in fp16 or bf16 when the outputs of a check batch stay within
        ``MIN_HALF_COSINE`` of fp32's, else in fp32. Tokenising stays on the CPU threads."""
        import torch

        if cuda_available is None:
            cuda_available = torch.cuda.is_available()
        device = select_device(requested, cuda_available)
        if device == "cpu" or not self.runs_on_gpu:
            return "cpu"
        candidates = (torch.float16,) + ((torch.bfloat16,) if torch.cuda.is_bf16_supported() else ())
        self.move(device, candidates)
        return device

    def move(self, device: str, candidates: tuple[Any, ...]) -> None:
        """Run on ``device`` in the first of ``candidates`` that passes the check (fp32 if none does)."""
        from .tracing import TracedModel

        first = self.model[0] if len(self.model) else None
        if isinstance(getattr(first, "model", None), TracedModel):
            first.model = first.model.eager  # a trace may hold CPU constants; on a GPU the GIL matters little
            self.traced = False
        self.model.to(device)
        self.device = device
        check = InferRequest(inputs=DTYPE_CHECK, query=DTYPE_CHECK[0])
        features = self.tokenize(self.rows(check), None, self.routed_task(check))

        def run(model: Any) -> Any:
            import torch

            with torch.inference_mode():
                return model({k: v.to(device) if isinstance(v, torch.Tensor) else v
                              for k, v in features.items()})[self.output_key]

        self.model, dtype, self.dtype_check = choose_dtype(self.model, run, candidates)
        self.dtype = str(dtype).removeprefix("torch.")
        if device != "cpu":
            self.max_batch_tokens = None  # the CPU caches' limits do not apply

    dtype = "float32"

    def warmup(self) -> None:
        """Run the model once so the first request does not pay for lazy initialisation."""
        request = InferRequest(inputs=["warm up"], query="warm up")
        job = Job(request=request, rows=self.rows(request), loop=None, future=None)  # type: ignore[arg-type]
        for seg in self.prepare(job, 1 << 30, 1 << 30):
            self.store(seg, self.forward(seg.features))

    # -- pre ----------------------------------------------------------------------------------

    def rows(self, request: InferRequest) -> list[Any]:
        return list(request.inputs)

    def new_job(self, request: InferRequest, loop: Any, future: Any, max_rows: int | None = None,
                cancelled: Any = None) -> Job:
        """A job whose rows are the request's inputs, or their chunks for chunked inference.

        Chunking is CPU work: callers run this off the event loop. It stops early with :class:`TooManyRows`
        once the chunks pass ``max_rows``, and with :class:`Cancelled` once ``cancelled()`` is true."""
        if request.chunking is None:
            return Job(request=request, rows=self.rows(request), loop=loop, future=future)
        pieces: list[tuple[int, Chunk]] = []
        for i, text in enumerate(request.inputs):
            if cancelled is not None and cancelled():
                raise Cancelled()
            pieces += [(i, c) for c in chunk(text, request.chunking)]
            if max_rows is not None and len(pieces) > max_rows:
                raise TooManyRows(len(pieces), max_rows)
        texts = [request.inputs[i][c.start : c.end] for i, c in pieces]
        chunked = InferRequest(**{**request.__dict__, "inputs": texts})
        job = Job(request=chunked, rows=self.rows(chunked), loop=loop, future=future, chunks=pieces)
        job.request = request
        return job

    def by_input(self, job: Job, item: Any) -> list[Any]:
        """Per-row results regrouped per input: each input's list of chunk results."""
        assert job.chunks is not None
        grouped: list[list[Any]] = [[] for _ in job.request.inputs]
        # Offsets in UTF-16 code units, as Elasticsearch (Java) reports them.
        index = [utf16_index(text) for text in job.request.inputs]
        for row, (i, c) in enumerate(job.chunks):
            text = job.request.inputs[i]
            grouped[i].append({"text": text[c.start : c.end], "start_offset": index[i](c.start),
                               "end_offset": index[i](c.end), **item(row)})
        return [{"chunks": g} for g in grouped]

    def routed_task(self, request: InferRequest) -> str | None:
        return None

    def prompt(self, request: InferRequest) -> str | None:
        return self.info.prompt_for(request.input_type)

    def prepare(self, job: Job, max_tokens: int, max_rows: int) -> list[Segment]:
        """Tokenise a job's rows at once, then cut them, longest first, into segments within budget.

        Very long inputs are cut first (:meth:`clip`), so a 6 MB input costs what a few kB do; a job
        cancelled meanwhile stops here with :class:`Cancelled`."""
        prompt = self.prompt(job.request)
        task = self.routed_task(job.request)
        rows: list[Any] = []
        clipped: list[bool] = []
        for row in job.rows:
            if job.cancelled:
                raise Cancelled()
            if isinstance(row, str):
                short = self.clip(row, prompt)
            else:  # a (query, document) pair: each side on its own
                short = tuple(self.clip(part, None) for part in row)
            rows.append(short)
            clipped.append(short is not row and short != row)
        if job.cancelled:
            raise Cancelled()
        features = self.tokenize(rows, prompt, task)
        mask = features["attention_mask"]
        lengths = mask.sum(1).tolist()
        job.tokens = int(sum(lengths))
        if self.flags_truncation:
            full = self.max_seq_length
            for i, n in enumerate(lengths):
                if n >= full:
                    job.truncated[i] = clipped[i] or self._exceeds(rows[i], prompt)
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        key = (prompt if self.group_by_prompt else None, task)
        segments: list[Segment] = []
        start = 0
        while start < len(order):
            width = max(1, lengths[order[start]])
            rows_fit = max(1, min(max_rows, max_tokens // width))
            idx = order[start : start + rows_fit]
            segments.append(Segment(job, idx, _slice_features(features, idx, width), width * len(idx), key))
            start += rows_fit
        job.segments_left = len(segments)
        return segments

    flags_truncation = False

    def clip(self, text: str, prompt: str | None) -> str:
        """A prefix of a very long ``text`` that still holds more tokens than the model reads, else ``text``.

        The cut falls on white space, where every tokenizer here splits words, so the tokens the model
        keeps are exactly those of the whole text; tokenising megabytes only to keep 512 tokens would cost
        seconds and leave the worker's memory inflated (issue 13, D4/D5)."""
        limit = self.max_seq_length * CLIP_CHARS_PER_TOKEN
        while len(text) > limit:
            head = text[:limit]
            space = _LAST_SPACE.search(head)
            if space is not None and space.start() > limit // 2:
                head = head[: space.start()]
            if self._count_tokens((prompt or "") + head) > self.max_seq_length + 1:
                return head
            limit *= 4
        return text

    def _count_tokens(self, text: str) -> int:
        tok = self.tokenizer
        if callable(tok):  # a transformers tokenizer
            return len(tok(text, add_special_tokens=False, truncation=False)["input_ids"])
        # A bare `tokenizers` one (Elastic's format); where it truncates, the count stays short and nothing is cut.
        return len(tok.encode(text, add_special_tokens=False).ids)

    def tokenize(self, rows: list[Any], prompt: str | None, task: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"prompt": prompt} if prompt else {}
        if task is not None:
            kwargs["task"] = task
        return self.model.preprocess(rows, **kwargs)

    def _exceeds(self, row: Any, prompt: str | None) -> bool:
        text = (prompt or "") + row if isinstance(row, str) else row
        return len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"]) > self.max_seq_length

    # -- the tokenizer on its own (TEI's /tokenize, token-id inputs, sparse token ids) ------------

    def token_details(self, texts: list[str], prompt: str | None, add_special_tokens: bool) -> list[list[dict[str, Any]]]:
        """Each text's tokens as TEI's ``/tokenize`` shows them: id, text, special, character start and stop."""
        tok = self.tokenizer
        special = set(tok.all_special_ids)
        out = []
        for text in texts:
            full = (prompt or "") + text
            enc = tok(full, add_special_tokens=add_special_tokens, truncation=True, max_length=self.max_seq_length,
                      return_offsets_mapping=True)
            tokens = []
            for token_id, (start, stop) in zip(enc["input_ids"], enc["offset_mapping"]):
                is_special = token_id in special
                tokens.append({
                    "id": int(token_id),
                    "text": tok.convert_ids_to_tokens(token_id) if is_special else full[start:stop],
                    "special": is_special,
                    "start": None if is_special else int(start),
                    "stop": None if is_special else int(stop),
                })
            out.append(tokens)
        return out

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Token ids back to text (special tokens dropped), for inputs given as token ids."""
        size = len(self.tokenizer)
        for i, row in enumerate(ids):
            bad = [t for t in row if not 0 <= t < size]
            if bad:
                raise ValueError(f"[input] entry [{i}] holds token id [{bad[0]}], outside the model's "
                                 f"vocabulary of {size} tokens")
        return list(self.tokenizer.batch_decode(ids, skip_special_tokens=True))

    def token_ids(self, tokens: list[str]) -> list[int | None]:
        """Vocabulary ids of tokens (None for a token the vocabulary does not hold)."""
        unk = self.tokenizer.unk_token_id
        ids = self.tokenizer.convert_tokens_to_ids(tokens)
        return [None if (i is None or (i == unk and t != self.tokenizer.unk_token)) else int(i)
                for t, i in zip(tokens, ids)]

    # -- core ---------------------------------------------------------------------------------

    def forward(self, features: dict[str, Any]) -> Any:
        import torch

        if self.device != "cpu":
            features = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                        for k, v in features.items()}
        with torch.inference_mode():
            output = self.model(features)[self.output_key]
        return output if self.device == "cpu" else output.float().cpu()

    def store(self, segment: Segment, output: Any) -> None:
        """Scatter a batch's output rows back into their job (model thread)."""
        out = self.post(output)
        for i, row in enumerate(segment.rows):
            segment.job.outputs[row] = out[i]

    def post(self, output: Any) -> Any:
        return output.float().numpy()

    # -- post ---------------------------------------------------------------------------------

    def render(self, job: Job) -> bytes:
        raise NotImplementedError


class TextEmbeddingEngine(Engine):
    task_type = "text_embedding"
    output_key = "sentence_embedding"
    flags_truncation = True

    def _load(self) -> Any:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(
            str(self.info.path), device="cpu", local_files_only=True, model_kwargs={"use_safetensors": True}
        )
        # A pooling layer that excludes the prompt needs each batch to share one prompt.
        self.group_by_prompt = any(getattr(m, "include_prompt", True) is False for m in model)
        return model

    def render(self, job: Job) -> bytes:
        def item(row: int) -> dict[str, Any]:
            # is_truncated appears only when true: Elasticsearch's text_embedding results carry just the vector.
            if job.truncated[row]:
                return {"embedding": job.outputs[row], "is_truncated": True}
            return {"embedding": job.outputs[row]}

        results = self.by_input(job, item) if job.chunks else [item(r) for r in range(len(job.outputs))]
        return orjson.dumps({"text_embedding": results}, option=orjson.OPT_SERIALIZE_NUMPY)


class SparseEmbeddingEngine(Engine):
    task_type = "sparse_embedding"
    output_key = "sentence_embedding"
    flags_truncation = True

    def _load(self) -> Any:
        from sentence_transformers import SparseEncoder

        from sentence_transformers.base.modules.router import Router

        model = SparseEncoder(
            str(self.info.path), device="cpu", local_files_only=True, model_kwargs={"use_safetensors": True}
        )
        # Asymmetric (query / document) models route by task.
        self.routed = any(isinstance(m, Router) for m in model.modules())
        vocab = model.tokenizer.get_vocab()
        self.id_to_token = [""] * (max(vocab.values()) + 1)
        for token, idx in vocab.items():
            self.id_to_token[idx] = token
        # SPLADE's MLM head writes a vocabulary-wide row of logits per token: past a few tens of MB
        # per batch the pooling runs out of cache and throughput falls (on a 30k-token vocabulary,
        # measured with one thread: 8-16 queries ~390/s against ~280/s for 64; one 210-token
        # passage at a time ~27/s against ~18.6/s for 2 to 16).
        self.max_batch_tokens = max(1, self.LOGITS_BYTES_PER_BATCH // (4 * len(self.id_to_token)))
        return model

    LOGITS_BYTES_PER_BATCH = 32 << 20

    def post(self, output: Any) -> Any:
        # Keep only the non-zero weights: (indices, values) per row, found with one nonzero() call.
        dense = output.float()
        rows, cols = dense.nonzero(as_tuple=True)
        values = dense[rows, cols].numpy()
        rows_np, cols_np = rows.numpy(), cols.numpy()
        bounds = np.searchsorted(rows_np, np.arange(dense.shape[0] + 1))
        return [(cols_np[bounds[i] : bounds[i + 1]], values[bounds[i] : bounds[i + 1]]) for i in range(dense.shape[0])]

    routed = False

    def routed_task(self, request: InferRequest) -> str | None:
        if not self.routed:
            return None
        return "query" if request.input_type == "SEARCH" else "document"

    def render(self, job: Job) -> bytes:
        vocab = self.id_to_token

        def item(row: int) -> dict[str, Any]:
            cols, values = job.outputs[row]
            order = np.argsort(-values, kind="stable")
            # numpy float32 scalars: orjson writes their shortest float32 form.
            embedding = {vocab[c]: v for c, v in zip(cols[order].tolist(), values[order])}
            return {"is_truncated": job.truncated[row], "embedding": embedding}

        results = self.by_input(job, item) if job.chunks else [item(r) for r in range(len(job.outputs))]
        return orjson.dumps({"sparse_embedding": results}, option=orjson.OPT_SERIALIZE_NUMPY)


class RerankEngine(Engine):
    task_type = "rerank"
    output_key = "scores"

    def _load(self) -> Any:
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(
            str(self.info.path), device="cpu", local_files_only=True, model_kwargs={"use_safetensors": True}
        )
        self.activation = model.activation_fn
        return model

    def _model_max_length(self) -> int | None:
        return getattr(self.model, "max_length", None)

    def rows(self, request: InferRequest) -> list[Any]:
        return [(request.query or "", doc) for doc in request.inputs]

    def prompt(self, request: InferRequest) -> str | None:
        return None

    def post(self, output: Any) -> Any:
        scores = output.float()
        if self.activation is not None:
            scores = self.activation(scores)
        if scores.dim() > 1:
            scores = scores[:, 0] if scores.shape[1] == 1 else scores[:, -1]
        return scores.numpy()

    def render(self, job: Job) -> bytes:
        req = job.request
        scores = np.asarray(job.outputs, dtype=np.float32)
        order = np.argsort(-scores, kind="stable")
        if req.top_n is not None:
            order = order[: req.top_n]
        results = []
        for i in order.tolist():
            item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if req.return_documents:
                item["text"] = req.inputs[i]
            results.append(item)
        return orjson.dumps({"rerank": results}, option=orjson.OPT_SERIALIZE_NUMPY)


class OnnxEngine(Engine):
    """Loading, tokenising and the session of a model made by ``infernetes models optimize`` (ONNX Runtime)."""

    def load(self) -> None:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.info.path))
        self.pad_id = self._tokenizer.pad_token_id or 0
        self.model = self  # loaded; the session itself starts on first use, after any fork (thread pools)
        self.session: Any = None
        self.options = self.info.options
        # ONNX Runtime's CPU kernels slow down as batches grow past a few hundred tokens (MiniLM int8,
        # one thread: 210-token passages 47/s one or two at a time, 39/s sixteen at a time, while
        # 32 short queries of ~14 tokens run as fast as 64).
        self.max_batch_tokens = self.ONNX_MAX_BATCH_TOKENS
        self._loaded()

    ONNX_MAX_BATCH_TOKENS = 512

    def _loaded(self) -> None:
        """Task-specific set-up once the tokenizer is there."""

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def eval(self) -> None:
        return None

    def tokenize(self, rows: list[Any], prompt: str | None, task: str | None) -> dict[str, Any]:
        if rows and not isinstance(rows[0], str):  # (query, document) pairs
            enc = self._tokenizer([q for q, _ in rows], [d for _, d in rows], padding=True, truncation=True,
                                  max_length=self.max_seq_length, return_tensors="pt")
        else:
            enc = self._tokenizer([(prompt or "") + r for r in rows], padding=True, truncation=True,
                                  max_length=self.max_seq_length, return_tensors="pt")
        return dict(enc)

    def run(self, features: dict[str, Any]) -> Any:
        from .optimize import onnx_session

        if self.session is None:
            self.session = onnx_session(self.info.path, self.num_threads)
            self._inputs = [i.name for i in self.session.get_inputs()]
        return self.session.run(None, {k: features[k].numpy() for k in self._inputs})[0]


class OnnxTextEmbeddingEngine(OnnxEngine, TextEmbeddingEngine):
    """Text embeddings with ONNX Runtime."""

    def forward(self, features: dict[str, Any]) -> Any:
        from .optimize import pool

        hidden = self.run(features)
        mask = features["attention_mask"].numpy()
        return pool(hidden, mask, self.options.get("pooling", "mean"), bool(self.options.get("normalize")))

    def post(self, output: Any) -> Any:
        return output


class OnnxSparseEmbeddingEngine(OnnxEngine, SparseEmbeddingEngine):
    """SPLADE sparse embeddings with ONNX Runtime: the masked-LM logits pooled as the SparseEncoder does."""

    def _loaded(self) -> None:
        vocab = self._tokenizer.get_vocab()
        self.id_to_token = [""] * (max(vocab.values()) + 1)
        for token, idx in vocab.items():
            self.id_to_token[idx] = token
        self.max_batch_tokens = max(1, min(self.ONNX_MAX_BATCH_TOKENS,
                                           self.LOGITS_BYTES_PER_BATCH // (4 * len(self.id_to_token))))

    def forward(self, features: dict[str, Any]) -> Any:
        import torch

        from .optimize import splade_pool

        return torch.from_numpy(splade_pool(self.run(features), features["attention_mask"].numpy()))


class OnnxRerankEngine(OnnxEngine, RerankEngine):
    """Cross-encoder scores with ONNX Runtime; the model's activation is applied as the CrossEncoder does."""

    def _loaded(self) -> None:
        import torch

        self.activation = torch.nn.Sigmoid() if self.options.get("activation") == "sigmoid" else None

    def forward(self, features: dict[str, Any]) -> Any:
        import torch

        return torch.from_numpy(self.run(features))


ONNX_ENGINES: dict[str, type[Engine]] = {
    e.task_type: e for e in (OnnxTextEmbeddingEngine, OnnxSparseEmbeddingEngine, OnnxRerankEngine)
}


ENGINES: dict[str, type[Engine]] = {
    e.task_type: e for e in (TextEmbeddingEngine, SparseEmbeddingEngine, RerankEngine)
}


def engine_for(info: ModelInfo, num_threads: int) -> Engine:
    if info.backend == "elastic":  # Elastic's TorchScript format (Eland uploads, Elastic's repository)
        from .elastic_engine import ENGINES as ELASTIC_ENGINES

        return ELASTIC_ENGINES[info.task_type](info, num_threads)
    if info.backend == "onnx":
        return ONNX_ENGINES[info.task_type](info, num_threads)
    try:
        return ENGINES[info.task_type](info, num_threads)
    except KeyError:
        raise ValueError(f"model [{info.model_id}] has unsupported task [{info.task_type}]") from None

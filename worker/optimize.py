"""Faster CPU variants of models: ONNX Runtime, optionally with int8 weights.

``infernetes models optimize minilm --model-id minilm-int8 --quantize int8`` exports the model's
transformer to ONNX (torch.onnx), quantizes its weights to int8 per channel (ONNX Runtime's dynamic
quantization; the feed-forward output projections stay fp32) when asked, and checks the result
against the original on a calibration set of real sentences; the variant enters the store only if
it passes. An endpoint chooses the variant by its model id; ``<id>_linux-x86_64`` (Elastic's name
for its x86-optimized builds) makes and serves this variant of ``<id>`` on first use.

The checks, per task:
- text_embedding: every embedding keeps a cosine similarity of at least 0.99 with the original's;
- sparse_embedding: of each text's top tokens by weight, at least 90% are the original's top tokens,
  and every weight of the original's top tokens is within 5% of the text's largest weight;
- rerank: every score is within 0.02 of the original's (after the model's activation), and each
  query's best document is the same.

Supported: sentence-transformers models made of a transformer, mean or CLS pooling and optional
normalisation (most embedding models, E5 and MiniLM included); SPLADE sparse encoders (a masked-LM
transformer and max pooling of log(1 + relu)); cross-encoders with one output and a sigmoid or no
activation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .modelstore import MANIFEST, ModelInfo, ModelStore, ModelStoreError

ONNX_FILE = "model.onnx"
MIN_COSINE = 0.99
CALIBRATION = [
    "How do I bake bread at home?",
    "what causes the northern lights",
    "The stock market fell sharply after the central bank raised interest rates.",
    "Mix flour, water, salt and yeast, knead the dough and bake it in a hot oven.",
    "Wie backe ich Brot zu Hause?",
    "Les aurores boréales apparaissent près des pôles.",
    "python list comprehension example with a condition",
    "A long passage: " + " ".join(f"sentence {i} about solar wind, magnetic fields and the polar sky." for i in range(30)),
    "symptoms of vitamin d deficiency in adults",
    "cheap flights to lisbon in may",
    "🙂 emoji and punctuation!!! ???",
]


SPARSE_TOP_K = 20
MIN_TOP_K_OVERLAP = 0.9
SPARSE_WEIGHT_TOLERANCE = 0.05  # of the row's largest weight
RERANK_TOLERANCE = 0.02
# The models each task exports, and the output of the transformer the ONNX graph returns.
LOADERS = {"text_embedding": "SentenceTransformer", "sparse_embedding": "SparseEncoder", "rerank": "CrossEncoder"}
OUTPUTS = {"text_embedding": "last_hidden_state", "sparse_embedding": "logits", "rerank": "logits"}


class OptimizeError(ModelStoreError):
    pass


def load_reference(path: Path, task: str) -> Any:
    import sentence_transformers

    return getattr(sentence_transformers, LOADERS[task])(str(path), device="cpu", local_files_only=True,
                                                         model_kwargs={"use_safetensors": True})


def options_of(model: Any, path: Path, task: str) -> dict[str, Any]:
    """What the ONNX engine does around the graph: pooling (embeddings), SPLADE pooling, the score's activation."""
    if task == "text_embedding":
        return pooling_of(path)
    names = [type(m).__name__ for m in model]
    if task == "sparse_embedding":
        pooling = model[1] if len(names) == 2 and names == ["Transformer", "SpladePooling"] else None
        if pooling is None or getattr(pooling, "pooling_strategy", "max") != "max" or \
                getattr(pooling, "activation_function", "relu") != "relu":
            raise OptimizeError(f"sparse modules {names} are not supported by the ONNX backend (SPLADE: a "
                                "masked-LM transformer and max pooling of log(1 + relu))")
        return {"pooling": "splade"}
    import torch

    activation = getattr(model, "activation_fn", None)
    if names != ["Transformer"] or model.config.num_labels != 1:
        raise OptimizeError(f"cross-encoder modules {names} with {model.config.num_labels} labels are not "
                            "supported by the ONNX backend (one output)")
    if isinstance(activation, torch.nn.Sigmoid):
        return {"activation": "sigmoid"}
    if activation is None or isinstance(activation, torch.nn.Identity):
        return {"activation": "identity"}
    raise OptimizeError(f"activation [{type(activation).__name__}] is not supported by the ONNX backend")


def pooling_of(path: Path) -> dict[str, Any]:
    """Pooling mode and normalisation of a sentence-transformers folder."""
    modules = json.loads((path / "modules.json").read_text()) if (path / "modules.json").exists() else []
    pooling, normalize = "mean", False
    for m in modules:
        kind = m.get("type", "")
        if "Pooling" in kind:
            cfg = json.loads((path / m["path"] / "config.json").read_text())
            if cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif cfg.get("pooling_mode_mean_tokens", True):
                pooling = "mean"
            else:
                raise OptimizeError(f"pooling {cfg} is not supported by the ONNX backend")
        elif "Normalize" in kind:
            normalize = True
        elif "Transformer" not in kind:
            raise OptimizeError(f"module [{kind}] is not supported by the ONNX backend")
    return {"pooling": pooling, "normalize": normalize}


def export_onnx(model_dir: Path, target: Path, quantize: str | None, task: str = "text_embedding",
                model: Any = None) -> None:
    import torch

    model = model or load_reference(model_dir, task)
    transformer = model[0].auto_model.eval()
    output = OUTPUTS[task]
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if transformer.config.type_vocab_size > 1 else [])
    if task == "rerank":
        sample = model.tokenizer(["export", "a query"], ["a document", "a second, longer document"], padding=True,
                                 return_tensors="pt")
    else:
        sample = model.tokenizer(["export", "a second, longer sample"], padding=True, return_tensors="pt")

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = transformer

        def forward(self, *args: Any) -> Any:
            return getattr(self.inner(**dict(zip(names, args))), output)

    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"} if task == "rerank" else {0: "batch", 1: "sequence"}
    fp32 = target / ("model.fp32.onnx" if quantize else ONNX_FILE)
    with torch.inference_mode():
        torch.onnx.export(Wrapped().eval(), tuple(sample[n] for n in names), str(fp32), input_names=names,
                          output_names=[output], dynamic_axes=axes, opset_version=17, dynamo=False)
    if quantize == "int8":
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Per-channel int8 weights everywhere but the feed-forward output projections, which carry the
        # largest activations: quantizing them too was measured to cost ~1 point of cosine similarity.
        keep = [n.name for n in onnx.load(str(fp32)).graph.node
                if n.op_type in ("MatMul", "Gemm") and "output/dense" in n.name and "attention" not in n.name]
        quantize_dynamic(str(fp32), str(target / ONNX_FILE), per_channel=True, weight_type=QuantType.QInt8,
                         nodes_to_exclude=keep)
        fp32.unlink()
    elif quantize is not None:
        raise OptimizeError(f"unknown quantization [{quantize}]; use int8")


def optimize(store: ModelStore, source_id: str, model_id: str, *, quantize: str | None = None,
             replace: bool = False) -> tuple[ModelInfo, float]:
    """Create an ONNX variant of a model; returns it and the check's figure (text_embedding: the lowest cosine;
    sparse_embedding: the lowest top-k overlap; rerank: 1 - the largest score difference)."""
    source = store.get(source_id)
    if source is None:
        raise OptimizeError(f"model [{source_id}] is not in the store")
    task = source.task_type
    if source.kind not in ("sentence-transformers", "sparse-encoder", "cross-encoder") or source.backend != "torch":
        raise OptimizeError(f"model [{source_id}] is a [{source.kind}] model on [{source.backend}]: the ONNX backend "
                            "optimizes sentence-transformers, sparse-encoder and cross-encoder models")
    if store.get(model_id) is not None and not replace:
        raise OptimizeError(f"model [{model_id}] already exists in the store (use --replace)")
    # Embedding modules are read from the folder, before loading: a model with unsupported ones is refused at once.
    early = pooling_of(source.path) if task == "text_embedding" else None
    reference = load_reference(source.path, task)
    options = early or options_of(reference, source.path, task)
    staged = store.staging_dir()
    try:
        for item in source.path.iterdir():  # tokenizer and configs; the weights are replaced by the ONNX graph
            if item.name in (MANIFEST, "model.safetensors") or item.name.endswith(".onnx"):
                continue
            if item.is_dir():
                shutil.copytree(item, staged / item.name)
            else:
                shutil.copy2(item, staged / item.name)
        export_onnx(source.path, staged, quantize, task, reference)
        figure, checks = verify(source, staged, options, reference)
        if not checks["passed"]:
            raise OptimizeError(f"the optimized model drifts from [{source_id}]: {checks['why']}; it was not stored")
        overrides = {"backend": "onnx", "prompts": source.prompts or None, "max_seq_length": source.max_seq_length,
                     "options": {**options, "quantize": quantize, "source": source_id, "check": checks}}
        if task == "text_embedding":
            overrides["options"]["min_cosine"] = round(figure, 5)
        info = store.install(staged, model_id, source=f"{source_id} optimized (onnx"
                             f"{', ' + quantize if quantize else ''})", task_type=task,
                             overrides=overrides, replace=replace, require_safetensors=False)
        return info, figure
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def verify(source: ModelInfo, staged: Path, options: dict[str, Any], reference: Any = None
           ) -> tuple[float, dict[str, Any]]:
    """Compare the ONNX variant with the original on the calibration set: (figure, {passed, why, figures})."""
    import numpy as np

    task = source.task_type
    reference = reference or load_reference(source.path, task)
    session, tokenizer = open_onnx(staged, 1)
    length = source.max_seq_length or 512
    if task == "text_embedding":
        expected = reference.encode(CALIBRATION, normalize_embeddings=True)
        ours = run_onnx(session, tokenizer, CALIBRATION, length, options["pooling"], True)
        cosine = float(np.min(np.sum(expected * ours, axis=1)))
        return cosine, {"passed": cosine >= MIN_COSINE, "min_cosine": round(cosine, 5),
                        "why": f"lowest cosine similarity {cosine:.4f} < {MIN_COSINE}"}
    if task == "sparse_embedding":
        expected = reference.encode(CALIBRATION, convert_to_tensor=True, batch_size=1).to_dense().float().numpy()
        ours = run_onnx_sparse(session, tokenizer, CALIBRATION, length)
        return sparse_agreement(expected, ours)
    pairs = [(q, d) for q in CALIBRATION[:4] for d in CALIBRATION]
    expected = np.asarray(reference.predict(pairs, batch_size=8), dtype=np.float32)
    ours = activate(run_onnx_scores(session, tokenizer, pairs, length), options["activation"])
    return rerank_agreement(expected, ours, group=len(CALIBRATION))


def sparse_agreement(expected: Any, ours: Any, k: int = SPARSE_TOP_K) -> tuple[float, dict[str, Any]]:
    """Top-k token overlap and weight differences of two [texts, vocabulary] weight matrices."""
    import numpy as np

    overlaps, worst = [], 0.0
    for want, got in zip(expected, ours):
        top = [t for t in np.argsort(-want, kind="stable")[:k] if want[t] > 0]
        mine = set(t for t in np.argsort(-got, kind="stable")[:k] if got[t] > 0)
        overlaps.append(len(set(top) & mine) / max(1, len(top)) if top else float(not mine))
        scale = max(float(want.max()), 1e-6)
        if top:
            worst = max(worst, float(np.max(np.abs(want[top] - got[top]))) / scale)
    overlap = float(min(overlaps))
    passed = overlap >= MIN_TOP_K_OVERLAP and worst <= SPARSE_WEIGHT_TOLERANCE
    why = (f"lowest top-{k} token overlap {overlap:.3f} (at least {MIN_TOP_K_OVERLAP}), largest weight difference "
           f"{worst:.3f} of the row's largest weight (at most {SPARSE_WEIGHT_TOLERANCE})")
    return overlap, {"passed": passed, "min_top_k_overlap": round(overlap, 4),
                     "max_weight_difference": round(worst, 4), "why": why}


def rerank_agreement(expected: Any, ours: Any, group: int) -> tuple[float, dict[str, Any]]:
    """Score differences, and each query's best document (``group`` documents per query)."""
    import numpy as np

    worst = float(np.max(np.abs(expected - ours)))
    same_best = all(int(np.argmax(expected[i : i + group])) == int(np.argmax(ours[i : i + group]))
                    for i in range(0, len(expected), group))
    passed = worst <= RERANK_TOLERANCE and same_best
    why = (f"largest score difference {worst:.4f} (at most {RERANK_TOLERANCE}), "
           f"{'the same' if same_best else 'a different'} best document per query")
    return 1.0 - worst, {"passed": passed, "max_score_difference": round(worst, 5), "same_best": same_best,
                         "why": why}


def activate(scores: Any, activation: str) -> Any:
    import numpy as np

    return (1.0 / (1.0 + np.exp(-scores))).astype(np.float32) if activation == "sigmoid" else scores


def onnx_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path / ONNX_FILE), options, providers=["CPUExecutionProvider"])


def open_onnx(path: Path, threads: int) -> tuple[Any, Any]:
    """The session and the tokenizer of an ONNX model folder."""
    from transformers import AutoTokenizer

    return onnx_session(path, threads), AutoTokenizer.from_pretrained(str(path))


def pool(hidden: Any, mask: Any, mode: str, normalize: bool) -> Any:
    import numpy as np

    if mode == "cls":
        vectors = hidden[:, 0]
    else:
        weights = mask[..., None].astype(np.float32)
        vectors = (hidden * weights).sum(1) / np.clip(weights.sum(1), 1e-9, None)
    if normalize:
        vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
    return vectors.astype(np.float32)


def run_onnx(session: Any, tokenizer: Any, texts: list[str], max_length: int, mode: str, normalize: bool) -> Any:
    names = {i.name for i in session.get_inputs()}
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    hidden = session.run(None, {k: enc[k].astype("int64") for k in names})[0]
    return pool(hidden, enc["attention_mask"], mode, normalize)


def splade_pool(logits: Any, mask: Any) -> Any:
    """SPLADE: per vocabulary entry, the max over the text's tokens of log(1 + relu(logit))."""
    import numpy as np

    weights = np.log1p(np.maximum(logits, 0.0)) * mask[..., None].astype(np.float32)
    return weights.max(axis=1).astype(np.float32)


def run_onnx_sparse(session: Any, tokenizer: Any, texts: list[str], max_length: int) -> Any:
    """One text at a time: the logits are [rows, tokens, vocabulary], hundreds of MB for a padded batch."""
    import numpy as np

    names = {i.name for i in session.get_inputs()}
    rows = []
    for text in texts:
        enc = tokenizer([text], truncation=True, max_length=max_length, return_tensors="np")
        logits = session.run(None, {k: enc[k].astype("int64") for k in names})[0]
        rows.append(splade_pool(logits, enc["attention_mask"])[0])
    return np.stack(rows)


def run_onnx_scores(session: Any, tokenizer: Any, pairs: list[tuple[str, str]], max_length: int) -> Any:
    names = {i.name for i in session.get_inputs()}
    enc = tokenizer([q for q, _ in pairs], [d for _, d in pairs], padding=True, truncation=True,
                    max_length=max_length, return_tensors="np")
    return session.run(None, {k: enc[k].astype("int64") for k in names})[0][:, 0]

"""Faster CPU variants of text-embedding models: ONNX Runtime, optionally with int8 weights.

``infernetes models optimize minilm --model-id minilm-int8 --quantize int8`` exports the model's
transformer to ONNX (torch.onnx), quantizes its weights to int8 per channel (ONNX Runtime's dynamic
quantization; the feed-forward output projections stay fp32) when asked, and checks the result
against the original on a calibration set of real sentences: the variant enters the store only if
every embedding keeps a cosine similarity of at least 0.99 with the original's. An endpoint
chooses the variant by its model id.

Sentence-transformers models made of a transformer, mean or CLS pooling and optional normalisation
are supported (most embedding models, E5 and MiniLM included).
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


class OptimizeError(ModelStoreError):
    pass


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


def export_onnx(model_dir: Path, target: Path, quantize: str | None) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True,
                                model_kwargs={"use_safetensors": True})
    transformer = model[0].auto_model.eval()
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if transformer.config.type_vocab_size > 1 else [])
    sample = model.tokenizer(["export", "a second, longer sample"], padding=True, return_tensors="pt")

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = transformer

        def forward(self, *args: Any) -> Any:
            return self.inner(**dict(zip(names, args))).last_hidden_state

    axes = {n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]}
    fp32 = target / ("model.fp32.onnx" if quantize else ONNX_FILE)
    with torch.inference_mode():
        torch.onnx.export(Wrapped().eval(), tuple(sample[n] for n in names), str(fp32), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
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
    """Create an ONNX variant of a text-embedding model; returns it and the lowest cosine measured."""
    source = store.get(source_id)
    if source is None:
        raise OptimizeError(f"model [{source_id}] is not in the store")
    if source.task_type != "text_embedding" or source.kind != "sentence-transformers":
        raise OptimizeError(f"model [{source_id}] is a [{source.task_type}] model: the ONNX backend serves "
                            "text_embedding sentence-transformers models")
    if store.get(model_id) is not None and not replace:
        raise OptimizeError(f"model [{model_id}] already exists in the store (use --replace)")
    pooling = pooling_of(source.path)
    staged = store.staging_dir()
    try:
        for item in source.path.iterdir():  # tokenizer and configs; the weights are replaced by the ONNX graph
            if item.name in (MANIFEST, "model.safetensors") or item.name.endswith(".onnx"):
                continue
            if item.is_dir():
                shutil.copytree(item, staged / item.name)
            else:
                shutil.copy2(item, staged / item.name)
        export_onnx(source.path, staged, quantize)
        overrides = {"backend": "onnx", "prompts": source.prompts or None, "max_seq_length": source.max_seq_length,
                     "options": {**pooling, "quantize": quantize, "source": source_id}}
        cosine = verify(source, staged, pooling)
        if cosine < MIN_COSINE:
            raise OptimizeError(f"the optimized model drifts from [{source_id}]: lowest cosine similarity "
                                f"{cosine:.4f} < {MIN_COSINE}; it was not stored")
        overrides["options"]["min_cosine"] = round(cosine, 5)
        info = store.install(staged, model_id, source=f"{source_id} optimized (onnx"
                             f"{', ' + quantize if quantize else ''})", task_type="text_embedding",
                             overrides=overrides, replace=replace, require_safetensors=False)
        return info, cosine
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def verify(source: ModelInfo, staged: Path, pooling: dict[str, Any]) -> float:
    """Lowest cosine similarity between the original's embeddings and the ONNX variant's."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(source.path), device="cpu", local_files_only=True).encode(
        CALIBRATION, normalize_embeddings=True)
    session, tokenizer = open_onnx(staged, 1)
    ours = run_onnx(session, tokenizer, CALIBRATION, source.max_seq_length or 512, pooling["pooling"], True)
    return float(np.min(np.sum(reference * ours, axis=1)))


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

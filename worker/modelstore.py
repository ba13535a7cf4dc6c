"""The model store: model folders on disk, each with a manifest describing what it serves.

Layout: ``<root>/<model_id>/`` holds the model files (safetensors weights, tokenizer, configs)
and ``infernetes-model.json``, the manifest written at import or download time: task type,
loader kind, max sequence length, dimensions, prompts per input type, file checksums.
A model appears in the store only complete: it is assembled in a temporary folder and moved
into place with one rename. Pickle weights (``*.bin``, ``*.pt``, ...) are never stored.
Stored files are private to the user (files 0600, folders 0700). An import copies only regular
files that live inside the folder: a symbolic link is refused unless it points inside the folder
(or, for a Hugging Face cache snapshot, into that repository's ``blobs/``). Safetensors headers are
checked, and config files must hold JSON objects.

This module does not import torch: the control plane reads the store too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "infernetes-model.json"
MODEL_ID_RE = re.compile(r"^\.?[A-Za-z0-9](?:[A-Za-z0-9_.\-]*[A-Za-z0-9])?$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack", ".ot")
SKIP_DIRS = {".git", ".cache", "__pycache__", "onnx", "openvino", ".huggingface"}
KINDS = ("sentence-transformers", "sparse-encoder", "cross-encoder")
TASK_OF_KIND = {
    "sentence-transformers": "text_embedding",
    "sparse-encoder": "sparse_embedding",
    "cross-encoder": "rerank",
}
# Prompt names that sentence-transformers configs use, for each Elasticsearch input_type.
PROMPT_NAMES = {
    "SEARCH": ("query", "search_query", "Query", "retrieval.query"),
    "INGEST": ("document", "passage", "search_document", "Document", "retrieval.passage"),
    "CLASSIFICATION": ("classification",),
    "CLUSTERING": ("clustering",),
}


FILE_MODE = 0o600
DIR_MODE = 0o700
# A safetensors file starts with the length of its JSON header (u64, little-endian); real headers are
# kilobytes, and the format itself caps them at 100 MB.
SAFETENSORS_MAX_HEADER = 100_000_000


class ModelStoreError(Exception):
    """A model folder that cannot be imported, or a model id that cannot be stored."""


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    task_type: str
    kind: str
    path: Path
    max_seq_length: int | None = None
    dimensions: int | None = None
    similarity: str | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0
    source: str = ""
    created: float = 0.0
    files: dict[str, str] = field(default_factory=dict)
    backend: str = "torch"  # or "onnx" (infernetes models optimize)
    options: dict[str, Any] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("path")
        return out

    @classmethod
    def from_manifest(cls, path: Path, data: dict[str, Any]) -> ModelInfo:
        known = {f for f in cls.__dataclass_fields__ if f != "path"}
        return cls(path=path, **{k: v for k, v in data.items() if k in known})

    def prompt_for(self, input_type: str | None) -> str | None:
        return self.prompts.get(input_type) if input_type else None


def check_model_id(model_id: str) -> str:
    if len(model_id) > 64 or not MODEL_ID_RE.match(model_id):
        raise ModelStoreError(
            f"invalid model id [{model_id}]: use alphanumerics, '-', '_' or '.', start and end with an alphanumeric "
            "(a built-in id may start with '.'), at most 64 characters"
        )
    return model_id


def _read_json(path: Path, expect: type = dict) -> Any:
    """A JSON config file, which must hold a ``expect`` (an object by default); missing is empty."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return expect()
    except (OSError, ValueError) as exc:
        raise ModelStoreError(f"cannot read {path.name}: {exc}") from exc
    if not isinstance(data, expect):
        wanted = "a JSON object" if expect is dict else "a JSON array"
        raise ModelStoreError(f"{path.name} must hold {wanted}, not {type(data).__name__} [{str(data)[:80]}]")
    return data


def check_safetensors(path: Path) -> None:
    """Refuse a file that is not safetensors: a header length, a JSON header, tensors inside the file."""
    name = path.name
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ModelStoreError(f"{name} is not a safetensors file: it is only {size} bytes long")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(SAFETENSORS_MAX_HEADER, size - 8):
                raise ModelStoreError(
                    f"{name} is not a safetensors file: its first 8 bytes give a header of {length} bytes "
                    f"in a file of {size} bytes"
                )
            raw = f.read(length)
    except OSError as exc:
        raise ModelStoreError(f"cannot read {name}: {exc}") from exc
    try:
        header = json.loads(raw)
    except ValueError:
        raise ModelStoreError(f"{name} is not a safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise ModelStoreError(f"{name} is not a safetensors file: its header is not a JSON object")
    data_size = size - 8 - length
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str)
                or not isinstance(entry.get("shape"), list)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_size):
            raise ModelStoreError(f"{name} is not a valid safetensors file: tensor [{key}] is described wrongly "
                                  "or lies outside the file")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _is_pickle(name: str) -> bool:
    return name.endswith(PICKLE_SUFFIXES)


def _model_files(source: Path) -> list[Path]:
    """The files worth copying: everything but pickles and tool caches, relative to source.

    Symbolic links to folders are never followed (``os.walk`` lists them as names, where
    :func:`_source_file` refuses them)."""
    files = []
    for root, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not os.path.islink(os.path.join(root, d)))
        links = [d for d in os.listdir(root) if d not in SKIP_DIRS and os.path.islink(os.path.join(root, d))
                 and os.path.isdir(os.path.join(root, d))]
        for name in sorted(set(names) | set(links)):
            if not _is_pickle(name):
                files.append((Path(root) / name).relative_to(source))
    return files


def _source_file(source: Path, rel: Path) -> Path:
    """The regular file to copy for ``rel``: refuses links out of the folder and anything but a regular file.

    A link is followed only when its target lies inside the folder, or, in a Hugging Face cache snapshot
    (``.../models--org--name/snapshots/<revision>/``), inside that repository's ``blobs/``.
    """
    path = source / rel
    allowed = [source]
    if source.parent.name == "snapshots":
        allowed.append((source.parent.parent / "blobs").resolve())
    if path.is_symlink():
        target = path.resolve()
        if not any(target.is_relative_to(root) for root in allowed):
            raise ModelStoreError(
                f"model folder [{source}] holds [{rel}], a symbolic link to [{os.readlink(path)}] outside the folder; "
                "remove the link or copy the file in (links out of the folder are never followed)"
            )
        path = target
    try:
        mode = os.stat(path, follow_symlinks=False).st_mode
    except OSError as exc:
        raise ModelStoreError(f"cannot read [{rel}] in model folder [{source}]: {exc}") from exc
    if not stat.S_ISREG(mode):
        raise ModelStoreError(f"model folder [{source}] holds [{rel}], which is not a regular file")
    return path


def _make_private(folder: Path) -> None:
    """Files 0600, folders 0700: model files are the user's own."""
    os.chmod(folder, DIR_MODE)
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), DIR_MODE, follow_symlinks=False)
        for name in names:
            path = os.path.join(root, name)
            if os.path.islink(path):  # never stored: a link could point anywhere
                os.unlink(path)
            else:
                os.chmod(path, FILE_MODE)


def inspect_folder(source: Path, task_type: str | None = None, *, require_safetensors: bool = True) -> dict[str, Any]:
    """Work out what a model folder serves, without loading it.

    Returns the manifest fields ``task_type, kind, max_seq_length, dimensions, similarity, prompts``.
    """
    if not source.is_dir():
        raise ModelStoreError(f"model folder [{source}] does not exist")
    names = {p.name for p in source.iterdir()}
    weights = [p for p in source.rglob("*.safetensors")]
    if not require_safetensors:
        weights += source.glob("*.onnx")  # an exported model: ONNX Runtime loads no pickle either
    if not weights:
        pickles = sorted(n for n in names if _is_pickle(n))
        hint = f" (found {', '.join(pickles)}: convert them to safetensors first)" if pickles else ""
        raise ModelStoreError(f"model folder [{source}] has no safetensors weights{hint}; pickle weights are never loaded")
    for path in weights:
        if path.suffix == ".safetensors":
            check_safetensors(path)
    try:
        return _inspect(source, names, task_type)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        raise ModelStoreError(f"model folder [{source}] has a config value of an unexpected type: "
                              f"{type(exc).__name__}: {exc}") from None


def _inspect(source: Path, names: set[str], task_type: str | None) -> dict[str, Any]:
    config = _read_json(source / "config.json")
    if not config:
        raise ModelStoreError(f"model folder [{source}] has no config.json")
    modules = _read_json(source / "modules.json", list) if "modules.json" in names else []
    module_types = [m.get("type", "") for m in modules] if isinstance(modules, list) else []
    architectures = config.get("architectures") or []
    arch = architectures[0] if architectures else ""

    st_meta = _read_json(source / "config_sentence_transformers.json")
    st_config = _read_json(source / "sentence_bert_config.json")
    declared = {"CrossEncoder": "cross-encoder", "SparseEncoder": "sparse-encoder",
                "SentenceTransformer": "sentence-transformers"}.get(st_meta.get("model_type", ""))
    transformer_task = st_config.get("transformer_task", "")
    if declared:
        kind = declared
    elif any("SpladePooling" in t or "sparse_encoder" in t for t in module_types) or transformer_task == "fill-mask":
        kind = "sparse-encoder"
    elif transformer_task == "sequence-classification" or any("cross_encoder" in t for t in module_types):
        kind = "cross-encoder"
    elif not module_types and arch.endswith("ForMaskedLM"):
        kind = "sparse-encoder"  # a bare SPLADE checkpoint
    elif not module_types and arch.endswith("ForSequenceClassification"):
        kind = "cross-encoder"
    else:
        kind = "sentence-transformers"
    detected = TASK_OF_KIND[kind]
    if task_type is not None and task_type != detected:
        raise ModelStoreError(
            f"model folder [{source}] looks like a [{detected}] model ({kind}), not [{task_type}]"
        )

    tok_config = _read_json(source / "tokenizer_config.json")
    max_len = st_config.get("max_seq_length") or config.get("max_position_embeddings")
    tok_max = tok_config.get("model_max_length")
    if isinstance(tok_max, int) and tok_max < 100_000:
        max_len = min(max_len, tok_max) if max_len else tok_max
    if kind == "cross-encoder":
        max_len = min(max_len or 512, config.get("max_position_embeddings", 512))

    dimensions = None
    similarity = None
    if kind == "sentence-transformers":
        dimensions = config.get("hidden_size")
        for m in modules if isinstance(modules, list) else []:
            mod_cfg = _read_json(source / m.get("path", "") / "config.json") if m.get("path") else {}
            if "Pooling" in m.get("type", ""):
                dimensions = mod_cfg.get("word_embedding_dimension", dimensions)
            if "Dense" in m.get("type", ""):
                dimensions = mod_cfg.get("out_features", dimensions)
        similarity = {"cosine": "cosine", "dot": "dot_product", "euclidean": "l2_norm"}.get(
            st_meta.get("similarity_fn_name") or "cosine", "cosine"
        )
    elif kind == "sparse-encoder":
        dimensions = config.get("vocab_size")

    raw_prompts = st_meta.get("prompts") or {}
    prompts: dict[str, str] = {}
    for input_type, candidates in PROMPT_NAMES.items():
        for name in candidates:
            if raw_prompts.get(name):
                prompts[input_type] = raw_prompts[name]
                break
    return {
        "task_type": detected,
        "kind": kind,
        "max_seq_length": int(max_len) if max_len else None,
        "dimensions": int(dimensions) if dimensions else None,
        "similarity": similarity,
        "prompts": prompts,
    }


class ModelStore:
    """Model folders under one root directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path_for(self, model_id: str) -> Path:
        path = (self.root / check_model_id(model_id)).resolve()
        if path.parent != self.root.resolve():
            raise ModelStoreError(f"invalid model id [{model_id}]")
        return path

    def get(self, model_id: str) -> ModelInfo | None:
        try:
            path = self.path_for(model_id)
        except ModelStoreError:
            return None
        manifest = path / MANIFEST
        if not manifest.is_file():
            return None
        return ModelInfo.from_manifest(path, _read_json(manifest))

    def list(self) -> list[ModelInfo]:
        if not self.root.is_dir():
            return []
        out = []
        for child in sorted(self.root.iterdir()):
            if child.is_dir() and (child / MANIFEST).is_file() and MODEL_ID_RE.match(child.name):
                out.append(ModelInfo.from_manifest(child, _read_json(child / MANIFEST)))
        return out

    def staging_dir(self) -> Path:
        """A fresh temporary folder inside the store, on the same file system, for atomic installs."""
        self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))

    def install(
        self,
        staged: Path,
        model_id: str,
        *,
        source: str,
        task_type: str | None = None,
        overrides: dict[str, Any] | None = None,
        replace: bool = False,
        require_safetensors: bool = True,
        fields: dict[str, Any] | None = None,
    ) -> ModelInfo:
        """Write the manifest of a staged folder and move it into place with one rename.

        ``fields`` gives the manifest fields of a folder that ``inspect_folder`` cannot read (Elastic's format).
        """
        target = self.path_for(model_id)
        if target.exists() and not replace:
            raise ModelStoreError(f"model [{model_id}] already exists in the store")
        info = dict(fields) if fields is not None else inspect_folder(staged, task_type,
                                                                      require_safetensors=require_safetensors)
        info.update({k: v for k, v in (overrides or {}).items() if v is not None})
        files = {}
        size = 0
        for rel in _model_files(staged):
            files[str(rel)] = sha256_file(staged / rel)
            size += (staged / rel).stat().st_size
        manifest = ModelInfo(
            model_id=model_id,
            path=target,
            size_bytes=size,
            source=source,
            created=time.time(),
            files=files,
            **info,
        )
        (staged / MANIFEST).write_text(json.dumps(manifest.manifest(), indent=2, sort_keys=True))
        _make_private(staged)
        _fsync_tree(staged)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=".old-", dir=self.root))
            os.replace(target, old / "model")
            os.replace(staged, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staged, target)
        return manifest

    def import_folder(
        self,
        source: Path | str,
        model_id: str,
        *,
        task_type: str | None = None,
        overrides: dict[str, Any] | None = None,
        replace: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> ModelInfo:
        """Copy a local model folder (sentence-transformers, cross-encoder or SPLADE) into the store."""
        source = Path(source).expanduser().resolve()
        check_model_id(model_id)
        if self.path_for(model_id).exists() and not replace:
            raise ModelStoreError(f"model [{model_id}] already exists in the store")
        # Fail before copying anything: every file is a regular one inside the folder, the configs parse.
        sources = {rel: _source_file(source, rel) for rel in _model_files(source)}
        inspect_folder(source, task_type)
        staged = self.staging_dir()
        try:
            total = sum(path.stat().st_size for path in sources.values())
            done = 0
            for rel, path in sources.items():
                (staged / rel).parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                _copy_private(path, staged / rel)
                done += (staged / rel).stat().st_size
                if progress:
                    progress(done, total)
            return self.install(
                staged, model_id, source=str(source), task_type=task_type, overrides=overrides, replace=replace
            )
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def remove(self, model_id: str) -> bool:
        path = self.path_for(model_id)
        if not path.exists():
            return False
        trash = Path(tempfile.mkdtemp(prefix=".old-", dir=self.root))
        os.replace(path, trash / "model")
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def clean_staging(self) -> None:
        """Remove what an interrupted import or download left behind."""
        if self.root.is_dir():
            for child in self.root.iterdir():
                if child.name.startswith((".staging-", ".old-")):
                    shutil.rmtree(child, ignore_errors=True)

    def verify(self, model_id: str) -> list[str]:
        """Files whose checksum no longer matches the manifest."""
        info = self.get(model_id)
        if info is None:
            raise ModelStoreError(f"model [{model_id}] is not in the store")
        return [rel for rel, digest in info.files.items() if sha256_file(info.path / rel) != digest]


def _copy_private(src: Path, dst: Path) -> None:
    """Copy one regular file into a new 0600 file, never following a link at the source."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fin:
        if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
            raise ModelStoreError(f"[{src.name}] is not a regular file")
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        with os.fdopen(out, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)


def _fsync_tree(path: Path) -> None:
    for root, _dirs, names in os.walk(path):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())

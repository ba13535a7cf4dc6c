"""Elastic's trained-model format: a TorchScript trace, its ``inference_config`` and a vocabulary.

Models in this format arrive two ways: Eland uploads them through ``PUT _ml/trained_models/{id}``
(config), ``.../definition/{part}`` (base64 chunks of the ``.pt`` file) and ``.../vocabulary``;
or they are pulled from a repository in Elastic's layout (``{name}.metadata.json``, ``{name}.pt``,
``{name}.vocab.json``). Either way they end up as one folder in the model store holding
``model.torchscript`` (the trace, renamed so that no ``.pt`` ever sits in the store: the store
keeps pickles out, and a TorchScript archive is loaded only by ``torch.jit.load``),
``elastic-config.json`` and ``vocabulary.json``, with a manifest whose ``backend`` is ``elastic``.

Uploads in progress live in ``<store>/.uploads/<model_id>/`` (config, one file per part, the
vocabulary), so that they survive a restart of the server; the model moves into the store, in one
rename, once the config, every part and the vocabulary are there.

This module does not import torch (the control plane uses it).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from .elastic_tokenizers import TokenizationError, check_vocabulary, parse_tokenization
from .modelstore import ModelInfo, ModelStore

DEFINITION = "model.torchscript"
CONFIG = "elastic-config.json"
VOCABULARY = "vocabulary.json"
UPLOADS = ".uploads"
# Elasticsearch's task names and ours.
TASKS = {"text_embedding": "text_embedding", "text_expansion": "sparse_embedding", "text_similarity": "rerank"}
ES_TASK = {v: k for k, v in TASKS.items()}
OTHER_TASKS = ("fill_mask", "ner", "pass_through", "question_answering", "text_classification",
               "zero_shot_classification", "learning_to_rank", "classification", "regression")
# MlStrings.isValidId and ID_LENGTH_LIMIT.
ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_\-.]*[a-z0-9])?$")
ID_LIMIT = 64
CONFIG_FIELDS = {"model_id", "model_type", "description", "inference_config", "input", "metadata", "tags",
                 "prefix_strings", "platform_architecture", "model_size_bytes", "estimated_operations",
                 "default_field_map"}
# Fields Elasticsearch sets itself: a PUT that gives them is refused.
ILLEGAL_AT_CREATION = ("created_by", "create_time", "version", "license_level", "location", "model_package",
                       "definition", "compressed_definition")


class ElasticFormatError(ValueError):
    """A config, part or vocabulary that Elasticsearch would refuse; ``kind`` picks the HTTP error."""

    def __init__(self, reason: str, kind: str = "bad_request") -> None:
        super().__init__(reason)
        self.kind = kind  # bad_request | validation | not_found | exists | conflict | disk_full


def id_errors(model_id: str) -> list[str]:
    errors = []
    if not ID_RE.match(model_id):
        errors.append(f"Invalid model_id; '{model_id}' can contain lowercase alphanumeric (a-z and 0-9), hyphens or "
                      "underscores; must start and end with alphanumeric")
    if len(model_id) > ID_LIMIT:
        errors.append(f"Invalid model_id; '{model_id}' cannot contain more than {ID_LIMIT} characters.")
    return errors


def eland_id(hub_id: str) -> str:
    """The id Eland gives a hub model when ``--es-model-id`` is not set (``elasticsearch_model_id`` in Eland):
    white space, ``/`` and ``\\`` as ``__``, lower case, the last 64 characters, no leading ``__``."""
    return re.sub(r"[\s\\/]", "__", hub_id).lower()[-ID_LIMIT:].removeprefix("__")


def eland_names_for(model_id: str, known: list[str]) -> list[str]:
    """Known ids that a user who wrote ``model_id`` (e.g. the Elasticsearch page's ``msmarco-MiniLM-L12-cos-v5``)
    most likely uploaded with Eland: the id in lower case, or a hub id ``org__<id in lower case>``."""
    if model_id.startswith("."):
        return []
    wanted = eland_id(model_id)
    return [k for k in known if k != model_id and (k == wanted or k.endswith("__" + wanted))]


def validate_config(model_id: str, body: Any) -> dict[str, Any]:
    """A ``PUT _ml/trained_models/{id}`` body checked as Elasticsearch checks it; returns the config to store."""
    if not isinstance(body, dict):
        raise ElasticFormatError("request body must be a JSON object")
    errors = id_errors(model_id)
    if "model_id" in body and body["model_id"] != model_id:
        raise ElasticFormatError(f"Inconsistent model_id; '{body['model_id']}' specified in the body differs from "
                                 f"'{model_id}' specified as a URL argument")
    for name in ILLEGAL_AT_CREATION:
        if name in body:
            errors.append(f"illegal to set [{name}] at inference model creation")
    unknown = sorted(set(body) - CONFIG_FIELDS - set(ILLEGAL_AT_CREATION))
    if unknown:
        raise ElasticFormatError(f"[trained_model_config] unknown field [{unknown[0]}]")
    model_type = body.get("model_type")
    if model_type is None:
        errors.append("[model_type] must be set if [definition] is not defined.")
    elif model_type != "pytorch":
        errors.append(f"[model_type] [{model_type}] is not supported: Infernetes serves [pytorch] models "
                      "(Elastic's TorchScript format)")
    config = body.get("inference_config")
    task = None
    if config is None:
        errors.append("[inference_config] must not be null.")
    elif not isinstance(config, dict) or len(config) != 1:
        errors.append("[inference_config] must name exactly one task")
    else:
        task, task_config = next(iter(config.items()))
        if task in OTHER_TASKS:
            errors.append(f"[inference_config] task [{task}] is not supported: Infernetes serves "
                          f"[{', '.join(TASKS)}] models")
        elif task not in TASKS:
            errors.append(f"[inference_config] unknown task [{task}]")
        elif not isinstance(task_config, dict):
            errors.append(f"[inference_config.{task}] must be an object")
        else:
            try:
                parse_tokenization(task_config.get("tokenization") or {"bert": {}})
            except TokenizationError as exc:
                errors.append(f"[inference_config.{task}.tokenization] {exc}")
            combine = task_config.get("span_score_combination_function")
            if task == "text_similarity" and combine is not None and combine not in ("max", "mean"):
                errors.append(f"[span_score_combination_function] must be one of [max, mean], got [{combine}]")
            size = task_config.get("embedding_size")
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
                errors.append(f"[embedding_size] must be a positive integer, got [{size}]")
    inp = body.get("input")
    if model_type == "pytorch" or inp is not None:
        names = inp.get("field_names") if isinstance(inp, dict) else None
        if not isinstance(names, list) or len(names) != 1 or not all(isinstance(n, str) and n for n in names):
            errors.append("[input.field_names] must contain exactly one field name for a [pytorch] model")
    prefixes = body.get("prefix_strings")
    if prefixes is not None and (not isinstance(prefixes, dict) or set(prefixes) - {"ingest", "search"}
                                 or not all(isinstance(v, str) for v in prefixes.values())):
        errors.append("[prefix_strings] may only hold the strings [ingest] and [search]")
    for name, kind in (("metadata", dict), ("description", str), ("tags", list)):
        if body.get(name) is not None and not isinstance(body[name], kind):
            errors.append(f"[{name}] must be {'an object' if kind is dict else 'a ' + kind.__name__}")
    if errors:
        raise ElasticFormatError("; ".join(errors), "validation")
    stored = {k: v for k, v in body.items() if k in CONFIG_FIELDS and v is not None}
    stored["model_id"] = model_id
    assert task is not None
    stored["inference_config"] = {task: {**config[task],
                                         "tokenization": config[task].get("tokenization") or {"bert": {}}}}
    return stored


def task_of(config: dict[str, Any]) -> str:
    """Elasticsearch's task name of a stored config."""
    return next(iter(config["inference_config"]))


def tokenization_of(config: dict[str, Any]) -> Any:
    return parse_tokenization(config["inference_config"][task_of(config)]["tokenization"])


def manifest_fields(config: dict[str, Any], vocab: dict[str, Any]) -> dict[str, Any]:
    """The store manifest of an Elastic-format model (what the worker and the control plane read)."""
    task = task_of(config)
    tokenization = tokenization_of(config)
    task_config = config["inference_config"][task]
    prefixes = config.get("prefix_strings") or {}
    prompts = {}
    if prefixes.get("search"):
        prompts["SEARCH"] = prefixes["search"]
    if prefixes.get("ingest"):
        prompts["INGEST"] = prefixes["ingest"]
    dimensions = task_config.get("embedding_size") if task == "text_embedding" else None
    if task == "text_expansion":
        dimensions = len(vocab["vocabulary"])
    return {
        "task_type": TASKS[task],
        "kind": "elastic-pytorch",
        "backend": "elastic",
        "max_seq_length": tokenization.max_sequence_length,
        "dimensions": dimensions,
        "similarity": "cosine" if task == "text_embedding" else None,
        "prompts": prompts,
        "options": {"tokenization": tokenization.kind},
    }


def install(store: ModelStore, model_id: str, config: dict[str, Any], definition: Path, vocab: dict[str, Any],
            *, source: str, replace: bool = False) -> ModelInfo:
    """Move a complete Elastic-format model (its definition file is moved, not copied) into the store."""
    try:
        check_vocabulary(tokenization_of(config).kind, vocab)
    except TokenizationError as exc:
        raise ElasticFormatError(str(exc), "validation") from None
    staged = store.staging_dir()
    try:
        os.replace(definition, staged / DEFINITION)
        (staged / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
        (staged / VOCABULARY).write_text(json.dumps(vocab))
        return store.install(staged, model_id, source=source, fields=manifest_fields(config, vocab), replace=replace)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def read_config(info: ModelInfo) -> dict[str, Any]:
    return json.loads((info.path / CONFIG).read_text())


def read_vocabulary(info: ModelInfo) -> dict[str, Any]:
    return json.loads((info.path / VOCABULARY).read_text())


def trained_model_config(info: ModelInfo) -> dict[str, Any]:
    """``GET _ml/trained_models`` entry of an Elastic-format model, as Elasticsearch shows it."""
    config = read_config(info)
    return {
        **config,
        "model_id": info.model_id,
        "model_type": "pytorch",
        "created_by": "api_user",
        "version": "12.0.0",
        "create_time": int(info.created * 1000),
        "model_size_bytes": info.size_bytes,
        "estimated_operations": 0,
        "license_level": "platinum",
        "tags": config.get("tags", []),
        "fully_defined": True,
        "location": {"index": {"name": ".ml-inference-native-000002"}},
    }


# Free disk an upload leaves untouched (the store, logs and other uploads need room too).
DISK_RESERVE_BYTES = 256 * 1024 * 1024


class Uploads:
    """Elastic-format models being uploaded part by part (Eland), kept on disk beside the store."""

    def __init__(self, store: ModelStore, reserve_bytes: int = DISK_RESERVE_BYTES) -> None:
        self.store = store
        self.root = store.root / UPLOADS
        self.reserve_bytes = reserve_bytes
        self._lock = threading.Lock()

    def _check_room(self, model_id: str, total_length: int, stored: int) -> None:
        """The parts still to come and the assembled definition (the parts are joined into one file before they
        are deleted) must fit beside the reserve; else nothing is written (a 429, as Elasticsearch answers past its
        flood-stage watermark)."""
        need = max(0, total_length - stored) + total_length
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if need + self.reserve_bytes > free:
            raise ElasticFormatError(
                f"Not enough disk space for trained model [{model_id}]: its definition "
                f"([total_definition_length] [{total_length}] bytes) needs [{need}] more bytes while assembling, "
                f"[{free}] are free and [{self.reserve_bytes}] stay in reserve; free disk space (or enlarge the "
                "volume) and upload again", "disk_full")

    def _dir(self, model_id: str) -> Path:
        if id_errors(model_id):
            raise ElasticFormatError(f"Could not find trained model [{model_id}]", "not_found")
        return self.root / model_id

    def exists(self, model_id: str) -> bool:
        return not id_errors(model_id) and (self.root / model_id / CONFIG).is_file()

    def config(self, model_id: str) -> dict[str, Any]:
        path = self._dir(model_id) / CONFIG
        if not path.is_file():
            raise ElasticFormatError(f"Could not find trained model [{model_id}]", "not_found")
        return json.loads(path.read_text())

    def create(self, model_id: str, body: Any) -> dict[str, Any]:
        """PUT config: the model exists from now on, not yet fully defined."""
        config = validate_config(model_id, body)
        with self._lock:
            if self.exists(model_id) or self.store.get(model_id) is not None:
                raise ElasticFormatError(f"Trained machine learning model [{model_id}] already exists", "exists")
            target = self._dir(model_id)
            tmp = self.root / f".{model_id}.{os.getpid()}.{threading.get_ident()}"
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "parts").mkdir(parents=True)
            config["create_time"] = int(time.time() * 1000)
            (tmp / CONFIG).write_text(json.dumps(config, sort_keys=True))
            os.replace(tmp, target)
        return config

    def put_part(self, model_id: str, part: int, body: Any) -> ModelInfo | None:
        """PUT definition/{part}: store one base64 chunk; returns the model once it is complete."""
        if not isinstance(body, dict):
            raise ElasticFormatError("request body must be a JSON object")
        unknown = sorted(set(body) - {"definition", "total_definition_length", "total_parts"})
        if unknown:
            raise ElasticFormatError(f"[put_trained_model_definition_part_action] unknown field [{unknown[0]}]")
        total_length, total_parts, data = (body.get("total_definition_length"), body.get("total_parts"),
                                           body.get("definition"))
        errors = []
        for name, value in (("total_definition_length", total_length), ("total_parts", total_parts)):
            if isinstance(value, bool) or not isinstance(value, int):
                errors.append(f"[{name}] is required and must be an integer")
            elif value <= 0:
                errors.append(f"[{name}] must be greater than 0")
        if part < 0:
            errors.append("[part] must be greater or equal to 0")
        elif isinstance(total_parts, int) and not isinstance(total_parts, bool) and part >= total_parts:
            errors.append(f"[part] must be less than total_parts")
        if not isinstance(data, str) or not data:
            errors.append("[definition] is required and must be a base64 string")
        if errors:
            raise ElasticFormatError("; ".join(errors), "validation")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ElasticFormatError("[definition] is not valid base64") from None
        with self._lock:
            if self.store.get(model_id) is not None and not self.exists(model_id):
                raise ElasticFormatError(f"Trained model [{model_id}] already has a complete definition; delete it "
                                         "to upload another", "conflict")
            self.config(model_id)  # the model must exist
            d = self._dir(model_id)
            meta_path = d / "definition.json"
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
            want = {"total_definition_length": total_length, "total_parts": total_parts}
            if meta is not None and meta != want:
                raise ElasticFormatError(
                    f"[total_definition_length] [{total_length}] and [total_parts] [{total_parts}] differ from the "
                    f"earlier parts' [{meta['total_definition_length']}] and [{meta['total_parts']}]", "conflict")
            part_path = d / "parts" / f"{part:06d}"
            stored = sum(p.stat().st_size for p in (d / "parts").glob("[0-9]*") if p != part_path and not p.suffix)
            self._check_room(model_id, total_length, stored)
            meta_path.write_text(json.dumps(want))
            tmp = part_path.with_suffix(".tmp")
            tmp.write_bytes(raw)
            os.replace(tmp, part_path)
            return self._complete(model_id)

    def put_vocabulary(self, model_id: str, body: Any) -> ModelInfo | None:
        if not isinstance(body, dict):
            raise ElasticFormatError("request body must be a JSON object")
        unknown = sorted(set(body) - {"vocabulary", "merges", "scores"})
        if unknown:
            raise ElasticFormatError(f"[put_trained_model_vocabulary_action] unknown field [{unknown[0]}]")
        with self._lock:
            config = self.config(model_id)
            try:
                check_vocabulary(tokenization_of(config).kind, body)
            except TokenizationError as exc:
                raise ElasticFormatError(str(exc), "validation") from None
            path = self._dir(model_id) / VOCABULARY
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({k: v for k, v in body.items() if v is not None}))
            os.replace(tmp, path)
            return self._complete(model_id)

    def _complete(self, model_id: str) -> ModelInfo | None:
        """Assemble the model once config, all parts and vocabulary are in (lock held)."""
        d = self._dir(model_id)
        meta_path, vocab_path = d / "definition.json", d / VOCABULARY
        if not meta_path.is_file() or not vocab_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        parts = sorted((d / "parts").glob("[0-9]*"))
        parts = [p for p in parts if p.suffix == ""]
        if len(parts) < meta["total_parts"]:
            return None
        size = sum(p.stat().st_size for p in parts)
        if size != meta["total_definition_length"]:
            raise ElasticFormatError(
                f"Model definition of [{model_id}] has [{size}] bytes in its [{len(parts)}] parts, but "
                f"[total_definition_length] is [{meta['total_definition_length']}]; upload the parts again",
                "validation")
        assembled = d / DEFINITION
        with assembled.open("wb") as out:
            for p in parts:
                with p.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        config = self.config(model_id)
        config.pop("create_time", None)
        info = install(self.store, model_id, config, assembled, json.loads(vocab_path.read_text()),
                       source=f"PUT _ml/trained_models/{model_id} (sha256 of the definition recorded in the manifest)")
        shutil.rmtree(d, ignore_errors=True)
        return info

    def pending(self) -> list[dict[str, Any]]:
        """Configs of models whose upload is not complete (``fully_defined: false``)."""
        out = []
        if self.root.is_dir():
            for child in sorted(self.root.iterdir()):
                if not child.name.startswith(".") and (child / CONFIG).is_file():
                    config = json.loads((child / CONFIG).read_text())
                    out.append({**config, "model_type": "pytorch", "created_by": "api_user", "version": "12.0.0",
                                "create_time": config.get("create_time", 0), "fully_defined": False,
                                "tags": config.get("tags", []), "license_level": "platinum"})
        return out

    def remove(self, model_id: str) -> bool:
        if not self.exists(model_id):
            return False
        with self._lock:
            trash = self.root / f".deleted-{model_id}-{time.monotonic_ns()}"
            os.replace(self._dir(model_id), trash)
            shutil.rmtree(trash, ignore_errors=True)
        return True


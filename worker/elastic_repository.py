"""Pulls from a model repository in Elastic's layout (``xpack.ml.model_repository``), for air-gapped sites.

Elastic publishes its models as ``{name}.metadata.json`` (config, ``size`` and ``sha256`` of the
definition), ``{name}.pt`` (the TorchScript trace) and ``{name}.vocab.json``; the model id
``.elser_model_2`` is the file name ``elser_model_2``, and ``.elser_model_2_linux-x86_64`` the
platform-specific build (stored under the same model id). The repository is an ``https://``,
``http://`` or ``file://`` URL. The definition is fetched into ``<store>/.download-<id>/`` as a
``.part`` file that a later run resumes (HTTP range requests, or the file's offset), checked
against the published size and sha256 (a mismatch is discarded and refused), then installed
with :func:`.elastic_format.install`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
import orjson

from .download import PLATFORM_SUFFIX, DownloadError, Progress, canonical_id, fetch
from .elastic_format import ElasticFormatError, install, validate_config
from .modelstore import ModelInfo, ModelStore, ModelStoreError, check_model_id

REPOSITORY_ENV = "INFERNETES_MODEL_REPOSITORY"
# A bearer token for an http(s) repository that demands one (the gateway's uploads route in a cluster).
REPOSITORY_TOKEN_ENV = "INFERNETES_REPOSITORY_TOKEN"


def repository_url() -> str | None:
    return os.environ.get(REPOSITORY_ENV) or None


class Repository:
    """Reads files from a ``file://``, ``http://`` or ``https://`` repository."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("file", "http", "https"):
            raise DownloadError(f"model repository [{url}] must be an https://, http:// or file:// URL")
        self.url = url.rstrip("/")
        self.local = Path(unquote(parsed.path)) if parsed.scheme == "file" else None
        token = os.environ.get(REPOSITORY_TOKEN_ENV)
        self.headers = {"Authorization": f"Bearer {token}"} if token and self.local is None else {}

    def read(self, name: str) -> bytes | None:
        """A small file, or None when the repository does not have it."""
        if self.local is not None:
            path = self.local / name
            return path.read_bytes() if path.is_file() else None
        resp = httpx.get(f"{self.url}/{name}", headers=self.headers, follow_redirects=True, timeout=30,
                         trust_env=True)
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return resp.content

    def fetch(self, name: str, target: Path, size: int, progress: Progress) -> None:
        """The file into ``target``, resuming from ``<target>.part``."""
        if self.local is None:
            fetch(f"{self.url}/{name}", target, size, dict(self.headers), progress)
            return
        source = self.local / name
        if not source.is_file():
            raise DownloadError(f"model repository [{self.url}] has no [{name}]")
        part = target.with_name(target.name + ".part")
        start = part.stat().st_size if part.exists() else 0
        if start > size:
            part.unlink()
            start = 0
        progress.add(start)
        with source.open("rb") as src, part.open("ab" if start else "wb") as out:
            src.seek(start)
            while block := src.read(1 << 20):
                out.write(block)
                progress.add(len(block))
            out.flush()
            os.fsync(out.fileno())
        if part.stat().st_size != size:
            raise DownloadError(f"[{name}] in [{self.url}] has {part.stat().st_size} bytes; its metadata says {size}")
        os.replace(part, target)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _names(model_id: str) -> list[str]:
    """File names to try for a model id: the id without its dot, then the linux-x86_64 build."""
    name = model_id.lstrip(".")
    return [name] if name.endswith(PLATFORM_SUFFIX) else [name, name + PLATFORM_SUFFIX]


def pull_elastic(store: ModelStore, model_id: str, repository: str, *, progress: Progress | None = None,
                 replace: bool = True) -> ModelInfo:
    """Download an Elastic-format model from ``repository`` into the store (blocking)."""
    canonical = canonical_id(model_id)
    check_model_id(canonical)
    progress = progress or Progress(canonical)
    repo = Repository(repository)
    progress.set(state="downloading")
    try:
        try:
            found = next(((n, raw) for n in _names(model_id) if (raw := repo.read(f"{n}.metadata.json"))), None)
        except httpx.HTTPError as exc:
            raise DownloadError(f"Could not read model [{model_id}] from repository [{repository}]: "
                                f"{type(exc).__name__}: {exc}") from exc
        if found is None:
            tried = ", ".join(f"{n}.metadata.json" for n in _names(model_id))
            raise DownloadError(f"model repository [{repository}] has no [{tried}]")
        name, raw = found
        meta = _metadata(raw, name)
        config = _config(meta, name, canonical)
        size, sha256 = meta["size"], meta["sha256"].lower()
        progress.set(total_bytes=size, files_total=2)
        staging = store.root / f".download-{canonical}"
        staging.mkdir(parents=True, exist_ok=True)
        definition = staging / f"{name}.pt"
        if not (definition.is_file() and definition.stat().st_size == size and _sha256(definition) == sha256):
            definition.unlink(missing_ok=True)
            try:
                repo.fetch(f"{name}.pt", definition, size, progress)
            except httpx.HTTPError as exc:
                raise DownloadError(f"Could not download [{name}.pt] from [{repository}]: {type(exc).__name__}: "
                                    f"{exc}; run the pull again to resume") from exc
            progress.set(state="verifying")
            if _sha256(definition) != sha256:
                definition.unlink(missing_ok=True)
                raise DownloadError(f"checksum mismatch for [{name}.pt] from [{repository}]: its sha256 is not "
                                    f"the [{sha256}] of [{name}.metadata.json]; the file was discarded")
        else:
            progress.add(size)
        progress.set(files_done=1)
        vocab_name = meta.get("vocabulary_file") or f"{name}.vocab.json"
        vocab_raw = repo.read(vocab_name)
        if vocab_raw is None:
            raise DownloadError(f"model repository [{repository}] has no [{vocab_name}]")
        vocab_sha = meta.get("vocabulary_sha256")  # the gateway's uploads route publishes one; Elastic's does not
        if isinstance(vocab_sha, str) and hashlib.sha256(vocab_raw).hexdigest() != vocab_sha.lower():
            raise DownloadError(f"checksum mismatch for [{vocab_name}] from [{repository}]: its sha256 is not the "
                                f"[{vocab_sha}] of [{name}.metadata.json]")
        try:
            vocab = orjson.loads(vocab_raw)
        except orjson.JSONDecodeError as exc:
            raise DownloadError(f"[{vocab_name}] is not JSON: {exc}") from None
        info = install(store, canonical, config, definition, vocab, source=f"{repository}/{name}.pt (sha256 {sha256})",
                       replace=replace)
        shutil.rmtree(staging, ignore_errors=True)
        progress.set(state="done", files_done=2)
        return info
    except (ElasticFormatError, ModelStoreError) as exc:
        progress.set(state="failed", error=str(exc))
        raise DownloadError(f"model [{model_id}] from [{repository}]: {exc}") from exc
    except DownloadError as exc:
        progress.set(state="failed", error=str(exc))
        raise


def _metadata(raw: bytes, name: str) -> dict[str, Any]:
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DownloadError(f"[{name}.metadata.json] is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise DownloadError(f"[{name}.metadata.json] must hold a JSON object")
    size, sha256 = meta.get("size"), meta.get("sha256")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise DownloadError(f"[{name}.metadata.json] has no valid [size]")
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise DownloadError(f"[{name}.metadata.json] has no valid [sha256]")
    return meta


def _config(meta: dict[str, Any], name: str, model_id: str) -> dict[str, Any]:
    """The model config a metadata file describes, checked as an uploaded config is."""
    body = {k: meta[k] for k in ("description", "inference_config", "metadata", "prefix_strings", "tags")
            if meta.get(k) is not None}
    body["model_type"] = meta.get("model_type", "pytorch")
    body["input"] = meta.get("input") or {"field_names": ["text_field"]}
    valid_id = name.lower()
    try:
        config = validate_config(valid_id, body)
    except ElasticFormatError as exc:
        raise DownloadError(f"[{name}.metadata.json] describes a model Infernetes cannot serve: {exc}") from None
    config["model_id"] = model_id
    return config

"""Built-in model ids and their download from a Hugging Face-compatible hub into the model store.

``.multilingual-e5-small``, ``.elser_model_2`` and ``.rerank-v1`` (and their ``_linux-x86_64``
variants) resolve to open checkpoints. A download lists the repository (huggingface_hub's API,
its token and endpoint conventions), fetches only safetensors weights and the tokenizer and
config files (never pickles), checks every file against the hub's checksums (sha256 for LFS
files, the git blob id for the others), reports progress, and moves the finished folder into the
store in one rename.

Files are transferred here with HTTP range requests into ``<file>.part`` in the staging folder
``.download-<id>``, which survives a crash: a download killed halfway resumes from the bytes on
disk, file by file, instead of starting over (huggingface_hub's own downloads restart an
interrupted file in a new process).

One download at a time per model and store: pods that share a model cache (a ReadWriteMany volume)
take an exclusive ``flock`` on ``.download-<id>.lock`` beside the staging folder, so two never write
the same ``.part`` files; one that waited finds the model installed and does not download it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from .modelstore import PICKLE_SUFFIXES, ModelInfo, ModelStore, ModelStoreError, check_model_id

DEFAULT_HUB = "https://huggingface.co"
WANTED = ("*.safetensors", "*.json", "*.txt", "*.model", "tokenizer*", "*/config.json", "*.md")
UNWANTED = ("onnx/*", "openvino/*", "*/onnx/*", "*/openvino/*", ".gitattributes")
PLATFORM_SUFFIX = "_linux-x86_64"


@dataclass(frozen=True)
class BuiltinModel:
    model_id: str
    repo_id: str
    task_type: str
    revision: str = "main"
    prompts: dict[str, str] = field(default_factory=dict)
    note: str = ""


E5_PROMPTS = {"SEARCH": "query: ", "INGEST": "passage: ", "CLASSIFICATION": "query: ", "CLUSTERING": "query: "}

BUILTINS: dict[str, BuiltinModel] = {
    m.model_id: m
    for m in (
        BuiltinModel(".multilingual-e5-small", "intfloat/multilingual-e5-small", "text_embedding",
                     prompts=E5_PROMPTS, note="the same checkpoint Elasticsearch ships"),
        BuiltinModel(".elser_model_2", "opensearch-project/opensearch-neural-sparse-encoding-v2-distill",
                     "sparse_embedding", note="an open SPLADE encoder; Elastic's ELSER weights are not public"),
        BuiltinModel(".rerank-v1", "cross-encoder/ms-marco-MiniLM-L6-v2", "rerank",
                     note="an open cross-encoder; Elastic's DeBERTa-based rerank model is not public"),
    )
}


def canonical_id(model_id: str) -> str:
    """``.elser_model_2_linux-x86_64`` is the same model as ``.elser_model_2``."""
    if model_id.startswith(".") and model_id.endswith(PLATFORM_SUFFIX):
        return model_id[: -len(PLATFORM_SUFFIX)]
    return model_id


def builtin(model_id: str) -> BuiltinModel | None:
    return BUILTINS.get(canonical_id(model_id))


def hub_url() -> str:
    return (os.environ.get("INFERNETES_MODEL_HUB") or os.environ.get("HF_ENDPOINT") or DEFAULT_HUB).rstrip("/")


class DownloadError(Exception):
    pass


class Progress:
    """Thread-safe download progress, readable while the download runs (for _stats and status)."""

    def __init__(self, model_id: str, on_change: Callable[[Progress], None] | None = None) -> None:
        self.model_id = model_id
        self.state = "pending"  # pending | downloading | verifying | done | failed
        self.total_bytes = 0
        self.downloaded_bytes = 0
        self.files_total = 0
        self.files_done = 0
        self.error: str | None = None
        self.started = time.time()
        self._lock = threading.Lock()
        self._on_change = on_change

    def _changed(self) -> None:
        if self._on_change:
            self._on_change(self)

    def set(self, **values: Any) -> None:
        with self._lock:
            for k, v in values.items():
                setattr(self, k, v)
        self._changed()

    def add(self, n: int) -> None:
        with self._lock:
            self.downloaded_bytes = max(0, self.downloaded_bytes + n)
        self._changed()

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            pct = 100.0 * self.downloaded_bytes / self.total_bytes if self.total_bytes else 0.0
            out = {
                "model_id": self.model_id,
                "state": self.state,
                "downloaded_bytes": self.downloaded_bytes,
                "total_bytes": self.total_bytes,
                "percent": round(min(pct, 100.0), 1),
                "files_done": self.files_done,
                "files_total": self.files_total,
            }
            if self.error:
                out["error"] = self.error
            return out


def _wanted(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    if name.endswith(PICKLE_SUFFIXES) or any(fnmatch.fnmatchcase(path, p) for p in UNWANTED):
        return False
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(name, p) for p in WANTED)


def _digest(path: Path, expected: str) -> str:
    """sha256 for 64-hex ids (LFS), git blob sha1 for 40-hex ids."""
    if len(expected) == 64:
        h = hashlib.sha256()
    else:
        h = hashlib.sha1()  # noqa: S324 - git's blob id, a content address, not a security hash
        h.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def offline_hint(model_id: str) -> str:
    spec = builtin(model_id)
    copy = f"copy {spec.repo_id} from a machine with hub access, then " if spec else ""
    return (
        f"to install it without a hub, {copy}run `infernetes models import <folder> --model-id {model_id}`; "
        "or point INFERNETES_MODEL_HUB at a reachable mirror"
    )


def pull(
    store: ModelStore,
    model_id: str,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    task_type: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    progress: Progress | None = None,
) -> ModelInfo:
    """Download a model (a built-in id, or any hub repository with ``repo_id``) into the store."""
    canonical = canonical_id(model_id)
    check_model_id(canonical)
    spec = builtin(canonical)
    if repo_id is None:
        if spec is None:
            raise DownloadError(f"[{model_id}] is not a built-in model; give the hub repository to download it from")
        repo_id, revision, task_type = spec.repo_id, revision or spec.revision, task_type or spec.task_type
    revision = revision or "main"
    endpoint = (endpoint or hub_url()).rstrip("/")
    progress = progress or Progress(canonical)
    source = f"{endpoint}/{repo_id}@{revision}"
    with staging_lock(store.root, canonical) as waited:
        installed = store.get(canonical) if waited else None
        if installed is not None and installed.source == source:  # another pod finished it while we waited
            progress.set(state="done")
            return installed
        return _pull_locked(store, model_id, canonical, spec, repo_id, revision, task_type, endpoint, token,
                            progress, source)


@contextlib.contextmanager
def staging_lock(root: Path, canonical: str) -> Iterator[bool]:
    """Hold the download lock of one model in a store; yields whether another holder had to be waited for.

    ``flock`` works across pods on the same volume (NFS and CephFS map it to their lock protocols). The
    lock file is removed on release; a waiter that then holds a lock on the removed file tries again."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f".download-{canonical}.lock"
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the holder removed that file as it released it: lock the new one
    try:
        yield waited
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _pull_locked(store: ModelStore, model_id: str, canonical: str, spec: BuiltinModel | None, repo_id: str,
                 revision: str, task_type: str | None, endpoint: str, token: str | None, progress: Progress,
                 source: str) -> ModelInfo:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    staging = store.root / f".download-{canonical}"
    staging.mkdir(parents=True, exist_ok=True)
    progress.set(state="downloading")
    try:
        api = HfApi(endpoint=endpoint, token=token)
        try:
            _connect(endpoint)
            entries = [
                e for e in api.list_repo_tree(repo_id, revision=revision, recursive=True)
                if isinstance(e, RepoFile) and _wanted(e.path)
            ]
        except Exception as exc:
            raise DownloadError(
                f"Could not download model [{model_id}] ({repo_id}@{revision}) from {endpoint}: "
                f"{type(exc).__name__}: {_short(exc)}; {offline_hint(canonical)}"
            ) from exc
        if not any(e.path.endswith(".safetensors") for e in entries):
            raise DownloadError(
                f"model [{model_id}] ({repo_id}) has no safetensors weights; pickle weights are never downloaded"
            )
        progress.set(total_bytes=sum(e.size for e in entries), files_total=len(entries))
        from huggingface_hub.utils import build_hf_headers

        headers = build_hf_headers(token=token, library_name="infernetes")
        for entry in entries:
            expected = entry.lfs.sha256 if entry.lfs else entry.blob_id
            target = staging / entry.path
            if target.is_file() and target.stat().st_size == entry.size and _digest(target, expected) == expected:
                progress.add(entry.size)  # finished by an earlier, interrupted run
            else:
                url = f"{endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(entry.path)}"
                try:
                    fetch(url, target, entry.size, headers, progress)
                except httpx.HTTPError as exc:
                    raise DownloadError(
                        f"Could not download [{entry.path}] of model [{model_id}] ({repo_id}) from {endpoint}: "
                        f"{type(exc).__name__}: {_short(exc)}; {offline_hint(canonical)}"
                    ) from exc
                if _digest(target, expected) != expected:
                    target.unlink(missing_ok=True)
                    raise DownloadError(
                        f"checksum mismatch for [{entry.path}] of model [{model_id}] ({repo_id}): the file was "
                        "discarded; retry the download"
                    )
            progress.set(files_done=progress.files_done + 1)
        progress.set(state="verifying")
        shutil.rmtree(staging / ".cache", ignore_errors=True)
        overrides = {"prompts": spec.prompts if spec else None}
        info = store.install(staging, canonical, source=source, task_type=task_type,
                             overrides=overrides, replace=True)
        progress.set(state="done")
        return info
    except (DownloadError, ModelStoreError) as exc:
        progress.set(state="failed", error=str(exc))
        raise DownloadError(str(exc)) from exc


# A hub that cannot be connected to at all (name unknown, connection refused, no route, proxy refusing).
UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError, httpx.UnsupportedProtocol)


def _connect(endpoint: str) -> None:
    """Raise at once when the hub cannot be connected to. huggingface_hub's listing retries such a failure
    five times, 1 to 8 s apart, so an unreachable hub would be reported only after about 25 s; a pod's
    restart (or the user) retries the pull anyway. Any HTTP answer, even an error, means it is reachable:
    the listing and its own retries of timeouts, 429 and 5xx answers go on from there."""
    try:
        httpx.head(endpoint + "/", timeout=httpx.Timeout(10.0), trust_env=True)
    except UNREACHABLE:
        raise
    except httpx.HTTPError:
        pass  # reachable, answering slowly or oddly: the listing's own retries deal with it


def fetch(url: str, target: Path, size: int, headers: dict[str, str], progress: Progress,
          attempts: int = 5) -> None:
    """Download one file into ``target``, resuming from ``<target>.part`` with HTTP range requests."""
    part = target.with_name(target.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        start = part.stat().st_size if part.exists() else 0
        if start > size:
            part.unlink()
            start = 0
        if start == size:
            break
        request_headers = dict(headers)
        if start:
            request_headers["Range"] = f"bytes={start}-"
        try:
            with httpx.stream("GET", url, headers=request_headers, follow_redirects=True,
                              timeout=httpx.Timeout(30.0, read=120.0), trust_env=True) as resp:
                if resp.status_code == 416:  # our partial file is stale: start over
                    part.unlink(missing_ok=True)
                    continue
                resp.raise_for_status()
                if start and resp.status_code == 200:  # the server ignored the range
                    start = 0
                if start:
                    progress.add(start)
                with part.open("ab" if start else "wb") as f:
                    for chunk in resp.iter_bytes(1 << 20):
                        f.write(chunk)
                        progress.add(len(chunk))
                    f.flush()
                    os.fsync(f.fileno())
            if part.stat().st_size == size:
                break
        except (httpx.TransportError, httpx.RemoteProtocolError):
            if attempt == attempts - 1:
                raise
            progress.add(-(part.stat().st_size if part.exists() else 0))  # counted again on the retry
            time.sleep(min(2 ** attempt, 10))
    if not part.exists() or part.stat().st_size != size:
        raise httpx.TransportError(f"incomplete download of {target.name}")
    os.replace(part, target)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""

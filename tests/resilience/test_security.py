"""Intruders: no key, no entry; keys never reach logs; workers only on loopback; pickles never loaded."""

from __future__ import annotations

import base64
import contextlib
import json
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from helpers import free_port, wait_up

from infernetes.worker.modelstore import MANIFEST, ModelStore

pytestmark = pytest.mark.slow
EXE = Path(sys.executable).with_name("infernetes")


def test_keys_are_required_off_loopback_and_never_logged(tmp_path, tiny_model_dir, figures):
    ModelStore(tmp_path / "models").import_folder(tiny_model_dir, "tiny")
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(EXE), "serve", "--host", "0.0.0.0", "--port", str(port), "--data-dir",
                                 str(tmp_path), "--log-level", "debug", "--access-log"], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url + "/_infernetes/health", 60)
        assert httpx.get(url + "/_inference").status_code == 401  # listening beyond loopback: keys required
        encoded = (tmp_path / "bootstrap-api-key").read_text().strip()
        assert oct((tmp_path / "bootstrap-api-key").stat().st_mode & 0o777) == "0o600"
        secret = base64.b64decode(encoded).decode().split(":", 1)[1]
        admin = {"Authorization": f"ApiKey {encoded}"}
        body = {"service": "elasticsearch", "service_settings": {"num_allocations": 1, "num_threads": 1,
                                                                 "model_id": "tiny"}}
        assert httpx.put(f"{url}/_inference/text_embedding/guarded", json=body, headers=admin,
                         timeout=60).status_code == 200
        assert httpx.post(f"{url}/_inference/guarded", json={"input": "x"}, headers=admin).status_code == 200
        key_id = base64.b64decode(encoded).decode().split(":", 1)[0]
        for wrong_secret in (secret[:-1] + chr(ord(secret[-1]) ^ 1), "", secret + "x"):
            # The right key id with a wrong secret: well-formed, so only the secret check can refuse it.
            wrong = base64.b64encode(f"{key_id}:{wrong_secret}".encode()).decode()
            assert httpx.get(url + "/_inference", headers={"Authorization": f"ApiKey {wrong}"}).status_code == 401
        created = json.loads(subprocess.run([str(EXE), "api-keys", "create", "--name", "reader", "--data-dir",
                                             str(tmp_path)], capture_output=True, text=True, check=True).stdout)
        reader = {"Authorization": f"ApiKey {created['encoded']}"}
        assert httpx.post(f"{url}/_inference/guarded", json={"input": "x"}, headers=reader).status_code == 200
        assert httpx.delete(f"{url}/_inference/guarded", headers=reader).status_code == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    logs = log.read_text() + "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    reader_secret = base64.b64decode(created["encoded"]).decode().split(":", 1)[1]
    assert secret not in logs and reader_secret not in logs and encoded not in logs
    stored = (tmp_path / "api-keys.json").read_text()
    assert secret not in stored and reader_secret not in stored  # hashed at rest
    figures["security"] = {"unauthenticated_status": 401, "wrong_privilege_status": 403,
                           "secrets_in_logs": 0, "secrets_at_rest": 0}


def test_workers_listen_on_loopback_only(server):
    with server.client() as client:
        assert client.put("/_inference/text_embedding/listening", json={
            "service": "elasticsearch",
            "service_settings": {"num_allocations": 1, "num_threads": 1, "model_id": "tiny"}}).status_code == 200
        try:
            from helpers import worker_pids

            workers = [psutil.Process(pid) for pid in worker_pids("listening")]
            listening = [c.laddr for p in workers for c in p.net_connections(kind="inet") if c.status == "LISTEN"]
            assert listening and all(addr.ip == "127.0.0.1" for addr in listening)
        finally:
            client.delete("/_inference/listening")


MARKER = Path("/tmp/infernetes-pickle-was-loaded")


class Exploit:
    def __reduce__(self):
        return (Path.write_text, (MARKER, "pwned"))


def test_pickle_weights_are_never_loaded(tmp_path, tiny_model_dir):
    """A store folder tampered with by hand: safetensors removed, pickles put in their place. One is a booby
    trap; the other is an honest state dict that torch's own ``weights_only`` loader accepts, so only our
    refusal (safetensors only) keeps the worker from loading it."""
    import torch
    from safetensors.torch import load_file

    MARKER.unlink(missing_ok=True)
    store = ModelStore(tmp_path / "models")
    info = store.import_folder(tiny_model_dir, "tampered")
    weights = load_file(info.path / "model.safetensors")
    (info.path / "model.safetensors").unlink()
    torch.save(weights, info.path / "pytorch_model.bin")
    (info.path / "training_args.bin").write_bytes(pickle.dumps(Exploit()))
    port = free_port()
    proc = subprocess.Popen([str(EXE), "worker", "--model-dir", str(info.path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the worker neither failed nor served"
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                assert ready.status_code != 200, "the worker loaded the pickled weights and serves"
            time.sleep(0.2)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 3, stderr  # the model failed to load ...
    assert "failed to load" in stderr
    assert not MARKER.exists()  # ... and nothing was unpickled
    shutil.rmtree(info.path)

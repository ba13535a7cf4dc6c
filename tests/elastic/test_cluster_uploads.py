"""Issue 14, item 6: Eland uploads in a cluster reach the worker pods and survive gateway restarts.

The gateway (the real cluster app on the cluster box) keeps uploads on its upload volume and serves
complete models on its internal uploads route in Elastic's repository layout, behind the worker
credential; the worker pods' real pull command (``infernetes models ensure ... --repository``, as the
planner writes it) fetches them resumably and checks their sha256.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from helpers import run_process_group

from cluster.gateway_fixtures import NS, gbox, kube_config  # noqa: F401
from infernetes.operator.kube import ENDPOINTS
from infernetes.operator.kube.client import Kube
from infernetes.operator.kube.main import build_cluster_app
from infernetes.operator.kube.operator import Reconciler
from infernetes.operator.kube.planner import memory_mib, pull_command, pull_env, workload_name
from infernetes.operator.kube.settings import DATA_DIR, OperatorSettings
from infernetes.operator.kube.uploads import ROUTE, uploaded_size, uploaded_task
from infernetes.worker.config import AUTH_TOKEN_ENV
from infernetes.worker.download import DownloadError
from infernetes.worker.elastic_repository import REPOSITORY_TOKEN_ENV, pull_elastic
from infernetes.worker.modelstore import ModelStore

pytestmark = pytest.mark.slow

TOKEN = "worker-secret-for-the-test"
INFERNETES = str(Path(sys.executable).with_name("infernetes"))
MODEL = "minilm-uploaded"


@contextlib.asynccontextmanager
async def gateway(box, settings: OperatorSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = build_cluster_app(kube_config(box), NS, settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the gateway did not start"
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


async def upload(client: httpx.AsyncClient, model_id: str, files: tuple[bytes, dict, dict], *,
                 complete: bool = True) -> None:
    data, config, vocab = files
    assert (r := await client.put(f"/_ml/trained_models/{model_id}", json=config)).status_code == 200, r.text
    if not complete:
        return
    chunk = len(data) // 3 + 1
    parts = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    for i, part in enumerate(parts):
        r = await client.put(f"/_ml/trained_models/{model_id}/definition/{i}", json={
            "definition": base64.b64encode(part).decode(), "total_definition_length": len(data),
            "total_parts": len(parts)})
        assert r.status_code == 200, r.text
    assert (r := await client.put(f"/_ml/trained_models/{model_id}/vocabulary", json=vocab)).status_code == 200


def ensure(command: list[str], data_dir: Path, token: str | None) -> tuple[int, str]:
    """The init container's command as the planner wrote it, run here with a local data directory."""
    cmd = [INFERNETES, *command[1:]]
    cmd[cmd.index("--data-dir") + 1] = str(data_dir)
    env = {k: v for k, v in os.environ.items() if k not in (REPOSITORY_TOKEN_ENV, AUTH_TOKEN_ENV)}
    if token:
        env[REPOSITORY_TOKEN_ENV] = token
    proc = run_process_group(cmd, timeout=180, env=env)
    return proc.returncode, proc.stdout + proc.stderr


async def test_uploads_reach_worker_pulls_and_survive_restarts(gbox, tmp_path, tiny_elastic, monkeypatch):  # noqa: F811
    monkeypatch.setenv(AUTH_TOKEN_ENV, TOKEN)  # the gateway's worker credential, as the chart sets it
    volume = tmp_path / "gateway-volume"
    settings = OperatorSettings(uploads_dir=str(volume), worker_credential_secret="worker-credential")
    data = tiny_elastic[0]
    async with gateway(gbox, settings) as client:
        await upload(client, MODEL, tiny_elastic)
        await upload(client, "half-uploaded", tiny_elastic, complete=False)
        config = (await client.get(f"/_ml/trained_models/{MODEL}")).json()["trained_model_configs"][0]
        assert config["fully_defined"] is True
        r = await client.put("/_inference/text_embedding/my-uploaded", json={
            "service": "elasticsearch", "service_settings": {"num_allocations": 1, "num_threads": 1,
                                                             "model_id": MODEL}}, params={"timeout": "1s"})
        assert r.status_code in (200, 408), r.text  # created; no pod runs on the box to start it
        assert gbox.client().get(f"/apis/infernetes.dev/v1alpha1/namespaces/{NS}/inferenceendpoints/my-uploaded"
                                 ).status_code == 200
        # The uploads route: the worker credential only (an API key layer does not apply: pods hold none).
        meta_path = f"{ROUTE}/{MODEL}.metadata.json"
        assert (await client.get(meta_path)).status_code == 401
        assert (await client.get(meta_path, headers={"Authorization": "Bearer wrong"})).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        meta = (await client.get(meta_path, headers=auth)).json()
        assert meta["sha256"] == hashlib.sha256(data).hexdigest() and meta["size"] == len(data)
        assert (await client.get(f"{ROUTE}/half-uploaded.metadata.json", headers=auth)).status_code == 404
        ranged = await client.get(f"{ROUTE}/{MODEL}.pt", headers={**auth, "Range": "bytes=1000-"})
        assert ranged.status_code == 206 and ranged.content == data[1000:]
        base = str(client.base_url)
    # The operator's side, with the gateway's URL: the task from the metadata, the pods' pull command and its token.
    settings = OperatorSettings(uploads_dir=str(volume), uploads_url=f"{base}{ROUTE}",
                                worker_credential_secret="worker-credential")
    assert pull_env(".elser_model_2", settings) == [] and "--repository" not in pull_command(".elser_model_2", settings)
    assert pull_env(MODEL, settings)[0]["name"] == REPOSITORY_TOKEN_ENV
    # A restart (a new gateway process on the same volume): the model and the unfinished upload are still there.
    async with gateway(gbox, settings) as client:
        settings = OperatorSettings(uploads_dir=str(volume), uploads_url=f"{client.base_url}{ROUTE}",
                                    worker_credential_secret="worker-credential")
        configs = {c["model_id"]: c for c in
                   (await client.get("/_ml/trained_models")).json()["trained_model_configs"]}
        assert configs[MODEL]["fully_defined"] is True and configs["half-uploaded"]["fully_defined"] is False
        assert await uploaded_task(settings, MODEL) == "text_embedding"
        assert uploaded_size(settings, MODEL) == len(data)  # sizes the pods' memory request
        assert await uploaded_task(settings, "half-uploaded") is None
        # The operator accepts the endpoint on the uploaded model (its task from the gateway's metadata).
        cr = gbox.client().get(f"/apis/infernetes.dev/v1alpha1/namespaces/{NS}/inferenceendpoints/my-uploaded").json()
        kube = Kube(kube_config(gbox))
        try:
            reconciler = Reconciler(kube, settings)
            found = await reconciler.assess(ENDPOINTS, cr)
            assert found.problem is None and found.deployment.task_type == "text_embedding"
            await reconciler.reconcile(ENDPOINTS, cr)  # the worker Deployment, planned for the uploaded model
        finally:
            await kube.close()
        pod = gbox.client().get(f"/apis/apps/v1/namespaces/{NS}/deployments/{workload_name('my-uploaded')}"
                                ).json()["spec"]["template"]["spec"]
        pull, worker = pod["initContainers"][0], pod["containers"][0]
        assert pull["command"] == pull_command(MODEL, settings)
        assert {"name": REPOSITORY_TOKEN_ENV, "valueFrom": {"secretKeyRef": {
            "name": "worker-credential", "key": "token"}}} in pull["env"]
        # Memory sized from the uploaded definition, not the 500 MB guess for a model of unknown size.
        assert worker["resources"]["requests"]["memory"] == f"{memory_mib(MODEL, settings, len(data))}Mi"
        assert memory_mib(MODEL, settings, len(data)) < memory_mib(MODEL, settings)
        command = pull_command(MODEL, settings)
        assert command[command.index("--repository") + 1] == f"{client.base_url}{ROUTE}"
        assert command[command.index("--data-dir") + 1] == DATA_DIR

        # The pod's pull (the real command): a resumed download, checksum-verified. The refusals below call the
        # function it runs, in-process (a process start each would cost seconds).
        repository = f"{client.base_url}{ROUTE}"
        monkeypatch.delenv(REPOSITORY_TOKEN_ENV, raising=False)
        with pytest.raises(DownloadError, match="401"):
            await asyncio.to_thread(pull_elastic, ModelStore(tmp_path / "no-token"), MODEL, repository)
        monkeypatch.setenv(REPOSITORY_TOKEN_ENV, TOKEN)
        pod = tmp_path / "pod"
        staging = pod / "models" / f".download-{MODEL}"
        staging.mkdir(parents=True)
        (staging / f"{MODEL}.pt.part").write_bytes(data[: len(data) // 2])  # a pull killed halfway
        rc, out = await asyncio.to_thread(ensure, command, pod, TOKEN)
        assert rc == 0, out
        pulled = ModelStore(pod / "models").get(MODEL)
        assert pulled is not None and pulled.backend == "elastic" and pulled.task_type == "text_embedding"
        assert hashlib.sha256((pulled.path / "model.torchscript").read_bytes()).hexdigest() == \
            hashlib.sha256(data).hexdigest()

        # Files damaged on the gateway's volume are refused by their checksums: the vocabulary, then the definition.
        served = ModelStore(volume / "models").get(MODEL)
        assert served is not None
        (served.path / "vocabulary.json").write_text((served.path / "vocabulary.json").read_text().replace("a", "b"))
        with pytest.raises(DownloadError, match=re.escape(f"checksum mismatch for [{MODEL}.vocab.json]")):
            await asyncio.to_thread(pull_elastic, ModelStore(tmp_path / "pod3"), MODEL, repository)
        damaged = bytearray((served.path / "model.torchscript").read_bytes())
        damaged[len(damaged) // 2] ^= 0xFF
        (served.path / "model.torchscript").write_bytes(bytes(damaged))
        with pytest.raises(DownloadError, match=re.escape(f"checksum mismatch for [{MODEL}.pt]")):
            await asyncio.to_thread(pull_elastic, ModelStore(tmp_path / "pod2"), MODEL, repository)


async def test_without_an_upload_volume_uploads_are_refused(gbox, tiny_elastic):  # noqa: F811
    async with gateway(gbox, OperatorSettings()) as client:
        r = await client.put(f"/_ml/trained_models/{MODEL}", json=tiny_elastic[1])
        assert r.status_code == 400 and "gateway.uploads.existingClaim" in r.text
        assert (await client.get(f"{ROUTE}/{MODEL}.metadata.json")).status_code == 404

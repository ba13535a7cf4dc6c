"""The Kubernetes client reads credentials and connection settings as kubectl does (issue 12, item 14).

Against a small HTTPS server whose certificate names only ``kube.internal`` and ``localhost``
(never the address it listens on): kubeconfig contexts, client certificates, ``tls-server-name``,
``proxy-url`` through a CONNECT proxy, exec credential plugins run without blocking the event loop
and again when their token expires, and the in-cluster service-account token re-read as the kubelet
rotates it. kubectl itself is run on the same kubeconfig where it can tell us what "as kubectl" means.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes_asyncio.config import incluster_config

from infernetes.operator.kube import client as kube_client
from infernetes.operator.kube.client import Kube, KubeConfig

PATH = "/api/v1/namespaces/default"
KUBECTL = "/usr/bin/kubectl"


def _pem(obj: Any) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject: str, issuer: x509.Name, signer: Any, key: Any, *, ca: bool = False,
                 names: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(tz=datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


@dataclass
class Pki:
    folder: Path
    ca: Path = field(init=False)
    server_cert: Path = field(init=False)
    server_key: Path = field(init=False)
    client_cert: bytes = field(init=False)
    client_key: bytes = field(init=False)

    def __post_init__(self) -> None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
        ca = _certificate("test-ca", ca_name, ca_key, ca_key, ca=True)
        server_key = ec.generate_private_key(ec.SECP256R1())
        # Not 127.0.0.1, where the server listens: reaching it by address needs tls-server-name.
        server = _certificate("kube-apiserver", ca_name, ca_key, server_key,
                              names=[x509.DNSName("kube.internal"), x509.DNSName("localhost")])
        client_key = ec.generate_private_key(ec.SECP256R1())
        client = _certificate("jane", ca_name, ca_key, client_key)
        self.ca, self.server_cert, self.server_key = (self.folder / "ca.crt", self.folder / "server.crt",
                                                      self.folder / "server.key")
        self.ca.write_bytes(_pem(ca))
        self.server_cert.write_bytes(_pem(server))
        self.server_key.write_bytes(_pem(server_key))
        self.client_cert, self.client_key = _pem(client), _pem(client_key)


class ApiServer:
    """Answers GET /api/v1/namespaces/<name> over TLS; records who asked (token, client certificate)."""

    def __init__(self, pki: Pki) -> None:
        self.seen: list[dict[str, Any]] = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        context.load_verify_locations(pki.ca)
        context.verify_mode = ssl.CERT_OPTIONAL  # a client certificate is checked when one is sent
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
                subject = dict(x[0] for x in peer["subject"]) if peer else {}
                seen.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                             "client": subject.get("commonName")})
                body = json.dumps({"kind": "Namespace", "apiVersion": "v1",
                                   "metadata": {"name": self.path.rsplit("/", 1)[-1].split("?")[0]}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ConnectProxy:
    """An HTTP proxy that only tunnels (CONNECT), as corporate proxies in front of API servers do."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(conn,), daemon=True).start()

    def _tunnel(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target = head.split(b" ", 2)[:2]
            if method != b"CONNECT":
                conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            self.targets.append(target.decode())
            host, port = target.decode().rsplit(":", 1)
            with socket.create_connection((host, int(port))) as upstream:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                pump = threading.Thread(target=self._pipe, args=(upstream, conn), daemon=True)
                pump.start()
                self._pipe(conn, upstream)
                pump.join(timeout=5)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server(pki: Pki) -> Iterator[ApiServer]:
    srv = ApiServer(pki)
    yield srv
    srv.close()


def kubeconfig(path: Path, clusters: dict[str, dict[str, Any]], users: dict[str, dict[str, Any]],
               contexts: dict[str, dict[str, Any]], current: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": k, "cluster": v} for k, v in clusters.items()],
        "users": [{"name": k, "user": v} for k, v in users.items()],
        "contexts": [{"name": k, "context": v} for k, v in contexts.items()],
    }))
    return path


async def get(config: KubeConfig) -> Any:
    kube = Kube(config)
    try:
        return await kube.request("GET", PATH)
    finally:
        await kube.close()


def kubectl(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KUBECTL, "--kubeconfig", str(config), "get", "--raw", PATH], capture_output=True,
                          text=True, timeout=60)


async def test_tls_server_name_as_kubectl(tmp_path: Path, pki: Pki, server: ApiServer) -> None:
    cluster = {"server": f"https://127.0.0.1:{server.port}", "certificate-authority": str(pki.ca)}
    users = {"u": {"token": "t-1"}}
    plain = kubeconfig(tmp_path / "plain", {"c": cluster}, users, {"x": {"cluster": "c", "user": "u"}}, "x")
    named = kubeconfig(tmp_path / "named", {"c": {**cluster, "tls-server-name": "kube.internal"}}, users,
                       {"x": {"cluster": "c", "user": "u"}}, "x")

    # The certificate does not name 127.0.0.1: both kubectl and our client refuse it...
    assert kubectl(plain).returncode != 0
    with pytest.raises(Exception, match="(?i)certificate|hostname|ssl"):
        await get(await KubeConfig.load_async(str(plain)))
    # ...and both accept it when the kubeconfig says which name to check.
    assert kubectl(named).returncode == 0, kubectl(named).stderr
    assert (await get(await KubeConfig.load_async(str(named))))["metadata"]["name"] == "default"
    assert server.seen[-1]["authorization"] == "Bearer t-1"


async def test_context_client_certificate_and_namespace(tmp_path: Path, pki: Pki, server: ApiServer) -> None:
    cluster = {"server": f"https://localhost:{server.port}", "certificate-authority-data":
               base64.b64encode(pki.ca.read_bytes()).decode()}
    path = kubeconfig(
        tmp_path / "config", {"c": cluster},
        {"token-user": {"token": "not-this-one"},
         "cert-user": {"client-certificate-data": base64.b64encode(pki.client_cert).decode(),
                       "client-key-data": base64.b64encode(pki.client_key).decode()}},
        {"default": {"cluster": "c", "user": "token-user"},
         "team": {"cluster": "c", "user": "cert-user", "namespace": "search"}},
        current="default")

    config = await KubeConfig.load_async(str(path), context="team")
    assert config.namespace == "search"
    await get(config)
    assert server.seen[-1]["client"] == "jane"
    assert server.seen[-1]["authorization"] is None
    assert (await KubeConfig.load_async(str(path))).namespace is None  # the current context has none


async def test_kubeconfig_env_is_read_when_loading_not_at_import(tmp_path: Path, pki: Pki, server: ApiServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = {"server": f"https://localhost:{server.port}", "certificate-authority": str(pki.ca)}
    first = kubeconfig(tmp_path / "a", {"c": cluster}, {"u": {"token": "from-a"}},
                       {"ctx-a": {"cluster": "c", "user": "u"}}, "ctx-a")
    second = kubeconfig(tmp_path / "b", {"c": cluster}, {"v": {"token": "from-b"}},
                        {"ctx-b": {"cluster": "c", "user": "v", "namespace": "ns-b"}}, "ctx-b")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", f"{second}:{first}")  # merged as kubectl merges: the first file wins
    current = subprocess.run([KUBECTL, "config", "current-context"], capture_output=True, text=True, timeout=60)
    assert current.stdout.strip() == "ctx-b", current.stderr
    config = await KubeConfig.load_async()
    assert config.namespace == "ns-b"
    await get(config)
    assert server.seen[-1]["authorization"] == "Bearer from-b"


async def test_proxy_url(tmp_path: Path, pki: Pki, server: ApiServer) -> None:
    proxy = ConnectProxy()
    try:
        path = kubeconfig(tmp_path / "config",
                          {"c": {"server": f"https://localhost:{server.port}", "certificate-authority": str(pki.ca),
                                 "proxy-url": f"http://127.0.0.1:{proxy.port}"}},
                          {"u": {"token": "t"}}, {"x": {"cluster": "c", "user": "u"}}, "x")
        config = await KubeConfig.load_async(str(path))
        assert config.proxy == f"http://127.0.0.1:{proxy.port}"  # what kopf's connection is given too
        await get(config)
        assert proxy.targets == [f"localhost:{server.port}"]
        assert kubectl(path).returncode == 0
        assert proxy.targets[-1] == f"localhost:{server.port}"
    finally:
        proxy.close()


EXEC_PLUGIN = """
import datetime, json, pathlib, sys, time
state = pathlib.Path(sys.argv[1])
runs = state / "runs"
n = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(n))
deadline = time.monotonic() + 30
while not (state / "go").exists():  # the test's event loop must be free to make this file
    if time.monotonic() > deadline:
        sys.exit("nobody said go: the caller blocked while the plugin ran")
    time.sleep(0.02)
expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=float(sys.argv[2]))
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": f"exec-{n}", "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
"""


async def _wait_for(path: Path) -> None:
    for _ in range(3000):  # an event in another process: look for it while the loop stays free
        if path.exists():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


@pytest.mark.parametrize("lifetime_s, runs", [(-60, 2), (3600, 1)])
async def test_exec_plugin_without_blocking_and_again_on_expiry(tmp_path: Path, pki: Pki, server: ApiServer,
                                                                lifetime_s: int, runs: int) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(EXEC_PLUGIN)
    path = kubeconfig(
        tmp_path / "config", {"c": {"server": f"https://localhost:{server.port}", "certificate-authority": str(pki.ca)}},
        {"u": {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                        "args": [str(plugin), str(tmp_path), str(lifetime_s)], "interactiveMode": "Never"}}},
        {"x": {"cluster": "c", "user": "u"}}, "x")

    loading = asyncio.create_task(KubeConfig.load_async(str(path)))
    await _wait_for(tmp_path / "runs")  # the plugin runs and waits for us: only a free loop can answer it
    assert not loading.done()
    (tmp_path / "go").touch()
    config = await loading
    assert config.token_expiry() is not None  # kopf is told when to log in again

    await get(config)
    # An expired token is asked for again before the request; a valid one is kept.
    assert (tmp_path / "runs").read_text() == str(runs)
    assert server.seen[-1]["authorization"] == f"Bearer exec-{runs}"


async def test_in_cluster_token_is_reread_as_it_rotates(tmp_path: Path, pki: Pki, server: ApiServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    token, namespace = tmp_path / "token", tmp_path / "namespace"
    token.write_text("first")
    namespace.write_text("infernetes-system")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "localhost")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(pki.ca))
    monkeypatch.setattr(incluster_config, "TOKEN_REFRESH_PERIOD", datetime.timedelta(0))  # the kubelet's: ~1 min
    monkeypatch.setattr(kube_client, "SERVICE_ACCOUNT_NAMESPACE", str(namespace))

    config = await KubeConfig.load_async()
    assert config.in_cluster and config.namespace == "infernetes-system"
    kube = Kube(config)
    try:
        await kube.request("GET", PATH)
        assert server.seen[-1]["authorization"] == "Bearer first"
        token.write_text("rotated")
        await kube.request("GET", PATH)
        assert server.seen[-1]["authorization"] == "Bearer rotated"
        assert await config.token() == "rotated"  # what kopf's next login gets
    finally:
        await kube.close()


def test_a_named_kubeconfig_wins_over_in_cluster(tmp_path: Path, pki: Pki, server: ApiServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`infernetes operator --kubeconfig X` in a pod talks to the cluster X names (the synchronous loader)."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    path = kubeconfig(tmp_path / "config",
                      {"c": {"server": f"https://localhost:{server.port}", "certificate-authority": str(pki.ca)}},
                      {"u": {"token": "t"}}, {"x": {"cluster": "c", "user": "u"}}, "x")
    config = KubeConfig.load(str(path))
    assert not config.in_cluster and config.host == f"https://localhost:{server.port}"

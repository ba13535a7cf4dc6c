"""API keys: Elasticsearch's header, hashed storage, privileges, and Elasticsearch-shaped refusals."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi.testclient import TestClient

from infernetes.operator.auth import MANAGE, MONITOR, Authenticator, KeyFile, required_privilege
from infernetes.operator.errors import Forbidden, Unauthorized


@pytest.fixture
def keys(tmp_path):
    return KeyFile(tmp_path / "api-keys.json")


def header(encoded: str) -> str:
    return f"ApiKey {encoded}"


def test_keys_are_stored_hashed(keys, tmp_path):
    key, encoded = keys.add("ingest", [MONITOR])
    raw = (tmp_path / "api-keys.json").read_text()
    secret = base64.b64decode(encoded).decode().split(":", 1)[1]
    assert secret not in raw and key.id in raw
    assert oct((tmp_path / "api-keys.json").stat().st_mode & 0o777) == "0o600"
    assert json.loads(raw)[0]["hash"].startswith("sha256:")


@pytest.mark.parametrize(("method", "path", "needed"), [
    ("PUT", "/_inference/text_embedding/x", MANAGE),
    ("DELETE", "/_inference/x", MANAGE),
    ("POST", "/_ml/trained_models/m/deployment/_start", MANAGE),
    ("POST", "/_inference/text_embedding/x", MONITOR),
    ("GET", "/_inference", MONITOR),
    ("GET", "/_ml/trained_models/_stats", MONITOR),
    ("GET", "/", MONITOR),
    ("GET", "/metrics", None),
    ("GET", "/_infernetes/health", None),
])
def test_privileges_by_route(method, path, needed):
    assert required_privilege(method, path) == needed


def test_authentication_and_privileges(keys):
    auth = Authenticator(keys)
    _, admin = keys.add("admin", [MANAGE])
    _, reader = keys.add("reader", [MONITOR])
    assert auth.check("PUT", "/_inference/a/b", header(admin)).name == "admin"
    assert auth.check("POST", "/_inference/a/b", header(reader)).name == "reader"
    with pytest.raises(Forbidden, match="needs the \\[manage_inference\\] privilege"):
        auth.check("PUT", "/_inference/a/b", header(reader))
    with pytest.raises(Unauthorized, match="missing authentication credentials"):
        auth.check("GET", "/_inference", None)
    wrong = base64.b64encode(base64.b64decode(admin)[:-1] + b"x").decode()
    for bad in (header(wrong), "ApiKey !!!", "Basic dXNlcjpwYXNz", header(base64.b64encode(b"nosuchid:x").decode())):
        with pytest.raises(Unauthorized):
            auth.check("GET", "/_inference", bad)
    assert auth.check("GET", "/metrics", None) is None


def test_deleted_keys_stop_working(keys):
    auth = Authenticator(keys)
    key, encoded = keys.add("temp", [MANAGE])
    assert keys.remove(key.id)
    with pytest.raises(Unauthorized):
        auth.check("GET", "/_inference", header(encoded))


def test_chart_style_unsalted_hashes(tmp_path):
    import hashlib

    path = tmp_path / "api-keys.json"
    path.write_text(json.dumps([{"id": "abc", "name": "helm-admin", "privileges": [MANAGE],
                                 "hash": "sha256::" + hashlib.sha256(b"s3cret").hexdigest()}]))
    auth = Authenticator(KeyFile(path))
    assert auth.check("PUT", "/_inference/x/y", header(base64.b64encode(b"abc:s3cret").decode())).id == "abc"


def test_gateway_answers_401_and_403_like_elasticsearch(keys, tmp_path):
    from infernetes.operator.embedded import EmbeddedOptions, build_app
    from infernetes.operator.gateway import GatewaySettings

    _, reader = keys.add("reader", [MONITOR])
    app = build_app(tmp_path / "data", EmbeddedOptions(gateway=GatewaySettings(auth=Authenticator(keys))))
    with TestClient(app) as client:
        resp = client.get("/_inference")
        assert resp.status_code == 401
        assert resp.headers["x-elastic-product"] == "Elasticsearch"
        assert "ApiKey" in resp.headers["www-authenticate"]
        body = resp.json()
        assert body["status"] == 401 and body["error"]["type"] == "security_exception"
        listed = client.get("/_inference", headers={"Authorization": header(reader)}).json()["endpoints"]
        assert [e["inference_id"] for e in listed if not e["inference_id"].startswith(".")] == []  # defaults only
        put = client.put("/_inference/text_embedding/x", headers={"Authorization": header(reader)}, json={})
        assert put.status_code == 403 and put.json()["error"]["type"] == "security_exception"
        assert client.get("/metrics").status_code == 200
        assert client.get("/_infernetes/health").status_code == 200

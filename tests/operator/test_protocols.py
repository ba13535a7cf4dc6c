"""The OpenAI / TEI / Cohere layer without workers: its pure post-processing, its error shapes per
protocol, and API keys sent as ``Authorization: Bearer`` (what OpenAI and TEI clients send)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

from infernetes.operator.api import errors as api_errors
from infernetes.operator.api import protocol
from infernetes.operator.api.openai import parse_input
from infernetes.operator.auth import MONITOR, Authenticator, KeyFile
from infernetes.operator.errors import BadRequest, Unauthorized, ValidationFailed

MRL = {"model_id": "mrl", "dimensions": 384, "options": {"matryoshka_dimensions": [384, 256, 128]}}
PLAIN = {"model_id": "plain", "dimensions": 384, "options": {}}


# -- dimensions (Matryoshka) ----------------------------------------------------------------------


def test_dimensions_need_a_model_trained_for_them():
    with pytest.raises(BadRequest, match="not trained for shortened embeddings"):
        protocol.check_dimensions(128, PLAIN, "ep")
    assert protocol.check_dimensions(128, MRL, "ep") == 128
    assert protocol.check_dimensions(None, PLAIN, "ep") is None
    assert protocol.check_dimensions(384, PLAIN, "ep") is None  # the full size is no truncation
    with pytest.raises(BadRequest, match=r"not one of the sizes .* \[384, 256, 128\]"):
        protocol.check_dimensions(100, MRL, "ep")
    with pytest.raises(BadRequest, match="larger than"):
        protocol.check_dimensions(512, MRL, "ep")
    for bad in (0, -3, True, "128", 1.5):
        with pytest.raises(ValidationFailed):
            protocol.check_dimensions(bad, MRL, "ep")


def test_truncate_keeps_the_prefix_direction_at_unit_length():
    rng = np.random.default_rng(7)
    full = rng.normal(size=(3, 384)).astype(np.float32)
    full /= np.linalg.norm(full, axis=1, keepdims=True)
    short = protocol.truncate(full, 128)
    assert short.shape == (3, 128) and short.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-6)
    prefix = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose(short, prefix, atol=1e-6)


def test_normalize_leaves_unit_vectors_bit_for_bit():
    rng = np.random.default_rng(3)
    unit = rng.normal(size=(2, 16)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    unit *= np.float32(1 - 4e-7)  # unit length as float32 rounding leaves a model's output: not exactly 1
    raw = np.array([[3.0, 4.0] + [0.0] * 14, [0.0] * 16], dtype=np.float32)
    out = protocol.normalize(np.vstack([unit, raw]))
    assert np.array_equal(out[:2], unit)  # same bits: every protocol gives the same numbers
    np.testing.assert_allclose(out[2, :2], [0.6, 0.8], rtol=1e-6)
    assert not out[3].any()  # a zero vector stays zero (no division by zero)


def test_base64_is_little_endian_float32():
    v = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    # The fixture of Elasticsearch's OpenAiEmbeddingsResponseEntity javadoc: "AACAPwAAAEAAAEBA" is [1, 2, 3].
    assert protocol.b64(v) == "AACAPwAAAEAAAEBA"
    assert np.array_equal(np.frombuffer(base64.b64decode(protocol.b64(v)), dtype="<f4"), v)


def test_openai_input_forms():
    assert parse_input("a") == (["a"], None)
    assert parse_input(["a", "b"]) == (["a", "b"], None)
    assert parse_input([1, 2, 3]) == (None, [[1, 2, 3]])
    assert parse_input([[1, 2], [3]]) == (None, [[1, 2], [3]])
    for bad in ([], "", None, [1, "a"], [[1], []], [True], {"a": 1}, [[1.5]]):
        if bad == "":
            continue  # an empty string is a text (the worker embeds it)
        with pytest.raises(ValidationFailed):
            parse_input(bad)


def test_prompt_names_map_to_input_types():
    assert protocol.input_type_of_prompt(None) is None
    assert protocol.input_type_of_prompt("query") == "SEARCH"
    assert protocol.input_type_of_prompt("passage") == "INGEST"
    assert protocol.input_type_of_prompt("search") == "SEARCH"
    with pytest.raises(ValidationFailed, match="not a known prompt name"):
        protocol.input_type_of_prompt("nonsense")


# -- one error mapping, shaped per protocol --------------------------------------------------------


@pytest.fixture
def keys(tmp_path):
    return KeyFile(tmp_path / "api-keys.json")


@pytest.fixture
def client(tmp_path, keys):
    from infernetes.operator.embedded import EmbeddedOptions, build_app
    from infernetes.operator.gateway import GatewaySettings

    app = build_app(tmp_path / "data", EmbeddedOptions(gateway=GatewaySettings(auth=Authenticator(keys))))
    with TestClient(app) as c:
        yield c


def test_errors_take_the_shape_of_each_protocol(client, keys):
    _, reader = keys.add("reader", [MONITOR])
    auth = {"Authorization": f"Bearer {reader}"}
    openai = client.post("/v1/embeddings", headers=auth, json={"model": "nope", "input": "x"})
    assert openai.status_code == 404
    err = openai.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "not_found_error"
    assert "nope" in err["message"] and err["code"] == "resource_not_found_exception"

    bad = client.post("/v1/embeddings", headers=auth, json={"model": "m", "input": "x", "encoding_format": "int8"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    unknown = client.post("/v1/embeddings", headers=auth, json={"model": "m", "input": "x", "stream": True})
    assert unknown.status_code == 400 and "stream" in unknown.json()["error"]["message"]
    broken = client.post("/v1/embeddings", headers=auth, content=b"{not json")
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "parse_exception"

    tei = client.post("/tei/nope/embed", headers=auth, json={"inputs": "x"})
    assert tei.status_code == 404 and set(tei.json()) == {"error", "error_type"}
    tei_bad = client.post("/tei/nope/embed", headers=auth, json={"inputs": 3})
    assert tei_bad.status_code == 400 and tei_bad.json()["error_type"] == "Validation"

    cohere = client.post("/v2/rerank", headers=auth, json={"model": "nope", "query": "q", "documents": ["d"]})
    assert cohere.status_code == 404 and set(cohere.json()) == {"message"}

    es = client.get("/_inference/nope", headers=auth)
    assert es.status_code == 404 and es.json()["error"]["type"] == "resource_not_found_exception"
    # Routing errors follow the same mapping.
    assert set(client.get("/v1/nothing-here", headers=auth).json()["error"]) == {"message", "type", "param", "code"}


def test_bearer_is_the_same_api_key(keys, tmp_path):
    _, reader = keys.add("reader", [MONITOR])
    auth = Authenticator(keys)
    assert auth.check("POST", "/v1/embeddings", f"Bearer {reader}").name == "reader"
    assert auth.check("POST", "/v1/embeddings", f"bearer {reader}").name == "reader"
    wrong = base64.b64encode(base64.b64decode(reader)[:-1] + b"x").decode()
    for header in (f"Bearer {wrong}", "Bearer ", "Bearer sk-not-a-key", f"Basic {reader}", None):
        with pytest.raises(Unauthorized):
            auth.check("POST", "/v1/embeddings", header)


def test_gateway_takes_bearer_keys_and_refuses_in_the_protocols_shape(client, keys):
    _, reader = keys.add("reader", [MONITOR])
    ok = client.get("/v1/models", headers={"Authorization": f"Bearer {reader}"})
    # Only Elasticsearch's default endpoints (ids starting with "."), which exist without a PUT.
    assert ok.status_code == 200 and ok.json()["object"] == "list"
    assert [m["id"] for m in ok.json()["data"] if not m["id"].startswith(".")] == []
    refused = client.get("/v1/models", headers={"Authorization": "Bearer sk-wrong"})
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    assert client.get("/v1/models").status_code == 401
    tei = client.get("/tei/x/info", headers={"Authorization": "Bearer sk-wrong"})
    assert tei.status_code == 401 and tei.json()["error_type"] == "Unauthorized"
    es = client.get("/_inference", headers={"Authorization": f"Bearer {reader}"})
    assert es.status_code == 200
    assert [e["inference_id"] for e in es.json()["endpoints"] if not e["inference_id"].startswith(".")] == []

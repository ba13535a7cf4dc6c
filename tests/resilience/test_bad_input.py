"""Bad input: the published OpenAPI document fuzzed with schemathesis, hypothesis bodies, hostile values.
Zero 5xx, every refusal an Elasticsearch-shaped 4xx, and a refused request creates nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from helpers import ServerThread, put_endpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infernetes.operator.api.errors import family
from infernetes.operator.embedded import EmbeddedOptions
from infernetes.worker.modelstore import ModelStore

COUNTS = {"schemathesis_cases": 0, "hypothesis_bodies": 0, "hostile_requests": 0, "server_errors": 0}


def assert_es_error(status: int, body: object) -> None:
    assert isinstance(body, dict) and set(body) == {"error", "status"}, body
    assert body["status"] == status
    error = body["error"]
    assert isinstance(error, dict) and error["type"] and error["reason"]
    assert error["root_cause"][0]["type"] == error["type"]


def assert_protocol_error(path: str, status: int, body: object) -> None:
    """Elasticsearch's error body, or on the other protocols' routes (OpenAI, Cohere, TEI) theirs."""
    kind = family(path)
    if kind == "elasticsearch":
        assert_es_error(status, body)
    elif kind == "openai":
        assert isinstance(body, dict) and set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"], body
    elif kind == "cohere":
        assert isinstance(body, dict) and set(body) == {"message"} and body["message"], body
    else:
        assert isinstance(body, dict) and set(body) == {"error", "error_type"} and body["error"], body


def check(response_status: int, json_body, figures_key: str, path: str = "/") -> None:
    COUNTS[figures_key] += 1
    if response_status >= 500:
        COUNTS["server_errors"] += 1
    assert response_status < 500, json_body
    if response_status >= 400:
        assert_protocol_error(path, response_status, json_body)


TARGET = "fuzz-target"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    """The real gateway on loopback with one real (tiny) model and one endpoint serving it, so that requests
    about an existing endpoint or model reach the code past the "not found" checks."""
    data_dir = tmp_path_factory.mktemp("fuzz")
    ModelStore(data_dir / "models").import_folder(tiny_model_dir, "tiny")
    with ServerThread(data_dir, EmbeddedOptions(allow_download=False)) as srv:
        with srv.client(timeout=60) as c:
            assert put_endpoint(c, "text_embedding", TARGET, "tiny").status_code == 200
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with server.client(timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(server.url + "/_openapi.json")


@pytest.fixture(scope="module", autouse=True)
def report(figures):
    yield
    figures["fuzz"] = dict(COUNTS)





def test_openapi_fuzz(api_schema, server):
    """Every operation of the published OpenAPI document, with schemathesis-generated requests."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20  # every route is described

    for operation in operations:
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def attempt(case):
            response = case.call(base_url=server.url, timeout=30)

            def header(name: str) -> str:
                value = response.headers.get(name) or [""]
                return value[0] if isinstance(value, list) else value

            content_type = header("content-type")
            body = response.json() if content_type.startswith(("application/json", "application/vnd")) else None
            if response.status_code >= 400:
                check(response.status_code, body, "schemathesis_cases", operation.path)
            else:
                COUNTS["schemathesis_cases"] += 1
            assert header("x-elastic-product") == "Elasticsearch"

        attempt()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
SETTINGS_KEYS = ["model_id", "deployment_id", "num_allocations", "num_threads", "adaptive_allocations", "x"]
BODIES = st.fixed_dictionaries(
    {"service": st.sampled_from(["elasticsearch", "openai", 3, None])},
    optional={
        "service_settings": st.dictionaries(st.sampled_from(SETTINGS_KEYS), JSON, max_size=5),
        "task_settings": st.dictionaries(st.sampled_from(["return_documents", "top_n", "input_type", "y"]), JSON),
        "chunking_settings": st.dictionaries(st.sampled_from(["strategy", "max_chunk_size", "overlap",
                                                              "sentence_overlap"]), JSON),
        "extra": JSON,
    },
)


def listed(client) -> list[str]:
    # The user's endpoints: Elasticsearch's default endpoints (ids starting with ".") are always listed.
    return [e["inference_id"] for e in client.get("/_inference").json()["endpoints"]
            if not e["inference_id"].startswith(".")]


UPDATE_BODIES = st.fixed_dictionaries({}, optional={
    "service_settings": JSON | st.dictionaries(st.sampled_from(SETTINGS_KEYS), JSON, max_size=3),
    "task_settings": JSON,
    "chunking_settings": JSON,
    "service": JSON,
})


def test_hypothesis_update_bodies_on_a_live_endpoint(client):
    """`_update` of an endpoint that exists: bodies reach the update's own validation (not a 404)."""
    before = client.get(f"/_inference/{TARGET}").json()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=UPDATE_BODIES | JSON)
    def attempt(body):
        resp = client.put(f"/_inference/text_embedding/{TARGET}/_update", json=body)
        check(resp.status_code, resp.json(), "hypothesis_bodies")
        if resp.status_code == 200:  # a valid update: put the endpoint back as it was
            client.put(f"/_inference/text_embedding/{TARGET}/_update",
                       json={"service_settings": {"num_allocations": 1}, "task_settings": {}})
        assert listed(client) == [TARGET]

    attempt()
    attempt_d6 = [{"task_settings": "x"}, {"task_settings": [["a", 1]]}, {"service_settings": [1]}]
    for body in attempt_d6:  # the cases a review found answering 500 TypeError
        resp = client.put(f"/_inference/text_embedding/{TARGET}/_update", json=body)
        check(resp.status_code, resp.json(), "hypothesis_bodies")
        assert resp.status_code == 400, resp.text
    assert client.get(f"/_inference/{TARGET}").json()["endpoints"][0]["service_settings"]["model_id"] == \
        before["endpoints"][0]["service_settings"]["model_id"]


START_KEYS = ["deployment_id", "number_of_allocations", "threads_per_allocation", "queue_capacity", "priority",
              "wait_for", "timeout", "adaptive_allocations", "cache_size"]


def test_hypothesis_start_bodies_on_an_installed_model(client):
    """`_start` of a model that is installed: body values of every type reach the parameter checks."""
    # A valid body starts a real deployment; they are stopped at the end (stopping one takes seconds), and
    # once the machine's cores are taken further valid starts are refused by admission (429), which is fine.
    started: set[str] = set()

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=st.dictionaries(st.sampled_from(START_KEYS), JSON, max_size=3) | JSON)
    def attempt(body):
        resp = client.post("/_ml/trained_models/tiny/deployment/_start?wait_for=starting&timeout=20s", json=body)
        check(resp.status_code, resp.json(), "hypothesis_bodies")
        if resp.status_code == 200:
            started.add(resp.json()["assignment"]["task_parameters"]["deployment_id"])

    try:
        attempt()
    finally:
        for deployment in started:
            assert client.post(f"/_ml/trained_models/{deployment}/deployment/_stop?force=true").status_code == 200
    for body in ({"deployment_id": 5}, {"deployment_id": ["a"]}, {"number_of_allocations": 1.5},
                 {"number_of_allocations": "1.5"}):
        resp = client.post("/_ml/trained_models/tiny/deployment/_start", json=body)
        check(resp.status_code, resp.json(), "hypothesis_bodies")
        assert resp.status_code == 400, (body, resp.text)


def test_hypothesis_put_bodies(client):
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=BODIES, task=st.sampled_from(["text_embedding", "sparse_embedding", "rerank", "completion"]))
    def attempt(body, task):
        resp = client.put(f"/_inference/{task}/fuzzed", json=body)
        check(resp.status_code, resp.json(), "hypothesis_bodies")
        # Only "tiny" is installed and "fuzzed" never exists after a refusal; a valid body is removed again.
        if resp.status_code == 200:
            assert client.delete(f"/_inference/{task}/fuzzed").status_code == 200
        assert listed(client) == [TARGET]

    attempt()


HOSTILE = [
    ("PUT", "/_inference/text_embedding/huge", b'{"service": "elasticsearch", "service_settings": '
     b'{"num_allocations": 1e308, "num_threads": 18446744073709551617, "model_id": "m"}}', 400),
    ("PUT", "/_inference/text_embedding/deep", b'{"a":' * 5000 + b"1" + b"}" * 5000, 400),
    ("PUT", "/_inference/text_embedding/utf8", b'{"service": "elasticsearch\xff\xfe"}', 400),
    ("PUT", "/_inference/text_embedding/..", b"{}", None),  # the path normalises to /_inference: 405
    ("PUT", "/_inference/text_embedding/a%2F..%2F..%2Fetc", b'{}', None),
    ("PUT", "/_inference/text_embedding/escape", b'{"service": "elasticsearch", "service_settings": '
     b'{"num_allocations": 1, "num_threads": 1, "model_id": "../../etc/passwd"}}', 400),
    ("PUT", "/_inference/text_embedding/escape2", b'{"service": "elasticsearch", "service_settings": '
     b'{"num_allocations": 1, "num_threads": 1, "model_id": "/etc/passwd"}}', 400),
    ("PUT", "/_inference/text_embedding/nul", b'{"service": "elasticsearch\\u0000"}', 400),
    ("POST", "/_inference/text_embedding/x", b'[' * 100000, 400),
    ("PUT", "/_inference/text_embedding/big", b'{"service": "' + b"x" * (33 * 1024 * 1024) + b'"}', 413),
    ("POST", "/_ml/trained_models/..%2F..%2Fetc/deployment/_start", b'', None),
    ("GET", "/_ml/trained_models/%00/_stats", b'', None),
    ("PUT", "/_inference/text_embedding/" + "a" * 5000, b'{}', None),
    # "¹".isdigit() is true but int("¹") raises: found by the fuzzer as a 500
    ("PUT", "/_ml/trained_models/fuzzed-model/definition/%C2%B9", b'{"definition": "AA==", "total_parts": 1, '
     b'"total_definition_length": 1}', None),
]


@pytest.mark.parametrize(("method", "path", "body", "expected"), HOSTILE, ids=[h[1][:40] for h in HOSTILE])
def test_hostile_values(client, server, method, path, body, expected):
    resp = client.request(method, path, content=body, headers={"content-type": "application/json"})
    check(resp.status_code, resp.json(), "hostile_requests")
    assert resp.status_code >= 400
    if expected is not None:
        assert resp.status_code == expected, resp.text
    assert listed(client) == [TARGET]
    assert not list(Path(server.data_dir).rglob("passwd"))

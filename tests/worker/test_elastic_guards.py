"""Guards around what users hand us: recursive-chunking separators (regular expressions run on every input) and
Eland uploads (definitions as large as a client claims)."""

from __future__ import annotations

import base64
import shutil
import time

import pytest

from infernetes.operator.api.trained_models import _es_error
from infernetes.operator.errors import ValidationFailed
from infernetes.operator.spec import parse_endpoint
from infernetes.worker.chunking import SEPARATOR_GROUPS, SeparatorTimeout, chunk, separator_errors
from infernetes.worker.elastic_format import ElasticFormatError, Uploads
from infernetes.worker.modelstore import ModelStore

BASE = {"service": "elasticsearch", "service_settings": {"num_allocations": 1, "num_threads": 1,
                                                          "model_id": ".multilingual-e5-small"}}
CONFIG = {"model_type": "pytorch", "inference_config": {"text_embedding": {}},
          "input": {"field_names": ["text_field"]}}


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(\s*\w+)*\.", r"(?:[a-z]+\s?)+!", r"(x*)*y", r"(\w)\1",
                                     "a" * 300])
def test_catastrophic_separators_are_refused_when_the_endpoint_is_created(pattern):
    with pytest.raises(ValidationFailed) as exc:
        parse_endpoint("text_embedding", "ep", {**BASE, "chunking_settings": {
            "strategy": "recursive", "max_chunk_size": 50, "separators": [pattern]}})
    assert "[separators]" in exc.value.reason


@pytest.mark.parametrize("pattern", [r"\n\n", r"\|", r"(a|b)+;", r"(?:ab){2,}", r"x{1,3}(y+)", r"^#+ ",
                                     *SEPARATOR_GROUPS["plaintext"], *SEPARATOR_GROUPS["markdown"]])
def test_ordinary_separators_pass(pattern):
    assert separator_errors(pattern) == []


def test_a_separator_that_backtracks_anyway_is_stopped_by_its_time_limit():
    # Alternatives that overlap backtrack exponentially without a nested quantifier: the time limit catches it.
    text = " ".join(["a" * 32 + "b"] * 3)
    assert separator_errors(r"(a|aa)+c") == []
    t0 = time.monotonic()
    with pytest.raises(SeparatorTimeout, match="took longer than"):
        chunk(text, {"strategy": "recursive", "max_chunk_size": 1, "separators": [r"(a|aa)+c"]})
    assert time.monotonic() - t0 < 30  # a ceiling for a busy machine; unguarded, this search runs for hours


def test_an_upload_larger_than_the_free_disk_is_refused_before_writing(tmp_path):
    uploads = Uploads(ModelStore(tmp_path / "models"))
    uploads.create("too-big", CONFIG)
    part = {"definition": base64.b64encode(b"x" * 100).decode(), "total_parts": 2}
    with pytest.raises(ElasticFormatError) as exc:
        uploads.put_part("too-big", 0, {**part, "total_definition_length": 10**16})  # 10 PB
    assert exc.value.kind == "disk_full" and "Not enough disk space" in str(exc.value)
    error = _es_error(exc.value)
    assert error.status == 429 and error.body()["error"]["type"] == "cluster_block_exception"
    assert not list((uploads.root / "too-big" / "parts").iterdir())
    assert not (uploads.root / "too-big" / "definition.json").exists()
    # A reserve larger than the free space refuses even a small upload; within it, the part is stored.
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(ElasticFormatError, match="stay in reserve"):
        Uploads(uploads.store, reserve_bytes=2 * free + 2**30).put_part(
            "too-big", 0, {**part, "total_definition_length": 200})
    assert uploads.put_part("too-big", 0, {**part, "total_definition_length": 200}) is None
    assert (uploads.root / "too-big" / "parts" / "000000").read_bytes() == b"x" * 100

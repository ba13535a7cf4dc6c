"""Model ids as Eland makes them, and the Elasticsearch page's upper-case id (``msmarco-MiniLM-L12-cos-v5``)."""

from __future__ import annotations

import pytest

from infernetes.operator.catalog import ModelCatalog
from infernetes.operator.errors import ResourceNotFound
from infernetes.worker.elastic_format import eland_id, id_errors
from infernetes.worker.modelstore import ModelStore


@pytest.mark.parametrize(("hub_id", "expected"), [
    # eland.ml.pytorch.transformers.elasticsearch_model_id: [\s\\/] -> "__", lower case, last 64, no leading "__".
    ("sentence-transformers/msmarco-MiniLM-L12-cos-v5", "sentence-transformers__msmarco-minilm-l12-cos-v5"),
    ("/home/me/models/MiniLM", "home__me__models__minilm"),
    ("x" * 70 + "/Model", ("x" * 70 + "__model")[-64:]),
])
def test_eland_ids_are_valid_elasticsearch_ids(hub_id, expected):
    assert eland_id(hub_id) == expected
    assert id_errors(eland_id(hub_id)) == []
    assert id_errors("msmarco-MiniLM-L12-cos-v5")  # the page's id, as given, Elasticsearch refuses


def test_the_pages_id_points_at_the_id_eland_uploaded(tmp_path, tiny_model_dir):
    store = ModelStore(tmp_path / "models")
    store.import_folder(tiny_model_dir, "sentence-transformers__msmarco-minilm-l12-cos-v5")
    catalog = ModelCatalog(store, allow_download=False)
    with pytest.raises(ResourceNotFound, match=r"did you mean \[sentence-transformers__msmarco-minilm-l12-cos-v5\]"):
        catalog.check("msmarco-MiniLM-L12-cos-v5", "text_embedding", "my-msmarco-minilm-model")
    with pytest.raises(ResourceNotFound) as other:
        catalog.check("some-other-model", "text_embedding", "x")
    assert "did you mean" not in str(other.value)

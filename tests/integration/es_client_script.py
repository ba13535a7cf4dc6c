"""Drives the server with an official Elasticsearch Python client, unchanged; prints what it saw as JSON.

Run as ``python es_client_script.py URL MODULE PREFIX``, MODULE being ``elasticsearch`` (9.x) or
``elasticsearch8`` (8.x, installed apart because it needs elastic-transport 8).
"""

import importlib
import json
import sys

url, module_name, prefix = sys.argv[1:4]
es_module = importlib.import_module(module_name)
es = es_module.Elasticsearch(url, request_timeout=60)
out = {"client": ".".join(map(str, es_module.__version__))}
out["info"] = es.info().body
endpoint = f"{prefix}-minilm"
created = es.inference.put(
    task_type="text_embedding",
    inference_id=endpoint,
    inference_config={"service": "elasticsearch",
                      "service_settings": {"num_allocations": 1, "num_threads": 1, "model_id": "minilm"}},
)
out["put"] = created.body
out["get"] = es.inference.get(inference_id=endpoint).body
result = es.inference.inference(inference_id=endpoint, input=["hello world", "bonjour"])
out["dims"] = [len(e["embedding"]) for e in result["text_embedding"]]
if hasattr(es.inference, "text_embedding"):
    typed = es.inference.text_embedding(inference_id=endpoint, input="hello world")
    out["typed_dims"] = len(typed["text_embedding"][0]["embedding"])
stats = es.ml.get_trained_models_stats(model_id=endpoint)
out["stats_state"] = stats["trained_model_stats"][0]["deployment_stats"]["allocation_status"]["state"]
try:
    es.inference.get(inference_id=f"{prefix}-missing")
except es_module.NotFoundError as exc:
    out["missing"] = {"status": exc.meta.status, "type": exc.body["error"]["type"]}
try:
    es.inference.put(task_type="text_embedding", inference_id=f"{prefix}-bad", inference_config={
        "service": "elasticsearch", "service_settings": {"num_allocations": 1, "num_threads": 3, "model_id": "minilm"}})
except es_module.BadRequestError as exc:
    out["bad"] = {"status": exc.meta.status, "reason": exc.body["error"]["reason"]}
out["delete"] = es.inference.delete(inference_id=endpoint).body
print(json.dumps(out))

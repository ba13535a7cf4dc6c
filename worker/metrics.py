"""Prometheus metrics of one worker. The autoscaler reads the queue and request counters.

Names carry the ``infernetes_`` prefix and unit suffixes; labels stay low-cardinality
(deployment and allocation ids only). Each worker app has its own registry so several apps can
live in one test process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class WorkerMetrics:
    def __init__(self, deployment_id: str, allocation_id: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"deployment": deployment_id, "allocation": allocation_id}
        names = list(labels)
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=r).labels(**labels)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, names, registry=r).labels(**labels)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=r).labels(**labels)

        self.queue_size = gauge("infernetes_queue_size", "Inputs waiting for the model (not yet in a batch).")
        self.in_flight = gauge("infernetes_requests_in_flight", "Inference requests accepted and not yet answered.")
        self.ready = gauge("infernetes_model_ready", "1 once the model is loaded and warmed up.")
        self.threads = gauge("infernetes_threads", "Torch threads of this allocation (num_threads).")
        self.frozen_objects = gauge("infernetes_gc_frozen_objects",
                                    "Objects the garbage collector no longer walks: those alive once the model "
                                    "loaded (gc.freeze).")
        self.requests = counter("infernetes_inference_requests", "Inference requests answered successfully.")
        self.inference_cpu = counter("infernetes_inference_cpu_seconds",
                                     "CPU time of the model thread in forward passes (with num_threads 1, all of "
                                     "the model's; wall time above it is time the thread waited for a core).")
        self.inputs = counter("infernetes_inference_inputs", "Inputs (texts or pairs) run through the model.")
        self.errors = counter("infernetes_inference_errors", "Inference requests that failed in the model.")
        self.rejected = counter("infernetes_rejected_requests", "Requests refused with 429 because the queue was full.")
        self.cancelled = counter("infernetes_cancelled_requests", "Requests dropped because their client went away.")
        self.request_seconds = histogram(
            "infernetes_request_duration_seconds", "Time from arrival to response, per request.", LATENCY_BUCKETS
        )
        self.queue_seconds = histogram(
            "infernetes_queue_wait_seconds", "Time a request waited before its first batch started.", LATENCY_BUCKETS
        )
        self.tokenize_seconds = histogram(
            "infernetes_tokenize_seconds", "Tokenisation time per request.", LATENCY_BUCKETS
        )
        self.inference_seconds = histogram(
            "infernetes_inference_seconds", "Model forward time per forward pass.", LATENCY_BUCKETS
        )
        self.postprocess_seconds = histogram(
            "infernetes_postprocess_seconds", "Post-processing and serialisation time per request.", LATENCY_BUCKETS
        )
        self.batch_size = histogram("infernetes_batch_size", "Inputs per forward pass.", SIZE_BUCKETS)
        self.batch_tokens = histogram("infernetes_batch_tokens", "Padded tokens per forward pass.", TOKEN_BUCKETS)

"""Every Prometheus metric of the service, declared once.

Names carry the `kerasserve_` prefix and base units; labels have few values (never request ids).
Under several gunicorn workers, prometheus_client's multiprocess mode aggregates them: the
`PROMETHEUS_MULTIPROC_DIR` folder is prepared by `gunicorn.conf.py` before the workers start, and
`/metrics` collects from it. Gauges use the `livesum` mode (sum over live workers).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UNKNOWN_MODEL = "_unknown"
"""The `model` label of requests naming a model the repository does not know (no model name starts with '_'):
client-chosen names never become label values, so the metric files stay bounded."""

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

REST = "rest"
GRPC = "grpc"
"""Values of the `protocol` label of the request metrics."""

REQUESTS = Counter("kerasserve_requests_total", "Requests answered.", ["protocol", "route", "model", "code"])
"""`route`: the Flask endpoint (REST) or `Service/Method` (gRPC); `code`: the HTTP status (REST) or the
gRPC status code name (`OK`, `NOT_FOUND`, ...)."""
REQUEST_SECONDS = Histogram(
    "kerasserve_request_duration_seconds",
    "Request to response.",
    ["protocol", "route", "model"],
    buckets=LATENCY_BUCKETS_S,
)
BATCH_ROWS = Histogram(
    "kerasserve_batch_rows", "Rows per device call (before padding).", ["model"], buckets=BATCH_BUCKETS
)
BATCHES = Counter("kerasserve_batches_total", "Device calls made by batchers.", ["model"])
PADDING_ROWS = Counter(
    "kerasserve_padding_rows_total",
    "Rows added to device calls to reach a compiled batch size (computed, then thrown away).",
    ["model"],
)
"""With `kerasserve_batch_rows_sum`: the padding fraction, padding / (rows + padding)."""
QUEUE_SECONDS = Histogram(
    "kerasserve_batch_queue_seconds", "Time a request waited in the batch queue.", ["model"], buckets=LATENCY_BUCKETS_S
)
COMPUTE_SECONDS = Histogram(
    "kerasserve_batch_compute_seconds", "Time of one device call.", ["model"], buckets=LATENCY_BUCKETS_S
)
REJECTED = Counter("kerasserve_rejected_total", "Requests refused because a batch queue was full.", ["model"])
BATCH_RETRIES = Counter(
    "kerasserve_batch_retries_total",
    "Batches of several requests that failed and were run again one request at a time.",
    ["model"],
)
BATCH_ISOLATED_FAILURES = Counter(
    "kerasserve_batch_isolated_failures_total",
    "Requests that failed again when run alone after their batch failed (their batch-mates were answered).",
    ["model"],
)
BATCHER_RESTARTS = Counter(
    "kerasserve_batcher_restarts_total",
    "Times a batch thread's loop died (e.g. MemoryError) and was restarted, or gave up.",
    ["model"],
)
MODEL_LOAD_SECONDS = Histogram(
    "kerasserve_model_load_seconds",
    "Load plus warm-up time of a version.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
MODEL_LOAD_FAILURES = Counter("kerasserve_model_load_failures_total", "Versions that failed to load.", ["model"])
MODELS_AVAILABLE = Gauge(
    "kerasserve_model_versions_available",
    "Versions AVAILABLE, summed over workers.",
    ["model"],
    multiprocess_mode="livesum",
)
MODEL_EVICTIONS = Counter(
    "kerasserve_model_evictions_total",
    "Models unloaded as the least recently used, to stay within MAX_LOADED_MODELS.",
    ["model"],
)
MODELS_LOADED = Gauge(
    "kerasserve_models_loaded",
    "Models holding memory in a worker (a version loaded, loading or unloading: what MAX_LOADED_MODELS bounds); the most of any worker.",
    multiprocess_mode="livemax",
)

BACKEND_MAX_ABS_DIFF = Gauge(
    "kerasserve_backend_max_abs_diff",
    "Largest |difference| the equivalence gate measured between TensorFlow and a compiled backend, last load.",
    ["model", "backend", "precision"],
    multiprocess_mode="livemax",
)
BACKEND_INPUTS_MAX_ABS_DIFF = Gauge(
    "kerasserve_backend_gate_inputs_max_abs_diff",
    "Largest |difference| the equivalence gate measured on the real sample inputs a model config names (gate.inputs), last load.",
    ["model", "backend", "precision"],
    multiprocess_mode="livemax",
)
BACKEND_FALLBACKS = Counter(
    "kerasserve_backend_fallbacks_total",
    "Versions that asked for a compiled backend and serve on TensorFlow (reason: conversion, gate, slower).",
    ["model", "reason"],
)

PAYLOAD_EVENTS_SENT = Counter(
    "kerasserve_payload_events_sent_total", "Payload-logging CloudEvents the sink accepted (PAYLOAD_LOG_URL)."
)
PAYLOAD_EVENTS_DROPPED = Counter(
    "kerasserve_payload_events_dropped_total",
    "Payload-logging CloudEvents dropped: the queue was full (`queue_full`), the sink did not answer in time "
    "(`timeout`), or failed or refused them (`sink_error`). Predictions never wait for the sink.",
    ["reason"],
)


def observe_request(protocol: str, route: str, model: str, code: str, seconds: float | None) -> None:
    """Count one answered request and observe its duration (None: not timed). `model` must already be bounded."""
    REQUESTS.labels(protocol=protocol, route=route, model=model, code=code).inc()
    if seconds is not None:
        REQUEST_SECONDS.labels(protocol=protocol, route=route, model=model).observe(seconds)

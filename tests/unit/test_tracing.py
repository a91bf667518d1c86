"""OpenTelemetry tracing through Flask's test client, into the SDK's in-memory exporter.

The real app with tracing on (`create_app(..., span_exporter=InMemorySpanExporter())`), real
batchers over the fake models: a `traceparent` sent by the client is the trace of the request's
span, comes back in `traceresponse` and in the access log; the request's children are
preprocess, queue and encode; the batch's span is linked from every request in it, and links
back to each; probes make no spans; with tracing off no OpenTelemetry module is even imported.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service import tracing
from service.api import EXTENSION
from service.app import create_app
from service.settings import Settings
from tests.conftest import REPO, wait_until
from tests.unit.conftest import Records
from tests.unit.fakes import DOUBLE, PIXEL_MEAN, SUM, FakeBuilder

TRACE_ID = "0af7651916cd76f8a2f1b1a2c3d4e5f6"
PARENT_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"


def traced_app(models_dir: Path, exporter: InMemorySpanExporter, **options) -> Flask:
    models_dir.mkdir(parents=True, exist_ok=True)
    for name in ("double", "digits", "sum"):
        (models_dir / f"{name}.h5").write_text("a fake model file")
    settings = Settings(models_dir=models_dir, settle_s=0, poll_interval_s=60, **options)
    builder = FakeBuilder({"double": DOUBLE, "digits": PIXEL_MEAN, "sum": SUM}, settings)
    app = create_app(settings, builder=builder, span_exporter=exporter)
    client = app.test_client()
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout_s=10)
    return app


@pytest.fixture()
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    tracing.configure(Settings())  # off again for the tests that follow


@pytest.fixture()
def app(tmp_path: Path, exporter: InMemorySpanExporter) -> Iterator[Flask]:
    app = traced_app(tmp_path / "models", exporter)
    yield app
    app.extensions[EXTENSION].stop()


def by_name(spans) -> dict[str, list]:
    named: dict[str, list] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def test_a_traceparent_is_the_trace_of_the_request_its_answer_its_access_record_and_its_spans(
    app: Flask, exporter: InMemorySpanExporter, records: Records
) -> None:
    exporter.clear()
    response = app.test_client().post(
        "/models/double/predict", json={"instances": [[1, 2]]}, headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 200
    version, trace_id, server_span_id, flags = response.headers["traceresponse"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    [record] = records.fields()
    assert record["trace_id"] == TRACE_ID

    spans = by_name(exporter.get_finished_spans())
    [server] = spans["POST /models/<name>/predict"]
    assert server.kind is SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.context.span_id, "016x") == server_span_id
    assert format(server.parent.span_id, "016x") == PARENT_SPAN_ID  # the client's span
    for name in ("preprocess", "queue", "encode"):
        [child] = spans[name]
        assert child.context.trace_id == server.context.trace_id, name
        assert child.parent.span_id == server.context.span_id, name
    # The batch's span: its own trace, linked to the request's span; the request's queue span links back.
    [batch] = spans["batch"]
    assert batch.parent is None and batch.context.trace_id != server.context.trace_id
    assert [link.context.span_id for link in batch.links] == [server.context.span_id]
    assert dict(batch.attributes) == {"kerasserve.model": "double", "kerasserve.version": 1, "kerasserve.batch_rows": 1}
    [queue] = spans["queue"]
    assert [link.context.span_id for link in queue.links] == [batch.context.span_id]
    assert queue.start_time <= queue.end_time <= batch.end_time


def test_one_batch_span_per_device_call_linked_from_every_request_of_the_batch(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    app = traced_app(tmp_path / "models", exporter, max_batch_size=4, batch_timeout_ms=2000)
    client = app.test_client()
    exporter.clear()
    try:
        start = threading.Barrier(4)

        def predict(value: int) -> None:
            start.wait()
            client.post("/models/double/predict", json={"instances": [[value, value]]})

        threads = [threading.Thread(target=predict, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        app.extensions[EXTENSION].stop()
    spans = by_name(exporter.get_finished_spans())
    [batch] = spans["batch"]  # one device call for the four requests
    assert batch.attributes["kerasserve.batch_rows"] == 4
    servers = spans["POST /models/<name>/predict"]
    assert len(servers) == 4 and len({s.context.trace_id for s in servers}) == 4  # four traces
    assert {link.context.span_id for link in batch.links} == {s.context.span_id for s in servers}
    queues = spans["queue"]
    assert len(queues) == 4
    assert {q.parent.span_id for q in queues} == {s.context.span_id for s in servers}
    assert all([link.context.span_id for link in q.links] == [batch.context.span_id] for q in queues)


def test_probes_and_metrics_make_no_spans(app: Flask, exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    client = app.test_client()
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"):
        response = client.get(path, headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200 and "traceresponse" not in response.headers
    assert exporter.get_finished_spans() == ()


def test_a_failed_request_is_traced_with_its_status(app: Flask, exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    response = app.test_client().post("/models/double/predict", json={"instances": [[1, 2, 3]]})
    assert response.status_code == 422
    [server] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert server.attributes["http.status_code"] == 422
    assert response.headers["traceresponse"].split("-")[1] == format(server.context.trace_id, "032x")


def test_without_tracing_no_opentelemetry_module_is_imported() -> None:
    code = """
import sys, tempfile, pathlib
from tests.unit.test_api import make_app
app = make_app(pathlib.Path(tempfile.mkdtemp()) / "models")
response = app.test_client().post("/models/double/predict", json={"instances": [[1, 2]]})
assert response.status_code == 200 and "traceresponse" not in response.headers, response
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
assert not loaded, loaded
print("no opentelemetry")
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "no opentelemetry"

"""Access log, tracing and payload logging end to end: real gunicorn, a local OTLP/HTTP collector, a local sink.

The collector is an HTTP server on a loopback port that decodes what the OTLP/HTTP exporter POSTs
to `/v1/traces` with `opentelemetry-proto`'s own messages; the sink is the CloudEvents recorder of
the payload-logging unit tests. One server, configured only through the environment, as an
operator would: OTEL_TRACES_EXPORTER=otlp, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, PAYLOAD_LOG_URL, LOG_JSON.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
import tensorflow as tf
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.conftest import wait_until
from tests.e2e.api_models import build_api_models
from tests.e2e.conftest import Server, free_port, start_server
from tests.unit.test_payload_log import Sink

TRACE_ID = "5b8efff798038103d269b633813fc60c"
GRPC_TRACE_ID = "6e0c63257de34c92bf9efcd03927272e"


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: every span it was sent, decoded."""

    def __init__(self) -> None:
        self.spans: list = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf":
                    export = ExportTraceServiceRequest.FromString(body)
                    for resource in export.resource_spans:
                        service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
                        for scope in resource.scope_spans:
                            collector.spans.extend((service, span) for span in scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def trace(self, trace_id: str) -> dict[str, object]:
        return {span.name: span for _, span in self.spans if span.trace_id.hex() == trace_id}


class Observed:
    def __init__(self, server: Server, collector: Collector, sink: Sink, grpc_port: int) -> None:
        self.server, self.collector, self.sink, self.grpc_port = server, collector, sink, grpc_port

    def access_records(self) -> list[dict]:
        lines = (json.loads(line) for line in self.server.log().splitlines() if line.startswith("{"))
        return [line for line in lines if line["logger"] == "service.access"]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    built = build_api_models(tmp_path_factory.getbasetemp() / "api_models")
    models = tmp_path_factory.mktemp("observed_models")
    shutil.copyfile(built / "binary.keras", models / "binary.keras")
    collector, sink = Collector(), Sink()
    grpc_port = free_port()
    try:
        with start_server(
            models,
            tmp_path_factory.mktemp("observed_logs"),
            GRPC_PORT=str(grpc_port),
            LOG_JSON="true",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_SERVICE_NAME="kerasserve-e2e",
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"http://127.0.0.1:{collector.server_address[1]}/v1/traces",
            OTEL_BSP_SCHEDULE_DELAY="100",
            PAYLOAD_LOG_URL=sink.url,
        ) as server:
            yield Observed(server, collector, sink, grpc_port)
    finally:
        collector.shutdown()
        sink.shutdown()


def test_a_rest_prediction_is_in_the_access_log_the_exported_trace_and_the_payload_log(observed: Observed) -> None:
    body = {"instances": [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]}
    response = observed.server.post(
        "/v1/models/binary:predict",
        json=body,
        headers={"traceparent": f"00-{TRACE_ID}-1111111111111111-01", "X-Request-ID": "e2e-1"},
    )
    assert response.status_code == 200
    assert response.headers["traceresponse"].split("-")[1] == TRACE_ID

    wait_until(lambda: any(r["request_id"] == "e2e-1" for r in observed.access_records()), timeout_s=10)
    [record] = [r for r in observed.access_records() if r["request_id"] == "e2e-1"]
    assert {k: record[k] for k in ("protocol", "method", "path", "model", "version", "rows", "status")} == {
        "protocol": "rest",
        "method": "POST",
        "path": "/v1/models/binary:predict",
        "model": "binary",
        "version": 1,
        "rows": 2,
        "status": "200",
    }
    assert record["trace_id"] == TRACE_ID and record["client"] == "127.0.0.1"
    assert record["bytes_out"] == len(response.content) and record["compute_ms"] > 0

    wait_until(lambda: {"preprocess", "queue", "encode"} <= set(observed.collector.trace(TRACE_ID)), timeout_s=15)
    spans = observed.collector.trace(TRACE_ID)
    [server_span] = [s for s in spans.values() if s.parent_span_id.hex() == "1111111111111111"]
    assert server_span.name == "POST /v1/models/<path:path>"
    assert {service for service, _ in observed.collector.spans} == {"kerasserve-e2e"}
    [batch] = [s for _, s in observed.collector.spans if s.name == "batch" and s.links[0].trace_id.hex() == TRACE_ID]
    assert [link.span_id for link in spans["queue"].links] == [batch.span_id]

    events = observed.sink.events(2)
    mine = [(headers, data) for headers, data in events if headers["ce-id"] == "e2e-1"]
    assert [headers["ce-type"] for headers, _ in mine] == [
        "org.kubeflow.serving.inference.request",
        "org.kubeflow.serving.inference.response",
    ]
    assert json.loads(mine[0][1]) == body and mine[1][1] == response.content


def test_a_grpc_call_is_in_the_access_log_and_its_trace(observed: Observed) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "binary"
    request.inputs["features"].CopyFrom(tf.make_tensor_proto([[0.1, 0.2, 0.3, 0.4]], dtype=tf.float32))
    with grpc.insecure_channel(f"127.0.0.1:{observed.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        metadata = (("traceparent", f"00-{GRPC_TRACE_ID}-2222222222222222-01"), ("x-request-id", "e2e-grpc"))
        _, call = stub.Predict.with_call(request, metadata=metadata, timeout=30)
    assert dict(call.initial_metadata())["traceresponse"].split("-")[1] == GRPC_TRACE_ID
    wait_until(lambda: any(r["request_id"] == "e2e-grpc" for r in observed.access_records()), timeout_s=10)
    [record] = [r for r in observed.access_records() if r["request_id"] == "e2e-grpc"]
    assert (record["protocol"], record["route"], record["model"], record["rows"], record["status"]) == (
        "grpc",
        "PredictionService/Predict",
        "binary",
        1,
        "OK",
    )
    assert record["trace_id"] == GRPC_TRACE_ID
    wait_until(lambda: "PredictionService/Predict" in observed.collector.trace(GRPC_TRACE_ID), timeout_s=15)


def test_probes_leave_no_access_record_and_no_span(observed: Observed) -> None:
    probe_trace = "7f0c63257de34c92bf9efcd03927272f"
    for path in ("/healthz", "/readyz", "/metrics"):
        response = observed.server.get(path, headers={"traceparent": f"00-{probe_trace}-3333333333333333-01"})
        assert response.status_code == 200 and "traceresponse" not in response.headers
    observed.server.post("/v1/models/binary:predict", json={"instances": [[0, 0, 0, 0]]})  # flushes after the probes
    wait_until(lambda: observed.access_records()[-1]["path"] == "/v1/models/binary:predict", timeout_s=10)
    assert not [r for r in observed.access_records() if r["path"] in ("/healthz", "/readyz", "/metrics")]
    assert observed.collector.trace(probe_trace) == {}

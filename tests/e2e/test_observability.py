"""Access log, tracing and payload logging end to end: real gunicorn, and docs/operations.md's worked example.

The receiver is `examples/telemetry_sink.py`, run as the document runs it: it decodes what the
OTLP/HTTP exporter POSTs to `/v1/traces` with `opentelemetry-proto`'s own messages and records the
CloudEvents PAYLOAD_LOG_URL receives, one JSON line each on its stdout. The server is configured only
through the environment, as an operator would: OTEL_TRACES_EXPORTER=otlp, OTEL_EXPORTER_OTLP_ENDPOINT,
PAYLOAD_LOG_URL, LOG_JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.conftest import REPO, wait_until
from tests.e2e.api_models import build_api_models
from tests.e2e.conftest import Server, free_port, start_server

TRACE_ID = "5b8efff798038103d269b633813fc60c"
GRPC_TRACE_ID = "6e0c63257de34c92bf9efcd03927272e"


class Receiver:
    """`python examples/telemetry_sink.py --port P`, its stdout in a file."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.output = folder / "telemetry.jsonl"
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "examples/telemetry_sink.py", "--port", str(self.port)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_until(lambda: self._up(), timeout_s=30)

    def _up(self) -> bool:
        try:
            return requests.post(f"http://127.0.0.1:{self.port}/ping", data=b"", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(10)

    def lines(self, kind: str) -> list[dict]:
        lines = (json.loads(line) for line in self.output.read_text().splitlines())
        return [line[kind] for line in lines if kind in line]

    def trace(self, trace_id: str) -> dict[str, dict]:
        return {span["name"]: span for span in self.lines("span") if span["trace_id"] == trace_id}

    def events(self, request_id: str) -> list[dict]:
        return [event for event in self.lines("event") if event.get("id") == request_id]


class Observed:
    def __init__(self, server: Server, receiver: Receiver, grpc_port: int) -> None:
        self.server, self.receiver, self.grpc_port = server, receiver, grpc_port

    def access_records(self) -> list[dict]:
        lines = (json.loads(line) for line in self.server.log().splitlines() if line.startswith("{"))
        return [line for line in lines if line["logger"] == "service.access"]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    built = build_api_models(tmp_path_factory.getbasetemp() / "api_models")
    models = tmp_path_factory.mktemp("observed_models")
    shutil.copyfile(built / "binary.keras", models / "binary.keras")
    logs = tmp_path_factory.mktemp("observed_logs")
    receiver = Receiver(logs)
    grpc_port = free_port()
    try:
        with start_server(
            models,
            logs,
            GRPC_PORT=str(grpc_port),
            LOG_JSON="true",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_SERVICE_NAME="kerasserve-e2e",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://localhost:{receiver.port}",
            OTEL_BSP_SCHEDULE_DELAY="100",
            PAYLOAD_LOG_URL=f"http://localhost:{receiver.port}/events",
        ) as server:
            yield Observed(server, receiver, grpc_port)
    finally:
        receiver.stop()


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

    wait_until(lambda: {"preprocess", "queue", "encode"} <= set(observed.receiver.trace(TRACE_ID)), timeout_s=15)
    spans = observed.receiver.trace(TRACE_ID)
    [server_span] = [s for s in spans.values() if s["parent_span_id"] == "1111111111111111"]
    assert server_span["name"] == "POST /v1/models/<path:path>"
    assert server_span["attributes"]["http.status_code"] == 200
    assert {span["service"] for span in observed.receiver.lines("span")} == {"kerasserve-e2e"}
    [batch] = [
        s for s in observed.receiver.lines("span") if s["name"] == "batch" and s["links"][0]["trace_id"] == TRACE_ID
    ]
    assert batch["links"] == [{"trace_id": TRACE_ID, "span_id": server_span["span_id"]}]
    assert spans["queue"]["links"] == [{"trace_id": batch["trace_id"], "span_id": batch["span_id"]}]

    wait_until(lambda: len(observed.receiver.events("e2e-1")) == 2, timeout_s=10)
    request_event, response_event = observed.receiver.events("e2e-1")
    assert (request_event["type"], response_event["type"]) == (
        "org.kubeflow.serving.inference.request",
        "org.kubeflow.serving.inference.response",
    )
    assert request_event["inferenceservicename"] == "binary" and request_event["specversion"] == "1.0"
    assert json.loads(request_event["data"]) == body
    assert json.loads(response_event["data"]) == response.json()


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
    wait_until(lambda: "PredictionService/Predict" in observed.receiver.trace(GRPC_TRACE_ID), timeout_s=15)


def test_probes_leave_no_access_record_and_no_span(observed: Observed) -> None:
    probe_trace = "7f0c63257de34c92bf9efcd03927272f"
    for path in ("/healthz", "/readyz", "/metrics"):
        response = observed.server.get(path, headers={"traceparent": f"00-{probe_trace}-3333333333333333-01"})
        assert response.status_code == 200 and "traceresponse" not in response.headers
    observed.server.post("/v1/models/binary:predict", json={"instances": [[0, 0, 0, 0]]})  # flushes after the probes
    wait_until(lambda: observed.access_records()[-1]["path"] == "/v1/models/binary:predict", timeout_s=10)
    assert not [r for r in observed.access_records() if r["path"] in ("/healthz", "/readyz", "/metrics")]
    assert observed.receiver.trace(probe_trace) == {}

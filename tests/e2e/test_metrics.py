"""GET /metrics end to end: parsed with prometheus-client's parser, summed over two gunicorn workers."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.conftest import wait_until
from tests.e2e.api_models import binary_scores, build_api_models
from tests.e2e.conftest import Server, free_port, start_server

REQUESTS = 12
GRPC_PORT = free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    built = build_api_models(tmp_path_factory.getbasetemp() / "api_models")
    models = tmp_path_factory.mktemp("metrics_models")
    shutil.copyfile(built / "binary.keras", models / "binary.keras")
    with start_server(
        models, tmp_path_factory.mktemp("metrics_logs"), WORKERS="2", GRPC_PORT=str(GRPC_PORT)
    ) as running:
        # The server counts as up once one worker is ready; wait for the other too (the livesum
        # gauge adds the workers' AVAILABLE versions up), so no request meets a loading worker.
        wait_until(
            lambda: value(samples(running), "kerasserve_model_versions_available", model="binary") == 2, timeout_s=90
        )
        yield running


def samples(server: Server) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics: (sample name, labels) -> value."""
    response = server.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(all_samples: dict, name: str, **labels: str) -> float:
    return all_samples.get((name, frozenset(labels.items())), 0.0)


def test_request_and_batch_metrics_move(server: Server) -> None:
    before = samples(server)
    for _ in range(REQUESTS):
        response = server.post("/models/binary/predict", json={"instances": [[1, 2, 3, 4], [0, 0, 0, 0]]})
        assert response.status_code == 200
    assert server.post("/models/nope/predict", json={"instances": [[1]]}).status_code == 404
    after = samples(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Requests are counted by route, model and status, over both workers.
    assert (
        moved("kerasserve_requests_total", protocol="rest", route="predict.predict", model="binary", code="200")
        == REQUESTS
    )
    assert (
        moved("kerasserve_requests_total", protocol="rest", route="predict.predict", model="_unknown", code="404") == 1
    )
    assert (
        moved("kerasserve_request_duration_seconds_count", protocol="rest", route="predict.predict", model="binary")
        == REQUESTS
    )
    assert (
        moved("kerasserve_request_duration_seconds_sum", protocol="rest", route="predict.predict", model="binary") > 0
    )
    # Every request became (part of) a device call of 2 rows or more.
    batches = moved("kerasserve_batches_total", model="binary")
    assert 1 <= batches <= REQUESTS
    assert moved("kerasserve_batch_rows_count", model="binary") == batches
    assert moved("kerasserve_batch_rows_sum", model="binary") == 2 * REQUESTS
    assert moved("kerasserve_batch_queue_seconds_count", model="binary") == REQUESTS
    assert moved("kerasserve_batch_compute_seconds_count", model="binary") == batches


def test_grpc_calls_are_counted_with_protocol_grpc_and_rest_calls_with_protocol_rest(server: Server) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "binary"
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(np.array([[1, 2, 3, 4]], dtype=np.float32)))
    unknown = predict_pb2.PredictRequest()
    unknown.CopyFrom(request)
    unknown.model_spec.name = "madeup-grpc"
    before = samples(server)
    with grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(3):
            stub.Predict(request, timeout=30)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(unknown, timeout=30)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert server.post("/models/binary/predict", json={"instances": [[1, 2, 3, 4]]}).status_code == 200
    after = samples(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "PredictionService/Predict"
    assert moved("kerasserve_requests_total", protocol="grpc", route=route, model="binary", code="OK") == 3
    assert moved("kerasserve_requests_total", protocol="grpc", route=route, model="_unknown", code="NOT_FOUND") == 1
    assert moved("kerasserve_request_duration_seconds_count", protocol="grpc", route=route, model="binary") == 3
    assert moved("kerasserve_requests_total", protocol="rest", route="predict.predict", model="binary", code="200") == 1
    assert moved("kerasserve_requests_total", protocol="grpc", route="predict.predict", model="binary", code="200") == 0
    assert not any("madeup-grpc" in dict(labels).values() for _, labels in after)


def test_made_up_model_names_never_become_label_values(server: Server) -> None:
    names = [f"madeup{n}" for n in range(20)]
    for name in names:
        assert (
            server.post(f"/models/{name}/predict", data=b"1,2", headers={"Content-Type": "text/csv"}).status_code == 415
        )
        assert (
            server.post(
                f"/v1/models/{name}:predict", data=b"{", headers={"Content-Type": "application/json"}
            ).status_code
            == 400
        )
        assert server.post(f"/v2/models/{name}/infer", json={"inputs": []}).status_code == 400
        assert server.get(f"/v2/models/{name}").status_code == 404
    assert server.get("/v1/models/%2e%2e").status_code == 400
    current = samples(server)
    labels = {dict(labels).get("model") for _, labels in current}
    assert [name for name in names if name in labels] == []
    assert value(
        current, "kerasserve_requests_total", protocol="rest", route="predict.predict", model="_unknown", code="415"
    ) >= len(names)


def test_model_gauges_and_load_times_are_exported(server: Server) -> None:
    current = samples(server)
    assert value(current, "kerasserve_model_versions_available", model="binary") == 2  # one per worker
    assert value(current, "kerasserve_model_load_seconds_count", model="binary") == 2
    # The failure-isolation counters are exported from the load on (0 while nothing failed), so
    # alerts on them work before the first failure.
    for name in (
        "kerasserve_batch_retries_total",
        "kerasserve_batch_isolated_failures_total",
        "kerasserve_batcher_restarts_total",
    ):
        assert (name, frozenset({"model": "binary"}.items())) in current, name
        assert value(current, name, model="binary") == 0


def test_concurrent_requests_are_batched_into_fewer_model_calls_with_their_own_rows(tmp_path_factory) -> None:
    # One worker, a 50 ms window: 24 requests sent at once must share calls, read from /metrics.
    built = build_api_models(tmp_path_factory.getbasetemp() / "api_models")
    models = tmp_path_factory.mktemp("batched_models")
    shutil.copyfile(built / "binary.keras", models / "binary.keras")
    inputs = [[0.1 * i, 0.05 * (i % 3), -0.07 * i, 0.02 * i] for i in range(24)]  # no saturated sigmoid
    with start_server(models, tmp_path_factory.mktemp("batched_logs"), WORKERS="1", BATCH_TIMEOUT_MS="50") as server:

        def predict(row: list[float]) -> list:
            response = server.post("/models/binary/predict", json={"instances": [row]})
            assert response.status_code == 200, response.text
            return response.json()["predictions"][0]

        alone = [predict(row) for row in inputs]  # one at a time: one call each
        before = samples(server)
        barrier = threading.Barrier(len(inputs))

        def concurrent(row: list[float]) -> list:
            barrier.wait()
            return predict(row)

        with ThreadPoolExecutor(len(inputs)) as pool:
            together = list(pool.map(concurrent, inputs))
        after = samples(server)

    calls = value(after, "kerasserve_batches_total", model="binary") - value(
        before, "kerasserve_batches_total", model="binary"
    )
    rows = value(after, "kerasserve_batch_rows_sum", model="binary") - value(
        before, "kerasserve_batch_rows_sum", model="binary"
    )
    assert rows == len(inputs)
    assert 1 <= calls <= len(inputs) / 2, f"{len(inputs)} concurrent requests made {calls} model calls"
    assert len({json.dumps(a) for a in alone}) == len(inputs)  # distinct inputs, distinct outputs
    np.testing.assert_allclose(np.array(together, dtype=np.float64), np.array(alone, dtype=np.float64), atol=1e-5)
    np.testing.assert_allclose(np.array(alone, dtype=np.float64), binary_scores(np.array(inputs)), atol=1e-5)

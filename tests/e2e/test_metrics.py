"""GET /metrics end to end: parsed with prometheus-client's parser, summed over two gunicorn workers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until
from tests.e2e.api_models import build_api_models
from tests.e2e.conftest import Server, start_server

REQUESTS = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    built = build_api_models(tmp_path_factory.getbasetemp() / "api_models")
    models = tmp_path_factory.mktemp("metrics_models")
    shutil.copyfile(built / "binary.keras", models / "binary.keras")
    with start_server(models, tmp_path_factory.mktemp("metrics_logs"), WORKERS="2") as running:
        # The server counts as up once one worker is ready; wait for the other too (the livesum
        # gauge adds the workers' AVAILABLE versions up), so no request meets a loading worker.
        wait_until(lambda: value(samples(running), "kerasserve_model_versions_available", model="binary") == 2, timeout_s=90)
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
    assert moved("kerasserve_requests_total", route="predict.predict", model="binary", code="200") == REQUESTS
    assert moved("kerasserve_requests_total", route="predict.predict", model="", code="404") == 1
    assert moved("kerasserve_request_duration_seconds_count", route="predict.predict", model="binary") == REQUESTS
    assert moved("kerasserve_request_duration_seconds_sum", route="predict.predict", model="binary") > 0
    # Every request became (part of) a device call of 2 rows or more.
    batches = moved("kerasserve_batches_total", model="binary")
    assert 1 <= batches <= REQUESTS
    assert moved("kerasserve_batch_rows_count", model="binary") == batches
    assert moved("kerasserve_batch_rows_sum", model="binary") == 2 * REQUESTS
    assert moved("kerasserve_batch_queue_seconds_count", model="binary") == REQUESTS
    assert moved("kerasserve_batch_compute_seconds_count", model="binary") == batches


def test_model_gauges_and_load_times_are_exported(server: Server) -> None:
    current = samples(server)
    assert value(current, "kerasserve_model_versions_available", model="binary") == 2  # one per worker
    assert value(current, "kerasserve_model_load_seconds_count", model="binary") == 2

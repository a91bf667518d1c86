"""Failure isolation over HTTP: one bad request in a batch, and a batch thread that keeps dying.

`create_app` wires the real repository, watcher, manager, data plane, adapters, error table and
metrics; the servables come from `tests.unit.fakes.FakeBuilder` (numpy functions behind real
batchers). The same isolation with a real Keras Embedding model and the real runner is in
`tests/unit/test_batching.py`; here it is what clients, `/readyz` and `/metrics` see.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from service.api import EXTENSION
from service.app import create_app
from service.errors import InvalidInput
from service.servable import Arrays
from service.settings import Settings
from tests.conftest import wait_until
from tests.unit.fakes import DOUBLE, FakeBuilder, FakeModel

ROWS_PER_BATCH = 5


def _lookup(inputs: Arrays) -> dict[str, np.ndarray]:
    """An embedding-like model over indices 0..9: refuses the others as the runner refuses TensorFlow's
    out-of-range index (InvalidInput naming the index, within the rows it was given)."""
    x = np.asarray(inputs["x"], np.float32)
    bad = np.argwhere((x < 0) | (x > 9))
    if len(bad):
        row, column = bad[0]
        raise InvalidInput(
            f"the model rejected the input: indices[{row},{column}] = {x[row, column]:g} is not in [0, 10)"
        )
    return {"y": x * 10}


def _hungry(inputs: Arrays) -> dict[str, np.ndarray]:
    """y = 2 x, except that rows holding -1 really run out of memory (numpy cannot allocate 4 EiB)."""
    x = np.asarray(inputs["x"], np.float32)
    if np.any(x == -1):
        np.zeros(2**62, dtype=np.uint8)
    return {"y": x * 2}


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def make(batch_timeout_ms: float) -> Flask:
        models_dir = tmp_path / "models"
        models_dir.mkdir()
        models = {
            "lookup": FakeModel(DOUBLE.signature, _lookup),
            "hungry": FakeModel(DOUBLE.signature, _hungry),
            "double": DOUBLE,
        }
        for name in models:
            (models_dir / f"{name}.h5").write_text("a fake model file")
        settings = Settings(
            models_dir=models_dir,
            settle_s=0,
            poll_interval_s=60,
            max_batch_size=ROWS_PER_BATCH,
            batch_timeout_ms=batch_timeout_ms,
        )
        app = create_app(settings, builder=FakeBuilder(models, settings))
        apps.append(app)
        client = app.test_client()
        wait_until(lambda: client.get("/readyz").status_code == 200, timeout_s=10)
        return app

    yield make
    for app in apps:
        app.extensions[EXTENSION].stop()


def metric(app: Flask, name: str, model: str) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("model") == model:
                return sample.value
    return 0.0


def test_only_the_request_with_a_bad_index_fails_and_its_batch_mates_are_answered(make_app) -> None:
    # A batch runs once it holds ROWS_PER_BATCH rows; the long timeout only matters on a busy machine.
    app = make_app(batch_timeout_ms=3000)
    retries = metric(app, "kerasserve_batch_retries_total", "lookup")
    isolated = metric(app, "kerasserve_batch_isolated_failures_total", "lookup")
    bodies = [[[1, 2]], [[3, 4], [5, 6]], [[7, 12]], [[8, 9]]]  # 5 rows: one batch; the third holds 12
    barrier = threading.Barrier(len(bodies))

    def client(instances: list) -> tuple[int, dict]:
        barrier.wait()
        response = app.test_client().post("/models/lookup/predict", json={"instances": instances})
        return response.status_code, response.get_json()

    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(client, bodies))

    assert answers[2] == (400, {"error": "the model rejected the input: indices[0,1] = 12 is not in [0, 10)"})
    for (status, body), instances in zip(answers[:2] + answers[3:], bodies[:2] + bodies[3:]):
        assert status == 200, body
        assert body["predictions"] == (np.array(instances) * 10).tolist()
    # They did share a batch: it failed once, and one request failed again alone.
    assert metric(app, "kerasserve_batch_retries_total", "lookup") == retries + 1
    assert metric(app, "kerasserve_batch_isolated_failures_total", "lookup") == isolated + 1


def test_a_batch_thread_that_dies_is_restarted_then_reported_not_ready_when_it_keeps_dying(make_app) -> None:
    app = make_app(batch_timeout_ms=0)
    client = app.test_client()
    restarts = metric(app, "kerasserve_batcher_restarts_total", "hungry")

    response = client.post("/models/hungry/predict", json={"instances": [[-1, 0]]})
    assert response.status_code == 500
    assert response.get_json() == {"error": "model 'hungry' failed while computing (MemoryError); retry later"}
    # Restarted: the model keeps serving and stays ready; the death is counted.
    response = client.post("/models/hungry/predict", json={"instances": [[1, 2]]})
    assert response.status_code == 200 and response.get_json()["predictions"] == [[2.0, 4.0]]
    assert client.get("/readyz").status_code == 200
    assert metric(app, "kerasserve_batcher_restarts_total", "hungry") == restarts + 1

    # Three more deaths within the minute (MAX_RESTARTS = 3 are restarted): the batcher gives up.
    for _ in range(3):
        assert client.post("/models/hungry/predict", json={"instances": [[-1, 0]]}).status_code == 500
    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.get_json()
    assert body["models"] == {"double": True, "hungry": False, "lookup": True}
    assert (
        "hungry:1: the batch thread of hungry:1 stopped: it died 4 times within 60s (last: MemoryError)"
        in body["error"]
    )
    response = client.post("/models/hungry/predict", json={"instances": [[1, 2]]})
    assert response.status_code == 503 and "stopped serving" in response.get_json()["error"]
    assert metric(app, "kerasserve_batcher_restarts_total", "hungry") == restarts + 4
    # The other models keep serving.
    assert client.post("/models/double/predict", json={"instances": [[1, 2]]}).get_json()["predictions"] == [[2.0, 4.0]]

"""Triton's model control end to end: MODEL_CONTROL=explicit on a real gunicorn with two workers, driven
by `tritonclient`'s own model-control calls (`load_model`, `unload_model`, `get_model_repository_index`).

A load or unload call reaches one worker; the test checks that the answering worker serves the
model when `load` returns, and that the other worker converges (it reads the shared decisions file
on inotify's event or its next poll) so that every connection, whichever worker takes it, answers.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest
import requests

from tests.conftest import wait_until
from tests.e2e.conftest import Server, start_server, worker_pids
from tests.e2e.figures import record
from tests.e2e.scaled_models import save_scaled_model

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402 - after the importorskip

CONNECTIONS = 12
"""Fresh connections per check: the workers share them out, so both are asked (service/worker.py)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = tmp_path_factory.mktemp("control_models")
    for factor, name in ((1.0, "one"), (2.0, "two"), (3.0, "three")):
        save_scaled_model(models / f"{name}.keras", factor)
    with start_server(
        models,
        tmp_path_factory.mktemp("control_logs"),
        WORKERS="2",
        MODEL_CONTROL="explicit",
        STARTUP_MODELS="one",
        # No poll within the module's few minutes: every convergence below comes from inotify's event for
        # the decisions file (a test taking the poll's path would time out).
        POLL_INTERVAL_S="600",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server):
    triton = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield triton
    triton.close()


def answers(server: Server, name: str) -> list[object]:
    """Ask `name` for 2 * factor on CONNECTIONS fresh connections: the answers, or the status codes of failures."""
    results: list[object] = []
    for _ in range(CONNECTIONS):
        with requests.Session() as session:
            response = session.post(f"{server.url}/v1/models/{name}:predict", json={"instances": [[2.0]]}, timeout=30)
        results.append(response.json()["predictions"][0][0] if response.status_code == 200 else response.status_code)
    return results


def infer(client, name: str) -> float:
    inputs = [httpclient.InferInput("x", [1, 1], "FP32")]
    inputs[0].set_data_from_numpy(np.array([[2.0]], np.float32))
    return float(client.infer(name, inputs).as_numpy("y")[0, 0])


def test_only_the_startup_models_serve_and_the_index_lists_every_model(client, server: Server) -> None:
    assert client.get_model_repository_index() == [
        {"name": "one", "version": "1", "state": "READY", "reason": ""},
        {"name": "three"},
        {"name": "two"},
    ]
    assert answers(server, "one") == [2.0] * CONNECTIONS
    assert answers(server, "two") == [404] * CONNECTIONS


def test_load_serves_at_once_in_the_answering_worker_and_soon_in_every_worker(client, server: Server) -> None:
    started = time.monotonic()
    client.load_model("two")
    loaded_s = time.monotonic() - started
    # Same connection (keep-alive): the worker that answered the load serves the model already.
    assert infer(client, "two") == 4.0
    wait_until(lambda: answers(server, "two") == [4.0] * CONNECTIONS, timeout_s=30)
    converged_s = time.monotonic() - started
    assert {"name": "two", "version": "1", "state": "READY", "reason": ""} in client.get_model_repository_index()
    assert client.get_model_repository_index(query_params=None) == client.get_model_repository_index()
    record("model_control_load_two_workers", load_answered_s=round(loaded_s, 3), all_workers_s=round(converged_s, 3))


def test_unload_stops_the_model_in_every_worker(client, server: Server) -> None:
    client.load_model("three")
    wait_until(lambda: answers(server, "three") == [6.0] * CONNECTIONS, timeout_s=30)
    client.unload_model("three")
    with pytest.raises(InferenceServerException, match=r"model .three. is not loaded \(MODEL_CONTROL=explicit\)"):
        infer(client, "three")
    wait_until(lambda: answers(server, "three") == [404] * CONNECTIONS, timeout_s=30)
    assert {"name": "three", "state": "UNAVAILABLE", "reason": "unloaded"} in client.get_model_repository_index()
    assert answers(server, "one") == [2.0] * CONNECTIONS  # the others keep serving


def test_load_of_a_model_not_in_the_folder_fails_with_tritons_message(client) -> None:
    with pytest.raises(InferenceServerException, match="failed to load 'nope', failed to poll from model repository"):
        client.load_model("nope")


def test_a_recycled_worker_serves_what_the_others_serve(client, server: Server) -> None:
    client.load_model("two")
    wait_until(lambda: answers(server, "two") == [4.0] * CONNECTIONS, timeout_s=30)
    workers = worker_pids(server.process.pid)
    os.kill(workers[0], signal.SIGTERM)  # gunicorn forks a fresh worker, which reads the same decisions
    wait_until(lambda: len(set(worker_pids(server.process.pid)) - set(workers)) == 1, timeout_s=60)
    wait_until(lambda: server.get("/readyz").status_code == 200, timeout_s=120)
    assert answers(server, "two") == [4.0] * CONNECTIONS
    assert answers(server, "three") == [404] * CONNECTIONS

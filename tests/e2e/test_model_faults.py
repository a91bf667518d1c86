"""Faults in the models folder, against one real gunicorn: each fails only what it touches.

A Lambda whose bytecode crashes the interpreter, plugins with a syntax error or an exception at
import, a file replaced under traffic, a file deleted while it loads, and a request with an
out-of-range Embedding index in a shared batch: the worker never dies, the broken versions are
FAILED with their reason, the bad request alone fails, and every other model keeps answering.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import wait_until
from tests.e2e.conftest import Server, start_server
from tests.e2e.figures import record
from tests.e2e.scaled_models import copy_then_mv, save_scaled_model
from tests.fault_models import SCALE_PLUGIN, build_fault_models

ROW = [[1.0, 2.0, 3.0, 4.0]]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    files = build_fault_models(tmp_path_factory.mktemp("fault_files"))
    scaled = tmp_path_factory.mktemp("fault_scaled")
    save_scaled_model(scaled / "times1.keras", 1.0)
    save_scaled_model(scaled / "times2.keras", 2.0)
    models = tmp_path_factory.mktemp("fault_models")
    shutil.copyfile(files / "plain.keras", models / "plain.keras")
    shutil.copyfile(files / "lambda_crash.keras", models / "crash.keras")
    shutil.copyfile(files / "lambda_ok.keras", models / "lam.keras")
    shutil.copyfile(files / "custom.keras", models / "custom.keras")
    shutil.copyfile(files / "embedding.keras", models / "embedding.keras")
    # A batch runs as soon as it holds 5 rows; the long window only matters on a busy machine.
    (models / "embedding.yaml").write_text("batching:\n  max_batch_size: 5\n  batch_timeout_ms: 3000\n")
    shutil.copyfile(scaled / "times1.keras", models / "swap.keras")
    (models / "plugins").mkdir()
    (models / "plugins" / "layers.py").write_text(SCALE_PLUGIN.replace("def call(self, x):", "def call(self, x:"))
    (models / "plugins" / "boom.py").write_text("raise RuntimeError('boom while importing')\n")
    return {"files": files, "scaled": scaled, "models": models, "staging": tmp_path_factory.mktemp("fault_staging")}


@pytest.fixture(scope="module")
def server(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with start_server(
        folders["models"], tmp_path_factory.mktemp("fault_logs"), SETTLE_S="0.3", POLL_INTERVAL_S="0.3"
    ) as running:
        yield running


def version(server: Server, name: str, number: int = 1) -> dict:
    response = server.get(f"/models/{name}")
    assert response.status_code == 200, response.text
    return next(v for v in response.json()["versions"] if v["version"] == number)


def predict(server: Server, name: str, rows: list) -> requests.Response:
    return server.post(f"/models/{name}/predict", json={"instances": rows})


def assert_worker_never_died(server: Server) -> None:
    log = server.log()
    assert log.count("Booting worker") == 1, log[-3000:]
    assert "SIGSEGV" not in log.replace("signal 11 (SIGSEGV)", ""), log[-3000:]


def test_lambda_that_crashes_the_interpreter_fails_only_its_version(server: Server) -> None:
    entry = version(server, "crash")
    assert entry["state"] == "FAILED"
    assert "crashed with signal 11 (SIGSEGV) while loading" in entry["error"]
    assert "'plus_one'" in entry["error"] and "/tmp" not in entry["error"]
    response = predict(server, "crash", ROW)
    assert response.status_code == 503 and "signal 11" in response.json()["error"]
    assert predict(server, "plain", ROW).json()["predictions"] == [[10.0, 10.0]]
    assert_worker_never_died(server)


def test_lambda_that_loads_is_served_after_the_probe(server: Server) -> None:
    assert version(server, "lam")["state"] == "AVAILABLE"
    assert predict(server, "lam", ROW).json()["predictions"] == [[2.0, 3.0, 4.0, 5.0]]


def test_broken_plugins_fail_only_their_models_and_a_fixed_plugin_brings_them_back(
    server: Server, folders: dict[str, Path]
) -> None:
    entry = version(server, "custom")
    assert entry["state"] == "FAILED"
    assert "'Scale'" in entry["error"], entry["error"]
    assert "layers.py: SyntaxError" in entry["error"], entry["error"]
    assert "boom.py: RuntimeError: boom while importing" in entry["error"], entry["error"]
    assert predict(server, "plain", ROW).status_code == 200

    (folders["models"] / "plugins" / "layers.py").write_text(SCALE_PLUGIN)
    wait_until(lambda: version(server, "custom")["state"] == "AVAILABLE", timeout_s=60, interval_s=0.2)
    assert predict(server, "custom", ROW).json()["predictions"] == [[3.0, 6.0, 9.0, 12.0]]
    assert_worker_never_died(server)


def test_file_replaced_while_requests_use_it(server: Server, folders: dict[str, Path]) -> None:
    answers: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                response = session.post(f"{server.url}/models/swap/predict", json={"instances": [[1.0]]}, timeout=30)
                if response.status_code == 200:
                    answers.append(response.json()["predictions"][0][0])
                else:
                    failures.append(f"{response.status_code} {response.text}")

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(4):
            factor = 2 if round_ % 2 == 0 else 1
            copy_then_mv(
                folders["scaled"] / f"times{factor}.keras", folders["models"] / "swap.keras", folders["staging"]
            )
            seen = len(answers)
            wait_until(lambda: float(factor) in answers[seen:], timeout_s=30, interval_s=0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    record("model_faults.replace_under_traffic", requests=len(answers) + len(failures), failed=len(failures), swaps=4)
    assert not failures, failures[:5]
    assert set(answers) == {1.0, 2.0}


def test_file_deleted_while_it_loads(server: Server, folders: dict[str, Path]) -> None:
    # A Lambda file stays LOADING for seconds (its probe subprocess starts TensorFlow): delete it then.
    copy_then_mv(folders["files"] / "lambda_ok.keras", folders["models"] / "doomed.keras", folders["staging"])

    def loading() -> bool:
        response = server.get("/models/doomed")
        return response.status_code == 200 and response.json()["versions"][0]["state"] == "LOADING"

    wait_until(loading, timeout_s=30, interval_s=0.05)
    (folders["models"] / "doomed.keras").unlink()
    # The manager forgets the model only once the abandoned load has ended.
    wait_until(lambda: server.get("/models/doomed").status_code == 404, timeout_s=60, interval_s=0.2)
    assert predict(server, "plain", ROW).status_code == 200
    assert predict(server, "lam", ROW).status_code == 200
    assert_worker_never_died(server)


def metric(server: Server, name: str, model: str) -> float:
    for line in server.get("/metrics").text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}} '):
            return float(line.split()[-1])
    return 0.0


def test_an_out_of_range_embedding_index_fails_only_its_request_in_a_shared_batch(server: Server) -> None:
    retries = metric(server, "kerasserve_batch_retries_total", "embedding")
    isolated = metric(server, "kerasserve_batch_isolated_failures_total", "embedding")
    bodies = [[[0, 1, 2]], [[4, 3, 2], [1, 1, 1]], [[1, 7, 3]], [[2, 2, 0]]]  # 5 rows; index 7 is out of range
    barrier = threading.Barrier(len(bodies))

    def client(instances: list) -> requests.Response:
        barrier.wait()
        return predict(server, "embedding", instances)

    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(client, bodies))

    assert responses[2].status_code == 400, responses[2].text
    assert responses[2].json() == {"error": "the model rejected the input: indices[0,1] = 7 is not in [0, 5)"}
    for response, instances in zip(responses[:2] + responses[3:], bodies[:2] + bodies[3:]):
        assert response.status_code == 200, response.text
        # Index i embeds as (2i, 2i + 1); Flatten puts the three pairs side by side.
        assert response.json()["predictions"] == [
            [float(v) for i in row for v in (2 * i, 2 * i + 1)] for row in instances
        ]
    # The four shared one call, which failed; each then ran alone and only the bad one failed again.
    assert metric(server, "kerasserve_batch_retries_total", "embedding") == retries + 1
    assert metric(server, "kerasserve_batch_isolated_failures_total", "embedding") == isolated + 1
    record("model_faults.bad_row_in_batch", requests=len(bodies), failed=sum(r.status_code != 200 for r in responses))
    assert_worker_never_died(server)


def test_a_file_that_crashes_a_worker_is_quarantined_by_hash_not_loaded_in_a_loop(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    # Without the probe the worker itself runs the crashing Lambda and dies (SIGSEGV). gunicorn starts a
    # new worker; it finds the marker the dead one left for that content, so it refuses the file (FAILED,
    # with the reason) instead of dying too, over and over. The file's content hash is the key: a changed
    # file is tried again.
    models = tmp_path / "models"
    models.mkdir()
    shutil.copyfile(folders["files"] / "plain.keras", models / "plain.keras")
    shutil.copyfile(folders["files"] / "lambda_crash.keras", models / "crash.keras")
    with start_server(models, tmp_path, ready=False, LAMBDA_PROBE="false", SETTLE_S="0.3") as server:
        wait_until(lambda: server.log().count("Booting worker") >= 2, timeout_s=240)

        def crash_failed() -> bool:
            try:
                return version(server, "crash")["state"] == "FAILED"
            except (requests.RequestException, AssertionError, StopIteration):
                return False

        wait_until(crash_failed, timeout_s=240)
        entry = version(server, "crash")
        assert "a worker died" in entry["error"] and "remembered by content hash" in entry["error"], entry
        wait_until(lambda: predict(server, "plain", ROW).status_code == 200, timeout_s=120)  # the new worker serves
        assert server.log().count("Booting worker") == 2, server.log()[-3000:]  # one crash, no loop
        assert len(list(tmp_path.glob("state-*/*.failed.json"))) == 1  # remembered in STATE_DIR, by hash

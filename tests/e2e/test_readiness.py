"""Readiness and liveness against the real gunicorn server.

/healthz answers at once and never depends on models; /readyz answers 503 until the models present at
start-up are AVAILABLE or FAILED, then 200, and a swap in progress never flips it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import wait_until
from tests.e2e.scaled_models import copy_then_mv, save_scaled_model


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("scaled")
    return {k: save_scaled_model(folder / f"times{k}.keras", float(k)) for k in (1, 2)}


def test_not_ready_until_start_up_models_load_while_alive_all_along(
    run_server, tmp_path: Path, scaled: dict[int, Path]
) -> None:
    models = tmp_path / "models"
    copy_then_mv(scaled[1], models / "m.keras", tmp_path / "staging")
    # A file whose mtime lies ahead counts as still being written: it must stay unchanged for
    # SETTLE_S first, which keeps the start-up load (and readiness) waiting observably long.
    ahead = time.time() + 3600
    os.utime(models / "m.keras", (ahead, ahead))
    with run_server(models, ready=False, SETTLE_S="4", POLL_INTERVAL_S="0.3") as server:
        assert server.get("/healthz").status_code == 200
        not_ready = server.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["ready"] is False and "m" in not_ready.json()["error"]
        assert not_ready.json()["models"] == {"m": False}
        assert server.post("/models/m/predict", json={"instances": [[1.0]]}).status_code == 503

        wait_until(lambda: server.get("/readyz").status_code == 200, timeout_s=60, interval_s=0.1)
        assert server.get("/readyz").json() == {"ready": True, "models": {"m": True}}
        assert "start-up loading done" in server.log()


def test_ready_despite_a_failed_start_up_model_and_stays_200_through_a_swap_and_a_failed_version(
    run_server, tmp_path: Path, scaled: dict[int, Path]
) -> None:
    models = tmp_path / "models"
    staging = tmp_path / "staging"
    copy_then_mv(scaled[1], models / "m" / "1" / "model.keras", staging)
    (models / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    old = time.time() - 60
    os.utime(models / "broken.h5", (old, old))
    with run_server(models, SETTLE_S="0.3", POLL_INTERVAL_S="0.3") as server:
        # A model that only ever failed does not hold readiness back; its status says why.
        assert server.get("/readyz").json() == {"ready": True, "models": {"broken": False, "m": True}}
        (version,) = server.get("/models/broken").json()["versions"]
        assert version["state"] == "FAILED" and version["error"]
        assert server.post("/models/broken/predict", json={"instances": [[1.0]]}).status_code == 503

        codes: list[int] = []
        stop = threading.Event()

        def probe() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    codes.append(session.get(server.url + "/readyz", timeout=10).status_code)

        thread = threading.Thread(target=probe)
        thread.start()
        try:
            copy_then_mv(scaled[2], models / "m" / "2" / "model.keras", staging)
            wait_until(
                lambda: server.post("/models/m/predict", json={"instances": [[1.0]]}).json()["version"] == 2,
                timeout_s=30,
            )
            broken = tmp_path / "broken.keras"
            broken.write_bytes(b"PK\x03\x04 not really a zip")
            copy_then_mv(broken, models / "m" / "3" / "model.keras", staging)
            wait_until(
                lambda: any(v["state"] == "FAILED" for v in server.get("/models/m").json()["versions"]), timeout_s=30
            )
        finally:
            stop.set()
            thread.join()
        assert len(codes) > 10 and set(codes) == {200}
        assert server.post("/models/m/predict", json={"instances": [[1.0]]}).json()["version"] == 2


def test_ready_only_when_every_worker_is_ready(run_server, tmp_path: Path, scaled: dict[int, Path]) -> None:
    # Two workers load the same model on their own; the first /readyz 200 must mean both can answer.
    models = tmp_path / "models"
    copy_then_mv(scaled[2], models / "m.keras", tmp_path / "staging")
    with run_server(models, ready=False, WORKERS="2") as server:
        wait_until(lambda: server.get("/readyz", timeout=5).status_code == 200, timeout_s=180, interval_s=0.05)
        # New connections, spread over both workers by the balancing worker class.
        statuses = [server.post("/models/m/predict", json={"instances": [[1.0]]}).status_code for _ in range(30)]
        assert statuses == [200] * 30, statuses
        body = server.get("/readyz").json()
        assert body == {"ready": True, "models": {"m": True}}

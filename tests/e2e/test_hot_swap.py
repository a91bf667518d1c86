"""Hot swap against the real gunicorn server: versions land, swap, fail, arrive slowly and leave.

One server walks through the life of a model (the steps build on each other, and one server start
costs seconds): an empty models/ gets v1, v2 lands under continuous traffic, a truncated v3 fails,
a slowly copied v4 is not loaded half-written, and the deleted model answers 404.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import wait_until
from tests.e2e.scaled_models import copy_slowly, copy_then_mv, save_scaled_model

SETTLE_S = 0.5
POLL_INTERVAL_S = 0.3


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """`y = k * x` models for k = 1..4, saved once for the module."""
    folder = tmp_path_factory.mktemp("scaled")
    return {k: save_scaled_model(folder / f"times{k}.keras", float(k)) for k in (1, 2, 3, 4)}


def predict(url: str, session: requests.Session | None = None, x: float = 1.0) -> requests.Response:
    return (session or requests).post(f"{url}/models/m/predict", json={"instances": [[x]]}, timeout=30)


def version_entry(server, version: int) -> dict | None:
    response = server.get("/models/m")
    if response.status_code != 200:
        return None
    return next((v for v in response.json()["versions"] if v["version"] == version), None)


def test_versions_land_swap_fail_arrive_slowly_and_leave(run_server, tmp_path: Path, scaled: dict[int, Path]) -> None:
    models = tmp_path / "models"
    models.mkdir()
    staging = tmp_path / "staging"
    with run_server(models, SETTLE_S=str(SETTLE_S), POLL_INTERVAL_S=str(POLL_INTERVAL_S)) as server:
        # 1. An empty models/ is ready (nothing to wait for); a dropped v1 is served within settle + load.
        assert server.get("/readyz").status_code == 200
        assert predict(server.url).status_code == 404
        dropped = time.monotonic()
        copy_then_mv(scaled[1], models / "m" / "1" / "model.keras", staging)
        wait_until(lambda: predict(server.url).status_code == 200, timeout_s=30, interval_s=0.05)
        assert time.monotonic() - dropped < SETTLE_S + POLL_INTERVAL_S + 10
        assert predict(server.url).json() == {"model": "m", "version": 1, "predictions": [[1.0]]}

        # 2. v2 lands while a client sends requests continuously: no failure, answers switch 1 -> 2.
        answers: list[tuple[int, float]] = []
        failures: list[str] = []
        stop = threading.Event()

        def client() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    try:
                        response = predict(server.url, session)
                    except requests.RequestException as err:
                        failures.append(repr(err))
                        continue
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text}")
                        continue
                    body = response.json()
                    answers.append((body["version"], body["predictions"][0][0]))

        threads = [threading.Thread(target=client) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(answers) >= 20, timeout_s=30)
            copy_then_mv(scaled[2], models / "m" / "2" / "model.keras", staging)
            wait_until(lambda: answers and answers[-1] == (2, 2.0), timeout_s=30)
            count = len(answers)
            wait_until(lambda: len(answers) >= count + 20, timeout_s=30)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert failures == []
        assert set(answers) == {(1, 1.0), (2, 2.0)}
        last_v1 = max(i for i, a in enumerate(answers) if a[0] == 1)
        first_v2 = min(i for i, a in enumerate(answers) if a[0] == 2)
        assert last_v1 < first_v2 + 3 * len(threads)  # threads' answers interleave, but never fall back for long
        assert all(a == (2, 2.0) for a in answers[-10:])
        wait_until(lambda: version_entry(server, 1) == {"version": 1, "state": "END"}, timeout_s=30)

        # 3. A truncated v3 fails: v2 keeps serving, the status shows FAILED with the message.
        truncated = tmp_path / "truncated.keras"
        truncated.write_bytes(scaled[3].read_bytes()[: scaled[3].stat().st_size // 2])
        copy_then_mv(truncated, models / "m" / "3" / "model.keras", staging)
        entry = wait_until(lambda: (e := version_entry(server, 3)) and e["state"] == "FAILED" and e, timeout_s=30)
        assert entry["error"]
        assert predict(server.url).json()["version"] == 2
        assert version_entry(server, 2)["state"] == "AVAILABLE"
        assert server.get("/readyz").status_code == 200

        # 4. A file copied slowly in chunks (no rename) is never loaded half-written.
        copy_slowly(scaled[4], models / "m" / "4" / "model.keras", chunks=12, pause_s=SETTLE_S / 4)
        copied = time.monotonic()
        wait_until(lambda: predict(server.url).json()["version"] == 4, timeout_s=30)
        assert time.monotonic() - copied < SETTLE_S + POLL_INTERVAL_S + 10
        assert predict(server.url, x=2.0).json()["predictions"] == [[8.0]]
        log = server.log()
        assert len(re.findall(r"m:4 LOADING", log)) == 1, log[-3000:]
        assert not re.search(r"m:4 (FAILED|: the new copy FAILED)", log)

        # 5. Deleting the model unloads it; it then answers 404.
        shutil.rmtree(models / "m")
        wait_until(lambda: predict(server.url).status_code == 404, timeout_s=30)
        assert server.get("/models/m").status_code == 404
        assert "m:4 END" in server.log()


def test_a_replaced_single_file_swaps_without_failed_requests(
    run_server, tmp_path: Path, scaled: dict[int, Path]
) -> None:
    models = tmp_path / "models"
    copy_then_mv(scaled[1], models / "m.keras", tmp_path / "staging")
    with run_server(models, SETTLE_S=str(SETTLE_S), POLL_INTERVAL_S=str(POLL_INTERVAL_S)) as server:
        assert predict(server.url).json()["predictions"] == [[1.0]]
        statuses: list[int] = []
        stop = threading.Event()

        def client() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    statuses.append(predict(server.url, session).status_code)

        thread = threading.Thread(target=client)
        thread.start()
        try:
            copy_then_mv(scaled[3], models / "m.keras", tmp_path / "staging")
            wait_until(lambda: predict(server.url).json()["predictions"] == [[3.0]], timeout_s=30)
        finally:
            stop.set()
            thread.join()
        assert statuses and set(statuses) == {200}
        assert predict(server.url).json()["version"] == 1


def test_half_plus_two_2_versions_serves_124_by_default_and_123_when_asked(
    run_server, tmp_path: Path, corpus: Path
) -> None:
    models = tmp_path / "models"
    # version_policy all: a symlink farm of the corpus folder with a config beside the versions.
    farm = models / "half_plus_two"
    farm.mkdir(parents=True)
    for version in ("00000123", "00000124"):
        (farm / version).symlink_to(corpus / "half_plus_two_2_versions" / version)
    (farm / "config.yaml").write_text("version_policy: all\n")
    # The TF Serving default (latest only) for the same folder under another name.
    (models / "latest_only").symlink_to(corpus / "half_plus_two_2_versions")
    old = time.time() - 60
    os.utime(farm / "config.yaml", (old, old))

    with run_server(models) as server:
        default = server.post("/v1/models/half_plus_two:predict", json={"instances": [1.0, 2.0]})
        assert default.status_code == 200 and default.json() == {"predictions": [2.5, 3.0]}
        assert server.post("/models/half_plus_two/predict", json={"instances": [[1.0]]}).json()["version"] == 124
        v123 = server.post("/v1/models/half_plus_two/versions/123:predict", json={"instances": [1.0]})
        assert v123.status_code == 200 and v123.json() == {"predictions": [2.5]}
        assert (
            server.post("/models/half_plus_two/versions/123/predict", json={"instances": [[1.0]]}).json()["version"]
            == 123
        )

        status = server.get("/v1/models/half_plus_two").json()["model_version_status"]
        assert sorted((s["version"], s["state"]) for s in status) == [("123", "AVAILABLE"), ("124", "AVAILABLE")]
        latest = server.get("/v1/models/latest_only").json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in latest] == [("124", "AVAILABLE")]
        assert server.post("/v1/models/latest_only/versions/123:predict", json={"instances": [1.0]}).status_code == 404


def test_worker_recycles_after_the_configured_swaps_and_gunicorn_replaces_it(
    run_server, tmp_path: Path, scaled: dict[int, Path]
) -> None:
    models = tmp_path / "models"
    staging = tmp_path / "staging"
    copy_then_mv(scaled[1], models / "m.keras", staging)
    with run_server(
        models, SWAPS_BEFORE_RECYCLE="2", SETTLE_S=str(SETTLE_S), POLL_INTERVAL_S=str(POLL_INTERVAL_S)
    ) as server:
        for k in (2, 3):
            copy_then_mv(scaled[k], models / "m.keras", staging)
            wait_until(lambda: predict(server.url).json()["predictions"] == [[float(k)]], timeout_s=30)

        wait_until(lambda: "recycling it to give memory back" in server.log(), timeout_s=30)
        wait_until(lambda: server.log().count("Booting worker with pid") == 2, timeout_s=60)
        # The fresh worker loads the current file and serves it; the server never went down.
        wait_until(lambda: predict(server.url).status_code == 200, timeout_s=60)
        assert predict(server.url).json()["predictions"] == [[3.0]]
        assert server.process.poll() is None
        assert server.get("/readyz").status_code == 200

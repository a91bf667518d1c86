"""Soak: about two minutes of concurrent clients on loopback while new versions land every few seconds.

Zero failed requests, the served version follows the swaps, the worker's memory stays bounded, and
the latency percentiles are reported (KERASSERVE_FIGURES) for docs/reliability.md. SOAK_S shortens
or lengthens the run.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import wait_until
from tests.e2e.api_models import build_api_models
from tests.e2e.conftest import rss_mb, worker_pids
from tests.e2e.figures import record
from tests.e2e.scaled_models import copy_then_mv, save_scaled_model

SOAK_S = float(os.environ.get("SOAK_S", "120"))
SWAP_EVERY_S = 8.0
CLIENTS = 4
FACTORS = (1.0, 2.0, 3.0)
RSS_GROWTH_LIMIT_MB = 200.0


@pytest.mark.slow
def test_soak_with_hot_swaps_has_no_failed_request_and_bounded_memory(
    run_server, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    api = build_api_models(tmp_path_factory.getbasetemp() / "api_models")
    built = tmp_path / "built"
    for factor in FACTORS:
        save_scaled_model(built / f"times{factor:g}.keras", factor)
    models, staging = tmp_path / "models", tmp_path / "staging"
    models.mkdir()
    (models / "binary.keras").symlink_to(api / "binary.keras")
    copy_then_mv(built / "times1.keras", models / "m" / "1" / "model.keras", staging)

    with run_server(models, SETTLE_S="0.3", POLL_INTERVAL_S="0.5") as server:
        workers = worker_pids(server.process.pid)
        assert len(workers) == 1, workers
        worker = workers[0]
        latencies: list[float] = []
        failures: list[str] = []
        versions_seen: set[int] = set()
        stop = threading.Event()
        lock = threading.Lock()

        def client(index: int) -> None:
            rows = {"instances": [[1.0, 2.0, 3.0, 4.0]]}
            with requests.Session() as session:
                while not stop.is_set():
                    for path, body in (("/models/m/predict", {"instances": [[1.0]]}), ("/models/binary/predict", rows)):
                        started = time.monotonic()
                        try:
                            response = session.post(server.url + path, json=body, timeout=30)
                        except requests.RequestException as err:
                            with lock:
                                failures.append(f"{path}: {err!r}")
                            continue
                        elapsed = time.monotonic() - started
                        with lock:
                            latencies.append(elapsed)
                            if response.status_code != 200:
                                failures.append(f"{path}: {response.status_code} {response.text[:200]}")
                            elif path == "/models/m/predict":
                                answer = response.json()
                                versions_seen.add(answer["version"])
                                if answer["predictions"][0][0] != FACTORS[(answer["version"] - 1) % len(FACTORS)]:
                                    failures.append(f"wrong answer {answer}")

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        # Memory is measured once the first requests and a first swap have warmed everything up.
        wait_until(lambda: len(latencies) > 200, timeout_s=60)
        rss_start = rss_mb(worker)
        started = time.monotonic()
        version = 1
        swaps = 0
        try:
            while time.monotonic() - started < SOAK_S:
                time.sleep(SWAP_EVERY_S)
                version += 1
                factor = FACTORS[(version - 1) % len(FACTORS)]
                copy_then_mv(built / f"times{factor:g}.keras", models / "m" / str(version) / "model.keras", staging)
                swaps += 1
                old = models / "m" / str(version - 2)
                if old.is_dir():  # keep two versions on disk, as a rollout script would
                    for file in old.iterdir():
                        file.unlink()
                    old.rmdir()
            wait_until(lambda: version in versions_seen, timeout_s=30)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        rss_end = rss_mb(worker)
        assert worker_pids(server.process.pid) == [worker]  # never restarted

    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99))
    record(
        "soak",
        duration_s=round(time.monotonic() - started, 1),
        clients=CLIENTS,
        requests=len(latencies) + len(failures),
        failed=len(failures),
        swaps=swaps,
        versions_seen=len(versions_seen),
        p50_ms=round(p50, 2),
        p99_ms=round(p99, 2),
        rss_start_mb=round(rss_start, 1),
        rss_end_mb=round(rss_end, 1),
    )
    assert not failures, failures[:10]
    assert swaps >= SOAK_S // SWAP_EVERY_S - 1 and len(versions_seen) >= swaps  # every version answered
    assert rss_end - rss_start < RSS_GROWTH_LIMIT_MB, (rss_start, rss_end)

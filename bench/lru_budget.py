"""More models than memory: MAX_LOADED_MODELS under a request mix over every model.

Builds `--models` small Keras MLPs (model i answers i, whatever the input, so a wrong model is
seen), starts the real server (`gunicorn wsgi:app`, the repository's gunicorn.conf.py, one worker:
the budget is per worker) with MAX_LOADED_MODELS=`--budget`, and sends `--requests` TF Serving
predict requests from `--clients` threads: every model once (shuffled), then a Zipf mix (rank r
asked with weight 1/r^`--zipf`) over all of them. It reports:

- failed requests (any status but 200, or a wrong answer): must be 0, requests wait for their model;
- the most models resident at once, from the worker's log (a model is resident from its LOADING line
  to its END or FAILED line): must never exceed the budget;
- the worker's resident set size (VmRSS, sampled every 50 ms): at ready, highest, at the end; and,
  with `--compare`, the same worker with no budget after the same mix (every model loaded);
- evictions, and latency of requests that found their model loaded vs. those that waited for it.

    .venv/bin/python bench/lru_budget.py [--models 20] [--budget 5] [--requests 400] [--clients 4] [--compare]
    .venv/bin/python bench/lru_budget.py --json figures.json   # also write the figures as JSON

Exits 1 when a request failed or the resident count went over the budget. The figures are reported
in docs/operations.md ("More models than memory").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
INPUT_WIDTH = 64
_LOG_EVENT = re.compile(r"\[(\d+)\] \w+ service\.manager: (\S+):\d+ (LOADING|END|FAILED)\b")


def build_models(folder: Path, count: int, units: int) -> list[str]:
    """Save `count` MLPs (64 -> units -> units -> 1) whose output is their index; return their names."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    names = []
    for index in range(count):
        model = keras.Sequential(
            [
                keras.Input((INPUT_WIDTH,), name="x"),
                keras.layers.Dense(units, activation="relu"),
                keras.layers.Dense(units, activation="relu"),
                keras.layers.Dense(
                    1,
                    kernel_initializer="zeros",
                    bias_initializer=keras.initializers.Constant(float(index)),
                    name="y",
                ),
            ]
        )
        name = f"m{index:02d}"
        model.save(folder / f"{name}.keras")
        names.append(name)
    return names


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def worker_pid(master: int) -> int | None:
    """The gunicorn master's one worker process."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                return int(entry.name)
    return None


def most_resident(log_text: str) -> int:
    """The most models resident at once in any worker, replayed from the manager's log lines."""
    resident: dict[str, set[str]] = {}
    most = 0
    for pid, name, event in _LOG_EVENT.findall(log_text):
        models = resident.setdefault(pid, set())
        if event == "LOADING":
            models.add(name)
        else:
            models.discard(name)
        most = max(most, len(models))
    return most


def request_plan(names: list[str], requests: int, zipf: float, seed: int) -> list[int]:
    """Every model once (shuffled), then a Zipf mix over all of them: indexes into `names`."""
    rng = random.Random(seed)
    first = list(range(len(names)))
    rng.shuffle(first)
    ranks = list(range(len(names)))
    rng.shuffle(ranks)  # which model is most popular is arbitrary
    weights = [1 / (rank + 1) ** zipf for rank in ranks]
    rest = rng.choices(range(len(names)), weights=weights, k=max(0, requests - len(names)))
    return first + rest


def run_server(models: Path, budget: int, log_path: Path, plan: list[int], names: list[str], clients: int) -> dict:
    """Start the server, send the plan, return the figures."""
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "GRPC_PORT": "0",
        "MODELS_DIR": str(models),
        "WORKERS": "1",
        "MAX_LOADED_MODELS": str(budget),
        "LOAD_WAIT_S": "300",
        "MAX_BATCH_SIZE": "4",
        "LOG_LEVEL": "INFO",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [GUNICORN, "wsgi:app"], cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    samples: list[float] = []
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server exited with {process.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server was not ready within 300 s; see {log_path}")
            time.sleep(0.2)
        worker = worker_pid(process.pid)
        assert worker is not None
        ready_rss = rss_mb(worker)

        def sample() -> None:
            while not stop.wait(0.05):
                value = rss_mb(worker)
                if value is not None:
                    samples.append(value)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results = send(url, plan, names, clients)
        stop.set()
        sampler.join()
        end_rss = rss_mb(worker)
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            metrics_text = response.read().decode()
    finally:
        stop.set()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    evictions = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("kerasserve_model_evictions_total{")
    )
    hits = [seconds for seconds, waited in results["latencies"] if not waited]
    misses = [seconds for seconds, waited in results["latencies"] if waited]
    return {
        "budget": budget,
        "requests": len(plan),
        "failed": results["failed"],
        "wrong_answers": results["wrong"],
        "most_resident": most_resident(log_path.read_text(errors="replace")),
        "evictions": int(evictions),
        "rss_ready_mb": round(ready_rss or 0.0, 1),
        "rss_max_mb": round(max(samples, default=0.0), 1),
        "rss_end_mb": round(end_rss or 0.0, 1),
        "p50_loaded_ms": _ms(hits, 0.5),
        "p50_waited_ms": _ms(misses, 0.5),
        "p99_waited_ms": _ms(misses, 0.99),
        "waited_requests": len(misses),
        "seconds": round(results["seconds"], 1),
    }


def _ms(values: list[float], quantile: float) -> float | None:
    if not values:
        return None
    if quantile == 0.5:
        return round(statistics.median(values) * 1000, 1)
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] * 1000, 1)


def send(url: str, plan: list[int], names: list[str], clients: int) -> dict:
    """Send the plan from `clients` threads; count failures and wrong answers, time each request."""
    lock = threading.Lock()
    queue = list(reversed(plan))
    failed: list[str] = []
    wrong: list[str] = []
    latencies: list[tuple[float, bool]] = []
    body = json.dumps({"instances": [[0.5] * INPUT_WIDTH]}).encode()

    def client() -> None:
        while True:
            with lock:
                if not queue:
                    return
                index = queue.pop()
            name = names[index]
            loaded = _is_resident(url, name)
            started = time.monotonic()
            request = urllib.request.Request(
                f"{url}/v1/models/{name}:predict", data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=600) as response:
                    answer = json.loads(response.read())["predictions"][0][0]
            except (urllib.error.URLError, OSError, ValueError, KeyError) as err:
                with lock:
                    failed.append(f"{name}: {err}")
                continue
            elapsed = time.monotonic() - started
            with lock:
                latencies.append((elapsed, not loaded))
                if round(answer) != index:
                    wrong.append(f"{name} answered {answer}")

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "failed": failed,
        "wrong": wrong,
        "latencies": latencies,
        "seconds": time.monotonic() - started,
    }


def _is_resident(url: str, name: str) -> bool:
    """Whether the worker holds `name` now (`resident` in GET /models/<name>; loads nothing)."""
    try:
        with urllib.request.urlopen(f"{url}/models/{name}", timeout=10) as response:
            return bool(json.loads(response.read()).get("resident"))
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--budget", type=int, default=5)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--units", type=int, default=512, help="width of the hidden layers (about 2 * units^2 weights)")
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--compare", action="store_true", help="also run with no budget (every model loaded)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="lru-budget-"))
    try:
        models = root / "models"
        models.mkdir()
        names = build_models(models, args.models, args.units)
        plan = request_plan(names, args.requests, args.zipf, args.seed)
        figures = {
            "models": args.models,
            "clients": args.clients,
            "units": args.units,
            "model_file_kb": round((models / "m00.keras").stat().st_size / 1024),
            "budgeted": run_server(models, args.budget, root / "budgeted.log", plan, names, args.clients),
        }
        if args.compare:
            figures["unbudgeted"] = run_server(models, 0, root / "unbudgeted.log", plan, names, args.clients)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    budgeted = figures["budgeted"]
    ok = not budgeted["failed"] and not budgeted["wrong_answers"] and budgeted["most_resident"] <= args.budget
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

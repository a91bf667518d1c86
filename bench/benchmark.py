"""kerasserve benchmark: in-process limit, the real service under wrk, and the tutorial-style app.

One run, per model (a small CNN on 28x28 PNGs, MobileNetV2 on 640x480 JPEGs):

(a) the in-process limit: the model's compiled forward pass (`tf.function`, fixed input signature)
    called in a loop on random tensors, for several batch sizes; the best images/s is the limit;
(b) the real service (`gunicorn wsgi:app`, the repository's gunicorn.conf.py) serving that model,
    driven by wrk with real image files POSTed to `/predict` at several concurrencies;
(c) the tutorial-style app (`bench/tutorial_app.py`: Flask, `model.predict` per request, gunicorn
    with 2 sync workers), driven the same way;

then prints and writes requests/s, p50/p99 latency, error counts and the ratios to (a) and (c) to
`docs/benchmarks.md`, the raw numbers to `docs/benchmarks.json` and a plot to `docs/benchmarks.png`.
The full run also sweeps gunicorn workers/threads and TensorFlow thread settings at 16 clients.

Models are built by this script with random weights (MobileNetV2 with `weights=None`); nothing is
downloaded. Needs wrk (`apt-get install -y wrk`) and matplotlib (requirements-dev.txt).

    .venv/bin/python bench/benchmark.py            # full run (about 20 minutes on 2 cores)
    .venv/bin/python bench/benchmark.py --quick    # short run (a few minutes): fewer points, no sweep
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
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
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
WRK_SCRIPT = REPO / "bench" / "post.lua"
TARGET_CONCURRENCY = 16
LIMIT_ROUNDS = 3


# --------------------------------------------------------------------------------------------------
# What is measured
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One model of the benchmark, its images, the service settings used for it and its targets."""

    key: str
    title: str
    file: str
    images: str
    content_type: str
    service_env: dict[str, str]
    """Environment of the service's main run."""
    sweep: tuple[dict[str, str], ...]
    """Changes to `service_env` measured at 16 clients in the full run."""
    limit_batches: tuple[int, ...]
    min_ratio_to_limit: float | None = None
    min_ratio_to_tutorial: float | None = None
    max_p99_s: float = 1.0


COMMON_ENV = {"MAX_BATCH_SIZE": "32", "BATCH_TIMEOUT_MS": "2", "LOG_LEVEL": "WARNING"}
DEFAULTS = {**COMMON_ENV, "WORKERS": "2", "THREADS": "16"}
"""The service's default settings (service/settings.py), spelled out; TensorFlow's thread pools are
left on auto: the usable cores divided by the workers (service.runner.tf_thread_counts)."""
TF_OWN_POOLS = {"TF_INTRA_OP_THREADS": str(os.cpu_count() or 1), "TF_INTER_OP_THREADS": str(os.cpu_count() or 1)}
"""TensorFlow's own default pools (one thread per core in every worker), the old default."""
REUSE_PORT = {"GUNICORN_CMD_ARGS": "--reuse-port"}
"""Each worker gets its own listening socket and the kernel spreads new connections over them."""

CASES = {
    "cnn": Case(
        key="cnn",
        title="Small CNN (28x28x1, 10 classes)",
        file="digits_cnn.keras",
        images="28x28 grayscale PNG",
        content_type="image/png",
        service_env=DEFAULTS,
        sweep=(
            TF_OWN_POOLS,
            {"WORKERS": "1"},
            {"BATCH_TIMEOUT_MS": "0"},
            {"THREADS": "8"},
            REUSE_PORT,
            {"WORKERS": "4", "THREADS": "8"},
            {"WORKERS": "4", "THREADS": "8", **REUSE_PORT},
        ),
        limit_batches=(1, 2, 4, 8, 16, 32, 64, 128),
        min_ratio_to_tutorial=30.0,
        max_p99_s=0.050,
    ),
    "mobilenet": Case(
        key="mobilenet",
        title="MobileNetV2 (224x224x3, 1000 classes, weights=None)",
        file="mobilenet_v2.keras",
        images="640x480 RGB JPEG",
        content_type="image/jpeg",
        service_env=DEFAULTS,
        sweep=(
            TF_OWN_POOLS,
            {"WORKERS": "1"},
            {"MAX_BATCH_SIZE": "8"},
            {"MAX_BATCH_SIZE": "16"},
        ),
        limit_batches=(1, 2, 4, 8, 16, 32),
        min_ratio_to_limit=0.80,
        max_p99_s=1.0,
    ),
}


@dataclass
class LoadResult:
    """One wrk run against one server at one concurrency."""

    server: str
    concurrency: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non2xx: int
    socket_errors: int
    timeouts: int
    settings: dict[str, str] = field(default_factory=dict)
    per_worker_requests: dict[str, int] = field(default_factory=dict)
    per_worker_connections: dict[str, float] = field(default_factory=dict)
    cpu_server_cores: float = 0.0
    """CPU used by the server's processes during the run, in cores (1.0 = one core busy)."""
    cpu_client_cores: float = 0.0
    """CPU used by wrk."""
    cpu_other_cores: float = 0.0
    """CPU used by everything else on the host (other jobs): the noise in these numbers."""


# --------------------------------------------------------------------------------------------------
# Subprocess parts that import TensorFlow (the driver itself never does)
# --------------------------------------------------------------------------------------------------
def build_models(folder: Path) -> None:
    """Write both models, their configs and the request images into `folder`."""
    import keras
    import numpy as np
    from PIL import Image

    keras.utils.set_random_seed(0)
    (folder / "models-cnn").mkdir(parents=True, exist_ok=True)
    (folder / "models-mobilenet").mkdir(parents=True, exist_ok=True)
    images = folder / "images"
    images.mkdir(exist_ok=True)
    # The Keras MNIST example's CNN.
    cnn = keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits_cnn",
    )
    cnn.save(folder / "models-cnn" / CASES["cnn"].file)
    mobilenet = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000)
    mobilenet.save(folder / "models-mobilenet" / CASES["mobilenet"].file)
    (folder / "models-mobilenet" / "mobilenet_v2.yaml").write_text("preprocessing:\n  scale: symmetric\n")

    rng = np.random.default_rng(0)
    for i in range(8):
        digit = np.zeros((28, 28), np.float32)
        for _ in range(3):  # a few bright strokes, like a handwritten digit
            r, c = rng.integers(6, 22, 2)
            digit[max(r - 6, 0) : r + 6, max(c - 2, 0) : c + 2] += 255
        Image.fromarray(np.clip(digit, 0, 255).astype(np.uint8), "L").save(images / f"digit{i}.png")
        y, x = np.mgrid[0:480, 0:640]
        base = np.stack([np.sin(x / (20 + 7 * i)), np.cos(y / (15 + 5 * i)), np.sin((x + y) / 40)], axis=-1)
        photo = (base * 90 + 128 + rng.normal(0, 12, (480, 640, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(photo, "RGB").save(images / f"photo{i}.jpg", quality=90)


def measure_limit(model_path: Path, batches: list[int], seconds: float, threads: int = 0) -> dict:
    """Images/s of the compiled forward pass per batch size (TensorFlow's default threads, or `threads`)."""
    import keras
    import numpy as np
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    model = keras.models.load_model(model_path, compile=False)
    shape = tuple(model.input_shape[1:])
    forward = tf.function(
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec((None, *shape), tf.float32)]
    )
    rng = np.random.default_rng(0)
    inputs = {batch: rng.uniform(0, 1, (batch, *shape)).astype(np.float32) for batch in batches}
    for x in inputs.values():
        for _ in range(2):
            forward(x).numpy()
    # Rounds over every batch size, so a burst of load from other jobs on the host spreads over all
    # of them instead of spoiling one; the median round counts.
    samples: dict[int, list[float]] = {batch: [] for batch in batches}
    cpu_s = {batch: 0.0 for batch in batches}
    wall_s = {batch: 0.0 for batch in batches}
    host_before, own_before, wall_before = host_busy_ticks(), time.process_time(), time.monotonic()
    for _ in range(LIMIT_ROUNDS):
        for batch, x in inputs.items():
            calls, started, cpu_started = 0, time.perf_counter(), time.process_time()
            while calls < 2 or time.perf_counter() - started < seconds / LIMIT_ROUNDS:
                forward(x).numpy()
                calls += 1
            elapsed = time.perf_counter() - started
            samples[batch].append(batch * calls / elapsed)
            cpu_s[batch] += time.process_time() - cpu_started
            wall_s[batch] += elapsed
    result = {batch: statistics.median(values) for batch, values in samples.items()}
    other_s = (host_busy_ticks() - host_before) / CLOCK_TICKS - (time.process_time() - own_before)
    return {
        "images_per_s": result,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "cores": {batch: round(cpu_s[batch] / wall_s[batch], 2) for batch in batches},
        "cpu_other_cores": round(max(other_s, 0.0) / (time.monotonic() - wall_before), 2),
    }


# --------------------------------------------------------------------------------------------------
# Servers and load
# --------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str, *, data: bytes | None = None, content_type: str = "", timeout: float = 5) -> int:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type} if content_type else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen
    log_path: Path
    metrics_dir: Path | None = None


@contextmanager
def serve(
    name: str,
    argv: list[str],
    env: dict[str, str],
    port: int,
    workdir: Path,
    *,
    ready_path: str,
    probe: tuple[bytes, str] | None = None,
    timeout_s: float = 600,
) -> Iterator[Server]:
    """Start a gunicorn server, wait until `ready_path` answers 200 (or a probe POST does), stop it after."""
    log_path = workdir / f"{name}-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(
        name,
        f"http://127.0.0.1:{port}",
        process,
        log_path,
        Path(env["PROMETHEUS_MULTIPROC_DIR"]) if "PROMETHEUS_MULTIPROC_DIR" in env else None,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}"
                )
            if probe is not None:
                status = http_status(server.url + ready_path, data=probe[0], content_type=probe[1], timeout=60)
            else:
                status = http_status(server.url + ready_path)
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} not ready after {timeout_s}s:\n{log_path.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def service_server(case: Case, workdir: Path, settings: dict[str, str]) -> AbstractContextManager[Server]:
    port = free_port()
    metrics_dir = Path(tempfile.mkdtemp(prefix="metrics-", dir=workdir))
    env = {
        **os.environ,
        **settings,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODELS_DIR": str(workdir / f"models-{case.key}"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    return serve(f"kerasserve-{case.key}", [GUNICORN, "wsgi:app"], env, port, workdir, ready_path="/readyz")


def tutorial_server(case: Case, workdir: Path, probe: bytes) -> AbstractContextManager[Server]:
    port = free_port()
    empty_config = workdir / "empty_gunicorn_conf.py"
    empty_config.write_text("")  # not the repository's gunicorn.conf.py
    env = {**os.environ, "BENCH_MODEL": str(workdir / f"models-{case.key}" / case.file), "TF_CPP_MIN_LOG_LEVEL": "2"}
    argv = [
        GUNICORN,
        "-c",
        str(empty_config),
        "-w",
        "2",
        "-b",
        f"127.0.0.1:{port}",
        "--timeout",
        "300",
        "--log-level",
        "warning",
        "bench.tutorial_app:app",
    ]
    return serve(
        f"tutorial-{case.key}", argv, env, port, workdir, ready_path="/predict", probe=(probe, case.content_type)
    )


def run_wrk(server: Server, case: Case, images: list[Path], concurrency: int, seconds: float) -> dict:
    argv = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        server.url + "/predict",
        "--",
        case.content_type,
        *map(str, images),
    ]
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("BENCH_JSON "))
    return json.loads(line.removeprefix("BENCH_JSON "))


def worker_pids(master: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                pids.append(int(entry.name))
    return sorted(pids)


def connections_per_worker(master: int, port: int) -> dict[int, int]:
    """Established client connections held by each worker process (from /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "01":
                inodes.add(parts[9])
    counts = {}
    for pid in worker_pids(master):
        held = 0
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    held += 1
        except OSError:
            continue
        counts[pid] = held
    return counts


def requests_per_worker(metrics_dir: Path | None) -> dict[int, int]:
    """Device-call rows per worker pid, from prometheus_client's per-process files."""
    if metrics_dir is None:
        return {}
    from prometheus_client.mmap_dict import MmapedDict

    counts: dict[int, int] = {}
    for path in metrics_dir.glob("histogram_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            metric, sample, *_ = json.loads(key)
            if metric == "kerasserve_batch_rows" and sample == "kerasserve_batch_rows_sum":
                counts[pid] = counts.get(pid, 0) + int(value)
    return counts


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def host_busy_ticks() -> int:
    """CPU ticks the whole host spent busy (every core), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal, *_ = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    )
    return user + nice + system + irq + softirq + steal


def process_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    server: Server,
    case: Case,
    images: list[Path],
    concurrency: int,
    seconds: float,
    settings: dict[str, str],
    *,
    spread: bool = False,
) -> LoadResult:
    """One wrk run; with `spread`, also sample connections and count rows per worker."""
    samples: list[dict[int, int]] = []
    stop = threading.Event()
    port = int(server.url.rsplit(":", 1)[1])

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append(connections_per_worker(server.process.pid, port))

    sampler = threading.Thread(target=sample, daemon=True)
    rows_before = requests_per_worker(server.metrics_dir) if spread else {}
    if spread:
        sampler.start()
    server_pids = [server.process.pid, *worker_pids(server.process.pid)]
    host_before, server_before, client_before = host_busy_ticks(), process_ticks(server_pids), children_seconds()
    raw = run_wrk(server, case, images, concurrency, seconds)
    host_s = (host_busy_ticks() - host_before) / CLOCK_TICKS
    server_s = (process_ticks(server_pids) - server_before) / CLOCK_TICKS
    client_s = children_seconds() - client_before
    stop.set()
    if spread:
        sampler.join()
    rows_after = requests_per_worker(server.metrics_dir) if spread else {}
    connections: dict[str, float] = {}
    if samples:
        for pid in samples[-1]:
            connections[str(pid)] = round(sum(s.get(pid, 0) for s in samples) / len(samples), 1)
    seconds_run = raw["duration_us"] / 1e6
    return LoadResult(
        server=server.name.split("-")[0],
        concurrency=concurrency,
        seconds=seconds_run,
        requests=raw["requests"],
        rps=raw["requests"] / seconds_run,
        p50_ms=raw["p50_us"] / 1e3,
        p90_ms=raw["p90_us"] / 1e3,
        p99_ms=raw["p99_us"] / 1e3,
        max_ms=raw["max_us"] / 1e3,
        non2xx=raw["non2xx"],
        socket_errors=raw["connect_errors"] + raw["read_errors"] + raw["write_errors"],
        timeouts=raw["timeouts"],
        settings=settings,
        per_worker_requests={str(pid): rows_after.get(pid, 0) - rows_before.get(pid, 0) for pid in rows_after},
        per_worker_connections=connections,
        cpu_server_cores=round(server_s / seconds_run, 2),
        cpu_client_cores=round(client_s / seconds_run, 2),
        cpu_other_cores=round(max(host_s - server_s - client_s, 0.0) / seconds_run, 2),
    )


def run_python(*args: str) -> str:
    """Run this script's TensorFlow part in a fresh interpreter; return its stdout (stderr on failure)."""
    done = subprocess.run(
        [PYTHON, __file__, *args], capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def run_case(case: Case, workdir: Path, args: argparse.Namespace) -> dict:
    images = sorted((workdir / "images").glob("digit*.png" if case.key == "cnn" else "photo*.jpg"))
    log(f"{case.key}: in-process limit")
    limits = [
        json.loads(
            run_python(
                "limit",
                str(workdir / f"models-{case.key}" / case.file),
                ",".join(map(str, case.limit_batches)),
                str(args.limit_seconds),
                str(threads),
            )
            .strip()
            .splitlines()[-1]
        )
        for threads in (0, 1)
    ]
    limit, limit_one_thread = limits
    best_batch, best = max(limit["images_per_s"].items(), key=lambda kv: kv[1])
    one_batch, one_best = max(limit_one_thread["images_per_s"].items(), key=lambda kv: kv[1])
    log(
        f"{case.key}: limit {best:.1f} images/s at batch {best_batch}; one TF thread: {one_best:.1f} at batch {one_batch}"
    )

    result = {
        "case": asdict(case),
        "limit": limit,
        "limit_best": best,
        "limit_best_batch": int(best_batch),
        "limit_one_thread": limit_one_thread,
        "limit_one_thread_best": one_best,
        "limit_one_thread_best_batch": int(one_batch),
        "service": [],
        "tutorial": [],
        "sweep": [],
    }
    warm_s = 2 if args.quick else 4
    settings = dict(case.service_env)
    with service_server(case, workdir, settings) as server:
        run_wrk(server, case, images, TARGET_CONCURRENCY, warm_s)
        for concurrency in args.concurrency:
            row = measure(
                server, case, images, concurrency, args.duration, settings, spread=concurrency == TARGET_CONCURRENCY
            )
            log(
                f"{case.key}: service  c={concurrency:3d} {row.rps:8.1f} req/s p50 {row.p50_ms:7.1f} ms "
                f"p99 {row.p99_ms:7.1f} ms errors {row.non2xx + row.socket_errors + row.timeouts} "
                f"cores server/wrk/other {row.cpu_server_cores}/{row.cpu_client_cores}/{row.cpu_other_cores}"
            )
            result["service"].append(asdict(row))

    result["backend"] = []
    if args.backend != "tensorflow":
        # The same service on the compiled backend (converted and gated at load), in the same run,
        # so its rows sit next to the TensorFlow limit and the TensorFlow service measured above.
        settings = {
            **case.service_env,
            "MODEL_BACKEND": args.backend,
            "BACKEND_CACHE_DIR": str(workdir / "backend-cache"),
        }
        with service_server(case, workdir, settings) as server:
            run_wrk(server, case, images, TARGET_CONCURRENCY, warm_s)
            for concurrency in args.concurrency:
                row = measure(server, case, images, concurrency, args.duration, settings)
                log(
                    f"{case.key}: service on {args.backend} c={concurrency:3d} {row.rps:8.1f} req/s "
                    f"p50 {row.p50_ms:7.1f} ms p99 {row.p99_ms:7.1f} ms"
                )
                result["backend"].append(asdict(row))

    probe = images[0].read_bytes()
    with tutorial_server(case, workdir, probe) as server:
        run_wrk(server, case, images, 4, warm_s)  # every worker takes its first (slow) predict
        for concurrency in args.concurrency:
            row = measure(server, case, images, concurrency, args.duration, {"WORKERS": "2", "worker_class": "sync"})
            log(
                f"{case.key}: tutorial c={concurrency:3d} {row.rps:8.1f} req/s p50 {row.p50_ms:7.1f} ms "
                f"p99 {row.p99_ms:7.1f} ms errors {row.non2xx + row.socket_errors + row.timeouts} "
                f"cores server/wrk/other {row.cpu_server_cores}/{row.cpu_client_cores}/{row.cpu_other_cores}"
            )
            result["tutorial"].append(asdict(row))

    if not args.quick:
        for variant in case.sweep:
            settings = {**case.service_env, **variant}
            with service_server(case, workdir, settings) as server:
                run_wrk(server, case, images, TARGET_CONCURRENCY, warm_s)
                row = measure(server, case, images, TARGET_CONCURRENCY, args.duration, settings, spread=True)
            log(
                f"{case.key}: sweep {variant} -> {row.rps:.1f} req/s p99 {row.p99_ms:.1f} ms "
                f"cores server/wrk/other {row.cpu_server_cores}/{row.cpu_client_cores}/{row.cpu_other_cores}"
            )
            result["sweep"].append(asdict(row))
    return result


def at(rows: list[dict], concurrency: int) -> dict | None:
    return next((r for r in rows if r["concurrency"] == concurrency), None)


def verdicts(result: dict) -> list[tuple[str, bool]]:
    """The issue's targets at 16 clients, each with whether it was met."""
    case = result["case"]
    service, tutorial = at(result["service"], TARGET_CONCURRENCY), at(result["tutorial"], TARGET_CONCURRENCY)
    if service is None:
        return []
    checks = []
    if case["min_ratio_to_limit"] is not None:
        ratio = service["rps"] / result["limit_best"]
        checks.append(
            (
                f"throughput {ratio:.2f}x the in-process limit (target >= {case['min_ratio_to_limit']:.2f}x)",
                ratio >= case["min_ratio_to_limit"],
            )
        )
    if case["min_ratio_to_tutorial"] is not None and tutorial is not None:
        ratio = service["rps"] / tutorial["rps"]
        checks.append(
            (
                f"throughput {ratio:.1f}x the tutorial app (target >= {case['min_ratio_to_tutorial']:.0f}x)",
                ratio >= case["min_ratio_to_tutorial"],
            )
        )
    checks.append(
        (
            f"p99 {service['p99_ms']:.1f} ms (target <= {case['max_p99_s'] * 1000:.0f} ms)",
            service["p99_ms"] <= case["max_p99_s"] * 1000,
        )
    )
    errors = service["non2xx"] + service["socket_errors"] + service["timeouts"]
    checks.append((f"{errors} non-2xx responses or socket errors (target 0)", errors == 0))
    if service["per_worker_requests"]:
        served = service["per_worker_requests"]
        workers = int(service["settings"].get("WORKERS", "1"))
        busy = sum(1 for n in served.values() if n > 0)
        checks.append(
            (
                f"{busy} of {workers} workers served rows ({', '.join(map(str, sorted(served.values())))})",
                busy == workers,
            )
        )
    return checks


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("tensorflow", "keras", "flask", "gunicorn", "numpy", "pillow"):
        try:
            from importlib.metadata import version

            found[package] = version(package)
        except Exception:  # noqa: BLE001 - a missing package is reported as such
            found[package] = "?"
    try:
        found["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1]
    except (OSError, IndexError):
        found["wrk"] = "?"
    return found


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory_gb:.0f} GiB RAM, {platform.system()} {platform.release()}"


def per_core_ratio(row: dict, result: dict) -> str:
    """Service requests per server core-second over limit images per core-second: the ratio a host
    without other jobs would show if both could use the same CPU."""
    cores = result["limit"].get("cores", {}).get(str(result["limit_best_batch"]))
    if not cores or not row["cpu_server_cores"]:
        return "-"
    return f"{(row['rps'] / row['cpu_server_cores']) / (result['limit_best'] / cores):.2f}x"


def cpu(row: dict) -> str:
    return f"{row['cpu_server_cores']:.2f} / {row['cpu_client_cores']:.2f} / {row['cpu_other_cores']:.2f}"


def env_text(settings: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items() if k != "LOG_LEVEL")


def write_report(results: list[dict], args: argparse.Namespace, command: str, started: dt.datetime) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Produced by:",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Run on {started:%Y-%m-%d %H:%M} UTC, {machine()}, load average {args.load_before} at the start; "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
        + ".",
        f"Load: wrk (1 thread, keep-alive, 10 s timeout) on the same machine, {args.duration:g} s per point after a "
        f"warm-up, each request one image POSTed as a raw body to `/predict` (8 different files in turn). "
        f"{'Quick run: fewer concurrencies, no settings sweep.' if args.quick else ''}",
        "",
        "![throughput and p99 latency against concurrency](benchmarks.png)",
        "",
        "How to read it: **limit** is the in-process limit (a): the model's compiled forward pass alone, on "
        "random tensors, at its best batch size, with all cores. **service** is kerasserve (b) under gunicorn "
        "with the settings shown. **tutorial** is the usual Flask app calling `model.predict` per request under "
        "gunicorn with 2 sync workers (c), `bench/tutorial_app.py`. The client (wrk) shares the CPU with the "
        "server, as it would on a single small host; the in-process limit does not pay for it, nor for HTTP or "
        "image decoding. **per core** divides each side's throughput by the CPU it used (server processes; "
        "the limit's process), which cancels out most of the interference of other jobs on a shared host. "
        "The `cores` columns say how much CPU the server, wrk and everything else on the host "
        "used during each point (from /proc): on a shared host, `other` is the noise in that row.",
        "",
    ]
    for result in results:
        case = result["case"]
        lines += [
            f"## {case['title']}, {case['images']}",
            "",
            "In-process limit (a), images/s per batch size: "
            + ", ".join(f"{b}: {v:.0f}" for b, v in result["limit"]["images_per_s"].items())
            + f"; **best {result['limit_best']:.1f} images/s at batch {result['limit_best_batch']}**, using "
            f"{result['limit'].get('cores', {}).get(str(result['limit_best_batch']), 0):.2f} cores "
            f"(other jobs used {result['limit'].get('cpu_other_cores', 0):.2f} cores meanwhile). "
            f"With one TensorFlow thread (intra- and inter-op): **{result['limit_one_thread_best']:.1f} images/s** at "
            f"batch {result['limit_one_thread_best_batch']}, i.e. per core, the rate each single-threaded "
            "worker can reach; several such workers can together beat the multi-threaded limit.",
            "",
            f"Service settings: `{env_text(case['service_env'])}`.",
            "",
            "| clients | service req/s | p50 ms | p99 ms | errors | cores: server / wrk / other | tutorial req/s | p50 ms | p99 ms | errors | other cores | service / limit | per core: service / limit | service / tutorial |",
            "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for service in result["service"]:
            tutorial = at(result["tutorial"], service["concurrency"])
            s_err = service["non2xx"] + service["socket_errors"] + service["timeouts"]
            if tutorial:
                t_err = tutorial["non2xx"] + tutorial["socket_errors"] + tutorial["timeouts"]
                t_cols = (
                    f"{tutorial['rps']:.1f} | {tutorial['p50_ms']:.1f} | {tutorial['p99_ms']:.1f} | {t_err} | "
                    f"{tutorial['cpu_other_cores']:.2f}"
                )
                ratio_t = f"{service['rps'] / tutorial['rps']:.1f}x" if tutorial["rps"] else "-"
            else:
                t_cols, ratio_t = "- | - | - | - | -", "-"
            lines.append(
                f"| {service['concurrency']} | {service['rps']:.1f} | {service['p50_ms']:.1f} | {service['p99_ms']:.1f} | "
                f"{s_err} | {cpu(service)} | {t_cols} | {service['rps'] / result['limit_best']:.2f}x | "
                f"{per_core_ratio(service, result)} | {ratio_t} |"
            )
        lines += ["", f"Targets at {TARGET_CONCURRENCY} clients:", ""]
        for text, ok in verdicts(result):
            lines.append(f"- {'met' if ok else '**missed**'}: {text}")
        service16 = at(result["service"], TARGET_CONCURRENCY)
        if service16 and service16["per_worker_connections"]:
            lines.append(
                "- connections held per worker (mean of samples during the run): "
                + ", ".join(f"{v:g}" for v in service16["per_worker_connections"].values())
            )
        if result.get("backend"):
            lines += [
                "",
                f"The same service with `{env_text(result['backend'][0]['settings'])}` (same run; the backend each "
                "version runs on is in `GET /models`: a model that fails the equivalence gate serves on TensorFlow):",
                "",
                "| clients | req/s | p50 ms | p99 ms | errors | / TensorFlow limit | / service on TensorFlow | p99 vs TensorFlow |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for row in result["backend"]:
                tf_row = at(result["service"], row["concurrency"])
                errors = row["non2xx"] + row["socket_errors"] + row["timeouts"]
                vs = f"{row['rps'] / tf_row['rps']:.2f}x" if tf_row and tf_row["rps"] else "-"
                p99 = f"{row['p99_ms'] / tf_row['p99_ms']:.2f}x" if tf_row and tf_row["p99_ms"] else "-"
                lines.append(
                    f"| {row['concurrency']} | {row['rps']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {errors} | "
                    f"{row['rps'] / result['limit_best']:.2f}x | {vs} | {p99} |"
                )
        if result["sweep"]:
            lines += [
                "",
                f"Settings sweep at {TARGET_CONCURRENCY} clients (first row: the settings above):",
                "",
                "| settings | req/s | p50 ms | p99 ms | errors | rows per worker | cores: server / wrk / other |",
                "|---|---:|---:|---:|---:|---|---|",
            ]
            for row in [service16, *result["sweep"]]:
                if row is None:
                    continue
                errors = row["non2xx"] + row["socket_errors"] + row["timeouts"]
                per_worker = ", ".join(map(str, sorted(row["per_worker_requests"].values()))) or "-"
                lines.append(
                    f"| `{env_text(row['settings'])}` | {row['rps']:.1f} | {row['p50_ms']:.1f} | "
                    f"{row['p99_ms']:.1f} | {errors} | {per_worker} | {cpu(row)} |"
                )
            within = [r for r in [service16, *result["sweep"]] if r and r["p99_ms"] <= case["max_p99_s"] * 1000]
            if within:
                best = max(within, key=lambda r: r["rps"])
                lines += [
                    "",
                    f"Fastest settings with p99 within the target: `{env_text(best['settings'])}` "
                    f"({best['rps']:.1f} req/s, p99 {best['p99_ms']:.1f} ms).",
                ]
        lines.append("")
    lines += [
        "## The defaults, and the sweeps behind them",
        "",
        "- **gthread workers, one per core** (`WORKERS=2` here), `THREADS=16`: request threads of one worker share "
        "its batchers, which is what fills batches; a second worker per core adds memory (every worker loads every "
        "model) for no steady gain in the sweeps. `WORKERS=1` leaves a core to decoding alone and loses in both.",
        "- **TensorFlow threads on auto**: usable cores / workers, here 1 intra-op and 1 inter-op thread per worker. "
        "TensorFlow's own pools (the `TF_INTRA_OP_THREADS=2 TF_INTER_OP_THREADS=2` rows) make each worker claim "
        "every core, and the workers then fight over them.",
        "- **Connections balanced over the workers** (`service.worker.BalancedThreadWorker`): without it, gunicorn's "
        "workers race for new connections and keep-alive clients stay where they landed (13 and 3 of 16 in earlier "
        "runs), which with one TensorFlow thread per worker idles a core.",
        "- **`MAX_BATCH_SIZE=32`, `BATCH_TIMEOUT_MS=2`**: the batcher pads to 1, 2, 3, 4, 6, 8, 12, 16, 24, 32 rows; "
        "with 16 clients over 2 workers batches rarely pass 8, so the cap matters at higher concurrency, where the "
        "small CNN gains from large batches. `BATCH_TIMEOUT_MS=0` (run whatever is queued at once) came out faster "
        "in one run and slower in another: within the noise of a 15 s point on a shared host. 2 ms bounds what a "
        "lone request pays while letting concurrent ones join.",
        "- **Answers encoded by orjson** (`service/api/json.py`): 0.03 ms instead of 0.45 ms for MobileNetV2's 1,000 "
        "scores per image.",
        "",
        "## Method",
        "",
        "- Models are built by the script with random weights (the Keras MNIST example CNN; "
        "`keras.applications.MobileNetV2(weights=None)`, scaled -1..1 by its config file); nothing is downloaded. "
        "Random weights cost the same to compute as trained ones.",
        "- Each point is one wrk run (`bench/post.lua`) with N keep-alive connections, each sending its next "
        "request as soon as the previous answer arrived (closed loop), after a warm-up run; latency is wrk's, "
        "measured from sending to the full response. Errors count non-2xx answers, socket errors and timeouts.",
        "- The service runs as in production: `gunicorn wsgi:app` with the repository's `gunicorn.conf.py` "
        "(`service.worker.BalancedThreadWorker`: gunicorn's gthread worker that spreads connections evenly over the workers; no preload), settings from the environment as listed, `LOG_LEVEL=WARNING`. Every "
        "worker loads and warms up the model before `/readyz` answers.",
        "- Rows per worker come from the workers' `kerasserve_batch_rows` histograms (prometheus multiprocess "
        "files); connections per worker from the sockets each worker process holds.",
        "- Reproduce with `apt-get install -y wrk` and `.venv/bin/python bench/benchmark.py` (add `--quick` for a "
        "short run, `--models cnn` for one model, `--keep` to keep models, images and server logs).",
        "",
    ]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 8), squeeze=False)
    for column, result in enumerate(results):
        top, bottom = axes[0][column], axes[1][column]
        for name, style in (("service", "o-"), ("tutorial", "s--")):
            rows = result[name]
            x = [r["concurrency"] for r in rows]
            top.plot(x, [r["rps"] for r in rows], style, label=name)
            bottom.plot(x, [r["p99_ms"] for r in rows], style, label=name)
        top.axhline(result["limit_best"], color="grey", linestyle=":", label="in-process limit")
        top.set_title(result["case"]["title"])
        top.set_ylabel("requests/s")
        bottom.set_ylabel("p99 latency (ms)")
        bottom.axhline(result["case"]["max_p99_s"] * 1000, color="red", linestyle=":", label="p99 target")
        for axis in (top, bottom):
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xlabel("concurrent clients")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "build":
        build_models(Path(argv[1]))
        return 0
    if argv and argv[0] == "limit":
        print(
            json.dumps(measure_limit(Path(argv[1]), [int(b) for b in argv[2].split(",")], float(argv[3]), int(argv[4])))
        )
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run: concurrency 1,16, 5 s per point, no sweep")
    parser.add_argument("--models", default="cnn,mobilenet", help="comma-separated: cnn, mobilenet")
    parser.add_argument(
        "--backend",
        default="tensorflow",
        choices=("tensorflow", "openvino", "auto"),
        help="also measure the service with MODEL_BACKEND set to this (default: TensorFlow only)",
    )
    parser.add_argument("--concurrency", default=None, help="comma-separated client counts (default 1,2,4,8,16,32)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measured point (default 15; quick 5)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (models, images, server logs)")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in (args.concurrency or ("1,16" if args.quick else "1,2,4,8,16,32")).split(",")]
    args.duration = args.duration or (5.0 if args.quick else 15.0)
    args.limit_seconds = 1.0 if args.quick else 3.0
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get update && apt-get install -y wrk", file=sys.stderr)
        return 2
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/benchmark.py", *argv])
    started = dt.datetime.now(dt.UTC)
    args.load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    workdir = Path(tempfile.mkdtemp(prefix="kerasserve-bench-"))
    try:
        log(f"building models and images in {workdir}")
        run_python("build", str(workdir))
        results = [run_case(CASES[key], workdir, args) for key in args.models.split(",")]
    finally:
        if args.keep:
            log(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = write_report(results, args, command, started)
    args.output.write_text(report)
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.output.with_suffix(".png"))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

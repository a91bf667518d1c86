"""kerasserve benchmark: the service against fair yardsticks, all measured in one run.

Per model (a small CNN on 28x28 PNGs; MobileNetV2 on 640x480 JPEGs, and on 12-megapixel photos):

(a) **fair model limit**: one single-threaded process per core, each pinned to its core
    (`os.sched_setaffinity`), all running at once, their images/s summed, calling the same compiled
    model function the service uses (`service.runner.keras_signature`) on random tensors, per batch
    size: the bound for the service's own design (one single-threaded worker per core);
(b) **the service** (`gunicorn wsgi:app`, the repository's gunicorn.conf.py), with its rows per model
    call, padding fraction and model compute time read from its `/metrics`;
(c) **framework ceiling** (`bench/ceiling_app.py`): the same Flask + gunicorn stack and worker class
    (`service.worker.BalancedThreadWorker`, 2 workers) parsing the same multipart upload and
    answering a 10-score JSON, no model, no decode;
(d) **competent hand-written server** (`bench/competent_app.py`): Flask + gunicorn, one TensorFlow
    thread per worker, the compiled call per request, no batching;
(e) **tutorial app** (`bench/tutorial_app.py`): Flask, `model.predict` per request;

(b)-(e) are driven by wrk with the same multipart uploads (8 files in turn) at several concurrencies,
each point repeated (median and range). Then an open-loop run of the service at 50/80/95% of its
measured capacity (`bench/openloop.py`, constant arrival rate) with p50/p99/p99.9. Non-model CPU
per request = server CPU seconds / requests - model compute per row (from the metrics). Results go
to `docs/benchmarks.md` (with the ratios against the targets of issue 14), `docs/benchmarks.json`
and a plot, `docs/benchmarks.png`.

Models are built by this script with random weights (MobileNetV2 with `weights=None`); nothing is
downloaded. Needs wrk (`apt-get install -y wrk`) and matplotlib (requirements-dev.txt).

    .venv/bin/python bench/benchmark.py            # full run (about 30 minutes on 2 cores)
    .venv/bin/python bench/benchmark.py --quick    # short run (under 4 minutes): every yardstick, fewer points
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
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
OPENLOOP_SCRIPT = REPO / "bench" / "openloop.py"
TARGET_CONCURRENCY = 16
BOUNDARY = "kerasserve-bench-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
OPEN_LOOP_LOADS = (0.5, 0.8, 0.95)
"""Open-loop arrival rates, as fractions of the service's measured capacity."""
OPEN_LOOP_CONNECTIONS = 256
COMPETENT_THREADS = 4
"""gthread threads per worker of the competent server (gunicorn's sync workers, one request at a
time, served 16 wrk connections at a sixth of the rate in a trial: a new connection per request)."""
SERVERS = ("service", "competent", "ceiling", "tutorial")
"""The servers driven by wrk, in the order they run."""
PHOTO_12MP = (4000, 3000)


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
    image_glob: str
    image_type: str
    scale: str
    """Pixel scaling of the model (the competent server's): `unit` (x / 255) or `symmetric` (x / 127.5 - 1)."""
    service_env: dict[str, str]
    """Environment of the service's main run."""
    sweep: tuple[dict[str, str], ...]
    """Changes to `service_env` measured at 16 clients with `--sweep`."""
    fair_batches: tuple[int, ...]
    min_ratio_to_fair: float | None = None
    min_ratio_to_ceiling: float | None = None
    min_ratio_to_competent: float | None = None
    max_p99_s: float = 1.0
    photo_12mp: bool = False
    """Also measure 12-megapixel JPEG photos (non-model CPU per request against this case's)."""
    max_12mp_cpu_ratio: float = 2.0


COMMON_ENV = {"MAX_BATCH_SIZE": "32", "BATCH_TIMEOUT_MS": "0", "LOG_LEVEL": "WARNING"}
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
        image_glob="digit*.png",
        image_type="image/png",
        scale="unit",
        service_env=DEFAULTS,
        sweep=(
            TF_OWN_POOLS,
            {"WORKERS": "1"},
            {"BATCH_TIMEOUT_MS": "2"},
            {"THREADS": "8"},
            REUSE_PORT,
            {"WORKERS": "4", "THREADS": "8"},
        ),
        fair_batches=(1, 2, 4, 8, 16, 32),
        min_ratio_to_ceiling=0.60,
        min_ratio_to_competent=1.5,
        max_p99_s=0.025,
    ),
    "mobilenet": Case(
        key="mobilenet",
        title="MobileNetV2 (224x224x3, 1000 classes, weights=None)",
        file="mobilenet_v2.keras",
        images="640x480 RGB JPEG",
        image_glob="photo*.jpg",
        image_type="image/jpeg",
        scale="symmetric",
        service_env=DEFAULTS,
        sweep=(
            TF_OWN_POOLS,
            {"WORKERS": "1"},
            {"BATCH_TIMEOUT_MS": "2"},
            {"MAX_BATCH_SIZE": "8"},
        ),
        fair_batches=(1, 2, 4, 8, 16, 32),
        min_ratio_to_fair=0.85,
        min_ratio_to_competent=1.5,
        max_p99_s=0.200,
        photo_12mp=True,
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
    cpu_server_s: float = 0.0
    """CPU seconds used by the server's processes (master and workers) during the run."""
    cpu_server_cores: float = 0.0
    """The same in cores (1.0 = one core busy)."""
    cpu_client_cores: float = 0.0
    """CPU used by wrk."""
    cpu_other_cores: float = 0.0
    """CPU used by everything else on the host (other jobs): the noise in these numbers."""
    cpu_tf_threads_s: float = 0.0
    """Of `cpu_server_s`, what TensorFlow's own threads (named `tf_*`: its compute pools) used: the model's
    arithmetic, measured where it runs rather than inferred. Every other thread runs Python (and the C code
    it calls: decode, sockets, the model call's dispatch)."""
    model: dict[str, float] = field(default_factory=dict)
    """The service's own counters over the run (from /metrics): rows, calls, compute_s, padding_rows."""

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors + self.timeouts


# --------------------------------------------------------------------------------------------------
# Subprocess parts that import TensorFlow (the driver itself never does)
# --------------------------------------------------------------------------------------------------
def smooth_photo(rng, width: int, height: int, seed_scale: int):  # noqa: ANN001, ANN201 - numpy imported lazily
    """A synthetic photo: smooth colour fields, gradients and sensor-like noise (JPEGs of a realistic size)."""
    import numpy as np
    from PIL import Image

    coarse = rng.uniform(0, 255, (max(2, height // (40 * seed_scale)), max(2, width // (40 * seed_scale)), 3))
    field_ = np.asarray(
        Image.fromarray(coarse.astype(np.uint8), "RGB").resize((width, height), Image.Resampling.BICUBIC),
        dtype=np.float32,
    )
    y = np.linspace(-40, 40, height, dtype=np.float32)[:, None, None]
    x = np.linspace(-30, 30, width, dtype=np.float32)[None, :, None]
    noise = rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    return np.clip(field_ + y + x + noise, 0, 255).astype(np.uint8)


def small_cnn():
    """The Keras MNIST example's CNN (random weights): the benchmarks' small model."""
    import keras

    return keras.Sequential(
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


def build_models(folder: Path, photos_12mp: int) -> None:
    """Write both models, their configs and the request images into `folder`."""
    import keras

    keras.utils.set_random_seed(0)
    (folder / "models-cnn").mkdir(parents=True, exist_ok=True)
    (folder / "models-mobilenet").mkdir(parents=True, exist_ok=True)
    images = folder / "images"
    images.mkdir(exist_ok=True)
    small_cnn().save(folder / "models-cnn" / CASES["cnn"].file)
    mobilenet = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000)
    mobilenet.save(folder / "models-mobilenet" / CASES["mobilenet"].file)
    (folder / "models-mobilenet" / "mobilenet_v2.yaml").write_text("preprocessing:\n  scale: symmetric\n")
    build_images(images, photos_12mp)


def build_images(images: Path, photos_12mp: int) -> None:
    """8 digit PNGs, 8 640x480 photo JPEGs and `photos_12mp` 4000x3000 photo JPEGs."""
    import numpy as np
    from PIL import Image

    images.mkdir(parents=True, exist_ok=True)
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
    for i in range(photos_12mp):
        width, height = PHOTO_12MP
        Image.fromarray(smooth_photo(rng, width, height, 1 + i % 3), "RGB").save(images / f"big{i}.jpg", quality=90)


def fair_worker(model_path: Path, batches: list[int], slot_s: float, rounds: int, core: int) -> None:
    """One pinned, single-threaded process of the fair limit (driven over stdin/stdout by `measure_fair`).

    Loads the model, builds the service's compiled call, warms every batch size up, prints `READY`,
    reads the common start time (`time.time()`) from stdin, then runs each batch size in its own
    time slot (`slot_s`), every round, slots aligned across processes; prints one JSON line: images/s
    per batch size per round, and the process's CPU seconds.
    """
    os.sched_setaffinity(0, {core})
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras
    import numpy as np

    from service.runner import keras_signature

    model = keras.models.load_model(model_path, compile=False)
    signature, call = keras_signature(model)
    (tensor,) = signature.inputs
    rng = np.random.default_rng(core)
    inputs = {b: rng.uniform(0, 1, (b, *tensor.shape[1:])).astype(np.float32) for b in batches}
    for x in inputs.values():
        for _ in range(2):
            call({tensor.name: x})
    print("READY", flush=True)
    start = float(sys.stdin.readline())
    rates: dict[int, list[float]] = {b: [] for b in batches}
    cpu_per_row: dict[int, list[float]] = {b: [] for b in batches}
    cpu_started = time.process_time()
    for round_ in range(rounds):
        for j, batch in enumerate(batches):
            slot_start = start + (round_ * len(batches) + j) * slot_s
            delay = slot_start - time.time()
            if delay > 0:
                time.sleep(delay)
            began, cpu_began, calls = time.perf_counter(), time.process_time(), 0
            while calls < 1 or time.time() < slot_start + slot_s:
                call({tensor.name: inputs[batch]})
                calls += 1
            rates[batch].append(batch * calls / (time.perf_counter() - began))
            cpu_per_row[batch].append((time.process_time() - cpu_began) / (batch * calls))
    report = {
        "core": core,
        "images_per_s": rates,
        "cpu_s_per_row": cpu_per_row,
        "cpu_s": time.process_time() - cpu_started,
    }
    print(json.dumps(report), flush=True)


# --------------------------------------------------------------------------------------------------
# The fair limit: one pinned single-threaded process per core, at once
# --------------------------------------------------------------------------------------------------
def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def measure_fair(model_path: Path, batches: tuple[int, ...], slot_s: float, rounds: int) -> dict:
    """Start one `fair_worker` per usable core, start them together, sum their images/s per batch size."""
    cores = usable_cores()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    argv = [PYTHON, __file__, "fair", str(model_path), ",".join(map(str, batches)), str(slot_s), str(rounds)]
    procs = [
        subprocess.Popen(
            [*argv, str(core)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for core in cores
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"fair-limit worker failed:\n{proc.communicate()[1][-3000:]}")
        start = time.time() + 0.5
        host_before, wall_before = host_busy_ticks(), time.monotonic()
        reports = []
        for proc in procs:
            out, err = proc.communicate(f"{start}\n", timeout=600 + rounds * len(batches) * slot_s)
            if proc.returncode != 0:
                raise RuntimeError(f"fair-limit worker failed:\n{err[-3000:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        wall = time.monotonic() - wall_before
        own_s = sum(r["cpu_s"] for r in reports)
        other_s = (host_busy_ticks() - host_before) / CLOCK_TICKS - own_s
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    summed: dict[str, float] = {}
    ranges: dict[str, list[float]] = {}
    per_process: dict[str, float] = {}
    cpu_ms_per_row: dict[str, float] = {}
    for batch in batches:
        cpu_ms_per_row[str(batch)] = 1000 * statistics.median(
            value for r in reports for value in r["cpu_s_per_row"][str(batch)]
        )
        per_round = [sum(r["images_per_s"][str(batch)][k] for r in reports) for k in range(rounds)]
        summed[str(batch)] = statistics.median(per_round)
        ranges[str(batch)] = [min(per_round), max(per_round)]
        per_process[str(batch)] = statistics.median(value for r in reports for value in r["images_per_s"][str(batch)])
    best_batch = max(summed, key=lambda b: summed[b])
    return {
        "processes": len(cores),
        "images_per_s": summed,
        "range": ranges,
        "per_process": per_process,
        "cpu_ms_per_row": cpu_ms_per_row,
        "best": summed[best_batch],
        "best_batch": int(best_batch),
        "model_s_per_row_batch1": cpu_ms_per_row[str(batches[0])] / 1000 if batches[0] == 1 else None,
        "cpu_other_cores": round(max(other_s, 0.0) / wall, 2),
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


def service_server(
    case: Case, workdir: Path, settings: dict[str, str], models: Path | None = None
) -> AbstractContextManager[Server]:
    port = free_port()
    metrics_dir = Path(tempfile.mkdtemp(prefix="metrics-", dir=workdir))
    env = {
        **os.environ,
        **settings,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODELS_DIR": str(models or workdir / f"models-{case.key}"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    return serve(f"service-{case.key}", [GUNICORN, "wsgi:app"], env, port, workdir, ready_path="/readyz")


def app_server(kind: str, case: Case, workdir: Path, probe: bytes) -> AbstractContextManager[Server]:
    """The tutorial, competent or ceiling app under gunicorn (not the repository's gunicorn.conf.py)."""
    port = free_port()
    empty_config = workdir / "empty_gunicorn_conf.py"
    empty_config.write_text("")
    env = {
        **os.environ,
        "BENCH_MODEL": str(workdir / f"models-{case.key}" / case.file),
        "BENCH_SCALE": case.scale,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    workers = ["-w", str(len(usable_cores()))]  # one per core
    if kind == "competent":  # threads, so a worker decodes one request while another computes
        workers += ["-k", "gthread", "--threads", str(COMPETENT_THREADS)]
    if kind == "ceiling":  # the service's worker class and thread count
        workers = ["-w", "2", "-k", "service.worker.BalancedThreadWorker", "--threads", "16", "--keep-alive", "5"]
    argv = [GUNICORN, "-c", str(empty_config), *workers, "-b", f"127.0.0.1:{port}", "--timeout", "300"]
    argv += ["--log-level", "warning", f"bench.{kind}_app:app"]
    return serve(f"{kind}-{case.key}", argv, env, port, workdir, ready_path="/predict", probe=(probe, MULTIPART))


def settle(server: Server, body: bytes, workers: int = 2) -> None:
    """Send one request after another (each waits for a free worker) until the backlog is gone."""
    for _ in range(workers + 1):
        http_status(server.url + "/predict", data=body, content_type=MULTIPART, timeout=120)


def multipart_body(data: bytes, filename: str, content_type: str) -> bytes:
    """One file in the field `image` of a multipart/form-data body (boundary `BOUNDARY`)."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def write_bodies(images: list[Path], folder: Path, content_type: str) -> list[Path]:
    """The multipart request bodies of `images`, one file each (what wrk and the open-loop client send)."""
    folder.mkdir(parents=True, exist_ok=True)
    bodies = []
    for image in images:
        body = folder / f"{image.name}.multipart"
        body.write_bytes(multipart_body(image.read_bytes(), image.name, content_type))
        bodies.append(body)
    return bodies


def run_wrk(server: Server, bodies: list[Path], concurrency: int, seconds: float) -> dict:
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(WRK_SCRIPT)]
    argv += [server.url + "/predict", "--", MULTIPART, *map(str, bodies)]
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("BENCH_JSON "))
    return json.loads(line.removeprefix("BENCH_JSON "))


def run_open_loop(server: Server, bodies: list[Path], rate: float, seconds: float, warmup: float) -> dict:
    """One open-loop run (bench/openloop.py in its own process), with the CPU of server, client and others."""
    server_pids = [server.process.pid, *worker_pids(server.process.pid)]
    host_before, server_before, client_before = host_busy_ticks(), process_ticks(server_pids), children_seconds()
    argv = [
        PYTHON,
        str(OPENLOOP_SCRIPT),
        server.url + "/predict",
        MULTIPART,
        f"{rate:.1f}",
        f"{seconds:g}",
        f"{warmup:g}",
    ]
    argv += [str(OPEN_LOOP_CONNECTIONS), *map(str, bodies)]
    started = time.monotonic()
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - started
    host_s = (host_busy_ticks() - host_before) / CLOCK_TICKS
    server_s = (process_ticks(server_pids) - server_before) / CLOCK_TICKS
    client_s = children_seconds() - client_before
    line = next(line for line in output.splitlines() if line.startswith("OPENLOOP_JSON "))
    result = json.loads(line.removeprefix("OPENLOOP_JSON "))
    result["cpu_server_cores"] = round(server_s / wall, 2)
    result["cpu_client_cores"] = round(client_s / wall, 2)
    result["cpu_other_cores"] = round(max(host_s - server_s - client_s, 0.0) / wall, 2)
    return result


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


MODEL_COUNTERS = {
    "rows": "kerasserve_batch_rows_sum",
    "calls": "kerasserve_batch_rows_count",
    "compute_s": "kerasserve_batch_compute_seconds_sum",
    "padding_rows": "kerasserve_padding_rows_total",
}
"""The service's own counters the benchmark reads (summed over models and workers)."""


def parse_model_counters(text: str) -> dict[str, float]:
    """The `MODEL_COUNTERS` of a Prometheus text exposition, summed over their labels."""
    wanted = {sample: key for key, sample in MODEL_COUNTERS.items()}
    found = dict.fromkeys(MODEL_COUNTERS, 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        if name in wanted:
            found[wanted[name]] += float(line.rsplit(" ", 1)[1])
    return found


def model_counters(server: Server) -> dict[str, float]:
    """The service's model counters now (empty for servers without /metrics)."""
    if server.metrics_dir is None:
        return {}
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        return parse_model_counters(response.read().decode())


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


def tf_thread_ticks(pids: list[int]) -> int:
    """CPU ticks of the threads of `pids` that TensorFlow named `tf_*` (its compute and inter-op pools)."""
    total = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue
            head, _, rest = stat.rpartition(")")
            if head.split("(", 1)[1].startswith("tf_"):
                fields = rest.split()
                total += int(fields[11]) + int(fields[12])
    return total


def decode_floor(images: list[Path], rounds: int = 5) -> dict[str, float]:
    """CPU ms per image, one thread, of the decode alone: libjpeg through Pillow at the reduced scale the service asks
    for (`draft`, 224x224), and the service's whole `decode_images` (that, plus resize and pixel scaling) for
    MobileNetV2's input. Best of `rounds` passes over the images: what no server can go below with this decoder."""
    import io

    from PIL import Image

    if str(REPO) not in sys.path:  # this script runs as `python bench/benchmark.py`: the repository is not on the path
        sys.path.insert(0, str(REPO))
    from service.preprocessing import DecodeBudget, ImageSpec, decode_images

    spec = ImageSpec("x", 224, 224, 3, False, True, "stretch", "symmetric", (), (), "float32")
    datas = [path.read_bytes() for path in images]

    def libjpeg(data: bytes) -> None:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (224, 224))
        image.load()

    def service(data: bytes) -> None:
        decode_images([data], spec, max_pixels=10**9, budget=DecodeBudget(max_pixels=None, max_seconds=None))

    floor = {}
    for name, work in (("libjpeg_ms", libjpeg), ("decode_images_ms", service)):
        best = float("inf")
        for _ in range(rounds):
            start = time.thread_time()
            for data in datas:
                work(data)
            best = min(best, (time.thread_time() - start) / len(datas))
        floor[name] = best * 1000
    return floor


def children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    server: Server,
    bodies: list[Path],
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
    counters_before = model_counters(server)
    server_pids = [server.process.pid, *worker_pids(server.process.pid)]
    host_before, server_before, client_before = host_busy_ticks(), process_ticks(server_pids), children_seconds()
    tf_before = tf_thread_ticks(server_pids)
    raw = run_wrk(server, bodies, concurrency, seconds)
    host_s = (host_busy_ticks() - host_before) / CLOCK_TICKS
    server_s = (process_ticks(server_pids) - server_before) / CLOCK_TICKS
    tf_s = (tf_thread_ticks(server_pids) - tf_before) / CLOCK_TICKS
    client_s = children_seconds() - client_before
    counters_after = model_counters(server)
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
        cpu_server_s=round(server_s, 3),
        cpu_server_cores=round(server_s / seconds_run, 2),
        cpu_client_cores=round(client_s / seconds_run, 2),
        cpu_other_cores=round(max(host_s - server_s - client_s, 0.0) / seconds_run, 2),
        cpu_tf_threads_s=round(tf_s, 3),
        model={k: round(counters_after[k] - counters_before.get(k, 0.0), 6) for k in counters_after},
    )


def fair_s_per_row(fair: dict, rows: float) -> float:
    """Model CPU time per row of one single-threaded fair-limit process at `rows` rows per call
    (interpolated between the measured batch sizes, on a log scale of rows)."""
    import math

    points = sorted((int(b), ms / 1000) for b, ms in fair["cpu_ms_per_row"].items())
    if rows <= points[0][0]:
        return points[0][1]
    for (b0, t0), (b1, t1) in zip(points, points[1:]):
        if rows <= b1:
            w = (math.log(rows) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return t0 + w * (t1 - t0)
    return points[-1][1]


def summarise(runs: list[LoadResult], model_s_per_row: float | None) -> dict:
    """Median and range of the repetitions of one point, and the CPU per request.

    Non-model CPU per request: the server's CPU seconds over its requests, less the model's compute
    per row, from the service's own counters (`kerasserve_batch_compute_seconds` / rows) or, for
    servers without them, `model_s_per_row` (the fair limit's single-threaded batch-1 time); none
    for a server without a model.
    """
    rps = [r.rps for r in runs]
    p99 = [r.p99_ms for r in runs]
    cpu_per_request = [r.cpu_server_s / r.requests for r in runs if r.requests]
    model_per_row: list[float] = []
    for r in runs:
        if r.model.get("rows"):
            model_per_row.append(r.model["compute_s"] / r.model["rows"])
        elif model_s_per_row is not None:
            model_per_row.append(model_s_per_row)
    rows = sum(r.model.get("rows", 0.0) for r in runs)
    calls = sum(r.model.get("calls", 0.0) for r in runs)
    padding = sum(r.model.get("padding_rows", 0.0) for r in runs)
    summary = {
        "server": runs[0].server,
        "concurrency": runs[0].concurrency,
        "reps": len(runs),
        "rps": statistics.median(rps),
        "rps_range": [min(rps), max(rps)],
        "p50_ms": statistics.median(r.p50_ms for r in runs),
        "p99_ms": statistics.median(p99),
        "p99_range": [min(p99), max(p99)],
        "errors": sum(r.errors for r in runs),
        "cpu_server_cores": statistics.median(r.cpu_server_cores for r in runs),
        "cpu_client_cores": statistics.median(r.cpu_client_cores for r in runs),
        "cpu_other_cores": statistics.median(r.cpu_other_cores for r in runs),
        "cpu_ms_per_request": statistics.median(cpu_per_request) * 1000 if cpu_per_request else None,
        "model_ms_per_row": statistics.median(model_per_row) * 1000 if model_per_row else None,
        "rows_per_call": rows / calls if calls else None,
        # Measured by thread: TensorFlow's compute threads per row (rows from the service's counters, else one per
        # request), every other thread per request. None for a server whose model does not run on `tf_*` threads.
        "tf_threads_ms_per_row": _median_or_none(
            [1000 * r.cpu_tf_threads_s / (r.model.get("rows") or r.requests) for r in runs if r.cpu_tf_threads_s]
        ),
        "other_threads_ms_per_request": _median_or_none(
            [
                1000 * (r.cpu_server_s - r.cpu_tf_threads_s) / r.requests
                for r in runs
                if r.requests and r.cpu_tf_threads_s
            ]
        ),
        "padding_fraction": padding / (rows + padding) if rows + padding else None,
        "runs": [asdict(r) for r in runs],
    }
    if summary["cpu_ms_per_request"] is not None:
        summary["non_model_cpu_ms"] = summary["cpu_ms_per_request"] - (summary["model_ms_per_row"] or 0.0)
    else:
        summary["non_model_cpu_ms"] = None
    return summary


def _median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def add_fair_model_time(point: dict, fair: dict) -> None:
    """Non-model CPU per request again, with the model's CPU time per row taken from the fair limit's
    pinned single-threaded processes at the point's rows per call instead of the service's own
    compute timer (which is wall time, so on a busy host it also counts waits for the CPU and the GIL)."""
    rows = point.get("rows_per_call") or 1.0
    point["fair_model_ms_per_row"] = fair_s_per_row(fair, rows) * 1000
    point["non_model_cpu_fair_ms"] = (
        point["cpu_ms_per_request"] - point["fair_model_ms_per_row"] if point["cpu_ms_per_request"] else None
    )


def run_python(*args: str) -> str:
    """Run this script's TensorFlow part in a fresh interpreter; return its stdout (stderr on failure)."""
    done = subprocess.run(
        [PYTHON, __file__, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


def point_line(case: Case, summary: dict) -> str:
    extra = ""
    if summary.get("non_model_cpu_ms") is not None:
        extra = f" CPU/req {summary['cpu_ms_per_request']:.2f} ms, non-model {summary['non_model_cpu_ms']:.2f} ms"
    if summary.get("non_model_cpu_fair_ms") is not None:
        extra += f" ({summary['non_model_cpu_fair_ms']:.2f} ms with the fair model CPU)"
    if summary.get("rows_per_call"):
        extra += f", rows/call {summary['rows_per_call']:.1f}, padding {summary['padding_fraction']:.0%}"
    return (
        f"{case.key}: {summary['server']:9s} c={summary['concurrency']:3d} {summary['rps']:8.1f} req/s "
        f"({summary['rps_range'][0]:.0f}-{summary['rps_range'][1]:.0f}) p50 {summary['p50_ms']:7.1f} ms "
        f"p99 {summary['p99_ms']:7.1f} ms errors {summary['errors']}{extra}"
    )


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def sweep_points(
    server: Server,
    bodies: list[Path],
    args: argparse.Namespace,
    settings: dict[str, str],
    model_s_per_row: float | None,
    concurrencies: list[int],
) -> list[dict]:
    """Every concurrency, `args.reps` times (repetitions interleaved), summarised per concurrency."""
    runs: dict[int, list[LoadResult]] = {c: [] for c in concurrencies}
    for _ in range(args.reps):
        for concurrency in concurrencies:
            runs[concurrency].append(
                measure(server, bodies, concurrency, args.duration, settings, spread=concurrency == TARGET_CONCURRENCY)
            )
    return [summarise(runs[c], model_s_per_row) for c in concurrencies]


def run_case(case: Case, workdir: Path, args: argparse.Namespace) -> dict:
    images = sorted((workdir / "images").glob(case.image_glob))
    bodies = write_bodies(images, workdir / "bodies", case.image_type)
    model_path = workdir / f"models-{case.key}" / case.file
    batches = case.fair_batches if not args.quick else tuple(b for b in case.fair_batches if b in (1, 8, 32))
    log(f"{case.key}: fair limit, {len(usable_cores())} pinned single-threaded processes")
    fair = measure_fair(model_path, batches, args.fair_slot_s, args.reps)
    log(
        f"{case.key}: fair limit {fair['best']:.1f} images/s at batch {fair['best_batch']} "
        f"(per batch: {', '.join(f'{b}: {v:.0f}' for b, v in fair['images_per_s'].items())})"
    )
    model_s_per_row = fair["model_s_per_row_batch1"]
    result: dict = {"case": asdict(case), "fair": fair, "open_loop": [], "photo_12mp": None, "sweep": []}
    for kind in args.servers:
        if kind == "service":
            context = service_server(case, workdir, dict(case.service_env))
        else:
            context = app_server(kind, case, workdir, bodies[0].read_bytes())
        with context as server:
            # Every worker warm, every thread started; then wait until the server is idle again (sync
            # workers finish what wrk left queued: the tutorial's first predict takes seconds).
            run_wrk(server, bodies, TARGET_CONCURRENCY if kind != "tutorial" else 2, args.warm_s)
            settle(server, bodies[0].read_bytes())
            settings = dict(case.service_env) if kind == "service" else {"app": f"bench/{kind}_app.py"}
            points = sweep_points(
                server, bodies, args, settings, None if kind == "ceiling" else model_s_per_row, args.concurrency
            )
            for point in points:
                add_fair_model_time(point, fair)
                log(point_line(case, point))
            result[kind] = points
            if kind == "service":
                capacity = max(p["rps"] for p in points)
                for load in OPEN_LOOP_LOADS:
                    row = run_open_loop(server, bodies, capacity * load, args.open_loop_s, args.warm_s)
                    row["load"] = load
                    log(
                        f"{case.key}: open loop {load:.0%} of {capacity:.0f} req/s: {row['achieved_rps']:.1f} req/s "
                        f"p50 {row['p50_ms']:.1f} p99 {row['p99_ms']:.1f} p99.9 {row['p999_ms']:.1f} ms, "
                        f"{row['non2xx'] + row['errors']} errors, {row['dropped']} dropped, "
                        f"client {row['cpu_client_cores']} cores"
                    )
                    result["open_loop"].append(row)
                if case.photo_12mp and args.photos_12mp:
                    big = write_bodies(sorted((workdir / "images").glob("big*.jpg")), workdir / "bodies", "image/jpeg")
                    run_wrk(server, big, TARGET_CONCURRENCY, args.warm_s)
                    settle(server, big[0].read_bytes())
                    photo = sweep_points(server, big, args, settings, None, [TARGET_CONCURRENCY])[0]
                    add_fair_model_time(photo, fair)
                    photo["jpeg_bytes"] = statistics.median(p.stat().st_size for p in workdir.glob("images/big*.jpg"))
                    photo["decode_floor"] = {
                        "12mp": decode_floor(sorted((workdir / "images").glob("big*.jpg"))),
                        "640x480": decode_floor(sorted((workdir / "images").glob(case.image_glob))),
                    }
                    log(point_line(case, photo).replace(": service ", ": 12 MP   "))
                    result["photo_12mp"] = photo
    result["backend"] = []
    if args.backend != "tensorflow" and "service" in args.servers:
        # The same service on the compiled backend, in the same run, so its rows sit next to the
        # TensorFlow fair limit and the service on TensorFlow measured above.
        settings = {**case.service_env, "MODEL_BACKEND": args.backend, "BACKEND_CACHE_DIR": str(workdir / "backends")}
        models = None
        if args.precision != "fp32":
            # Precision is a per-model config key: a copy of the models folder whose config asks for it.
            models = workdir / f"models-{case.key}-{args.precision}"
            shutil.copytree(workdir / f"models-{case.key}", models, dirs_exist_ok=True)
            config = models / Path(case.file).with_suffix(".yaml").name
            previous = config.read_text() if config.exists() else ""
            config.write_text(previous + f"precision: {args.precision}\n")
        with service_server(case, workdir, settings, models) as server:
            run_wrk(server, bodies, TARGET_CONCURRENCY, args.warm_s)
            settle(server, bodies[0].read_bytes())
            points = sweep_points(server, bodies, args, settings, model_s_per_row, args.concurrency)
            for point in points:
                add_fair_model_time(point, fair)
                log(point_line(case, point).replace(": service ", f": {args.backend} "))
            result["backend"] = points
            result["backend_precision"] = args.precision
    if args.sweep:
        for variant in case.sweep:
            settings = {**case.service_env, **variant}
            with service_server(case, workdir, settings) as server:
                run_wrk(server, bodies, TARGET_CONCURRENCY, args.warm_s)
                row = summarise(
                    [measure(server, bodies, TARGET_CONCURRENCY, args.duration, settings, spread=True)], None
                )
            log(f"{case.key}: sweep {variant} -> {row['rps']:.1f} req/s p99 {row['p99_ms']:.1f} ms")
            result["sweep"].append(row)
    return result


def at(rows: list[dict] | None, concurrency: int) -> dict | None:
    return next((r for r in rows or [] if r["concurrency"] == concurrency), None)


def ratios(result: dict) -> dict[str, float | None]:
    """The service's throughput at 16 clients over each yardstick's (None when one is missing)."""
    service = at(result.get("service"), TARGET_CONCURRENCY)
    if service is None:
        return {}
    found: dict[str, float | None] = {
        "fair": service["rps"] / result["fair"]["best"] if result["fair"]["best"] else None
    }
    for kind in ("ceiling", "competent", "tutorial"):
        other = at(result.get(kind), TARGET_CONCURRENCY)
        found[kind] = service["rps"] / other["rps"] if other and other["rps"] else None
    return found


def verdicts(result: dict) -> list[tuple[str, bool]]:
    """The issue's targets at 16 clients, each with whether it was met."""
    case = result["case"]
    service = at(result.get("service"), TARGET_CONCURRENCY)
    if service is None:
        return []
    found = ratios(result)
    checks = []
    for key, name, target in (
        ("fair", "the fair model limit", case["min_ratio_to_fair"]),
        ("ceiling", "the framework ceiling", case["min_ratio_to_ceiling"]),
        ("competent", "the competent server", case["min_ratio_to_competent"]),
    ):
        if target is not None and found.get(key) is not None:
            ratio = found[key]
            checks.append((f"throughput {ratio:.2f}x {name} (target >= {target:.2f}x)", ratio >= target))
    checks.append(
        (
            f"p99 {service['p99_ms']:.1f} ms (target <= {case['max_p99_s'] * 1000:.0f} ms)",
            service["p99_ms"] <= case["max_p99_s"] * 1000,
        )
    )
    checks.append((f"{service['errors']} non-2xx responses or socket errors (target 0)", service["errors"] == 0))
    photo = result.get("photo_12mp")
    key = "non_model_cpu_fair_ms"  # model CPU from the fair limit: the same per row for both image sizes
    if photo and photo.get(key) is not None and service.get(key):
        ratio = photo[key] / service[key]
        checks.append(
            (
                f"12 MP JPEG: non-model CPU {photo[key]:.2f} ms per request, {ratio:.2f}x the "
                f"640x480 case's {service[key]:.2f} ms (target <= {case['max_12mp_cpu_ratio']:.1f}x)"
                + _floor_text(photo.get("decode_floor")),
                ratio <= case["max_12mp_cpu_ratio"],
            )
        )
    return checks


def _floor_text(floor: dict | None) -> str:
    """What the decoder alone needs for the two image sizes, one thread: the floor under the 12 MP target."""
    if not floor:
        return ""
    big, small = floor["12mp"], floor["640x480"]
    return (
        f"; the decode alone, one thread: libjpeg at reduced scale {big['libjpeg_ms']:.2f} against "
        f"{small['libjpeg_ms']:.2f} ms ({big['libjpeg_ms'] / small['libjpeg_ms']:.1f}x), the service's "
        f"decode_images {big['decode_images_ms']:.2f} against {small['decode_images_ms']:.2f} ms"
    )


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


def fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def with_range(point: dict | None, key: str) -> str:
    """`median (min-max)` of a summarised point's `rps` or `p99`, or `-`."""
    if point is None:
        return "-"
    low, high = point[f"{key}_range"]
    key = "p99_ms" if key == "p99" else key
    if point["reps"] == 1:
        return f"{point[key]:.1f}"
    return f"{point[key]:.1f} ({low:.0f}-{high:.0f})"


def headline(results: list[dict]) -> list[str]:
    """The ratios at 16 clients against every yardstick, one row per model: what the README quotes."""
    lines = [
        "| model | service req/s | p99 ms | vs fair limit | vs framework ceiling | vs competent server | vs tutorial | targets met |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for result in results:
        service = at(result.get("service"), TARGET_CONCURRENCY)
        if service is None:
            continue
        found = ratios(result)
        checks = verdicts(result)
        lines.append(
            f"| {result['case']['title']} | {service['rps']:.1f} | {service['p99_ms']:.1f} | "
            f"{fmt(found.get('fair'), '.2f', 'x')} | {fmt(found.get('ceiling'), '.2f', 'x')} | "
            f"{fmt(found.get('competent'), '.2f', 'x')} | {fmt(found.get('tutorial'), '.1f', 'x')} | "
            f"{sum(ok for _, ok in checks)} of {len(checks)} |"
        )
    return lines


KEPT_HEADINGS = ("## Where the non-model CPU goes", "## gRPC beside REST")
"""Hand-written sections of docs/benchmarks.md (from profiles) that a new run carries over unchanged."""


def kept_sections(old_report: str) -> str:
    """The `KEPT_HEADINGS` sections of the previous report, each up to the next `## ` heading."""
    kept = []
    for heading in KEPT_HEADINGS:
        start = old_report.find(heading + "\n")
        if start < 0:
            continue
        end = old_report.find("\n## ", start + len(heading))
        kept.append(old_report[start : end if end >= 0 else len(old_report)].rstrip() + "\n")
    return "\n".join(kept)


def case_section(result: dict, args: argparse.Namespace) -> list[str]:
    case = result["case"]
    fair = result["fair"]
    lines = [
        f"## {case['title']}, {case['images']}",
        "",
        f"**Fair model limit** ({fair['processes']} pinned single-threaded processes at once, summed; other jobs used "
        f"{fair['cpu_other_cores']:.2f} cores meanwhile): **{fair['best']:.1f} images/s at batch {fair['best_batch']}**.",
        "",
        "| batch | summed images/s (range) | one process images/s | model CPU ms per row |",
        "|---:|---:|---:|---:|",
    ]
    for batch, value in fair["images_per_s"].items():
        low, high = fair["range"][batch]
        lines.append(
            f"| {batch} | {value:.1f} ({low:.0f}-{high:.0f}) | {fair['per_process'][batch]:.1f} | "
            f"{fair['cpu_ms_per_row'][batch]:.3f} |"
        )
    lines += [
        "",
        f"Closed loop (wrk), requests/s and p99 ms: median of {args.reps} (range). Service settings: "
        f"`{env_text(case['service_env'])}`.",
        "",
        "| clients | " + " | ".join(f"{k} req/s | {k} p99 ms" for k in SERVERS) + " | errors (all) |",
        "|---:|" + "---:|---:|" * len(SERVERS) + "---:|",
    ]
    for concurrency in args.concurrency:
        cells = []
        errors = 0
        for kind in SERVERS:
            point = at(result.get(kind), concurrency)
            cells += [with_range(point, "rps"), with_range(point, "p99")]
            errors += point["errors"] if point else 0
        lines.append(f"| {concurrency} | " + " | ".join(cells) + f" | {errors} |")
    lines += [
        "",
        "Where the CPU goes, per request (server processes' CPU from /proc; model compute from the service's "
        "`kerasserve_batch_compute_seconds` / `kerasserve_batch_rows`, for the competent server the fair "
        "limit's single-threaded batch-1 CPU time per row). The service's compute timer is wall time: it also "
        "counts the batcher thread's waits for the GIL and, on a busy host, for a CPU, so the bold column "
        "subtracts instead the model's CPU time per row measured by the fair limit's pinned processes at the "
        "service's rows per call:",
        "",
        "| clients | service rows per call | padding | service CPU ms | model ms per row (metrics) | "
        "non-model CPU ms (metrics) | fair model CPU ms per row | **non-model CPU ms (fair model CPU)** | competent CPU ms | competent non-model ms | ceiling CPU ms | "
        "cores: server / wrk / other |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    by_thread = [
        "",
        "The same CPU measured by thread (`/proc/PID/task`): TensorFlow runs the model's arithmetic on its own "
        "threads, named `tf_*`, so their CPU is the model's compute as it runs in each server, beside the fair "
        "limit's; every other thread runs Python and the C code it calls (sockets, parsing, decode, the model "
        "call's dispatch):",
        "",
        "| clients | service: TF threads ms per row | fair model CPU ms per row | service: other threads ms per "
        "request | competent: TF threads ms per row | competent: other threads ms per request |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for concurrency in args.concurrency:
        service = at(result.get("service"), concurrency)
        competent = at(result.get("competent"), concurrency)
        ceiling = at(result.get("ceiling"), concurrency)
        if service is None:
            continue
        lines.append(
            f"| {concurrency} | {fmt(service['rows_per_call'])} | {fmt(service['padding_fraction'], '.0%')} | "
            f"{fmt(service['cpu_ms_per_request'], '.2f')} | {fmt(service['model_ms_per_row'], '.2f')} | "
            f"{fmt(service['non_model_cpu_ms'], '.2f')} | {fmt(service.get('fair_model_ms_per_row'), '.2f')} | "
            f"**{fmt(service.get('non_model_cpu_fair_ms'), '.2f')}** | "
            f"{fmt(competent and competent['cpu_ms_per_request'], '.2f')} | "
            f"{fmt(competent and competent['non_model_cpu_ms'], '.2f')} | "
            f"{fmt(ceiling and ceiling['cpu_ms_per_request'], '.2f')} | "
            f"{service['cpu_server_cores']:.2f} / {service['cpu_client_cores']:.2f} / {service['cpu_other_cores']:.2f} |"
        )
        by_thread.append(
            f"| {concurrency} | {fmt(service.get('tf_threads_ms_per_row'), '.2f')} | "
            f"{fmt(service.get('fair_model_ms_per_row'), '.2f')} | "
            f"{fmt(service.get('other_threads_ms_per_request'), '.2f')} | "
            f"{fmt(competent and competent.get('tf_threads_ms_per_row'), '.2f')} | "
            f"{fmt(competent and competent.get('other_threads_ms_per_request'), '.2f')} |"
        )
    lines += by_thread
    if result["open_loop"]:
        lines += [
            "",
            f"Open loop (constant arrival rate, `bench/openloop.py`, {args.open_loop_s:g} s each; latency from when "
            "each request was due):",
            "",
            "| load | asked req/s | answered req/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | dropped | "
            "cores: server / client / other |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in result["open_loop"]:
            lines.append(
                f"| {row['load']:.0%} | {row['rate']:.1f} | {row['achieved_rps']:.1f} | {row['p50_ms']:.1f} | "
                f"{row['p99_ms']:.1f} | {row['p999_ms']:.1f} | {row['max_ms']:.1f} | {row['non2xx'] + row['errors']} | "
                f"{row['dropped']} | {row['cpu_server_cores']:.2f} / {row['cpu_client_cores']:.2f} / "
                f"{row['cpu_other_cores']:.2f} |"
            )
    photo = result.get("photo_12mp")
    if photo:
        lines += [
            "",
            f"**12-megapixel JPEG photos** ({PHOTO_12MP[0]}x{PHOTO_12MP[1]}, synthetic: smooth colour fields, "
            f"gradients and noise, median {photo['jpeg_bytes'] / 1e6:.1f} MB) at {TARGET_CONCURRENCY} clients: "
            f"{with_range(photo, 'rps')} req/s, p99 {with_range(photo, 'p99')} ms, {photo['errors']} errors; "
            f"CPU {fmt(photo['cpu_ms_per_request'], '.2f')} ms per request of which "
            f"**{fmt(photo.get('non_model_cpu_fair_ms'), '.2f')} ms non-model** (fair model CPU; "
            f"{fmt(photo['non_model_cpu_ms'], '.2f')} ms with the service's compute timer).",
        ]
    lines += ["", f"Targets at {TARGET_CONCURRENCY} clients (issue 14):", ""]
    for text, ok in verdicts(result):
        lines.append(f"- {'met' if ok else '**missed**'}: {text}")
    service16 = at(result.get("service"), TARGET_CONCURRENCY)
    if service16:
        last = service16["runs"][-1]
        if last["per_worker_requests"]:
            lines.append(
                "- rows per worker (last repetition): "
                + ", ".join(map(str, sorted(last["per_worker_requests"].values())))
                + "; connections held per worker: "
                + ", ".join(f"{v:g}" for v in last["per_worker_connections"].values())
            )
    if result.get("backend"):
        settings = result["backend"][0]["runs"][0]["settings"]
        lines += [
            "",
            f"The same service with `{env_text({k: v for k, v in settings.items() if k.startswith('MODEL_BACKEND')})}`"
            f"{' and the model config key `precision: ' + result['backend_precision'] + '`' if result.get('backend_precision', 'fp32') != 'fp32' else ''} "
            "(same run; `GET /models` says which backend each version runs: one that fails the equivalence gate "
            "serves on TensorFlow):",
            "",
            "| clients | req/s | p99 ms | errors | / TensorFlow fair limit | / service on TensorFlow |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for row in result["backend"]:
            tf_row = at(result.get("service"), row["concurrency"])
            vs = f"{row['rps'] / tf_row['rps']:.2f}x" if tf_row and tf_row["rps"] else "-"
            fair_best = result["fair"]["best"]
            lines.append(
                f"| {row['concurrency']} | {row['rps']:.1f} | {row['p99_ms']:.1f} | {row['errors']} | "
                f"{fmt(row['rps'] / fair_best if fair_best else None, '.2f', 'x')} | {vs} |"
            )
    if result["sweep"]:
        lines += [
            "",
            f"Settings sweep at {TARGET_CONCURRENCY} clients (one run each; first row: the settings above):",
            "",
            "| settings | req/s | p99 ms | errors | rows per call | non-model CPU ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in [service16, *result["sweep"]]:
            if row is not None:
                settings = row["runs"][0]["settings"]
                lines.append(
                    f"| `{env_text(settings)}` | {row['rps']:.1f} | {row['p99_ms']:.1f} | {row['errors']} | "
                    f"{fmt(row['rows_per_call'])} | {fmt(row['non_model_cpu_ms'], '.2f')} |"
                )
    lines.append("")
    return lines


def env_text(settings: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items() if k != "LOG_LEVEL")


METHOD = """## Method

- **Fair model limit**: `bench/benchmark.py fair` in one process per usable core, each pinned to its core
  (`os.sched_setaffinity`) with one TensorFlow intra-op and one inter-op thread, calling the compiled function
  the service builds (`service.runner.keras_signature`) on random tensors. The processes load and warm up, then
  start at one instant and run every batch size in time slots aligned across them, round after round; a batch
  size's figure is the sum over processes, median over rounds. This is the bound of the service's design (one
  single-threaded worker per core); TensorFlow's own thread pools in one process reach less on this machine.
- **Framework ceiling** (`bench/ceiling_app.py`): Flask under gunicorn with `service.worker.BalancedThreadWorker`,
  2 workers, 16 threads, parsing the same multipart upload (`request.files`) and answering 10 scores as JSON.
- **Competent server** (`bench/competent_app.py`): gunicorn gthread workers, one per core, 4 threads each, one
  TensorFlow thread per worker, a `tf.function` with a fixed input signature called per request (batch of one),
  Pillow decode and resize. (Sync workers, one request at a time and a new connection per request, served
  16 wrk connections at a sixth of the rate in a trial: not what a competent engineer ships.)
- **Tutorial app** (`bench/tutorial_app.py`): gunicorn sync workers, one per core, `model.predict` per request.
- Every request is one image in the `image` field of a multipart/form-data body (8 different files in turn),
  POSTed to `/predict`, with a fresh random boundary per request as requests, curl and browsers send (a
  repeated boundary let werkzeug's parser, which compiles two regular expressions per boundary, hit Python's
  regex cache: every server here looked about 0.24 ms of CPU per request cheaper than with real clients,
  until 2026-11-29). Closed loop: wrk (`bench/post.lua`, 1 thread, N keep-alive connections, 10 s timeout),
  each point repeated, repetitions interleaved over the concurrencies; the tables give the median and the range.
  Open loop: `bench/openloop.py` (asyncio, standard library), a constant arrival rate at 50/80/95% of the
  service's best closed-loop median, at most 256 requests in flight (more are counted as dropped), latency
  counted from when each request was due (no coordinated omission). wrk2 is not packaged by Debian, and
  `hey -q` rate-limits closed-loop workers, hence our own.
- **CPU per request**: the server's processes' CPU (utime + stime from /proc) over the requests answered.
  **Non-model CPU per request**: that, less the model's compute per row, two ways: the service's own
  `kerasserve_batch_compute_seconds_sum` / `kerasserve_batch_rows_sum` (read from `/metrics` before and after
  each run), and the model's CPU time per row in the fair limit's pinned single-threaded processes at the
  service's rows per call (interpolated between batch sizes). The first is wall time around the call, which
  also counts waits for the GIL and, on a busy host, for a CPU; the second is what the targets use. Rows per
  call and the padding fraction come from the service's counters (`kerasserve_padding_rows_total`).
- Models are built by the script with random weights (the Keras MNIST example CNN;
  `keras.applications.MobileNetV2(weights=None)`, scaled -1..1 by its config file); nothing is downloaded.
  The 12-megapixel photos are synthetic (smooth colour fields, gradients, noise) so their JPEGs have a
  realistic size.
- The service runs as in production: `gunicorn wsgi:app` with the repository's `gunicorn.conf.py`, settings from
  the environment as listed, `LOG_LEVEL=WARNING`; every worker loads and warms up the model before `/readyz`.
- The `cores` columns say how much CPU the server, the client and everything else on the host used (from
  /proc): on a shared host, `other` is the noise in that row.
- Reproduce with `apt-get install -y wrk` and `make bench` (`BENCH_ARGS=--quick` for a short run; the script's
  options: `--models cnn`, `--servers service,ceiling`, `--reps`, `--sweep`, `--keep`).
"""


def write_report(
    results: list[dict], args: argparse.Namespace, command: str, started: dt.datetime, kept: str = ""
) -> str:
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
        + f"; {args.duration:g} s per point, {args.reps} repetitions."
        + (" Quick run: fewer points and repetitions." if args.quick else ""),
        "",
        "![throughput and p99 latency against concurrency](benchmarks.png)",
        "",
        f"The service against each yardstick at {TARGET_CONCURRENCY} clients (medians; targets of issue 14 below "
        "each model):",
        "",
        *headline(results),
        "",
        "**fair limit**: the model alone, one pinned single-threaded process per core, summed (the bound of our "
        "design); **framework ceiling**: Flask + gunicorn with our worker class, the same upload, no model; "
        "**competent server**: Flask + gunicorn, one TensorFlow thread per worker, the compiled call per request, "
        "no batching; **tutorial**: `model.predict` per request. Details in [Method](#method).",
        "",
    ]
    for result in results:
        lines += case_section(result, args)
    if kept:
        lines += [kept.rstrip(), ""]
    lines += [METHOD]
    return "\n".join(lines).rstrip() + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 8), squeeze=False)
    styles = {"service": "o-", "competent": "^-.", "ceiling": "d:", "tutorial": "s--"}
    for column, result in enumerate(results):
        top, bottom = axes[0][column], axes[1][column]
        for name, style in styles.items():
            rows = result.get(name) or []
            if not rows:
                continue
            x = [r["concurrency"] for r in rows]
            rps = [r["rps"] for r in rows]
            spread = [[r["rps"] - r["rps_range"][0] for r in rows], [r["rps_range"][1] - r["rps"] for r in rows]]
            top.errorbar(x, rps, yerr=spread, fmt=style, label=name, capsize=3)
            bottom.plot(x, [r["p99_ms"] for r in rows], style, label=name)
        top.axhline(result["fair"]["best"], color="grey", linestyle=":", label="fair model limit")
        top.set_title(result["case"]["title"])
        top.set_ylabel("requests/s (median, range)")
        bottom.set_ylabel("p99 latency (ms)")
        bottom.axhline(result["case"]["max_p99_s"] * 1000, color="red", linestyle=":", label="p99 target")
        for axis in (top, bottom):
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xlabel("concurrent clients")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run: clients 1,16, 1 repetition, 3 s per point")
    parser.add_argument("--models", default="cnn,mobilenet", help="comma-separated: cnn, mobilenet")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated, of {','.join(SERVERS)}")
    parser.add_argument("--concurrency", default=None, help="comma-separated client counts (default 1,2,4,8,16,32)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measured point (default 8; quick 3)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per point (default 3; quick 1)")
    parser.add_argument("--sweep", action="store_true", help="also sweep service settings at 16 clients")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (models, images, server logs)")
    parser.add_argument(
        "--backend",
        default="tensorflow",
        choices=["tensorflow", "openvino", "onnxruntime", "xla", "auto"],
        help="also measure the service with MODEL_BACKEND set to this (converted and gated at load), same run",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="the compiled backend's precision (the model config's `precision`), for --backend's rows",
    )
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in (args.concurrency or ("1,16" if args.quick else "1,2,4,8,16,32")).split(",")]
    if TARGET_CONCURRENCY not in args.concurrency:
        parser.error(f"--concurrency must include {TARGET_CONCURRENCY}: the targets are measured there")
    args.servers = [s for s in args.servers.split(",") if s]
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {SERVERS}")
    args.duration = args.duration or (3.0 if args.quick else 8.0)
    args.reps = args.reps or (1 if args.quick else 3)
    args.warm_s = 1.0 if args.quick else 2.0  # wrk takes whole seconds
    args.fair_slot_s = 0.5 if args.quick else 1.5
    args.open_loop_s = 2.0 if args.quick else 10.0
    args.photos_12mp = 2 if args.quick else 4
    return args


def main(argv: list[str]) -> int:
    if argv and argv[0] == "build":
        build_models(Path(argv[1]), int(argv[2]))
        return 0
    if argv and argv[0] == "fair":
        fair_worker(Path(argv[1]), [int(b) for b in argv[2].split(",")], float(argv[3]), int(argv[4]), int(argv[5]))
        return 0
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get update && apt-get install -y wrk", file=sys.stderr)
        return 2
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/benchmark.py", *argv])
    started = dt.datetime.now(dt.UTC)
    clock = time.monotonic()
    args.load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    workdir = Path(tempfile.mkdtemp(prefix="kerasserve-bench-"))
    try:
        log(f"building models and images in {workdir}")
        run_python("build", str(workdir), str(args.photos_12mp))
        results = [run_case(CASES[key], workdir, args) for key in args.models.split(",")]
    finally:
        if args.keep:
            log(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    kept = kept_sections(args.output.read_text()) if args.output.exists() else ""
    report = write_report(results, args, command, started, kept)
    args.output.write_text(report)
    # The run's temporary folder (in settings such as BACKEND_CACHE_DIR) says nothing about the results.
    raw = json.dumps(results, indent=1).replace(str(workdir), "<workdir>")
    args.output.with_suffix(".json").write_text(raw + "\n")
    plot(results, args.output.with_suffix(".png"))
    print(report)
    print(
        f"Ratios against the targets of issue 14, {TARGET_CONCURRENCY} clients (run took {(time.monotonic() - clock) / 60:.1f} min):"
    )
    print("\n".join(headline(results)))
    for result in results:
        for text, ok in verdicts(result):
            print(f"  {result['case']['key']}: {'met' if ok else 'MISSED'}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

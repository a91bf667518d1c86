"""Where a model's memory goes in a worker: resident memory per worker and per model.

Two measurements, each in fresh processes:

`server` (the default): the real service (`gunicorn wsgi:app`, the repository's gunicorn.conf.py)
serving a models folder, with the settings given. It reads every worker's resident set size
(VmRSS) once `/readyz` answers 200 (every model loaded and warmed up), then again after traffic
(`--requests` image POSTs per model from 16 clients, so batches fill). A model's cost is the
worker's RSS with it minus the RSS of the base run, which serves one tiny Dense model (the service
is only ready with a model).

`breakdown`: one model loaded in this process exactly as a worker does it (`ServableBuilder.start`
configures TensorFlow and the allocator, the loader loads, an `InferenceRunner` is warmed up for
each allowed batch size in turn), with the RSS and glibc's own counters (`mallinfo2`: bytes in use,
bytes free but kept) after each step, then after `malloc_trim`. It splits the cost into weights and
graph (after the load), compiled calls and activations per batch size (each warm-up call), and what
the allocator keeps (what the trim gives back).

    .venv/bin/python bench/memory.py                                  # base, small CNN, MobileNetV2
    .venv/bin/python bench/memory.py --models mobilenet --copies 3    # three MobileNetV2 in each worker
    .venv/bin/python bench/memory.py --env MAX_BATCH_SIZE=32          # with other settings (A/B)
    .venv/bin/python bench/memory.py breakdown --model mobilenet

Models are built by `bench/benchmark.py`'s `build_models` (random weights, nothing downloaded).
The figures are reported in docs/operations.md (sizing guide).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.benchmark import GUNICORN, PYTHON, free_port, http_status, serve, worker_pids  # noqa: E402

MODEL_FILES = {"cnn": "models-cnn/digits_cnn.keras", "mobilenet": "models-mobilenet/mobilenet_v2.keras"}
IMAGES = {"cnn": ("digit*.png", "image/png"), "mobilenet": ("photo*.jpg", "image/jpeg")}
CLIENTS = 16


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------
def build(workdir: Path) -> None:
    """Write the benchmark's models and images, and the base run's tiny model, into `workdir`."""
    subprocess.run([PYTHON, str(REPO / "bench" / "benchmark.py"), "build", str(workdir)], check=True)
    code = "import keras, sys; keras.Sequential([keras.Input((4,), name='x'), keras.layers.Dense(2)]).save(sys.argv[1])"
    subprocess.run([PYTHON, "-c", code, str(workdir / "tiny.keras")], check=True, env=_quiet_env())


def models_folder(workdir: Path, name: str, plan: dict[str, int]) -> Path:
    """A models folder holding the tiny model and `plan[key]` copies of each benchmark model."""
    folder = workdir / name
    folder.mkdir()
    shutil.copy(workdir / "tiny.keras", folder / "tiny.keras")
    for key, copies in plan.items():
        source = workdir / MODEL_FILES[key]
        for i in range(copies):
            stem = f"{key}{i}"
            shutil.copy(source, folder / f"{stem}.keras")
            config = source.with_suffix(".yaml")
            if config.exists():
                shutil.copy(config, folder / f"{stem}.yaml")
    return folder


def _quiet_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


# --------------------------------------------------------------------------------------------------
# The real server
# --------------------------------------------------------------------------------------------------
def traffic(url: str, workdir: Path, plan: dict[str, int], requests_per_model: int) -> int:
    """POST `requests_per_model` images to each model from CLIENTS threads; return the failures."""
    jobs: list[tuple[str, bytes, str]] = []
    for key, copies in plan.items():
        pattern, content_type = IMAGES[key]
        images = [p.read_bytes() for p in sorted((workdir / "images").glob(pattern))]
        for i in range(copies):
            jobs += [(f"{key}{i}", images[n % len(images)], content_type) for n in range(requests_per_model)]
    failures = 0
    lock = threading.Lock()

    def client() -> None:
        nonlocal failures
        while True:
            with lock:
                if not jobs:
                    return
                model, body, content_type = jobs.pop()
            status = http_status(f"{url}/models/{model}/predict", data=body, content_type=content_type, timeout=120)
            if status != 200:
                with lock:
                    failures += 1

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def measure_server(workdir: Path, name: str, plan: dict[str, int], env: dict[str, str], requests: int) -> dict:
    """Serve `plan` with `env`; return every worker's RSS (MiB) when ready and after traffic."""
    folder = models_folder(workdir, name, plan)
    port = free_port()
    settings = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "GRPC_PORT": str(free_port()),
        "MODELS_DIR": str(folder),
        "LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="metrics-", dir=workdir),
        **env,
    }
    started = time.monotonic()
    with serve(name, [GUNICORN, "wsgi:app"], _quiet_env(**settings), port, workdir, ready_path="/readyz") as server:
        ready_s = time.monotonic() - started
        time.sleep(1.0)  # the readiness answer comes before the last worker's log lines settle
        pids = worker_pids(server.process.pid)
        ready = [round(rss_mb(pid), 1) for pid in pids]
        failures = traffic(server.url, workdir, plan, requests) if plan and requests else 0
        served = [round(rss_mb(pid), 1) for pid in pids]
    return {
        "run": name,
        "plan": plan,
        "ready_s": round(ready_s, 1),
        "rss_ready_mb": ready,
        "rss_served_mb": served,
        "failures": failures,
    }


def server_main(args: argparse.Namespace) -> None:
    env = dict(item.split("=", 1) for item in args.env)
    env.setdefault("WORKERS", str(args.workers))
    workdir = Path(tempfile.mkdtemp(prefix="kerasserve-memory-"))
    try:
        build(workdir)
        runs = [measure_server(workdir, "base", {}, env, 0)]
        print(json.dumps(runs[-1]), flush=True)
        for key in args.models.split(","):
            runs.append(measure_server(workdir, f"{key}x{args.copies}", {key: args.copies}, env, args.requests))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base = runs[0]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    print(f"\nsettings: {' '.join(f'{k}={v}' for k, v in env.items())}")
    print(
        "| run | ready s | RSS per worker, ready (MiB) | per model, ready | RSS per worker, after traffic | per model, after traffic |"
    )
    print("|---|---:|---|---:|---|---:|")
    for run in runs:
        copies = sum(run["plan"].values()) or 1
        per_ready = (mean(run["rss_ready_mb"]) - mean(base["rss_ready_mb"])) / copies
        per_served = (mean(run["rss_served_mb"]) - mean(base["rss_ready_mb"])) / copies
        print(
            f"| {run['run']} | {run['ready_s']} | {', '.join(map(str, run['rss_ready_mb']))} | "
            f"{per_ready:.0f} | {', '.join(map(str, run['rss_served_mb']))} | {per_served:.0f} |"
            + (f" {run['failures']} failed requests" if run["failures"] else "")
        )


# --------------------------------------------------------------------------------------------------
# One model, step by step, in this process
# --------------------------------------------------------------------------------------------------
class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def breakdown_main(args: argparse.Namespace) -> None:
    """Load one model as a worker does and print RSS and glibc's counters after each step."""
    workdir = Path(tempfile.mkdtemp(prefix="kerasserve-memory-"))
    try:
        build(workdir)
        subprocess.run(
            [PYTHON, __file__, "_breakdown", str(workdir / MODEL_FILES[args.model]), *args.env],
            check=True,
            env=_quiet_env(),
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _breakdown_child(path: Path, env: list[str]) -> None:
    os.environ.update(dict(item.split("=", 1) for item in env))
    import numpy as np

    from service.builder import ServableBuilder
    from service.settings import Settings

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2

    def line(step: str) -> None:
        info = libc.mallinfo2()
        print(
            f"| {step} | {rss_mb():.0f} | {info.uordblks / 2**20:.0f} | {info.fordblks / 2**20:.0f} | "
            f"{info.hblkhd / 2**20:.0f} |",
            flush=True,
        )

    print("| step | RSS MiB | malloc in use MiB | malloc free, kept MiB | mmapped MiB |\n|---|---:|---:|---:|---:|")
    line("python, numpy")
    settings = Settings(models_dir=path.parent)
    builder = ServableBuilder(settings)
    builder.start()
    builder.rebuild_registry()
    line("TensorFlow and Keras started (ServableBuilder.start)")
    from service.model_config import ModelConfig
    from service.runner import InferenceRunner, default_allowed_batch_sizes

    loaded = builder._loader.load(path, ModelConfig())  # noqa: SLF001 - the step the builder takes
    line("model loaded (weights, graph)")
    sizes = default_allowed_batch_sizes(settings.max_batch_size)
    runner = InferenceRunner(loaded, loaded.default_signature, device=builder.device, allowed_batch_sizes=sizes)
    for size in sizes:
        inputs = {t.name: np.zeros((size, *t.shape[1:]), np.float32) for t in runner.signature.inputs}
        runner.run(inputs)
        line(f"warm-up call, batch {size}")
    libc.malloc_trim(0)
    line("after malloc_trim(0)")


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_breakdown":
        _breakdown_child(Path(argv[1]), argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="server", choices=("server", "breakdown"))
    parser.add_argument("--models", default="cnn,mobilenet", help="server: comma-separated, cnn and/or mobilenet")
    parser.add_argument("--model", default="mobilenet", help="breakdown: cnn or mobilenet")
    parser.add_argument("--copies", type=int, default=1, help="server: copies of each model in one models folder")
    parser.add_argument("--workers", type=int, default=2, help="server: WORKERS (unless --env sets it)")
    parser.add_argument("--requests", type=int, default=128, help="server: requests per model after ready")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the service (repeatable)")
    args = parser.parse_args(argv)
    if args.mode == "breakdown":
        breakdown_main(args)
    else:
        server_main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""gRPC beside REST, in one run: the small CNN (28x28x1 float tensors, not images) over REST JSON,
TF Serving's `PredictionService/Predict` and KServe v2's `GRPCInferenceService/ModelInfer`.

One server (`gunicorn wsgi:app` with the repository's gunicorn.conf.py, WORKERS=2, HTTP and gRPC
ports) serves the Keras MNIST example's CNN (random weights). Every point is a closed loop of N
clients for a fixed time, after a warm-up:

- REST: wrk (`bench/post.lua`) POSTing `{"instances": [...]}` bodies to `/v1/models/cnn:predict`;
- gRPC: this script's own load generator (a subprocess running `grpc.aio`, N coroutines, each on a
  channel of its own so that connections spread over the workers as wrk's do; one point also uses
  a single shared channel, which is what most clients do: every call then reaches one worker,
  because HTTP/2 multiplexes calls over one connection and the kernel balances connections);
  raw tensors (`tensor_content`, `raw_input_contents`).

Printed and written to `docs/benchmarks-grpc.md` (with `--out`): requests/s, p50/p99 latency,
errors, and the CPU the server and the client each used. The clients are different programs
(wrk is C, the gRPC client is Python over gRPC's C core); their CPU is in the table, so a reader
sees what each client cost the shared 2 cores.

    .venv/bin/python bench/grpc_bench.py           # about 4 minutes on 2 cores
    .venv/bin/python bench/grpc_bench.py --quick   # about 1 minute: 16 clients only, short points
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmark import free_port, process_ticks, small_cnn, worker_pids  # bench/, beside this script

REPO = Path(__file__).resolve().parents[1]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
WRK_SCRIPT = REPO / "bench" / "post.lua"
MODEL = "cnn"
INPUT = "image"
SAMPLES = 8


def build(folder: Path) -> list:
    """Write the benchmark's small CNN into `folder/models` and return SAMPLES float32 inputs of shape (1, 28, 28, 1)."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    small_cnn().save(folder / "models" / f"{MODEL}.keras")
    rng = np.random.default_rng(0)
    return [rng.random((1, 28, 28, 1), dtype=np.float32) for _ in range(SAMPLES)]


def server_ticks(master: int) -> int:
    """CPU ticks of the gunicorn master and its workers."""
    return process_ticks([master, *worker_pids(master)])


# --------------------------------------------------------------------------------------------------
# The gRPC load generator (run as a subprocess: `grpc_bench.py --load ...`)
# --------------------------------------------------------------------------------------------------
def grpc_requests(kind: str, samples: list) -> list:
    import numpy as np

    if kind == "tfserving":
        from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorflow_serving.apis import model_pb2, predict_pb2

        messages = []
        for sample in samples:
            tensor = tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT,
                tensor_shape=tensor_shape_pb2.TensorShapeProto(
                    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in sample.shape]
                ),
                tensor_content=sample.astype("<f4").tobytes(),
            )
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=MODEL))
            request.inputs[INPUT].CopyFrom(tensor)
            messages.append(request)
        return messages
    from tritonclient.grpc import service_pb2

    messages = []
    for sample in samples:
        request = service_pb2.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name=INPUT, datatype="FP32", shape=list(sample.shape))
        request.raw_input_contents.append(np.asarray(sample, "<f4").tobytes())
        messages.append(request)
    return messages


async def grpc_load(target: str, kind: str, concurrency: int, seconds: float, channels: int, samples: list) -> dict:
    import grpc

    if kind == "tfserving":
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        def method(channel):
            return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
    else:
        from tritonclient.grpc import service_pb2_grpc

        def method(channel):
            return service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer

    messages = grpc_requests(kind, samples)
    # A local subchannel pool per channel: each channel opens a connection of its own.
    opened = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(channels)
    ]
    calls = [method(channel) for channel in opened]
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def client(index: int) -> None:
        nonlocal errors
        call = calls[index % len(calls)]
        n = index
        while loop.time() < deadline:
            started = time.perf_counter()
            try:
                await call(messages[n % len(messages)], timeout=10)
            except grpc.aio.AioRpcError:
                errors += 1
            else:
                latencies.append(time.perf_counter() - started)
            n += 1

    for channel in opened:
        await channel.channel_ready()
    print("GO", flush=True)  # the parent starts counting the server's CPU here, after the imports
    cpu_before = time.process_time()
    began = time.perf_counter()
    deadline = loop.time() + seconds
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - began
    client_cpu_s = time.process_time() - cpu_before
    for channel in opened:
        await channel.close()
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0.0

    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": quantile(0.50),
        "p99_ms": quantile(0.99),
        "elapsed_s": elapsed,
        "client_cpu_s": client_cpu_s,
    }


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {timeout_s}s:\n{log.read_text(errors='replace')[-3000:]}")


def run_rest(url: str, bodies: list[Path], concurrency: int, seconds: float, mark=lambda: None) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    mark()
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(WRK_SCRIPT)]
    argv += [f"{url}/v1/models/{MODEL}:predict", "--", "application/json", *map(str, bodies)]
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    raw = json.loads(next(line for line in output.splitlines() if line.startswith("BENCH_JSON ")).split(" ", 1)[1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    errors = sum(raw[key] for key in ("connect_errors", "read_errors", "write_errors", "non2xx", "timeouts"))
    return {
        "elapsed_s": raw["duration_us"] / 1e6,
        "client_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "requests": raw["requests"] - raw["non2xx"],
        "errors": errors,
        "rps": (raw["requests"] - raw["non2xx"]) / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
    }


def run_grpc(
    target: str, kind: str, samples_file: Path, concurrency: int, seconds: float, channels: int, mark=lambda: None
) -> dict:
    """Run the load generator in a subprocess; `mark()` is called once its imports are done and the load starts."""
    argv = [sys.executable, __file__, "--load", kind, "--target", target, "--samples", str(samples_file)]
    argv += ["--concurrency", str(concurrency), "--duration", str(seconds), "--channels", str(channels)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert child.stdout is not None
    lines = []
    for line in child.stdout:
        if line.strip() == "GO":
            mark()
        else:
            lines.append(line)
    if child.wait() != 0 or not lines:
        raise RuntimeError(f"the gRPC load generator failed ({child.returncode})")
    return json.loads(lines[-1])


def measure(name: str, run, master: int, concurrency: int) -> dict:
    """One point: the load's own figures plus the server's and the client's CPU over the load itself.

    `run(mark)` calls `mark()` when the load starts (after a client's imports), and returns the
    load's figures with its own `elapsed_s` and `client_cpu_s`.
    """
    tick = os.sysconf("SC_CLK_TCK")
    start: list[int] = []
    row = run(lambda: start.append(server_ticks(master)))
    server_s = (server_ticks(master) - start[0]) / tick
    elapsed = row["elapsed_s"]
    row.update(
        protocol=name,
        concurrency=concurrency,
        server_cores=round(server_s / elapsed, 2),
        client_cores=round(row["client_cpu_s"] / elapsed, 2),
        server_cpu_ms_per_request=round(1000 * server_s / max(row["requests"], 1), 3),
    )
    print(
        f"  {name:<28} c={concurrency:<3} {row['rps']:8.1f} req/s  p50 {row['p50_ms']:6.1f} ms  "
        f"p99 {row['p99_ms']:6.1f} ms  errors {row['errors']}  server {row['server_cores']} cores "
        f"({row['server_cpu_ms_per_request']} ms/request)  client {row['client_cores']} cores",
        flush=True,
    )
    return row


def report(rows: list[dict], command: str, started: dt.datetime, seconds: float) -> str:
    lines = [
        "# gRPC beside REST",
        "",
        f"Command: `{command}`; {started:%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores ({platform.machine()}), "
        f"server and clients on the same machine. Each point: {seconds:g} s of closed-loop load after a warm-up.",
        "",
        "The small CNN (`Conv2D`×2, 28×28×1 float inputs, random weights), `WORKERS=2`, one server answering "
        'both protocols. REST: wrk POSTing `{"instances": [...]}` to `/v1/models/cnn:predict`. gRPC: '
        "`bench/grpc_bench.py`'s own `grpc.aio` client with raw tensors (`tensor_content`, "
        "`raw_input_contents`), one channel (one connection) per client unless the row says otherwise.",
        "",
        "| protocol | clients | req/s | p50 ms | p99 ms | errors | server cores | server CPU ms / request | client cores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['protocol']} | {row['concurrency']} | {row['rps']:.1f} | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} | {row['errors']} | {row['server_cores']} | {row['server_cpu_ms_per_request']} | "
            f"{row['client_cores']} |"
        )
    lines += [
        "",
        "How to read it: the server CPU per request is what each protocol costs the service (parsing JSON "
        "numbers versus reading raw bytes); the client columns say what each load generator took from the "
        "same 2 cores, so a client that costs more leaves less for the server. A single shared channel "
        "sends every call to one gunicorn worker (HTTP/2 multiplexes calls over one connection, and "
        "connections, not calls, are balanced), so it gets about one worker's throughput: open a few "
        "channels (or connections) per client process to use every worker.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 clients only, shorter points")
    parser.add_argument("--duration", type=float, default=None, help="seconds per point")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    parser.add_argument("--load", choices=["tfserving", "v2"], help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--channels", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.load:  # the load-generator subprocess
        import numpy as np

        samples = list(np.load(args.samples))
        result = asyncio.run(grpc_load(args.target, args.load, args.concurrency, args.duration, args.channels, samples))
        print(json.dumps(result))
        return 0

    if shutil.which("wrk") is None:
        print("wrk not found: apt-get update && apt-get install -y wrk", file=sys.stderr)
        return 2
    import numpy as np

    seconds = args.duration or (5.0 if args.quick else 15.0)
    concurrencies = [16] if args.quick else [1, 4, 16]
    started = dt.datetime.now(dt.UTC)
    command = "bench/grpc_bench.py " + " ".join(argv)
    with tempfile.TemporaryDirectory(prefix="grpc-bench-") as tmp:
        work = Path(tmp)
        samples = build(work)
        np.save(work / "samples.npy", np.stack(samples))
        bodies = []
        for i, sample in enumerate(samples):
            body = work / f"body{i}.json"
            body.write_text(json.dumps({"instances": sample.tolist()}))
            bodies.append(body)
        port, grpc_port = free_port(), free_port()
        env = {
            **os.environ,
            "MODELS_DIR": str(work / "models"),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "GRPC_PORT": str(grpc_port),
            "WORKERS": "2",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PROMETHEUS_MULTIPROC_DIR": str(Path(tempfile.mkdtemp(dir=work))),
        }
        log = work / "server.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                [GUNICORN, "wsgi:app"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        url, target = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
        rows: list[dict] = []
        try:
            wait_ready(url, server, log)
            print(f"server ready (HTTP {port}, gRPC {grpc_port}); warming up", flush=True)
            run_rest(url, bodies, 16, 3)
            run_grpc(target, "tfserving", work / "samples.npy", 16, 3, 16)
            run_grpc(target, "v2", work / "samples.npy", 16, 3, 16)
            samples_file = work / "samples.npy"
            for c in concurrencies:
                points = [
                    ("REST /v1 JSON (wrk)", lambda mark, c=c: run_rest(url, bodies, c, seconds, mark)),
                    (
                        "gRPC TF Serving Predict",
                        lambda mark, c=c: run_grpc(target, "tfserving", samples_file, c, seconds, c, mark),
                    ),
                    ("gRPC v2 ModelInfer", lambda mark, c=c: run_grpc(target, "v2", samples_file, c, seconds, c, mark)),
                ]
                if c == 16:
                    points.append(
                        (
                            "gRPC TF Serving, 1 channel",
                            lambda mark, c=c: run_grpc(target, "tfserving", samples_file, c, seconds, 1, mark),
                        )
                    )
                rows += [measure(name, run, server.pid, c) for name, run in points]
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
    at16 = {row["protocol"]: row for row in rows if row["concurrency"] == 16}
    rest = at16.get("REST /v1 JSON (wrk)")
    if rest:
        for name, row in at16.items():
            print(f"{name}: {row['rps'] / rest['rps']:.2f}x REST's req/s at 16 clients, p99 {row['p99_ms']:.1f} ms")
    text = report(rows, command, started, seconds)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    errors = sum(row["errors"] for row in rows)
    print(f"median req/s over the points: {statistics.median(row['rps'] for row in rows):.1f}; errors: {errors}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

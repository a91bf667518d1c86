"""The benchmark's pieces at tiny size, so that `make bench` cannot rot between full runs.

Each yardstick is exercised for real but briefly: the fair limit's pinned processes on a tiny model,
the competent and ceiling apps answering the benchmark's multipart upload, the open-loop generator
against a local server, the service's counters parsed from a /metrics text, and the report and plot
written from one synthetic result (with the hand-written profile section carried over).
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import benchmark, openloop
from bench.benchmark import LoadResult

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 28x28x1 -> 10 softmax model, saved as the benchmark's CNN would be."""
    import keras

    path = tmp_path_factory.mktemp("bench") / "tiny.keras"
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            keras.layers.Conv2D(2, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.save(path)
    return path


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    benchmark.build_images(folder, photos_12mp=0)
    return folder / "digit0.png"


def test_fair_limit_runs_one_pinned_single_threaded_process_per_core_and_sums_them(tiny_model: Path) -> None:
    fair = benchmark.measure_fair(tiny_model, (1, 4), slot_s=0.2, rounds=2)
    assert fair["processes"] == len(os.sched_getaffinity(0))
    assert set(fair["images_per_s"]) == {"1", "4"}
    assert fair["best"] == max(fair["images_per_s"].values()) > 0
    for batch, (low, high) in fair["range"].items():
        assert low <= fair["images_per_s"][batch] <= high
    assert 0 < fair["model_s_per_row_batch1"] < 1
    assert fair["cpu_ms_per_row"]["1"] > 0 and fair["cpu_ms_per_row"]["4"] > 0


def test_ceiling_app_parses_the_benchmarks_multipart_upload_and_answers_ten_scores(digit_png: Path) -> None:
    from bench.ceiling_app import app

    body = benchmark.multipart_body(digit_png.read_bytes(), "digit0.png", "image/png")
    answer = app.test_client().post("/predict", data=body, content_type=benchmark.MULTIPART)
    assert answer.status_code == 200
    assert len(answer.get_json()["predictions"][0]) == 10


def test_competent_app_calls_the_compiled_model_on_the_upload(tiny_model: Path, digit_png: Path) -> None:
    # A fresh interpreter: the app sets TensorFlow's thread pools, which must precede TensorFlow's start.
    script = (
        "import json, sys; from pathlib import Path; from bench import benchmark; "
        "from bench.competent_app import app; import tensorflow as tf; "
        "body = benchmark.multipart_body(Path(sys.argv[1]).read_bytes(), 'd.png', 'image/png'); "
        "r = app.test_client().post('/predict', data=body, content_type=benchmark.MULTIPART); "
        "print(json.dumps([r.status_code, r.get_json(), tf.config.threading.get_intra_op_parallelism_threads()]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(digit_png)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BENCH_MODEL": str(tiny_model), "BENCH_SCALE": "unit", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    status, answer, threads = json.loads(done.stdout.strip().splitlines()[-1])
    assert status == 200 and threads == 1
    assert len(answer["predictions"][0]) == 10 and abs(sum(answer["predictions"][0]) - 1) < 1e-4


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn answers

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        status = 200 if self.path == "/predict" else 404
        body = b'{"ok": true}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_open_loop_sends_at_the_asked_rate_and_counts_latency_from_the_due_time(local_server: str) -> None:
    import asyncio

    result = asyncio.run(openloop.run(local_server + "/predict", "image/png", [b"x" * 100, b"y"], 200, 0.5))
    assert result.due == result.sent == 100
    assert result.ok == 100 and result.errors == result.non2xx == result.dropped == 0
    assert 0 < result.p50_ms <= result.p99_ms <= result.p999_ms <= result.max_ms < 1000
    assert 100 <= result.achieved_rps <= 250

    bad = asyncio.run(openloop.run(local_server + "/nowhere", "image/png", [b"x"], 100, 0.1))
    assert bad.non2xx == bad.sent == 10


def test_open_loop_is_bounded_requests_beyond_the_connections_are_dropped_not_queued() -> None:
    import asyncio
    import socket

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/predict"
        result = asyncio.run(openloop.run(url, "image/png", [b"x"], 100, 0.3, max_connections=5, timeout=0.3))
    assert result.sent == 5 and result.dropped == result.due - 5
    assert result.errors == 5  # timed out


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 1001)]
    assert openloop.percentile(values, 50) == 500
    assert openloop.percentile(values, 99.9) == 999
    assert openloop.percentile([], 99) == 0.0


def test_the_services_counters_are_read_from_its_metrics_text() -> None:
    text = "\n".join(
        [
            "# HELP kerasserve_batch_rows Rows per device call (before padding).",
            'kerasserve_batch_rows_bucket{le="1.0",model="a"} 3.0',
            'kerasserve_batch_rows_sum{model="a"} 30.0',
            'kerasserve_batch_rows_count{model="a"} 10.0',
            'kerasserve_batch_rows_sum{model="b"} 2.0',
            'kerasserve_batch_compute_seconds_sum{model="a"} 0.5',
            'kerasserve_padding_rows_total{model="a"} 6.0',
        ]
    )
    assert benchmark.parse_model_counters(text) == {"rows": 32.0, "calls": 10.0, "compute_s": 0.5, "padding_rows": 6.0}


def load_result(server: str, concurrency: int, rps: float, **extra: object) -> LoadResult:
    requests = int(rps * 2)
    return LoadResult(
        server=server,
        concurrency=concurrency,
        seconds=2.0,
        requests=requests,
        rps=rps,
        p50_ms=5.0,
        p90_ms=8.0,
        p99_ms=12.0,
        max_ms=20.0,
        non2xx=0,
        socket_errors=0,
        timeouts=0,
        cpu_server_s=requests * 0.001,
        cpu_server_cores=1.0,
        **extra,  # type: ignore[arg-type]
    )


def synthetic_result(args: argparse.Namespace) -> dict:
    from dataclasses import asdict

    case = benchmark.CASES["mobilenet"]
    result: dict = {
        "case": asdict(case),
        "fair": {
            "processes": 2,
            "images_per_s": {"1": 80.0, "8": 120.0},
            "range": {"1": [78.0, 82.0], "8": [110.0, 125.0]},
            "per_process": {"1": 40.0, "8": 60.0},
            "cpu_ms_per_row": {"1": 25.0, "8": 16.7},
            "best": 120.0,
            "best_batch": 8,
            "model_s_per_row_batch1": 0.025,
            "cpu_other_cores": 0.0,
        },
        "open_loop": [
            {
                "load": 0.5,
                "rate": 50.0,
                "achieved_rps": 50.0,
                "p50_ms": 20.0,
                "p99_ms": 40.0,
                "p999_ms": 60.0,
                "max_ms": 70.0,
                "non2xx": 0,
                "errors": 0,
                "dropped": 0,
                "cpu_server_cores": 1.0,
                "cpu_client_cores": 0.1,
                "cpu_other_cores": 0.0,
            }
        ],
        "sweep": [],
    }
    counters = {"rows": 200.0, "calls": 50.0, "compute_s": 0.1, "padding_rows": 20.0}
    for kind, rps in (("service", 100.0), ("competent", 60.0), ("ceiling", 1000.0), ("tutorial", 20.0)):
        result[kind] = [
            benchmark.summarise(
                [load_result(kind, c, rps + rep, model=counters if kind == "service" else {}) for rep in range(2)],
                None if kind == "ceiling" else 0.025,
            )
            for c in args.concurrency
        ]
    for point in result["service"]:
        benchmark.add_fair_model_time(point, result["fair"])
    result["photo_12mp"] = {**result["service"][-1], "jpeg_bytes": 4e6}
    return result


def test_summaries_give_median_range_padding_and_non_model_cpu() -> None:
    runs = [
        load_result("service", 16, rps, model={"rows": 100.0, "calls": 25.0, "compute_s": 0.05, "padding_rows": 25.0})
        for rps in (100.0, 90.0, 120.0)
    ]
    summary = benchmark.summarise(runs, None)
    fair = {"cpu_ms_per_row": {"1": 2.0, "4": 0.5, "16": 0.25}}
    assert benchmark.fair_s_per_row(fair, 1) == pytest.approx(0.002)
    assert benchmark.fair_s_per_row(fair, 2) == pytest.approx(0.00125)  # halfway, on a log scale
    assert benchmark.fair_s_per_row(fair, 64) == pytest.approx(0.00025)
    assert summary["rps"] == 100.0 and summary["rps_range"] == [90.0, 120.0]
    assert summary["rows_per_call"] == 4.0 and summary["padding_fraction"] == pytest.approx(0.2)
    assert summary["cpu_ms_per_request"] == pytest.approx(1.0)
    assert summary["model_ms_per_row"] == pytest.approx(0.5)
    assert summary["non_model_cpu_ms"] == pytest.approx(0.5)
    ceiling = benchmark.summarise([load_result("ceiling", 16, 1000.0)], None)
    assert ceiling["model_ms_per_row"] is None and ceiling["non_model_cpu_ms"] == pytest.approx(1.0)


def test_report_has_every_yardstick_the_targets_and_keeps_the_profile_section(tmp_path: Path) -> None:
    args = benchmark.parse_args(["--quick"])
    args.load_before = "0.1 0.1 0.1"
    result = synthetic_result(args)
    found = benchmark.ratios(result)
    assert found["fair"] == pytest.approx(100.5 / 120.0)  # the median of 100 and 101 req/s at 16 clients
    old = "# Benchmarks\n\n## Where the non-model CPU goes\n\nflask 30%\n\n## Other\n\nstale-section\n"
    report = benchmark.write_report(
        [result], args, "make bench", benchmark.dt.datetime(2026, 1, 1), benchmark.kept_sections(old)
    )
    for text in ("vs fair limit", "vs framework ceiling", "vs competent server", "p99.9", "12-megapixel", "padding"):
        assert text in report
    assert "## Where the non-model CPU goes\n\nflask 30%\n" in report and "stale-section" not in report
    texts = [text for text, _ in benchmark.verdicts(result)]
    assert any("fair model limit" in text for text in texts) and any("12 MP JPEG" in text for text in texts)
    benchmark.plot([result], tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_quick_runs_every_yardstick_and_the_default_run_repeats_each_point_three_times() -> None:
    quick, full = benchmark.parse_args(["--quick"]), benchmark.parse_args([])
    assert quick.servers == full.servers == list(benchmark.SERVERS)
    assert full.reps >= 3 and full.concurrency == [1, 2, 4, 8, 16, 32]
    assert benchmark.TARGET_CONCURRENCY in quick.concurrency
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--concurrency", "1,8"])


def test_profile_summary_charges_each_sample_to_the_innermost_known_library(tmp_path: Path) -> None:
    from bench import profile

    raw = tmp_path / "cnn-gil.txt"
    raw.write_text(
        "\n".join(
            [
                "_loop (/r/service/batching.py:300);_call_padded (/r/service/runner.py:340);"
                "TFE_Py_Execute (/v/tensorflow/python/_pywrap_tfe.so) 60",
                "handle (/v/gunicorn/workers/gthread.py:10);predict (/r/service/api/predict.py:20);"
                "decode_image (/r/service/preprocessing.py:241);resize (/v/PIL/Image.py:2200) 25",
                "handle (/v/gunicorn/workers/gthread.py:10);observe (/v/prometheus_client/metrics.py:600) 10",
                "handle (/v/gunicorn/workers/gthread.py:10) 5",
                "_bootstrap (/p/threading.py:1);Condition.wait (/p/threading.py:320) 50",
            ]
        )
        + "\n"
    )
    summary = profile.summarise(raw)
    assert "100 samples (50 more of waiting threads left out), 40% outside the model call" in summary
    assert "| image decode and resize (Pillow) | 25.0% | 62% |" in summary
    assert "| metrics (prometheus_client) | 10.0% | 25% |" in summary
    assert "| gunicorn | 5.0% | 12% |" in summary
    assert "| `handle (/v/gunicorn/workers/gthread.py)` | 100% |" in summary

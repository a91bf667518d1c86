"""Payload logging into a real local HTTP sink: well-formed CloudEvents, and predictions that never wait for it.

The real app over the fake models (`tests.unit.fakes`), PAYLOAD_LOG_URL pointing at an HTTP server
on a loopback port started here: one that records what it receives, one that is down (a closed
port), and one that accepts connections and never answers.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from flask import Flask
from prometheus_client import REGISTRY

from service.api import EXTENSION
from service.payload_log import REQUEST_TYPE, RESPONSE_TYPE
from tests.conftest import wait_until
from tests.unit.test_api import THREE_QUARTERS_WHITE, make_app


class Sink(ThreadingHTTPServer):
    """Records every POST: (headers, body); answers 200 (KServe's message dumper does the same)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                sink.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/events"

    def events(self, count: int) -> list[tuple[dict[str, str], bytes]]:
        wait_until(lambda: len(self.received) >= count, timeout_s=10)
        time.sleep(0.1)  # nothing more comes
        return list(self.received)


@pytest.fixture()
def sink() -> Iterator[Sink]:
    sink = Sink()
    yield sink
    sink.shutdown()
    sink.server_close()


def serve(folder: Path, **options) -> Flask:
    folder.mkdir(parents=True, exist_ok=True)
    return make_app(folder / "models", **options)


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("kerasserve_payload_events_dropped_total", {"reason": reason}) or 0.0


def test_each_logged_prediction_sends_a_request_and_a_response_cloudevent_sharing_the_request_id(
    tmp_path: Path, sink: Sink
) -> None:
    app = serve(tmp_path, payload_log_url=sink.url)
    try:
        body = json.dumps({"instances": [[1, 2], [3, 4]]}).encode()
        response = app.test_client().post(
            "/models/double/predict", data=body, content_type="application/json", headers={"X-Request-ID": "req-7"}
        )
        assert response.status_code == 200
        [(request_headers, request_body), (response_headers, response_body)] = sink.events(2)
    finally:
        app.extensions[EXTENSION].stop()
    assert request_body == body
    assert response_body == response.data
    for headers, kind in ((request_headers, REQUEST_TYPE), (response_headers, RESPONSE_TYPE)):
        assert headers["ce-specversion"] == "1.0"
        assert headers["ce-id"] == "req-7" == response.headers["X-Request-ID"]
        assert headers["ce-type"] == kind
        assert headers["ce-source"].startswith("http://") and headers["ce-source"].endswith(":8000/")
        assert headers["ce-inferenceservicename"] == "double"
        assert (headers["ce-component"], headers["ce-endpoint"]) == ("predictor", "default")
        assert headers["ce-time"].endswith("Z") and headers["ce-time"][:4].isdigit()
        assert json.loads(headers["ce-metadata"]) == {
            "model": ["double"],
            "version": ["1"],
            "path": ["/models/double/predict"],
            "status": ["200"],
        }
        assert headers["content-type"] == "application/json"


def test_images_are_logged_by_size_unless_asked_and_big_bodies_by_size(tmp_path: Path, sink: Sink) -> None:
    app = serve(tmp_path / "a", payload_log_url=sink.url, payload_log_max_bytes=500)
    try:
        client = app.test_client()
        client.post("/models/digits/predict", data={"image": (io.BytesIO(THREE_QUARTERS_WHITE), "a.png")})
        client.post("/models/digits/predict", data=THREE_QUARTERS_WHITE, headers={"Content-Type": "image/png"})
        big = json.dumps({"instances": [[1.0, 2.0]] * 60}).encode()  # over 500 bytes
        assert client.post("/models/double/predict", data=big, content_type="application/json").status_code == 200
        events = sink.events(6)
    finally:
        app.extensions[EXTENSION].stop()
    upload, raw, json_big = (json.loads(events[i][1]) for i in (0, 2, 4))
    assert events[0][0]["content-type"] == "application/json"
    assert upload["omitted"] == "binary" and upload["content_type"] == "multipart/form-data"
    assert upload["files"] == [
        {"name": "image", "filename": "a.png", "content_type": "image/png", "bytes": len(THREE_QUARTERS_WHITE)}
    ]
    assert raw == {"omitted": "binary", "content_type": "image/png", "bytes": len(THREE_QUARTERS_WHITE)}
    assert json_big == {
        "omitted": "larger than PAYLOAD_LOG_MAX_BYTES",
        "content_type": "application/json",
        "bytes": len(big),
        "limit": 500,
    }
    sink.received.clear()
    app = serve(tmp_path / "b", payload_log_url=sink.url, payload_log_images=True)
    try:
        app.test_client().post(
            "/models/digits/predict", data=THREE_QUARTERS_WHITE, headers={"Content-Type": "image/png"}
        )
        [(headers, body), _] = sink.events(2)
    finally:
        app.extensions[EXTENSION].stop()
    assert (headers["content-type"], body) == ("image/png", THREE_QUARTERS_WHITE)


def test_payload_log_rate_samples_requests_and_refused_requests_are_not_logged(tmp_path: Path, sink: Sink) -> None:
    app = serve(tmp_path / "a", payload_log_url=sink.url, payload_log_rate=0.0)
    try:
        for _ in range(5):
            app.test_client().post("/models/double/predict", json={"instances": [[1, 2]]})
    finally:
        app.extensions[EXTENSION].stop()
    app = serve(tmp_path / "b", payload_log_url=sink.url, auth_token="s3cret")
    try:
        client = app.test_client()
        assert client.post("/models/double/predict", json={"instances": [[1, 2]]}).status_code == 401
        assert client.get("/models/double", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        ok = client.post(
            "/models/double/predict", json={"instances": [[1, 2]]}, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200
        events = sink.events(2)
    finally:
        app.extensions[EXTENSION].stop()
    assert [headers["ce-id"] for headers, _ in events] == [ok.headers["X-Request-ID"]] * 2


def test_a_dead_sink_fails_no_prediction_and_its_events_are_counted_as_dropped(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # closed when the block ends: nothing listens there
    app = serve(tmp_path, payload_log_url=f"http://127.0.0.1:{port}/", payload_log_timeout_s=0.5)
    before = dropped("sink_error") + dropped("queue_full")
    try:
        client = app.test_client()
        statuses = [client.post("/models/double/predict", json={"instances": [[i, i]]}).status_code for i in range(20)]
        assert statuses == [200] * 20
        wait_until(lambda: dropped("sink_error") + dropped("queue_full") - before >= 40, timeout_s=10)
    finally:
        app.extensions[EXTENSION].stop()
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'kerasserve_payload_events_dropped_total{reason="sink_error"}' in metrics


def test_a_hanging_sink_delays_no_prediction_and_drops_are_counted(tmp_path: Path) -> None:
    # A sink that accepts connections (the kernel's backlog) and never reads or answers.
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(64)
    url = f"http://127.0.0.1:{hanging.getsockname()[1]}/"
    app = serve(tmp_path, payload_log_url=url, payload_log_timeout_s=1.0, payload_log_queue_events=4)
    before_full, before_timeout = dropped("queue_full"), dropped("timeout")
    try:
        client = app.test_client()
        started = time.monotonic()
        statuses = []
        slowest = 0.0
        for i in range(50):
            one = time.monotonic()
            statuses.append(client.post("/models/double/predict", json={"instances": [[i, i]]}).status_code)
            slowest = max(slowest, time.monotonic() - one)
        elapsed = time.monotonic() - started
        assert statuses == [200] * 50
        # 100 events, a queue of 4, and a sink taking 1 s to give up on each: most are dropped at once.
        assert dropped("queue_full") - before_full >= 90
        assert elapsed < 5 and slowest < 0.5, (elapsed, slowest)  # nobody waited for the sink's 1 s
        wait_until(lambda: dropped("timeout") - before_timeout >= 1, timeout_s=10)
    finally:
        app.extensions[EXTENSION].stop()
        hanging.close()

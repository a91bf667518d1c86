"""Bad requests against one real gunicorn: each gets a 4xx JSON error naming the problem, the worker
survives, and a client sending good requests all along never sees a failure.

Every case goes to the same server while a background client predicts continuously; the last test
checks that client's record and that the worker was never restarted.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import wait_until
from tests.e2e.api_models import (
    LIMITS_ENV,
    MAX_IMAGES,
    MAX_REQUEST_BYTES,
    build_api_models,
    digit_image,
    encode,
)
from tests.e2e.conftest import Server, start_server
from tests.e2e.figures import record

GOOD_ROW = {"instances": [[1.0, 2.0, 3.0, 4.0]]}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, rows: int = 1) -> bytes:
    """A grayscale PNG whose header declares width x height, with pixel data for `rows` rows only."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    data = png_chunk(b"IDAT", zlib.compress(b"\0" * (width + 1) * rows, 9))
    return b"\x89PNG\r\n\x1a\n" + header + data + png_chunk(b"IEND", b"")


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def malformed_exif_jpeg() -> bytes:
    """A JPEG whose EXIF turns it (Orientation 6) and holds XResolution as UNDEFINED: Pillow fails rewriting the EXIF."""
    exif = Image.Exif()
    exif[0x0112], exif[0x011A] = 6, 72.0
    raw = bytearray(exif.tobytes())
    order = "<" if raw[6:8] == b"II" else ">"
    entry = raw.index(struct.pack(f"{order}HH", 0x011A, 5))
    raw[entry + 2 : entry + 4] = struct.pack(f"{order}H", 7)
    buffer = io.BytesIO()
    Image.fromarray(digit_image(3)).save(buffer, "JPEG", exif=bytes(raw))
    return buffer.getvalue()


MALFORMED_EXIF_JPEG = malformed_exif_jpeg()
PNG = encode(digit_image(1))
JPEG = jpeg(digit_image(2))
RAW_PNG = {"Content-Type": "image/png"}


@dataclass
class Case:
    category: str
    method: str
    path: str
    status: int
    fragment: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: list | None = None


CASES: list[Case] = [
    # empty bodies
    Case("empty body", "POST", "/models/digits/predict", 400, "body is empty", b"", RAW_PNG),
    Case(
        "empty body", "POST", "/models/binary/predict", 400, "not valid JSON", b"", {"Content-Type": "application/json"}
    ),
    Case("empty body", "POST", "/models/digits/predict", 400, "no file", None, {}, files=[("note", (None, "text"))]),
    Case("empty body", "POST", "/v1/models/binary:predict", 400, "JSON", b"", {"Content-Type": "application/json"}),
    # bytes that are not an image
    Case(
        "non-image bytes", "POST", "/models/digits/predict", 400, "cannot decode image", b"hello, not an image", RAW_PNG
    ),
    Case(
        "non-image bytes",
        "POST",
        "/models/digits/predict",
        400,
        "cannot decode image",
        None,
        files=[("image", ("x.png", b"\x00" * 500, "image/png"))],
    ),
    Case(
        "non-image bytes",
        "POST",
        "/models/digits/predict",
        400,
        "cannot decode image",
        json.dumps({"instances": [{"b64": base64.b64encode(b"GIF89a-no").decode()}]}).encode(),
        {"Content-Type": "application/json"},
    ),
    Case(
        "non-image bytes",
        "POST",
        "/models/digits/predict",
        400,
        "base64",
        b'{"instances": [{"b64": "***"}]}',
        {"Content-Type": "application/json"},
    ),
    # truncated images
    Case(
        "truncated image",
        "POST",
        "/models/digits/predict",
        400,
        "cannot decode image",
        JPEG[: len(JPEG) // 2],
        {"Content-Type": "image/jpeg"},
    ),
    Case(
        "truncated image", "POST", "/models/digits/predict", 400, "cannot decode image", PNG[: len(PNG) // 2], RAW_PNG
    ),
    Case("truncated image", "POST", "/models/digits/predict", 400, "cannot decode image", PNG[:40], RAW_PNG),
    # decompression bombs: small bodies declaring huge images
    Case(
        "decompression bomb",
        "POST",
        "/models/digits/predict",
        413,
        "MAX_IMAGE_PIXELS",
        png_declaring(4000, 4000, rows=4000),
        RAW_PNG,
    ),
    Case(
        "decompression bomb",
        "POST",
        "/models/digits/predict",
        413,
        "MAX_IMAGE_PIXELS",
        png_declaring(1000, 1000),
        RAW_PNG,
    ),
    Case(
        "decompression bomb",
        "POST",
        "/models/digits/predict",
        413,
        "too large",
        png_declaring(60000, 60000, rows=0),
        RAW_PNG,
    ),
    Case(
        "decompression bomb",
        "POST",
        "/models/digits/predict",
        413,
        "too large",
        png_declaring(2**31 - 1, 2**31 - 1, rows=0),
        RAW_PNG,
    ),
    # wrong Content-Type
    Case(
        "wrong Content-Type",
        "POST",
        "/models/digits/predict",
        415,
        "text/plain",
        b"hello",
        {"Content-Type": "text/plain"},
    ),
    Case(
        "wrong Content-Type",
        "POST",
        "/models/binary/predict",
        415,
        "not supported",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": "application/xml"},
    ),
    Case(
        "wrong Content-Type",
        "POST",
        "/models/binary/predict",
        415,
        "none",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": ""},
    ),
    # too large
    Case(
        "body over MAX_REQUEST_BYTES",
        "POST",
        "/models/digits/predict",
        413,
        "MAX_REQUEST_BYTES",
        b"\0" * (MAX_REQUEST_BYTES + 1),
        RAW_PNG,
    ),
    Case(
        "body over MAX_REQUEST_BYTES",
        "POST",
        "/v1/models/binary:predict",
        413,
        "MAX_REQUEST_BYTES",
        b" " * (MAX_REQUEST_BYTES + 1),
        {"Content-Type": "application/json"},
    ),
    # JSON
    Case(
        "invalid JSON",
        "POST",
        "/models/binary/predict",
        400,
        "not valid JSON",
        b"{not json",
        {"Content-Type": "application/json"},
    ),
    Case(
        "invalid JSON",
        "POST",
        "/models/binary/predict",
        400,
        "JSON object",
        b"[1, 2, 3]",
        {"Content-Type": "application/json"},
    ),
    Case(
        "invalid JSON",
        "POST",
        "/models/binary/predict",
        400,
        "exactly one of",
        b'{"rows": []}',
        {"Content-Type": "application/json"},
    ),
    Case(
        "invalid JSON",
        "POST",
        "/v1/models/binary:predict",
        400,
        "not valid JSON",
        b'{"instances": [[1, 2, 3, 4]]',
        {"Content-Type": "application/json"},
    ),
    Case(
        "invalid JSON",
        "POST",
        "/models/binary/predict",
        400,
        "nested too deeply",
        b'{"instances": ' + b"[" * 100_000,
        {"Content-Type": "application/json"},
    ),
    Case(
        "ragged JSON",
        "POST",
        "/models/binary/predict",
        422,
        "ragged",
        b'{"instances": [[1, 2, 3, 4], [1, 2]]}',
        {"Content-Type": "application/json"},
    ),
    Case(
        "ragged JSON",
        "POST",
        "/v1/models/binary:predict",
        422,
        "ragged",
        b'{"inputs": [[1, [2]], [3, 4]]}',
        {"Content-Type": "application/json"},
    ),
    Case(
        "wrong shape",
        "POST",
        "/models/binary/predict",
        422,
        "shape",
        b'{"instances": [[1, 2, 3]]}',
        {"Content-Type": "application/json"},
    ),
    Case(
        "wrong shape",
        "POST",
        "/v1/models/binary:predict",
        422,
        "shape",
        b'{"instances": [[[1, 2, 3, 4]]]}',
        {"Content-Type": "application/json"},
    ),
    Case(
        "wrong dtype",
        "POST",
        "/models/binary/predict",
        422,
        "float32",
        b'{"instances": [["a", "b", "c", "d"]]}',
        {"Content-Type": "application/json"},
    ),
    Case(
        "wrong dtype",
        "POST",
        "/models/binary/predict",
        422,
        "null",
        b'{"instances": [[null, 1, 2, 3]]}',
        {"Content-Type": "application/json"},
    ),
    Case(
        "wrong dtype",
        "POST",
        "/v2/models/binary/infer",
        422,
        "FP32",
        b'{"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ["a", "b", "c", "d"]}]}',
        {"Content-Type": "application/json"},
    ),
    Case(
        "NaN/Inf where not allowed",
        "POST",
        "/models/binary/predict_classes?threshold=NaN",
        400,
        "finite",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": "application/json"},
    ),
    Case(
        "NaN/Inf where not allowed",
        "POST",
        "/models/binary/predict_classes?threshold=inf",
        400,
        "finite",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": "application/json"},
    ),
    Case(
        "NaN/Inf where not allowed",
        "POST",
        "/models/binary/predict_classes?top_k=Infinity",
        400,
        "top_k",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": "application/json"},
    ),
    # too many images or rows
    Case(
        "too many images",
        "POST",
        "/models/digits/predict",
        413,
        "MAX_IMAGES_PER_REQUEST",
        None,
        files=[("image", (f"{i}.png", PNG, "image/png")) for i in range(MAX_IMAGES + 1)],
    ),
    Case(
        "too many images",
        "POST",
        "/models/binary/predict",
        413,
        "MAX_IMAGES_PER_REQUEST",
        json.dumps({"instances": [[1, 2, 3, 4]] * (MAX_IMAGES + 1)}).encode(),
        {"Content-Type": "application/json"},
    ),
    Case(
        "too many images",
        "POST",
        "/models/digits/predict",
        413,
        "MAX_IMAGES_PER_REQUEST",
        json.dumps({"instances": [{"b64": base64.b64encode(PNG).decode()}] * (MAX_IMAGES + 1)}).encode(),
        {"Content-Type": "application/json"},
    ),
    # unknown model or version
    Case(
        "unknown model or version",
        "POST",
        "/models/nope/predict",
        404,
        "'nope' does not exist",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": "application/json"},
    ),
    Case(
        "unknown model or version",
        "POST",
        "/models/binary/versions/7/predict",
        404,
        "version 7",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": "application/json"},
    ),
    Case("unknown model or version", "GET", "/v1/models/nope", 404, "nope"),
    Case("unknown model or version", "GET", "/v2/models/nope", 404, "nope"),
    Case("unknown model or version", "GET", "/models/binary/versions/x/predict", 404, "no such URL"),
    # unsafe names (sent byte for byte: no client-side normalisation)
    Case(
        "unsafe name",
        "POST",
        "/models/%2e%2e/predict",
        400,
        "not valid",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": "application/json"},
    ),
    Case(
        "unsafe name",
        "POST",
        "/models/%2E%2E%2F%2E%2E%2Fetc/predict",
        404,
        "no such URL",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": "application/json"},
    ),
    Case(
        "unsafe name",
        "POST",
        "/models/../models/binary/predict",
        404,
        "",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": "application/json"},
    ),
    Case(
        "unsafe name",
        "POST",
        "/models/bin%00ary/predict",
        400,
        "\\x00",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": "application/json"},
    ),
    Case("unsafe name", "GET", "/models/%2e%2e", 400, "not valid"),
    Case("unsafe name", "GET", "/models/.hidden", 400, "not valid"),
    Case(
        "unsafe name",
        "POST",
        "/predict?model=..%2F..%2Fetc%2Fpasswd",
        400,
        "not valid",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": "application/json"},
    ),
    Case(
        "unsafe name",
        "POST",
        "/v1/models/..:predict",
        400,
        "not valid",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": "application/json"},
    ),
    Case("unsafe name", "GET", "/v1/models/%ED%A0%80/metadata", 400, "not valid"),
    Case("unsafe name", "GET", "/v2/models/%2e%2e/ready", 400, "not valid"),
    Case(
        "unsafe name",
        "POST",
        "/models/" + "a" * 300 + "/predict",
        400,
        "not valid",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": "application/json"},
    ),
    # non-UTF-8
    Case(
        "non-UTF-8",
        "POST",
        "/models/binary/predict",
        400,
        "not valid JSON",
        b'{"instances": "\xff\xfe"}',
        {"Content-Type": "application/json"},
    ),
    Case(
        "non-UTF-8",
        "POST",
        "/models/%ff%fe/predict",
        400,
        "not valid",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": "application/json"},
    ),
    Case(
        "non-UTF-8",
        "POST",
        "/v1/models/binary:predict",
        400,
        "not valid JSON",
        b"\xff\xfe\x00{",
        {"Content-Type": "application/json; charset=latin-1"},
    ),
    # numbers in Unicode digits ('²' passes str.isdigit() but not int(); int('١') is 1)
    Case("Unicode digits", "GET", "/v1/models/binary/versions/%C2%B2", 400, "not a positive integer"),
    Case("Unicode digits", "GET", "/v1/models/binary/versions/%D9%A1/metadata", 400, "not a positive integer"),
    Case("Unicode digits", "GET", "/v2/models/binary/versions/%C2%B2", 404, "'binary' does not exist"),
    Case(
        "Unicode digits",
        "POST",
        "/models/binary/versions/%D9%A1/predict",
        404,
        "no such URL",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": "application/json"},
    ),
    Case(
        "Unicode digits",
        "POST",
        "/models/binary/predict_classes?top_k=%C2%B2",
        400,
        "top_k",
        json.dumps(GOOD_ROW).encode(),
        {"Content-Type": "application/json"},
    ),
    Case(
        "Unicode digits",
        "POST",
        "/v2/models/binary/infer",
        400,
        "Inference-Header-Content-Length",
        b"{}",
        {"Content-Type": "application/json", "Inference-Header-Content-Length": "\u00b2"},
    ),
    # absurd KServe v2 shapes and deep tensors
    Case(
        "absurd shape",
        "POST",
        "/v2/models/binary/infer",
        400,
        "larger than 2147483647",
        json.dumps({"inputs": [{"name": "features", "shape": [0, 2**63], "datatype": "FP32", "data": []}]}).encode(),
        {"Content-Type": "application/json"},
    ),
    Case(
        "absurd shape",
        "POST",
        "/v2/models/binary/infer",
        400,
        "at most 32",
        json.dumps({"inputs": [{"name": "features", "shape": [0] * 65, "datatype": "FP32", "data": []}]}).encode(),
        {"Content-Type": "application/json"},
    ),
    Case(
        "absurd shape",
        "POST",
        "/v1/models/binary:predict",
        422,
        "at most 32 dimensions",
        b'{"instances": ' + b"[" * 33 + b"null" + b"]" * 33 + b"}",
        {"Content-Type": "application/json"},
    ),
    # lone UTF-16 surrogates in JSON strings
    Case(
        "lone surrogate",
        "POST",
        "/v1/models/binary:predict",
        400,
        "surrogate",
        b'{"instances": [["\\ud800", "a", "b", "c"]]}',
        {"Content-Type": "application/json"},
    ),
    Case(
        "lone surrogate",
        "POST",
        "/v2/models/binary/infer",
        400,
        "surrogate",
        b'{"inputs": [{"name": "features", "shape": [1], "datatype": "BYTES", "data": ["\\udfff"]}]}',
        {"Content-Type": "application/json"},
    ),
    Case(
        "lone surrogate",
        "POST",
        "/v1/models/binary:classify",
        400,
        "surrogate",
        b'{"examples": [{"features": "\\ud800"}]}',
        {"Content-Type": "application/json"},
    ),
    # a string feature to :classify for an image input; an image Pillow recognises but cannot decode
    Case(
        "undecodable image",
        "POST",
        "/v1/models/digits:classify",
        400,
        "cannot decode image",
        b'{"examples": [{"image": "abc"}]}',
        {"Content-Type": "application/json"},
    ),
    Case(
        "undecodable image",
        "POST",
        "/models/digits/predict",
        400,
        "cannot decode image",
        MALFORMED_EXIF_JPEG,
        {"Content-Type": "image/jpeg"},
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = build_api_models(tmp_path_factory.getbasetemp() / "api_models")
    with start_server(models, tmp_path_factory.mktemp("bad_request_logs"), **LIMITS_ENV) as running:
        yield running


class GoodClient:
    """Predicts with a valid request in a loop, recording every answer that is not a 200."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    response = session.post(f"{self.url}/models/binary/predict", json=GOOD_ROW, timeout=30)
                except requests.RequestException as err:
                    self.failures.append(repr(err))
                    continue
                if response.status_code == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")
                time.sleep(0.02)

    def start(self) -> GoodClient:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def outcomes() -> Iterator[Counter]:
    """(category, status) -> count of what this module's tests sent, recorded for the figures once they all ran.

    Each test only adds to it; no test reads it, so no test depends on which others ran before it.
    """
    counts: Counter = Counter()
    yield counts
    by_category: dict[str, int] = Counter()
    for (category, _), count in counts.items():
        by_category[category] += count
    record(
        "bad_requests",
        tried_per_category=dict(by_category),
        status_5xx=sum(count for (_, status), count in counts.items() if status >= 500),
    )


def send(server: Server, case: Case) -> tuple[int, dict[str, str], bytes]:
    """Send `case` byte for byte (http.client: the path is not normalised, the body not re-encoded)."""
    if case.files is not None:
        prepared = requests.Request(case.method, server.url + "/x", files=case.files).prepare()
        body, headers = prepared.body, dict(prepared.headers)
    else:
        body, headers = case.body, dict(case.headers)
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest(case.method, case.path, skip_accept_encoding=True)
        for name, value in headers.items():
            if name.lower() == "content-length":
                continue
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body or b"")))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.category}:{c.method} {c.path[:40]}" for c in CASES])
def test_bad_request_gets_a_4xx_json_error_naming_the_problem(server: Server, case: Case, outcomes: Counter) -> None:
    status, headers, raw = send(server, case)
    outcomes[(case.category, status)] += 1
    assert status == case.status, raw[:500]
    assert headers["Content-Type"] == "application/json"
    body = json.loads(raw)
    assert list(body) == ["error"], body
    assert case.fragment in body["error"], body["error"]
    assert "Traceback" not in body["error"] and "/tmp" not in body["error"] and "site-packages" not in body["error"]
    assert len(headers["X-Request-ID"]) > 0


def _read_response(sock: socket.socket) -> bytes:
    """Read one HTTP response: headers, then the body up to its Content-Length (one recv may stop early)."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            return answer
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_body_over_the_limit_is_refused_before_it_is_sent(server: Server, outcomes: Counter) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /models/digits/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 500000000\r\n\r\n" + b"\0" * 1024
        )
        answer = _read_response(sock)
    outcomes[("body over MAX_REQUEST_BYTES", 413)] += 1
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"MAX_REQUEST_BYTES" in answer
    assert time.monotonic() - started < 10  # answered without waiting for the 500 MB


def test_chunked_body_over_the_limit_is_cut_off_at_the_limit(server: Server, outcomes: Counter) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(3 * MAX_REQUEST_BYTES // 100_000):
            yield b"\0" * 100_000

    response = requests.post(f"{server.url}/models/digits/predict", data=chunks(), headers=RAW_PNG, timeout=30)
    outcomes[("body over MAX_REQUEST_BYTES", response.status_code)] += 1
    assert response.status_code == 413, response.text
    assert "MAX_REQUEST_BYTES" in response.json()["error"]


def test_chunked_bodies_under_the_limit_are_served_whole(server: Server) -> None:
    def halves(data: bytes) -> Iterator[bytes]:
        yield data[: len(data) // 2]
        yield data[len(data) // 2 :]

    raw = requests.post(f"{server.url}/models/digits/predict", data=halves(PNG), headers=RAW_PNG, timeout=30)
    prepared = requests.Request("POST", server.url, files=[("image", ("a.png", PNG, "image/png"))]).prepare()
    multipart = requests.post(
        f"{server.url}/models/digits/predict",
        data=halves(prepared.body),
        headers={"Content-Type": prepared.headers["Content-Type"]},
        timeout=30,
    )
    rows = requests.post(
        f"{server.url}/models/binary/predict",
        data=halves(json.dumps(GOOD_ROW).encode()),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    for response in (raw, multipart, rows):
        assert response.status_code == 200, response.text
    assert raw.json()["predictions"] == multipart.json()["predictions"]


def test_idle_connection_is_closed_by_the_server(server: Server, outcomes: Counter) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by gunicorn (keep-alive timeout) without a byte sent
        elapsed_s = time.monotonic() - started
    outcomes[("slow client", 0)] += 1
    assert elapsed_s < 30


def test_slow_clients_do_not_stop_other_requests(server: Server, outcomes: Counter) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    slow = [socket.create_connection((host, int(port)), timeout=30) for _ in range(4)]
    latencies = []
    try:
        for sock in slow:
            sock.sendall(b"POST /models/binary/predict HTTP/1.1\r\nHost: x\r\n")
        for _ in range(10):
            for sock in slow:  # a header byte now and then: each keeps its request open
                sock.sendall(b"X")
            started = time.monotonic()
            response = requests.post(f"{server.url}/models/binary/predict", json=GOOD_ROW, timeout=30)
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200
            time.sleep(0.2)
    finally:
        for sock in slow:
            sock.close()
    outcomes[("slow client", 200)] += len(latencies)
    assert max(latencies) < 5, latencies


def test_worker_survived_and_good_requests_never_failed(server: Server) -> None:
    # Self-contained: it sends every bad request itself while a good client predicts in a loop, so it
    # shows the same whichever tests ran before it (or none).
    client = GoodClient(server.url).start()
    try:
        wait_until(lambda: client.ok > 0, timeout_s=30)
        statuses = [send(server, case)[0] for case in CASES]
        ok_before = client.ok
        wait_until(lambda: client.ok > ok_before, timeout_s=30)  # still answering after the last bad request
    finally:
        client.stop()
    assert server.get("/healthz").status_code == 200
    record("bad_requests_good_client", good_requests_meanwhile=client.ok, good_requests_failed=len(client.failures))
    assert [s for s in statuses if s >= 500] == []
    assert not client.failures, client.failures[:5]
    assert server.log().count("Booting worker") == 1, server.log()[-3000:]


def test_decoding_stops_when_the_client_closes_its_connection(server: Server) -> None:
    # A request of 8 images sent whole, then the connection closed at once: the worker notices between two
    # images (the end of the stream on the socket) and decodes no more, instead of decoding for nobody.
    picture = io.BytesIO()
    Image.new("RGB", (300, 300), (200, 100, 50)).save(picture, "PNG")
    files = [("image", (f"{i}.png", picture.getvalue(), "image/png")) for i in range(MAX_IMAGES)]
    prepared = requests.Request("POST", server.url + "/models/digits/predict", files=files).prepare()
    head = "".join(f"{k}: {v}\r\n" for k, v in prepared.headers.items())
    host, port = server.url.removeprefix("http://").split(":")
    stopped_before = server.log().count("decoding stopped after image")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /models/digits/predict HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + prepared.body)
    line = wait_until(
        lambda: [x for x in server.log().splitlines() if "decoding stopped after image" in x][stopped_before:],
        timeout_s=30,
    )
    found = re.search(r"decoding stopped after image (\d+) of (\d+)", line[0])
    assert found is not None, line
    decoded, total = int(found.group(1)), int(found.group(2))
    assert (total, decoded < total) == (MAX_IMAGES, True), line
    assert server.get("/healthz").status_code == 200

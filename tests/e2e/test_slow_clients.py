"""Slow clients against one real gunicorn worker with 4 request threads (service.slow_clients).

Dozens of connections trickle their headers or bodies, a byte every half second, far more than the
worker has threads. Meanwhile /healthz and a real prediction must each answer within a second, and
every trickler must get 408 (naming the setting) soon after its deadline. Short deadlines keep each
test to a few seconds.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests

from service.slow_clients import LINGER_S
from tests.e2e.conftest import Server, start_server
from tests.e2e.figures import record
from tests.e2e.scaled_models import save_scaled_model

HEADER_TIMEOUT_S = 3.0
BODY_TIMEOUT_S = 3.0
THREADS = 4
TRICKLERS = 48
TRICKLE_EVERY_S = 0.5
LOOP_TURN_S = 1.0  # the worker checks deadlines on each turn of its event loop, about once a second
ANSWER_WITHIN_S = 1.0
PREDICT = "/models/triple/predict"
ROW = b'{"instances": [[2.0]]}'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = tmp_path_factory.mktemp("slow_models")
    save_scaled_model(models / "triple.keras", 3.0)
    with start_server(
        models,
        tmp_path_factory.mktemp("slow_logs"),
        WORKERS="1",
        THREADS=str(THREADS),
        HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
    ) as running:
        yield running


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


@dataclass
class Answer:
    received: bytes
    answered_after_s: float
    """Seconds from opening the connection to the first byte of the answer (or to the close, without one)."""
    closed_after_s: float


@dataclass
class Tricklers:
    """Connections that each send `opening`, then one byte of `trickle` every TRICKLE_EVERY_S, from one thread."""

    server: Server
    opening: bytes
    trickle: bytes
    count: int = TRICKLERS
    socks: list[socket.socket] = field(default_factory=list)
    started: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Tricklers:
        self.socks = [socket.create_connection(address(self.server), timeout=10) for _ in range(self.count)]
        self.started = time.monotonic()
        for sock in self.socks:
            sock.sendall(self.opening)
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        alive = list(self.socks)
        sent = 0
        while alive and not self._stop.wait(TRICKLE_EVERY_S):
            byte = self.trickle[sent % len(self.trickle) : sent % len(self.trickle) + 1]
            sent += 1
            for sock in list(alive):
                try:
                    sock.sendall(byte)
                except OSError:  # answered and closed by the server
                    alive.remove(sock)

    def answers(self, timeout_s: float) -> list[Answer]:
        """What each connection received before the server closed it, and when."""
        deadline = time.monotonic() + timeout_s
        results = []
        for sock in self.socks:
            received, answered_at = b"", None
            try:
                while True:
                    sock.settimeout(max(deadline - time.monotonic(), 0.01))
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    received += chunk
                    answered_at = answered_at or time.monotonic()
            except ConnectionResetError:
                pass
            except TimeoutError:
                received += b"<still open>"
            closed_at = time.monotonic()
            results.append(Answer(received, (answered_at or closed_at) - self.started, closed_at - self.started))
        return results

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for sock in self.socks:
            sock.close()


def read_answer(sock: socket.socket, received: bytes = b"") -> bytes:
    """Read one whole HTTP answer (headers and its Content-Length body) from `sock`."""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536) or pytest.fail(f"closed before the headers: {received!r}")
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536) or pytest.fail(f"closed before the body: {received + body!r}")
    return head + b"\r\n\r\n" + body


def timed(call) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def probe_and_predict(server: Server, rounds: int = 5) -> tuple[list[float], list[float]]:
    """Latencies of /healthz and of a real prediction, each on a new connection, `rounds` times."""
    health, predict = [], []
    for _ in range(rounds):
        response, elapsed = timed(lambda: requests.get(server.url + "/healthz", timeout=10))
        assert response.status_code == 200, response.text
        health.append(elapsed)
        response, elapsed = timed(
            lambda: requests.post(
                server.url + PREDICT, data=ROW, headers={"Content-Type": "application/json"}, timeout=10
            )
        )
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == [[6.0]] or response.json()["predictions"] == [6.0], response.text
        predict.append(elapsed)
        time.sleep(0.1)
    return health, predict


def assert_all_timed_out(answers: list[Answer], setting: str, timeout_s: float, *, late_s: float = 0.0) -> float:
    """Every trickler got 408 naming `setting` by its deadline (plus a loop turn and `late_s`), then was closed.

    Returns the latest answer, in seconds after opening.
    """
    for answer in answers:
        assert b"<still open>" not in answer.received, f"a trickler was never closed: {answer.received[:200]!r}"
        assert answer.received.startswith(b"HTTP/1.1 408 "), answer.received[:300]
        assert setting.encode() in answer.received and b'{"error":"request ' in answer.received
        assert b"Connection: close" in answer.received, answer.received
        assert answer.answered_after_s < timeout_s + LOOP_TURN_S + 0.5 + late_s, answer
        assert answer.closed_after_s < answer.answered_after_s + LINGER_S + LOOP_TURN_S + 0.5, answer
    return max(answer.answered_after_s for answer in answers)


def test_dozens_of_clients_trickling_headers_neither_block_probes_nor_predictions(server: Server) -> None:
    test_started = time.monotonic()
    opening = b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\n"
    with Tricklers(server, opening, b"X-Slow: 1234567890") as tricklers:
        time.sleep(2 * TRICKLE_EVERY_S)  # every trickler accepted and sending
        health, predict = probe_and_predict(server)
        answers = tricklers.answers(timeout_s=HEADER_TIMEOUT_S + 10)
    latest = assert_all_timed_out(answers, "HEADER_TIMEOUT_S", HEADER_TIMEOUT_S)
    record(
        "slow_headers",
        tricklers=TRICKLERS,
        threads=THREADS,
        healthz_max_s=round(max(health), 3),
        predict_max_s=round(max(predict), 3),
        latest_408_s=round(latest, 2),
    )
    assert max(health) < ANSWER_WITHIN_S, health
    assert max(predict) < ANSWER_WITHIN_S, predict
    assert time.monotonic() - test_started < 30
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_dozens_of_clients_trickling_bodies_neither_block_probes_nor_predictions(server: Server, framing: str) -> None:
    test_started = time.monotonic()
    head = b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if framing == "content-length":
        opening = head + b"Content-Length: 1000\r\n\r\n"
        trickle = b" "
    else:
        opening = head + b"Transfer-Encoding: chunked\r\n\r\n"
        trickle = b"1\r\n \r\n"
    with Tricklers(server, opening, trickle) as tricklers:
        time.sleep(2 * TRICKLE_EVERY_S)
        health, predict = probe_and_predict(server)
        answers = tricklers.answers(timeout_s=BODY_TIMEOUT_S + 10)
    latest = assert_all_timed_out(answers, "BODY_TIMEOUT_S", BODY_TIMEOUT_S)
    record(
        f"slow_bodies_{framing}",
        tricklers=TRICKLERS,
        threads=THREADS,
        healthz_max_s=round(max(health), 3),
        predict_max_s=round(max(predict), 3),
        latest_408_s=round(latest, 2),
    )
    assert max(health) < ANSWER_WITHIN_S, health
    assert max(predict) < ANSWER_WITHIN_S, predict
    assert time.monotonic() - test_started < 30
    assert "Traceback" not in server.log()


def test_large_bodies_read_by_request_threads_get_408_and_probes_answer_meanwhile(server: Server) -> None:
    # Over the 1 MiB the event loop buffers: request threads read these, each under BODY_TIMEOUT_S.
    # They hold all THREADS request threads until then; probes have threads of their own.
    opening = (
        b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2000000\r\n\r\n"
    )
    with Tricklers(server, opening, b" ", count=THREADS + 2) as tricklers:
        time.sleep(2 * TRICKLE_EVERY_S)
        health = [timed(lambda: requests.get(server.url + "/healthz", timeout=10)) for _ in range(3)]
        answers = tricklers.answers(timeout_s=2 * BODY_TIMEOUT_S + 10)
    assert all(response.status_code == 200 for response, _ in health)
    latest = max(answer.answered_after_s for answer in answers)
    record(
        "slow_large_bodies",
        tricklers=THREADS + 2,
        threads=THREADS,
        healthz_max_s=round(max(elapsed for _, elapsed in health), 3),
        latest_408_s=round(latest, 2),
    )
    assert max(elapsed for _, elapsed in health) < ANSWER_WITHIN_S, health
    # Answered by the application (the DeadlineSocket raises RequestTimeout, api/errors.py maps it):
    # THREADS of them at their deadline, the other two as soon as a thread is free, i.e. just after.
    assert_all_timed_out(answers, "BODY_TIMEOUT_S", BODY_TIMEOUT_S, late_s=0.5)
    response = requests.post(server.url + PREDICT, data=ROW, headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 200, response.text
    assert "Traceback" not in server.log()


def test_a_request_sent_in_pieces_within_the_deadlines_is_served(server: Server) -> None:
    request = (
        b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(ROW)).encode() + b"\r\n\r\n" + ROW
    )
    with socket.create_connection(address(server), timeout=10) as sock:
        for start in range(0, len(request), 40):
            sock.sendall(request[start : start + 40])
            time.sleep(0.1)
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert b"6.0" in answer


def test_pipelined_requests_on_one_connection_are_all_answered_in_order(server: Server) -> None:
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    post = (
        b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(ROW)).encode() + b"\r\n\r\n" + ROW
    )
    chunked = (
        b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(ROW):x}".encode() + b"\r\n" + ROW + b"\r\n0\r\n\r\n"
    )
    last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(address(server), timeout=10) as sock:
        sock.sendall(get + post + chunked + last)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 ") == received.count(b"HTTP/1.1 200 OK\r\n") == 4, received[:2000]
    assert received.count(b"6.0") == 2 and received.count(b'"alive"') == 2, received


def test_a_client_expecting_100_continue_gets_it_and_is_served(server: Server) -> None:
    head = (
        b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: " + str(len(ROW)).encode() + b"\r\n\r\n"
    )
    with socket.create_connection(address(server), timeout=10) as sock:
        sock.sendall(head)
        interim = b""
        while b"\r\n\r\n" not in interim:  # the server answers nothing else before the body
            interim += sock.recv(65536) or pytest.fail(f"closed: {interim!r}")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
        sock.sendall(ROW)
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert b"6.0" in answer


def test_headers_over_64_kib_get_431(server: Server) -> None:
    with socket.create_connection(address(server), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 431 "), received[:300]
    assert b'{"error":"request line and headers are over 65536 bytes"}' in received


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(server: Server) -> None:
    with socket.create_connection(address(server), timeout=30) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""  # nothing was asked, so nothing is answered
        elapsed_s = time.monotonic() - started
    # Closed at the deadline, not before; the upper bound is generous (a busy 2-core host may delay the event
    # loop's turn), and a server that never closed it would hit the socket's 30 s timeout.
    assert HEADER_TIMEOUT_S - 0.5 < elapsed_s < HEADER_TIMEOUT_S + LOOP_TURN_S + 5.0, elapsed_s

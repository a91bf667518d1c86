"""Slow clients: a request is read by the worker's event loop, under deadlines, before a thread sees it.

gunicorn's gthread worker hands a connection to a request thread as soon as its first byte arrives,
and the thread then reads headers and body from a blocking socket with no deadline: a client sending
a byte now and then holds that thread for as long as it likes, and a few dozen such clients hold all
of them, probes included. Here the event loop (`service.worker.BalancedThreadWorker`) reads each
request into a `PendingRequest` instead, without blocking, until

- its headers are in (within `HEADER_TIMEOUT_S` of the connection, or of the first byte of a
  kept-alive connection's next request), and
- its body is in too, when that body is small enough to buffer (`Content-Length` or chunked, up to
  `BUFFERED_BODY_BYTES`; within `BODY_TIMEOUT_S` of the headers).

Only then does a thread get the request, its bytes pushed back into gunicorn's parser, so the
thread never waits for the client. A body too large to buffer, or one the client sends only after
`100 Continue`, is read by the thread through a `DeadlineSocket`, whose every `recv()` ends by the
same `BODY_TIMEOUT_S` deadline. A client that misses a deadline gets 408 with `{"error": ...}`
naming the setting, and its connection is closed.

Probes (`PROBE_PATHS`) that arrive whole go to their own small pool of threads, so `/healthz`
answers even when every request thread is busy with slow models or large uploads.

This module knows bytes and deadlines, not Flask; `RequestTimeout` is the domain error the API maps
to 408 when a thread's body read runs out of time.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

from service.errors import RequestTimeout

MAX_HEAD_BYTES = 64 * 1024
"""Largest request line plus headers the event loop buffers; a longer head gets 431."""

BUFFERED_BODY_BYTES = 1024 * 1024
"""Largest body the event loop buffers itself; larger ones are read by a request thread under a deadline."""

BUFFERED_BYTES_PER_WORKER = 64 * 1024 * 1024
"""Most body bytes all of a worker's pending requests may hold together; beyond that, threads read."""

READ_BYTES = 64 * 1024
"""Most bytes one non-blocking read of the event loop takes."""

PROBE_PATHS = frozenset({b"/healthz", b"/readyz", b"/v2/health/live", b"/v2/health/ready"})
"""GET/HEAD routes answered by the probe threads (the routes of service/api/health.py and the KServe v2 ones)."""

PROBE_THREADS = 2
"""Threads per worker that answer only probes."""

LINGER_S = 2.0
"""How long a closing connection is drained (after its last answer) before it is closed outright."""

LINGER_BYTES = 64 * 1024
"""Most bytes drained from a closing connection (gunicorn's own `close_graceful` caps, without blocking)."""

HEADER_TIMEOUT_SETTING = "HEADER_TIMEOUT_S"
BODY_TIMEOUT_SETTING = "BODY_TIMEOUT_S"


class PendingRequest:
    """A request the event loop is reading: its bytes so far, how far it got, and its deadline.

    Lifecycle: created when a connection has (or may soon have) a request to read; `feed()` with
    every chunk read; once `ready`, handed to a thread (and forgotten here); or dropped at its
    deadline. Used by the event loop only.
    """

    __slots__ = (
        "conn",
        "data",
        "deadline",
        "head_end",
        "content_length",
        "chunked",
        "_chunk_at",
        "body_end",
        "to_thread",
        "reserved",
        "method",
        "path",
    )

    def __init__(self, conn: Any, data: bytes, *, deadline: float) -> None:
        self.conn = conn
        self.data = bytearray(data)
        self.deadline = deadline
        """monotonic time by which the current part (headers, then body) must be in."""
        self.head_end = -1
        """Index just past the blank line ending the headers; -1 while they are incomplete."""
        self.content_length: int | None = None
        self.chunked = False
        self._chunk_at = 0
        self.body_end = -1
        """Index just past the body once it is all buffered; -1 before."""
        self.to_thread = False
        """Hand over now and let the thread read the body (under the body deadline)."""
        self.reserved = 0
        """Body bytes reserved in the worker's budget (`BUFFERED_BYTES_PER_WORKER`)."""
        self.method = b""
        self.path = b""

    @property
    def started(self) -> bool:
        return bool(self.data)

    @property
    def ready(self) -> bool:
        """Whether a thread can take the request now without waiting for the client (or must read a large body)."""
        return self.head_end >= 0 and (self.to_thread or self.body_end >= 0)

    @property
    def read_size(self) -> int:
        """Bytes to ask for next: while the headers are incomplete, no more than one over MAX_HEAD_BYTES."""
        if self.head_end < 0:
            return max(1, min(READ_BYTES, MAX_HEAD_BYTES + 1 - len(self.data)))
        return READ_BYTES

    @property
    def head_too_large(self) -> bool:
        return self.head_end < 0 and len(self.data) > MAX_HEAD_BYTES

    @property
    def is_probe(self) -> bool:
        return (
            self.method in (b"GET", b"HEAD")
            and self.path.split(b"?", 1)[0] in PROBE_PATHS
            and self.body_end == self.head_end
        )

    def feed(self, chunk: bytes, *, now: float, body_timeout_s: float, budget: int) -> None:
        """Add bytes read from the client and advance: headers, then the body.

        Args:
            budget: body bytes the worker can still buffer; a body that needs more goes to a thread.
        """
        self.data += chunk
        self.advance(now=now, body_timeout_s=body_timeout_s, budget=budget)

    def advance(self, *, now: float, body_timeout_s: float, budget: int) -> None:
        """Look for the end of the headers, then of the body, in the bytes received so far."""
        if self.head_end < 0:
            end = self.data.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head_end = end + 4
            self.deadline = now + body_timeout_s
            self._read_head(bytes(self.data[:end]), budget)
        if self.to_thread or self.body_end >= 0:
            return
        if self.chunked:
            self._find_last_chunk()
        elif len(self.data) >= self.head_end + (self.content_length or 0):
            self.body_end = self.head_end + (self.content_length or 0)

    def _read_head(self, head: bytes, budget: int) -> None:
        """Find the method, path and body framing; anything unusual goes to a thread and gunicorn's parser."""
        lines = head.split(b"\r\n")
        request_line = lines[0].split(b" ")
        if len(request_line) != 3:
            self.to_thread = True  # gunicorn answers 400 from the buffered bytes
            return
        self.method, self.path = request_line[0], request_line[1]
        lengths, codings, expect = [], [], False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                lengths.append(value.strip())
            elif name == b"transfer-encoding":
                codings.append(value.strip().lower())
            elif name == b"expect":
                expect = True
        if expect or len(lengths) > 1 or (lengths and codings) or (codings and codings != [b"chunked"]):
            # 100-continue: the client waits for gunicorn's "100 Continue" before sending the body.
            # The rest is malformed or unusual: gunicorn's parser decides, reading under the deadline.
            self.to_thread = True
            return
        if codings:
            self.chunked = True
            self._chunk_at = self.head_end
            self._reserve(BUFFERED_BODY_BYTES, budget)
            return
        if lengths:
            if not lengths[0].isdigit():
                self.to_thread = True
                return
            self.content_length = int(lengths[0])
            self._reserve(self.content_length, budget)

    def _reserve(self, size: int, budget: int) -> None:
        """Buffer a body of up to `size` bytes here if it fits the caps, else let a thread read it."""
        if size > min(BUFFERED_BODY_BYTES, budget):
            self.to_thread = True
        else:
            self.reserved = size

    def _find_last_chunk(self) -> None:
        """Walk the chunks received so far; stop at the last one (size 0) and its trailers, or at the cap."""
        data = self.data
        while True:
            line_end = data.find(b"\r\n", self._chunk_at)
            if line_end < 0:
                break
            size_field = bytes(data[self._chunk_at : line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError:
                self.to_thread = True  # gunicorn's parser answers 400
                return
            if size == 0:
                trailers_end = data.find(b"\r\n\r\n", line_end)
                if trailers_end >= 0:
                    self.body_end = trailers_end + 4
                break
            next_chunk = line_end + 2 + size + 2
            if next_chunk > len(data):
                break
            self._chunk_at = next_chunk
        if self.body_end < 0 and len(data) - self.head_end > self.reserved:
            self.to_thread = True  # more than we buffer: a thread reads the rest


class DeadlineSocket:
    """A connection's socket as its parser sees it: every `recv()` ends by the request's deadline.

    The event loop sets `deadline` when it hands a request to a thread. Missing it raises
    `RequestTimeout` (408), marks the socket `expired` and calls `on_expiry` (which makes the answer
    say `Connection: close`), so the connection is closed afterwards.
    `settimeout()` from gunicorn's own body drain still applies; whichever ends first wins. Used by
    one thread at a time (the one serving the connection's current request).
    """

    def __init__(self, sock: socket.socket, *, body_timeout_s: float) -> None:
        self._sock = sock
        self._body_timeout_s = body_timeout_s
        self._timeout: float | None = None
        self.deadline: float | None = None
        self.expired = False
        self.on_expiry: Callable[[], None] = _nothing

    def recv(self, size: int) -> bytes:
        remaining = None if self.deadline is None else self.deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise self._expire()
        ours = remaining is not None and (self._timeout is None or remaining < self._timeout)
        prior = self._sock.gettimeout()
        self._sock.settimeout(remaining if ours else self._timeout)
        try:
            return self._sock.recv(size)
        except TimeoutError:
            if not ours:
                raise
            raise self._expire() from None
        finally:
            self._sock.settimeout(prior)

    def _expire(self) -> RequestTimeout:
        self.expired = True
        self.on_expiry()
        return RequestTimeout("body", self._body_timeout_s, BODY_TIMEOUT_SETTING)

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


def error_answer(status: int, reason: str, message: str) -> bytes:
    """The bytes of a closing HTTP/1.1 answer with the service's `{"error": message}` body."""
    body = json.dumps({"error": message}, separators=(",", ":")).encode() + b"\n"  # as Flask writes it
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n"
    ).encode() + body


def _nothing() -> None:
    pass

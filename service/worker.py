"""BalancedThreadWorker: gunicorn's gthread worker, spreading connections evenly over the workers.

gunicorn's workers race to `accept()` on one shared listening socket, and a keep-alive client (a
load balancer's or ingress' connection pool, a `requests.Session`, wrk) then stays with the worker
that won, for good. Whoever's event loop wakes first wins, so a burst of new connections often
lands mostly on one worker: measured with 16 wrk connections and 2 workers, 13 and 3 or 12 and 4;
with 4 workers, one served 7,631 batch rows while the others served 1, 3 and 3. With one
TensorFlow thread per worker (the CPU default, see `service.runner.tf_thread_counts`) the worker
holding few connections idles while the other queues. BentoML 1.4 shows the same on this
machine: half the time one of its 2 workers took every connection.

Each worker publishes how many connections it holds in a small table all workers share (anonymous
shared memory made by the master when gunicorn imports this module, before it forks). When a new
connection is waiting, a worker holding more connections than its least-loaded living sibling steps
back for `YIELD_S` so that sibling takes it, again while the imbalance lasts; if nobody took it
within `MAX_WAIT_S` (the sibling is busy, stuck or gone), it accepts anyway. Balancing can delay
an accept by up to `MAX_WAIT_S`; it never refuses one, so a dead or wedged sibling costs nothing
but that delay.

It also reads every request on its event loop before a thread sees it, under `HEADER_TIMEOUT_S` and
`BODY_TIMEOUT_S`, and answers probes on threads of their own: slow clients never hold a request
thread (see `service.slow_clients`).

Selected by `gunicorn.conf.py`; everything else is gunicorn's own `gthread` worker.
"""

from __future__ import annotations

import multiprocessing
import os
import selectors
import socket
import threading
import time
from concurrent import futures
from functools import partial

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.workers.gthread import ThreadWorker

from service import pod_readiness  # imported here, in the master: its shared table must exist before the fork
from service.errors import RequestTimeout
from service.pod_readiness import alive
from service.settings import Settings
from service.slow_clients import (
    BODY_TIMEOUT_SETTING,
    BUFFERED_BYTES_PER_WORKER,
    HEADER_TIMEOUT_SETTING,
    LINGER_BYTES,
    LINGER_S,
    MAX_HEAD_BYTES,
    PROBE_THREADS,
    READ_BYTES,
    DeadlineSocket,
    PendingRequest,
    error_answer,
)

YIELD_S = 0.01
"""How long a worker holding more connections than a sibling steps back at a time."""

MAX_WAIT_S = 0.05
"""Longest a waiting connection is left to siblings before this worker accepts it anyway: a sibling
busy on every core may take a few pauses to get to its accept."""

HEARTBEAT_S = 1.0
"""Least time between two heartbeats to the master (gunicorn kills a worker silent for `timeout`,
120 s). gunicorn calls `notify` on every turn of the event loop, several per request, and each
heartbeat is an `os.utime` system call: at one client they were a sixth of the worker's samples."""

SLOTS = 256
"""Workers the shared table can hold (gunicorn restarts reuse the slots of dead workers)."""

# (pid, connections) per slot. Created at import, i.e. in the master before the fork, so every
# worker maps the same memory. A worker killed outright leaves its pid behind; readers skip pids
# that are no longer alive.
_table = multiprocessing.RawArray("q", 2 * SLOTS)
_table_lock = multiprocessing.Lock()


COALESCE_BYTES = 64 * 1024
"""Largest first body chunk sent in one `send()` with the headers (a larger one goes on its own:
copying it to join them would cost more than the second system call saves)."""


class _Capture:
    """Stands in for the socket while gunicorn writes the headers: keeps the bytes instead."""

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += data


class CoalescingResponse(wsgi.Response):
    """gunicorn's response, sending the headers with the first body bytes: one `send()` per answer.

    gunicorn sends the headers, then each body chunk, each in its own `send()`; every one pays the
    TCP path (on loopback, the receiver's too). A JSON answer is one small chunk, so holding the
    headers until it comes halves the sends: profiled, the two sends were 14% of a worker's CPU.
    Everything else is gunicorn's (the headers are still made by its `send_headers`).
    """

    sock: socket.socket | _Capture
    """The connection's socket (gunicorn's attribute; `_Capture` only inside `send_headers`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._held = b""

    def send_headers(self):
        if self.headers_sent:
            return
        sock, capture = self.sock, _Capture()
        self.sock = capture
        try:
            super().send_headers()
        finally:
            self.sock = sock
        self._held = capture.data

    def _flush_headers(self) -> None:
        if self._held:
            held, self._held = self._held, b""
            util.write(self.sock, held)

    def _emit_body(self, data):
        if self._held and not self.chunked and len(data) <= COALESCE_BYTES:
            held, self._held = self._held, b""
            util.write(self.sock, held + data)
            return
        self._flush_headers()
        super()._emit_body(data)

    def sendfile(self, respiter):
        self.send_headers()
        self._flush_headers()
        return super().sendfile(respiter)

    def close(self):
        self.send_headers()
        self._flush_headers()
        super().close()


class BalancedThreadWorker(ThreadWorker):
    """gthread worker that leaves a new connection to a sibling holding fewer connections."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._slot = -1
        self._last_heartbeat = float("-inf")
        self._resume_at = 0.0
        """While in the future: accepting is paused so a less-loaded sibling takes the connection."""
        self._waiting_since = 0.0
        """When this worker first stepped back from the connection now waiting."""
        settings = Settings()
        self._header_timeout_s = settings.header_timeout_s
        self._body_timeout_s = settings.body_timeout_s
        # The event loop reads plain HTTP/1.1 bytes itself; TLS and HTTP/2 connections keep gunicorn's
        # own handling (the service is run behind a TLS-terminating ingress, with neither enabled).
        self._reads_in_loop = not self.cfg.is_ssl and "h2" not in getattr(self.cfg, "http_protocols", "h1")
        self._pending: dict[object, PendingRequest] = {}
        """Requests the event loop is reading, by connection (TConn)."""
        self._reserved_bytes = 0
        """Body bytes the pending requests may buffer together (see BUFFERED_BYTES_PER_WORKER)."""
        self._probe_pool: futures.ThreadPoolExecutor | None = None
        self._lingering: dict[socket.socket, tuple[float, int]] = {}
        """Closing sockets being drained: (when to close them anyway, bytes drained so far)."""

    # --- the shared table -------------------------------------------------------------------------

    def _claim_slot(self) -> None:
        pid = os.getpid()
        with _table_lock:
            for slot in range(SLOTS):
                owner = _table[2 * slot]
                if owner == 0 or owner == pid or not alive(owner):
                    _table[2 * slot], _table[2 * slot + 1] = pid, 0
                    self._slot = slot
                    return
        self.log.warning("connection balancing off in worker %s: all %d slots are taken", pid, SLOTS)

    def _release_slot(self) -> None:
        if self._slot >= 0:
            with _table_lock:
                _table[2 * self._slot], _table[2 * self._slot + 1] = 0, 0
            self._slot = -1

    def _publish(self) -> None:
        if self._slot >= 0:
            _table[2 * self._slot + 1] = self.nr_conns

    def _least_loaded_sibling(self) -> int | None:
        """Connections held by the living sibling that holds the fewest, or None without siblings."""
        least = None
        for slot in range(SLOTS):
            pid = _table[2 * slot]
            if pid and slot != self._slot:
                held = _table[2 * slot + 1]
                if (least is None or held < least) and alive(pid):
                    least = held
        return least

    # --- gthread hooks ----------------------------------------------------------------------------

    def init_process(self):
        # Before super(): gunicorn's init_process ends by running the event loop.
        self._probe_pool = futures.ThreadPoolExecutor(max_workers=PROBE_THREADS, thread_name_prefix="probe")
        # gunicorn's wsgi.create() builds each request's response from this module-level name; set in
        # the worker only (after the fork), so the master and other worker classes keep gunicorn's own.
        wsgi.Response = CoalescingResponse
        super().init_process()

    def run(self):
        self._claim_slot()
        pod_readiness.join(self.cfg.workers)
        try:
            super().run()
        finally:
            pod_readiness.leave()
            self._release_slot()
            if self._probe_pool is not None:
                self._probe_pool.shutdown(wait=False)

    def accept(self, listener):
        now = time.monotonic()
        if now > self._resume_at + YIELD_S:  # not right after a pause: a new connection, a new wait
            self._waiting_since = now
        self._resume_at = 0.0
        if self._slot >= 0 and now - self._waiting_since < MAX_WAIT_S:
            least = self._least_loaded_sibling()
            if least is not None and self.nr_conns > least:
                self._pause_accepting()
                return
        super().accept(listener)
        self._publish()

    def set_accept_enabled(self, enabled):
        # The event loop re-enables accepting on every turn; hold off while paused.
        if enabled and self._resume_at and time.monotonic() < self._resume_at:
            return
        super().set_accept_enabled(enabled)

    def notify(self):
        # Called on every turn of the event loop, i.e. after connections finished or timed out.
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_S:
            self._last_heartbeat = now
            super().notify()
        self._publish()

    # --- slow clients: requests are read by the event loop (see service.slow_clients) --------------

    def enqueue_req(self, conn):
        """Read the connection's next request on the event loop; a thread gets it once it is in.

        gunicorn calls this for a new connection, a kept-alive one that became readable, and one
        whose previous request was followed by more bytes (pipelining).
        """
        if not self._reads_in_loop:
            return super().enqueue_req(conn)
        # Buffered bytes the parser read ahead (pipelining) start the next request.
        received = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        now = time.monotonic()
        pending = PendingRequest(conn, received, deadline=now + self._header_timeout_s)
        self._pending[conn] = pending
        conn.sock.setblocking(False)
        if received:
            self._advance(pending, b"", now)
        if conn in self._pending:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, pending))

    def _on_readable(self, pending: PendingRequest, _sock) -> None:
        try:
            chunk = pending.conn.sock.recv(pending.read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client went away before finishing its request
            self._drop(pending)
            return
        self._advance(pending, chunk, time.monotonic())

    def _advance(self, pending: PendingRequest, chunk: bytes, now: float) -> None:
        was_reserved = pending.reserved
        budget = BUFFERED_BYTES_PER_WORKER - self._reserved_bytes
        pending.feed(chunk, now=now, body_timeout_s=self._body_timeout_s, budget=budget)
        self._reserved_bytes += pending.reserved - was_reserved
        if pending.head_too_large:
            self.log.info("client %s: request headers over %d bytes: 431", _peer(pending.conn), MAX_HEAD_BYTES)
            self._drop(
                pending,
                error_answer(
                    431, "Request Header Fields Too Large", f"request line and headers are over {MAX_HEAD_BYTES} bytes"
                ),
            )
        elif pending.ready:
            self._hand_over(pending)

    def _hand_over(self, pending: PendingRequest) -> None:
        """Give the request, its buffered bytes pushed back into gunicorn's parser, to a thread."""
        conn = self._forget(pending)
        if conn.parser is None:
            # Built here rather than in TConn.init() so that it reads through a DeadlineSocket.
            conn.parser = http.get_parser(
                self.cfg, DeadlineSocket(conn.sock, body_timeout_s=self._body_timeout_s), conn.client
            )
        conn.parser.unreader.unread(bytes(pending.data))
        source = conn.parser.unreader.sock
        source.deadline = pending.deadline
        source.on_expiry = partial(_close_after_answer, conn)
        conn.data_ready = True  # gunicorn's handle() need not wait for data
        pool = (self._probe_pool or self.tpool) if pending.is_probe else self.tpool
        fs = pool.submit(self.handle, conn)
        fs.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def _forget(self, pending: PendingRequest):
        conn = pending.conn
        del self._pending[conn]
        self._reserved_bytes -= pending.reserved
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass  # not registered (yet)
        return conn

    def _drop(self, pending: PendingRequest, answer: bytes = b"") -> None:
        """Close the connection of a request that will not be served, after `answer` if any."""
        conn = self._forget(pending)
        self.nr_conns -= 1
        if answer:
            try:
                conn.sock.send(answer)  # a few hundred bytes into an empty send buffer: never blocks
            except OSError:
                pass
        self._linger(conn.sock)

    def finish_request(self, conn, fs):
        # gunicorn closes a connection it will not keep alive with util.close_graceful(), which waits
        # on the event loop for up to 2 s while the client keeps its socket open: one trickler per
        # 2 s stalls every connection and probe. It is drained here without blocking instead.
        if self._reads_in_loop and not fs.cancelled() and fs.exception() is None and not fs.result():
            self.nr_conns -= 1
            self._linger(conn.sock)
            return
        super().finish_request(conn, fs)

    def _linger(self, sock: socket.socket) -> None:
        """Close `sock` as RFC 9112 section 9.6 asks, without blocking: FIN first, then drain, then close.

        Closing with unread bytes would send a reset, which can destroy the answer just sent. Well-behaved
        clients close at once; at most `worker_connections` others linger, so file descriptors stay bounded.
        """
        if len(self._lingering) >= self.worker_connections:
            util.close(sock)
            return
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
            self.poller.register(sock, selectors.EVENT_READ, self._drain)
        except (OSError, ValueError, KeyError):
            util.close(sock)
            return
        self._lingering[sock] = (time.monotonic() + LINGER_S, 0)

    def _drain(self, sock: socket.socket) -> None:
        deadline, drained = self._lingering[sock]
        try:
            chunk = sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        drained += len(chunk)
        if chunk and drained < LINGER_BYTES:
            self._lingering[sock] = (deadline, drained)
        else:
            self._close_lingering(sock)

    def _close_lingering(self, sock: socket.socket) -> None:
        del self._lingering[sock]
        try:
            self.poller.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass
        util.close(sock)

    def murder_keepalived(self, force=False):
        # Called on every turn of the event loop (about once a second), and with force=True at exit.
        super().murder_keepalived(force)
        now = time.monotonic()
        for pending in [p for p in self._pending.values() if force or p.deadline <= now]:
            if not pending.started:
                self._drop(pending)  # connected, sent nothing: closed like an idle keep-alive connection
                continue
            part, timeout_s, setting = (
                ("headers", self._header_timeout_s, HEADER_TIMEOUT_SETTING)
                if pending.head_end < 0
                else ("body", self._body_timeout_s, BODY_TIMEOUT_SETTING)
            )
            message = str(RequestTimeout(part, timeout_s, setting))
            self.log.info("client %s: %s: 408", _peer(pending.conn), message)
            self._drop(pending, error_answer(408, "Request Timeout", message))
        for sock in [s for s, (deadline, _) in self._lingering.items() if force or deadline <= now]:
            self._close_lingering(sock)

    def _keepalive_after(self, conn, keepalive):
        # A body read that ran out of time leaves the rest of the body on the socket: close.
        source = getattr(conn.parser.unreader, "sock", None)
        if isinstance(source, DeadlineSocket) and source.expired:
            return False
        try:
            return super()._keepalive_after(conn, keepalive)
        except RequestTimeout:  # the unread body could not be drained by the deadline
            return False

    def handle_error(self, req, client, addr, exc):
        # A deadline missed outside the application (gunicorn reading a request): 408, no traceback.
        if not isinstance(exc, RequestTimeout):
            return super().handle_error(req, client, addr, exc)
        self.log.info("client %s: %s: 408", (addr or ("",))[0], exc)
        try:
            util.write(client, error_answer(408, "Request Timeout", str(exc)))
        except OSError:
            pass
        return None

    # --- balancing, continued ---------------------------------------------------------------------

    def _pause_accepting(self) -> None:
        self._resume_at = time.monotonic() + YIELD_S
        super().set_accept_enabled(False)
        # Wake the event loop when the pause ends, so it re-enables accepting even with no traffic.
        timer = threading.Timer(YIELD_S, self.method_queue.defer, args=(_nothing,))
        timer.daemon = True
        timer.start()


def _close_after_answer(conn) -> None:
    """Make the answer to the connection's current request say `Connection: close` (its body is unread)."""
    if conn.parser.mesg is not None:
        conn.parser.mesg.must_close = True


def _peer(conn) -> str:
    client = getattr(conn, "client", None)
    return str(client[0]) if isinstance(client, tuple) else str(client)


def _nothing() -> None:
    """Deferred onto the event loop only to wake it."""

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

Selected by `gunicorn.conf.py`; everything else is gunicorn's own `gthread` worker.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

from gunicorn.workers.gthread import ThreadWorker

YIELD_S = 0.01
"""How long a worker holding more connections than a sibling steps back at a time."""

MAX_WAIT_S = 0.05
"""Longest a waiting connection is left to siblings before this worker accepts it anyway: a sibling
busy on every core may take a few pauses to get to its accept."""

SLOTS = 256
"""Workers the shared table can hold (gunicorn restarts reuse the slots of dead workers)."""

# (pid, connections) per slot. Created at import, i.e. in the master before the fork, so every
# worker maps the same memory. A worker killed outright leaves its pid behind; readers skip pids
# that are no longer alive.
_table = multiprocessing.RawArray("q", 2 * SLOTS)
_table_lock = multiprocessing.Lock()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - exists, owned by someone else
        return True
    return True


class BalancedThreadWorker(ThreadWorker):
    """gthread worker that leaves a new connection to a sibling holding fewer connections."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._slot = -1
        self._resume_at = 0.0
        """While in the future: accepting is paused so a less-loaded sibling takes the connection."""
        self._waiting_since = 0.0
        """When this worker first stepped back from the connection now waiting."""

    # --- the shared table -------------------------------------------------------------------------

    def _claim_slot(self) -> None:
        pid = os.getpid()
        with _table_lock:
            for slot in range(SLOTS):
                owner = _table[2 * slot]
                if owner == 0 or owner == pid or not _alive(owner):
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
                if (least is None or held < least) and _alive(pid):
                    least = held
        return least

    # --- gthread hooks ----------------------------------------------------------------------------

    def run(self):
        self._claim_slot()
        try:
            super().run()
        finally:
            self._release_slot()

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
        super().notify()
        self._publish()

    def _pause_accepting(self) -> None:
        self._resume_at = time.monotonic() + YIELD_S
        super().set_accept_enabled(False)
        # Wake the event loop when the pause ends, so it re-enables accepting even with no traffic.
        timer = threading.Timer(YIELD_S, self.method_queue.defer, args=(_nothing,))
        timer.daemon = True
        timer.start()


def _nothing() -> None:
    """Deferred onto the event loop only to wake it."""

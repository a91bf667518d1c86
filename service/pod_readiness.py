"""Pod readiness: ready only when every gunicorn worker of this server is, not just the one asked.

Kubernetes sends each `/readyz` probe to whichever worker accepts the connection. Every worker
loads the models on its own, so right after start (or after a worker is replaced) one worker can be
ready while another is still loading: a probe answered by the first would put the pod into
service and about half the requests would meet the second and get 503.

Each worker publishes its own readiness into a small table all workers share (anonymous shared
memory created when gunicorn imports the worker class, in the master, before it forks), and a
worker answers ready only when as many living workers as gunicorn runs have published ready.
`service.worker.BalancedThreadWorker` joins the table when it starts and leaves it when it stops;
a process that never joined (Flask's test client, another worker class) answers for itself alone.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable

SLOTS = 256
"""Workers the table can hold (gunicorn's restarts reuse the slots of dead workers)."""

PUBLISH_INTERVAL_S = 0.5
"""How often a worker republishes its readiness (state changes reach the table within this)."""

# (pid, ready) per slot; created at import, i.e. in gunicorn's master when it imports the worker
# class, so every forked worker maps the same memory. Readers skip pids that are no longer alive.
_table = multiprocessing.RawArray("q", 2 * SLOTS)
_lock = multiprocessing.Lock()
_slot = -1
_expected = 1
_ready = False


def alive(pid: int) -> bool:
    """Whether process `pid` still exists (worker tables keep the pids of killed workers)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - exists, owned by someone else
        return True
    return True


def join(expected_workers: int) -> None:
    """Take a slot for this worker process; `expected_workers` is how many workers gunicorn runs."""
    global _slot, _expected
    pid = os.getpid()
    with _lock:
        for slot in range(SLOTS):
            owner = _table[2 * slot]
            if owner == 0 or owner == pid or not alive(owner):
                _table[2 * slot], _table[2 * slot + 1] = pid, int(_ready)
                _slot, _expected = slot, max(1, expected_workers)
                return


def leave() -> None:
    """Give this worker's slot back (it stops serving)."""
    global _slot
    if _slot >= 0:
        with _lock:
            _table[2 * _slot], _table[2 * _slot + 1] = 0, 0
        _slot = -1


def publish(ready: bool) -> None:
    """Record whether this worker is ready (kept locally until the worker joins)."""
    global _ready
    _ready = ready
    if _slot >= 0:
        _table[2 * _slot + 1] = int(ready)


def others_not_ready() -> str:
    """Why the other workers are not all ready yet; "" when they are, or when this process never joined."""
    if _slot < 0:
        return ""
    ready = sum(
        1
        for slot in range(SLOTS)
        if _table[2 * slot] and _table[2 * slot + 1] and (slot == _slot or alive(_table[2 * slot]))
    )
    if ready >= _expected:
        return ""
    return f"{ready} of {_expected} workers ready; the others are still loading their models"


def start_publisher(ready: Callable[[], bool], stopped: threading.Event) -> threading.Thread:
    """Republish `ready()` every PUBLISH_INTERVAL_S until `stopped` is set, so the table follows
    this worker's state even when no probe reaches it."""

    def run() -> None:
        while not stopped.wait(PUBLISH_INTERVAL_S):
            publish(ready())

    thread = threading.Thread(target=run, name="kerasserve-pod-readiness", daemon=True)
    thread.start()
    return thread

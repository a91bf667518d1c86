"""What views reach through the Flask app: the `Runtime` of this worker, and the helpers that read it.

`create_app` puts one `Runtime` into `app.extensions["kerasserve"]`; views call `dataplane()` and
`runtime()` instead of reaching for globals. Kept apart from `service.api`'s `__init__` (which
imports every view to register it) so that views import this module and not their own package:
no import cycle.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app, g, request

from service import access_log

if TYPE_CHECKING:  # pragma: no cover
    from service.dataplane import DataPlane
    from service.payload_log import PayloadLogger
    from service.settings import Settings

EXTENSION = "kerasserve"


@dataclass(frozen=True, slots=True)
class Runtime:
    """The serving components one worker's app uses: settings and data plane (views never see the manager)."""

    settings: Settings
    dataplane: DataPlane
    stop: Callable[[], None]
    """Stops the repository watcher and unloads every version (runs at exit; tests call it)."""
    payload_log: PayloadLogger | None = None
    """Sends request and response bodies to PAYLOAD_LOG_URL; None when payload logging is off."""


def runtime() -> Runtime:
    """Return the current app's Runtime."""
    return current_app.extensions[EXTENSION]


def dataplane() -> DataPlane:
    """Return the current app's DataPlane."""
    return current_app.extensions[EXTENSION].dataplane


def note_model(name: str) -> None:
    """Record which model a request is for, for the request metrics (labelled `_unknown` unless the model exists)."""
    g.kerasserve_model = name
    access_log.note_model(name)


def client_gone_check() -> Callable[[], bool] | None:
    """A check of whether this request's client closed its connection (None outside gunicorn, e.g. test clients).

    The request's body has been read when it runs, so the socket holds nothing of it: a peek that finds the end of
    the stream (or a reset) means the client is gone; nothing to read, or the next pipelined request, means it is
    waiting. A client that half-closes its side after sending counts as gone (HTTP clients do not do that).
    """
    sock = request.environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return None

    def gone() -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except (ValueError, TypeError):  # a socket that takes no flags (TLS): cannot tell
            return False
        except OSError:  # reset by the peer
            return True

    return gone

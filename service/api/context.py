"""What views reach through the Flask app: the `Runtime` of this worker, and the helpers that read it.

`create_app` puts one `Runtime` into `app.extensions["kerasserve"]`; views call `dataplane()` and
`runtime()` instead of reaching for globals. Kept apart from `service.api`'s `__init__` (which
imports every view to register it) so that views import this module and not their own package:
no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app, g

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

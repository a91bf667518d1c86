"""Logging: plain text or one JSON object per line (`LOG_JSON`), request ids on request log lines.

`configure_logging(settings)` is called once per worker by `create_app`. The request id of the
request being served (set by the API layer through `request_id_var`) is added to every record
logged while it is served.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import sys
import time

from service.settings import Settings

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_id_prefix = os.urandom(8).hex()
_id_counter = itertools.count()


def _draw_id_prefix() -> None:
    global _id_prefix
    _id_prefix = os.urandom(8).hex()


# A forked child (a gunicorn worker) draws its own prefix, so it never repeats its master's ids.
os.register_at_fork(after_in_child=_draw_id_prefix)


def new_request_id() -> str:
    """A new request id: 32 hex digits, unique across processes and restarts, with no system call.

    A random 64-bit prefix per process (drawn again in a forked child) and a counter, instead of
    `uuid4()`, whose `getrandom` system call per request cost about 6% of a worker's CPU.
    """
    return f"{_id_prefix}{next(_id_counter) & 0xFFFFFFFFFFFFFFFF:016x}"


protocol_var: contextvars.ContextVar[str] = contextvars.ContextVar("protocol", default="-")
"""The protocol of the request being answered (`rest`, `grpc`; `-` outside requests), in every log line."""


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.protocol = protocol_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, protocol, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "protocol": getattr(record, "protocol", "-"),
            "pid": record.process,
        }
        access = getattr(record, "access", None)  # an access record's fields (service.access_log)
        if access:
            entry.update(access)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    """Send the service's logs to stderr, as text or JSON, at the configured level; idempotent."""
    root = logging.getLogger("service")
    if getattr(root, "_kerasserve_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if settings.log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s [%(protocol)s req %(request_id)s]"
            )
        )
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    root.propagate = False
    root._kerasserve_configured = True  # type: ignore[attr-defined]  # a marker on the root logger: configured once

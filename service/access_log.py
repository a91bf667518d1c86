"""The access log: one record per request answered, HTTP and gRPC, through Python logging.

Our own hook, not gunicorn's access log: gunicorn sees bytes and a status, while a record here also
carries what only the service knows (model, version, rows, the batch's queue and compute times,
the request and trace ids), and it covers gRPC, which gunicorn never sees.

The protocol layer (`api/__init__.py`, `grpc_services._rpc`) opens a `Record` when a request comes
in (`begin`) and writes it when the answer leaves (`finish`); in between the data plane adds what it
learns (`note_inference`) to the record of the request being served, found through a context
variable, so nothing is passed up. Records go to the `service.access` logger at INFO whatever
LOG_LEVEL, through the service's handler: one text line, or with LOG_JSON one JSON object whose keys
are the fields below. With ACCESS_LOG off, `begin` returns None and nothing else happens.
"""

from __future__ import annotations

import contextvars
import logging
import time
from dataclasses import dataclass

from service.servable import ServableId
from service.settings import Settings

logger = logging.getLogger("service.access")

PROBE_ROUTES = frozenset(
    {
        "health.healthz",
        "health.readyz",
        "metrics.metrics",
        "kserve_v2.live",
        "kserve_v2.ready",
        "Health/Check",
        "Health/Watch",
        "GRPCInferenceService/ServerLive",
        "GRPCInferenceService/ServerReady",
    }
)
"""Routes (Flask endpoints, gRPC `Service/Method`) left out of the access log unless ACCESS_LOG_PROBES."""


@dataclass(slots=True)
class Record:
    """What is known about one request; filled in as it is served, written once when it is answered."""

    protocol: str
    method: str
    """HTTP method, or `grpc`."""
    path: str
    """URL path, or the gRPC method's full name."""
    route: str
    """Flask endpoint or `Service/Method`: the `route` label of the request metrics."""
    client: str
    request_id: str
    started: float
    """time.monotonic() when the request came in."""
    bytes_in: int = 0
    model: str = ""
    version: int | None = None
    rows: int | None = None
    queue_s: float | None = None
    """Time in the batch queue (batched calls only)."""
    compute_s: float | None = None
    """Time of the device call that answered the request (its whole batch's call)."""
    batch_rows: int | None = None
    """Rows of that device call (this request's and its batch-mates')."""
    trace_id: str = ""
    write: bool = True
    """Written when answered (False: kept only for what the payload logger reads, ACCESS_LOG being off or a probe)."""

    def fields(self, status: str, bytes_out: int | None, seconds: float) -> dict[str, object]:
        """The record as JSON-ready fields; times in milliseconds."""
        return {
            "protocol": self.protocol,
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "model": self.model,
            "version": self.version,
            "rows": self.rows,
            "status": status,
            "total_ms": _ms(seconds),
            "queue_ms": _ms(self.queue_s),
            "compute_ms": _ms(self.compute_s),
            "batch_rows": self.batch_rows,
            "bytes_in": self.bytes_in,
            "bytes_out": bytes_out,
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "client": self.client,
        }


TEXT_FIELDS = (
    "protocol",
    "method",
    "path",
    "status",
    "model",
    "version",
    "rows",
    "total_ms",
    "queue_ms",
    "compute_ms",
    "batch_rows",
    "bytes_in",
    "bytes_out",
    "trace_id",
    "client",
)
TEXT = (
    "%s %s %s %s model=%s version=%s rows=%s total_ms=%s queue_ms=%s compute_ms=%s batch_rows=%s "
    "in=%s out=%s trace=%s client=%s"
)
"""The text line of a record: TEXT_FIELDS in this format, `-` for an empty one (LOG_JSON: every field a key)."""

_record: contextvars.ContextVar[Record | None] = contextvars.ContextVar("access_record", default=None)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


_enabled = False
_probes = False


def configure(settings: Settings) -> None:
    """Turn the access log on or off in this process (ACCESS_LOG, ACCESS_LOG_PROBES); INFO whatever LOG_LEVEL."""
    global _enabled, _probes
    _enabled, _probes = settings.access_log, settings.access_log_probes
    logger.setLevel(logging.INFO if settings.access_log else logging.CRITICAL + 1)


def begin(
    *,
    protocol: str,
    method: str,
    path: str,
    route: str,
    client: str,
    request_id: str,
    bytes_in: int = 0,
    started: float | None = None,
    keep: bool = False,
) -> Record | None:
    """Open the record of the request now being served in this thread (None when not logged, unless `keep`)."""
    write = _enabled and (_probes or route not in PROBE_ROUTES)
    if not write and not keep:
        _record.set(None)
        return None
    record = Record(
        protocol,
        method,
        path,
        route,
        client,
        request_id,
        time.monotonic() if started is None else started,
        bytes_in,
        write=write,
    )
    _record.set(record)
    return record


def current() -> Record | None:
    """The record of the request being served in this thread, if it is logged."""
    return _record.get()


def note_model(name: str) -> None:
    """Record the model a request names (before it is looked up: failed lookups show it too)."""
    record = _record.get()
    if record is not None and not record.model:
        record.model = name


def note_inference(
    servable_id: ServableId,
    rows: int | None,
    *,
    queue_s: float | None = None,
    compute_s: float | None = None,
    batch_rows: int | None = None,
) -> None:
    """Record the version that answered, the request's rows and, when batched, its queue and compute times."""
    record = _record.get()
    if record is None:
        return
    record.model = servable_id.name
    record.version = servable_id.version
    record.rows = rows
    record.queue_s = queue_s
    record.compute_s = compute_s
    record.batch_rows = batch_rows


def finish(record: Record | None, status: str, bytes_out: int | None) -> None:
    """Write `record` (the request is answered with `status`) and close it; no-op for None."""
    if record is None:
        return
    _record.set(None)
    if not record.write:
        return
    fields = record.fields(status, bytes_out, time.monotonic() - record.started)
    logger.info(TEXT, *[_dash(fields[name]) for name in TEXT_FIELDS], extra={"access": fields})


def _dash(value: object) -> object:
    return "-" if value is None or value == "" else value

"""HTTP API: one Blueprint per surface, and the request hooks.

`register_blueprints(app)` installs the blueprints and the hooks every request passes through:
request ids (`X-Request-ID`, echoed or generated), the request metrics (REQUESTS and REQUEST_SECONDS,
observed once, here), the access record (`service.access_log`), the trace header, payload logging
(`service.payload_log`), and `before_request` hooks: the place where authentication and CORS plug in.
Views reach the serving components through `current_app.extensions["kerasserve"]`, never globals,
with the helpers of `service.api.context` (re-exported here for `service.app`).
"""

from __future__ import annotations

import re
import time

from flask import Flask, Response, g, request
from werkzeug.datastructures import FileStorage
from werkzeug.routing import BaseConverter, ValidationError

from service import access_log, security, tracing
from service.api.context import EXTENSION, Runtime, dataplane, note_model, runtime
from service.errors import PayloadTooLarge
from service.logs import new_request_id, protocol_var, request_id_var
from service.metrics import REST, UNKNOWN_MODEL, observe_request
from service.protocols import parse_int

__all__ = ["EXTENSION", "Runtime", "dataplane", "note_model", "register_blueprints", "runtime"]

REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class VersionConverter(BaseConverter):
    """`<version:v>` in URLs: a version number in ASCII digits (Werkzeug's `int` takes any Unicode digit, '\u0661' too)."""

    regex = "[0-9]+"

    def to_python(self, value: str) -> int:
        number = parse_int(value)
        if number is None:
            raise ValidationError()
        return number

    def to_url(self, value: int) -> str:
        return str(int(value))


def _start_request() -> None:
    """Take or make the request id, start the request clock, open the access record, decide on payload logging."""
    g.kerasserve_started = time.monotonic()
    client_id = request.headers.get(REQUEST_ID_HEADER, "")
    # A client's id is echoed only when it is short and plain, so it can go into logs and headers safely.
    g.kerasserve_request_id = client_id if _CLIENT_REQUEST_ID.match(client_id) else new_request_id()
    request_id_var.set(g.kerasserve_request_id)
    protocol_var.set(REST)
    payload_log = runtime().payload_log
    g.kerasserve_payload = payload_log is not None and request.method == "POST" and payload_log.sampled()
    record = access_log.begin(
        protocol=REST,
        method=request.method,
        path=request.path,
        route=request.endpoint or "unmatched",
        client=request.remote_addr or "",
        request_id=g.kerasserve_request_id,
        bytes_in=request.content_length or 0,
        started=g.kerasserve_started,
        keep=g.kerasserve_payload,  # the payload logger reads the version from it
    )
    if record is not None:
        record.trace_id = tracing.trace_id()
    g.kerasserve_access = record


def _finish_request(response: Response) -> Response:
    """Add the request id (and trace) headers, observe the request metrics, log payloads and write the access record: once per response."""
    request_id = g.get("kerasserve_request_id") or new_request_id()
    response.headers[REQUEST_ID_HEADER] = request_id
    route = request.endpoint or "unmatched"
    model = g.get("kerasserve_model", "")
    if model and not dataplane().knows_model(model):
        # Only models that exist become label values, whether the request failed before the lookup
        # (400, 415) or at it (404): made-up names would grow the metric files without bound.
        model = UNKNOWN_MODEL
    started = g.get("kerasserve_started")
    seconds = None if started is None else time.monotonic() - started
    observe_request(REST, route, model, str(response.status_code), seconds)
    trace_header = tracing.response_header()
    if trace_header is not None:
        response.headers[tracing.RESPONSE_HEADER] = trace_header
    record = g.get("kerasserve_access")
    body = g.get("kerasserve_payload_body")
    if body is not None:  # logged, and let in by the guard
        _log_payloads(request_id, response, record, body)
    access_log.finish(record, str(response.status_code), response.content_length)
    return response


def _capture_payload() -> None:
    """Keep the body of a request whose payloads are logged (views then read this copy), once the guard let it in."""
    if g.get("kerasserve_payload"):
        g.kerasserve_payload_body = request.get_data(cache=True)


def _log_payloads(request_id: str, response: Response, record: access_log.Record | None, body: bytes) -> None:
    """Hand the request's and the response's bodies to the payload logger (it only queues them)."""
    payload_log = runtime().payload_log
    if payload_log is None:
        return
    files = None
    if request.mimetype == "multipart/form-data" and not runtime().settings.payload_log_images:
        files = [_part(name, part) for name, part in request.files.items(multi=True)]
    payload_log.log_exchange(
        request_id=request_id,
        model=(record.model if record is not None else "") or g.get("kerasserve_model", ""),
        version=record.version if record is not None else None,
        path=request.path,
        status=response.status_code,
        request_type=request.content_type or "",
        request_body=body,
        response_type=response.content_type or "",
        response_body=b"" if response.is_streamed else response.get_data(),
        files=files,
    )


def _part(name: str, part: FileStorage) -> dict[str, object]:
    """A multipart part's name, file name, type and size (for the payload log's size note)."""
    stream = part.stream
    position = stream.tell()
    size = stream.seek(0, 2)
    stream.seek(position)
    return {"name": name, "filename": part.filename, "content_type": part.mimetype, "bytes": size}


def _guard_request() -> None:
    """Refuse early, before any body is read: missing bearer token, oversized body, unsafe model names."""
    settings = runtime().settings
    if security.needs_token(request.path, request.method, settings):
        security.check_bearer(request.headers.get("Authorization"), settings)
    length = request.content_length
    if length is not None and length > settings.max_request_bytes:
        raise PayloadTooLarge(
            f"request body of {length} bytes is larger than the limit of {settings.max_request_bytes} bytes (MAX_REQUEST_BYTES)"
        )
    if length is None and "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        # Werkzeug silently cuts a chunked body off at MAX_CONTENT_LENGTH: read it (at most that
        # much; views get the cached copy) and refuse it when it reached the limit.
        if len(request.get_data(cache=True)) >= settings.max_request_bytes:
            raise PayloadTooLarge(
                f"chunked request body reached the limit of {settings.max_request_bytes} bytes (MAX_REQUEST_BYTES)"
            )
    security.check_view_args(request.view_args, request.args.get("model"))


def _add_cors(response: Response) -> Response:
    """Add CORS headers for allowed origins (CORS is off unless CORS_ORIGINS lists some)."""
    preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
    headers = security.cors_headers(
        request.headers.get("Origin"),
        preflight=preflight,
        requested_headers=request.headers.get("Access-Control-Request-Headers"),
        settings=runtime().settings,
    )
    for name, value in headers.items():
        response.headers[name] = value
    return response


def register_blueprints(app: Flask) -> None:
    """Install every API surface and the request hooks on `app`.

    Hook point: authentication (`Settings.auth_token`) and CORS (`Settings.cors_origins`) are
    `before_request` / `after_request` hooks registered here, after `_start_request`, so that their
    refusals carry a request id and are counted like every other response.
    """
    from service.api import console, health, kserve_v2, models, openapi, predict, tfserving
    from service.api import metrics as metrics_api

    app.url_map.converters["version"] = VersionConverter  # before the blueprints' rules are bound
    tracing.instrument_app(app)  # first: its span is current in the hooks below (no-op without tracing)
    app.before_request(_start_request)
    app.before_request(_guard_request)
    app.before_request(_capture_payload)
    app.after_request(_finish_request)
    app.after_request(_add_cors)
    for blueprint in (
        console.bp,
        health.bp,
        metrics_api.bp,
        openapi.bp,
        predict.bp,
        models.bp,
        tfserving.bp,
        kserve_v2.bp,
    ):
        app.register_blueprint(blueprint)

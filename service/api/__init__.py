"""HTTP API: one Blueprint per surface, and the request hooks.

`register_blueprints(app)` installs the blueprints and the hooks every request passes through:
request ids (`X-Request-ID`, echoed or generated), the request metrics (REQUESTS and REQUEST_SECONDS,
observed once, here), and `before_request` hooks: the place where authentication and CORS plug in.
Views reach the serving components through `current_app.extensions["kerasserve"]`, never globals,
with the helpers of `service.api.context` (re-exported here for `service.app`).
"""

from __future__ import annotations

import re
import time
import uuid

from flask import Flask, Response, g, request
from werkzeug.routing import BaseConverter, ValidationError

from service import security
from service.api.context import EXTENSION, Runtime, dataplane, note_model, runtime
from service.errors import PayloadTooLarge
from service.logs import protocol_var, request_id_var
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
    """Take or make the request id and start the request clock."""
    g.kerasserve_started = time.monotonic()
    client_id = request.headers.get(REQUEST_ID_HEADER, "")
    # A client's id is echoed only when it is short and plain, so it can go into logs and headers safely.
    g.kerasserve_request_id = client_id if _CLIENT_REQUEST_ID.match(client_id) else uuid.uuid4().hex
    request_id_var.set(g.kerasserve_request_id)
    protocol_var.set(REST)


def _finish_request(response: Response) -> Response:
    """Add the request id header and observe the request metrics, once per response."""
    request_id = g.get("kerasserve_request_id") or uuid.uuid4().hex
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
    return response


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
    app.before_request(_start_request)
    app.before_request(_guard_request)
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

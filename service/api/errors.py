"""The one table mapping errors to HTTP status codes, and the handlers that write `{"error": msg}`.

Every error body is `{"error": "<message>"}`: ServingErrors show their message; Werkzeug's HTTP
errors (unknown route, wrong method, body too large) their description; anything else becomes a
generic 500 whose traceback goes to the log only, never to the client.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from service.errors import (
    UNEXPECTED_MESSAGE,
    ClientGone,
    InferenceError,
    InvalidInput,
    InvalidTensor,
    ModelControlDisabled,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
    Unauthorized,
    Unimplemented,
    UnsupportedMediaType,
    client_message,
)

log = logging.getLogger(__name__)

HTTP_STATUS: dict[type[ServingError], int] = {
    ClientGone: 499,  # nginx's 'client closed request': logged, never read
    InvalidInput: 400,
    ModelLoadFailed: 400,
    Unauthorized: 401,
    ModelNotFound: 404,
    RequestTimeout: 408,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidTensor: 422,
    InferenceError: 500,
    Unimplemented: 501,
    ModelNotReady: 503,
    ModelControlDisabled: 503,
    Overloaded: 503,
}
RETRY_AFTER_S: dict[type[ServingError], int] = {ModelNotReady: 5}
"""Retry-After of 503 answers without their own `retry_after_s`."""


def status_for(error: ServingError) -> int:
    """Status of the nearest class in HTTP_STATUS; 500 when none is listed."""
    return next((HTTP_STATUS[c] for c in type(error).__mro__ if c in HTTP_STATUS), 500)


def error_response(message: str, status: int) -> Response:
    """Return the `{"error": message}` response every error path uses."""
    response = jsonify(error=message)
    response.status_code = status
    return response


def handle_serving_error(error: ServingError) -> Response:
    """Answer a domain error with its status from HTTP_STATUS (plus Retry-After on 503)."""
    status = status_for(error)
    if status >= 500:
        log.warning("%s answered %d: %s", type(error).__name__, status, error)
    response = error_response(client_message(error), status)
    if status == 503:
        retry_after = getattr(error, "retry_after_s", None) or RETRY_AFTER_S.get(type(error), 1)
        response.headers["Retry-After"] = str(int(retry_after))
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def handle_http_exception(error: HTTPException) -> Response:
    """Answer Werkzeug's errors (unknown URL, wrong method, body too large) as JSON."""
    message = error.description or error.name
    if error.code == 413:
        message = "request body is larger than MAX_REQUEST_BYTES allows"
    elif error.code == 404:
        message = "no such URL; see /openapi.json for the native API, /v1/models/<name> and /v2 for the others"
    elif error.code == 405:
        message = "method not allowed on this URL"
    response = error_response(message, error.code or 500)
    if error.code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def handle_unexpected(error: Exception) -> Response:
    """Answer a bug with a generic 500; the traceback goes to the log only."""
    log.error("unexpected error while answering a request", exc_info=error)
    return error_response(UNEXPECTED_MESSAGE, 500)


def register_error_handlers(app: Flask) -> None:
    """Install the three handlers: ServingError, Werkzeug HTTPException, and any other Exception."""
    app.register_error_handler(ServingError, handle_serving_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)

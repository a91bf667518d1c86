"""The one table mapping errors to gRPC status codes: the gRPC twin of `service/api/errors.py`'s HTTP table.

Every gRPC method answers a `ServingError` with the status code of its nearest class in
`GRPC_STATUS` and the same message REST gives (`{"error": "<message>"}` there, the status details
here); anything else is a bug: INTERNAL with a generic message, the traceback in the log only.
Codes follow TF Serving's own choices (a full batch queue is UNAVAILABLE, so clients retry it).
"""

from __future__ import annotations

import logging

import grpc

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

GRPC_STATUS: dict[type[ServingError], grpc.StatusCode] = {
    ClientGone: grpc.StatusCode.CANCELLED,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelLoadFailed: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    RequestTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UnsupportedMediaType: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidTensor: grpc.StatusCode.INVALID_ARGUMENT,
    InferenceError: grpc.StatusCode.INTERNAL,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    ModelControlDisabled: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.UNAVAILABLE,
}
"""Status code per error class; the classes are those of `service.api.errors.HTTP_STATUS` (a test keeps them equal)."""


def status_for(error: ServingError) -> grpc.StatusCode:
    """Status of the nearest class in GRPC_STATUS; INTERNAL when none is listed."""
    return next((GRPC_STATUS[c] for c in type(error).__mro__ if c in GRPC_STATUS), grpc.StatusCode.INTERNAL)


def code_for(error: Exception) -> grpc.StatusCode:
    """The status code `abort` answers `error` with (INTERNAL for anything that is not a ServingError)."""
    return status_for(error) if isinstance(error, ServingError) else grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, error: Exception) -> None:
    """End the call with the status and message for `error` (never returns: `context.abort` raises)."""
    if isinstance(error, ServingError):
        code = status_for(error)
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED):
            log.warning("%s answered %s: %s", type(error).__name__, code.name, error)
        context.abort(code, client_message(error))
    log.error("unexpected error while answering a gRPC call", exc_info=error)
    context.abort(grpc.StatusCode.INTERNAL, UNEXPECTED_MESSAGE)

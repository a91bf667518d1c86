"""Errors a client or an operator may be told about.

Domain errors know nothing about HTTP: `service/api/errors.py` maps each class to a status code in
one table. The message of a `ServingError` is shown to clients, so it never carries a stack trace or
a file-system path. This module imports neither Flask nor TensorFlow.
"""

from __future__ import annotations

import re


class ServingError(Exception):
    """Base of every error a client may be told about; the message is shown to the client."""


class InvalidInput(ServingError):
    """The request cannot be parsed or does not fit the model (HTTP 400)."""


class InvalidTensor(InvalidInput):
    """Valid JSON whose tensors have the wrong shape or dtype for the model (HTTP 422)."""


class PayloadTooLarge(ServingError):
    """The request body, batch or image is larger than a configured limit (HTTP 413)."""


class ClientGone(ServingError):
    """The client closed its connection before its answer: the work for it stops (HTTP 499, never read)."""


class RequestTimeout(ServingError):
    """The client did not send its request headers or body within the configured time (HTTP 408)."""

    def __init__(self, part: str, timeout_s: float, setting: str) -> None:
        super().__init__(f"request {part} not received within {timeout_s:g} s ({setting}); the connection is closed")


class UnsupportedMediaType(ServingError):
    """The request's Content-Type is not one the route accepts (HTTP 415)."""


class Unauthorized(ServingError):
    """A bearer token is required and was missing or wrong (HTTP 401)."""


class ModelNotFound(ServingError):
    """No model, version or label by that name (HTTP 404)."""

    def __init__(self, name: str, version: int | None = None, label: str | None = None) -> None:
        if version is not None:
            what = f"version {version} of model '{name}'"
        elif label is not None:
            what = f"label '{label}' of model '{name}'"
        else:
            what = f"model '{name}'"
        super().__init__(f"{what} does not exist")
        self.name = name
        self.version = version


class ModelNotReady(ServingError):
    """The model exists but no version of it is AVAILABLE yet (HTTP 503)."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(f"model '{name}' has no AVAILABLE version yet{': ' + detail if detail else ''}")
        self.name = name


class Overloaded(ServingError):
    """The batch queue is full; the client should retry later (HTTP 503 with Retry-After)."""

    retry_after_s: int = 1


class Unimplemented(ServingError):
    """The model does not offer this operation (e.g. :classify without that signature) (HTTP 501)."""


class InferenceError(ServingError):
    """The model failed while computing a valid request (HTTP 500, message kept generic)."""


class ModelControlDisabled(ServingError):
    """The repository API's `load` or `unload` was called while MODEL_CONTROL=poll (HTTP 503, as Triton answers)."""

    def __init__(self) -> None:
        super().__init__(
            "explicit model load / unload is not allowed if polling is enabled; "
            "start the server with MODEL_CONTROL=explicit to load and unload models through this API"
        )


class ModelLoadFailed(ServingError):
    """A repository API `load` found no version to load, or a version failed to load (HTTP 400, as Triton answers)."""


UNEXPECTED_MESSAGE = "internal error; see the server log"
"""What a client is told about a bug, over any transport (the traceback goes to the log only)."""


def client_message(error: ServingError) -> str:
    """The message a client is told for `error`, over any transport (REST's error body, gRPC's details)."""
    if isinstance(error, InferenceError):
        return str(error) or "the model failed while computing"
    return str(error)


class ModelLoadError(Exception):
    """A model file could not be turned into a servable.

    Not a request error: the manager records it as the version's error and the status views show it.
    The message names the file's detected format, the loaders tried, every missing object and how to
    provide it.
    """

    def __init__(
        self, message: str, *, missing: tuple[str, ...] = (), format: str = "", tried: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.format = format
        self.tried = tried


class MissingCustomObject(ModelLoadError):
    """Loading needs custom layers, functions, Lambda globals or Lambda replacements nobody registered."""


class UnsafeModelRefused(ModelLoadError):
    """The file holds Lambda code and `allow_lambda` is off."""


class ModelCrashed(ModelLoadError):
    """Loading the file killed (or hung) the process that tried: the Lambda probe's child, or a worker.

    The builder remembers its content hash (`service.quarantine`): it is not tried again until it changes.
    """


class InsecureModelsDir(Exception):
    """MODELS_DIR (or its plugins folder) can be written by every user, and `allow_world_writable_models` is off.

    Not a request error: raised at start-up (the worker does not boot) and before each load.
    """


_PATH_RE = re.compile(r"(?:/[\w.\-+@]+){2,}/?")


def strip_paths(text: str) -> str:
    """Replace absolute paths in a message by their last component (messages never show the server's paths)."""
    return _PATH_RE.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)

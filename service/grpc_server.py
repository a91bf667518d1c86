"""GrpcServer: one worker's gRPC server on GRPC_PORT, beside its HTTP server, over the same data plane.

Started in each gunicorn worker after the fork (gunicorn.conf.py's `post_worker_init`, through
`service.app.serve_grpc`), never in the master: gRPC's threads and TensorFlow must start in the
process that serves. Every worker binds the same port with SO_REUSEPORT (`grpc.so_reuseport`), so
the kernel spreads new connections over the workers, as the HTTP listener does.

The bearer token (AUTH_TOKEN) is checked from the `authorization` metadata by an interceptor before
a message is even parsed; health (`grpc.health.v1.Health`, ServerLive, ServerReady) stays open, as
the HTTP probes do; server reflection (`grpc.reflection.v1alpha.ServerReflection`, what `grpcurl list`
asks) needs the token like every other method. The largest message a client may send is MAX_REQUEST_BYTES, as for HTTP bodies.

Stopping: `begin_stop(grace_s)` (on SIGTERM) refuses new calls at once and gives the calls in
flight `grace_s` to finish; `wait_stopped` (at the worker's exit) waits for them, before the models
are unloaded.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tensorflow_serving.apis import (
    model_service_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service import grpc_errors, grpc_services, security
from service.dataplane import DataPlane
from service.errors import Unauthorized
from service.metrics import GRPC, observe_request
from service.settings import Settings

log = logging.getLogger(__name__)

OPEN_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
    }
)
"""Methods that never need the bearer token, besides every `grpc.health.v1.Health` method (the probes)."""
HEALTH_PREFIX = "/grpc.health.v1.Health/"


DECLARING_MODULES = (prediction_service_pb2, model_service_pb2, service_pb2, health_pb2)
"""The modules declaring the hosted services: imported so their files are in protobuf's default pool, which
reflection answers from (TF Serving's `*_pb2_grpc` modules do not import the file declaring their service)."""


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _BearerToken(grpc.ServerInterceptor):
    """Refuse calls without `authorization: Bearer <AUTH_TOKEN>` (UNAUTHENTICATED, REST's messages); probes stay open."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method in OPEN_METHODS or method.startswith(HEALTH_PREFIX):
            return continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata or ()
        authorization = next((value for key, value in metadata if key == "authorization"), None)
        try:
            security.check_bearer(authorization if isinstance(authorization, str) else None, self._settings)
        except Unauthorized as err:
            handler = continuation(handler_call_details)
            if handler is None:
                return None  # an unknown method: UNIMPLEMENTED, whoever asks
            return _refusal(handler, err, method)
        return continuation(handler_call_details)


def _route(method: str) -> str:
    """The `route` label of a method: '/tensorflow.serving.PredictionService/Predict' -> 'PredictionService/Predict'."""
    service, _, name = method.lstrip("/").partition("/")
    return f"{service.rsplit('.', 1)[-1]}/{name}"


def _refusal(handler: grpc.RpcMethodHandler, error: Unauthorized, method: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers `error` without parsing the request (counted, as REST's 401s)."""

    def refuse(_request, context: grpc.ServicerContext):
        observe_request(GRPC, _route(method), "", grpc_errors.code_for(error).name, None)
        grpc_errors.abort(context, error)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class GrpcServer:
    """One worker's gRPC server: started by `start`, stopped by `begin_stop` then `wait_stopped`. Thread-safe."""

    def __init__(self, server: grpc.Server, address: str, stopping: threading.Event) -> None:
        self._server = server
        self.address = address
        self._stopping = stopping
        self._stopped: threading.Event | None = None
        self._lock = threading.Lock()

    def begin_stop(self, grace_s: float) -> None:
        """Refuse new calls now; give the calls in flight `grace_s` to finish (idempotent, returns at once)."""
        with self._lock:
            if self._stopped is not None:
                return
            self._stopping.set()  # ends Health.Watch streams, so they do not hold the drain up
            self._stopped = self._server.stop(grace_s)
        log.info("gRPC server on %s stopping; calls in flight get %.0f s", self.address, grace_s)

    def wait_stopped(self, timeout_s: float) -> bool:
        """Wait until the server has stopped (stopping it at once if `begin_stop` was never called)."""
        self.begin_stop(0)
        assert self._stopped is not None
        done = self._stopped.wait(timeout_s)
        log.info("gRPC server on %s %s", self.address, "stopped" if done else "still draining at exit")
        return done


def start(settings: Settings, dataplane: DataPlane) -> GrpcServer:
    """Bind GRPC_PORT (SO_REUSEPORT) with every service over `dataplane`, and start serving.

    Raises:
        RuntimeError: the port cannot be bound (in use by a process of another user, or a bad HOST).
    """
    stopping = threading.Event()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="grpc"),
        interceptors=[_BearerToken(settings)],
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", -1),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        grpc_services.PredictionService(dataplane, settings), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(grpc_services.ModelService(dataplane), server)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(grpc_services.InferenceService(dataplane), server)
    health_pb2_grpc.add_HealthServicer_to_server(grpc_services.HealthService(dataplane, stopping), server)
    reflection.enable_server_reflection(grpc_services.SERVICE_NAMES, server)  # `grpcurl list`, `grpcurl describe`
    address = _address(settings.host, settings.grpc_port)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as err:
        raise RuntimeError(
            f"gRPC cannot listen on {address} (GRPC_PORT): {err}; set another GRPC_PORT, or 0 to turn gRPC off"
        ) from err
    if port == 0:  # older grpcio answers 0 instead of raising
        raise RuntimeError(f"gRPC cannot listen on {address} (GRPC_PORT); set another GRPC_PORT, or 0 to turn gRPC off")
    server.start()
    log.info("gRPC serving on %s in worker %d", address, os.getpid())
    return GrpcServer(server, address, stopping)

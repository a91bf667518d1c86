"""The gRPC services: what the REST views are for HTTP, over the same data plane.

`tensorflow.serving.PredictionService` and `ModelService`, `inference.GRPCInferenceService` and
`grpc.health.v1.Health`, each a subclass of the servicer class its package generates. A method
checks the model name as REST does, decodes the message with its adapter (`protocols/*_grpc.py`),
calls the data plane and encodes the answer; `grpc_errors` turns any error into the status code and
the message REST gives. Nothing here knows HTTP, and nothing below the data plane knows gRPC.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service import access_log, grpc_errors, security, tracing
from service.dataplane import DataPlane
from service.errors import ModelNotFound, ModelNotReady, Unimplemented
from service.logs import new_request_id, protocol_var, request_id_var
from service.metrics import GRPC, UNKNOWN_MODEL, observe_request
from service.protocols import kserve_v2_grpc, tfserving_grpc
from service.servable import ServableState
from service.settings import Settings

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
"""Metadata key of the request id: taken from the client when short and plain, else made; sent back in the initial metadata."""

SERVICE_NAMES = (
    "tensorflow.serving.PredictionService",
    "tensorflow.serving.ModelService",
    "inference.GRPCInferenceService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
)
"""Services this server hosts (what reflection lists); Health answers for each of them, and for the whole server ("")."""

WATCH_INTERVAL_S = 1.0
"""How often Health.Watch looks at readiness again."""

_Response = TypeVar("_Response")


def _rpc(method: Callable[..., _Response]) -> Callable[..., _Response]:
    """Run one unary method with a request id, map every error through `grpc_errors`, and count it
    in the request metrics (`protocol="grpc"`, `route="<Service>/<Method>"`, `code` the status name)."""

    @functools.wraps(method)
    def call(self, request, context: grpc.ServicerContext) -> _Response:
        started = time.monotonic()
        metadata = dict(context.invocation_metadata())
        given = metadata.get(REQUEST_ID_KEY, "")
        request_id = given if isinstance(given, str) and _plain(given) else new_request_id()
        request_id_var.set(request_id)
        protocol_var.set(GRPC)
        route = f"{self.SERVICE}/{method.__name__}"
        probe = route in access_log.PROBE_ROUTES
        with contextlib.nullcontext() if probe else tracing.server_span(route, metadata):
            record = access_log.begin(
                protocol=GRPC,
                method="grpc",
                path=f"/{self.PACKAGE}.{self.SERVICE}/{method.__name__}",
                route=route,
                client=context.peer(),
                request_id=request_id,
                started=started,
            )
            if record is not None:
                record.bytes_in = request.ByteSize()
                record.trace_id = tracing.trace_id()
            initial = [(REQUEST_ID_KEY, request_id)]
            trace_header = None if probe else tracing.response_header()
            if trace_header is not None:
                initial.append((tracing.RESPONSE_HEADER, trace_header))
            context.send_initial_metadata(tuple(initial))
            code = grpc.StatusCode.OK
            response = None
            try:
                response = method(self, request, context)
                return response
            except Exception as err:  # noqa: BLE001 - every error becomes a status, as REST's handlers do
                code = grpc_errors.code_for(err)
                grpc_errors.abort(context, err)
                raise  # not reached: abort raises
            finally:
                model = _model_label(self._dataplane, request)
                observe_request(GRPC, route, model, code.name, time.monotonic() - started)
                if record is not None and not record.model:
                    record.model = model
                access_log.finish(record, code.name, None if response is None else _byte_size(response))

    return call


def _byte_size(message: object) -> int | None:
    """A protobuf message's serialized size (what goes on the wire, before compression)."""
    size = getattr(message, "ByteSize", None)
    return size() if callable(size) else None


def _model_label(dataplane: DataPlane, request) -> str:
    """The `model` label of a call: the model it names when the repository knows it, else `_unknown` ("" for none).

    The same rule as REST's: client-chosen names never become label values.
    """
    fields = request.DESCRIPTOR.fields_by_name
    if "model_spec" in fields:
        name = request.model_spec.name
    elif "model_name" in fields:
        name = request.model_name
    elif "name" in fields:
        name = request.name
    else:
        return ""
    if name and not dataplane.knows_model(name):
        return UNKNOWN_MODEL
    return name


def _plain(value: str) -> bool:
    return 0 < len(value) <= 128 and all(c.isalnum() or c in "._:-" for c in value) and value.isascii()


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """`tensorflow.serving.PredictionService`: Predict, Classify, Regress, GetModelMetadata. Thread-safe."""

    SERVICE = "PredictionService"
    PACKAGE = "tensorflow.serving"

    def __init__(self, dataplane: DataPlane, settings: Settings) -> None:
        self._dataplane = dataplane
        self._settings = settings

    @_rpc
    def Predict(self, request, context):  # noqa: N802 - the generated method names
        security.check_model_name(request.model_spec.name)
        predict = tfserving_grpc.decode_predict(request, max_bytes=self._settings.max_request_bytes)
        response = self._dataplane.predict(predict)
        with tracing.span("encode"):
            return tfserving_grpc.encode_predict(predict, response, request.model_spec.signature_name)

    def _run_examples(self, request, method: str):
        """Classify and Regress: the request's tf.Examples through the data plane."""
        security.check_model_name(request.model_spec.name)
        examples = tfserving_grpc.decode_examples(request.model_spec, request.input, method)
        return self._dataplane.classify_examples(examples)

    @_rpc
    def Classify(self, request, context):
        return tfserving_grpc.encode_classify(
            self._run_examples(request, "classify"), request.model_spec.signature_name
        )

    @_rpc
    def Regress(self, request, context):
        return tfserving_grpc.encode_regress(self._run_examples(request, "regress"), request.model_spec.signature_name)

    @_rpc
    def MultiInference(self, request, context):
        raise Unimplemented("MultiInference is not supported; call Classify or Regress once per task")

    @_rpc
    def GetModelMetadata(self, request, context):
        security.check_model_name(request.model_spec.name)
        tfserving_grpc.check_metadata_fields(list(request.metadata_field))
        target = tfserving_grpc.decode_model_spec(request.model_spec)
        return tfserving_grpc.encode_metadata(self._dataplane.metadata(target))


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """`tensorflow.serving.ModelService`: GetModelStatus; the model configuration comes from MODELS_DIR. Thread-safe."""

    SERVICE = "ModelService"
    PACKAGE = "tensorflow.serving"

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    @_rpc
    def GetModelStatus(self, request, context):
        security.check_model_name(request.model_spec.name)
        target = tfserving_grpc.decode_model_spec(request.model_spec)
        return tfserving_grpc.encode_status(self._dataplane.model_status(target.name), target)

    @_rpc
    def HandleReloadConfigRequest(self, request, context):
        raise Unimplemented(
            "HandleReloadConfigRequest is not supported: models and versions come from MODELS_DIR, which the server "
            "watches; add or remove version folders (docs/model-repository.md) instead of sending a config"
        )


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """`inference.GRPCInferenceService`: health, metadata, ModelInfer and the model repository extension
    (RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload); the other methods answer UNIMPLEMENTED. Thread-safe."""

    SERVICE = "GRPCInferenceService"
    PACKAGE = "inference"

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    @_rpc
    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    @_rpc
    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self._dataplane.readiness().ready)

    @_rpc
    def ModelReady(self, request, context):
        try:
            security.check_model_name(request.name)
            self._dataplane.metadata(kserve_v2_grpc.decode_target(request.name, request.version))
        except (ModelNotFound, ModelNotReady):
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    @_rpc
    def ServerMetadata(self, request, context):
        return kserve_v2_grpc.encode_server_metadata()

    @_rpc
    def ModelMetadata(self, request, context):
        security.check_model_name(request.name)
        metadata = self._dataplane.metadata(kserve_v2_grpc.decode_target(request.name, request.version))
        status = self._dataplane.model_status(request.name)
        versions = [v.version for v in status.versions if v.state is ServableState.AVAILABLE]
        serving = next((v for v in status.versions if v.version == metadata.servable_id.version), None)
        format_ = serving.info.format if serving is not None and serving.info is not None else ""
        return kserve_v2_grpc.encode_model_metadata(metadata, versions, format_)

    @_rpc
    def ModelInfer(self, request, context):
        security.check_model_name(request.model_name)
        predict, classes = kserve_v2_grpc.decode_infer(request)
        response = self._dataplane.predict(predict)
        with tracing.span("encode"):
            return kserve_v2_grpc.encode_infer(response, request.id, classes)

    @_rpc
    def RepositoryIndex(self, request, context):
        return kserve_v2_grpc.encode_repository_index(self._dataplane.repository_index(ready_only=request.ready))

    @_rpc
    def RepositoryModelLoad(self, request, context):
        security.check_model_name(request.model_name)
        kserve_v2_grpc.check_load_parameters(request)
        self._dataplane.load_model(request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    @_rpc
    def RepositoryModelUnload(self, request, context):
        security.check_model_name(request.model_name)
        self._dataplane.unload_model(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()


class HealthService(health_pb2_grpc.HealthServicer):
    """`grpc.health.v1.Health`: SERVING exactly when `/readyz` would answer 200 (every worker's models loaded);
    for a model name as the service, SERVING when that model has an AVAILABLE version (NOT_FOUND for unknown models).

    Readiness is read at each call rather than pushed, so it cannot lag behind `/readyz`. Watch
    streams end when the server begins to stop, so they never hold a graceful shutdown up. Thread-safe.
    """

    def __init__(self, dataplane: DataPlane, stopping: threading.Event) -> None:
        self._dataplane = dataplane
        self._stopping = stopping

    def _status(self, service: str = "") -> int:
        if self._stopping.is_set():
            return health_pb2.HealthCheckResponse.NOT_SERVING
        if service and service not in SERVICE_NAMES:  # a model: SERVING when it has an AVAILABLE version
            versions = self._dataplane.model_status(service).versions
            available = any(v.state is ServableState.AVAILABLE for v in versions)
            return health_pb2.HealthCheckResponse.SERVING if available else health_pb2.HealthCheckResponse.NOT_SERVING
        if not self._dataplane.readiness().ready:
            return health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse.SERVING

    def _known(self, service: str) -> bool:
        return not service or service in SERVICE_NAMES or self._dataplane.knows_model(service)

    def Check(self, request, context):
        if not self._known(request.service):
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown service or model '{request.service}'; this server hosts {', '.join(SERVICE_NAMES)}",
            )
        try:
            return health_pb2.HealthCheckResponse(status=self._status(request.service))
        except ModelNotFound:  # removed from the repository since _known
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service or model '{request.service}'")
            raise  # not reached: abort raises

    def Watch(self, request, context) -> Iterator[health_pb2.HealthCheckResponse]:
        if not self._known(request.service):
            yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            return
        last = None
        while context.is_active():
            try:
                status = self._status(request.service)
            except ModelNotFound:  # the model left the repository
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self._stopping.wait(WATCH_INTERVAL_S):
                if last != health_pb2.HealthCheckResponse.NOT_SERVING:
                    yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
                return

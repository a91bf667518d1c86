"""KServe v2 / Triton HTTP surface: /v2, health, model metadata and readiness, infer, and the model repository extension.

Health and readiness calls answer 200 or 400 with an empty body, as Triton does; errors are
`{"error": ...}`. Infer takes JSON or the binary tensor data extension and answers in kind. The
repository index lists every model of the folder; `load` and `unload` need MODEL_CONTROL=explicit.
"""

from __future__ import annotations

import dataclasses
import json

from flask import Blueprint, Response, request

from service import tracing
from service.api.context import client_gone_check, dataplane, note_model
from service.errors import ModelNotFound, ModelNotReady
from service.protocols import kserve_v2
from service.servable import ServableRequest, ServableState

bp = Blueprint("kserve_v2", __name__)


def _target(name: str, version: str | None) -> ServableRequest:
    """The version a v2 URL names (a version not in ASCII digits is an unknown one)."""
    note_model(name)
    return kserve_v2.parse_version(name, version)


def _empty(ok: bool) -> Response:
    """Triton's health answer: 200 or 400 with an empty body."""
    return Response(status=200 if ok else 400)


@bp.get("/v2")
def server_metadata():
    """Server name, version and the extensions it implements."""
    return kserve_v2.server_metadata()


@bp.get("/v2/health/live")
def live():
    """Liveness: the worker answers."""
    return _empty(True)


@bp.get("/v2/health/ready")
def ready():
    """Server readiness, the same decision as /readyz."""
    return _empty(dataplane().readiness().ready)


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    """Model readiness: the version (or the latest) is AVAILABLE."""
    try:
        dataplane().metadata(_target(name, version))
    except (ModelNotFound, ModelNotReady):
        return _empty(False)
    return _empty(True)


@bp.get("/v2/models/<name>")
@bp.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    """Model metadata: versions, platform and the default signature's tensors."""
    target = _target(name, version)
    metadata = dataplane().metadata(target)
    status = dataplane().model_status(name)
    versions = [v.version for v in status.versions if v.state is ServableState.AVAILABLE]
    serving = next((v for v in status.versions if v.version == metadata.servable_id.version), None)
    format_ = serving.info.format if serving is not None and serving.info is not None else ""
    return kserve_v2.encode_model_metadata(metadata, versions, format_)


@bp.post("/v2/models/<name>/infer")
@bp.post("/v2/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    """Inference in JSON, with the binary tensor data and classification extensions."""
    target = _target(name, version)
    body = request.get_data(cache=False)
    header_length = request.headers.get(kserve_v2.HEADER_LENGTH)
    if header_length is not None and header_length.strip() == "0":
        predict_request, options = kserve_v2.decode_raw_infer(body, target)
    else:
        header, binary = kserve_v2.split_body(body, header_length)
        predict_request, options = kserve_v2.decode_infer(header, binary, target)
    response = dataplane().predict(dataclasses.replace(predict_request, client_gone=client_gone_check()))
    with tracing.span("encode"):
        header_json, binary_out = kserve_v2.encode_infer(response, options)
        text = json.dumps(header_json, separators=(",", ":")).encode()
    if not binary_out:
        return Response(text, mimetype="application/json")
    return Response(
        text + binary_out,
        mimetype="application/octet-stream",
        headers={kserve_v2.HEADER_LENGTH: str(len(text))},
    )


@bp.post("/v2/repository/index")
def repository_index():
    """Every model of the repository, with each known version's state (Triton's index)."""
    ready_only = kserve_v2.decode_repository_index(request.get_data(cache=False))
    index = kserve_v2.encode_repository_index(dataplane().repository_index(ready_only=ready_only))
    return Response(json.dumps(index, separators=(",", ":")), mimetype="application/json")


@bp.post("/v2/repository/models/<name>/load")
def repository_load(name: str):
    """Load (or reload) a model; answers once it is AVAILABLE in this worker (MODEL_CONTROL=explicit)."""
    note_model(name)
    kserve_v2.decode_repository_load(request.get_data(cache=False))
    dataplane().load_model(name)
    return Response(status=200)


@bp.post("/v2/repository/models/<name>/unload")
def repository_unload(name: str):
    """Unload a model from every worker (MODEL_CONTROL=explicit)."""
    note_model(name)
    kserve_v2.decode_repository_unload(request.get_data(cache=False))
    dataplane().unload_model(name)
    return Response(status=200)

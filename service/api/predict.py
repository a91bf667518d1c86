"""Native predict API: POST /predict, /models/<name>[/versions/<v>]/predict and the predict_classes twins."""

from __future__ import annotations

import dataclasses

from flask import Blueprint, request

from service import tracing
from service.api.context import client_gone_check, dataplane, note_model
from service.protocols import native
from service.servable import ServableRequest

bp = Blueprint("predict", __name__)


def _target(name: str | None, version: int | None) -> ServableRequest:
    """The model from the path, else `?model=`, else the default model; the version from the path."""
    name = name or request.args.get("model") or dataplane().default_model()
    note_model(name)
    return ServableRequest.specific(name, version) if version is not None else ServableRequest.latest(name)


@bp.post("/predict")
@bp.post("/models/<name>/predict")
@bp.post("/models/<name>/versions/<version:version>/predict")
def predict(name: str | None = None, version: int | None = None):
    """Predict: one entry per image or row, keyed by output name for multi-output models."""
    target = _target(name, version)
    predict_request = dataclasses.replace(native.decode_predict(request, target), client_gone=client_gone_check())
    response = dataplane().predict(predict_request)
    with tracing.span("encode"):
        return native.encode_predict(predict_request, response)


@bp.post("/predict_classes")
@bp.post("/models/<name>/predict_classes")
@bp.post("/models/<name>/versions/<version:version>/predict_classes")
def predict_classes(name: str | None = None, version: int | None = None):
    """Predict classes: argmax, or ?threshold= for one sigmoid unit; ?top_k= adds the best K with labels."""
    threshold = native.parse_threshold(request.args)
    top_k = native.parse_top_k(request.args)
    target = _target(name, version)
    predict_request = dataclasses.replace(native.decode_predict(request, target), client_gone=client_gone_check())
    response = dataplane().predict_classes(predict_request, threshold=threshold, top_k=top_k)
    with tracing.span("encode"):
        return native.encode_classes(response)

"""TensorFlow Serving REST surface: /v1/models/<name>[/versions/<N>|/labels/<L>][:predict|:classify|:regress|/metadata].

URLs are parsed with TF Serving's own grammar (case-insensitive) in `protocols.tfserving`, so one
GET and one POST route serve every form.
"""

from __future__ import annotations

import dataclasses

from flask import Blueprint, request

from service import tracing
from service.api.context import client_gone_check, dataplane, note_model
from service.errors import UnsupportedMediaType
from service.protocols import parse_json_object, tfserving

bp = Blueprint("tfserving", __name__)


@bp.get("/v1/models/<path:path>")
def model_status_or_metadata(path: str):
    """Model status (every version, or the one named) or metadata (signature_defs) of the serving version."""
    target = tfserving.parse_url(path, post=False)
    note_model(target.request.name)
    if target.method == "metadata":
        return tfserving.encode_metadata(dataplane().metadata(target.request))
    return tfserving.encode_status(dataplane().model_status(target.request.name), target.request)


@bp.post("/v1/models/<path:path>")
def predict_classify_regress(path: str):
    """:predict (row or columnar), :classify and :regress (tf.Example features)."""
    target = tfserving.parse_url(path, post=True)
    note_model(target.request.name)
    if (
        request.mimetype
        and request.mimetype != "application/json"
        and not request.mimetype.endswith("+json")
        and not request.mimetype.startswith("text/")
        and request.mimetype != "application/x-www-form-urlencoded"
    ):
        # curl -d sends application/x-www-form-urlencoded; TF Serving reads any body as JSON.
        raise UnsupportedMediaType(f"Content-Type '{request.mimetype}' is not supported; send application/json")
    body = parse_json_object(request.get_data(cache=False))
    if target.method == "predict":
        predict_request, columnar = tfserving.decode_predict_body(body, target.request)
        predict_request = dataclasses.replace(predict_request, client_gone=client_gone_check())
        response = dataplane().predict(predict_request)
        with tracing.span("encode"):
            return tfserving.encode_predict(predict_request, response, columnar=columnar)
    examples_request = tfserving.decode_examples(body, target.request, target.method)
    examples_response = dataplane().classify_examples(examples_request)
    with tracing.span("encode"):
        return tfserving.encode_examples(examples_response, target.method)

"""Native protocol: our own predict and predict_classes shapes (multipart, raw image body, JSON).

Requests: multipart/form-data with one or more image files (any field name; `image` is the
documented one), a raw image body (`Content-Type: image/*` or `application/octet-stream`), or JSON
`{"instances": [...]}` / `{"inputs": ...}` in TF Serving's tensor format, where `{"b64": "..."}`
values are encoded images. Answers: `{"model", "version", "predictions": [...]}`, one entry per row,
multi-output models keyed by output name. Converts between Flask requests / JSON and the data plane's
values; never calls a model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
from flask import Request

from service.classification import DEFAULT_THRESHOLD, ClassScores
from service.dataplane import ClassesResponse, ModelMetadata, PredictRequest, PredictResponse
from service.errors import InvalidInput, UnsupportedMediaType
from service.protocols import backend_json, parse_float, parse_int, parse_json_object, tfserving
from service.servable import ServableRequest, ServableState, Signature, TensorInfo

IMAGE_FIELD = "image"
RAW_TYPES = ("application/octet-stream",)
ACCEPTED = "multipart/form-data, image/*, application/octet-stream or application/json"


def decode_predict(request: Request, target: ServableRequest) -> PredictRequest:
    """Turn a native predict request into a PredictRequest.

    `?outputs=a,b` (or repeated `?outputs=`) picks the outputs answered, in that order, whatever the
    body; a JSON body may say `output_filter` instead, as in TF Serving.

    Raises:
        UnsupportedMediaType: a Content-Type other than multipart, image/*, octet-stream or JSON.
        InvalidInput: no image in a multipart body, an empty body, bad JSON, bad `outputs`.
    """
    outputs = parse_outputs(request.args)
    predict_request = _decode_body(request, target)
    if outputs is None:
        return predict_request
    return dataclasses.replace(predict_request, outputs=outputs)


def parse_outputs(args: Mapping[str, str]) -> tuple[str, ...] | None:
    """Read `?outputs=` (comma-separated, may repeat); None when absent.

    Raises:
        InvalidInput: an empty name, or one output named twice.
    """
    values = args.getlist("outputs") if hasattr(args, "getlist") else ([args["outputs"]] if "outputs" in args else [])
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",")]
    if not all(names):
        raise InvalidInput("'outputs' holds an empty output name; give names separated by commas")
    if len(set(names)) != len(names):
        raise InvalidInput("'outputs' names an output twice")
    return tuple(names)


def _decode_body(request: Request, target: ServableRequest) -> PredictRequest:
    """The body of a native predict request: multipart files, a raw image, or TF Serving JSON."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        files = [f for key in request.files for f in request.files.getlist(key)]
        if not files:
            raise InvalidInput(f"the multipart body holds no file; send the image in the field '{IMAGE_FIELD}'")
        images = tuple(f.read() for f in files)
        if any(not data for data in images):
            raise InvalidInput("a file in the multipart body is empty")
        signature_name = request.form.get("signature_name") or None
        return PredictRequest(target, images=images, signature_name=signature_name)
    if mimetype.startswith("image/") or mimetype in RAW_TYPES:
        body = request.get_data(cache=False)
        if not body:
            raise InvalidInput("the request body is empty; send the image bytes")
        return PredictRequest(target, images=(body,))
    if mimetype == "application/json" or mimetype.endswith("+json"):
        document = parse_json_object(request.get_data(cache=False))
        predict_request, _ = tfserving.decode_predict_body(document, target)
        return predict_request
    shown = mimetype or "none"
    raise UnsupportedMediaType(f"Content-Type '{shown}' is not supported; send {ACCEPTED}")


def encode_predict(request: PredictRequest, response: PredictResponse) -> dict:
    """The native predict answer to `request`: model, version, and one prediction per row.

    A JSON body is TF Serving's, with its unit axis (`tfserving.predict_outputs`): one value per row
    sent to an input of shape (None, 1) is answered with one value per row.
    """
    return {
        "model": response.servable_id.name,
        "version": response.servable_id.version,
        "predictions": tfserving.rows_json(tfserving.predict_outputs(request, response)),
    }


def parse_threshold(args: Mapping[str, str]) -> float:
    """Read `?threshold=` (default 0.5); raises InvalidInput unless it is a finite number."""
    raw = args.get("threshold")
    if raw is None or raw == "":
        return DEFAULT_THRESHOLD
    value = parse_float(raw)
    if value is None:
        raise InvalidInput(f"threshold '{raw}' is not a number")
    if not math.isfinite(value):
        raise InvalidInput(f"threshold '{raw}' is not a finite number")
    return value


def parse_top_k(args: Mapping[str, str]) -> int | None:
    """Read `?top_k=` (absent: no top-k); raises InvalidInput unless it is a positive integer (ASCII digits)."""
    raw = args.get("top_k")
    if raw is None or raw == "":
        return None
    value = parse_int(raw, max_digits=9)
    if value is None or value < 1:
        raise InvalidInput(f"top_k '{raw}' is not a positive integer")
    return value


def _classes_of_row(scores: ClassScores, row: int) -> dict:
    """The class entry of one row of one output."""
    class_id = scores.ids[row]
    if np.ndim(class_id) == 0:
        cid = int(class_id)
        entry: dict = {"class_id": cid, "label": scores.label(cid), "score": float(scores.scores[row])}
        if scores.top_ids is not None and scores.top_scores is not None:
            entry["top_k"] = [
                {"class_id": int(i), "label": scores.label(int(i)), "score": float(s)}
                for i, s in zip(scores.top_ids[row], scores.top_scores[row])
            ]
        return entry
    # Outputs with more axes (e.g. per-pixel classes): ids and scores as nested lists.
    entry = {"class_id": class_id.tolist(), "score": scores.scores[row].tolist()}
    if scores.top_ids is not None and scores.top_scores is not None:
        entry["top_k"] = {"class_id": scores.top_ids[row].tolist(), "score": scores.top_scores[row].tolist()}
    return entry


def encode_classes(response: ClassesResponse) -> dict:
    """The native predict_classes answer: per row a class (with label, score, top_k), per output when several."""
    outputs = list(response.classes.items())
    rows = len(outputs[0][1].ids)
    if len(outputs) == 1:
        predictions: list = [_classes_of_row(outputs[0][1], row) for row in range(rows)]
    else:
        predictions = [{name: _classes_of_row(scores, row) for name, scores in outputs} for row in range(rows)]
    return {"model": response.servable_id.name, "version": response.servable_id.version, "predictions": predictions}


# --- model views ----------------------------------------------------------------------------------


def tensor_json(tensor: TensorInfo) -> dict:
    """One tensor as the model views show it (`null` for variable dimensions)."""
    return {"name": tensor.name, "dtype": tensor.dtype, "shape": list(tensor.shape)}


def signature_json(signature: Signature) -> dict:
    """One signature as the model views show it."""
    return {
        "inputs": [tensor_json(t) for t in signature.inputs],
        "outputs": [tensor_json(t) for t in signature.outputs],
        "method_name": signature.method_name,
    }


def encode_model(status, metadata: ModelMetadata | None) -> dict:  # noqa: ANN001 - manager.ModelStatus
    """One model: its versions and states, and the serving version's signature, labels and device."""
    versions = []
    for v in status.versions:
        # A failed load ends in END with an error: shown as FAILED. A version whose *replacement* copy
        # failed stays AVAILABLE (the old copy serves) and shows the replacement's error beside it.
        failed = v.state is ServableState.END and bool(v.error)
        entry: dict = {"version": v.version, "state": "FAILED" if failed else v.state.value}
        if v.error:
            entry["error"] = v.error
        if v.info is not None:
            entry.update(
                {
                    "format": v.info.format,
                    "loader": v.info.loader,
                    "device": v.info.device,
                    "load_s": round(v.info.load_s, 4),
                    "warmup_s": round(v.info.warmup_s, 4),
                }
            )
            entry["backend"] = backend_json(v.info.backend)
            if v.info.warnings:
                entry["warnings"] = list(v.info.warnings)
            if v.info.preprocessing is not None:
                key, value = v.info.preprocessing.pixels
                entry["preprocessing"] = {
                    key: value,
                    "chosen_by": v.info.preprocessing.chosen_by,
                    "reason": v.info.preprocessing.reason,
                }
        if v.signatures:
            signature = v.signatures.get(v.default_signature) or next(iter(v.signatures.values()))
            entry["inputs"] = [tensor_json(t) for t in signature.inputs]
            entry["outputs"] = [tensor_json(t) for t in signature.outputs]
        versions.append(entry)
    model: dict = {
        "name": status.name,
        "versions": versions,
        "version_labels": dict(status.version_labels),
        "labels": list(status.labels),
        "serving_version": None,
        # Whether this worker holds a version in memory (MAX_LOADED_MODELS unloads the least recently used).
        "resident": status.resident,
    }
    if metadata is not None:
        default = metadata.signatures[metadata.default_signature]
        model.update(
            {
                "serving_version": metadata.servable_id.version,
                "device": metadata.device,
                "backend": metadata.backend.backend,
                "precision": metadata.backend.precision,
                "default_signature": metadata.default_signature,
                "inputs": [tensor_json(t) for t in default.inputs],
                "outputs": [tensor_json(t) for t in default.outputs],
                "signatures": {name: signature_json(sig) for name, sig in metadata.signatures.items()},
            }
        )
        if metadata.labels:
            model["labels"] = list(metadata.labels)
    return model

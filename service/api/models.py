"""Native model views: GET /models and GET /models/<name> (versions, states, signature, labels, device)."""

from __future__ import annotations

from flask import Blueprint

from service.api.context import dataplane, note_model
from service.dataplane import ModelMetadata
from service.errors import ModelNotFound, ModelNotReady
from service.protocols import native
from service.servable import ServableRequest

bp = Blueprint("models", __name__)


def _metadata(name: str) -> ModelMetadata | None:
    """Metadata of the serving version, or None while no version is AVAILABLE (a listing loads nothing)."""
    try:
        return dataplane().metadata(ServableRequest.latest(name), load=False)
    except (ModelNotReady, ModelNotFound):
        return None


@bp.get("/models")
def list_models():
    """Every model the repository knows, with its versions and the serving version's signature."""
    return {"models": [native.encode_model(status, _metadata(status.name)) for status in dataplane().model_statuses()]}


@bp.get("/models/<name>")
def get_model(name: str):
    """One model: versions and states, inputs and outputs, labels, device."""
    status = dataplane().model_status(name)
    note_model(name)
    return native.encode_model(status, _metadata(name))

"""Probes: GET /healthz (liveness, never depends on models) and GET /readyz (readiness, per model)."""

from __future__ import annotations

from flask import Blueprint

from service.api.context import dataplane

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """Liveness: the worker answers. Never looks at models, so a slow load never restarts a pod."""
    return {"status": "alive"}


@bp.get("/readyz")
def readyz():
    """Readiness: 200 once the models present at start-up are loaded; else 503 with the reason."""
    readiness = dataplane().readiness()
    body: dict = {"ready": readiness.ready, "models": dict(readiness.models)}
    if readiness.ready:
        return body
    body["error"] = readiness.reason or "not ready: models are still loading"
    body["reason"] = body["error"]
    return body, 503, {"Retry-After": "5"}

"""GET /metrics: Prometheus text format, aggregated over workers in multiprocess mode."""

from __future__ import annotations

import os

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    """Every metric of every worker (multiprocess mode) or of this process (single process)."""
    # PROMETHEUS_MULTIPROC_DIR is prometheus_client's own switch (gunicorn.conf.py sets it before the
    # workers start); the values are written there by every worker, so collect from the folder.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(
        generate_latest(registry),
        mimetype=CONTENT_TYPE_LATEST.split(";")[0],
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )

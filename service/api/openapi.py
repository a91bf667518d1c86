"""GET /openapi.json: the OpenAPI document of every route, kept in `openapi.yaml` beside this file.

The document is written by hand next to the code it describes; tests validate it with
openapi-spec-validator and check that every Flask rule and method is in it (TF Serving's and KServe
v2's routes included, tagged `tfserving` and `kserve-v2`), and schemathesis fuzzes all of it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml
from flask import Blueprint

bp = Blueprint("openapi", __name__)

DOCUMENT = Path(__file__).with_name("openapi.yaml")


@functools.cache
def document() -> dict:
    """Return the parsed document (read once per process)."""
    return yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI document of the native API, as JSON."""
    return document()

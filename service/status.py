"""Status values: what the manager reports about models, versions and readiness.

Frozen values the manager builds under its lock and hands out; the data plane passes them on and the
protocol adapters turn them into JSON. Kept apart from `service.manager` so that readers of a status
(the data plane, the adapters) never import the manager. Imports neither Flask nor TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from service.servable import ServableInfo, ServableState, Signature

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """State of one version as the status views show it."""

    version: int
    state: ServableState
    error: str = ""
    """Non-empty for a failed load (state END; status views call it FAILED). On an AVAILABLE version:
    a newer copy of the same version failed to load and the previous copy keeps serving."""
    info: ServableInfo | None = None
    signatures: Mapping[str, Signature] = field(default_factory=lambda: _EMPTY)
    default_signature: str = "serving_default"


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """Every version the manager knows of one model, ascending, with labels."""

    name: str
    versions: tuple[VersionStatus, ...]
    version_labels: Mapping[str, int]
    labels: tuple[str, ...]
    """Class labels of the serving (latest AVAILABLE) version."""
    resident: bool = False
    """A version is loaded in this worker (AVAILABLE)."""
    evicted: bool = False
    """Not loaded because of MAX_LOADED_MODELS; the next request for it loads it again."""


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether the worker should get traffic (`/readyz`), and per model."""

    ready: bool
    models: Mapping[str, bool]
    reason: str = ""

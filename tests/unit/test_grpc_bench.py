"""The gRPC benchmark's load generator against the in-process gRPC server (fake models): it sends
what the server accepts, counts answers and errors apart, and reports latencies. Seconds, not
minutes: the full benchmark (`make bench`) is not part of the suite, but its client must not rot."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest

from service.api import EXTENSION
from service.app import serve_grpc
from tests.e2e.conftest import free_port
from tests.unit.test_api import make_app

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import grpc_bench  # noqa: E402 - bench/ is a folder of scripts, not a package


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    app = make_app(tmp_path_factory.mktemp("grpc-bench") / "models", host="127.0.0.1", grpc_port=port)
    server = serve_grpc(app)
    assert server is not None
    yield f"127.0.0.1:{port}"
    server.wait_stopped(5)
    app.extensions[EXTENSION].stop()


@pytest.mark.parametrize("kind", ["tfserving", "v2"])
def test_the_load_generator_gets_answers_and_counts_errors_apart(target: str, kind: str, monkeypatch) -> None:
    monkeypatch.setattr(grpc_bench, "INPUT", "x")
    monkeypatch.setattr(grpc_bench, "MODEL", "double")  # y = 2x over rows of two floats
    result = asyncio.run(grpc_bench.grpc_load(target, kind, 4, 0.5, 2, [np.ones((1, 2), np.float32)]))
    assert result["requests"] > 0 and result["errors"] == 0
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    monkeypatch.setattr(grpc_bench, "MODEL", "nope")
    result = asyncio.run(grpc_bench.grpc_load(target, kind, 2, 0.3, 1, [np.ones((1, 2), np.float32)]))
    assert result["requests"] == 0 and result["errors"] > 0

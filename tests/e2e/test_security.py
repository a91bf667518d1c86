"""Security end to end: bearer-token auth, CORS, the world-writable models-folder refusal, request ids
in logs and answers, and no stack traces or server paths in what clients see."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, wait_until
from tests.e2e.api_models import build_api_models
from tests.e2e.conftest import GUNICORN, Server, free_port, start_server

TOKEN = "s3cret-token"
ORIGIN = "https://app.example"
ROW = {"instances": [[1.0, 2.0, 3.0, 4.0]]}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    api = build_api_models(tmp_path_factory.getbasetemp() / "api_models")
    folder = tmp_path_factory.mktemp("security_models")
    (folder / "binary.keras").symlink_to(api / "binary.keras")
    (folder / "broken.keras").write_bytes(b"PK\x03\x04 this is not a zip file at all")
    return folder


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # World-writable on purpose, with the setting that accepts it: the refusal is tested below.
    models.chmod(0o777)
    try:
        with start_server(
            models,
            tmp_path_factory.mktemp("security_logs"),
            AUTH_TOKEN=TOKEN,
            CORS_ORIGINS=ORIGIN,
            ALLOW_WORLD_WRITABLE_MODELS="true",
        ) as running:
            yield running
    finally:
        models.chmod(0o755)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/models/binary/predict"),
        ("POST", "/predict?model=binary"),
        ("GET", "/models"),
        ("GET", "/models/binary"),
        ("POST", "/v1/models/binary:predict"),
        ("GET", "/v1/models/binary"),
        ("GET", "/v2/models/binary"),
        ("POST", "/v2/models/binary/infer"),
        ("GET", "/no/such/route"),
    ],
)
def test_predict_and_management_routes_need_the_bearer_token(server: Server, method: str, path: str) -> None:
    missing = requests.request(method, server.url + path, json=ROW, timeout=30)
    wrong = requests.request(method, server.url + path, json=ROW, headers={"Authorization": "Bearer nope"}, timeout=30)
    for response in (missing, wrong):
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert list(response.json()) == ["error"] and response.headers["X-Request-ID"]
    assert "Bearer" in missing.json()["error"] and "not valid" in wrong.json()["error"]
    allowed = requests.request(method, server.url + path, json=ROW, headers=AUTH, timeout=30)
    assert allowed.status_code != 401


def test_predict_with_the_token_works(server: Server) -> None:
    response = server.post("/models/binary/predict", json=ROW, headers=AUTH)
    assert response.status_code == 200 and response.json()["model"] == "binary"


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics", "/openapi.json"]
)
def test_probes_metrics_and_api_description_stay_open(server: Server, path: str) -> None:
    assert server.get(path).status_code == 200


def test_cors_preflight_and_answers_for_an_allowed_origin(server: Server) -> None:
    preflight = requests.options(
        server.url + "/models/binary/predict",
        timeout=30,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    answer = server.post("/models/binary/predict", json=ROW, headers={**AUTH, "Origin": ORIGIN})
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-ID" in answer.headers["Access-Control-Expose-Headers"]


def test_cors_headers_are_never_sent_to_other_origins(server: Server) -> None:
    preflight = requests.options(
        server.url + "/models/binary/predict",
        timeout=30,
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    answer = server.post("/models/binary/predict", json=ROW, headers={**AUTH, "Origin": "https://evil.example"})
    for response in (preflight, answer):
        assert not any(name.lower().startswith("access-control-") for name in response.headers)


def test_failed_load_is_reported_without_server_paths_or_tracebacks(server: Server, models: Path) -> None:
    entry = server.get("/models/broken", headers=AUTH).json()["versions"][0]
    assert entry["state"] == "FAILED" and "broken.keras" in entry["error"]
    response = server.post("/models/broken/predict", json=ROW, headers=AUTH)
    assert response.status_code == 503
    for text in (entry["error"], response.text):
        assert str(models) not in text and str(REPO) not in text and "Traceback" not in text


def test_request_id_is_in_the_answer_and_in_the_log_lines_of_that_request(server: Server) -> None:
    response = server.post("/models/broken/predict", json=ROW, headers={**AUTH, "X-Request-ID": "sec-test-42"})
    assert response.headers["X-Request-ID"] == "sec-test-42"
    wait_until(lambda: "[rest req sec-test-42]" in server.log(), timeout_s=10)
    line = next(line for line in server.log().splitlines() if "[rest req sec-test-42]" in line)
    assert "broken" in line


def test_world_writable_setting_is_logged_when_accepted(server: Server) -> None:
    assert "writable by every user" in server.log() and "ALLOW_WORLD_WRITABLE_MODELS is on" in server.log()


def test_world_writable_models_folder_is_refused_at_start(models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "open_models"
    folder.mkdir()
    (folder / "binary.keras").symlink_to(models / "binary.keras")
    folder.chmod(0o777)
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(free_port()), "MODELS_DIR": str(folder), "WORKERS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run([GUNICORN, "wsgi:app"], cwd=REPO, env=env, capture_output=True, timeout=120)
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0, output[-3000:]
    assert "refusing to load models" in output and "ALLOW_WORLD_WRITABLE_MODELS=true" in output, output[-3000:]

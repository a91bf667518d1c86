"""Security decisions as plain functions: bearer tokens, CORS, model names, the models-folder check."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from flask import Flask

from service import security
from service.api.errors import register_error_handlers
from service.errors import InsecureModelsDir, InvalidInput, Unauthorized
from service.settings import Settings
from tests.conftest import read_only_mount


def test_no_token_configured_means_no_check(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path)
    assert not security.needs_token("/models/m/predict", "POST", settings)
    security.check_bearer(None, settings)


@pytest.mark.parametrize(
    "path",
    ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics", "/openapi.json", "/", "/ui/console.js"],
)
def test_probes_metrics_docs_and_the_console_files_stay_open(tmp_path: Path, path: str) -> None:
    assert not security.needs_token(path, "GET", Settings(models_dir=tmp_path, auth_token="s3cret"))


@pytest.mark.parametrize(
    "path", ["/predict", "/models", "/models/m", "/v1/models/m:predict", "/v2/models/m/infer", "/v2/models/m", "/uix"]
)
def test_predict_and_management_routes_need_the_token(tmp_path: Path, path: str) -> None:
    settings = Settings(models_dir=tmp_path, auth_token="s3cret")
    assert security.needs_token(path, "POST", settings)
    assert not security.needs_token(path, "OPTIONS", settings)  # CORS preflights carry no credentials


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (None, "needs `Authorization: Bearer"),
        ("", "needs"),
        ("Basic czNjcmV0", "must be `Bearer"),
        ("Bearer", "must be"),
        ("Bearer wrong", "not valid"),
        ("Bearer s3cret2", "not valid"),
        ("Bearer \udcff", "not valid"),
    ],
)
def test_bad_bearer_tokens_are_unauthorized(tmp_path: Path, header: str | None, fragment: str) -> None:
    with pytest.raises(Unauthorized, match=fragment):
        security.check_bearer(header, Settings(models_dir=tmp_path, auth_token="s3cret"))


def test_good_bearer_token_passes(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path, auth_token="s3cret")
    security.check_bearer("Bearer s3cret", settings)
    security.check_bearer("bearer  s3cret ", settings)


def test_cors_is_off_by_default(tmp_path: Path) -> None:
    assert Settings(models_dir=tmp_path).cors_origins == []
    assert (
        security.cors_headers(
            "https://evil.example",
            preflight=True,
            requested_headers="Authorization",
            settings=Settings(models_dir=tmp_path),
        )
        == {}
    )


def test_cors_allows_only_listed_origins(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path, cors_origins=["https://app.example"])
    assert (
        security.cors_headers("https://evil.example", preflight=False, requested_headers=None, settings=settings) == {}
    )
    simple = security.cors_headers("https://app.example", preflight=False, requested_headers=None, settings=settings)
    assert simple["Access-Control-Allow-Origin"] == "https://app.example" and simple["Vary"] == "Origin"
    assert "Access-Control-Allow-Methods" not in simple
    preflight = security.cors_headers(
        "https://app.example", preflight=True, requested_headers="authorization, x-evil", settings=settings
    )
    assert preflight["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    assert (
        "Authorization" in preflight["Access-Control-Allow-Headers"]
        and "x-evil" not in preflight["Access-Control-Allow-Headers"]
    )


def test_cors_wildcard(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path, cors_origins=["*"])
    headers = security.cors_headers("https://any.example", preflight=False, requested_headers=None, settings=settings)
    assert headers["Access-Control-Allow-Origin"] == "*" and "Vary" not in headers


@pytest.mark.parametrize("name", ["resnet", "digits-v2", "a.b_c", "A1", "x" * 128])
def test_plain_model_names_pass(name: str) -> None:
    security.check_model_name(name)


@pytest.mark.parametrize(
    "name", ["", "..", ".", "../etc", "a/b", "a\x00b", ".hidden", "-x", "na me", "\ufffd", "é", "x" * 129, "a\nb"]
)
def test_unsafe_model_names_are_invalid_input_without_raw_control_characters(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        security.check_model_name(name)
    message = str(caught.value)
    assert "not valid" in message
    assert all(c.isprintable() for c in message)


def test_models_dir_writable_by_everyone_is_refused_unless_allowed(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    security.check_models_dir(Settings(models_dir=models))
    models.chmod(0o777)
    with pytest.raises(InsecureModelsDir, match="ALLOW_WORLD_WRITABLE_MODELS"):
        security.check_models_dir(Settings(models_dir=models))
    security.check_models_dir(Settings(models_dir=models, allow_world_writable_models=True))


def test_plugins_folder_writable_by_everyone_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins").chmod(0o757)
    assert "plugins folder" in security.models_dir_problem(tmp_path)


def test_parent_writable_by_everyone_needs_the_sticky_bit(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    (parent / "models").mkdir(parents=True)
    parent.chmod(0o777)
    assert "parent folder" in security.models_dir_problem(parent / "models")
    parent.chmod(0o1777)  # like /tmp: others cannot rename or delete our folder
    assert security.models_dir_problem(parent / "models") == ""


def test_world_writable_folder_on_a_read_only_mount_is_safe(tmp_path: Path) -> None:
    # What KServe makes: an emptyDir (mode 0777) mounted read-only at /mnt/models.
    models = tmp_path / "models"
    (models / "plugins").mkdir(parents=True)
    models.chmod(0o777)
    (models / "plugins").chmod(0o777)
    assert "MODELS_DIR" in security.models_dir_problem(models)
    with read_only_mount(models):
        assert security.on_read_only_mount(models)
        assert security.models_dir_problem(models) == ""
        security.check_models_dir(Settings(models_dir=models))  # no override needed
    assert not security.on_read_only_mount(models)
    with pytest.raises(InsecureModelsDir):
        security.check_models_dir(Settings(models_dir=models))


def test_read_only_bind_mount_of_a_folder_writable_elsewhere_is_refused(tmp_path: Path) -> None:
    # A read-only view of a world-writable folder that stays writable at its own path protects nothing.
    shared = tmp_path / "shared-models"
    shared.mkdir()
    shared.chmod(0o777)
    view = tmp_path / "view"
    view.mkdir()
    view.chmod(0o777)
    bound = subprocess.run(["mount", "--bind", str(shared), str(view)], capture_output=True, text=True)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        assert os.statvfs(view).f_flag & os.ST_RDONLY  # the mount itself is read-only...
        assert not security.on_read_only_mount(view)  # ...but shared-models is writable by anyone
        assert "MODELS_DIR (view) is writable by every user" in security.models_dir_problem(view)
    finally:
        subprocess.run(["umount", str(view)], check=True)


def test_read_only_mount_under_a_world_writable_parent_is_still_refused(tmp_path: Path) -> None:
    # The mount point cannot be renamed, but a writable parent above it can be swapped wholesale.
    parent = tmp_path / "shared"
    models = parent / "inner" / "models"
    models.mkdir(parents=True)
    parent.chmod(0o777)
    with read_only_mount(models):
        assert "parent folder of MODELS_DIR ('shared')" in security.models_dir_problem(models)


def test_writable_plugins_mount_inside_a_read_only_models_mount_is_refused(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "plugins").mkdir(parents=True)
    writable = tmp_path / "writable-plugins"
    writable.mkdir()
    writable.chmod(0o777)
    with read_only_mount(models):
        mounted = subprocess.run(["mount", "--bind", str(writable), str(models / "plugins")], capture_output=True)
        assert mounted.returncode == 0, mounted.stderr
        try:
            assert "plugins folder" in security.models_dir_problem(models)
        finally:
            subprocess.run(["umount", str(models / "plugins")], check=True)


def test_missing_models_dir_is_not_a_problem(tmp_path: Path) -> None:
    assert security.models_dir_problem(tmp_path / "not-yet") == ""


def test_unexpected_errors_never_show_tracebacks_or_paths_to_clients() -> None:
    app = Flask(__name__)
    register_error_handlers(app)

    @app.get("/boom")
    def boom():
        raise RuntimeError(f"secret detail at {os.getcwd()}/service/x.py")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal error; see the server log"}

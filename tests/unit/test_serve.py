"""`python -m service serve`: the arguments KServe and TF Serving runtimes pass become settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.serve import gunicorn_command, settings_environment
from tests.conftest import REPO


def test_kserve_arguments_become_settings() -> None:
    env, unknown = settings_environment(
        ["--model_name=flowers", "--model_dir=/mnt/models", "--http_port=8080", "--grpc_port=8081"]
    )
    assert env == {"MODEL_NAME": "flowers", "MODELS_DIR": "/mnt/models", "PORT": "8080", "GRPC_PORT": "8081"}
    assert unknown == []


def test_tf_serving_spellings_mean_the_same_settings() -> None:
    # KServe's kserve-tensorflow-serving runtime: TF Serving's `--port` is its gRPC port.
    env, _ = settings_environment(
        ["--model_name=m", "--port=9000", "--rest_api_port=8080", "--model_base_path=/mnt/models"]
    )
    assert env == {"MODEL_NAME": "m", "MODELS_DIR": "/mnt/models", "PORT": "8080", "GRPC_PORT": "9000"}
    env, _ = settings_environment(["--model-name", "m", "--http-port", "1", "--workers", "4"])
    assert env == {"MODEL_NAME": "m", "PORT": "1", "WORKERS": "4"}


def test_relative_model_dir_is_made_absolute_before_gunicorn_changes_directory() -> None:
    env, _ = settings_environment(["--model_dir=models/x"])
    assert env["MODELS_DIR"] == os.path.abspath("models/x")


def test_other_runtimes_arguments_are_returned_to_be_ignored() -> None:
    env, unknown = settings_environment(["--model_name=m", "--max_threadpool_workers=4", "--enable_docs_url", "x"])
    assert env == {"MODEL_NAME": "m"}
    assert unknown == ["--max_threadpool_workers=4", "--enable_docs_url", "x"]


@pytest.mark.parametrize("typo", ["--model_nam=m", "--http_ports=1", "--grpc-prt=2", "--model_dirs=/x"])
def test_a_near_miss_of_our_own_options_stops(typo: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        settings_environment([typo])
    assert exit_.value.code == 2
    assert "did you mean" in capsys.readouterr().err


def test_gunicorn_runs_with_the_repository_config_from_the_app_root() -> None:
    command = gunicorn_command()
    assert command[:3] == [sys.executable, "-m", "gunicorn"]
    assert command[command.index("--config") + 1] == str(REPO / "gunicorn.conf.py")
    assert command[command.index("--chdir") + 1] == str(REPO)
    assert command[-1] == "wsgi:app" and (REPO / "wsgi.py").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--http_port=eighty"], "bad setting"),
        (["--http_port=8080", "--grpc_port=8080"], "give gRPC its own port"),
        (["--model_name=../etc"], "not a valid model name"),
    ],
)
def test_bad_values_stop_before_gunicorn_starts(args: list[str], message: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", f"--model_dir={tmp_path}", *args, "--unknown-flag"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PORT": "8000", "GRPC_PORT": "8500"},
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "ignoring arguments it does not use: --unknown-flag" in result.stderr

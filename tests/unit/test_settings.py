"""Settings: path settings are absolute once read, whatever the working directory later becomes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.settings import Settings


def test_relative_models_dir_from_the_environment_is_made_absolute_against_the_start_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELS_DIR", "models")
    settings = Settings()
    assert settings.models_dir == tmp_path / "models"
    monkeypatch.chdir("/")  # later changes of directory (the Lambda probe's child) change nothing
    assert settings.models_dir.is_absolute() and settings.models_dir == tmp_path / "models"


def test_default_models_dir_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELS_DIR", raising=False)
    assert Settings().models_dir == tmp_path / "models"


def test_models_dir_keeps_a_symlink_name_and_normalises_dots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    assert Settings(models_dir="./x/../link").models_dir == Path(os.path.abspath("link")) == tmp_path / "link"


@pytest.mark.parametrize("token", ["", "   "])
def test_auth_token_set_but_empty_stops_start_up(token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_TOKEN", token)
    with pytest.raises(ValueError, match="AUTH_TOKEN is set but empty"):
        Settings()


def test_auth_token_unset_means_no_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTH_TOKEN", raising=False)
    assert Settings().auth_token is None

"""docs/configuration.md documents every setting, exactly as Settings declares it."""

from __future__ import annotations

import importlib.util

from service.settings import Settings
from tests.conftest import REPO

DOC = REPO / "docs" / "configuration.md"


def load_generator():
    spec = importlib.util.spec_from_file_location("generate_configuration", REPO / "docs" / "generate_configuration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_appears_in_configuration_md_with_its_variable() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [name.upper() for name in Settings.model_fields if f"| `{name.upper()}` |" not in text]
    assert not missing, f"docs/configuration.md lacks {missing}: run .venv/bin/python docs/generate_configuration.py"


def test_generated_settings_table_is_up_to_date() -> None:
    generator = load_generator()
    text = DOC.read_text(encoding="utf-8")
    assert generator.updated(text) == text, (
        "docs/configuration.md is stale: run .venv/bin/python docs/generate_configuration.py"
    )


def test_generated_rows_carry_default_and_docstring() -> None:
    rendered = load_generator().render()
    assert "| `PORT` | integer ≥ 0, ≤ 65535 | `8000` | TCP port gunicorn listens on. |" in rendered
    assert "| `DEVICE` | one of `auto`, `cpu`, `gpu` | `auto` |" in rendered
    for name, info in Settings.model_fields.items():
        assert info.description, f"Settings.{name} has no docstring to document it with"

"""Per-model config files: TF Serving's batching names are accepted beside ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.model_config import ModelConfigError, read_model_config


def test_tf_serving_batch_timeout_micros_is_read_as_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("batching:\n  max_batch_size: 8\n  batch_timeout_micros: 2500\n")
    batching = read_model_config(path).batching
    assert batching.batch_timeout_ms == 2.5
    assert batching.max_batch_size == 8


def test_both_timeout_names_at_once_are_refused_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("batching:\n  batch_timeout_ms: 1\n  batch_timeout_micros: 2000\n")
    with pytest.raises(ModelConfigError, match="batch_timeout_ms or batch_timeout_micros"):
        read_model_config(path)

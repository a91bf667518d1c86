"""Per-model config files: TF Serving's batching names are accepted beside ours; another tool's file is not ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.model_config import ForeignConfigFile, ModelConfigError, read_model_config


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


# A Hugging Face-style `config.json`, as model folders from the Hub and from training repos ship it.
HUB_CONFIG = (
    '{"architectures": ["WideDeep"], "model_type": "wide_deep", "hidden_size": 64, "num_labels": 2,'
    ' "id2label": {"0": "no", "1": "yes"}, "keras_version": "2.13.1", "transformers_version": null}'
)


@pytest.mark.parametrize("name", ["config.json", "config.yaml"])
def test_a_folder_config_file_with_none_of_our_keys_is_foreign(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(HUB_CONFIG)  # JSON is YAML too
    with pytest.raises(ForeignConfigFile, match=f"{name} is not a kerasserve model config"):
        read_model_config(path)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("labels: [a, b]\nbatching:\n  max_batch_size: eight\n", "max_batch_size"),  # a mistyped value
        ("labels: [a, b]\nbatchin:\n  max_batch_size: 8\n", "batchin"),  # a misspelt key beside one of ours
    ],
)
def test_a_mistyped_folder_config_of_ours_still_fails_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ModelConfigError, match=named) as raised:
        read_model_config(path)
    assert not isinstance(raised.value, ForeignConfigFile)


def test_a_config_named_after_its_model_file_is_always_ours(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(HUB_CONFIG)
    with pytest.raises(ModelConfigError, match="model config m.json is invalid") as raised:
        read_model_config(path)
    assert not isinstance(raised.value, ForeignConfigFile)


def test_an_unparsable_folder_config_fails_loudly(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"labels": [')
    with pytest.raises(ModelConfigError, match="model config config.json is invalid") as raised:
        read_model_config(path)
    assert not isinstance(raised.value, ForeignConfigFile)


def test_precision_bf16_with_backend_xla_is_refused_saying_where_mixed_precision_goes(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("backend: xla\nprecision: bf16\n")
    with pytest.raises(ModelConfigError, match="precision bf16 is OpenVINO's: XLA computes in the model's own dtypes"):
        read_model_config(path)
    path.write_text("backend: xla\n")
    assert (read_model_config(path).backend, read_model_config(path).precision) == ("xla", "fp32")

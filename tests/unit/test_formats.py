"""Format detection by content, JSON + weights pairing, folder rules and completeness checks."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from service.errors import ModelLoadError
from service.formats import ModelFormat, detect_format


def _hdf5_model(path: Path, version: str = "2.4.0") -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = version
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"layers": []}})
        f.create_group("model_weights")
    return path


def _hdf5_weights(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        f.create_group("dense").create_dataset("kernel", data=np.zeros((2, 2)))
    return path


def _keras_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("config.json", json.dumps({"class_name": "Functional", "config": {}}))
        z.writestr("model.weights.h5", b"")
    return path


def _architecture(path: Path) -> Path:
    path.write_text(json.dumps({"class_name": "Sequential", "config": {"layers": []}, "keras_version": "2.3.1"}))
    return path


def _saved_model(folder: Path, shards: int = 1, write: int | None = None) -> Path:
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\x08\x01")
    (folder / "variables" / "variables.index").write_bytes(b"x")
    for i in range(shards if write is None else write):
        (folder / "variables" / f"variables.data-{i:05d}-of-{shards:05d}").write_bytes(b"x")
    return folder


@pytest.mark.parametrize("name", ["model.keras", "model.zip", "model", "model.h5"])
def test_keras_zip_is_detected_whatever_its_name(tmp_path: Path, name: str) -> None:
    detected = detect_format(_keras_zip(tmp_path / name))
    assert detected.format is ModelFormat.KERAS_ZIP
    assert detected.keras_version == "3.15.1" and detected.keras_major == 3


@pytest.mark.parametrize("name", ["model.h5", "model.hdf5", "model.keras", "model.bin", "noext"])
def test_full_model_hdf5_is_detected_whatever_its_name(tmp_path: Path, name: str) -> None:
    detected = detect_format(_hdf5_model(tmp_path / name, "2.11.0"))
    assert (detected.format, detected.keras_major) == (ModelFormat.HDF5, 2)


def test_weights_only_hdf5_alone_is_refused_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="weights-only.*architecture JSON"):
        detect_format(_hdf5_weights(tmp_path / "w.h5"))


@pytest.mark.parametrize("weights_name", ["net.weights.h5", "net_weights.h5", "net.h5"])
def test_architecture_json_pairs_with_its_weights_by_name(tmp_path: Path, weights_name: str) -> None:
    arch = _architecture(tmp_path / "net.json")
    _hdf5_weights(tmp_path / weights_name)
    _hdf5_weights(tmp_path / "other_weights.h5")  # a decoy: the name decides
    detected = detect_format(arch)
    assert detected.format is ModelFormat.JSON_WEIGHTS
    assert detected.weights == tmp_path / weights_name
    assert detected.keras_version == "2.3.1"


def test_architecture_json_named_config_pairs_with_weights_named_weights(tmp_path: Path) -> None:
    """The dl4j layout: `x_config.json` + `x_weights.h5`."""
    _architecture(tmp_path / "lstm_config.json")
    _hdf5_weights(tmp_path / "lstm_weights.h5")
    detected = detect_format(tmp_path)
    assert (detected.format, detected.path.name, detected.weights.name) == (
        ModelFormat.JSON_WEIGHTS,
        "lstm_config.json",
        "lstm_weights.h5",
    )


def test_folder_with_one_model_file_and_side_files_detects_the_model(tmp_path: Path) -> None:
    _keras_zip(tmp_path / "model.keras")
    (tmp_path / "config.yaml").write_text("labels: [a, b]\n")
    (tmp_path / "config.json").write_text('{"labels": ["a", "b"]}')  # a ModelConfig, not an architecture
    (tmp_path / "labels.txt").write_text("a\nb\n")
    assert detect_format(tmp_path).path == tmp_path / "model.keras"


def test_full_model_wins_over_a_json_pair_beside_it(corpus: Path) -> None:
    detected = detect_format(corpus / "dl4j_simple_lstm")
    assert detected.format is ModelFormat.HDF5 and detected.path.name == "simple_lstm_tf_keras_2_model.h5"


def test_folder_with_two_model_files_is_refused(tmp_path: Path) -> None:
    _keras_zip(tmp_path / "a.keras")
    _hdf5_model(tmp_path / "b.h5")
    with pytest.raises(ModelLoadError, match="several model files"):
        detect_format(tmp_path)


def test_saved_model_folder_and_empty_folder(tmp_path: Path) -> None:
    assert detect_format(_saved_model(tmp_path / "sm")).format is ModelFormat.SAVED_MODEL
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="holds no model") as info:
        detect_format(tmp_path / "empty")
    assert str(tmp_path) not in str(info.value)


def test_missing_path_names_only_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="'gone.keras' does not exist") as info:
        detect_format(tmp_path / "gone.keras")
    assert str(tmp_path) not in str(info.value)


def test_corpus_formats_are_sniffed(corpus: Path) -> None:
    assert detect_format(corpus / "hls4ml_dense_streaming/keras_model.keras").format is ModelFormat.HDF5
    assert detect_format(corpus / "flownet_ann/final_model.keras").format is ModelFormat.KERAS_ZIP
    assert detect_format(corpus / "half_plus_two_cpu/00000123").format is ModelFormat.SAVED_MODEL
    assert detect_format(corpus / "naoki_behavioral_cloning/model.h5").keras_major == 1

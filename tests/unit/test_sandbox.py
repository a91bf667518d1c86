"""Sandbox: which files need the Lambda probe, and what the probe reports for good and crashing files."""

from __future__ import annotations

import base64
import json
import marshal
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from service import quarantine, sandbox
from service.errors import ModelCrashed, ModelLoadError
from service.model_config import ModelConfig
from service.settings import Settings
from tests.conftest import REPO
from tests.fault_models import build_fault_models


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fault_models(tmp_path_factory.mktemp("fault_models"))


def test_crafted_lambda_file_really_kills_a_python_process_with_sigsegv(files: Path) -> None:
    # The plain Keras load the worker would do without the probe: it must die by a signal, or the
    # probe tests below prove nothing.
    code = (
        "import keras, sys; keras.config.enable_unsafe_deserialization(); "
        "keras.saving.load_model(sys.argv[1], compile=False); print('survived')"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-c", code, str(files / "lambda_crash.keras")],
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGSEGV, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert b"survived" not in done.stdout


def test_lambda_layers_names_only_layers_with_stored_code(files: Path) -> None:
    assert sandbox.lambda_layers(files / "lambda_ok.keras") == ("plus_one",)
    assert sandbox.lambda_layers(files / "lambda_crash.keras") == ("plus_one",)
    assert sandbox.lambda_layers(files / "plain.keras") == ()
    assert sandbox.lambda_layers(files / "plain.h5") == ()
    assert sandbox.lambda_layers(files / "does-not-exist.keras") == ()


def test_lambda_bytecode_this_python_cannot_read_needs_no_probe(tmp_path: Path) -> None:
    # The loader refuses unreadable bytecode (it asks for a replacement) before anything runs.
    readable = base64.b64encode(marshal.dumps((lambda x: x).__code__)).decode("ascii")
    layers = [
        {
            "class_name": "Lambda",
            "config": {"name": "new", "function": [readable, None, None], "function_type": "lambda"},
        },
        {
            "class_name": "Lambda",
            "config": {"name": "old", "function": ["4wEAAAAAAAAA", None, None], "function_type": "lambda"},
        },
        {"class_name": "Lambda", "config": {"name": "named", "function": "my_fn", "function_type": "function"}},
    ]
    architecture = tmp_path / "model.json"
    architecture.write_text(json.dumps({"class_name": "Sequential", "config": {"layers": layers}}))
    assert sandbox.lambda_layers(architecture) == ("new",)


def test_needs_probe_is_skipped_when_the_probe_is_off_or_lambda_code_is_refused(files: Path, tmp_path: Path) -> None:
    path = files / "lambda_ok.keras"
    assert sandbox.needs_probe(path, None, Settings(models_dir=tmp_path)) == ("plus_one",)
    assert sandbox.needs_probe(path, None, Settings(models_dir=tmp_path, lambda_probe=False)) == ()
    assert sandbox.needs_probe(path, None, Settings(models_dir=tmp_path, allow_lambda=False)) == ()
    assert sandbox.needs_probe(path, ModelConfig(allow_lambda=False), Settings(models_dir=tmp_path)) == ()
    # A layer with a replacement in the model's config runs the replacement, never the stored code.
    assert sandbox.needs_probe(path, ModelConfig(lambdas={"plus_one": "add_one"}), Settings(models_dir=tmp_path)) == ()


def test_probe_reports_a_crash_as_a_load_error_naming_the_signal_and_layer(files: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelCrashed) as caught:  # a ModelLoadError the builder remembers by content hash
        sandbox.probe(files / "lambda_crash.keras", None, Settings(models_dir=tmp_path), layers=("plus_one",))
    message = str(caught.value)
    assert "crashed with signal 11 (SIGSEGV) while loading" in message
    assert "'plus_one'" in message and "register_lambda" in message
    assert str(files) not in message  # file names only, never server paths


def test_probe_passes_a_lambda_file_that_loads(files: Path, tmp_path: Path) -> None:
    elapsed_s = sandbox.probe(files / "lambda_ok.keras", None, Settings(models_dir=tmp_path), layers=("plus_one",))
    assert elapsed_s > 0


def test_probe_forwards_the_loaders_error_class_and_message(files: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(ModelLoadError) as caught:
        sandbox.probe(broken, None, Settings(models_dir=tmp_path))
    assert "broken.keras" in str(caught.value)
    assert "probe subprocess" not in str(caught.value)  # the loader's own message, not a crash report


def test_probe_is_keyed_on_the_content_hash_and_loads_no_other_content(files: Path, tmp_path: Path) -> None:
    path = files / "lambda_ok.keras"
    settings = Settings(models_dir=tmp_path)
    assert sandbox.probe(path, None, settings, layers=("plus_one",), digest=quarantine.content_hash(path)) > 0
    # The file the worker hashed is not what the child finds (it changed in between): the child refuses it.
    with pytest.raises(ModelLoadError, match="lambda_ok.keras changed while it was probed") as caught:
        sandbox.probe(path, None, settings, layers=("plus_one",), digest="0" * 64)
    assert not isinstance(caught.value, ModelCrashed)  # not remembered: probed again once it settles


def test_probe_times_out(files: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelCrashed, match="longer than 0.5s"):
        sandbox.probe(files / "lambda_ok.keras", None, Settings(models_dir=tmp_path, lambda_probe_timeout_s=0.5))

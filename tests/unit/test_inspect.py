"""`python -m service inspect`, the CLI wiring, and `service.saving.save_model` with its sidecar."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from service.__main__ import main
from service.custom_objects import CustomObjectRegistry
from service.loader import Loader
from service.model_inspect import find_config
from service.saving import save_model
from service.settings import Settings
from tests.unit.tutorial_models import BLOG_MODULE, import_blog

REPO = Path(__file__).resolve().parents[2]
MYSTERY = textwrap.dedent(
    """
    import keras
    from keras import ops

    class MysteryLayer(keras.layers.Layer):
        def call(self, x):
            return ops.cos(x)
    """
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import keras

    root = tmp_path_factory.mktemp("inspect")
    (root / "train").mkdir()
    (root / "train" / "mystery_train.py").write_text(MYSTERY)
    mystery = import_blog(root / "train" / "mystery_train.py", "mystery_train")
    blog_file = root / "train" / "blog_inspect.py"
    blog_file.write_text(BLOG_MODULE)
    blog = import_blog(blog_file, "blog_inspect")
    models = root / "models"
    models.mkdir()
    inp = keras.Input((4,), name="x")
    keras.Model(inp, mystery.MysteryLayer(name="mystery")(inp)).save(models / "mystery.h5")
    inp = keras.Input((4,), name="x")
    keras.Model(inp, keras.layers.Dense(2, name="probs", activation="softmax")(inp)).save(models / "plain.keras")

    img = keras.Input((4, 4, 1), name="image")
    resized = blog.resize_layer()(img)
    flat = keras.layers.Flatten()(resized)
    tutorial = keras.Model(img, blog.MyLayer(2, name="head")(flat))
    tutorial.compile(optimizer="adam", loss=blog.mycrossentropy)
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 1)).astype(np.float32)
    expected = np.asarray(tutorial(x, training=False))
    saved = save_model(tutorial, root / "deploy" / "tutorial", plugin_files=[blog_file], labels=["cat", "dog"])
    np.save(root / "x.npy", x)
    np.save(root / "expected.npy", expected)
    for module in ("mystery_train", "blog_inspect"):
        sys.modules.pop(module, None)
    (root / "empty_models" / "plugins").mkdir(parents=True)
    return {
        "root": root,
        "mystery": models / "mystery.h5",
        "plain": models / "plain.keras",
        "saved": saved,
        "empty": root / "empty_models",
    }


def test_inspect_cli_names_a_missing_custom_layer_and_exits_non_zero(files: dict[str, Path]) -> None:
    env = {**os.environ, "MODELS_DIR": str(files["empty"]), "MODEL_PLUGINS": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "service", "inspect", str(files["mystery"]), str(files["plain"])],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "mystery.h5: FAILED" in done.stdout
    assert "MysteryLayer" in done.stdout.split("mystery.h5: FAILED", 1)[1].split("plain.keras", 1)[0]
    assert "missing:         MysteryLayer" in done.stdout
    assert "plain.keras: OK" in done.stdout


def test_inspect_reports_format_loader_signature_and_compile(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELS_DIR", str(files["empty"]))
    assert main(["inspect", str(files["plain"]), "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["format"] == "keras" and report["loader"] == "keras3"
    sig = report["signatures"]["serving_default"]
    assert sig["inputs"] == [{"name": "x", "dtype": "float32", "shape": [None, 4]}]
    assert sig["outputs"] == [{"name": "probs", "dtype": "float32", "shape": [None, 2]}]
    assert report["missing"] == [] and report["compile_fallback"] is None


def test_inspect_models_dir_option_supplies_the_plugins(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELS_DIR", str(files["empty"]))
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "mystery.py").write_text(MYSTERY)
    assert main(["inspect", str(files["mystery"]), "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mystery.h5: OK" in out and "custom objects:  MysteryLayer" in out and "missing:         none" in out


def test_inspect_of_a_saved_model_with_sidecar_loads_without_plugins(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELS_DIR", str(files["empty"]))
    assert main(["inspect", str(files["saved"])]) == 0
    out = capsys.readouterr().out
    assert "tutorial.keras: OK" in out and "custom objects:  MyLayer" in out and "resize (stored code)" in out


def test_save_model_writes_keras_and_a_sidecar_that_makes_it_load_anywhere(files: dict[str, Path]) -> None:
    saved = files["saved"]
    assert saved.name == "tutorial.keras" and saved.is_file()
    sidecar = yaml.safe_load(saved.with_suffix(".yaml").read_text())
    assert sidecar["custom_objects"] == ["MyLayer", "mycrossentropy"]
    assert sidecar["globals"] == {"H": 6, "W": 5}
    assert sidecar["plugins"] == ["tutorial.blog_inspect.py"]
    assert sidecar["labels"] == ["cat", "dog"]
    assert sidecar["saved_with"]["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert (saved.parent / "tutorial.blog_inspect.py").is_file()

    settings = Settings(models_dir=files["empty"])
    loader = Loader(CustomObjectRegistry.from_plugins(settings), settings)  # no plugins at all
    loaded = loader.load(saved, find_config(saved))
    x = np.load(files["root"] / "x.npy")
    out = loaded.call("serving_default", {"image": x})
    np.testing.assert_allclose(out["head"], np.load(files["root"] / "expected.npy"), rtol=1e-5, atol=1e-6)
    assert loaded.warnings == ()  # mycrossentropy came from the copied plugin: compiled


def test_declared_custom_object_missing_is_named_before_keras_runs(files: dict[str, Path]) -> None:
    from service.errors import MissingCustomObject
    from service.model_config import ModelConfig

    settings = Settings(models_dir=files["empty"])
    loader = Loader(CustomObjectRegistry.from_plugins(settings), settings)
    with pytest.raises(MissingCustomObject, match="'MyLayer'.*declared by the model's config"):
        loader.load(files["saved"], ModelConfig(custom_objects=("MyLayer",)))


def test_lambda_code_from_another_python_minor_is_refused_when_the_sidecar_says_so(files: dict[str, Path]) -> None:
    from service.errors import MissingCustomObject

    settings = Settings(models_dir=files["empty"])
    loader = Loader(CustomObjectRegistry.from_plugins(settings), settings)
    config = find_config(files["saved"]).model_copy(update={"saved_with": {"python": "3.13.0"}})
    with pytest.raises(MissingCustomObject, match="'resize'.*Python 3.13.0"):
        loader.load(files["saved"], config)


def test_default_model_command_is_passed_its_own_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["default-model", "--help"])
    assert info.value.code == 0
    assert "--if-empty" in capsys.readouterr().out


def test_find_config_skips_another_tools_folder_config_and_keeps_ours(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.yaml").write_text("labels: [a, b]\n")
    (tmp_path / "m" / "1" / "config.yaml").write_text("trainer: {epochs: 3}\nseed: 1\n")  # a training script's

    assert find_config(tmp_path / "m" / "1").labels == ("a", "b")

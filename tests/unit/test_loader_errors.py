"""Loader failures name what is missing, the format and the loaders tried; Lambda policy; sniffing."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from service.custom_objects import CustomObjectRegistry
from service.errors import MissingCustomObject, ModelLoadError, UnsafeModelRefused
from service.load_errors import missing_names
from service.loader import Loader
from service.model_config import ModelConfig
from service.settings import Settings
from tests.unit.tutorial_models import BLOG_MODULE, import_blog

MYSTERY = textwrap.dedent(
    """
    import keras
    from keras import ops

    class Mystery(keras.layers.Layer):
        def call(self, x):
            return ops.sin(x)


    @keras.saving.register_keras_serializable(package="zoo")
    class Registered(keras.layers.Layer):
        def call(self, x):
            return ops.cos(x)
    """
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Models whose custom code is NOT importable when loading (the training module is gone)."""
    import keras

    root = tmp_path_factory.mktemp("err")
    (root / "zoo_train.py").write_text(MYSTERY)
    zoo = import_blog(root / "zoo_train.py", "zoo_train")
    blog = import_blog(_write(root / "blogtrain" / "blog_train.py", BLOG_MODULE), "blog_train")
    inp = keras.Input((4,), name="x")
    mystery = keras.Model(inp, zoo.Mystery(name="mystery")(inp))
    img = keras.Input((4, 4, 1), name="image")
    resize = keras.Model(img, blog.resize_layer()(img))
    combo = keras.Model(img, zoo.Mystery(name="mystery")(blog.resize_layer()(img)))
    inp = keras.Input((4,), name="x")
    add = keras.Model(inp, keras.layers.Lambda(lambda t: t + 2, name="plus_two")(inp))
    out = root / "models"
    out.mkdir()
    paths = {
        "mystery.keras": mystery,
        "mystery.h5": mystery,
        "resize.keras": resize,
        "add.keras": add,
        "add.h5": add,
        "combo.keras": combo,
    }
    for name, model in paths.items():
        model.save(out / name)
    inp = keras.Input((4,), name="x")
    keras.Model(inp, zoo.Registered(name="registered")(inp)).save(out / "registered.keras")
    # The training modules disappear, as on a server that only has the model files.
    for module in ("zoo_train", "blog_train"):
        sys.modules.pop(module, None)
    keras.saving.get_custom_objects().pop("zoo>Registered", None)
    return {name: out / name for name in paths} | {"root": root, "registered.keras": out / "registered.keras"}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _loader(tmp_path: Path, plugins: dict[str, str] | None = None, **settings: object) -> Loader:
    (tmp_path / "plugins").mkdir(parents=True, exist_ok=True)
    for name, text in (plugins or {}).items():
        (tmp_path / "plugins" / name).write_text(text)
    config = Settings(models_dir=tmp_path, **settings)
    return Loader(CustomObjectRegistry.from_plugins(config), config)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_missing_custom_layer_is_named_with_format_loaders_and_plugins_hint(
    saved: dict, tmp_path: Path, fmt: str
) -> None:
    with pytest.raises(MissingCustomObject) as info:
        _loader(tmp_path).load(saved[f"mystery.{fmt}"])
    message = str(info.value)
    assert "'Mystery'" in message
    assert f"mystery.{fmt} ({fmt}" in message
    assert "Loaders tried: keras3" in message
    assert "plugins" in message
    assert str(saved["root"]) not in message and str(tmp_path) not in message
    assert info.value.missing == ("Mystery",)
    assert info.value.format == fmt


def test_missing_custom_layer_loads_once_its_plugin_is_dropped_in(saved: dict, tmp_path: Path) -> None:
    loaded = _loader(tmp_path, {"zoo.py": MYSTERY}).load(saved["mystery.keras"])
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(loaded.call("serving_default", {"x": x})["mystery"], np.sin(x), rtol=1e-6)


def test_registered_custom_layer_is_named_when_missing_and_loads_from_a_plugin(saved: dict, tmp_path: Path) -> None:
    import keras

    keras.saving.get_custom_objects().pop("zoo>Registered", None)  # other tests' plugins registered it
    with pytest.raises(MissingCustomObject, match="Registered"):
        _loader(tmp_path / "bare").load(saved["registered.keras"])
    loaded = _loader(tmp_path / "with", {"zoo.py": MYSTERY}).load(saved["registered.keras"])
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(loaded.call("serving_default", {"x": x})["registered"], np.cos(x), rtol=1e-6)


def test_lambda_global_missing_is_named(saved: dict, tmp_path: Path) -> None:
    with pytest.raises(MissingCustomObject) as info:
        _loader(tmp_path).load(saved["resize.keras"])
    assert "'H'" in str(info.value) and "Lambda global" in str(info.value)


def test_every_missing_name_is_listed_at_once_not_only_the_first_keras_hits(saved: dict, tmp_path: Path) -> None:
    with pytest.raises(MissingCustomObject) as info:
        _loader(tmp_path).load(saved["combo.keras"])
    assert set(info.value.missing) == {"Mystery", "H", "W"}
    assert "'Mystery'" in str(info.value) and "Lambda global(s) 'H', 'W'" in str(info.value)


def test_lambda_globals_from_config_are_enough(saved: dict, tmp_path: Path) -> None:
    loaded = _loader(tmp_path).load(saved["resize.keras"], ModelConfig(globals={"H": 3, "W": 2}))
    assert loaded.signature.outputs[0].shape == (None, 3, 2, 1)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_allow_lambda_off_refuses_lambda_code_and_config_can_allow_it(saved: dict, tmp_path: Path, fmt: str) -> None:
    loader = _loader(tmp_path, allow_lambda=False)
    with pytest.raises(UnsafeModelRefused, match="plus_two.*allow_lambda"):
        loader.load(saved[f"add.{fmt}"])
    loaded = loader.load(saved[f"add.{fmt}"], ModelConfig(allow_lambda=True))
    out = loaded.call("serving_default", {"x": np.zeros((1, 4), np.float32)})
    np.testing.assert_array_equal(out["plus_two"], np.full((1, 4), 2.0, np.float32))


def test_allow_lambda_off_still_loads_a_lambda_replaced_from_a_plugin(saved: dict, tmp_path: Path) -> None:
    plugin = "from service.custom_objects import register_lambda\nregister_lambda('plus_two', lambda t: t + 5)\n"
    loaded = _loader(tmp_path, {"fix.py": plugin}, allow_lambda=False).load(saved["add.keras"])
    out = loaded.call("serving_default", {"x": np.zeros((1, 4), np.float32)})
    np.testing.assert_array_equal(out["plus_two"], np.full((1, 4), 5.0, np.float32))
    assert loaded.loader == "keras3-repaired"


@pytest.mark.parametrize(
    ("source", "new_name"),
    [("add.keras", "model.h5"), ("add.keras", "model"), ("add.h5", "model.keras"), ("add.h5", "model.bin")],
)
def test_format_is_sniffed_from_content_not_extension(saved: dict, tmp_path: Path, source: str, new_name: str) -> None:
    target = tmp_path / "m" / new_name
    target.parent.mkdir()
    shutil.copyfile(saved[source], target)
    loaded = _loader(tmp_path).load(target)
    assert loaded.format == ("keras" if source.endswith(".keras") else "h5")
    out = loaded.call("serving_default", {"x": np.ones((2, 4), np.float32)})
    np.testing.assert_array_equal(out["plus_two"], np.full((2, 4), 3.0, np.float32))


def test_broken_plugin_does_not_stop_loading_and_is_named_when_its_class_is_missing(
    saved: dict, tmp_path: Path
) -> None:
    loader = _loader(tmp_path, {"zoo.py": MYSTERY + "\nraise RuntimeError('boom')\n"})
    assert "zoo.py" in loader.registry.plugin_errors
    with pytest.raises(MissingCustomObject) as info:
        loader.load(saved["mystery.keras"])
    assert "zoo.py" in str(info.value) and "boom" in str(info.value)
    loader.load(saved["add.keras"])  # models that do not need the plugin still load


def test_not_a_model_raises_model_load_error_naming_the_file(tmp_path: Path) -> None:
    junk = tmp_path / "notes.bin"
    junk.write_bytes(b"hello world")
    with pytest.raises(ModelLoadError, match="'notes.bin'") as info:
        _loader(tmp_path).load(junk)
    assert str(tmp_path) not in str(info.value)


def test_corrupt_files_raise_model_load_error_never_a_raw_exception(saved: dict, tmp_path: Path) -> None:
    import h5py

    broken_config = tmp_path / "broken.h5"
    with h5py.File(broken_config, "w") as f:
        f.attrs["keras_version"] = "2.4.0"
        f.attrs["model_config"] = "{not json"
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(saved["add.keras"].read_bytes()[:200])
    nonsense_layer = tmp_path / "nonsense.h5"
    with h5py.File(nonsense_layer, "w") as f:
        f.attrs["keras_version"] = "2.4.0"
        f.attrs["model_config"] = (
            '{"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {"units": "many"}}]}}'
        )
        f.create_group("model_weights")
    loader = _loader(tmp_path)
    for path in (broken_config, truncated, nonsense_layer):
        with pytest.raises(ModelLoadError) as info:
            loader.load(path)
        assert path.name in str(info.value) and str(tmp_path) not in str(info.value)


def test_missing_names_reads_the_whole_exception_chain() -> None:
    try:
        try:
            raise TypeError("Could not locate class 'QDense'. Make sure custom classes are decorated")
        except TypeError as inner:
            raise TypeError("<class 'Functional'> could not be deserialized properly") from inner
    except TypeError as outer:
        assert missing_names(outer) == [("QDense", "object")]
    try:
        try:
            raise NameError("name 'W' is not defined")
        except NameError:
            raise NotImplementedError("Exception encountered when calling Lambda.call().")  # noqa: B904 - context, as Keras does
    except NotImplementedError as outer:
        assert missing_names(outer) == [("W", "global")]
    assert missing_names(ValueError("Unknown layer: 'GarNet'. Please ensure")) == [("GarNet", "object")]

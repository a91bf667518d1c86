"""Custom object registry: plugins folder, MODEL_PLUGINS, module-level register calls, per-model overrides."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from service.custom_objects import CustomObjectRegistry
from service.model_config import ModelConfig
from service.settings import Settings

TRAINING_MODULE = textwrap.dedent(
    """
    import math as _m
    import keras
    import tensorflow as tf
    from service.custom_objects import register, register_globals, register_lambda

    H = 64
    W = 64
    _PRIVATE = 1


    class MyLayer(keras.layers.Layer):
        pass


    @keras.saving.register_keras_serializable(package="blog")
    class MyRegisteredLayer(keras.layers.Layer):
        pass


    def mycrossentropy(y_true, y_pred):
        return y_pred


    @register(name="renamed_loss")
    def _hidden_loss(y_true, y_pred):
        return y_pred


    @register
    def _decorated(y_true, y_pred):
        return y_true


    register_globals(SCALE=0.5)
    register_lambda("lambda_1", lambda x: x * 2)
    """
)


def _settings(tmp_path: Path, files: dict[str, str], **kwargs: object) -> Settings:
    (tmp_path / "plugins").mkdir(exist_ok=True)
    for name, text in files.items():
        (tmp_path / "plugins" / name).write_text(text)
    return Settings(models_dir=tmp_path, **kwargs)


def test_every_public_name_of_a_plugin_becomes_a_custom_object_and_a_lambda_global(tmp_path: Path) -> None:
    registry = CustomObjectRegistry.from_plugins(_settings(tmp_path, {"blog.py": TRAINING_MODULE}))
    assert registry.plugin_errors == {} and registry.plugin_modules == ["blog.py"]
    objects = registry.custom_objects()
    globals_ = registry.lambda_globals()
    assert objects["MyLayer"].__name__ == "MyLayer" and objects["mycrossentropy"].__name__ == "mycrossentropy"
    assert objects["blog>MyRegisteredLayer"] is objects["MyRegisteredLayer"]
    assert globals_["H"] == 64 and globals_["W"] == 64 and globals_["tf"].__name__ == "tensorflow"
    assert "_PRIVATE" not in globals_ and "_m" not in globals_
    assert "H" not in objects  # plain values are globals, not custom objects


def test_module_level_register_calls_record_into_the_registry_being_built(tmp_path: Path) -> None:
    registry = CustomObjectRegistry.from_plugins(_settings(tmp_path, {"blog.py": TRAINING_MODULE}))
    objects = registry.custom_objects()
    assert objects["renamed_loss"].__name__ == "_hidden_loss"
    assert objects["_decorated"].__name__ == "_decorated"
    assert registry.lambda_globals()["SCALE"] == 0.5
    assert registry.lambda_replacement("lambda_1")(3) == 6


def test_default_lambda_globals(tmp_path: Path) -> None:
    globals_ = CustomObjectRegistry().lambda_globals()
    assert {"tf", "keras", "K", "ops", "np", "math"} <= set(globals_)
    import keras

    assert globals_["ops"] is keras.ops and globals_["np"].__name__ == "numpy"
    # Keras 2 Lambda code calls K.mean / K.square, which Keras 3 moved to keras.ops.
    assert globals_["K"].mean is keras.ops.mean and globals_["K"].epsilon is keras.backend.epsilon


def test_plugin_with_syntax_error_or_exception_is_recorded_not_raised(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        {
            "a_broken.py": "def oops(:\n",
            "b_raises.py": "x = 1\nraise RuntimeError('no GPU here')\n",
            "c_good.py": "GOOD = 1\n",
        },
    )
    registry = CustomObjectRegistry.from_plugins(settings)
    assert set(registry.plugin_errors) == {"a_broken.py", "b_raises.py"}
    assert "SyntaxError" in registry.plugin_errors["a_broken.py"]
    assert "RuntimeError: no GPU here (line 2)" == registry.plugin_errors["b_raises.py"]
    assert registry.lambda_globals()["GOOD"] == 1


def test_model_plugins_setting_imports_modules_and_replays_their_registrations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "src" / "acme_plugins"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text(
        "from service.custom_objects import register_lambda\nOFFSET = 3\nregister_lambda('shift', lambda x: x + OFFSET)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    settings = Settings(models_dir=tmp_path / "models", model_plugins="acme_plugins.layers, missing.module")
    first = CustomObjectRegistry.from_plugins(settings)
    second = CustomObjectRegistry.from_plugins(settings)  # the module is cached in sys.modules now
    for registry in (first, second):
        assert registry.lambda_globals()["OFFSET"] == 3
        assert registry.lambda_replacement("shift")(1) == 4
        assert "missing.module" in registry.plugin_errors
        assert "acme_plugins.layers" in registry.plugin_modules


def test_registry_register_is_a_decorator_with_or_without_name() -> None:
    registry = CustomObjectRegistry()

    @registry.register
    def first(x: float) -> float:
        return x

    @registry.register(name="second_name")
    def second(x: float) -> float:
        return x

    registry.register_globals(H=32)
    registry.register_lambda("resize", first)
    assert registry.custom_objects() == {"first": first, "second_name": second}
    assert registry.lambda_globals()["H"] == 32 and registry.lambda_replacement("resize") is first
    with pytest.raises(TypeError):
        registry.register_lambda("bad", 3)  # type: ignore[arg-type]  # a wrong type on purpose


def test_for_model_applies_one_models_globals_lambdas_and_plugin_files(tmp_path: Path) -> None:
    registry = CustomObjectRegistry.from_plugins(_settings(tmp_path, {"blog.py": TRAINING_MODULE}))
    model_dir = tmp_path / "resnet"
    model_dir.mkdir()
    (model_dir / "extra.py").write_text("def double(x):\n    return 2 * x\n")
    config = ModelConfig(
        globals={"H": 224},
        lambdas={"lambda_2": "double", "lambda_3": "math:sqrt"},
        plugins=("extra.py",),
    )
    per_model = registry.for_model(config, [model_dir])
    assert (
        per_model.lambda_globals()["H"] == 224 and registry.lambda_globals()["H"] == 64
    )  # the shared one is untouched
    assert per_model.lambda_replacement("lambda_2")(4) == 8
    assert per_model.lambda_replacement("lambda_3")(9) == 3
    assert per_model.lambda_replacement("lambda_1")(1) == 2  # inherited
    assert registry.for_model(None) is registry
    with pytest.raises(ValueError, match="'nowhere' for layer 'lambda_9'"):
        registry.for_model(ModelConfig(lambdas={"lambda_9": "nowhere"}), [model_dir])

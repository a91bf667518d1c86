"""Loader over tutorial-style models: every model, saved in every format it allows, serves the
outputs it computed before saving (training=False, compiled call, never predict)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.custom_objects import CustomObjectRegistry
from service.loader import LoadedModel, Loader
from service.model_config import ModelConfig
from service.settings import Settings
from tests.unit.tutorial_models import BLOG_MODULE, SAVERS, Built, build_models, import_blog

MODELS = [
    "lambda_add",
    "lambda_resize",
    "lambda_noise",
    "custom_layer",
    "registered_layer",
    "split_vector",
    "center_loss",
    "label_smoothing",
    "focal_loss",
    "mycrossentropy",
    "binary_classifier",
    "multi_input",
]
FORMATS = ["keras", "h5", "json", "keras_dir", "export", "tf_saved_model"]
EXPECTED_LOADER = {
    "keras": "keras3",
    "h5": "keras3",
    "json": "keras3",
    "keras_dir": "keras3",
    "export": "saved_model",
    "tf_saved_model": "saved_model",
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    models_dir = tmp_path_factory.mktemp("models")
    (models_dir / "plugins").mkdir()
    plugin = models_dir / "plugins" / "blog.py"
    plugin.write_text(BLOG_MODULE)
    blog = import_blog(plugin)
    built = build_models(blog)
    settings = Settings(models_dir=models_dir)
    registry = CustomObjectRegistry.from_plugins(settings)
    assert registry.plugin_errors == {}
    return {
        "built": built,
        "loader": Loader(registry, settings),
        "saved": tmp_path_factory.mktemp("saved"),
        "settings": settings,
    }


def _save(env: dict, name: str, fmt: str) -> Path:
    folder = env["saved"] / name / fmt
    if not folder.exists():
        folder.mkdir(parents=True)
        SAVERS[fmt](env["built"][name].model, folder)
    return (
        next(p for p in folder.iterdir() if p.suffix != ".h5" or fmt == "h5")
        if fmt != "json"
        else folder / "model.json"
    )


def _outputs(loaded: LoadedModel, built: Built) -> list[np.ndarray]:
    sig = loaded.signature
    assert len(sig.inputs) == len(built.x)
    result = loaded.call(sig.name, {info.name: x for info, x in zip(sig.inputs, built.x)})
    assert list(result) == [t.name for t in sig.outputs]
    return [result[t.name] for t in sig.outputs]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", MODELS)
def test_tutorial_model_serves_the_outputs_computed_before_saving(env: dict, name: str, fmt: str) -> None:
    built = env["built"][name]
    path = _save(env, name, fmt)
    loaded = env["loader"].load(path)
    try:
        assert loaded.loader == EXPECTED_LOADER[fmt]
        assert loaded.signature.batched and loaded.signature.fixed_batch_size is None
        got = _outputs(loaded, built)
        assert len(got) == len(built.expected)
        for value, expected in zip(got, built.expected):
            np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
    finally:
        loaded.close()


def test_keras_signature_uses_input_and_output_layer_names_in_model_order(env: dict) -> None:
    loaded = env["loader"].load(_save(env, "multi_input", "keras"))
    sig = loaded.signature
    assert [t.name for t in sig.inputs] == ["a", "b"]
    assert [(t.name, t.shape, t.dtype) for t in sig.outputs] == [
        ("first", (None, 2), "float32"),
        ("second", (None, 1), "float32"),
    ]
    assert sig.inputs[0].shape == (None, 3) and sig.name == "serving_default" == loaded.default_signature


def test_two_outputs_of_one_layer_get_distinct_names(env: dict) -> None:
    loaded = env["loader"].load(_save(env, "split_vector", "keras"))
    names = [t.name for t in loaded.signature.outputs]
    assert len(set(names)) == 2 and names[0] == "split"
    assert [t.shape for t in loaded.signature.outputs] == [(None, 1), (None, 3)]


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_bound_method_loss_falls_back_to_compile_false_with_one_warning(env: dict, fmt: str) -> None:
    loaded = env["loader"].load(_save(env, "center_loss", fmt))
    compile_warnings = [w for w in loaded.warnings if w.startswith("compile=False")]
    assert len(compile_warnings) == 1


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_closure_loss_warning_names_the_inner_function(env: dict, fmt: str) -> None:
    loaded = env["loader"].load(_save(env, "focal_loss", fmt))
    assert any("focal_loss_fixed" in w for w in loaded.warnings), loaded.warnings


@pytest.mark.parametrize("name", ["mycrossentropy", "label_smoothing"])
def test_loss_from_plugin_loads_compiled_without_warning(env: dict, name: str) -> None:
    loaded = env["loader"].load(_save(env, name, "keras"))
    assert loaded.warnings == ()
    assert loaded.model.compiled


def test_noise_lambda_with_default_argument_is_deterministic_when_served(env: dict) -> None:
    built = env["built"]["lambda_noise"]
    for fmt in ("keras", "h5"):
        loaded = env["loader"].load(_save(env, "lambda_noise", fmt))
        first = _outputs(loaded, built)[0]
        second = _outputs(loaded, built)[0]
        np.testing.assert_array_equal(first, second)
        np.testing.assert_allclose(first, built.expected[0], rtol=1e-6)


def test_per_model_globals_override_the_plugin_globals(env: dict) -> None:
    path = _save(env, "lambda_resize", "keras")
    small = env["loader"].load(path, ModelConfig(globals={"H": 2, "W": 3}))
    default = env["loader"].load(path)
    assert small.signature.outputs[0].shape == (None, 2, 3, 1)
    assert default.signature.outputs[0].shape == (None, 6, 5, 1)  # the plugin's H, W
    x = env["built"]["lambda_resize"].x[0]
    assert _outputs(small, env["built"]["lambda_resize"])[0].shape == (x.shape[0], 2, 3, 1)


def test_saved_model_exports_report_predict_method_and_keep_every_signature(env: dict) -> None:
    loaded = env["loader"].load(_save(env, "binary_classifier", "export"))
    assert "serving_default" in loaded.signatures
    assert loaded.signature.method_name == "tensorflow/serving/predict"
    assert loaded.signature.inputs[0].name == "x"


def test_config_signature_name_selects_the_default_signature(env: dict) -> None:
    from service.errors import ModelLoadError

    path = _save(env, "binary_classifier", "export")
    with pytest.raises(ModelLoadError, match="signature 'nope'"):
        env["loader"].load(path, ModelConfig(signature_name="nope"))
    assert (
        env["loader"].load(path, ModelConfig(signature_name="serving_default")).default_signature == "serving_default"
    )


def test_calls_from_many_threads_give_the_single_thread_answer(env: dict) -> None:
    from concurrent.futures import ThreadPoolExecutor

    built = env["built"]["multi_input"]
    loaded = env["loader"].load(_save(env, "multi_input", "keras"))
    rng = np.random.default_rng(5)
    batches = [
        [rng.standard_normal((n, 3)).astype(np.float32), rng.standard_normal((n, 2)).astype(np.float32)]
        for n in (1, 2, 5, 7) * 4
    ]
    expected = [[np.asarray(v) for v in built.model(b, training=False)] for b in batches]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: loaded.call("serving_default", {"a": b[0], "b": b[1]}), batches))
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got["first"], want[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["second"], want[1], rtol=1e-5, atol=1e-6)


def test_inputs_are_cast_to_the_signature_dtype(env: dict) -> None:
    built = env["built"]["lambda_add"]
    loaded = env["loader"].load(_save(env, "lambda_add", "keras"))
    out = loaded.call("serving_default", {"x": built.x[0].astype(np.float64).tolist()})
    np.testing.assert_allclose(out[loaded.signature.outputs[0].name], built.expected[0], rtol=1e-5, atol=1e-6)

"""Compiled backends (service.backends) and the equivalence gate (service.equivalence) on real models.

Real Keras models, real OpenVINO conversions and real XLA compilations: a CNN that converts (or
compiles) and passes the gate (fp32 and bf16 on OpenVINO), and one test per fallback path: an op
the backend lacks (conversion or compilation fails), a model whose output changes from call to
call and a tolerance set impossibly tight (the gate fails), and models the backend does not take
(extra outputs on OpenVINO, variable dimensions on XLA). The real sample inputs of `gate.inputs`
(PNGs, `.npy`, `.npz` the tests write): read as a request's, compared and reported apart, and every
way a folder cannot be used (the version then serves on TensorFlow, with the reason).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from prometheus_client import REGISTRY

from service import backends, equivalence
from service.loaded_model import LoadedModel
from service.model_config import ModelConfig
from service.runner import DEFAULT_SIGNATURE, keras_signature
from service.servable import ServableId, Signature, TensorInfo
from service.settings import Settings

ALLOWED = (1, 2, 4, 8)


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1), name="input_layer"),  # named: the expected messages use it
            keras.layers.Conv2D(6, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.GlobalAveragePooling2D(name="pooled"),  # named: Keras numbers unnamed layers per process
            keras.layers.Dense(5, activation="softmax"),
        ]
    )
    path = tmp_path_factory.mktemp("backend-models") / "cnn.keras"
    model.save(path)
    return path


def load(path: Path, config: ModelConfig | None = None) -> LoadedModel:
    from service.custom_objects import CustomObjectRegistry
    from service.loader import Loader

    return Loader(CustomObjectRegistry(), Settings(models_dir=path.parent)).load(path, config)


def choose(
    loaded: LoadedModel,
    config: ModelConfig,
    cache: Path,
    name: str = "m",
    samples: Path | None = None,
    default_backend: str = "tensorflow",
):
    return backends.choose(
        loaded,
        ServableId(name, 1),
        config,
        default_backend=default_backend,
        cache_dir=cache,
        threads=1,
        device="/CPU:0",
        allowed_batch_sizes=ALLOWED,
        gate_inputs=None if samples is None else gate_inputs(samples, config),
    )


def gate_inputs(folder: Path, config: ModelConfig) -> equivalence.GateInputs:
    return equivalence.GateInputs(
        folder=folder,
        shown=config.gate.inputs or folder.name,
        preprocessing=config.preprocessing,
        max_image_pixels=Settings().max_image_pixels,
    )


def png(path: Path, size: tuple[int, int], seed: int, mode: str = "L") -> Path:
    """Write a PNG of random pixels (width, height)."""
    from PIL import Image

    channels = {"L": 1, "RGB": 3}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(path)
    return path


def sample_folder(folder: Path, input_name: str) -> Path:
    """Three PNGs (one RGB, one of another size: both go through /predict's preprocessing), a .npy row, a .npz batch."""
    png(folder / "a.png", (12, 12), 1)
    png(folder / "b.png", (20, 16), 2, "RGB")
    png(folder / "more" / "c.png", (12, 12), 3)
    rng = np.random.default_rng(4)
    np.save(folder / "d.npy", rng.random((12, 12, 1)).astype(np.float32))
    np.savez(folder / "e.npz", **{input_name: rng.random((2, 12, 12, 1))})  # float64: cast as a request's
    (folder / ".hidden").write_text("not read")
    return folder


def in_memory(model, tmp_path: Path) -> LoadedModel:
    """A LoadedModel around an in-memory Keras model (its file holds only bytes for the cache key)."""
    signature, call = keras_signature(model)
    path = tmp_path / f"{model.name}.bin"
    path.write_bytes(model.name.encode())
    return LoadedModel(
        path=path,
        format="keras_zip",
        loader="keras3",
        signatures={DEFAULT_SIGNATURE: signature},
        default_signature=DEFAULT_SIGNATURE,
        _calls={DEFAULT_SIGNATURE: call},
        _keep=[model],
    )


def numpy_sine(name: str):
    """A model whose one layer runs `np.sin` through `tf.numpy_function` (a PyFunc op: no backend compiles it)."""
    import keras

    class NumpySine(keras.layers.Layer):
        def call(self, x):
            return tf.reshape(tf.numpy_function(np.sin, [x], tf.float32), tf.shape(x))

        def compute_output_shape(self, shape):
            return shape

    return keras.Sequential([keras.Input((4,)), NumpySine()], name=name)


def fallbacks(model: str, reason: str) -> float:
    return REGISTRY.get_sample_value("kerasserve_backend_fallbacks_total", {"model": model, "reason": reason}) or 0.0


def test_tensorflow_is_the_default_and_runs_no_gate(cnn_file: Path, tmp_path: Path) -> None:
    loaded = load(cnn_file)
    report = choose(loaded, ModelConfig(), tmp_path / "cache")
    assert (report.backend, report.precision, report.requested, report.gate_rows) == (
        "tensorflow",
        "fp32",
        "tensorflow",
        0,
    )
    assert not (tmp_path / "cache").exists()


def test_openvino_fp32_passes_the_gate_serves_the_same_answers_and_is_cached(cnn_file: Path, tmp_path: Path) -> None:
    import keras

    config = ModelConfig(backend="openvino", gate={"samples": 64})
    loaded = load(cnn_file)
    x = np.random.default_rng(1).random((3, 12, 12, 1)).astype(np.float32)
    expected = loaded.call(DEFAULT_SIGNATURE, {loaded.signature.inputs[0].name: x})
    report = choose(loaded, config, tmp_path / "cache")
    assert (report.backend, report.precision, report.reason, report.cached) == ("openvino", "fp32", "", False)
    assert report.gate_rows == 64 + sum(ALLOWED)
    assert report.max_rel_diff is not None and report.max_rel_diff <= 1e-5
    assert report.top1_agreement == 1.0
    got = loaded.call(DEFAULT_SIGNATURE, {loaded.signature.inputs[0].name: x})
    name = loaded.signature.outputs[0].name
    assert got[name].dtype == np.float32
    np.testing.assert_allclose(got[name], expected[name], atol=1e-6)
    np.testing.assert_allclose(got[name], keras.saving.load_model(cnn_file)(x).numpy(), atol=1e-6)
    # A second load (a restart, another worker) reads the converted model from the cache.
    again = choose(load(cnn_file), config, tmp_path / "cache")
    assert (again.backend, again.cached) == ("openvino", True)
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 1


def test_a_stale_cache_entry_that_fails_the_gate_is_converted_again(cnn_file: Path, tmp_path: Path) -> None:
    import keras

    # Another CNN of the same shapes, other weights: its conversion stands in for a stale entry
    # (e.g. written before a plugin changed a custom layer's code).
    keras.utils.set_random_seed(9)
    other = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(6, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5, activation="softmax"),
        ]
    )
    other.save(tmp_path / "other.keras")
    config = ModelConfig(backend="openvino", gate={"samples": 16})
    cache = tmp_path / "cache"
    assert choose(load(tmp_path / "other.keras"), config, cache).backend == "openvino"
    (cache / backends.cache_key(tmp_path / "other.keras", config)).rename(cache / backends.cache_key(cnn_file, config))
    report = choose(load(cnn_file), config, cache)
    assert (report.backend, report.cached) == ("openvino", False)
    assert report.max_rel_diff is not None and report.max_rel_diff <= 1e-5


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_a_world_writable_cache_folder_is_not_used(cnn_file: Path, tmp_path: Path, engine: str) -> None:
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    cache.chmod(0o777)
    config = ModelConfig(backend=engine, gate={"samples": 16})
    for _ in range(2):
        report = choose(load(cnn_file), config, cache)
        assert (report.backend, report.cached) == (engine, False)
    assert list(cache.iterdir()) == []


def test_openvino_bf16_is_measured_against_its_own_tolerance(cnn_file: Path, tmp_path: Path) -> None:
    report = choose(load(cnn_file), ModelConfig(backend="openvino", precision="bf16", gate={"samples": 64}), tmp_path)
    assert report.backend == "openvino"
    assert report.tolerance == equivalence.DEFAULT_TOLERANCE[report.precision]
    assert report.max_abs_diff is not None and report.max_rel_diff is not None
    assert report.max_rel_diff <= report.tolerance


def test_an_op_openvino_lacks_falls_back_to_tensorflow_with_the_reason(tmp_path: Path) -> None:

    loaded = in_memory(numpy_sine("numpy_sine"), tmp_path)
    before = fallbacks("pyfunc", "conversion")
    report = choose(loaded, ModelConfig(backend="openvino"), tmp_path / "cache", name="pyfunc")
    assert (report.backend, report.requested) == ("tensorflow", "openvino")
    assert report.reason.startswith("OpenVINO conversion failed")
    assert "PyFunc" in report.reason
    assert fallbacks("pyfunc", "conversion") == before + 1
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(
        loaded.call(DEFAULT_SIGNATURE, {loaded.signature.inputs[0].name: x})[loaded.signature.outputs[0].name],
        np.sin(x),
    )


def test_a_model_whose_output_changes_between_calls_fails_the_gate_and_stays_on_tensorflow(tmp_path: Path) -> None:
    import keras

    class CallCounter(keras.layers.Layer):
        """Adds how many times it was called: TensorFlow counts on, the converted model freezes the count."""

        def build(self, shape):
            self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False)

        def call(self, x):
            self.calls.assign_add(1.0)
            return x + self.calls

    model = keras.Sequential([keras.Input((4,)), CallCounter()], name="counter")
    loaded = in_memory(model, tmp_path)
    tf_call = loaded._calls[DEFAULT_SIGNATURE]  # noqa: SLF001 - the call must stay TensorFlow's
    before = fallbacks("counter", "gate")
    report = choose(loaded, ModelConfig(backend="auto", gate={"samples": 32}), tmp_path / "cache", name="counter")
    assert (report.backend, report.requested) == ("tensorflow", "auto")
    # `auto` tried both engines; both froze the count.
    assert report.reason.startswith("OpenVINO: equivalence gate failed (fp32): output"), report.reason
    assert "; ONNX Runtime: equivalence gate failed (fp32): output" in report.reason
    assert report.max_abs_diff is not None and report.max_abs_diff >= 1.0
    assert fallbacks("counter", "gate") == before + 1
    assert loaded._calls[DEFAULT_SIGNATURE] is tf_call  # noqa: SLF001


def test_an_impossibly_tight_tolerance_fails_the_gate(cnn_file: Path, tmp_path: Path) -> None:
    config = ModelConfig(backend="openvino", gate={"samples": 64, "tolerance": 1e-12})
    report = choose(load(cnn_file), config, tmp_path)
    assert report.backend == "tensorflow"
    assert "equivalence gate failed" in report.reason and "over 1e-12" in report.reason
    assert report.tolerance == 1e-12 and report.max_rel_diff is not None and report.max_rel_diff > 1e-12


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime", "xla"])
def test_a_savedmodel_signature_function_converts_with_its_inputs_and_outputs_by_name(
    tmp_path: Path, backend: str
) -> None:
    class Module(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable([[2.0], [3.0]])

        @tf.function(
            input_signature=[
                tf.TensorSpec((None, 2), tf.float32, name="b"),
                tf.TensorSpec((None, 1), tf.float32, name="a"),
            ]
        )
        def serve(self, b, a):
            return {"z_sum": tf.matmul(b, self.w) + a, "a_double": a * 2.0}

    module = Module()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    loaded = load(tmp_path / "sm")
    assert loaded.loader == "saved_model"
    report = choose(loaded, ModelConfig(backend=backend, gate={"samples": 16}), tmp_path / "cache")
    assert (report.backend, report.reason) == (backend, "")
    got = loaded.call(DEFAULT_SIGNATURE, {"a": np.array([[1.0]], np.float32), "b": np.array([[1.0, 10.0]], np.float32)})
    assert {k: v.tolist() for k, v in got.items()} == {"z_sum": [[33.0]], "a_double": [[2.0]]}


def test_extra_outputs_stay_on_tensorflow(cnn_file: Path, tmp_path: Path) -> None:
    config = ModelConfig(backend="openvino", extra_outputs=("pooled",))
    report = choose(load(cnn_file, config), config, tmp_path)
    assert report.backend == "tensorflow"
    assert report.reason == "OpenVINO conversion failed: extra_outputs are served by TensorFlow"


# --- ONNX Runtime: the second engine, behind the same cache, gate and fallbacks -----------------


def test_onnxruntime_passes_the_gate_serves_the_same_answers_and_is_cached(cnn_file: Path, tmp_path: Path) -> None:
    import keras

    config = ModelConfig(backend="onnxruntime", gate={"samples": 64})
    loaded = load(cnn_file)
    x = np.random.default_rng(1).random((3, 12, 12, 1)).astype(np.float32)
    tf_call = loaded._calls[DEFAULT_SIGNATURE]  # noqa: SLF001
    report = choose(loaded, config, tmp_path / "cache", name="ort")
    assert (report.backend, report.precision, report.requested, report.reason) == (
        "onnxruntime",
        "fp32",
        "onnxruntime",
        "",
    )
    assert (report.cached, report.gate_rows, report.top1_agreement) == (False, 64 + sum(ALLOWED), 1.0)
    assert report.max_rel_diff is not None and report.max_rel_diff <= 1e-5
    assert loaded._calls[DEFAULT_SIGNATURE] is not tf_call  # noqa: SLF001 - ONNX Runtime computes now
    got = loaded.call(DEFAULT_SIGNATURE, {loaded.signature.inputs[0].name: x})[loaded.signature.outputs[0].name]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, keras.saving.load_model(cnn_file)(x).numpy(), atol=1e-6)
    assert (
        REGISTRY.get_sample_value(
            "kerasserve_backend_max_abs_diff", {"model": "ort", "backend": "onnxruntime", "precision": "fp32"}
        )
        == report.max_abs_diff
    )
    # The .onnx is cached under its own key (engine and versions in it): the next load reads it.
    key = backends.cache_key(cnn_file, config, engine="onnxruntime")
    assert key != backends.cache_key(cnn_file, config)
    assert (tmp_path / "cache" / key / "model.onnx").is_file()
    again = choose(load(cnn_file), config, tmp_path / "cache")
    assert (again.backend, again.cached) == ("onnxruntime", True)
    assert again.max_abs_diff == report.max_abs_diff


def test_an_op_tf2onnx_cannot_convert_falls_back_to_tensorflow_with_the_reason(tmp_path: Path) -> None:
    import keras

    class NumpySine(keras.layers.Layer):
        def call(self, x):
            return tf.reshape(tf.numpy_function(np.sin, [x], tf.float32), tf.shape(x))

        def compute_output_shape(self, shape):
            return shape

    loaded = in_memory(keras.Sequential([keras.Input((4,)), NumpySine()], name="numpy_sine_ort"), tmp_path)
    before = fallbacks("pyfunc-ort", "conversion")
    report = choose(loaded, ModelConfig(backend="onnxruntime"), tmp_path / "cache", name="pyfunc-ort")
    assert (report.backend, report.requested, report.gate_rows) == ("tensorflow", "onnxruntime", 0)
    assert report.reason.startswith("ONNX Runtime conversion failed: Tensorflow op"), report.reason
    assert "PyFunc" in report.reason and "is not supported" in report.reason
    assert fallbacks("pyfunc-ort", "conversion") == before + 1
    assert not (tmp_path / "cache").exists()  # nothing unusable was cached
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(
        loaded.call(DEFAULT_SIGNATURE, {loaded.signature.inputs[0].name: x})[loaded.signature.outputs[0].name],
        np.sin(x),
    )


def test_onnxruntime_failing_the_gate_stays_on_tensorflow(cnn_file: Path, tmp_path: Path) -> None:
    before = fallbacks("tight-ort", "gate")
    config = ModelConfig(backend="onnxruntime", gate={"samples": 64, "tolerance": 1e-12})
    loaded = load(cnn_file)
    tf_call = loaded._calls[DEFAULT_SIGNATURE]  # noqa: SLF001
    report = choose(loaded, config, tmp_path, name="tight-ort")
    assert (report.backend, report.requested) == ("tensorflow", "onnxruntime")
    assert report.reason.startswith("equivalence gate failed (fp32): output"), report.reason
    assert "over 1e-12" in report.reason
    assert report.max_rel_diff is not None and report.max_rel_diff > 1e-12
    assert fallbacks("tight-ort", "gate") == before + 1
    assert loaded._calls[DEFAULT_SIGNATURE] is tf_call  # noqa: SLF001


def test_onnxruntime_bf16_is_refused_by_the_config_and_falls_back_under_model_backend(
    cnn_file: Path, tmp_path: Path
) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="backend: onnxruntime runs fp32 only"):
        ModelConfig(backend="onnxruntime", precision="bf16")
    # MODEL_BACKEND=onnxruntime and a config asking only for bf16: the version serves on TensorFlow, saying why.
    report = backends.choose(
        load(cnn_file),
        ServableId("bf16-ort", 1),
        ModelConfig(precision="bf16"),
        default_backend="onnxruntime",
        cache_dir=tmp_path,
        threads=1,
        device="/CPU:0",
        allowed_batch_sizes=ALLOWED,
    )
    assert (report.backend, report.requested) == ("tensorflow", "onnxruntime")
    assert (
        report.reason
        == "ONNX Runtime conversion failed: ONNX Runtime runs fp32 only here (precision: bf16 asks for OpenVINO)"
    )
    assert backends.candidates("auto", "bf16") == ("openvino",)


def test_auto_tries_both_engines_and_keeps_the_fastest_that_passes(cnn_file: Path, tmp_path: Path) -> None:
    report = choose(load(cnn_file), ModelConfig(backend="auto", gate={"samples": 64}), tmp_path, name="auto-both")
    # Both were gated (each engine's max |Δ| is exported), one serves: the faster, if faster than TensorFlow.
    shown = {
        engine: REGISTRY.get_sample_value(
            "kerasserve_backend_max_abs_diff", {"model": "auto-both", "backend": engine, "precision": "fp32"}
        )
        for engine in ("openvino", "onnxruntime")
    }
    assert None not in shown.values(), shown
    if report.backend == "tensorflow":  # both slower than TensorFlow (a very busy machine)
        assert report.reason.startswith("OpenVINO was slower than TensorFlow"), report.reason
    else:
        assert report.backend in shown and report.speedup is not None and report.speedup >= 1.0
        assert report.max_abs_diff == shown[report.backend]


# --- the real sample inputs of gate.inputs ------------------------------------------------------


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_the_gate_runs_the_real_sample_inputs_and_reports_them_apart(
    cnn_file: Path, tmp_path: Path, engine: str
) -> None:
    from service.protocols import backend_json

    loaded = load(cnn_file)
    folder = sample_folder(tmp_path / "samples", loaded.signature.inputs[0].name)
    config = ModelConfig(backend=engine, gate={"samples": 16, "inputs": "samples"})
    report = choose(loaded, config, tmp_path / "cache", name=f"sampled-{engine}", samples=folder)
    assert (report.backend, report.reason) == (engine, "")
    assert report.gate_rows == 16 + sum(ALLOWED)  # the seeded comparison is unchanged
    assert report.inputs_rows == 6
    assert report.inputs_max_rel_diff is not None and report.inputs_max_rel_diff <= 1e-5
    assert report.inputs_top1_agreement == 1.0
    shown = backend_json(report)["gate"]["inputs"]
    assert (shown["folder"], shown["rows"], shown["max_abs_diff"]) == ("samples", 6, report.inputs_max_abs_diff)
    assert (
        REGISTRY.get_sample_value(
            "kerasserve_backend_gate_inputs_max_abs_diff",
            {"model": f"sampled-{engine}", "backend": engine, "precision": "fp32"},
        )
        == report.inputs_max_abs_diff
    )
    # The next load reads the cached conversion and still runs the gate, sample inputs included.
    again = choose(load(cnn_file), config, tmp_path / "cache", samples=folder)
    assert (again.backend, again.cached, again.inputs_rows) == (engine, True, 6)


def test_sample_images_get_exactly_what_a_request_gets_in_chunks_of_the_largest_batch(
    cnn_file: Path, tmp_path: Path
) -> None:
    from PIL import Image

    from service import preprocessing

    signature = load(cnn_file).signature
    name = signature.inputs[0].name
    folder = sample_folder(tmp_path / "samples", name)
    chunks = equivalence.read_gate_inputs(gate_inputs(folder, ModelConfig()), signature, chunk=4)
    assert [c[name].shape for c in chunks] == [(4, 12, 12, 1), (2, 12, 12, 1)]
    assert all(c[name].dtype == np.float32 for c in chunks)
    # Path order: a.png, b.png, d.npy, e.npz (2 rows), more/c.png.
    request = preprocessing.to_model_inputs(
        {}, [(folder / "b.png").read_bytes()], signature, ModelConfig().preprocessing, max_pixels=10**6, max_rows=1
    )
    np.testing.assert_array_equal(chunks[0][name][1], request.arrays[name][0])
    np.testing.assert_array_equal(
        chunks[1][name][1, ..., 0],
        np.asarray(Image.open(folder / "more" / "c.png")).astype(np.float32) * np.float32(1 / 255),
    )
    np.testing.assert_array_equal(chunks[0][name][2], np.load(folder / "d.npy"))


def test_the_cache_key_does_not_depend_on_the_sample_folder(cnn_file: Path, tmp_path: Path) -> None:
    config = ModelConfig(backend="openvino")
    assert backends.cache_key(cnn_file, config) == backends.cache_key(
        cnn_file, ModelConfig(backend="openvino", gate={"inputs": "samples", "samples": 3})
    )
    # Inside a model folder, the sample files are left out of the key.
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.keras").write_bytes(cnn_file.read_bytes())
    before = backends.cache_key(model, config)
    sample_folder(model / "samples", "x")
    assert backends.cache_key(model, config, exclude=model / "samples") == before
    assert backends.cache_key(model, config) != before


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (lambda f: (f / "notes.txt").write_text("hello"), "notes.txt: cannot decode image: not a JPEG, PNG"),
        (
            lambda f: np.save(f / "wrong.npy", np.zeros((10, 10, 1), np.float32)),
            "wrong.npy: input 'input_layer' has shape [None, 12, 12, 1], got [1, 10, 10, 1]",
        ),
        (lambda f: np.savez(f / "x.npz", pixels=np.zeros((12, 12, 1))), "x.npz: unknown input 'pixels'"),
        (lambda f: (f / "forged.npy").write_bytes(forged_npy()), "forged.npy: a .npy header that declares"),
        (lambda f: np.save(f / "text.npy", np.array([["a"] * 12] * 12)), "text.npy: input 'input_layer' takes float32"),
    ],
    ids=["not-an-image", "wrong-shape", "unknown-input", "forged-header", "strings"],
)
def test_an_unusable_sample_file_serves_on_tensorflow_with_the_reason(
    cnn_file: Path, tmp_path: Path, write, expected: str
) -> None:
    loaded = load(cnn_file)
    folder = tmp_path / "samples"
    png(folder / "a.png", (12, 12), 1)
    write(folder)
    before = fallbacks("badsamples", "gate")
    config = ModelConfig(backend="openvino", gate={"samples": 8, "inputs": "samples"})
    report = choose(loaded, config, tmp_path / "cache", name="badsamples", samples=folder)
    assert (report.backend, report.requested, report.gate_rows) == ("tensorflow", "openvino", 0)
    assert report.reason.startswith("gate.inputs 'samples' cannot be used: "), report.reason
    assert expected in report.reason, report.reason
    assert str(tmp_path) not in report.reason
    assert fallbacks("badsamples", "gate") == before + 1
    assert not (tmp_path / "cache").exists()  # nothing was converted
    assert loaded.signature.inputs[0].name == "input_layer"  # the names the expected messages use


def forged_npy() -> bytes:
    """A .npy whose header declares a 10**12-element array over 8 bytes of data."""
    import io

    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    return stream.getvalue() + b"\0" * 8


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda f: None, "no such folder"),
        (lambda f: f.mkdir(), "holds no file"),
        (
            lambda f: [png(f / f"{i:03}.png", (2, 2), i) for i in range(equivalence.GATE_INPUTS_MAX_FILES + 1)],
            f"holds {equivalence.GATE_INPUTS_MAX_FILES + 1} files, over the limit of {equivalence.GATE_INPUTS_MAX_FILES}",
        ),
        (lambda f: [f.mkdir(), os.mkfifo(f / "pipe")], r"pipe: a FIFO \(named pipe\); only regular files are read"),
        (
            lambda f: [f.mkdir(), np.save(f / "many.npy", np.zeros((equivalence.GATE_INPUTS_MAX_ROWS + 1, 12, 12, 1)))],
            f"many.npy: the files hold more than {equivalence.GATE_INPUTS_MAX_ROWS} rows together",
        ),
        (lambda f: [f.mkdir(), (f / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")], "broken.npz: unreadable: "),
    ],
    ids=["missing", "empty", "too-many-files", "fifo", "too-many-rows", "broken-npz"],
)
def test_a_sample_folder_that_cannot_be_read_is_refused_with_the_reason(
    cnn_file: Path, tmp_path: Path, setup, expected: str
) -> None:
    folder = tmp_path / "samples"
    setup(folder)
    with pytest.raises(equivalence.GateInputsError, match=expected):
        equivalence.read_gate_inputs(gate_inputs(folder, ModelConfig()), load(cnn_file).signature, chunk=8)


def test_sample_inputs_that_fail_a_tight_tolerance_serve_on_tensorflow_naming_the_folder(
    cnn_file: Path, tmp_path: Path
) -> None:
    loaded = load(cnn_file)
    folder = sample_folder(tmp_path / "real", loaded.signature.inputs[0].name)
    config = ModelConfig(backend="openvino", gate={"samples": 0, "inputs": "real", "tolerance": 1e-12})
    report = choose(loaded, config, tmp_path / "cache", samples=folder)
    assert report.backend == "tensorflow"
    assert "on the sample inputs in gate.inputs 'real': output" in report.reason, report.reason
    assert report.inputs_rows == 6
    assert report.inputs_max_rel_diff is not None and report.inputs_max_rel_diff > 1e-12


# --- XLA (tf.function(jit_compile=True)) ---------------------------------------------------------


def max_abs_diff(model: str, backend: str) -> float | None:
    return REGISTRY.get_sample_value(
        "kerasserve_backend_max_abs_diff", {"model": model, "backend": backend, "precision": "fp32"}
    )


def test_xla_passes_the_gate_and_serves_the_same_answers(cnn_file: Path, tmp_path: Path) -> None:
    import keras

    loaded = load(cnn_file)
    tf_call = loaded._calls[DEFAULT_SIGNATURE]  # noqa: SLF001 - replaced by the XLA call
    x = np.random.default_rng(1).random((3, 12, 12, 1)).astype(np.float32)
    name_in, name_out = loaded.signature.inputs[0].name, loaded.signature.outputs[0].name
    expected = loaded.call(DEFAULT_SIGNATURE, {name_in: x})
    # MODEL_BACKEND=xla: no `backend` in the model config.
    report = choose(
        loaded, ModelConfig(gate={"samples": 64}), tmp_path / "cache", name="xla_cnn", default_backend="xla"
    )
    assert (report.backend, report.precision, report.requested, report.reason) == ("xla", "fp32", "xla", "")
    assert (report.cached, report.tolerance) == (False, 1e-5)
    assert report.gate_rows == 64 + sum(ALLOWED)
    assert report.max_rel_diff is not None and report.max_rel_diff <= 1e-5
    assert report.top1_agreement == 1.0 and report.convert_s > 0
    assert max_abs_diff("xla_cnn", "xla") == report.max_abs_diff
    assert loaded._calls[DEFAULT_SIGNATURE] is not tf_call  # noqa: SLF001
    got = loaded.call(DEFAULT_SIGNATURE, {name_in: x})
    assert got[name_out].dtype == np.float32
    np.testing.assert_allclose(got[name_out], expected[name_out], atol=1e-6)
    np.testing.assert_allclose(got[name_out], keras.saving.load_model(cnn_file)(x).numpy(), atol=1e-6)
    assert not (tmp_path / "cache").exists()  # XLA caches nothing


def test_xla_serves_extra_outputs_too(cnn_file: Path, tmp_path: Path) -> None:
    config = ModelConfig(backend="xla", extra_outputs=("pooled",), gate={"samples": 16})
    loaded = load(cnn_file, config)
    x = np.random.default_rng(2).random((2, 12, 12, 1)).astype(np.float32)
    expected = loaded.call(DEFAULT_SIGNATURE, {loaded.signature.inputs[0].name: x})
    report = choose(loaded, config, tmp_path)
    assert (report.backend, report.reason) == ("xla", "")
    got = loaded.call(DEFAULT_SIGNATURE, {loaded.signature.inputs[0].name: x})
    assert list(got) == list(expected) and "pooled" in got
    for name in got:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-6)


def test_an_op_without_an_xla_kernel_falls_back_to_tensorflow_with_the_reason(tmp_path: Path) -> None:

    loaded = in_memory(numpy_sine("xla_numpy_sine"), tmp_path)
    tf_call = loaded._calls[DEFAULT_SIGNATURE]  # noqa: SLF001 - the call must stay TensorFlow's
    before = fallbacks("xla_pyfunc", "conversion")
    report = choose(loaded, ModelConfig(backend="xla"), tmp_path, name="xla_pyfunc")
    assert (report.backend, report.requested, report.gate_rows) == ("tensorflow", "xla", 0)
    assert report.reason == "XLA compilation failed: ops without an XLA kernel on XLA_CPU_JIT: PyFunc"
    assert fallbacks("xla_pyfunc", "conversion") == before + 1
    assert loaded._calls[DEFAULT_SIGNATURE] is tf_call  # noqa: SLF001
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(
        loaded.call(DEFAULT_SIGNATURE, {loaded.signature.inputs[0].name: x})[loaded.signature.outputs[0].name],
        np.sin(x),
    )


def test_xla_differing_from_tensorflow_beyond_a_zero_tolerance_fails_the_gate(cnn_file: Path, tmp_path: Path) -> None:
    # XLA fuses and orders the CNN's float sums its own way: a few 1e-8 apart, over a tolerance of 0.
    loaded = load(cnn_file)
    tf_call = loaded._calls[DEFAULT_SIGNATURE]  # noqa: SLF001 - the call must stay TensorFlow's
    before = fallbacks("xla_strict", "gate")
    report = choose(
        loaded, ModelConfig(backend="xla", gate={"samples": 64, "tolerance": 0}), tmp_path, name="xla_strict"
    )
    assert (report.backend, report.requested, report.tolerance) == ("tensorflow", "xla", 0.0)
    assert report.reason.startswith("equivalence gate failed (fp32): output") and report.reason.endswith("over 0")
    assert report.max_rel_diff is not None and 0 < report.max_rel_diff <= 1e-5
    assert fallbacks("xla_strict", "gate") == before + 1
    assert loaded._calls[DEFAULT_SIGNATURE] is tf_call  # noqa: SLF001


def test_a_variable_dimension_stays_on_tensorflow(tmp_path: Path) -> None:
    import keras

    model = keras.Sequential([keras.Input((None, 3)), keras.layers.GlobalAveragePooling1D()], name="xla_ragged")
    report = choose(in_memory(model, tmp_path), ModelConfig(backend="xla"), tmp_path)
    assert report.backend == "tensorflow"
    assert report.reason.startswith("XLA compilation failed: input '") and "variable dimension" in report.reason


def test_bf16_from_the_model_config_under_model_backend_xla_stays_on_tensorflow(cnn_file: Path, tmp_path: Path) -> None:
    report = choose(load(cnn_file), ModelConfig(precision="bf16"), tmp_path, default_backend="xla")
    assert (report.backend, report.requested) == ("tensorflow", "xla")
    assert report.reason.startswith("XLA compilation failed: precision bf16 is OpenVINO's")


# --- the comparison alone ------------------------------------------------------------------------

SIGNATURE = Signature("s", (TensorInfo("x", "float32", (None, 3)),), (TensorInfo("y", "float32", (None, 3)),))


def test_seeded_inputs_are_reproducible_and_chunked() -> None:
    a = equivalence.seeded_inputs(SIGNATURE, samples=10, chunk=4, seed=7)
    b = equivalence.seeded_inputs(SIGNATURE, samples=10, chunk=4, seed=7)
    assert [c["x"].shape for c in a] == [(4, 3), (4, 3), (2, 3)]
    assert all(np.array_equal(x["x"], y["x"]) for x, y in zip(a, b))
    assert a[1]["x"].min() < 0  # the second chunk is standard normal, not unit range


def test_compare_fails_on_a_changed_top1_class_within_the_tolerance() -> None:
    ref = [{"y": np.array([[0.5, 0.5 - 1e-7, 1e-7], [0.1, 0.2, 0.7]], np.float32)}]
    got = [{"y": np.array([[0.5 - 1e-7, 0.5, 1e-7], [0.1, 0.2, 0.7]], np.float32)}]
    result = equivalence.compare(ref, got, precision="fp32")
    assert result.max_rel_diff <= 1e-5 and result.top1_agreement == 0.5
    assert not result.passed and result.reason == "top-1 class differs on 1 of 2 rows"
    assert equivalence.compare(ref, ref, precision="fp32").passed


def test_compare_fails_when_only_one_side_is_not_finite() -> None:
    ref = [{"y": np.array([[1.0, np.nan]])}]
    assert equivalence.compare(ref, [{"y": np.array([[1.0, np.nan]])}], precision="fp32").passed
    result = equivalence.compare(ref, [{"y": np.array([[1.0, 2.0]])}], precision="fp32")
    assert not result.passed and "not finite" in result.reason

"""InferenceRunner: padding to allowed sizes without retracing, chunking, fixed-batch and unbatched
signatures, casting, input checks, warm-up, and TensorFlow configuration.

The models are real TensorFlow functions. `TracedModel` gives them the loaded model's interface
(`signatures`, `call`) and, unlike the loader's functions (traced once for any batch size), traces a
new graph for every new input shape, and counts the traces through a Python side effect. That
makes "no request ever meets a new shape after warm-up" observable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pytest
import tensorflow as tf

from service import runner
from service.errors import InvalidInput
from service.runner import (
    InferenceRunner,
    available_cores,
    configure_tensorflow,
    default_allowed_batch_sizes,
    device_scope,
    tf_thread_counts,
)
from service.servable import Signature, TensorInfo
from service.settings import Settings
from tests.conftest import in_fresh_process, run_in_fresh_process
from tests.unit.fakes import checked

CPU = "/CPU:0"


@dataclass
class TracedModel:
    """A loaded model made of tf.functions; `traces` lists the input shapes each trace saw."""

    signatures: dict[str, Signature]
    functions: dict[str, Callable]
    traces: list[tuple[int | None, ...]] = field(default_factory=list)

    def call(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.functions[signature_name](**inputs).items()}


def shape_specialised_model() -> TracedModel:
    """y = 3x + row index sum, z = row sums: traced again for every new batch size."""
    model = TracedModel(signatures={}, functions={})
    weights = tf.Variable(tf.ones((4, 2)))

    @tf.function(reduce_retracing=False)
    def serve(x):
        model.traces.append(tuple(x.shape))  # runs only while tracing
        return {"y": 3.0 * x, "z": tf.matmul(x, weights)}

    model.signatures["serving_default"] = Signature(
        "serving_default",
        inputs=(TensorInfo("x", "float32", (None, 4)),),
        outputs=(TensorInfo("y", "float32", (None, 4)), TensorInfo("z", "float32", (None, 2))),
    )
    model.functions["serving_default"] = serve
    return model


def distinct_rows(n: int, width: int = 4) -> np.ndarray:
    return np.arange(n * width, dtype=np.float32).reshape(n, width) / 7.0


@pytest.mark.parametrize(
    ("max_batch_size", "sizes"),
    [
        (1, (1,)),
        (2, (1, 2)),
        (5, (1, 2, 3, 4, 5)),
        (32, (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)),
        (20, (1, 2, 3, 4, 6, 8, 12, 16, 20)),
    ],
)
def test_default_allowed_batch_sizes_increase_and_end_at_the_maximum(
    max_batch_size: int, sizes: tuple[int, ...]
) -> None:
    assert default_allowed_batch_sizes(max_batch_size) == sizes


def test_warm_up_traces_each_allowed_size_once_and_requests_then_never_trace() -> None:
    model = shape_specialised_model()
    runner = InferenceRunner(model, "serving_default", device=CPU, allowed_batch_sizes=(1, 2, 4, 8))
    assert runner.warm_up() > 0
    assert sorted(model.traces) == [(1, 4), (2, 4), (4, 4), (8, 4)]

    for rows in [1, 2, 3, 5, 7, 8, 9, 13, 17, 30]:
        x = distinct_rows(rows)
        outputs = runner.run([checked({"x": x}, runner.signature)])
        np.testing.assert_allclose(outputs["y"], 3.0 * x, rtol=1e-6)
        np.testing.assert_allclose(outputs["z"], x @ np.ones((4, 2), np.float32), rtol=1e-5)
    assert len(model.traces) == 4  # 3, 5, 7 rows were padded; 9..30 chunked by 8, tails padded


def test_run_pads_by_repeating_the_last_row_so_padding_never_changes_real_rows() -> None:
    seen: list[np.ndarray] = []
    model = shape_specialised_model()
    inner = model.functions["serving_default"]

    def recording(**inputs):
        seen.append(inputs["x"])
        return inner(**inputs)

    model.functions["serving_default"] = recording
    runner = InferenceRunner(model, "serving_default", device=CPU, allowed_batch_sizes=(4,))
    x = distinct_rows(3)
    runner.run([checked({"x": x}, runner.signature)])
    np.testing.assert_array_equal(seen[0], np.concatenate([x, x[-1:]]))


def test_padding_rows_are_counted_per_model_for_the_padding_fraction() -> None:
    from service import metrics

    counter = metrics.PADDING_ROWS.labels(model="padded")
    before = counter._value.get()
    runner = InferenceRunner(
        shape_specialised_model(), "serving_default", device=CPU, allowed_batch_sizes=(1, 4, 8), model_name="padded"
    )
    for rows in (3, 4, 5, 1):  # padded to 4, 4, 8, 1
        runner.run([checked({"x": distinct_rows(rows)}, runner.signature)])
    assert counter._value.get() - before == 1 + 0 + 3 + 0


def test_inputs_reach_the_model_cast_to_the_signature_dtype_by_the_boundary() -> None:
    model = shape_specialised_model()
    runner = InferenceRunner(model, "serving_default", device=CPU, allowed_batch_sizes=(1, 2))
    runner.warm_up()
    outputs = runner.run([checked({"x": np.ones((2, 4), dtype=np.float64)}, runner.signature)])
    assert outputs["y"].dtype == np.float32
    outputs = runner.run([checked({"x": np.ones((1, 4), dtype=np.uint8)}, runner.signature)])
    np.testing.assert_array_equal(outputs["y"], np.full((1, 4), 3.0, np.float32))
    assert len(model.traces) == 2  # float64 / uint8 never reached the function


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": np.zeros((2, 5), np.float32)}, r"has shape \[None, 4\], got \[2, 5\]"),
        ({"x": np.zeros((2, 4, 1), np.float32)}, r"has shape \[None, 4\], got \[2, 4, 1\]"),
        ({"other": np.zeros((2, 4), np.float32)}, "unknown input 'other'"),
        ({"x": np.zeros((0, 4), np.float32)}, "is empty"),
        ({"x": np.array([["a", "b", "c", "d"]])}, "takes float32 values, got strings"),
    ],
)
def test_inputs_that_do_not_fit_the_signature_never_reach_the_runner(inputs: dict, message: str) -> None:
    # The runner takes only ModelInputs, which the boundary builds after checking every rule once.
    with pytest.raises(InvalidInput, match=message):
        checked(inputs, shape_specialised_model().signatures["serving_default"])


def test_merged_requests_are_padded_in_the_same_copy_and_sliced_back_per_row() -> None:
    seen: list[np.ndarray] = []
    model = shape_specialised_model()
    inner = model.functions["serving_default"]

    def recording(**inputs):
        seen.append(inputs["x"])
        return inner(**inputs)

    model.functions["serving_default"] = recording
    runner = InferenceRunner(model, "serving_default", device=CPU, allowed_batch_sizes=(4, 8))
    a, b = distinct_rows(2), distinct_rows(3) + 100
    outputs = runner.run([checked({"x": a}, runner.signature), checked({"x": b}, runner.signature)])
    np.testing.assert_array_equal(seen[0], np.concatenate([a, b, b[-1:], b[-1:], b[-1:]]))
    np.testing.assert_allclose(outputs["y"], 3.0 * np.concatenate([a, b]), rtol=1e-6)


def test_unbatched_rows_of_the_wrong_shape_never_reach_the_runner() -> None:
    signature = Signature("serving_default", (TensorInfo("v", "float32", (3,)),), (), batched=False)
    with pytest.raises(InvalidInput, match=r"input 'v' has rows of shape \(4,\); the model expects \(3,\)"):
        checked({"v": np.zeros((2, 4), np.float32)}, signature)


def fixed_batch_model(batch: int) -> TracedModel:
    """A signature compiled for exactly `batch` rows: any other row count raises in TensorFlow."""
    model = TracedModel(signatures={}, functions={})

    @tf.function(input_signature=[tf.TensorSpec([batch, 3], tf.float32)])
    def serve(x):
        model.traces.append(tuple(x.shape))
        return {"sum": tf.reduce_sum(x, axis=1), "doubled": 2.0 * x}

    model.signatures["serving_default"] = Signature(
        "serving_default",
        inputs=(TensorInfo("x", "float32", (batch, 3)),),
        outputs=(TensorInfo("sum", "float32", (batch,)), TensorInfo("doubled", "float32", (batch, 3))),
        batched=False,
        fixed_batch_size=batch,
    )
    model.functions["serving_default"] = lambda **inputs: serve(inputs["x"])
    return model


@pytest.mark.parametrize("rows", [1, 4, 5, 10, 12])
def test_fixed_batch_signature_is_called_in_chunks_of_its_size_with_the_last_padded(rows: int) -> None:
    model = fixed_batch_model(4)
    runner = InferenceRunner(model, "serving_default", device=CPU, allowed_batch_sizes=(1, 2, 32))
    assert runner.allowed_batch_sizes == (4,)
    x = distinct_rows(rows, width=3)
    outputs = runner.run([checked({"x": x}, runner.signature)])
    np.testing.assert_allclose(outputs["sum"], x.sum(axis=1), rtol=1e-6)
    np.testing.assert_allclose(outputs["doubled"], 2 * x, rtol=1e-6)


def test_unbatched_signature_is_called_row_by_row_and_outputs_are_stacked() -> None:
    model = TracedModel(signatures={}, functions={})

    @tf.function(input_signature=[tf.TensorSpec([3], tf.float32), tf.TensorSpec([], tf.float32)])
    def serve(v, scale):
        return {"norm": tf.norm(v) * scale}

    model.signatures["serving_default"] = Signature(
        "serving_default",
        inputs=(TensorInfo("v", "float32", (3,)), TensorInfo("scale", "float32", ())),
        outputs=(TensorInfo("norm", "float32", ()),),
        batched=False,
    )
    model.functions["serving_default"] = lambda **inputs: serve(inputs["v"], inputs["scale"])
    runner = InferenceRunner(model, "serving_default", device=CPU, allowed_batch_sizes=(1, 8))
    assert runner.allowed_batch_sizes == ()
    runner.warm_up()
    v = distinct_rows(5, width=3)
    scale = np.arange(1, 6, dtype=np.float32)
    outputs = runner.run([checked({"v": v, "scale": scale}, runner.signature)])
    np.testing.assert_allclose(outputs["norm"], np.linalg.norm(v, axis=1) * scale, rtol=1e-5)


def test_warm_up_skips_signatures_with_string_inputs() -> None:
    model = TracedModel(signatures={}, functions={})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(text):
        model.traces.append(("called",))
        return {"length": tf.strings.length(text)}

    model.signatures["serving_default"] = Signature(
        "serving_default",
        inputs=(TensorInfo("text", "string", (None,)),),
        outputs=(TensorInfo("length", "int32", (None,)),),
    )
    model.functions["serving_default"] = lambda **inputs: serve(inputs["text"])
    runner = InferenceRunner(model, "serving_default", device=CPU, allowed_batch_sizes=(1, 2))
    traces_before = len(model.traces)
    assert runner.warm_up() == 0.0
    assert len(model.traces) == traces_before
    outputs = runner.run([checked({"text": np.array([b"abc", b"hello", b"x"], dtype=object)}, runner.signature)])
    np.testing.assert_array_equal(outputs["length"], [3, 5, 1])


def test_warm_up_raises_when_a_fully_known_signature_fails() -> None:
    model = TracedModel(signatures={}, functions={})

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    def serve(x):
        tf.debugging.assert_positive(x, message="needs positive inputs")
        return {"y": x}

    model.signatures["serving_default"] = Signature(
        "serving_default",
        inputs=(TensorInfo("x", "float32", (None, 2)),),
        outputs=(TensorInfo("y", "float32", (None, 2)),),
    )
    model.functions["serving_default"] = lambda **inputs: serve(inputs["x"])
    runner = InferenceRunner(model, "serving_default", device=CPU, allowed_batch_sizes=(1, 2))
    with pytest.raises(InvalidInput, match="needs positive inputs"):
        runner.warm_up()


def test_constructor_refuses_allowed_sizes_that_do_not_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        InferenceRunner(shape_specialised_model(), "serving_default", device=CPU, allowed_batch_sizes=(4, 2))
    with pytest.raises(ValueError, match="increasing"):
        InferenceRunner(shape_specialised_model(), "serving_default", device=CPU, allowed_batch_sizes=())


def test_configure_tensorflow_picks_the_device_once_and_refuses_a_missing_gpu() -> None:
    # The first configuration of a process stands, and other tests of this process (a started
    # ServableBuilder) may have made it: the check runs in a fresh interpreter.
    if not in_fresh_process():
        name = test_configure_tensorflow_picks_the_device_once_and_refuses_a_missing_gpu.__name__
        assert run_in_fresh_process(f"{__file__}::{name}", timeout_s=300) == {name}
        return
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if not has_gpu:
        with pytest.raises(ValueError, match="DEVICE=gpu"):
            configure_tensorflow(Settings(device="gpu"))
    device = configure_tensorflow(Settings(device="auto", tf_intra_op_threads=1))
    expected = "/GPU:0" if has_gpu else "/CPU:0"
    assert device == expected
    assert configure_tensorflow(Settings(device="cpu")) == expected  # the first answer stands
    with device_scope(device):
        assert tf.constant(1.0).device.endswith("device:" + expected[1:])


def test_tf_thread_pools_share_the_cores_between_workers_on_cpu_and_stay_default_on_gpu(monkeypatch) -> None:
    monkeypatch.setattr(runner, "available_cores", lambda: 8)
    assert tf_thread_counts(Settings(workers=2), gpu=False) == (4, 4)
    assert tf_thread_counts(Settings(workers=None), gpu=False) == (4, 4)  # unset on a CPU host: 2 workers
    assert tf_thread_counts(Settings(workers=3), gpu=False) == (2, 2)
    assert tf_thread_counts(Settings(workers=16), gpu=False) == (1, 1)  # never 0 (= TF's own pools)
    assert tf_thread_counts(Settings(workers=2, tf_intra_op_threads=3), gpu=False) == (3, 4)  # explicit wins
    assert tf_thread_counts(Settings(workers=2, tf_inter_op_threads=2), gpu=True) == (0, 2)


def test_available_cores_counts_this_process_cores_at_most() -> None:

    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))


# --- a real Keras model through the loader ------------------------------------------------------


@pytest.fixture(scope="module")
def keras_cnn(tmp_path_factory: pytest.TempPathFactory):
    """A tiny CNN saved as .keras and loaded by the service's Loader: (LoadedModel, keras model)."""
    import keras

    from service.custom_objects import CustomObjectRegistry
    from service.loader import Loader

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.5),  # must be inactive: training=False
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5, activation="softmax"),
        ]
    )
    folder = tmp_path_factory.mktemp("runner-models")
    model.save(folder / "cnn.keras")
    loaded = Loader(CustomObjectRegistry(), Settings(models_dir=folder)).load(folder / "cnn.keras")
    yield loaded, model
    loaded.close()


def test_keras_model_through_the_runner_matches_the_model_itself_for_every_row_count(keras_cnn) -> None:
    loaded, model = keras_cnn
    runner = InferenceRunner(
        loaded, loaded.default_signature, device=CPU, allowed_batch_sizes=default_allowed_batch_sizes(8)
    )
    runner.warm_up()
    rng = np.random.default_rng(0)
    (output,) = (t.name for t in loaded.signature.outputs)
    for rows in [1, 2, 3, 5, 8, 9, 19]:
        x = rng.uniform(0, 1, (rows, 12, 12, 1)).astype(np.float32)
        got = runner.run([checked({loaded.signature.inputs[0].name: x}, runner.signature)])[output]
        assert got.shape == (rows, 5)
        np.testing.assert_allclose(got, np.asarray(model(x, training=False)), atol=1e-5)

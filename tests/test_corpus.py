"""Every artifact of ../shared/corpus (beside the repository) loads through the Loader and computes the right numbers.

Expected values come from MANIFEST.md where the sources document them (half_plus_two / three, tfjs
times-three, dl4j cnn_batch_norm and sparse_xent_mlp). Elsewhere the Loader's output is compared
with an independent computation: tf_keras (Keras 2) loading the same file directly, Keras 3 loading
a Keras 3 file directly, or numpy on the file's own weights (sequential_lambda). Lambda layers saved
by other Pythons are served from replacement functions in a plugin written here, the way a user
would (register_lambda by layer name, or `lambdas:` in a per-model config when two files use the
same layer name).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from service.custom_objects import CustomObjectRegistry
from service.loader import LoadedModel, Loader
from service.model_config import ModelConfig
from service.settings import Settings

PLUGIN = textwrap.dedent(
    '''
    """Lambda replacements for the corpus files whose bytecode Python 3.11 cannot read."""
    import tensorflow as tf
    from keras import ops

    from service.custom_objects import register_lambda


    def naoki_normalize(x):
        return x / 127.5 - 1.0          # naoki model.py: Lambda(lambda x: x/127.5-1.0)


    def dl4j_square(x):
        return x ** 2                   # sequential_lambda lambda_1 (Python 2 bytecode: x ** 2)


    def dl4j_triple(x):
        return 3 * x                    # sequential_lambda lambda_2 (Python 2 bytecode: 3 * x)


    def deepfm_half(x):
        return x * 0.5                  # deepfm lambda_1


    register_lambda("space_to_depth_x2", lambda x: tf.nn.space_to_depth(x, 2))
    register_lambda("cat_embed_2d_genure_mean", lambda x: ops.mean(x, axis=1, keepdims=True))
    register_lambda("embed_1d_mean", lambda x: ops.mean(x, axis=1, keepdims=False))
    register_lambda("sum_of_tensors", lambda x: ops.sum(x, axis=1))
    register_lambda("square_of_tensors", lambda x: ops.square(x))
    '''
)


@dataclass(frozen=True)
class Artifact:
    path: str
    loader: str | None = None
    """Expected loader path (None: any)."""
    config: ModelConfig | None = None
    inputs: Callable[[np.random.Generator], dict[str, np.ndarray]] | None = None
    reference: str = "none"
    """How outputs are checked: documented | tf_keras | keras3 | numpy | finite."""


def _half_plus(x: list[float]) -> dict[str, np.ndarray]:
    return {"x": np.array(x, dtype=np.float32).reshape(-1, 1)}


ARTIFACTS: dict[str, Artifact] = {
    "half_plus_two_cpu": Artifact("half_plus_two_cpu/00000123", "saved_model", reference="documented"),
    "half_plus_two_tf2_cpu": Artifact("half_plus_two_tf2_cpu/00000123", "saved_model", reference="documented"),
    "half_plus_two_2_versions": Artifact("half_plus_two_2_versions/00000124", "saved_model", reference="documented"),
    "half_plus_three": Artifact("half_plus_three/00000123", "tf1_session", reference="documented"),
    "tfjs_times_three_float": Artifact("tfjs_times_three_float", "saved_model", reference="documented"),
    "tiny_kws_ref_model": Artifact("tiny_kws_ref_model", "saved_model", reference="tf_keras"),
    "oarriaga_fer2013_mini_xception": Artifact("oarriaga_fer2013_mini_xception", "keras3", reference="tf_keras"),
    "naoki_behavioral_cloning": Artifact(
        "naoki_behavioral_cloning/model.h5",
        "tf_keras",  # Keras 1 weights need tf_keras' Keras-1 weight conversion
        config=ModelConfig(lambdas={"lambda_1": "naoki_normalize"}),
        inputs=lambda rng: {"lambda_1_input": rng.uniform(0, 255, (3, 66, 200, 3)).astype(np.float32)},  # pixels
        reference="finite",
    ),
    "countnet_fcrnn": Artifact("countnet_fcrnn/F-CRNN.h5", "tf_keras", reference="finite"),
    "tiny_pretrained_resnet": Artifact("tiny_pretrained_resnet/pretrainedResnet.h5", "keras3", reference="tf_keras"),
    "tiny_str_ww": Artifact("tiny_str_ww/str_ww_ref_model.h5", "keras3-repaired", reference="tf_keras"),
    "dl4j_custom_loss": Artifact(
        "dl4j_custom_loss/custom_loss.h5",
        "keras3-repaired",
        inputs=lambda rng: {"embedding_1_input": rng.integers(0, 7, (3, 3)).astype(np.float32)},
        reference="tf_keras",
    ),
    "dl4j_sequential_lambda": Artifact(
        "dl4j_sequential_lambda/sequential_lambda.h5",
        "keras3-repaired",
        config=ModelConfig(lambdas={"lambda_1": "dl4j_square", "lambda_2": "dl4j_triple"}),
        reference="numpy",
    ),
    "dl4j_space_to_depth": Artifact(
        "dl4j_space_to_depth/space_to_depth_simple_tensorflow_2.h5", "keras3-repaired", reference="numpy"
    ),
    "dl4j_deepfm": Artifact(
        "dl4j_deepfm/deepfm.h5",
        "keras3-repaired",
        config=ModelConfig(lambdas={"lambda_1": "deepfm_half"}),
        inputs=lambda rng: {
            "input_fea3": rng.standard_normal((3, 1)).astype(np.float32),
            "input_genre": rng.integers(0, 15, (3, 3)).astype(np.float32),
            "input_uid": rng.integers(0, 6041, (3, 1)).astype(np.float32),
            "input_mid": rng.integers(0, 3953, (3, 1)).astype(np.float32),
        },
        reference="finite",
    ),
    "dl4j_cnn_batch_norm": Artifact("dl4j_cnn_batch_norm/cnn_batch_norm.h5", "keras3-repaired", reference="documented"),
    "dl4j_sparse_xent_mlp": Artifact(
        "dl4j_sparse_xent_mlp/simple_sparse_xent_mlp_keras_2_model.h5", "keras3-repaired", reference="documented"
    ),
    "dl4j_simple_lstm": Artifact(
        "dl4j_simple_lstm/simple_lstm_tf_keras_2_model.h5", "keras3-repaired", reference="tf_keras"
    ),
    "dl4j_simple_lstm_json": Artifact(
        "dl4j_simple_lstm/simple_lstm_tf_keras_2_config.json", "keras3-repaired", reference="tf_keras"
    ),
    "hls4ml_dense_streaming": Artifact("hls4ml_dense_streaming/keras_model.keras", "keras3", reference="tf_keras"),
    "flownet_ann": Artifact("flownet_ann/final_model.keras", "keras3", reference="keras3"),
}


@pytest.fixture(scope="module")
def loader(tmp_path_factory: pytest.TempPathFactory) -> Loader:
    models_dir = tmp_path_factory.mktemp("models")
    (models_dir / "plugins").mkdir()
    (models_dir / "plugins" / "corpus_lambdas.py").write_text(PLUGIN)
    settings = Settings(models_dir=models_dir)
    registry = CustomObjectRegistry.from_plugins(settings)
    assert registry.plugin_errors == {}
    return Loader(registry, settings)


def _random_inputs(model: LoadedModel, rng: np.random.Generator) -> dict[str, np.ndarray]:
    signature = model.signature
    inputs = {}
    for info in signature.inputs:
        shape = [3 if d is None else d for d in info.shape]
        inputs[info.name] = rng.standard_normal(shape).astype(info.dtype)
    return inputs


def _tf_keras_reference(path: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    import tensorflow as tf
    import tf_keras

    if path.is_dir():
        model = tf_keras.models.load_model(str(path), compile=False)
    elif path.suffix == ".json":
        model = tf_keras.models.model_from_json(path.read_text())
        model.load_weights(str(path.with_name(path.name.replace("_config.json", "_weights.h5"))))
    else:
        model = tf_keras.models.load_model(str(path), compile=False)
    args = [tf.constant(inputs[name]) for name in model.input_names]
    outputs = model(args if len(args) > 1 else args[0], training=False)
    return [np.asarray(o) for o in (outputs if isinstance(outputs, list) else [outputs])]


def _documented(name: str, model: LoadedModel, corpus: Path) -> None:
    sig = model.signature
    if name.startswith("half_plus"):
        slope_offset = 3.0 if name == "half_plus_three" else 2.0
        x = [1.0, 2.0, 5.0]
        if sig.batched:
            y = model.call(sig.name, _half_plus(x))["y"].ravel()
        else:  # half_plus_two_tf2_cpu takes one row of shape (1,) per call
            y = np.concatenate([model.call(sig.name, {"x": np.array([v], np.float32)})["y"] for v in x])
        np.testing.assert_allclose(y, [0.5 * v + slope_offset for v in x], rtol=0, atol=1e-6)
    elif name == "tfjs_times_three_float":
        assert sig.inputs[0].shape == () and not sig.batched and sig.fixed_batch_size is None
        y = [float(model.call(sig.name, {"x": np.float32(v)})["output_0"]) for v in (1, 2, 3)]
        assert y == [3.0, 6.0, 9.0]
    elif name == "dl4j_cnn_batch_norm":
        x = np.load(corpus / "expected/dl4j_cnn_batch_norm/input.npy").astype(np.float32)
        expected = np.load(corpus / "expected/dl4j_cnn_batch_norm/predictions.npy")
        y = model.call(sig.name, {sig.inputs[0].name: x})
        np.testing.assert_allclose(next(iter(y.values())), expected.reshape(-1, 1), atol=1e-6)
    elif name == "dl4j_sparse_xent_mlp":
        with h5py.File(
            corpus / "expected/dl4j_sparse_xent_mlp/simple_sparse_xent_mlp_keras_2_inputs_and_outputs.h5"
        ) as f:
            x = f["inputs/dense_1_input"][()].astype(np.float32)
            expected = f["predictions/activation_1"][()]
        assert sig.inputs[0].shape == (None, 4)  # Keras 3 alone reports (None, None, 4)
        y = model.call(sig.name, {sig.inputs[0].name: x})
        np.testing.assert_allclose(y["activation_1"], expected, atol=1e-6)
    else:  # pragma: no cover - table and checks must agree
        raise AssertionError(name)


def _numpy_reference(name: str, model: LoadedModel, corpus: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    x = next(iter(inputs.values())).astype(np.float64)
    if name == "dl4j_space_to_depth":
        import tensorflow as tf

        return [tf.nn.space_to_depth(x.astype(np.float32), 2).numpy()]
    # sequential_lambda: Dense(64) -> x**2 -> 3*x -> Dense(32), weights read straight from the file
    with h5py.File(corpus / ARTIFACTS[name].path) as f:
        w = f["model_weights"]

        def dense(layer: str) -> tuple[np.ndarray, np.ndarray]:
            names = [n.decode() if isinstance(n, bytes) else n for n in w[layer].attrs["weight_names"]]
            return w[layer][names[0]][()], w[layer][names[1]][()]

        k1, b1 = dense("dense_1")
        k2, b2 = dense("dense_2")
    hidden = 3 * np.maximum(x @ k1 + b1, 0) ** 2  # dense_1 has relu
    return [hidden @ k2 + b2]


@pytest.mark.parametrize("name", list(ARTIFACTS))
def test_corpus_artifact_loads_and_computes_correct_outputs(name: str, loader: Loader, corpus: Path) -> None:
    artifact = ARTIFACTS[name]
    model = loader.load(corpus / artifact.path, artifact.config)
    try:
        if artifact.loader is not None:
            assert model.loader == artifact.loader, model.warnings
        if artifact.reference == "documented":
            _documented(name, model, corpus)
            return
        rng = np.random.default_rng(0)
        inputs = artifact.inputs(rng) if artifact.inputs else _random_inputs(model, rng)
        outputs = model.call(model.default_signature, inputs)
        got = [outputs[t.name] for t in model.signature.outputs]
        for value in got:
            assert np.all(np.isfinite(value))
        # Served outputs are deterministic (training=False): a second call gives the same numbers.
        again = model.call(model.default_signature, inputs)
        for value, info in zip(got, model.signature.outputs):
            np.testing.assert_array_equal(value, again[info.name])
        if artifact.reference == "tf_keras":
            expected = _tf_keras_reference(model.path, inputs)
        elif artifact.reference == "keras3":
            import keras

            expected = [
                np.asarray(
                    keras.saving.load_model(model.path, compile=False)(next(iter(inputs.values())), training=False)
                )
            ]
        elif artifact.reference == "numpy":
            expected = _numpy_reference(name, model, corpus, inputs)
        else:
            return
        assert len(expected) == len(got)
        for value, reference in zip(got, expected):
            np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-5)
    finally:
        model.close()


def _examples(*values: float) -> np.ndarray:
    import tensorflow as tf

    return np.array(
        [
            tf.train.Example(
                features=tf.train.Features(feature={"x": tf.train.Feature(float_list=tf.train.FloatList(value=[v]))})
            ).SerializeToString()
            for v in values
        ],
        dtype=object,
    )


def test_corpus_tf1_regress_and_classify_signatures_take_serialized_examples(loader: Loader, corpus: Path) -> None:
    three = loader.load(corpus / "half_plus_three/00000123")
    regress = three.signatures["tensorflow/serving/regress"]
    assert regress.method_name == "tensorflow/serving/regress" and regress.inputs[0].dtype == "string"
    out = three.call("tensorflow/serving/regress", {"inputs": _examples(1.0, 2.0)})
    np.testing.assert_allclose(out["outputs"].ravel(), [3.5, 4.0])  # documented in api_rest.md
    two = loader.load(corpus / "half_plus_two_cpu/00000123")
    assert set(two.signatures) == {
        "serving_default",
        "classify_x_to_y",
        "regress_x_to_y",
        "regress_x_to_y2",
        "regress_x2_to_y3",
    }
    scores = two.call("classify_x_to_y", {"inputs": _examples(1.0, 2.0, 5.0)})["scores"]
    np.testing.assert_allclose(scores.ravel(), [2.5, 3.0, 4.5])


def test_corpus_compile_fallback_names_the_keras2_loss(loader: Loader, corpus: Path) -> None:
    model = loader.load(corpus / "dl4j_custom_loss/custom_loss.h5")
    assert any("logcosh" in w and "compile=False" in w for w in model.warnings)


def test_corpus_lambda_from_another_python_without_replacement_names_each_layer(corpus: Path, tmp_path: Path) -> None:
    from service.errors import MissingCustomObject

    bare = Loader(CustomObjectRegistry(), Settings(models_dir=tmp_path))
    with pytest.raises(MissingCustomObject) as info:
        bare.load(corpus / "dl4j_sequential_lambda/sequential_lambda.h5")
    message = str(info.value)
    assert "'lambda_1'" in message and "'lambda_2'" in message
    assert "register_lambda" in message and "sequential_lambda.h5" in message
    assert str(corpus) not in message
    assert set(info.value.missing) == {"lambda_1", "lambda_2"}

"""TF1 SavedModels with several named inputs (wide-and-deep, two-tower exports): the loader serves
them through `tf.saved_model.load` or, when TF2 cannot prune a signature, a TF1 session, and gives
the answers TensorFlow's own call gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.custom_objects import CustomObjectRegistry
from service.loader import Loader
from service.settings import Settings
from tests.tf1_models import build_tf1_saved_model, expected_score

WIDE_AND_DEEP = {"wide": 2, "deep": 3}
THREE_TOWERS = {"user": 3, "item_10": 1, "item_2": 2}  # natural order differs from lexical order


def _values(inputs: dict[str, int], rows: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {name: rng.standard_normal((rows, width)).astype(np.float32) for name, width in inputs.items()}


def _tensorflow_tf2(path: Path, values: dict[str, np.ndarray]) -> np.ndarray:
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    return signature(**{k: tf.constant(v) for k, v in values.items()})["score"].numpy()


def _tensorflow_session(path: Path, values: dict[str, np.ndarray]) -> np.ndarray:
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with v1.Session(graph=graph) as session:
        meta = v1.saved_model.loader.load(session, ["serve"], str(path))
        signature = meta.signature_def["serving_default"]
        feed = {graph.get_tensor_by_name(signature.inputs[k].name): v for k, v in values.items()}
        return session.run(graph.get_tensor_by_name(signature.outputs["score"].name), feed_dict=feed)


@pytest.fixture(scope="module")
def loader() -> Loader:
    return Loader(CustomObjectRegistry(), Settings())


@pytest.mark.parametrize(
    ("inputs", "options", "loader_path"),
    [
        (WIDE_AND_DEEP, {}, "saved_model"),  # no variables/ folder, like a TF 1.13 export of a frozen graph
        (WIDE_AND_DEEP, {"simple_save": True}, "saved_model"),
        (THREE_TOWERS, {"variables": True}, "saved_model"),
        (WIDE_AND_DEEP, {"unfed_signature": True}, "tf1_session"),
        (THREE_TOWERS, {"unfed_signature": True, "variables": True}, "tf1_session"),
    ],
    ids=[
        "two-inputs-no-variables",
        "two-inputs-simple-save",
        "three-inputs-variables",
        "two-inputs-session",
        "three-inputs-session",
    ],
)
def test_tf1_saved_model_with_named_inputs_answers_like_tensorflow(
    loader: Loader, tmp_path: Path, inputs: dict[str, int], options: dict, loader_path: str
) -> None:
    path = build_tf1_saved_model(tmp_path / "model", inputs, **options)
    values = _values(inputs)

    loaded = loader.load(path)
    answer = loaded.call("serving_default", values)

    assert loaded.loader == loader_path
    signature = loaded.signatures["serving_default"]
    assert {t.name: t.shape for t in signature.inputs} == {name: (None, width) for name, width in inputs.items()}
    assert [t.name for t in signature.outputs] == ["score"]
    own_call = _tensorflow_tf2(path, values) if loader_path == "saved_model" else _tensorflow_session(path, values)
    np.testing.assert_allclose(answer["score"], own_call, rtol=1e-6)
    np.testing.assert_allclose(
        answer["score"], expected_score(inputs, values, variables=options.get("variables", False)), rtol=1e-5
    )


def test_tf1_saved_model_inputs_are_matched_by_name_not_by_order(loader: Loader, tmp_path: Path) -> None:
    path = build_tf1_saved_model(tmp_path / "model", {"wide": 2, "deep": 2})
    values = _values({"wide": 2, "deep": 2})
    swapped = {"wide": values["deep"], "deep": values["wide"]}

    loaded = loader.load(path)

    np.testing.assert_allclose(
        loaded.call("serving_default", values)["score"],
        expected_score({"wide": 2, "deep": 2}, values, variables=False),
        rtol=1e-5,
    )
    assert not np.allclose(
        loaded.call("serving_default", values)["score"], loaded.call("serving_default", swapped)["score"]
    )

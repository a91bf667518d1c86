"""TF1-style SavedModels with several named inputs, exported the way TF 1.x scripts exported them:
a `tf.compat.v1` graph of placeholders, written by `SavedModelBuilder` (or `simple_save`).

`build_tf1_saved_model(folder, inputs)` writes a linear model `score = sum_k inputs[k] @ W_k (+ b)`
with one float32 placeholder `(None, width)` per named input, e.g. wide-and-deep `{"wide": 2, "deep": 3}`.
`expected_score(inputs, values)` computes the same answer in numpy.

- `variables=False` leaves no `variables/` folder (constants only), as TF 1.13 exports of frozen graphs do;
  `variables=True` keeps the bias in a `tf.Variable`, so the export has a real checkpoint.
- `unfed_signature=True` adds a second signature whose output needs a placeholder it does not take.
  TF1 sessions load such a graph; `tf.saved_model.load` refuses it (it prunes every signature), so
  the loader serves the model through its TF1 session path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

BIAS = 0.25


def weights(inputs: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The (width, 1) weight matrix of each named input: distinct per input, so a swap shows."""
    return {
        name: (np.arange(1, width + 1, dtype=np.float32) * (k + 1) * (-1.0) ** k).reshape(width, 1)
        for k, (name, width) in enumerate(inputs.items())
    }


def expected_score(inputs: Mapping[str, int], values: Mapping[str, np.ndarray], *, variables: bool) -> np.ndarray:
    """The model's answer for `values` (name -> (rows, width)), computed in numpy."""
    w = weights(inputs)
    score = sum(np.asarray(values[name], np.float32) @ w[name] for name in inputs)
    return score + (BIAS if variables else 0.0)


def build_tf1_saved_model(
    folder: Path,
    inputs: Mapping[str, int],
    *,
    variables: bool = False,
    unfed_signature: bool = False,
    simple_save: bool = False,
) -> Path:
    """Write the TF1 SavedModel described in the module docstring into `folder` and return it."""
    import tensorflow as tf

    v1 = tf.compat.v1
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        # Placeholder names differ from the signature keys, as in most exports (`input_1:0`, ...).
        feeds = {
            name: v1.placeholder(tf.float32, [None, width], name=f"input_{k}")
            for k, (name, width) in enumerate(inputs.items())
        }
        terms = [tf.matmul(feeds[name], tf.constant(w)) for name, w in weights(inputs).items()]
        score = tf.add_n(terms)
        if variables:
            score = score + v1.Variable(BIAS, name="bias")
        score = tf.identity(score, name="score")
        signatures = {"serving_default": v1.saved_model.predict_signature_def(feeds, {"score": score})}
        if unfed_signature:
            keep = v1.placeholder(tf.float32, [], name="keep_prob")  # fed in training only
            signatures["train_view"] = v1.saved_model.predict_signature_def(feeds, {"score": score * keep})
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            if simple_save:
                v1.saved_model.simple_save(session, str(folder), feeds, {"score": score})
            else:
                builder = v1.saved_model.Builder(str(folder))
                builder.add_meta_graph_and_variables(
                    session, [v1.saved_model.tag_constants.SERVING], signature_def_map=signatures
                )
                builder.save()
    if not variables:
        shutil.rmtree(folder / "variables", ignore_errors=True)
    assert (folder / "variables").is_dir() == variables, os.listdir(folder)
    return folder

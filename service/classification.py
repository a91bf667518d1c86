"""Classification: model scores -> class ids, labels, top-k and thresholds.

Keras' `predict_classes` semantics: an output whose last dimension has several units gives the
argmax; a single unit (a sigmoid) gives `score > threshold`. Also the two wire shapes other servers
use for classes: TF Serving's `:classify` pairs and Triton's `"value:index:label"` strings. Works on
numpy arrays only; never imports Flask or TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True, slots=True)
class ClassScores:
    """Classes of one output, row by row: chosen ids, their scores and optionally the top k.

    `ids` has the output's shape without its last axis. `top_ids`/`top_scores` add a last axis of k
    (None when top-k was not asked for). `labels` holds the labels matching the class ids, or is
    empty when the model has none that fit this output.
    """

    ids: np.ndarray
    scores: np.ndarray
    top_ids: np.ndarray | None
    top_scores: np.ndarray | None
    labels: tuple[str, ...]

    def label(self, class_id: int) -> str | None:
        """Return the label of `class_id`, or None when there is none."""
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else None


def class_probabilities(scores: np.ndarray) -> np.ndarray:
    """Return per-class scores along the last axis; a single sigmoid unit p becomes [1 - p, p]."""
    scores = np.asarray(scores)
    if scores.ndim == 0:
        scores = scores.reshape(1)
    if scores.shape[-1] == 1:
        return np.concatenate([1.0 - scores, scores], axis=-1)
    return scores


def labels_for(labels: Sequence[str], units: int) -> tuple[str, ...]:
    """Return `labels` when they fit an output of `units` units (2 labels fit one sigmoid unit), else ()."""
    classes = 2 if units == 1 else units
    return tuple(labels) if len(labels) == classes else ()


def predict_classes(
    scores: np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    top_k: int | None = None,
    labels: Sequence[str] = (),
) -> ClassScores:
    """Choose the class of every row of one output, Keras' `predict_classes` way.

    Args:
        scores: model output, classes on the last axis (a single unit means a sigmoid).
        threshold: a single unit above it is class 1, else class 0.
        top_k: also return the k best classes per row (capped at the number of classes).
        labels: the model's class labels, used when their count fits this output.
    """
    scores = np.asarray(scores)
    if scores.ndim == 0:
        scores = scores.reshape(1)
    units = scores.shape[-1]
    if units == 1:
        ids = (scores[..., 0] > threshold).astype(np.int64)
        chosen = np.where(ids == 1, scores[..., 0], 1.0 - scores[..., 0])
    else:
        ids = np.argmax(scores, axis=-1)
        chosen = np.take_along_axis(scores, ids[..., np.newaxis], axis=-1)[..., 0]
    top_ids = top_scores = None
    if top_k is not None:
        top_ids, top_scores = best_k(class_probabilities(scores), top_k)
    return ClassScores(ids=ids, scores=chosen, top_ids=top_ids, top_scores=top_scores, labels=labels_for(labels, units))


def best_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the ids and scores of the k highest scores along the last axis, best first (stable)."""
    k = max(1, min(k, scores.shape[-1]))
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    return order, np.take_along_axis(scores, order, axis=-1)


def triton_classes(scores: np.ndarray, k: int, labels: Sequence[str] = ()) -> np.ndarray:
    """Triton's classification extension: the k best raw values as `"value:index[:label]"` bytes.

    Values are formatted like C++ `std::to_string` (`%f`), so byte-compatible with Triton. The
    result has the output's shape with the last axis replaced by k.
    """
    scores = np.asarray(scores)
    if scores.ndim == 0:
        scores = scores.reshape(1)
    ids, values = best_k(scores, k)
    flat = [
        (f"{float(v):f}:{int(i)}:{labels[int(i)]}" if int(i) < len(labels) else f"{float(v):f}:{int(i)}").encode()
        for i, v in zip(ids.reshape(-1), values.reshape(-1))
    ]
    return np.array(flat, dtype=object).reshape(ids.shape)


def tfserving_classes(scores: np.ndarray, labels: Sequence[str] = ()) -> list[list[list[object]]]:
    """TF Serving `:classify` results from per-row scores: `[[[label, score], ...] per class] per row]`.

    Every class is listed in index order (TF Serving's order); the label is `""` when the model has
    none, as TF Serving answers for a classify signature without a `classes` output. A single
    sigmoid unit with two labels lists both classes (`1 - p`, `p`); without labels it is one score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, np.newaxis]
    scores = scores.reshape(scores.shape[0], -1)
    names = labels_for(labels, scores.shape[1])
    if scores.shape[1] == 1 and names:
        scores = class_probabilities(scores)  # one sigmoid unit with two labels: both classes
    return [[[names[i] if names else "", v] for i, v in enumerate(row)] for row in scores.tolist()]

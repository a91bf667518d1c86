"""Unit tests of service.classification: Keras predict_classes semantics, top-k, Triton and TF Serving shapes."""

from __future__ import annotations

import numpy as np
import pytest

from service.classification import (
    best_k,
    class_probabilities,
    labels_for,
    predict_classes,
    tfserving_classes,
    triton_classes,
)

SOFTMAX = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], dtype=np.float32)
SIGMOID = np.array([[0.8], [0.3], [0.5]], dtype=np.float32)


def test_several_units_give_the_argmax_and_its_score() -> None:
    result = predict_classes(SOFTMAX, labels=("a", "b", "c"))
    assert result.ids.tolist() == [1, 0]
    np.testing.assert_allclose(result.scores, [0.7, 0.5])
    assert [result.label(i) for i in result.ids] == ["b", "a"]
    assert result.top_ids is None


def test_a_single_unit_is_thresholded_at_half_by_default() -> None:
    result = predict_classes(SIGMOID)
    assert result.ids.tolist() == [1, 0, 0]  # 0.5 is not above 0.5, as in Keras' (p > 0.5)
    np.testing.assert_allclose(result.scores, [0.8, 0.7, 0.5], atol=1e-6)


def test_threshold_moves_the_decision() -> None:
    assert predict_classes(SIGMOID, threshold=0.25).ids.tolist() == [1, 1, 1]
    assert predict_classes(SIGMOID, threshold=0.9).ids.tolist() == [0, 0, 0]


def test_top_k_is_sorted_best_first_and_capped_at_the_class_count() -> None:
    result = predict_classes(SOFTMAX, top_k=5)
    assert result.top_ids.tolist() == [[1, 2, 0], [0, 2, 1]]
    np.testing.assert_allclose(result.top_scores, [[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]])


def test_top_k_of_a_single_unit_covers_both_classes() -> None:
    result = predict_classes(SIGMOID[:1], top_k=2, labels=("cat", "dog"))
    assert result.top_ids.tolist() == [[1, 0]]
    np.testing.assert_allclose(result.top_scores, [[0.8, 0.2]], atol=1e-6)
    assert result.labels == ("cat", "dog")


def test_labels_are_used_only_when_they_fit_the_output() -> None:
    assert labels_for(("a", "b", "c"), 3) == ("a", "b", "c")
    assert labels_for(("a", "b"), 1) == ("a", "b")
    assert labels_for(("a", "b"), 3) == ()
    assert predict_classes(SOFTMAX, labels=("a",)).label(1) is None


def test_class_axis_is_the_last_for_per_pixel_outputs() -> None:
    scores = np.zeros((1, 2, 2, 3))
    scores[0, 1, 0, 2] = 1.0
    assert predict_classes(scores).ids.tolist() == [[[0, 0], [2, 0]]]


def test_class_probabilities_and_best_k() -> None:
    np.testing.assert_allclose(class_probabilities(np.array([[0.25]])), [[0.75, 0.25]])
    ids, values = best_k(np.array([[1.0, 3.0, 3.0]]), 2)
    assert ids.tolist() == [[1, 2]] and values.tolist() == [[3.0, 3.0]]  # ties keep index order


def test_triton_strings_are_value_index_label_with_six_decimals() -> None:
    out = triton_classes(SOFTMAX, 2, labels=("a", "b"))
    assert out.shape == (2, 2)
    assert out.tolist() == [[b"0.700000:1:b", b"0.200000:2"], [b"0.500000:0:a", b"0.300000:2"]]


def test_tfserving_classes_list_every_class_in_index_order() -> None:
    assert tfserving_classes(np.array([[3.0]])) == [[["", 3.0]]]
    result = tfserving_classes(SOFTMAX[:1], labels=("a", "b", "c"))
    assert [label for label, _ in result[0]] == ["a", "b", "c"]
    assert [score for _, score in result[0]] == pytest.approx([0.1, 0.7, 0.2])
    binary = tfserving_classes(np.array([[0.75]]), labels=("no", "yes"))
    assert binary == [[["no", 0.25], ["yes", 0.75]]]

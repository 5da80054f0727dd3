"""Class weights: the paper's formula, parsing, per-example lookup."""

import numpy as np
import pytest

from fer_tf.classes import CLASS_NAMES
from fer_tf.data import class_weights as cw

# docs/datasets.md: Aff-Wild2 ABAW-2020 train counts (ABAW order).
AFFWILD2_TRAIN = np.array([583277, 23704, 12588, 11155, 148100, 100174, 38837])
# ExpW per class in ABAW order (Neutral, Anger, Disgust, Fear, Happy, Sad, Surprise),
# the published ExpW class distribution; 91,793 faces in total.
EXPW = np.array([34883, 3671, 3995, 1088, 30537, 10559, 7060])


def test_formula_exact_on_small_inputs():
    np.testing.assert_allclose(cw.paper_class_weights([10, 5, 2, 10]), [1, 2, 5, 1], rtol=0)
    np.testing.assert_allclose(cw.paper_class_weights([3, 9]), [3, 1], rtol=0)


def test_paper_weights_from_affwild2_plus_expw_counts():
    assert EXPW.sum() == 91793
    merged = AFFWILD2_TRAIN + EXPW
    weights = cw.paper_class_weights(merged)
    # The paper's numbers come out within a few percent (its exact ExpW filtering is unknown).
    np.testing.assert_allclose(weights, cw.PAPER_CLASS_WEIGHTS, rtol=0.05)


def test_empty_class_is_a_clear_error():
    with pytest.raises(ValueError, match="Disgust"):
        cw.paper_class_weights([5, 3, 0, 1, 1, 1, 1], class_names=CLASS_NAMES)
    with pytest.raises(ValueError, match="non-negative"):
        cw.paper_class_weights([5, -1])


def test_parse_class_weights():
    text = "1,22.92,37.5,50.66,3.47,5.79,13.55"
    np.testing.assert_array_equal(cw.parse_class_weights(text, 7), cw.PAPER_CLASS_WEIGHTS)
    np.testing.assert_array_equal(cw.parse_class_weights("1 2, 3"), [1, 2, 3])
    for bad, match in (("1,x", "numbers"), ("1,2", "expected 7"), ("1,0,2,3,4,5,6", "positive"),
                       ("", "empty")):
        with pytest.raises(ValueError, match=match):
            cw.parse_class_weights(bad, 7)


def test_example_weights():
    w = cw.example_weights([0, 3, 1, 3], [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(w, [1, 4, 2, 4])
    assert w.dtype == np.float32
    np.testing.assert_array_equal(cw.example_weights([2, 1]), [1, 1])
    with pytest.raises(ValueError, match="outside"):
        cw.example_weights([0, 4], [1.0, 2.0, 3.0, 4.0])

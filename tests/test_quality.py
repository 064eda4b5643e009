"""Per-image quality signals (issue 31): the NumPy statement on a hand-made probability map, and the
replica's graph against it."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from jobs.results.quality import population_stability
from unet_core import build_unet, load_artifact, save_artifact
from unet_core.predict import Predictor, batch_signals
from unet_core.quality import SIGNALS, normalized_entropy, quality_signals


def hand_made() -> np.ndarray:
    """A 4x4 map of 3 classes: 8 sure pixels (0.9), 4 torn ones (0.5/0.3/0.2), 4 uniform (1/3 each)."""
    probabilities = np.empty((4, 4, 3), np.float32)
    probabilities[:2] = (0.9, 0.05, 0.05)
    probabilities[2] = (0.5, 0.3, 0.2)
    probabilities[3] = (1 / 3, 1 / 3, 1 / 3)
    return probabilities


def test_signals_of_a_hand_made_map():
    probabilities = hand_made()
    signals = dict(zip(SIGNALS, quality_signals(probabilities.max(-1), normalized_entropy(probabilities))))
    assert signals["confidence_mean"] == pytest.approx((8 * 0.9 + 4 * 0.5 + 4 / 3) / 16, rel=1e-6)
    assert signals["confidence_p05"] == 0.333  # the least sure twentieth: the uniform pixels, to 1/1000
    assert signals["uncertain_share"] == 0.5  # 0.5 and 1/3 are below 0.6
    entropy = lambda p: -sum(x * np.log(x) for x in p) / np.log(3)  # noqa: E731
    expected = (8 * entropy((0.9, 0.05, 0.05)) + 4 * entropy((0.5, 0.3, 0.2)) + 4 * 1.0) / 16
    assert signals["entropy_mean"] == pytest.approx(expected, rel=1e-5)
    assert np.isnan(signals["flip_disagreement"])
    disagreement = np.zeros((4, 4), bool)
    disagreement[3, :3] = True
    assert quality_signals(probabilities.max(-1), normalized_entropy(probabilities), disagreement)[4] == 3 / 16


def test_the_graph_computes_the_numpy_signals_inside_each_box():
    """What the replica computes on the device equals quality_signals on the box's pixels."""
    probabilities = np.stack([np.tile(hand_made(), (2, 3, 1)), np.tile(hand_made()[::-1], (2, 3, 1))])  # (2, 8, 12, 3)
    boxes = np.array([[0, 0, 8, 12], [2, 4, 4, 4]], np.int32)
    disagreement = np.random.default_rng(0).random(probabilities.shape[:3]) < 0.3
    graph = batch_signals(
        tf.constant(probabilities), tf.constant(probabilities.max(-1)), tf.constant(disagreement), tf.constant(boxes)
    ).numpy()
    for image, (top, left, height, width) in enumerate(boxes):
        region = probabilities[image, top : top + height, left : left + width]
        expected = quality_signals(
            region.max(-1), normalized_entropy(region), disagreement[image, top : top + height, left : left + width]
        )
        np.testing.assert_allclose(graph[image], expected, rtol=1e-5)


@pytest.mark.parametrize("tta", [False, True])
def test_a_replica_returns_the_signals_of_its_own_probabilities(tmp_path, tta):
    keras.utils.set_random_seed(3)
    uri = str(tmp_path / "m")
    save_artifact(build_unet(3, (32, 32, 3), base_filters=2), uri, ["a", "b", "c"])
    predictor = Predictor(load_artifact(uri), batch_size=2, precision="float32", tta=tta)
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), np.uint8)
    boxes = np.array([[0, 0, 32, 32], [8, 0, 16, 32], [0, 4, 32, 24]], np.int32)
    prediction = predictor.predict(images, boxes)
    probabilities = predictor.probabilities(images)
    for image, (top, left, height, width) in enumerate(boxes):
        region = probabilities[image, top : top + height, left : left + width]
        expected = quality_signals(region.max(-1), normalized_entropy(region))
        np.testing.assert_allclose(prediction.signals[image, :4], expected[:4], rtol=1e-4, atol=1e-3)
        assert np.isnan(prediction.signals[image, 4]) != tta
        assert 0 <= np.nan_to_num(prediction.signals[image, 4]) <= 1


def test_population_stability_of_two_histograms():
    assert population_stability([10, 20, 30], [10, 20, 30]) == 0
    expected = sum((a - e) * math.log(a / e) for e, a in ((0.5, 0.25), (0.5, 0.75)))
    assert population_stability([5, 5], [1, 3]) == pytest.approx(expected)
    assert 0 < population_stability([4, 0], [3, 1]) < math.inf  # an empty bin weighs much, not infinitely

import keras
import numpy as np
import pytest

from unet_core import build_unet, load_artifact, save_artifact
from unet_core.predict import Predictor
from unet_core.tiling import gaussian_weights, sliding_window, tile_starts


@pytest.mark.parametrize("length, tile, overlap", [(100, 32, 0.25), (32, 32, 0.5), (20, 32, 0.25), (257, 64, 0.5)])
def test_tiles_cover_the_image_within_bounds(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert max(starts) + tile == max(length, tile)
    assert all(b - a <= tile * (1 - overlap) + 1 for a, b in zip(starts, starts[1:]))


def test_constant_model_gives_a_seamless_constant_mask():
    def constant(tiles):
        probs = np.zeros(tiles.shape[:3] + (3,), np.float32)
        probs[..., 2] = 0.7
        probs[..., 0] = 0.3
        return probs

    mask, confidence, entropy = sliding_window(np.zeros((150, 333, 3), np.uint8), constant, tile=64, num_classes=3)
    assert mask.shape == (150, 333) and (mask == 2).all()
    np.testing.assert_allclose(confidence, 0.7, rtol=1e-6)
    np.testing.assert_allclose(entropy, -(0.7 * np.log(0.7) + 0.3 * np.log(0.3)) / np.log(3), rtol=1e-3)


def test_gaussian_weights_peak_in_the_centre():
    weights = gaussian_weights(32)
    assert weights.max() == weights[15:17, 15:17].max() == 1.0 and weights.min() > 0


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    keras.utils.set_random_seed(2)
    uri = str(tmp_path_factory.mktemp("tile") / "m")
    save_artifact(build_unet(3, (32, 32, 3), base_filters=4), uri, ["a", "b", "c"])
    return Predictor(load_artifact(uri), batch_size=4, precision="float32")


def test_one_tile_agrees_with_a_direct_prediction(predictor):
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    mask, confidence, _ = sliding_window(image, predictor.probabilities, 32, 3)
    direct_mask, direct_confidence, _ = predictor.predict(image[None])
    np.testing.assert_array_equal(mask, direct_mask[0])
    np.testing.assert_allclose(confidence, direct_confidence[0], rtol=1e-5)


def test_tiles_agree_with_direct_predictions_away_from_their_seams(predictor):
    """Where only one tile covers a pixel the blend must equal that tile's own prediction."""
    image = np.random.default_rng(1).integers(0, 255, (32, 80, 3), dtype=np.uint8)
    mask = sliding_window(image, predictor.probabilities, 32, 3, overlap=0.25).mask
    starts = tile_starts(80, 32, 0.25)
    first = predictor.predict(image[None, :, :32]).masks
    only_first = starts[1]
    np.testing.assert_array_equal(mask[:, :only_first], first[0][:, :only_first])
    assert mask.shape == (32, 80)

"""Mixed-precision replicas must run the artifact's own graph, not a default one rebuilt beside it."""

import keras
import numpy as np
import pytest

from unet_core import build_unet, load_artifact, save_artifact
from unet_core.precision import model_in_precision
from unet_core.predict import Predictor
from unet_core.synthetic import make_scene

SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def tanh_artifact(tmp_path_factory):
    """A seeded tanh U-Net: deterministic weights whose masks spread over every class (training a few
    steps would only teach it to answer background everywhere, which any graph agrees with)."""
    keras.utils.set_random_seed(0)
    model = build_unet(4, SHAPE, base_filters=4, activation="tanh")
    uri = str(tmp_path_factory.mktemp("tanh") / "model")
    save_artifact(model, uri, ["background", "disc", "box", "triangle"])
    rng = np.random.default_rng(0)
    return model, load_artifact(uri), np.stack([make_scene(rng, *SHAPE[:2])[0] for _ in range(8)])


def test_artifact_keeps_its_build_config(tanh_artifact):
    trained, artifact, _ = tanh_artifact
    assert artifact.model.to_json() == trained.to_json()
    assert artifact.model.get_layer("block1_conv1").activation.__name__ == "tanh"


def test_bfloat16_replica_runs_the_trained_graph(tanh_artifact):
    _, artifact, images = tanh_artifact
    float32 = Predictor(artifact, batch_size=4, precision="float32").predict(images).masks
    assert np.bincount(float32.ravel()).max() < 0.9 * float32.size
    bfloat16 = Predictor(artifact, batch_size=4, precision="bfloat16").predict(images).masks
    assert (bfloat16 == float32).mean() >= 0.98
    relu = build_unet(4, SHAPE, base_filters=4)
    relu.set_weights(artifact.model.get_weights())
    assert (relu.predict(images / 255.0, verbose=0).argmax(-1) == float32).mean() < 0.9


def test_replica_computes_in_bfloat16_and_answers_in_float32(tanh_artifact):
    _, artifact, images = tanh_artifact
    replica = model_in_precision(artifact.model, "bfloat16")
    convs = [layer for layer in replica.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(layer.dtype_policy.name == "mixed_bfloat16" for layer in convs[:-1])
    assert all(layer.variable_dtype == "float32" for layer in convs)
    assert convs[-1].name == "final_conv" and convs[-1].compute_dtype == "float32"
    assert replica(images[:1] / 255.0).dtype == "float32"


def test_code_carrying_model_keeps_its_lambda(tmp_path):
    inputs = keras.Input((16, 16, 3))
    hidden = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    save_artifact(
        keras.Model(inputs, keras.layers.Conv2D(2, 1, activation="softmax")(hidden)), str(tmp_path / "code"), ["a", "b"]
    )
    model = load_artifact(str(tmp_path / "code"), allow_unsafe=True).model
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    np.testing.assert_allclose(model_in_precision(model, "bfloat16")(x), model(x), atol=0.02)

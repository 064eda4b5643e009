import json

import keras
import numpy as np
import pytest

from unet_core import ArtifactError, build_unet, load_artifact, read_metadata, save_artifact
from unet_core.precision import model_in_precision
from unet_core.predict import Predictor


def test_artifact_round_trip_keeps_weights_and_metadata(tmp_path):
    model = build_unet(3, (32, 32, 3), base_filters=2)
    meta = save_artifact(model, str(tmp_path / "a"), ["bg", "cat", "dog"], source={"data": "x"})
    loaded = load_artifact(str(tmp_path / "a"))
    assert loaded.metadata == meta == read_metadata(str(tmp_path / "a"))
    assert meta.input_size == (32, 32) and len(meta.sha256) == 64 and meta.colors[1] == (128, 0, 0)
    for a, b in zip(model.get_weights(), loaded.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_tampered_model_file_is_refused(tmp_path):
    save_artifact(build_unet(2, (16, 16, 3), base_filters=2), str(tmp_path / "a"), ["a", "b"])
    meta = json.loads((tmp_path / "a" / "metadata.json").read_text())
    meta["sha256"] = "0" * 64
    (tmp_path / "a" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="does not match"):
        load_artifact(str(tmp_path / "a"))


def test_model_with_code_is_refused_in_safe_mode(tmp_path):
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    outputs = keras.layers.Conv2D(2, 1, activation="softmax")(outputs)
    save_artifact(keras.Model(inputs, outputs), str(tmp_path / "evil"), ["a", "b"])
    with pytest.raises(ArtifactError, match="safe mode"):
        load_artifact(str(tmp_path / "evil"))
    assert load_artifact(str(tmp_path / "evil"), allow_unsafe=True).model is not None


def test_missing_artifact_says_so(tmp_path):
    with pytest.raises(ArtifactError, match="no model artifact"):
        read_metadata(str(tmp_path / "nowhere"))


def test_predictor_pads_the_last_batch_and_bfloat16_agrees(tiny_artifact):
    artifact = load_artifact(tiny_artifact)
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    masks, confidence, signals = Predictor(artifact, batch_size=4, precision="float32").predict(images)
    assert masks.shape == (5, 32, 32) and confidence.shape == (5, 32, 32) and signals.shape == (5, 5)
    reference = artifact.model(images.astype(np.float32) / 255.0).numpy()
    np.testing.assert_array_equal(masks, reference.argmax(-1))
    np.testing.assert_allclose(confidence, reference.max(-1), rtol=1e-5)
    bf16 = model_in_precision(artifact.model, "bfloat16")
    assert bf16.get_layer("block1_conv1").dtype_policy.name == "mixed_bfloat16"
    bf16_masks = Predictor(artifact, batch_size=4, precision="bfloat16").predict(images).masks
    assert (bf16_masks == masks).mean() > 0.9

"""jobs/train.py --backbone-weights end to end: a VGG16 weights file, made here (nothing is downloaded),
loads into the encoder in both layouts Keras writes, and a file that cannot load is one line."""

import os

import h5py
import numpy as np
import pytest
from test_segment_job import ROOT, run_job
from test_train_job import write_scenes

from unet_core import build_unet, load_artifact
from unet_core.model import load_vgg16_weights
from unet_core.synthetic import SCENE_CLASSES

pytestmark = pytest.mark.ray

ENCODER = [
    f"block{block}_conv{conv}" for block, convs in enumerate((2, 2, 3, 3, 3), start=1) for conv in range(1, convs + 1)
]
ARGS = [
    "--num-classes",
    "4",
    "--class-names",
    ",".join(SCENE_CLASSES),
    "--input-size",
    "32",
    "--base-filters",
    "64",
    "--batch-size",
    "4",
    "--workers",
    "1",
    "--epochs",
    "1",
    "--no-augment",
    "--optimizer",
    "adam",
    "--learning-rate",
    "1e-9",
]  # steps too small to move a weight by 1e-4


def vgg16_weights(seed: int) -> tuple:
    """A VGG16 (no top) and its layer name -> [kernel, bias], drawn so that no fresh initialisation matches
    them: biases start at zero in the U-Net, these do not."""
    import keras

    rng = np.random.default_rng(seed)
    model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    weights = {}
    for layer in model.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            weights[layer.name] = [
                rng.normal(0, 0.05, kernel.shape).astype(np.float32),
                rng.uniform(-0.5, 0.5, bias.shape).astype(np.float32),
            ]
            layer.set_weights(weights[layer.name])
    return model, weights


def keras3_file(path: str, seed: int) -> dict:
    """What Keras 3's save_weights writes: layers/<path>/vars/0, 1 with the layer's name as an attribute."""
    model, weights = vgg16_weights(seed)
    model.save_weights(path)
    with h5py.File(path, "r") as handle:
        assert "layers" in handle and "weight_names" not in handle["layers"].attrs  # not the classic layout
    return weights


def classic_file(path: str, seed: int) -> dict:
    """The Keras 2 layout of the ImageNet ..._notop.h5 files: a group per layer (pools included, with no
    weights), `weight_names` naming its datasets."""
    model, weights = vgg16_weights(seed)
    names = [layer.name for layer in model.layers if layer.name.startswith("block")]
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = [name.encode() for name in names]
        for name in names:
            group = handle.create_group(name)
            values = weights.get(name, [])
            group.attrs["weight_names"] = [f"{name}/{part}:0".encode() for part in ("kernel", "bias")][: len(values)]
            for part, value in zip(("kernel", "bias"), values):
                group.create_dataset(f"{name}/{part}:0", data=value)
    return weights


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_scenes(root / "train", 8, seed=1)
    write_scenes(root / "val", 4, seed=2)
    return [
        "--images",
        str(root / "train" / "images"),
        "--masks",
        str(root / "train" / "masks"),
        "--val-images",
        str(root / "val" / "images"),
        "--val-masks",
        str(root / "val" / "masks"),
    ]


def test_backbone_weights_reach_the_exported_encoder(scenes, tmp_path):
    path = str(tmp_path / "vgg16.weights.h5")
    weights = keras3_file(path, seed=7)
    relative = os.path.relpath(path, ROOT)  # to the job's folder, where the driver reads it; workers get the arrays
    done = run_job(
        "train.py",
        *scenes,
        *ARGS,
        "--backbone-weights",
        relative,
        "--storage",
        str(tmp_path / "runs"),
        "--output",
        str(tmp_path / "model"),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"loaded VGG16 weights into 13 encoder layers from {path}" in done.stdout + done.stderr

    model = load_artifact(str(tmp_path / "model")).model
    for name in ENCODER:
        kernel, bias = model.get_layer(name).get_weights()
        np.testing.assert_allclose(kernel, weights[name][0], atol=1e-4, err_msg=name)
        np.testing.assert_allclose(bias, weights[name][1], atol=1e-4, err_msg=name)


def test_the_classic_layout_loads_its_13_convolutions_and_skips_the_pools(tmp_path):
    path = str(tmp_path / "vgg16_notop.h5")
    weights = classic_file(path, seed=8)
    model = build_unet(4, (32, 32, 3), base_filters=64)
    assert load_vgg16_weights(model, path) == 13
    for name in ENCODER:
        for value, expected in zip(model.get_layer(name).get_weights(), weights[name]):
            np.testing.assert_array_equal(value, expected, err_msg=name)


def wrong_shapes(path: str) -> str:
    with h5py.File(path, "w") as handle:
        group = handle.create_group("block1_conv1")
        group.attrs["weight_names"] = [b"block1_conv1/kernel:0", b"block1_conv1/bias:0"]
        group.create_dataset("block1_conv1/kernel:0", data=np.zeros((3, 3, 3, 32), np.float32))
        group.create_dataset("block1_conv1/bias:0", data=np.zeros(32, np.float32))
    return "layer block1_conv1 has shapes [(3, 3, 3, 32), (32,)], the model expects [(3, 3, 3, 64), (64,)]"


def no_vgg_layers(path: str) -> str:
    with h5py.File(path, "w") as handle:
        group = handle.create_group("dense")
        group.attrs["weight_names"] = [b"dense/kernel:0"]
        group.create_dataset("dense/kernel:0", data=np.zeros((4, 4), np.float32))
    return "no VGG16 layers (block1_conv1 ...) found"


@pytest.mark.parametrize("write", [wrong_shapes, no_vgg_layers])
def test_weights_that_cannot_load_are_one_line_before_training(write, scenes, tmp_path):
    path = str(tmp_path / "bad.h5")
    expected = write(path)
    done = run_job(
        "train.py", *scenes, *ARGS, "--backbone-weights", path, "--output", str(tmp_path / "model"), timeout=300
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "training on" not in done.stdout
    assert done.stderr.strip().splitlines()[-1] == f"error: {path}: {expected} (--backbone-weights)"

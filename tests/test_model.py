import ast
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from unet_core import build_unet

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_default_model_is_the_seed_architecture():
    model = build_unet()
    assert model.count_params() == 24_892_437
    assert model.input_shape == (None, 512, 512, 3)
    assert model.output_shape == (None, 512, 512, 21)
    vgg = [layer.name for layer in model.layers if layer.name.startswith("block") and "conv" in layer.name]
    assert vgg == [f"block{b}_conv{c}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for c in range(1, n + 1)]
    assert [model.get_layer(name).filters for name in vgg] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    decoder = [layer.filters for layer in model.layers if layer.name.startswith("up") and "conv" in layer.name]
    assert decoder == [512, 512, 256, 256, 128, 128, 64, 64]
    assert model.layers[-1].activation.__name__ == "softmax"


def test_tiny_replica_output_shape_and_probabilities():
    model = build_unet(num_classes=5, input_shape=(48, 64, 3), base_filters=4)
    out = model(np.random.default_rng(0).random((2, 48, 64, 3), dtype=np.float32)).numpy()
    assert out.shape == (2, 48, 64, 5)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("normalization", ["none", "batch", "group"])
def test_kernels_are_drawn_as_the_seed_draws_them_or_he_normal_under_a_normalization(normalization):
    model = build_unet(num_classes=3, input_shape=(32, 32, 3), base_filters=2, normalization=normalization)
    kernels = {
        layer.name: type(layer.kernel_initializer).__name__
        for layer in model.layers
        if "_conv" in layer.name and getattr(layer, "kernel_size", None) == (3, 3)
    }
    assert len(kernels) == 13 + 8
    if normalization == "none":
        assert {name: kind for name, kind in kernels.items() if name.startswith("block")} == {
            name: "GlorotUniform" for name in kernels if name.startswith("block")
        }
        assert {kernels[name] for name in kernels if name.startswith("up")} == {"HeNormal"}
    else:
        assert set(kernels.values()) == {"HeNormal"}


@pytest.mark.parametrize("normalization", ["batch", "group"])
def test_normalization_sits_between_each_3x3_convolution_and_its_relu(normalization):
    plain = build_unet(num_classes=3, input_shape=(32, 48, 3), base_filters=4)
    model = build_unet(num_classes=3, input_shape=(32, 48, 3), base_filters=4, normalization=normalization)
    convolutions = [layer.name for layer in plain.layers if "_conv" in layer.name and layer.name != "final_conv"]
    assert [layer.name for layer in model.layers if layer.name in convolutions] == convolutions  # VGG16 names
    for name in convolutions:
        assert model.get_layer(name).activation.__name__ == "linear"
        assert model.get_layer(f"{name}_relu").input is model.get_layer(f"{name}_norm").output
        if normalization == "batch":  # replicas all-reduce their batch statistics, so their weights stay equal
            assert model.get_layer(f"{name}_norm").synchronized
    out = model(np.random.default_rng(0).random((2, 32, 48, 3), dtype=np.float32), training=True).numpy()
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="normalization must be one of none, batch, group"):
        build_unet(num_classes=3, input_shape=(32, 32, 3), base_filters=2, normalization="layer")


@pytest.mark.parametrize("shape", [(100, 128, 3), (128, 8, 3)])
def test_input_sides_must_be_multiples_of_16(shape):
    with pytest.raises(ValueError, match="multiples of 16"):
        build_unet(input_shape=shape, base_filters=2)


def test_unet_core_never_imports_ray():
    for path in (ROOT / "unet_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            assert not any(n == "ray" or n.startswith("ray.") for n in names), f"{path} imports ray"
    code = (
        "import sys, unet_core, unet_core.predict, unet_core.synthetic, unet_core.metrics; print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""The seed U-Net: a VGG16 encoder and a four-stage upsampling decoder.

Layer names follow Keras' VGG16 (`block{i}_conv{j}`) so ImageNet VGG16 weights load by name.
"""

from __future__ import annotations

import math

import unet_core.quiet_tensorflow  # noqa: F401  (before TensorFlow loads: see its docstring)
import keras
from keras import layers

from unet_core.recipe import NORMALIZATIONS

ENCODER_BLOCKS = ((1, 2), (2, 2), (4, 3), (8, 3), (8, 3))
"""(width multiple of base_filters, convolutions) for VGG16 blocks 1..5."""

DECODER_WIDTHS = (8, 4, 2, 1)
"""Width multiples of the decoder stages fusing feat4, feat3, feat2, feat1."""

GROUPS = 8
"""Channel groups of group normalization (fewer where a layer has fewer channels)."""


def seed_initializer(name: str) -> str:
    """The seed's draw for its own graph: Keras' default Glorot-uniform in the encoder (which the
    seed replaces with ImageNet VGG16 weights), He-normal in the decoder; under a normalization
    every kernel is He-normal. Measured (bench/init_scale.py, docs/training.md): He-normal alone
    keeps the signal's scale through the encoder, yet learnt sparse foreground less often than the
    seed's draw; a normalization is what makes training from scratch dependable."""
    return "he_normal" if name.startswith("up") else "glorot_uniform"


def build_unet(
    num_classes: int = 21,
    input_shape: tuple[int, int, int] = (512, 512, 3),
    base_filters: int = 64,
    activation: str = "relu",
    name: str = "unet",
    normalization: str = "none",
) -> keras.Model:
    """Build the seed U-Net; the defaults give the seed's exact 24,892,437-parameter model.

    `base_filters` scales every block, so tests run a narrow replica of the same graph.
    `normalization` adds a batch or group normalization after every 3x3 convolution (not the seed's
    graph, for training from scratch where the seed would load ImageNet weights).
    """
    height, width = input_shape[0], input_shape[1]
    if height % 16 or width % 16:
        raise ValueError(f"U-Net input sides must be multiples of 16 (four 2x2 poolings); got {height}x{width}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2; got {num_classes}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {normalization!r}")
    inputs = keras.Input(shape=input_shape, name="image")
    conv = _conv_unit(activation, normalization)
    features = _encoder(inputs, base_filters, conv)
    outputs = _decoder(features, base_filters, conv, num_classes)
    return keras.Model(inputs, outputs, name=name)


def _conv_unit(activation: str, normalization: str):
    """A 3x3 convolution and its activation, with the normalization between them when there is one;
    the convolution keeps its VGG16 name so ImageNet weights load by name either way."""

    def unit(x, filters: int, name: str):
        if normalization == "none":
            return layers.Conv2D(
                filters, 3, activation=activation, padding="same", kernel_initializer=seed_initializer(name), name=name
            )(x)
        x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal", name=name)(x)
        if normalization == "batch":
            x = layers.BatchNormalization(synchronized=True, name=f"{name}_norm")(x)
        else:
            x = layers.GroupNormalization(math.gcd(filters, GROUPS), name=f"{name}_norm")(x)
        return layers.Activation(activation, name=f"{name}_{activation}")(x)

    return unit


def _encoder(x, base_filters: int, conv) -> list:
    features = []
    for block, (multiple, convs) in enumerate(ENCODER_BLOCKS, start=1):
        if block > 1:
            x = layers.MaxPooling2D(2, strides=2, name=f"block{block - 1}_pool")(x)
        for index in range(1, convs + 1):
            x = conv(x, base_filters * multiple, f"block{block}_conv{index}")
        features.append(x)
    return features


def _decoder(features: list, base_filters: int, conv, num_classes: int):
    x = features[-1]
    for stage, (skip, multiple) in enumerate(zip(reversed(features[:-1]), DECODER_WIDTHS)):
        level = 4 - stage
        x = layers.UpSampling2D(2, name=f"up{level}_upsample")(x)
        x = layers.Concatenate(axis=-1, name=f"up{level}_concat")([skip, x])
        for index in (1, 2):
            x = conv(x, base_filters * multiple, f"up{level}_conv{index}")
    return layers.Conv2D(num_classes, 1, activation="softmax", dtype="float32", name="final_conv")(x)


def load_vgg16_weights(model: keras.Model, path: str) -> int:
    """Copy VGG16 convolution weights from a Keras .h5 file into the encoder, by layer name.

    Reads the classic Keras 2 layout of the ImageNet files (a group per layer, possibly under
    `model_weights`, its `weight_names` attribute listing kernel and bias) and the `.weights.h5` that
    Keras 3's `save_weights` writes (`layers/<path>/vars/0, 1, ...`, the layer's name in the `vars`
    group's `name` attribute), so a VGG16 saved by either Keras loads. Returns how many layers were
    loaded. Shapes must match (full width, 3 input channels).
    """
    import h5py

    loaded = 0
    with h5py.File(path, "r") as handle:
        found = _weight_datasets(handle)
        for layer in model.layers:
            if not layer.name.startswith("block") or not layer.weights or layer.name not in found:
                continue  # pooling layers have groups too, and nothing to load
            values = [dataset[()] for dataset in found[layer.name]]
            if [v.shape for v in values] != [tuple(w.shape) for w in layer.get_weights()]:
                raise ValueError(
                    f"{path}: layer {layer.name} has shapes {[v.shape for v in values]}, "
                    f"the model expects {[tuple(w.shape) for w in layer.get_weights()]}"
                )
            layer.set_weights(values)
            loaded += 1
    if not loaded:
        raise ValueError(f"{path}: no VGG16 layers (block1_conv1 ...) found")
    return loaded


def _weight_datasets(handle) -> dict:
    """Layer name -> its weight datasets in order, from either layout `load_vgg16_weights` reads."""
    import h5py

    found = {}
    if "layers" in handle and "weight_names" not in handle["layers"].attrs:  # Keras 3
        for group in handle["layers"].values():
            variables = group.get("vars")
            if isinstance(variables, h5py.Group) and "name" in variables.attrs:
                found[variables.attrs["name"]] = [variables[str(i)] for i in range(len(variables))]
        return found
    root = handle["model_weights"] if "model_weights" in handle else handle
    for name, group in root.items():
        if isinstance(group, h5py.Group) and "weight_names" in group.attrs:
            found[name] = [group[n.decode() if isinstance(n, bytes) else n] for n in group.attrs["weight_names"]]
    return found

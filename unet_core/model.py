"""The seed U-Net: a VGG16 encoder and a four-stage upsampling decoder.

Layer names follow Keras' VGG16 (`block{i}_conv{j}`) so ImageNet VGG16 weights load by name.
"""
from __future__ import annotations

import unet_core.quiet_tensorflow  # noqa: F401  (before TensorFlow loads: see its docstring)
import keras
from keras import layers

ENCODER_BLOCKS = ((1, 2), (2, 2), (4, 3), (8, 3), (8, 3))
"""(width multiple of base_filters, convolutions) for VGG16 blocks 1..5."""

DECODER_WIDTHS = (8, 4, 2, 1)
"""Width multiples of the decoder stages fusing feat4, feat3, feat2, feat1."""


def build_unet(
    num_classes: int = 21,
    input_shape: tuple[int, int, int] = (512, 512, 3),
    base_filters: int = 64,
    activation: str = "relu",
    name: str = "unet",
) -> keras.Model:
    """Build the seed U-Net; the defaults give the seed's exact 24,892,437-parameter model.

    `base_filters` scales every block, so tests run a narrow replica of the same graph.
    """
    height, width = input_shape[0], input_shape[1]
    if height % 16 or width % 16:
        raise ValueError(
            f"U-Net input sides must be multiples of 16 (four 2x2 poolings); got {height}x{width}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2; got {num_classes}")
    inputs = keras.Input(shape=input_shape, name="image")
    features = _encoder(inputs, base_filters, activation)
    outputs = _decoder(features, base_filters, activation, num_classes)
    return keras.Model(inputs, outputs, name=name)


def _encoder(x, base_filters: int, activation: str) -> list:
    features = []
    for block, (multiple, convs) in enumerate(ENCODER_BLOCKS, start=1):
        if block > 1:
            x = layers.MaxPooling2D(2, strides=2, name=f"block{block - 1}_pool")(x)
        for conv in range(1, convs + 1):
            x = layers.Conv2D(
                base_filters * multiple, 3, activation=activation, padding="same",
                name=f"block{block}_conv{conv}",
            )(x)
        features.append(x)
    return features


def _decoder(features: list, base_filters: int, activation: str, num_classes: int):
    x = features[-1]
    for stage, (skip, multiple) in enumerate(zip(reversed(features[:-1]), DECODER_WIDTHS)):
        level = 4 - stage
        x = layers.UpSampling2D(2, name=f"up{level}_upsample")(x)
        x = layers.Concatenate(axis=-1, name=f"up{level}_concat")([skip, x])
        for conv in (1, 2):
            x = layers.Conv2D(
                base_filters * multiple, 3, activation=activation, padding="same",
                kernel_initializer="he_normal", name=f"up{level}_conv{conv}",
            )(x)
    return layers.Conv2D(
        num_classes, 1, activation="softmax", dtype="float32", name="final_conv"
    )(x)


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
                raise ValueError(f"{path}: layer {layer.name} has shapes {[v.shape for v in values]}, "
                                 f"the model expects {[tuple(w.shape) for w in layer.get_weights()]}")
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

"""Benchmark: how the signal's scale fades with depth in the seed U-Net at initialisation.

    python bench/init_scale.py [--base-filters 8] [--size 256] [--seeds 3] [--learn-seeds 6] [--learn-epochs 3]

Training from scratch on sparse foreground can sit at all-background for a whole run. One suspect
is the initialisation: the encoder's 13 ReLU convolutions are drawn with Keras' default
Glorot-uniform and there is no normalisation layer in the seed's graph, so the signal shrinks block
by block. This prints, per encoder block, the RMS of its last convolution's output on random inputs, for
the seed's graph as built (the seed's draw), for the same graph with its encoder kernels redrawn
He-normal (biases zero, as built), and for the two `--normalization` options (every kernel
He-normal): the mean over `--seeds` draws. The inputs are random pixels normalised as
training and inference normalise them.

Then whether each draw learns: the loss test's rare-foreground case (32 grey 32x32 images with one
7x7 red square each, about 5% foreground), width 8, CE+Dice, Adam 5e-3 constant, batch 2, trained
`--learn-epochs` per seed; per seed the foreground IoU on those images, and in how many seeds it
learnt anything (IoU above 0).
"""

from __future__ import annotations

import argparse
import zlib

import numpy as np

from common import print_table


def block_rms(model, images: np.ndarray) -> list[float]:
    """RMS of each encoder block's output (its last convolution's activation)."""
    import keras

    names = {layer.name for layer in model.layers}
    last = [f"block{b}_conv{c}" for b, c in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))]
    outputs = [model.get_layer(f"{name}_relu" if f"{name}_relu" in names else name).output for name in last]
    probe = keras.Model(model.input, outputs)
    return [float(np.sqrt(np.mean(np.square(out)))) for out in probe.predict(images, verbose=0)]


def he_encoder(model, seed: int) -> None:
    """Redraw every encoder kernel He-normal, in place."""
    import keras

    for layer in model.layers:
        if layer.name.startswith("block") and "_conv" in layer.name and not layer.name.endswith(("_norm", "_relu")):
            kernel, bias = layer.get_weights()
            draw = keras.initializers.HeNormal(seed=seed + zlib.crc32(layer.name.encode()) % 1000)
            layer.set_weights([np.asarray(draw(kernel.shape)), np.zeros_like(bias)])


DRAWS = (
    "as built, --normalization none",
    "He-normal encoder, no normalization",
    "as built, --normalization batch",
    "as built, --normalization group",
)


def normalization_of(draw: str) -> str:
    return draw.split("--normalization ")[1] if "--normalization" in draw else "none"


def rare_squares(rng: np.random.Generator, count: int = 32, size: int = 32, side: int = 7):
    """Grey images with one red square each, and their masks."""
    images = rng.integers(60, 120, (count, size, size, 3)).astype(np.uint8)
    masks = np.zeros((count, size, size), np.uint8)
    for image, mask, (top, left) in zip(images, masks, rng.integers(0, size - side, (count, 2))):
        mask[top : top + side, left : left + side] = 1
        image[top : top + side, left : left + side] = (200, 60, 60)
    return images, masks


def learnt_iou(draw: str, seed: int, epochs: int, batch: int = 2) -> float:
    """Foreground IoU on the rare squares after training `draw` from `seed`."""
    import keras
    import tensorflow as tf

    from unet_core.metrics import confusion_matrix, iou_per_class
    from unet_core.training import DistributedTrainer, LossConfig, ModelConfig, OptimizerConfig

    keras.utils.set_random_seed(seed)
    images, masks = rare_squares(np.random.default_rng(seed))
    trainer = DistributedTrainer(
        tf.distribute.get_strategy(),
        ModelConfig(2, 32, 8, "float32", normalization_of(draw)),
        LossConfig("ce+dice"),
        OptimizerConfig(learning_rate=5e-3, schedule="constant"),
        batch,
        epochs * len(images) // batch,
    )
    if draw.startswith("He-normal"):
        he_encoder(trainer.model, seed)
    for _ in range(epochs):
        for start in range(0, len(images), batch):
            trainer.train_step(images[start : start + batch], masks[start : start + batch])
    return float(iou_per_class(confusion_matrix(masks, trainer.predict(images), 2))[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-filters", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--learn-seeds", type=int, default=6)
    parser.add_argument("--learn-epochs", type=int, default=3)
    args = parser.parse_args()
    import keras

    from unet_core import build_unet
    from unet_core.artifact import DEFAULT_NORMALIZATION, normalize

    scales = {draw: [] for draw in DRAWS}
    for seed in range(args.seeds):
        pixels = np.random.default_rng(seed).integers(0, 256, (2, args.size, args.size, 3), dtype=np.uint8)
        images = normalize(pixels, DEFAULT_NORMALIZATION)
        for name, runs in scales.items():
            keras.utils.set_random_seed(seed)
            model = build_unet(
                2, (args.size, args.size, 3), base_filters=args.base_filters, normalization=normalization_of(name)
            )
            if name.startswith("He-normal"):
                he_encoder(model, seed)
            runs.append(block_rms(model, images))
    print(
        f"RMS activation per encoder block at initialisation: base width {args.base_filters}, "
        f"{args.size}x{args.size} random normalised pixels, mean of {args.seeds} seeds"
    )
    print_table(
        ["initialisation", *(f"block {b}" for b in range(1, 6)), "block 5 / block 1"],
        [
            [name, *np.mean(runs, axis=0), float(np.mean(runs, axis=0)[4] / np.mean(runs, axis=0)[0])]
            for name, runs in scales.items()
        ],
    )
    print(f"\nforeground IoU on the rare squares after {args.learn_epochs} epochs, per seed")
    rows = []
    for draw in DRAWS:
        ious = [learnt_iou(draw, seed, args.learn_epochs) for seed in range(args.learn_seeds)]
        rows.append([draw, *(f"{iou:.3f}" for iou in ious), f"{sum(iou > 0 for iou in ious)}/{len(ious)}"])
    print_table(["initialisation", *(f"seed {s}" for s in range(args.learn_seeds)), "learnt"], rows)


if __name__ == "__main__":
    main()

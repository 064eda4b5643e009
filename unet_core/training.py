"""A data-parallel training step for the seed U-Net under any `tf.distribute` strategy.

Keras 3 `model.fit` fails under `MultiWorkerMirroredStrategy`, so this is the loop written out:
each replica computes its images' losses, divides their sum by the *global* batch size and takes
gradients; the optimizer sums gradients across replicas, so every replica applies the same update
and the weights stay identical everywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import unet_core.quiet_tensorflow  # noqa: F401  (before TensorFlow loads: see its docstring)
import keras
import numpy as np
import tensorflow as tf

from unet_core.artifact import DEFAULT_NORMALIZATION, normalize
from unet_core.losses import segmentation_loss
from unet_core.model import build_unet
from unet_core.precision import model_in_precision
from unet_core.recipe import OPTIMIZERS, SCHEDULES


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 1e-4
    """Decoupled weight decay for adamw only."""


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int
    input_size: int
    base_filters: int = 64
    precision: str = "float32"
    """float32, or bfloat16/float16 compute on float32 master weights (softmax and loss in float32)."""
    normalization: str = "none"


@dataclass(frozen=True)
class LossConfig:
    name: str = "ce+dice"
    class_weights: tuple[float, ...] | None = None
    ignore_index: int | None = None


def learning_rate(config: OptimizerConfig, total_steps: int):
    """Cosine or poly (power 0.9) decay to zero over the whole run, after an optional linear warm-up."""
    decay_steps = max(1, total_steps - config.warmup_steps)
    if config.schedule == "constant":
        return config.learning_rate
    if config.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            0.0 if config.warmup_steps else config.learning_rate,
            decay_steps,
            warmup_target=config.learning_rate if config.warmup_steps else None,
            warmup_steps=config.warmup_steps,
        )
    if config.schedule == "poly":
        return keras.optimizers.schedules.PolynomialDecay(config.learning_rate, total_steps, 0.0, power=0.9)
    raise ValueError(f"unknown schedule {config.schedule!r}; choose from {', '.join(SCHEDULES)}")


def make_optimizer(config: OptimizerConfig, total_steps: int) -> keras.optimizers.Optimizer:
    rate = learning_rate(config, total_steps)
    if config.name == "adam":
        return keras.optimizers.Adam(rate)
    if config.name == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    if config.name == "sgd":
        return keras.optimizers.SGD(rate, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {config.name!r}; choose from {', '.join(OPTIMIZERS)}")


class DistributedTrainer:
    """Model, optimizer and compiled steps, all created inside the strategy's scope."""

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        model_config: ModelConfig,
        loss_config: LossConfig,
        optimizer_config: OptimizerConfig,
        global_batch: int,
        total_steps: int,
    ):
        self.strategy = strategy
        self.global_batch = global_batch
        self.num_classes = model_config.num_classes
        size = model_config.input_size
        with strategy.scope():
            self.model = model_in_precision(
                build_unet(
                    model_config.num_classes,
                    (size, size, 3),
                    model_config.base_filters,
                    normalization=model_config.normalization,
                ),
                model_config.precision,
            )
            self.optimizer = make_optimizer(optimizer_config, total_steps)
            if model_config.precision == "float16":  # float16 gradients underflow without loss scaling
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            self.optimizer.build(self.model.trainable_variables)
        self._loss = segmentation_loss(
            loss_config.name,
            model_config.num_classes,
            list(loss_config.class_weights) if loss_config.class_weights else None,
            loss_config.ignore_index,
        )
        images = tf.TensorSpec([None, size, size, 3], tf.float32)
        self._train = tf.function(
            self._distributed_step, input_signature=[images, tf.TensorSpec([None, size, size], tf.uint8)]
        )
        self._sum = tf.function(self._distributed_sum)
        self._probabilities = tf.function(lambda x: self.model(x, training=False), input_signature=[images])

    def _replica_step(self, images: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            per_image = self._loss(masks, self.model(images, training=True))
            loss = tf.reduce_sum(per_image) / self.global_batch
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        return loss

    def _distributed_step(self, images: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
        per_replica = self.strategy.run(self._replica_step, args=(images, masks))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def train_step(self, images: np.ndarray, masks: np.ndarray) -> float:
        """One step on this worker's share of the global batch; returns the global mean loss."""
        return float(self._train(normalize(images, DEFAULT_NORMALIZATION), masks))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax outputs (N, H, W, classes) of uint8 images of the model's input size."""
        return self._probabilities(normalize(images, DEFAULT_NORMALIZATION)).numpy()

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.probabilities(images).argmax(axis=-1)

    def all_reduce_sum(self, values: np.ndarray) -> np.ndarray:
        """Sum an array over all workers (a collective: every worker must call it, in the same order)."""
        return self._sum(tf.constant(values, tf.float64)).numpy()

    def _distributed_sum(self, values: tf.Tensor) -> tf.Tensor:
        per_replica = self.strategy.run(tf.identity, args=(values,))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def state(self) -> dict[str, np.ndarray]:
        """Weights and optimizer state (step counter, moments) as named arrays, for a checkpoint."""
        arrays = {f"weight_{i}": w for i, w in enumerate(self.model.get_weights())}
        arrays.update({f"optimizer_{i}": np.asarray(v.numpy()) for i, v in enumerate(self.optimizer.variables)})
        return arrays

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        weights = [arrays[f"weight_{i}"] for i in range(len(self.model.weights))]
        slots = [arrays[f"optimizer_{i}"] for i in range(len(self.optimizer.variables))]
        if len(arrays) != len(weights) + len(slots):
            raise ValueError(
                "checkpoint does not match this model and optimizer (different width, classes or optimizer)"
            )
        self.model.set_weights(weights)
        for variable, value in zip(self.optimizer.variables, slots):
            variable.assign(value)


def weights_from_state(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    count = sum(1 for key in arrays if key.startswith("weight_"))
    return [arrays[f"weight_{i}"] for i in range(count)]


def weights_digest(model: keras.Model) -> str:
    """sha256 of every weight's bytes: equal digests mean bit-identical replicas."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()

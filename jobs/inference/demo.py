"""The embedded default: synthetic scenes, a small U-Net trained on them here, and a real run over them.

Nothing is downloaded: the scenes are drawn, the model is trained on the spot (about a minute on
two cores) and kept in the output folder for the next demo run.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import numpy as np
import pyarrow.dataset as pads
from PIL import Image

from jobs.inference.config import SegmentConfig
from jobs.output.records import RunRecord
from jobs.output.tables import TABLES, committed_dataset
from unet_core import build_unet, decode_mask_png, letterbox, read_metadata, save_artifact
from unet_core.metrics import confusion_matrix, mean_iou
from unet_core.synthetic import SCENE_CLASSES, SCENE_COLORS, make_scene

DEMO_IMAGES = 48
DEMO_INPUT = 64
TRAIN_SCENES = 600
TRAIN_EPOCHS = 12


def run_demo(
    config: SegmentConfig,
    segment: Callable[[SegmentConfig], RunRecord],
    print_summary: Callable[[RunRecord, str], None],
) -> int:
    root = os.path.abspath(config.output)
    scenes, truth, model_dir = (os.path.join(root, name) for name in ("scenes", "truth", "model"))
    if not os.path.isdir(scenes):
        write_scenes(scenes, truth, DEMO_IMAGES, seed=7)
        print(f"demo: wrote {DEMO_IMAGES} synthetic scenes to {scenes}")
    if not _has_model(model_dir):
        train_demo_model(model_dir)
    record = segment(dataclasses.replace(config, inputs=[scenes], output=root, model=model_dir))
    print_summary(record, root)
    print(
        f"demo model mIoU against the true masks: {demo_miou(root, record.run_id, truth):.3f} "
        f"(chance is about {1 / len(SCENE_CLASSES):.2f})"
    )
    print(f"Delta tables: {', '.join(os.path.join(root, name) for name in TABLES)}")
    return 0


def write_scenes(scenes: str, truth: str, count: int, seed: int) -> None:
    """Scenes of assorted sizes and formats (PNG and JPEG), with their true masks as PNG."""
    os.makedirs(scenes, exist_ok=True)
    os.makedirs(truth, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        height, width = (int(v) for v in rng.integers(48, 160, size=2))
        image, mask = make_scene(rng, height, width)
        suffix = ".jpg" if index % 3 == 0 else ".png"
        Image.fromarray(image).save(os.path.join(scenes, f"scene_{index:03d}{suffix}"), quality=95)
        Image.fromarray(mask).save(os.path.join(truth, f"scene_{index:03d}.png"))


def train_demo_model(model_dir: str) -> None:
    """A narrow seed U-Net (base_filters=8) at 64x64, trained on letterboxed scenes like the demo's."""
    import keras

    started = time.time()
    rng = np.random.default_rng(1)
    images, masks = [], []
    for _ in range(TRAIN_SCENES):
        height, width = (int(v) for v in rng.integers(48, 160, size=2))
        image, mask = make_scene(rng, height, width)
        images.append(letterbox(image, DEMO_INPUT)[0])
        masks.append(letterbox(mask, DEMO_INPUT, Image.NEAREST)[0])
    keras.utils.set_random_seed(1)
    model = build_unet(len(SCENE_CLASSES), (DEMO_INPUT, DEMO_INPUT, 3), base_filters=8)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    print(f"demo: training a small U-Net on {TRAIN_SCENES} synthetic scenes ({TRAIN_EPOCHS} epochs)...")
    model.fit(
        np.stack(images).astype(np.float32) / 255.0, np.stack(masks), batch_size=16, epochs=TRAIN_EPOCHS, verbose=2
    )
    save_artifact(
        model,
        model_dir,
        list(SCENE_CLASSES),
        SCENE_COLORS,
        name="demo-scenes",
        source={"trained_by": "jobs/demo.py", "scenes": TRAIN_SCENES, "epochs": TRAIN_EPOCHS},
    )
    print(f"demo: model trained in {time.time() - started:.0f} s, saved to {model_dir}")


def demo_miou(root: str, run_id: str, truth: str) -> float:
    """mIoU of the run's committed masks against the drawn truth, over all demo images together."""
    table = committed_dataset(root, "images").to_table(
        columns=["image_uri", "mask_png", "status"], filter=(pads.field("run_id") == run_id)
    )
    confusion = np.zeros((len(SCENE_CLASSES),) * 2, np.int64)
    for uri, png, status in zip(*(table.column(c).to_pylist() for c in ("image_uri", "mask_png", "status"))):
        if status != "ok":
            continue
        stem = os.path.splitext(os.path.basename(uri))[0]
        expected = np.asarray(Image.open(os.path.join(truth, f"{stem}.png")))
        confusion += confusion_matrix(expected, decode_mask_png(png), len(SCENE_CLASSES))
    return mean_iou(confusion)


def _has_model(model_dir: str) -> bool:
    try:
        read_metadata(model_dir)
    except Exception:
        return False
    return True

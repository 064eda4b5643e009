"""jobs/train.py and jobs/evaluate.py as a user runs them: subprocesses with real Ray Train and TensorFlow."""

import json
import re
import os
import pathlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import bomb_png
from PIL import Image
from test_segment_job import read_dataset, run_job

from unet_core import build_unet, decode_mask_png, read_metadata, save_artifact
from unet_core.metrics import confusion_matrix
from unet_core.synthetic import SCENE_CLASSES, make_scene

pytestmark = pytest.mark.ray

TRAIN_ARGS = [
    "--num-classes",
    "4",
    "--class-names",
    ",".join(SCENE_CLASSES),
    "--input-size",
    "32",
    "--base-filters",
    "8",
    "--batch-size",
    "8",
    "--workers",
    "2",
    "--learning-rate",
    "1e-2",
    "--no-augment",
    "--name",
    "scenes",
]


def write_scenes(folder: pathlib.Path, count: int, seed: int, height: int = 32, width: int = 32) -> np.ndarray:
    """Scenes and masks as PNG files paired by stem; returns the masks."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(seed)
    masks = []
    for index in range(count):
        image, mask = make_scene(rng, height, width, shapes=2)
        Image.fromarray(image).save(folder / "images" / f"scene{index:03d}.png")
        Image.fromarray(mask).save(folder / "masks" / f"scene{index:03d}.png")
        masks.append(mask)
    return np.stack(masks)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train one epoch, stop, then start the same run again to epoch 8: the resumed run's artifact."""
    root = tmp_path_factory.mktemp("train")
    write_scenes(root / "train", 128, seed=1)
    val_masks = write_scenes(root / "val", 16, seed=2)
    data = [
        "--images",
        str(root / "train" / "images"),
        "--masks",
        str(root / "train" / "masks"),
        "--val-images",
        str(root / "val" / "images"),
        "--val-masks",
        str(root / "val" / "masks"),
        "--storage",
        str(root / "checkpoints"),
        "--output",
        str(root / "model"),
    ]
    first = run_job("train.py", *data, *TRAIN_ARGS, "--epochs", "1", timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_job("train.py", *data, *TRAIN_ARGS, "--epochs", "8", "--validate-every", "3", timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"root": root, "first": first, "second": second, "val_masks": val_masks, "model": str(root / "model")}


def test_restart_resumes_at_epoch_two_with_the_optimizer_state(trained):
    first, second = trained["first"].stdout, trained["second"].stdout
    assert "epoch 1/1:" in first and "step 16," in first  # 128 pairs / global batch 8
    assert "resuming after epoch 1 (optimizer step 16)" in second
    assert "epoch 1/8" not in second
    assert "epoch 2/8:" in second and "step 32," in second
    assert "epoch 8/8:" in second and "step 128," in second
    # --validate-every 3: epochs 3 and 6, and the last; every epoch still checkpointed
    validated = [int(n) for n in re.findall(r"epoch (\d)/8: loss [\d.]+, val mIoU", second)]
    skipped = [int(n) for n in re.findall(r"epoch (\d)/8: loss [\d.]+, not validated", second)]
    assert (validated, skipped) == ([3, 6, 8], [2, 4, 5, 7]), second[-3000:]


def test_two_workers_end_with_identical_weights(trained):
    checkpoints = sorted(p for p in (trained["root"] / "checkpoints" / "scenes").glob("checkpoint_*") if p.is_dir())
    assert checkpoints
    for folder in checkpoints:
        digests = [(folder / f"replica-{rank}.sha256").read_text() for rank in (0, 1)]
        assert len(digests[0]) == 64 and digests[0] == digests[1], folder
    assert len(read_metadata(trained["model"]).source["replica_weight_digests"]) == 1


def test_trained_model_beats_the_majority_class_on_validation(trained):
    masks = trained["val_masks"]
    counts = np.bincount(masks.ravel(), minlength=4)
    majority_miou = counts.max() / counts.sum() / np.count_nonzero(counts)  # IoU of the majority class, 0 elsewhere
    source = read_metadata(trained["model"]).source
    assert source["val_miou"] > majority_miou + 0.1, (source["val_miou"], majority_miou)
    assert source["epochs"] == 8 and 1 <= source["exported_epoch"] <= 8
    assert source["train_pairs"] == 128 and source["val_pairs"] == 16 and len(source["data_fingerprint"]) == 64


def test_exported_artifact_segments_and_evaluates(trained, tmp_path):
    val = trained["root"] / "val"
    done = run_job(
        "segment.py",
        "--input",
        str(val / "images"),
        "--output",
        str(tmp_path / "seg"),
        "--model",
        trained["model"],
        "--run-id",
        "trained",
        "--precision",
        "float32",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "16 images, 0 skipped, 16 processed: 16 ok, 0 errors" in done.stdout
    assert read_dataset(str(tmp_path / "seg"), "images").num_rows == 16

    done = run_job(
        "evaluate.py",
        "--model",
        trained["model"],
        "--images",
        str(val / "images"),
        "--masks",
        str(val / "masks"),
        "--output",
        str(tmp_path / "eval"),
        "--precision",
        "float32",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    # the same images at the model's own size: evaluate.py scores what training's validation scored
    assert metrics["mean_iou"] == pytest.approx(read_metadata(trained["model"]).source["val_miou"], abs=0.01)


def test_evaluate_in_tile_mode_scores_the_masks_segment_writes(trained, tmp_path):
    # larger than the 32-pixel model input and not square: tiles overlap, and a letterbox would not map back as is
    truth = write_scenes(tmp_path / "big", 3, seed=3, height=40, width=56)
    images, flags = str(tmp_path / "big" / "images"), ("--mode", "tile", "--precision", "float32")
    done = run_job(
        "segment.py", "--input", images, "--output", str(tmp_path / "seg"), "--model", trained["model"], *flags
    )
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_job(
        "evaluate.py",
        "--model",
        trained["model"],
        "--images",
        images,
        "--masks",
        str(tmp_path / "big" / "masks"),
        "--output",
        str(tmp_path / "eval"),
        *flags,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    segmented = {
        os.path.basename(row["image_uri"]): decode_mask_png(row["mask_png"])
        for row in read_dataset(str(tmp_path / "seg"), "images").to_pylist()
    }
    scored = {
        os.path.basename(row["image_uri"]): row
        for row in pq.read_table(tmp_path / "eval" / "per_image.parquet").to_pylist()
    }
    names = [f"scene{index:03d}.png" for index in range(len(truth))]
    assert sorted(segmented) == sorted(scored) == names
    for name, mask in zip(names, truth):
        assert segmented[name].shape == mask.shape == (40, 56) and scored[name]["status"] == "ok"
        assert scored[name]["confusion"] == confusion_matrix(mask, segmented[name], 4).ravel().tolist(), name


def constant_artifact(path: str, predicted_class: int) -> str:
    """A tiny U-Net whose head ignores its input and always picks `predicted_class`."""
    model = build_unet(3, (32, 32, 3), base_filters=4)
    head = model.get_layer("final_conv")
    kernel, bias = head.get_weights()
    bias[:] = 0
    bias[predicted_class] = 5.0
    head.set_weights([np.zeros_like(kernel), bias])
    save_artifact(model, path, ["background", "cell", "edge"], name="constant")
    return path


def test_evaluate_matches_a_hand_computed_confusion_matrix(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    stored = {  # stored values 0 -> class 0, 255 -> 1 (ignored), 128 -> 2
        "a": np.array([[0, 0, 255, 128], [128, 128, 0, 255], [0, 0, 0, 0]], np.uint8),  # 3x4: 7 zeros, 3 of 128
        "b": np.repeat(np.array([[128] * 7 + [255] * 3 + [0] * 5], np.uint8), 20, axis=0),  # 20x15
    }
    for name, mask in stored.items():
        Image.fromarray(np.full(mask.shape + (3,), 90, np.uint8)).save(images / f"{name}.jpg")
        Image.fromarray(mask).save(masks / f"{name}.png")
    Image.fromarray(np.full((5, 5, 3), 90, np.uint8)).save(images / "c.jpg")
    (masks / "c.png").write_bytes(bomb_png(200_000, 200_000))  # refused before decoding: an error row, no score
    model = constant_artifact(str(tmp_path / "constant"), predicted_class=2)
    done = run_job(
        "evaluate.py",
        "--model",
        model,
        "--images",
        str(images),
        "--masks",
        str(masks),
        "--mask-map",
        "255:1,128:2",
        "--ignore-index",
        "1",
        "--output",
        str(tmp_path / "eval"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    zeros, twos = 7 + 5 * 20, 3 + 7 * 20
    assert json.load(open(tmp_path / "eval" / "metrics.json"))["confusion"] == [[0, 0, zeros], [0, 0, 0], [0, 0, twos]]
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert metrics["iou"] == {"background": 0.0, "cell": None, "edge": pytest.approx(twos / (zeros + twos))}
    assert metrics["mean_iou"] == pytest.approx(twos / (zeros + twos) / 2)
    assert metrics["pixel_accuracy"] == pytest.approx(twos / (zeros + twos))
    assert metrics["dice"]["edge"] == pytest.approx(2 * twos / (2 * twos + zeros))
    per_image = {
        os.path.basename(r["image_uri"]): r for r in pq.read_table(tmp_path / "eval" / "per_image.parquet").to_pylist()
    }
    assert per_image["a.jpg"]["confusion"] == [0, 0, 7, 0, 0, 0, 0, 0, 3]
    assert per_image["b.jpg"]["status"] == "ok" and per_image["b.jpg"]["pixel_accuracy"] == pytest.approx(140 / 240)
    assert per_image["c.jpg"]["status"] == "error" and per_image["c.jpg"]["error"].startswith(
        f"{masks / 'c.png'}: cannot read mask (mask has 200000x200000 = 40,000,000,000 pixels, above the max_pixels limit of "
        "100,000,000"
    )
    assert (metrics["images"], metrics["errors"]) == (3, 1)
    assert "mIoU" in done.stdout and "edge" in done.stdout


def test_unpaired_images_are_one_clear_error(tmp_path):
    write_scenes(tmp_path, 3, seed=0)
    os.remove(tmp_path / "masks" / "scene001.png")
    done = run_job(
        "train.py",
        "--images",
        str(tmp_path / "images"),
        "--masks",
        str(tmp_path / "masks"),
        "--num-classes",
        "4",
        "--output",
        str(tmp_path / "model"),
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "1 images have no mask" in done.stderr and "scene001" in done.stderr


def test_patch_training_validates_in_tiles_and_the_artifact_runs_in_tile_mode(tmp_path):
    write_scenes(tmp_path / "train", 16, seed=4, height=48, width=80)
    truth = write_scenes(tmp_path / "val", 3, seed=5, height=48, width=80)
    args = [arg for arg in TRAIN_ARGS if arg not in ("--input-size", "32")]
    args[args.index("--workers") + 1] = "1"
    done = run_job(
        "train.py",
        "--images",
        str(tmp_path / "train" / "images"),
        "--masks",
        str(tmp_path / "train" / "masks"),
        "--val-images",
        str(tmp_path / "val" / "images"),
        "--val-masks",
        str(tmp_path / "val" / "masks"),
        "--storage",
        str(tmp_path / "checkpoints"),
        "--output",
        str(tmp_path / "model"),
        *args,
        "--patch-size",
        "32",
        "--epochs",
        "3",
        "--precision",
        "float32",
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # no --patches-per-image: 48x80 is 3.75 patches' area, so 4 crops of each of the 16 images an epoch
    assert (
        "an epoch: 16 images, 64 32x32 crops at full resolution (4 per image, about every pixel once), "
        "validated in tiles; 8 steps of global batch 8"
    ) in done.stdout
    assert "step 16," in done.stdout
    # no --validate-every: the first two epochs are validated, the second (warm) chooses, the last always is
    assert re.search(
        r"validation took [\d.]+ s against [\d.]+ s of training in epoch 2: validating every \d+ "
        r"epochs",
        done.stdout,
    ), done.stdout[-3000:]
    assert re.search(
        r"an epoch trains in [\d.]+ s here \(validation [\d.]+ s\): the 1 left \(1 validated\), "
        r"about \d+ min",
        done.stdout,
    ), done.stdout[-3000:]
    assert [int(n) for n in re.findall(r"epoch (\d)/3: loss [\d.]+, val mIoU", done.stdout)] == [1, 2, 3]
    assert "Reporting training result" not in done.stdout + done.stderr  # Ray Train's per-report lines, quieted
    metadata = read_metadata(str(tmp_path / "model"))
    assert metadata.mode == "tile" and metadata.input_size == (32, 32)
    # no --mode: both jobs run the model as it was trained, in tiles at full resolution
    val = tmp_path / "val"
    done = run_job(
        "segment.py",
        "--input",
        str(val / "images"),
        "--output",
        str(tmp_path / "seg"),
        "--model",
        str(tmp_path / "model"),
        "--precision",
        "float32",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tile mode" in done.stdout
    masks = [decode_mask_png(row["mask_png"]) for row in read_dataset(str(tmp_path / "seg"), "images").to_pylist()]
    assert [mask.shape for mask in masks] == [(48, 80)] * 3
    done = run_job(
        "evaluate.py",
        "--model",
        str(tmp_path / "model"),
        "--images",
        str(val / "images"),
        "--masks",
        str(val / "masks"),
        "--output",
        str(tmp_path / "eval"),
        "--precision",
        "float32",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    # training validated exactly as evaluate.py scores: the same tiles of the same full-resolution images
    assert metrics["mean_iou"] == pytest.approx(metadata.source["val_miou"], abs=1e-6)
    assert metrics["images"] == len(truth)


def test_a_collapsed_run_is_named_and_stop_on_collapse_ends_it_with_status_5(tmp_path):
    """Issue 32: a run that finds only one class is called collapsed, with the flags to change;
    with --stop-on-collapse it ends with status 5 and exports nothing. Collapse is forced by a loss that
    weighs only the background."""
    from jobs.training.loop import COLLAPSE_CAUSES

    write_scenes(tmp_path / "train", 32, seed=6)
    write_scenes(tmp_path / "val", 8, seed=7)
    args = [arg for arg in TRAIN_ARGS if arg not in ("--workers", "2")]
    done = run_job(
        "train.py",
        "--images",
        str(tmp_path / "train" / "images"),
        "--masks",
        str(tmp_path / "train" / "masks"),
        "--val-images",
        str(tmp_path / "val" / "images"),
        "--val-masks",
        str(tmp_path / "val" / "masks"),
        "--storage",
        str(tmp_path / "checkpoints"),
        "--output",
        str(tmp_path / "model"),
        *args,
        "--loss",
        "ce",
        "--class-weights",
        "1,0,0,0",
        "--epochs",
        "3",
        "--validate-every",
        "1",
        "--stop-on-collapse",
        timeout=600,
    )
    assert done.returncode == 5, done.stdout[-2000:] + done.stderr[-3000:]
    assert (
        "warning: training collapsed: no validation pixel of any class but background is found at epoch 2/3 (train "
        "loss " in done.stdout
    ), done.stdout[-3000:]
    assert "epoch 3/3" not in done.stdout
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        "error: training collapsed at epoch 2/3: no validation pixel of any class but background is found; no artifact "
        "written. " + COLLAPSE_CAUSES
    ]
    assert not (tmp_path / "model").exists()

"""Pairing and loading labelled data for training: in-process, no Ray."""

import re

import numpy as np
import pytest
from PIL import Image

from conftest import bomb_png
from jobs.common.errors import UserError
from jobs.training.data import (
    crops_per_image,
    epoch_order,
    epoch_samples,
    header_facts,
    load_pairs,
    pair_by_stem,
    parse_mask_map,
    read_mask,
    split_validation,
    training_batch,
    voc_pairs,
    worker_share,
)
from unet_core.augment import PAD_LABEL


def test_voc_layout_pairs_and_palette_masks(tmp_path):
    root = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n2007_000039\n")
    mask = np.zeros((20, 40), np.uint8)
    mask[5:10, 10:30] = 15
    mask[0, :] = 255  # VOC's border label
    for name in ("2007_000032", "2007_000039"):
        Image.fromarray(np.full((20, 40, 3), 120, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        palette = Image.fromarray(mask, mode="P")
        palette.putpalette([0, 0, 0, 128, 0, 0] * 128)
        palette.save(root / "SegmentationClass" / f"{name}.png")
    pairs = voc_pairs(str(root), "train")
    assert pairs.column("stem").to_pylist() == ["2007_000032", "2007_000039"]
    loaded = load_pairs(pairs.to_pydict(), 16, parse_mask_map(None))
    assert loaded["image"].shape == (2, 16, 16, 3) and loaded["mask"].shape == (2, 16, 16)
    # 40x20 letterboxed into 16x16: rows 0-3 and 12-15 are padding, the class-15 box sits inside
    assert np.all(loaded["mask"][:, :4] == PAD_LABEL) and np.all(loaded["mask"][:, 12:] == PAD_LABEL)
    assert set(np.unique(loaded["mask"])) == {0, 15, 255}
    with pytest.raises(UserError, match="Pascal VOC layout"):
        voc_pairs(str(root), "val")


def test_mask_map_and_pairing_by_stem(tmp_path):
    for folder in ("img", "lbl"):
        (tmp_path / folder).mkdir()
    for index in range(5):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / f"{index}.jpg")
        Image.fromarray(np.array([[0, 255] * 4] * 8, np.uint8)).save(tmp_path / "lbl" / f"{index}.png")
    pairs = pair_by_stem(str(tmp_path / "img"), str(tmp_path / "lbl"))
    loaded = load_pairs(pairs.to_pydict(), 16, parse_mask_map("255:1"))
    assert set(np.unique(loaded["mask"])) == {0, 1}
    train, val = split_validation(pairs, 0.4, seed=3)
    assert len(train) == 3 and len(val) == 2
    assert not set(train.column("stem").to_pylist()) & set(val.column("stem").to_pylist())
    assert val.column("index").to_pylist() == [0, 1]
    with pytest.raises(UserError, match="STORED:CLASS"):
        parse_mask_map("255=1")
    (tmp_path / "lbl" / "extra.png").write_bytes((tmp_path / "lbl" / "0.png").read_bytes())
    with pytest.raises(UserError, match=r"1 masks have no image .*extra"):
        pair_by_stem(str(tmp_path / "img"), str(tmp_path / "lbl"))
    # one file where a folder was meant (issue 30: this said "1 images have no mask")
    with pytest.raises(UserError, match=r"0\.jpg: names one file; give the folder or prefix that holds the images"):
        pair_by_stem(str(tmp_path / "img" / "0.jpg"), str(tmp_path / "lbl"))


def test_masks_are_held_to_the_limits_of_images(tmp_path):
    """A true mask is a user's file like its image: one declaring more pixels than the limit is refused
    before it is decoded, one larger than the byte limit before it is read; each is one clear error
    naming the file and the limit."""
    for folder in ("img", "lbl"):
        (tmp_path / folder).mkdir()
    for name in ("big", "bomb"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / f"{name}.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "lbl" / "big.png")
    with open(tmp_path / "lbl" / "big.png", "ab") as handle:
        handle.write(bytes(2000))  # after IEND: a valid mask of 2,000 bytes more
    (tmp_path / "lbl" / "bomb.png").write_bytes(bomb_png(200_000, 200_000))
    pairs = pair_by_stem(str(tmp_path / "img"), str(tmp_path / "lbl")).to_pydict()
    bomb, big = (str(tmp_path / "lbl" / name) for name in ("bomb.png", "big.png"))
    with pytest.raises(UserError) as over_pixels:
        load_pairs(pairs, 16, parse_mask_map(None))
    assert str(over_pixels.value) == (
        f"{bomb}: cannot read mask (mask has 200000x200000 = 40,000,000,000 pixels, "
        "above the max_pixels limit of 100,000,000)"
    )
    with pytest.raises(UserError) as over_bytes:
        load_pairs(pairs, 16, parse_mask_map(None), max_bytes=1000)
    assert re.fullmatch(
        rf"{big}: cannot read mask \(file has 2,\d+ bytes, above the max_bytes limit of 1,000\)", str(over_bytes.value)
    )
    with pytest.raises(ValueError, match=r"cannot read mask \(file has more than 1,000 bytes, the max_bytes limit"):
        read_mask(big, parse_mask_map(None), -1, max_bytes=1000)  # unlisted (a VOC tree): read up to the limit
    # the check train.py runs over every pair before training, from listed sizes and headers alone
    pairs["position"] = np.arange(2)
    assert header_facts(pairs, 100_000_000, 1 << 30)["refusal"].tolist() == ["", str(over_pixels.value)]
    assert header_facts(pairs, 100_000_000, 1000)["refusal"].tolist() == [str(over_bytes.value), str(over_pixels.value)]
    assert header_facts(pairs, 100_000_000, 1 << 30)["pixels"].tolist() == [64, 64]  # the images' areas


@pytest.mark.parametrize(
    ("pixels", "patch", "crops"),
    [
        ([1024 * 768, 256 * 256, 100 * 100, 0], 256, [12, 1, 1, 1]),  # the 1024x768 slices of a new user's set
        ([512 * 512, 700 * 500], 128, [16, 21]),  # 16 and 21.4 patches' worth
        ([960 * 720], 512, [3]),  # 2.6 patches' worth: rounded
    ],
)
def test_crops_per_image_cover_each_image_about_once_an_epoch(pixels, patch, crops):
    assert crops_per_image(np.array(pixels), patch).tolist() == crops


def test_an_epoch_draws_each_pair_as_many_times_as_its_crops_in_a_seeded_order():
    crops = np.array([3, 1, 2])
    first = epoch_samples(crops, seed=0, epoch=1)
    assert sorted(first.tolist()) == [0, 0, 0, 1, 2, 2]
    assert np.array_equal(first, epoch_samples(crops, seed=0, epoch=1))
    assert not all(np.array_equal(first, epoch_samples(crops, seed=0, epoch=e)) for e in range(2, 6))


def test_each_epoch_draws_its_own_seeded_order_of_the_whole_set():
    first, second = epoch_order(50, seed=3, epoch=1), epoch_order(50, seed=3, epoch=2)
    assert sorted(first) == sorted(second) == list(range(50))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, epoch_order(50, seed=3, epoch=1))
    assert not np.array_equal(first, epoch_order(50, seed=4, epoch=1))


def test_the_workers_batches_together_are_the_orders_global_batches():
    order = epoch_order(23, seed=0, epoch=1)  # 2 workers x 2 steps of 5: 3 pairs left for other epochs
    shares = [worker_share(order, rank, 2, 10) for rank in range(2)]
    for step in range(2):
        together = np.concatenate([share[step * 5 : (step + 1) * 5] for share in shares])
        assert sorted(together) == sorted(order[step * 10 : (step + 1) * 10])


def test_patch_batches_are_full_resolution_crops_seeded_by_batch(tmp_path):
    from unet_core.synthetic import make_scene

    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    scenes = []
    for index in range(6):
        image, mask = make_scene(rng, 48, 80, shapes=2)
        Image.fromarray(image).save(tmp_path / "images" / f"s{index}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"s{index}.png")
        scenes.append((image, mask))
    pairs = pair_by_stem(str(tmp_path / "images"), str(tmp_path / "masks")).to_pydict()
    batch = training_batch(pairs, 16, parse_mask_map(None), patch_size=32, augment=False, seed=[0, 1, 0, 0])
    assert batch["image"].shape == (6, 32, 32, 3) and batch["mask"].shape == (6, 32, 32)
    for (image, mask), crop, label in zip(scenes, batch["image"], batch["mask"]):
        # a crop of the image at full resolution (not resized): found in it at some offset, with its mask
        found = [
            (top, left)
            for top in range(48 - 31)
            for left in range(80 - 31)
            if np.array_equal(image[top : top + 32, left : left + 32], crop)
        ]
        assert found and any(np.array_equal(mask[t : t + 32, x : x + 32], label) for t, x in found)
    again = training_batch(pairs, 16, parse_mask_map(None), patch_size=32, augment=True, seed=[0, 1, 0, 0])
    same = training_batch(pairs, 16, parse_mask_map(None), patch_size=32, augment=True, seed=[0, 1, 0, 0])
    other = training_batch(pairs, 16, parse_mask_map(None), patch_size=32, augment=True, seed=[0, 2, 0, 0])
    assert np.array_equal(again["image"], same["image"]) and np.array_equal(again["mask"], same["mask"])
    assert not np.array_equal(again["image"], other["image"])


def test_training_sees_each_image_as_segment_does(tmp_path):
    """A letterboxed pair's image is the very input segment.py gives the model (a JPEG decoded at the
    scale its letterbox needs), so training and inference never differ in preprocessing."""
    from unet_core.image import decode_letterboxed

    for folder in ("img", "lbl"):
        (tmp_path / folder).mkdir()
    rows, cols = np.mgrid[0:600, 0:800]
    photo = np.stack([(rows * 255 // 600), (cols * 255 // 800), (rows + cols) % 256], -1).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "img" / "a.jpg", quality=90)
    Image.fromarray((rows > 300).astype(np.uint8)).save(tmp_path / "lbl" / "a.png")
    loaded = load_pairs(
        pair_by_stem(str(tmp_path / "img"), str(tmp_path / "lbl")).to_pydict(), 64, parse_mask_map(None)
    )
    expected, box = decode_letterboxed((tmp_path / "img" / "a.jpg").read_bytes(), 64)
    np.testing.assert_array_equal(loaded["image"][0], expected)
    assert (box.height, box.width) == (600, 800) and set(np.unique(box.inner(loaded["mask"][0]))) == {0, 1}

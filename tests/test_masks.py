import numpy as np
import pytest

from unet_core import Letterbox, class_statistics, decode_mask_png, default_colors, encode_mask_png, unletterbox
from unet_core.masks import letterboxed_statistics
from unet_core.metrics import confusion_matrix, dice_per_class, iou_per_class, mean_iou, pixel_accuracy, scores


def test_palette_png_round_trip_is_lossless():
    mask = np.random.default_rng(1).integers(0, 21, (37, 129), dtype=np.uint8)
    data = encode_mask_png(mask, default_colors(21))
    np.testing.assert_array_equal(decode_mask_png(data), mask)
    from PIL import Image
    import io

    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "P"
        assert image.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]  # VOC colours


def test_statistics_sum_to_the_image_and_average_confidence_per_class():
    mask = np.array([[0, 0, 1], [1, 1, 3]], np.uint8)
    confidence = np.array([[0.5, 0.7, 0.9], [0.8, 0.7, 0.4]], np.float32)
    stats = class_statistics(mask, confidence, num_classes=4)
    assert stats.pixels.tolist() == [2, 3, 0, 1]
    assert stats.pixels.sum() == mask.size
    np.testing.assert_allclose(stats.fraction, [2 / 6, 3 / 6, 0, 1 / 6])
    np.testing.assert_allclose(stats.mean_confidence[[0, 1, 3]], [0.6, 0.8, 0.4], rtol=1e-6)
    assert np.isnan(stats.mean_confidence[2])


@pytest.mark.parametrize("height, width", [(480, 640), (3024, 4032), (37, 129), (1000, 31), (700, 700)])
def test_statistics_in_model_space_are_those_of_the_full_size_maps_exactly(height, width):
    """Each model pixel weighted by the original pixels it maps to: the same counts, shares and mean
    confidences, bit for bit, as counting the maps brought to full size."""
    rng = np.random.default_rng(height)
    box = Letterbox.fit(height, width, 512)
    mask = rng.integers(0, 5, (512, 512), dtype=np.uint8)
    confidence = rng.random((512, 512)).astype(np.float16)
    full = class_statistics(unletterbox(mask, box), unletterbox(confidence, box), 6)
    model = class_statistics(box.inner(mask), box.inner(confidence), 6, box.repeats())
    assert full.pixels.sum() == height * width
    np.testing.assert_array_equal(model.pixels, full.pixels)
    np.testing.assert_array_equal(model.fraction, full.fraction)
    np.testing.assert_array_equal(model.mean_confidence, full.mean_confidence)  # NaN for class 5 in both


def test_metrics_from_a_hand_counted_confusion_matrix():
    truth = np.array([0, 0, 1, 1, 2, 255])
    pred = np.array([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(truth, pred, 3, ignore_index=255)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    np.testing.assert_allclose(iou_per_class(cm), [1 / 3, 2 / 3, 0.0])
    np.testing.assert_allclose(dice_per_class(cm), [0.5, 0.8, 0.0])
    assert mean_iou(cm) == pytest.approx(1 / 3)
    assert pixel_accuracy(cm) == pytest.approx(3 / 5)


def test_an_ignore_index_that_is_a_class_is_left_out_of_every_mean():
    truth = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    pred = np.array([1, 0, 1, 0, 2, 2, 3, 1])  # class 0 predicted once on a pixel of class 1
    cm = confusion_matrix(truth, pred, 4, ignore_index=0)
    assert cm.tolist() == [[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 2, 0], [0, 1, 0, 1]]
    scored = scores(cm, ignore_index=0)
    assert scored.mean_iou == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)  # 11/18; with class 0's IoU of 0: 11/24
    np.testing.assert_allclose(scored.iou, [np.nan, 1 / 3, 1.0, 1 / 2])
    np.testing.assert_allclose(scored.dice, [np.nan, 1 / 2, 1.0, 2 / 3])
    assert scored.pixel_accuracy == pytest.approx(4 / 6)  # the pixel of class 1 predicted as 0 stays an error
    assert scores(cm, ignore_index=255).mean_iou == pytest.approx(mean_iou(cm)) == pytest.approx(11 / 24)


@pytest.mark.parametrize("height, width", [(3024, 4032), (48, 64), (512, 384)])
def test_letterboxed_statistics_are_those_of_the_maps_at_full_size(height, width):
    """Whichever way is cheaper for the image's size, the figures are the full-size maps' own."""
    rng = np.random.default_rng(width)
    box = Letterbox.fit(height, width, 512)
    mask = rng.integers(0, 4, (512, 512), dtype=np.uint8)
    confidence = rng.random((512, 512)).astype(np.float16)
    full = class_statistics(unletterbox(mask, box), unletterbox(confidence, box), 4)
    got = letterboxed_statistics(mask, confidence, box, 4)
    for field in ("pixels", "fraction", "mean_confidence"):
        np.testing.assert_array_equal(getattr(got, field), getattr(full, field))

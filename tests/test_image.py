import io

import numpy as np
import pytest
from PIL import Image

from conftest import jpeg_with_orientation, png_bytes
from unet_core import DecodeError, Letterbox, decode_image, letterbox, unletterbox
from unet_core.image import decode_letterboxed

RNG = np.random.default_rng(0)


def _encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "make, expected_pixel",
    [
        (lambda: Image.new("L", (5, 4), 77), (77, 77, 77)),
        (lambda: Image.new("LA", (5, 4), (200, 0)), (0, 0, 0)),  # fully transparent over black
        (lambda: Image.new("RGBA", (5, 4), (10, 20, 30, 255)), (10, 20, 30)),
        (lambda: Image.new("RGB", (5, 4), (1, 2, 3)), (1, 2, 3)),
    ],
)
def test_decode_modes_to_rgb(make, expected_pixel):
    out = decode_image(png_bytes(make()))
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == expected_pixel


def test_palette_with_transparency_composites_on_black():
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    assert tuple(decode_image(png_bytes(image, transparency=1))[0, 0]) == (0, 0, 0)
    assert tuple(decode_image(png_bytes(image))[0, 0]) == (250, 10, 10)


def test_sixteen_bit_grey_scales_by_type_range():
    values = np.array([[0, 65535], [32768, 257]], dtype=np.uint16)
    for data in (png_bytes(Image.fromarray(values)), _encoded(Image.fromarray(values), "TIFF")):
        out = decode_image(data)
        assert out[..., 0].tolist() == [[0, 255], [128, 1]]


def test_cmyk_jpeg_decodes_to_rgb():
    out = decode_image(_encoded(Image.new("CMYK", (8, 6), (0, 255, 255, 0)), "JPEG"))
    assert out.shape == (6, 8, 3)
    assert out[0, 0, 0] > 200 and out[0, 0, 1] < 60


def test_exif_orientation_is_applied():
    array = np.zeros((10, 30, 3), np.uint8)
    array[:, :5] = 255  # bright band on the left
    out = decode_image(jpeg_with_orientation(array, 6))  # 6: rotate 90 degrees clockwise to view
    assert out.shape == (30, 10, 3)
    assert out[:5].mean() > 200 and out[-5:].mean() < 50  # the left band is now on top


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"plain text, not an image", "not a recognised image"),
        (png_bytes(Image.new("RGB", (64, 64), 5))[:80], "corrupt or truncated"),
    ],
)
def test_undecodable_bytes_raise_decode_error(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_image(data)


def test_pixel_limit_is_checked_before_decoding():
    data = png_bytes(Image.new("L", (300, 200)))
    with pytest.raises(DecodeError, match="60,000 pixels, above the max_pixels limit of 59,999"):
        decode_image(data, max_pixels=59_999)
    assert decode_image(data, max_pixels=60_000).shape == (200, 300, 3)


@pytest.mark.parametrize("height, width", [(37, 129), (129, 37), (1, 1), (3, 40), (64, 64)])
def test_letterbox_round_trip_is_exact_when_upscaling(height, width):
    image = RNG.integers(0, 255, (height, width), dtype=np.uint8)
    boxed, box = letterbox(image, 256, Image.NEAREST)
    assert boxed.shape == (256, 256)
    np.testing.assert_array_equal(unletterbox(boxed, box), image)


@pytest.mark.parametrize("height, width", [(513, 257), (257, 513), (1000, 31)])
def test_mask_round_trip_is_exact_when_downscaling(height, width):
    """Model-space masks map to every original pixel and back without losing a model pixel."""
    box = Letterbox.fit(height, width, 512)
    mask = RNG.integers(0, 20, (512, 512), dtype=np.uint8)
    original = unletterbox(mask, box)
    assert original.shape == (height, width)
    again, again_box = letterbox(original, 512, Image.NEAREST)
    assert again_box == box
    inner = np.s_[box.top : box.top + box.inner_height, box.left : box.left + box.inner_width]
    np.testing.assert_array_equal(again[inner], mask[inner])


def test_letterbox_keeps_aspect_and_centres():
    box = Letterbox.fit(100, 400, 64)
    assert (box.inner_height, box.inner_width, box.top, box.left) == (16, 64, 24, 0)
    boxed, _ = letterbox(np.full((100, 400, 3), 255, np.uint8), 64)
    assert boxed[:24].max() == 0 and boxed[40:].max() == 0 and boxed[24:40].min() == 255


def test_animated_gif_decodes_its_first_frame():
    frames = [Image.new("RGB", (6, 4), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = decode_image(buffer.getvalue())
    assert out.shape == (4, 6, 3) and out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def _gathered(values: np.ndarray, box: Letterbox) -> np.ndarray:
    """The mapping back as it was first written: a gather at each original pixel's centre."""

    def nearest(original: int, scaled: int) -> np.ndarray:
        return np.minimum(((np.arange(original) + 0.5) * (scaled / original)).astype(np.int64), scaled - 1)

    rows = box.top + nearest(box.height, box.inner_height)
    cols = box.left + nearest(box.width, box.inner_width)
    return values[rows[:, None], cols[None, :]]


@pytest.mark.parametrize("height, width", [(480, 640), (3024, 4032), (37, 129), (1000, 31), (512, 512), (1, 1)])
def test_repeating_rows_and_columns_is_the_gather_byte_for_byte(height, width):
    box = Letterbox.fit(height, width, 512)
    mask = RNG.integers(0, 21, (512, 512), dtype=np.uint8)
    np.testing.assert_array_equal(unletterbox(mask, box), _gathered(mask, box))


def _photo(height: int, width: int) -> np.ndarray:
    """Smooth content a camera would take: gradients and a few soft blobs, not noise."""
    rows, cols = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(rows * 7 + k) * np.cos(cols * 5 - k) for k in range(3)]
    return ((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_large_jpeg_is_decoded_at_the_scale_its_letterbox_needs(orientation):
    """The DCT-scaled decode lands in the same box as a full decode and differs from it by rounding
    of a downscale, not by content; a quarter turn in EXIF is applied to the size as to the pixels."""
    data = jpeg_with_orientation(_photo(900, 1200), orientation)
    boxed, box = decode_letterboxed(data, 256)
    full, full_box = letterbox(decode_image(data), 256)
    assert box == full_box
    assert (box.height, box.width) == ((900, 1200) if orientation == 1 else (1200, 900))
    difference = np.abs(boxed.astype(int) - full.astype(int))
    assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 6


def test_an_image_smaller_than_the_input_decodes_as_a_full_decode_would():
    data = _encoded(Image.fromarray(_photo(60, 80)), "JPEG", quality=95)
    boxed, box = decode_letterboxed(data, 256)
    expected, expected_box = letterbox(decode_image(data), 256)
    assert box == expected_box
    np.testing.assert_array_equal(boxed, expected)


def test_decoding_into_the_letterbox_refuses_what_a_full_decode_refuses():
    with pytest.raises(DecodeError, match="empty file"):
        decode_letterboxed(b"", 64)
    with pytest.raises(DecodeError, match="above the max_pixels limit"):
        decode_letterboxed(png_bytes(Image.new("L", (300, 200))), 64, max_pixels=59_999)

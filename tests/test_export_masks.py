"""export_masks.py: one palette PNG per image of a real run, in a mirror of the input folders, never outside DEST."""

import csv
import os

import numpy as np
import pytest
from PIL import Image
from run_output import current_rows, make_output, read_run
from test_segment_job import run_job

from jobs.common.errors import UserError
from jobs.results.export import ExportConfig, export, safe_relative
from unet_core import decode_mask_png, default_colors

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_artifact) -> dict[str, str]:
    return make_output(str(tmp_path_factory.getbasetemp() / "segmented"), tiny_artifact)


def files_under(root) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(folder, name), root) for folder, _, names in os.walk(root) for name in names
    )


def test_masks_mirror_the_input_folders_and_hold_the_stored_masks(paths, tmp_path):
    dest = tmp_path / "masks"
    done = run_job("export_masks.py", "--output", paths["output"], "--dest", str(dest), "--run", "first", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wrote 6 masks" in done.stdout
    assert files_under(dest) == [
        "a/odd <b>name.png",
        "a/street.png",
        *sorted(
            f"a/twin-{row['image_id'][:8]}.png"
            for row in read_run(paths["output"], "images", "first").to_pylist()
            if os.path.basename(row["image_uri"]).startswith("twin.")
        ),
        "b/field.png",
        "b/nested/deep.png",
        "masks.csv",
    ]
    index = {row["image_uri"]: row["mask_path"] for row in csv.DictReader(open(dest / "masks.csv"))}
    for row in read_run(paths["output"], "images", "first").to_pylist():
        if row["status"] != "ok":
            assert row["image_uri"] not in index
            continue
        with Image.open(dest / index[row["image_uri"]]) as mask:
            assert mask.mode == "P" and mask.size == (row["width"], row["height"])
            assert mask.getpalette()[:9] == [c for color in default_colors(3) for c in color]
            assert np.array_equal(np.asarray(mask), decode_mask_png(row["mask_png"]))


def test_current_masks_and_an_explicit_root(paths, tmp_path):
    export(ExportConfig(paths["output"], str(tmp_path / "m"), relative_to=paths["scenes"] + "/b"))
    ok = [row for row in current_rows(paths["output"], "images") if row["status"] == "ok"]
    written = files_under(tmp_path / "m")
    assert len(written) == len(ok) + 1
    assert {"field.png", "fixme.png", "nested/deep.png"} <= set(written)  # fixme.png only exists in run "second"
    outside_root = [name for name in written if "/a/" in f"/{name}"]
    assert len(outside_root) == 4 and all(name.endswith(".png") and not name.startswith("/") for name in outside_root)
    index = {row["image_uri"]: row["mask_path"] for row in csv.DictReader(open(tmp_path / "m" / "masks.csv"))}
    assert sorted(index) == sorted(row["image_uri"] for row in ok)
    for row in ok:  # each image's mask from the run that made its current row ("second" for b/)
        with Image.open(tmp_path / "m" / index[row["image_uri"]]) as mask:
            assert np.array_equal(np.asarray(mask), decode_mask_png(row["mask_png"])), row["image_uri"]


@pytest.mark.parametrize(
    "uri, root, expected",
    [
        ("/data/photos/2026/a.jpg", "/data/photos", "2026/a.png"),
        ("s3://bucket/photos/x/y.tif", "bucket/photos", "x/y.png"),
        ("../../etc/passwd.png", "", "__/__/etc/passwd.png"),
        ("/data/photos/../../../x.png", "data/photos", "x.png"),
        ("s3://bucket//./a/..", "", "bucket.png"),
    ],
)
def test_names_never_climb_out_of_the_destination(uri, root, expected):
    name = safe_relative(uri, root)
    assert name == expected
    assert not name.startswith("/") and ".." not in name.split("/")


def test_a_symlink_inside_dest_cannot_lead_writes_outside(paths, tmp_path):
    dest, elsewhere = tmp_path / "dest", tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest.mkdir()
    (dest / "a").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UserError, match="would be written outside"):
        export(ExportConfig(paths["output"], str(dest), run="first"))
    assert os.listdir(elsewhere) == []

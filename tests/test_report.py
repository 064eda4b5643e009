"""report.py: the HTML report of a real run, rendered in headless Chromium."""

import base64
import html
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CLASSES
from delta_read import delta_sql
from PIL import Image
from run_output import make_output, read_run
from test_query import query_json

from jobs.common.errors import UserError
from jobs.output import tables
from jobs.report import main
from jobs.results.report import ReportConfig, blend, build_report, make_sample
from unet_core import default_colors, encode_mask_png

pytestmark = pytest.mark.ray

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@pytest.fixture(scope="module")
def output(tmp_path_factory, tiny_artifact) -> str:
    return make_output(str(tmp_path_factory.getbasetemp() / "segmented"), tiny_artifact)["output"]


def chromium(profile, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
    )


def screenshot(report: Path, window: str, tmp_path: Path, tmp_path_factory) -> np.ndarray:
    """The page as headless Chromium draws it (RGB), its PNG kept among the session's artefacts."""
    shot = tmp_path / f"{report.stem}.png"
    done = chromium(tmp_path / "profile-shot", f"--window-size={window}", f"--screenshot={shot}", report.as_uri())
    assert shot.exists(), done.stderr[-3000:]
    artefact = tmp_path_factory.getbasetemp() / "artefacts" / f"{report.stem}.png"
    artefact.parent.mkdir(exist_ok=True)
    shutil.copy(shot, artefact)
    print(f"report screenshot: {artefact}")
    return np.asarray(Image.open(shot).convert("RGB"), np.float32)


def test_blend_tints_class_pixels_and_leaves_black_classes_alone():
    picture = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[0, 1], [2, 1]], np.uint8)
    out = blend(picture, mask, default_colors(3))  # class 0 is black, 1 is (128, 0, 0), 2 is (0, 128, 0)
    assert out[0, 0].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [114, 50, 50] and out[1, 1].tolist() == [114, 50, 50]
    assert out[1, 0].tolist() == [50, 114, 50]


def test_report_is_self_contained_bounded_and_escaped(output, tmp_path):
    full = build_report(ReportConfig(output, str(tmp_path / "r.html"), run="first"))
    assert full.count('<figure class="sample">') == 6
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", full)  # nothing fetched from anywhere
    assert "default-src 'none'" in full
    assert "<b>name" not in full and ">odd &lt;b&gt;name.png (40x40)" in full  # file names are escaped
    small = build_report(ReportConfig(output, str(tmp_path / "r.html"), run="first", samples=3, thumb_size=64))
    thumbs = [
        Image.open(io.BytesIO(base64.b64decode(data))) for data in re.findall(r"data:image/jpeg;base64,([^\"]+)", small)
    ]
    assert len(thumbs) == 3 and all(max(t.size) == 64 for t in thumbs)
    latest = build_report(ReportConfig(output, str(tmp_path / "r.html")))
    assert "Segmentation run second</h1>" in latest and "No image failed." in latest


def test_report_figures_are_the_runs_recorded_ones(output, tmp_path):
    run = delta_sql(output, "SELECT * FROM runs WHERE run_id = 'first'").to_pylist()[0]
    page = build_report(ReportConfig(output, str(tmp_path / "r.html"), run="first"))
    figures = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]*)</dd>", page))
    assert (
        [figures[k] for k in ("images", "skipped", "ok", "errors")]
        == [str(run[k]) for k in ("inputs", "skipped", "ok", "errors")]
        == ["8", "0", "6", "2"]
    )
    assert figures["model"] == f"tiny ({run['model_sha256'][:12]})"
    assert figures["committed"] == run["committed_at"].strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"Sample images (6 of {run['ok']} ok)" in page


def test_a_root_with_no_committed_run_is_refused(tmp_path):
    tables.ensure_tables(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no committed runs to report"):
        build_report(ReportConfig(str(tmp_path / "empty"), str(tmp_path / "r.html")))


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed here (.ci/run installs Debian's chromium "
    "package; without it the browser check cannot run)",
)
def test_report_renders_in_headless_chromium(output, tmp_path, tmp_path_factory):
    report = tmp_path / "report.html"
    assert main(["--output", output, "--run", "first", "--html", str(report)]) == 0
    pixels = screenshot(report, "1200,1400", tmp_path, tmp_path_factory)
    assert pixels.shape[:2] == (1400, 1200)
    assert pixels.std() > 20  # a blank or one-colour page would be close to 0
    gallery_colours = pixels[500:800, :1000].reshape(-1, 3)
    assert len(np.unique(gallery_colours.astype(np.uint8), axis=0)) > 500  # the thumbnails drew

    dom = chromium(tmp_path / "profile-dom", "--dump-dom", report.as_uri()).stdout
    ok_images = sum(1 for row in read_run(output, "images", "first").to_pylist() if row["status"] == "ok")
    assert len(re.findall(r'<figure class="sample"><img src="data:image/jpeg;base64,', dom)) == ok_images
    assert '<section id="gallery">' in dom
    chart = re.search(r'<svg id="class-chart".*?</svg>', dom, re.S).group(0)
    assert [m for m in re.findall(r'<g class="bar" data-class="([^"]+)"', chart)] == TINY_CLASSES
    assert len(re.findall(r"<rect ", chart)) == len(TINY_CLASSES)
    assert dom.count("<tr><td>") == 2 and "empty file (0 bytes)" in dom


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed here (.ci/run installs Debian's chromium "
    "package; without it the browser check cannot run)",
)
def test_the_review_report_shows_the_review_queue_in_headless_chromium(output, tmp_path, tmp_path_factory):
    """Issue 31: report.py --review shows the masks query.py review lists first, in its order, escaped
    and fetching nothing."""
    report = tmp_path / "review.html"
    assert main(["--output", output, "--run", "first", "--html", str(report), "--review", "--samples", "4"]) == 0
    text = report.read_text()
    assert "default-src 'none'" in text and not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", text)
    pixels = screenshot(report, "1200,1000", tmp_path, tmp_path_factory)
    assert pixels.std() > 20 and len(np.unique(pixels[400:800, :1000].reshape(-1, 3).astype(np.uint8), axis=0)) > 300

    dom = chromium(tmp_path / "profile-dom", "--dump-dom", report.as_uri()).stdout
    assert "Least trustworthy masks first (4 of 6 ok, by review score)" in dom
    shown = re.findall(r'<figcaption title="([^"]+)">', dom)
    queue = query_json(output, "review", "--run", "first", "--limit", "4")
    assert [html.unescape(uri) for uri in shown] == [row["image_uri"] for row in queue]
    assert re.findall(r"review score ([0-9.]+)", dom) == [f"{row['review_score']:.3f}" for row in queue]
    assert (
        "<b>name" not in dom and len(re.findall(r'<figure class="sample"><img src="data:image/jpeg;base64,', dom)) == 4
    )


def test_a_source_gone_since_the_run_still_shows_its_mask(tmp_path):
    mask = np.array([[0, 1, 1, 2], [0, 0, 2, 2]], np.uint8)
    sample = make_sample(
        str(tmp_path / "deleted.png"),
        4,
        2,
        encode_mask_png(mask, default_colors(3)),
        default_colors(3),
        32,
        [("thing", 0.25)],
    )
    assert "source unreadable now" in sample.note
    assert Image.open(io.BytesIO(sample.overlay_jpeg)).size == (32, 16)

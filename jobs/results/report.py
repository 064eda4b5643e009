"""A self-contained HTML report of a run: class shares, sample masks over their images, errors."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import io
from dataclasses import dataclass

import duckdb
import numpy as np
from PIL import Image

from jobs.common.errors import UserError
from jobs.output.readers import ERRORS_SQL, SUMMARY_SQL, check_run, connect, masks, read_run_record, select_scope
from jobs.output.records import RunRecord
from jobs.results.quality import SCORE_SQL
from jobs.storage.files import filesystem, read_bytes, storage_errors
from jobs.storage.settings import StorageOptions, configure_storage
from unet_core.image import DecodeError, decode_image
from unet_core.masks import decode_mask_png, default_colors

OVERLAY_ALPHA = 0.5


MAX_ERRORS_SHOWN = 200


@dataclass(frozen=True)
class ReportConfig:
    output: str
    html: str
    run: str | None = None
    samples: int = 24
    thumb_size: int = 240
    review: bool = False
    """The gallery shows the run's least trustworthy masks, by review score, instead of a sample."""
    s3_endpoint_url: str | None = None
    anonymous: bool = False


@dataclass(frozen=True)
class Sample:
    """One gallery entry: the overlay thumbnail and what the caption says."""

    image_uri: str
    width: int
    height: int
    overlay_jpeg: bytes
    top_classes: list[tuple[str, float]]
    note: str = ""
    review_score: float | None = None


def build_report(config: ReportConfig) -> str:
    """The report's HTML text."""
    configure_storage(StorageOptions(config.s3_endpoint_url, config.anonymous))
    with storage_errors(config.output):
        con = connect(config.output)
        check_run(con, config.run, config.output)
        record = read_run_record(con, config.run)
        if record is None:
            raise UserError(f"{config.output}: no committed runs to report")
        select_scope(con, record.run_id)
        classes = con.sql(SUMMARY_SQL).to_arrow_table().to_pylist()
        errors = con.sql(f"{ERRORS_SQL} LIMIT {MAX_ERRORS_SHOWN}").to_arrow_table().to_pylist()
        samples, palette = gallery(con, config, len(record.class_names))
    return render(record, classes, palette, errors, samples, config.review)


SAMPLE_SQL = """SELECT run_id, image_id, image_uri, width, height, NULL AS score FROM scope_images
WHERE status = 'ok' ORDER BY image_id LIMIT $count"""
"""A stable sample of ok images: the lowest image ids (ids are hashes, so spread over the collection)."""

REVIEW_QUEUE_SQL = f"""SELECT run_id, image_id, image_uri, width, height, {SCORE_SQL} AS score FROM scope_images
WHERE status = 'ok' AND confidence_mean IS NOT NULL ORDER BY score DESC, image_uri LIMIT $count"""
"""The images `query.py review` lists first."""


def gallery(
    con: duckdb.DuckDBPyConnection, config: ReportConfig, num_classes: int
) -> tuple[list[Sample], list[tuple[int, int, int]]]:
    """The gallery's images (a sample, or the review queue's head) with their overlays, and the class
    colours the masks carry. Only the shown masks are read: a run's masks are most of its bytes."""
    rows = con.execute(REVIEW_QUEUE_SQL if config.review else SAMPLE_SQL, {"count": config.samples}).fetchall()
    if not rows:
        return [], default_colors(num_classes)
    pngs = masks(config.output, [(run_id, image_id) for run_id, image_id, *_ in rows])
    fractions = con.execute(
        "SELECT image_id, class_name, fraction FROM scope_class_stats "
        "WHERE image_id IN (SELECT unnest($ids)) AND pixels > 0 ORDER BY fraction DESC",
        {"ids": [row[1] for row in rows]},
    ).fetchall()
    palette = mask_palette(pngs[rows[0][:2]], num_classes)
    samples = []
    for run_id, image_id, uri, width, height, score in rows:
        top = [(name, fraction) for iid, name, fraction in fractions if iid == image_id][:3]
        sample = make_sample(uri, width, height, pngs[(run_id, image_id)], palette, config.thumb_size, top)
        samples.append(dataclasses.replace(sample, review_score=score))
    return samples, palette


def mask_palette(mask_png: bytes, num_classes: int) -> list[tuple[int, int, int]]:
    """The class colours stored in a mask PNG's palette: the same ones any mask viewer shows."""
    with Image.open(io.BytesIO(mask_png)) as image:
        flat = image.getpalette() or []
    colors = [tuple(flat[i : i + 3]) for i in range(0, len(flat) - 2, 3)][:num_classes]
    return colors + default_colors(num_classes)[len(colors) :]


def make_sample(
    uri: str,
    width: int,
    height: int,
    mask_png: bytes,
    palette: list[tuple[int, int, int]],
    thumb_size: int,
    top: list[tuple[str, float]],
) -> Sample:
    """Blend the mask over a thumbnail of its image; a source that can no longer be read shows the mask alone."""
    mask = decode_mask_png(mask_png)
    scale = thumb_size / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    note = ""
    try:
        picture = Image.fromarray(decode_image(read_bytes(uri))).resize(size, Image.BILINEAR)
    except (OSError, DecodeError) as exc:
        picture, note = Image.new("RGB", size, (128, 128, 128)), f"source unreadable now ({exc.__class__.__name__})"
    overlay = blend(np.asarray(picture), np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST)), palette)
    buffer = io.BytesIO()
    Image.fromarray(overlay).save(buffer, format="JPEG", quality=82)
    return Sample(uri, width, height, buffer.getvalue(), top, note)


def blend(picture: np.ndarray, mask: np.ndarray, palette: list[tuple[int, int, int]]) -> np.ndarray:
    """Tint each pixel with its class colour; classes coloured black (VOC background) are left untinted."""
    colors = np.array(palette, np.float32)
    tint = colors[np.minimum(mask, len(colors) - 1)]
    alpha = np.where(tint.any(axis=-1, keepdims=True), OVERLAY_ALPHA, 0.0)
    return (picture * (1 - alpha) + tint * alpha).round().astype(np.uint8)


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
dl.figures { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; margin: 12px 0; }
dl.figures dt { color: #666; } dl.figures dd { margin: 0; font-variant-numeric: tabular-nums; }
.legend span { display: inline-block; margin: 0 14px 4px 0; }
.swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #555; vertical-align: -2px;
          margin-right: 5px; }
#gallery { display: flex; flex-wrap: wrap; gap: 12px; }
figure.sample { margin: 0; background: #fff; border: 1px solid #ddd; padding: 6px; max-width: 260px; }
figure.sample img { display: block; image-rendering: pixelated; }
figcaption { font-size: 12px; word-break: break-all; margin-top: 4px; } figcaption .note { color: #b00; }
figcaption .score { color: #a60; font-variant-numeric: tabular-nums; }
table.errors { border-collapse: collapse; font-size: 13px; }
table.errors td, table.errors th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
"""


def render(
    record: RunRecord,
    classes: list[dict],
    palette: list[tuple[int, int, int]],
    errors: list[dict],
    samples: list[Sample],
    review: bool = False,
) -> str:
    """The page, from the run's row of `runs` and what was read for its scope."""
    figures = [
        ("images", record.inputs),
        ("skipped", record.skipped),
        ("ok", record.ok),
        ("errors", record.errors),
        ("model", f"{record.model_name} ({str(record.model_sha256)[:12]})"),
        ("model URI", record.model_uri),
        ("started", _when(record.started_at)),
        ("committed", _when(record.committed_at)),
        ("wall time", f"{record.wall_seconds or 0:.1f} s"),
        ("throughput", "" if record.images_per_second is None else f"{record.images_per_second} images/s"),
    ]
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">",
        f"<title>Segmentation run {e(record.run_id)}</title><style>{CSS}</style></head><body>",
        f"<h1>Segmentation run {e(record.run_id)}</h1>",
        '<dl class="figures">' + "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in figures) + "</dl>",
        "<h2>Pixels per class</h2>",
        class_chart(classes, palette),
        legend(classes, palette),
        (
            f"<h2>Least trustworthy masks first ({len(samples)} of {record.ok} ok, by review score)</h2>"
            if review
            else f"<h2>Sample images ({len(samples)} of {record.ok} ok)</h2>"
        ),
        '<section id="gallery">' + "".join(sample_figure(s) for s in samples) + "</section>",
        error_section(errors, record.errors or 0),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _when(moment: dt.datetime | None) -> str:
    """A timestamp as people read it: UTC to the second."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def class_chart(classes: list[dict], palette: list[tuple[int, int, int]]) -> str:
    """Horizontal bars of each class's share of all pixels, in the class colours, as inline SVG."""
    bar_height, gap, label_width, bar_width = 20, 6, 160, 420
    height = len(classes) * (bar_height + gap) + gap
    rows = []
    for index, row in enumerate(classes):
        y = gap + index * (bar_height + gap)
        share = row["share"] or 0.0
        color = "#%02x%02x%02x" % palette[row["class_id"]] if row["class_id"] < len(palette) else "#888"
        rows.append(
            f'<g class="bar" data-class="{html.escape(row["class_name"])}">'
            f'<text x="{label_width - 8}" y="{y + 15}" text-anchor="end">{html.escape(row["class_name"])}</text>'
            f'<rect x="{label_width}" y="{y}" width="{max(share * bar_width, 1):.1f}" height="{bar_height}" '
            f'fill="{color}" stroke="#333"/>'
            f'<text x="{label_width + share * bar_width + 6:.1f}" y="{y + 15}">{share:.1%} '
            f"({row['pixels']:,} px, {row['images']:,} images)</text></g>"
        )
    return (
        f'<svg id="class-chart" xmlns="http://www.w3.org/2000/svg" width="{label_width + bar_width + 260}" '
        f'height="{height}" font-size="13" role="img" aria-label="share of pixels per class">'
        + "".join(rows)
        + "</svg>"
    )


def legend(classes: list[dict], palette: list[tuple[int, int, int]]) -> str:
    items = "".join(
        f'<span><i class="swatch" style="background:#{"%02x%02x%02x" % palette[row["class_id"]]}"></i>'
        f"{html.escape(row['class_name'])}</span>"
        for row in classes
        if row["class_id"] < len(palette)
    )
    return f'<p class="legend" id="legend">{items}</p>'


def sample_figure(sample: Sample) -> str:
    data = base64.b64encode(sample.overlay_jpeg).decode("ascii")
    classes = ", ".join(f"{html.escape(name)} {fraction:.0%}" for name, fraction in sample.top_classes)
    note = f'<br><span class="note">{html.escape(sample.note)}</span>' if sample.note else ""
    if sample.review_score is not None:
        note = f'<br><span class="score">review score {sample.review_score:.3f}</span>{note}'
    name = sample.image_uri.rsplit("/", 1)[-1]
    return (
        f'<figure class="sample"><img src="data:image/jpeg;base64,{data}" alt="{html.escape(name)} with its mask">'
        f'<figcaption title="{html.escape(sample.image_uri)}">{html.escape(name)} ({sample.width}x{sample.height})'
        f"<br>{classes}{note}</figcaption></figure>"
    )


def error_section(errors: list[dict], total: int) -> str:
    if not errors:
        return '<h2>Errors</h2><p id="errors">No image failed.</p>'
    rows = "".join(
        f"<tr><td>{html.escape(r['image_uri'])}</td><td>{html.escape(r['error'] or '')}</td></tr>" for r in errors
    )
    more = (
        f"<p>{total - len(errors):,} more not shown; list them all with query.py errors.</p>"
        if total > len(errors)
        else ""
    )
    return (
        f'<h2>Errors ({total:,})</h2><table class="errors" id="errors"><tr><th>image</th><th>reason</th></tr>'
        f"{rows}</table>{more}"
    )


def write_text(uri: str, text: str) -> None:
    fs, path = filesystem(uri)
    with fs.open(path, "w", encoding="utf-8") as handle:
        handle.write(text)

"""Write one self-contained HTML report of a committed run: figures, class chart, errors, mask overlays.

    python jobs/report.py --output s3://bucket/seg/ --html report.html [--run ID] [--samples 24] [--review]

Everything is inline (CSS, an SVG bar chart, JPEG thumbnails as data URIs) and the page's
Content-Security-Policy forbids any network fetch, so the file can be mailed or archived as is.
The gallery and the error list are bounded, so the file stays small for million-image runs.
"""

from __future__ import annotations

import argparse

from jobs.cli.flags import add_storage_flags, add_version_flag, config_from
from jobs.cli.main import run_main
from jobs.cli.types import int_between
from jobs.results.report import ReportConfig, build_report, write_text
from jobs.storage.files import storage_errors


def parse_args(argv: list[str] | None = None) -> ReportConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_flag(parser)
    parser.add_argument("--output", required=True, metavar="URI", help="output root of the segment job")
    parser.add_argument("--html", required=True, metavar="FILE", help="where to write the report (local or s3://)")
    parser.add_argument("--run", default=None, metavar="ID", help="committed run to report (default: the latest)")
    parser.add_argument(
        "--samples", type=int_between(1, 200), default=24, help="images in the gallery, 1..200 (default 24)"
    )
    parser.add_argument(
        "--thumb-size",
        type=int_between(32, 1024),
        default=240,
        help="longest side of a gallery thumbnail in pixels (default 240)",
    )
    parser.add_argument(
        "--review",
        action="store_true",
        help="the gallery shows the run's least trustworthy masks first, by review score (the order "
        "of query.py review), instead of a sample",
    )
    add_storage_flags(parser)
    return config_from(ReportConfig, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    text = build_report(config)
    with storage_errors(config.html):
        write_text(config.html, text)
    print(f"wrote {config.html} ({len(text.encode('utf-8')) / 1024:.0f} KiB)")
    return 0


def entry() -> None:
    run_main(main)


if __name__ == "__main__":
    entry()

"""Write each image's mask as its own palette PNG, mirroring the inputs' folder layout, for tools that want files.

    python jobs/export_masks.py --output s3://bucket/seg/ --dest masks/ [--run ID] [--relative-to s3://bucket/photos]

`photos/2026/a.jpg` becomes `DEST/2026/a.png` (pixel value = class id, palette = class colours);
`DEST/masks.csv` maps every image URI to its mask file. Paths are made safe: `..`, `.` and
empty parts of a name are never followed, so no file lands outside DEST. Two images that would
get the same mask name (`a.jpg` and `a.png`) both get their image id added: `a-<id8>.png`.
"""

from __future__ import annotations

import argparse

from jobs.cli.flags import add_storage_flags, add_version_flag, config_from
from jobs.cli.main import run_main
from jobs.results.export import INDEX_NAME, ExportConfig, export


def parse_args(argv: list[str] | None = None) -> ExportConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_flag(parser)
    parser.add_argument("--output", required=True, metavar="URI", help="output root of the segment job")
    parser.add_argument("--dest", required=True, metavar="URI", help="folder or prefix to write the masks under")
    parser.add_argument(
        "--run", default=None, metavar="ID", help="export one committed run (default: the current mask of every image)"
    )
    parser.add_argument(
        "--relative-to",
        default=None,
        metavar="URI",
        help="input root whose layout is mirrored (default: the images' common folder)",
    )
    add_storage_flags(parser)
    return config_from(ExportConfig, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    count = export(config)
    print(f"wrote {count} masks and {INDEX_NAME} under {config.dest}")
    return 0


def entry() -> None:
    run_main(main)


if __name__ == "__main__":
    entry()

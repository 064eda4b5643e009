"""Benchmark 3: segment.py with default flags against the loop a user would write from the seed document.

    python bench/vs_user_loop.py [--count 16] [--size 512]

The user's loop: open each image with Pillow, letterbox it, `model.predict` it, save the mask as a
PNG and append its class statistics to a Parquet file. Same images, same model.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import print_table, run_segment, seed_artifact, write_images

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402


def user_loop(artifact: str, folder: Path, output: Path) -> float:
    """What the seed's practice section leads to; returns its wall seconds, model load included."""
    import keras

    started = time.perf_counter()
    model = keras.models.load_model(f"{artifact}/model.keras")
    size = model.input_shape[1]
    output.mkdir(parents=True)
    writer = None
    for path in sorted(folder.glob("*.jpg")):
        image = Image.open(path).convert("RGB")
        scale = size / max(image.size)
        inner = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        canvas = Image.new("RGB", (size, size))
        left, top = (size - inner.width) // 2, (size - inner.height) // 2
        canvas.paste(inner, (left, top))
        probs = model.predict(np.asarray(canvas, np.float32)[None] / 255.0, verbose=0)[0]
        mask = probs.argmax(-1)[top : top + inner.height, left : left + inner.width].astype(np.uint8)
        mask = np.asarray(Image.fromarray(mask).resize(image.size, Image.NEAREST))
        Image.fromarray(mask).save(output / f"{path.stem}.png")
        counts = np.bincount(mask.ravel(), minlength=probs.shape[-1])
        table = pa.table(
            {
                "image": [path.name] * len(counts),
                "class_id": np.arange(len(counts)),
                "pixels": counts,
                "fraction": counts / mask.size,
            }
        )
        writer = writer or pq.ParquetWriter(output / "stats.parquet", table.schema)
        writer.write_table(table)
    writer.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--base-filters", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    artifact = seed_artifact(work, args.size, args.base_filters)
    images = write_images(work / "images", args.count, 480, 640)
    loop = user_loop(artifact, images, work / "loop")
    ours, manifest = run_segment("--input", str(images), "--output", str(work / "ours"), "--model", artifact)
    print(
        f"seed U-Net {args.size}x{args.size} base {args.base_filters}, {args.count} JPEG images 640x480; "
        "the loop timed from its model load (TensorFlow already imported), ours as a whole process (Python, Ray and replica start)"
    )
    print_table(
        ["what", "seconds", "images/s", "speedup"],
        [
            ["user's loop (model.predict per image, float32)", loop, args.count / loop, 1.0],
            [f"segment.py, default flags ({manifest['config']['precision']})", ours, args.count / ours, loop / ours],
        ],
    )


if __name__ == "__main__":
    main()

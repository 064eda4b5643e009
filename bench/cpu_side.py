"""Benchmark: the CPU side of each image, stage by stage, against its floor.

    python bench/cpu_side.py [--sizes 640x480 4032x3024] [--images 8] [--repeats 3] [--vs CHECKOUT]

On a GPU node the model is fast and every image must first be read, decoded and letterboxed, then
mapped back, encoded and counted on the node's CPUs. This measures that work on one core, for
photo-like JPEG scenes (quality 90) at each size, a 512 model input and the seed's 21 classes. The
model's output is stood in for by the scene's true mask letterboxed to 512 with 5% of its pixels
set to random classes (a model's speckle), and float16 confidences.

First, per stage, milliseconds per image:
- previous: the path as it was: decode at full size, letterbox, mask and confidence gathered to full
  size, statistics over them, a PNG at zlib level 6;
- today: `decode_letterboxed` (JPEG DCT scaling), statistics in model space weighted by the pixels
  each model pixel stands for, the mask repeated to full size, a PNG with zlib's RLE strategy;
- model-res: today's with `--mask-resolution model` (no full-size mask at all);
- the floor: decoding at the scale the model needs and resizing into its input, which any path
  must do (today's first stage is exactly that).
Then the job's own stages, `prepare` + `finalize` as Ray Data calls them on batches of 8, per image
and against the floor; with --vs, another checkout's stages as well, in a process of its own.
Targets: today's total at most 2x the floor at both sizes, model-res at most 1.3x.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

INPUT, CLASSES, SPECKLE = 512, 21, 0.05


def scenes(folder: Path, width: int, height: int, count: int) -> tuple[list[Path], list[np.ndarray]]:
    """JPEG scenes and, per scene, the model's stand-in output: its true mask letterboxed, speckled."""
    from unet_core.image import letterbox
    from unet_core.synthetic import make_scene

    rng = np.random.default_rng(width)
    paths, masks = [], []
    for index in range(count):
        image, truth = make_scene(rng, height, width)
        paths.append(folder / f"scene_{width}x{height}_{index}.jpg")
        Image.fromarray(image).save(paths[-1], quality=90)
        mask, _ = letterbox(truth, INPUT, Image.NEAREST)
        masks.append(
            np.where(rng.random(mask.shape) < SPECKLE, rng.integers(0, CLASSES, mask.shape), mask).astype(np.uint8)
        )
    return paths, masks


def gathered(values: np.ndarray, box) -> np.ndarray:
    """The mapping back as it was: a gather at each original pixel's centre."""

    def nearest(original: int, scaled: int) -> np.ndarray:
        return np.minimum(((np.arange(original) + 0.5) * (scaled / original)).astype(np.int64), scaled - 1)

    return values[
        (box.top + nearest(box.height, box.inner_height))[:, None],
        (box.left + nearest(box.width, box.inner_width))[None, :],
    ]


def png_level_6(mask: np.ndarray, palette: list[int]) -> bytes:
    image = Image.fromarray(mask, mode="P")
    image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def stage_times(paths: list[Path], masks: list[np.ndarray], repeats: int) -> dict[str, dict[str, float]]:
    """Per path and stage, the median over `repeats` of the mean ms per image."""
    from unet_core.image import decode_image, decode_letterboxed, letterbox, unletterbox
    from jobs.inference.stages import stored_mask
    from unet_core.masks import class_statistics, default_colors, encode_mask_png, letterboxed_statistics

    colors = default_colors(CLASSES)
    palette = [channel for color in colors for channel in color]
    data = [path.read_bytes() for path in paths]
    confidence = [np.random.default_rng(i).uniform(0.3, 1, (INPUT, INPUT)).astype(np.float16) for i in range(len(data))]
    boxes = [decode_letterboxed(blob, INPUT)[1] for blob in data]
    full = [unletterbox(mask, box) for mask, box in zip(masks, boxes)]
    full_confidence = [unletterbox(values, box) for values, box in zip(confidence, boxes)]
    stages = {
        "previous": {
            "decode + letterbox": lambda i: letterbox(decode_image(data[i]), INPUT),
            "mask to full size": lambda i: (gathered(masks[i], boxes[i]), gathered(confidence[i], boxes[i])),
            "class statistics": lambda i: class_statistics(full[i], full_confidence[i], CLASSES),
            "mask PNG": lambda i: png_level_6(full[i], palette),
        },
        "today": {
            "decode + letterbox": lambda i: decode_letterboxed(data[i], INPUT),
            "mask to full size": lambda i: unletterbox(masks[i], boxes[i]),
            "class statistics": lambda i: letterboxed_statistics(masks[i], confidence[i], boxes[i], CLASSES),
            "mask PNG": lambda i: encode_mask_png(full[i], colors),
        },
    }
    stages["model-res"] = {
        **stages["today"],
        "mask to full size": lambda i: None,
        "mask PNG": lambda i: encode_mask_png(stored_mask(masks[i], boxes[i], False), colors),
    }
    kib = {
        path: np.mean([len(calls["mask PNG"](i)) for i in range(len(data))]) / 1024 for path, calls in stages.items()
    }
    print(
        f"mask PNG, KiB per image: previous (zlib level 6) {kib['previous']:.1f}, today (RLE) {kib['today']:.1f}, "
        f"model-res {kib['model-res']:.1f}"
    )
    return {
        path: {stage: per_image(call, len(data), repeats) for stage, call in calls.items()}
        for path, calls in stages.items()
    }


def per_image(call, count: int, repeats: int) -> float:
    best = []
    for _ in range(repeats):
        started = time.perf_counter()
        for index in range(count):
            call(index)
        best.append((time.perf_counter() - started) * 1000 / count)
    return float(np.median(best))


def job_stages(paths: list[str], masks_file: str, repeats: int) -> float:
    """`prepare` + `finalize` of the checkout on the path, as Ray Data calls them: ms per image."""
    from jobs.inference.model import ModelInfo
    from jobs.inference.stages import finalize, prepare
    from unet_core.masks import default_colors

    masks = np.load(masks_file)
    model = ModelInfo(
        "model", "bench", "0" * 64, tuple(f"class_{i}" for i in range(CLASSES)), tuple(default_colors(CLASSES)), INPUT
    )
    confidence = np.random.default_rng(0).uniform(0.3, 1, masks.shape).astype(np.float16)

    def one_pass() -> None:
        for start in range(0, len(paths), 8):
            rows = slice(start, start + 8)
            batch = {
                "image_uri": np.array(paths[rows], dtype=object),
                "source_size": np.array([os.path.getsize(p) for p in paths[rows]], np.int64),
            }
            prepared = prepare(batch, INPUT, 100_000_000, 1 << 30)
            finalize({**prepared, "mask": masks[rows], "confidence": confidence[rows]}, model)

    return per_image(lambda _: one_pass(), 1, repeats) / len(paths)


def job_stages_elsewhere(checkout: str, paths: list[Path], masks: list[np.ndarray], repeats: int, work: Path) -> float:
    """The same, with another checkout's `jobs` and `unet_core`, in a fresh process."""
    masks_file = work / "masks.npy"
    np.save(masks_file, np.stack(masks))
    env = {**os.environ, "PYTHONPATH": checkout}
    done = subprocess.run(
        [sys.executable, __file__, "--job-stages", str(masks_file), "--repeats", str(repeats), *map(str, paths)],
        env=env,
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])["ms_per_image"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["640x480", "4032x3024"], metavar="WxH")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vs", metavar="CHECKOUT", help="also time another checkout's job stages")
    parser.add_argument(
        "--model-rate",
        type=float,
        metavar="IMAGES_PER_S",
        help="a replica's measured rate (bench/gpu_check.sh passes the GPU's): print the cores "
        "per GPU the CPU side needs at it",
    )
    parser.add_argument("--job-stages", metavar="MASKS.npy", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job_stages:  # the child of --vs: only this checkout's stages
        print(json.dumps({"ms_per_image": job_stages(args.paths, args.job_stages, args.repeats)}))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import print_table

    with tempfile.TemporaryDirectory() as work:
        for size in args.sizes:
            width, height = map(int, size.split("x"))
            paths, masks = scenes(Path(work), width, height, args.images)
            times = stage_times(paths, masks, args.repeats)
            floor = times["today"]["decode + letterbox"]
            rows = [[stage, *(times[path][stage] for path in times)] for stage in times["today"]]
            totals = [sum(times[path].values()) for path in times]
            rows += [["total", *totals], ["total / floor", *(total / floor for total in totals)]]
            print(
                f"\n{width}x{height} JPEG, {args.images} images, {INPUT} input, {CLASSES} classes: ms per image "
                f"(floor: decode at the needed scale + resize into the input = {floor:.2f} ms)"
            )
            print_table(["stage", "previous", "today", "model-res"], rows)
            np.save(Path(work) / "masks.npy", np.stack(masks))
            stages = [
                ["this checkout", job_stages([str(p) for p in paths], str(Path(work) / "masks.npy"), args.repeats)]
            ]
            if args.vs:
                stages.append([args.vs, job_stages_elsewhere(args.vs, paths, masks, args.repeats, Path(work))])
            print(f"\n{width}x{height}: the job's prepare + finalize, batches of 8")
            print_table(["checkout", "ms per image", "x floor"], [[name, ms, ms / floor] for name, ms in stages])
            if args.model_rate:
                cores = {path: sum(times[path].values()) / 1000 * args.model_rate for path in times}
                print(
                    f"\n{width}x{height} at {args.model_rate:g} images/s per replica: cores per GPU for its CPU "
                    f"side: {cores['today']:.1f} ({cores['model-res']:.1f} with --mask-resolution model, "
                    f"{cores['previous']:.1f} on the previous path)"
                )


if __name__ == "__main__":
    main()

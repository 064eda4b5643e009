"""How far bfloat16 (what --precision auto picks on CPUs with bf16) moves a trained model's masks from float32.

    python bench/precision_agreement.py --model ARTIFACT --images DIR --masks DIR [--mask-map 255:1]

Runs the same letterboxed images through the model in both precisions and reports the share of
pixels whose class agrees, and each precision's mIoU against the true masks.
"""

from __future__ import annotations

import argparse

import numpy as np  # noqa: E402
from common import print_table

from jobs.training import data as training_data  # noqa: E402
from jobs.storage.files import read_bytes  # noqa: E402
from unet_core import decode_image, letterbox, load_artifact, unletterbox  # noqa: E402
from unet_core.metrics import confusion_matrix, mean_iou, pixel_accuracy  # noqa: E402
from unet_core.predict import Predictor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--masks", required=True)
    parser.add_argument("--mask-map", default=None)
    parser.add_argument("--ignore-index", type=int, default=None)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    artifact = load_artifact(args.model)
    classes, size = artifact.metadata.num_classes, artifact.metadata.input_size[0]
    lookup = training_data.parse_mask_map(args.mask_map)
    pairs = training_data.pair_by_stem(args.images, args.masks).to_pylist()
    images = [decode_image(read_bytes(p["image_uri"])) for p in pairs]
    truths = [training_data.read_mask(p["mask_uri"], lookup) for p in pairs]
    boxed = [letterbox(image, size) for image in images]
    masks = {}
    for precision in ("float32", "bfloat16"):
        predicted = Predictor(artifact, args.batch, precision).predict(np.stack([b for b, _ in boxed])).masks
        masks[precision] = [unletterbox(m, box) for m, (_, box) in zip(predicted, boxed)]
    agree = sum(int((a == b).sum()) for a, b in zip(masks["float32"], masks["bfloat16"]))
    total = sum(m.size for m in masks["float32"])
    rows = []
    for precision, predicted in masks.items():
        confusion = sum(confusion_matrix(t, p, classes, args.ignore_index) for t, p in zip(truths, predicted))
        rows.append([precision, mean_iou(confusion), pixel_accuracy(confusion)])
    print(
        f"{len(pairs)} labelled images, model {artifact.metadata.name} ({artifact.metadata.sha256[:12]}); "
        f"bfloat16 vs float32 pixel agreement {agree / total:.5f}, mIoU difference {rows[1][1] - rows[0][1]:+.5f}"
    )
    print_table(["precision", "mIoU", "pixel accuracy"], rows)


if __name__ == "__main__":
    main()

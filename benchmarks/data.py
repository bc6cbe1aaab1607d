"""Throughput of the data path: synthetic generation, builder preparation, and the phrase-mask transform.

    python -m benchmarks.data                      # 640x480, 200 images
    python -m benchmarks.data --num-images 500 --height 480 --width 640

Prints samples/s of (1) the synthetic generator, (2) the builder (JSON scan + Arrow writing), with and
without decoding every image and panoptic PNG (``check_images``),
(3) iterating the prepared dataset with ``decode_phrase_masks`` (image + PNG decoding + masks),
and (4) the mask transform alone on already decoded panoptic PNGs.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from narrative_grounding.data import PanopticNarrativeGroundingBuilder, decode_phrase_masks, panoptic_id_map
from narrative_grounding.data.masks import phrase_masks_from_id_map
from narrative_grounding.data.synthetic import generate_synthetic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--level", default="hard")
    parser.add_argument("--num-workers", type=int, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        stats = generate_synthetic_dataset(
            f"{root}/data",
            num_train=args.num_images,
            num_validation=0,
            image_size=(args.height, args.width),
            level=args.level,
            num_workers=args.num_workers,
        )
        print(
            f"generator: {args.num_images / stats.seconds:8.1f} images/s ({stats.num_workers} workers, "
            f"{args.width}x{args.height}, {stats.splits['train']['phrases_per_image']:.1f} phrases/image)"
        )

        for check_images in (True, False):
            start = time.perf_counter()
            builder = PanopticNarrativeGroundingBuilder(
                data_dir=f"{root}/data", cache_dir=f"{root}/cache-{check_images}", check_images=check_images
            )
            builder.download_and_prepare()
            dataset = builder.as_dataset()["train"]
            elapsed = time.perf_counter() - start
            what = "decoding every image + PNG" if check_images else "check_images=False"
            print(
                f"builder:   {dataset.num_rows / elapsed:8.1f} samples/s (scan + Arrow writing, bytes embedded, "
                f"{what})"
            )

        transformed = dataset.with_transform(decode_phrase_masks)
        start = time.perf_counter()
        pixels = 0
        for index in range(0, dataset.num_rows, 8):
            batch = transformed[index : index + 8]
            pixels += sum(m.size for m in batch["phrase_masks"])
        elapsed = time.perf_counter() - start
        print(
            f"transform: {dataset.num_rows / elapsed:8.1f} samples/s (read rows, decode JPEG + PNG, masks; batches of 8)"
        )

        pngs = [
            np.asarray(example["panoptic_png"])
            for example in dataset.select(range(min(50, dataset.num_rows)))
        ]
        phrases = [
            [p["segment_ids"] for p in example["phrases"]] for example in dataset.select(range(len(pngs)))
        ]
        start = time.perf_counter()
        for png, segment_ids in zip(pngs, phrases, strict=True):
            phrase_masks_from_id_map(panoptic_id_map(png), segment_ids)
        elapsed = time.perf_counter() - start
        print(
            f"masks:     {len(pngs) / elapsed:8.1f} samples/s (id map + P x H x W masks from a decoded PNG)"
        )


if __name__ == "__main__":
    main()

"""Processor throughput: a 640x480 JPEG + a 150-word narrative (12 phrases) -> model inputs, samples/s.

    python -m benchmarks.processor [--repeats 50] [--threads N]

Measures, one sample at a time (the way a DataLoader worker calls it): JPEG decoding + PngImageProcessor
(resize to 640x640, normalise) + tokenisation and phrase alignment (max_length 300), then the image
processor and the text side alone, and the keep-aspect-ratio mode and overlapping windows.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import PIL.Image
import torch
from transformers import AutoTokenizer

from narrative_grounding.factory import variant_path
from narrative_grounding.modeling.image_processing_png import PngImageProcessor
from narrative_grounding.modeling.processing_png import PngProcessor

from ._common import print_versions

TOKENIZER_DIR = variant_path("epng-tiny")  # the tiny tokenizer ships in the tiny variants' folders
SENTENCES = [
    "In this picture we can see a woman standing on the road and holding a red umbrella.",
    "Behind her there are two cars parked near the building, and a man is walking with a dog.",
    "On the left side of the image we can see a tree, some plants and a wooden bench.",
    "In the background there is a tall building with glass windows, a street light and the sky with clouds.",
    "At the bottom we can see the grass, a few stones and a small table with a cup on it.",
    "On the right side there is a bicycle near the fence and a boy wearing a blue shirt.",
    "We can also see a sign board, a pole and the sidewalk next to the road.",
]
PHRASES = [
    "a woman", "the road", "a red umbrella", "two cars", "the building", "a man", "a dog", "a tree",
    "a wooden bench", "the sky", "the grass", "a bicycle",
]  # fmt: skip


def jpeg_bytes() -> bytes:
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:480, 0:640]
    image = np.stack([ys % 256, xs % 256, (ys + xs) % 256], -1) + rng.integers(0, 30, (480, 640, 3))
    buffer = io.BytesIO()
    PIL.Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def narrative() -> str:
    words: list[str] = []
    for sentence in SENTENCES * 3:
        words.extend(sentence.split())
        if len(words) >= 150:
            break
    return " ".join(words[:150])


def rate(function, repeats: int) -> float:
    function()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    print_versions()
    if args.threads:
        torch.set_num_threads(args.threads)
    data, text = jpeg_bytes(), narrative()
    processor = PngProcessor(PngImageProcessor(), AutoTokenizer.from_pretrained(TOKENIZER_DIR))
    phrases = [phrase for phrase in PHRASES if phrase in text]

    def full() -> None:
        processor(images=PIL.Image.open(io.BytesIO(data)), text=text, phrases=phrases)

    def image_only() -> None:
        processor.image_processor(PIL.Image.open(io.BytesIO(data)))

    def text_only() -> None:
        processor(text=text, phrases=phrases)

    def keep_aspect() -> None:
        processor(images=PIL.Image.open(io.BytesIO(data)), text=text, phrases=phrases, keep_aspect_ratio=True)

    def windows() -> None:
        processor(text=text, phrases=phrases, overlapping_windows=True, max_length=64)

    encoding = processor(images=PIL.Image.open(io.BytesIO(data)), text=text, phrases=phrases)
    print(
        f"input: 640x480 JPEG ({len(data) // 1024} KiB), narrative of {len(text.split())} words / "
        f"{int(encoding['attention_mask'].sum())} tokens, {len(phrases)} phrases; torch threads {torch.get_num_threads()}"
    )
    for name, function in (
        ("processor (decode + image + text)", full),
        ("image processor only (decode + 640x640)", image_only),
        ("text side only", text_only),
        ("processor, keep_aspect_ratio", keep_aspect),
        ("text, overlapping windows of 64", windows),
    ):
        print(f"{name:42s} {rate(function, args.repeats):8.1f} samples/s")


if __name__ == "__main__":
    main()

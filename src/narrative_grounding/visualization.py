"""Pictures of a grounding: every phrase's mask over the image in its own colour, and the narrative under
the image with each phrase written in its mask's colour (as the figures of the EPNG paper).

    from narrative_grounding.visualization import draw_grounding
    picture = draw_grounding(image, result, narrative)   # result: one post-processing / pipeline dict
    picture.save("grounding.png")
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

from .modeling.image_processing_png import image_to_tensor
from .modeling.processing_png import rle_to_mask

TEXT_COLOUR = (30, 30, 30)
BACKGROUND = (255, 255, 255)


def phrase_colours(count: int) -> list[tuple[int, int, int]]:
    """`count` distinct, saturated RGB colours: hues spaced by the golden ratio, so neighbours differ most."""
    colours = []
    for index in range(count):
        hue = (index * 0.618033988749895) % 1.0
        value = 0.95 if index % 2 == 0 else 0.75  # alternate brightness: more separable with many phrases
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, value)
        colours.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colours


def _dense_masks(masks: Any, size: tuple[int, int]) -> np.ndarray:
    """P x H x W bool from a tensor / array or a list of COCO RLE dicts."""
    if isinstance(masks, (list, tuple)):
        planes = [rle_to_mask(rle) if isinstance(rle, dict) else np.asarray(rle, dtype=bool) for rle in masks]
        return np.stack(planes) if planes else np.zeros((0, *size), dtype=bool)
    if isinstance(masks, torch.Tensor):
        masks = masks.cpu().numpy()
    return np.asarray(masks, dtype=bool)


def _font(size: int) -> PIL.ImageFont.ImageFont | PIL.ImageFont.FreeTypeFont:
    try:
        return PIL.ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return PIL.ImageFont.load_default()


def _layout(
    pieces: list[tuple[str, tuple[int, int, int]]], font: Any, width: int
) -> list[list[tuple[str, tuple[int, int, int]]]]:
    """Greedy word wrap of coloured pieces into lines no wider than `width` pixels."""
    lines: list[list[tuple[str, tuple[int, int, int]]]] = [[]]
    used = 0.0
    for text, colour in pieces:
        for word in text.split(" "):
            token = word + " "
            length = font.getlength(token)
            if used + length > width and used > 0:
                lines.append([])
                used = 0.0
            lines[-1].append((token, colour))
            used += length
    return lines


def draw_grounding(
    image: Any,
    result: dict[str, Any],
    narrative: str | None = None,
    *,
    alpha: float = 0.5,
    colours: Sequence[tuple[int, int, int]] | None = None,
    font_size: int | None = None,
    outline: bool = True,
) -> PIL.Image.Image:
    """The image with each phrase's mask blended in its colour, and the narrative printed under it with each
    phrase in its mask's colour.

    image: PIL image, array, tensor or path (EXIF orientation applied, as the processor does).
    result: a dict of the documented schema (`masks` P x H x W bool or COCO RLE list, `phrases`, `spans`);
        masks must have the image's size.
    narrative: the text to print; without it, the phrases are printed one after another.
    alpha: opacity of the mask colours; outline: draw each mask's boundary in full colour.
    Returns a new RGB PIL image (the image's width, taller by the text panel).
    """
    picture = image_to_tensor(image).permute(1, 2, 0).float().numpy()  # H x W x 3 on 0..255
    height, width = picture.shape[:2]
    masks = _dense_masks(result["masks"], (height, width))
    if masks.shape[0] and masks.shape[1:] != (height, width):
        raise ValueError(f"masks are {masks.shape[1]}x{masks.shape[2]} but the image is {height}x{width}")
    phrases = list(result.get("phrases") or [f"phrase {index}" for index in range(len(masks))])
    palette = list(colours) if colours is not None else phrase_colours(len(masks))
    if len(palette) < len(masks):
        raise ValueError(f"{len(palette)} colours for {len(masks)} phrases")

    blended = picture.copy()
    for mask, colour in zip(masks, palette, strict=False):
        blended[mask] = (1 - alpha) * blended[mask] + alpha * np.asarray(colour, dtype=np.float32)
        if outline:
            edge = mask & ~_eroded(mask)
            blended[edge] = colour
    canvas_image = PIL.Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))

    # The narrative, phrases coloured: spans locate them; without a narrative, list the phrases.
    font = _font(font_size or max(12, width // 40))
    pieces: list[tuple[str, tuple[int, int, int]]] = []
    if narrative is not None and result.get("spans") and all(span is not None for span in result["spans"]):
        cursor = 0
        for index in sorted(range(len(result["spans"])), key=lambda i: result["spans"][i][0]):
            start, end = result["spans"][index]
            if start > cursor:
                pieces.append((narrative[cursor:start], TEXT_COLOUR))
            pieces.append((narrative[start:end], palette[index]))
            cursor = max(cursor, end)
        if cursor < len(narrative):
            pieces.append((narrative[cursor:], TEXT_COLOUR))
    elif narrative is not None:
        pieces.append((narrative, TEXT_COLOUR))
    else:
        pieces = [(f"{phrase};", palette[index]) for index, phrase in enumerate(phrases)]
    margin = max(4, width // 100)
    lines = _layout([(text.replace("\n", " "), colour) for text, colour in pieces], font, width - 2 * margin)
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (12, 3)
    line_height = ascent + descent + 2
    panel = len(lines) * line_height + 2 * margin
    out = PIL.Image.new("RGB", (width, height + panel), BACKGROUND)
    out.paste(canvas_image, (0, 0))
    draw = PIL.ImageDraw.Draw(out)
    y = height + margin
    for line in lines:
        x = float(margin)
        for token, colour in line:
            draw.text((x, y), token, fill=colour, font=font)
            x += font.getlength(token)
        y += line_height
    return out


def _eroded(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion (a pixel stays if it and its 4 neighbours are inside)."""
    padded = np.pad(mask, 1, constant_values=False)
    return padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


__all__ = ["draw_grounding", "phrase_colours"]

"""visualization.draw_grounding: masks in distinct colours over the image, the narrative coloured under it."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from narrative_grounding.modeling.processing_png import mask_to_rle
from narrative_grounding.visualization import draw_grounding, phrase_colours


def grounding() -> tuple[PIL.Image.Image, dict, str]:
    image = PIL.Image.fromarray(np.full((60, 200, 3), 128, dtype=np.uint8))
    masks = torch.zeros(2, 60, 200, dtype=torch.bool)
    masks[0, 10:30, 10:60] = True
    masks[1, 30:50, 120:190] = True
    narrative = "In this picture we can see a black bear on this tree."
    result = {"masks": masks, "scores": torch.tensor([0.9, 0.8]), "phrases": ["a black bear", "this tree"]}
    result["spans"] = [(27, 39), (43, 52)]
    return image, result, narrative


def test_colours_are_distinct() -> None:
    colours = phrase_colours(30)
    assert len(set(colours)) == 30
    assert all(0 <= channel <= 255 for colour in colours for channel in colour)


def test_masks_and_phrases_are_drawn_in_their_colours() -> None:
    image, result, narrative = grounding()
    picture = draw_grounding(image, result, narrative, alpha=0.5)
    assert isinstance(picture, PIL.Image.Image) and picture.mode == "RGB"
    assert picture.width == 200 and picture.height > 60  # a text panel under the image
    pixels = np.asarray(picture).astype(int)
    first, second = phrase_colours(2)
    inside = pixels[20, 35]
    assert np.allclose(inside, (np.array(first) + 128) / 2, atol=1)  # blended at alpha 0.5
    assert np.allclose(pixels[40, 150], (np.array(second) + 128) / 2, atol=1)
    assert (pixels[5, 100] == 128).all()  # outside every mask: untouched
    panel = pixels[60:].reshape(-1, 3)
    for colour in (first, second):  # each phrase's text is written in its mask's colour
        assert (np.abs(panel - np.array(colour)).sum(-1) < 30).any()


def test_rle_masks_and_missing_narrative() -> None:
    image, result, _ = grounding()
    rle_result = {**result, "masks": [mask_to_rle(mask) for mask in result["masks"]]}
    dense = np.asarray(draw_grounding(image, result))
    from_rle = np.asarray(draw_grounding(image, rle_result))
    assert np.array_equal(dense, from_rle)


def test_mask_size_mismatch_is_an_error() -> None:
    image, result, narrative = grounding()
    result["masks"] = result["masks"][:, :30]
    with pytest.raises(ValueError, match="masks are 30x200 but the image is 60x200"):
        draw_grounding(image, result, narrative)

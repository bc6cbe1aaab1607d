"""Post-processing as EPNG's released evaluation does it (image-processor fields `post_process_align_corners`
and `post_process_upsampled`), against a hand-written bilinear resize of small logit maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from narrative_grounding.factory import variant_path
from narrative_grounding.modeling.image_processing_png import PngImageProcessor
from narrative_grounding.modeling.processing_png import PngProcessor

TOKENIZER_DIR = variant_path("epng-tiny")  # the tiny tokenizer ships in the tiny variants' folders
RELEASED = "epng-r101-bert-base-released"
# Stride-4 logits of one phrase, 2 x 2: the pred_masks of a 8 x 8 input.
CORNERS = torch.tensor([[[[-3.0, 1.0], [2.0, -0.5]]]])


def processor(**fields) -> PngProcessor:
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    return PngProcessor(PngImageProcessor(size={"height": 8, "width": 8}, **fields), tokenizer)


def corner_aligned(corners: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A 2 x 2 map resized to height x width with align_corners=True, written out: output pixel (i, j) sits at
    source (i / (height - 1), j / (width - 1)) and blends the four corners bilinearly."""
    (a, b), (c, d) = corners.tolist()
    out = torch.empty(height, width)
    for i in range(height):
        for j in range(width):
            y, x = i / (height - 1), j / (width - 1)
            out[i, j] = a * (1 - y) * (1 - x) + b * (1 - y) * x + c * y * (1 - x) + d * y * x
    return out


def test_align_corners_resize_of_a_2x2_map_to_5x5_by_hand():
    expected = corner_aligned(CORNERS[0, 0], 5, 5)
    # the centre is the mean of the corners; the corners are kept exactly
    assert expected[2, 2] == pytest.approx(CORNERS.mean().item())
    assert expected[0, 0] == -3.0 and expected[4, 4] == -0.5 and expected[0, 2] == pytest.approx(-1.0)
    torch.testing.assert_close(
        F.interpolate(CORNERS, size=(5, 5), mode="bilinear", align_corners=True)[0, 0], expected
    )


def test_released_post_processing_upsamples_probabilities_with_align_corners():
    # Target = the input size (8 x 8): the release's second resize (val.py 77) is then the identity, so the
    # probabilities are the corners' sigmoids resized with align_corners=True and nothing else.
    released = processor(post_process_align_corners=True, post_process_upsampled="probabilities")
    result = released.post_process_panoptic_narrative_grounding(
        CORNERS, target_sizes=[(8, 8)], threshold=0.4
    )[0]
    probabilities = corner_aligned(CORNERS[0, 0].sigmoid(), 8, 8)  # MainModule.py: sigmoid, then Upsample
    torch.testing.assert_close(result["masks"][0], probabilities > 0.4)
    torch.testing.assert_close(result["scores"][0], probabilities[probabilities > 0.4].mean())
    # Resizing the logits instead gives other masks on these corners: the two fields are not one choice.
    logits = processor(post_process_align_corners=True).post_process_panoptic_narrative_grounding(
        CORNERS, target_sizes=[(8, 8)], threshold=0.4
    )[0]
    torch.testing.assert_close(logits["masks"][0], corner_aligned(CORNERS[0, 0], 8, 8).sigmoid() > 0.4)
    assert not torch.equal(logits["masks"][0], result["masks"][0])


def test_released_post_processing_then_resizes_to_the_original_size_without_aligned_corners():
    released = processor(post_process_align_corners=True, post_process_upsampled="probabilities")
    result = released.post_process_panoptic_narrative_grounding(CORNERS, target_sizes=[(5, 7)])[0]
    at_input = corner_aligned(CORNERS[0, 0].sigmoid(), 8, 8)  # the model's output at the input size
    expected = F.interpolate(at_input[None, None], size=(5, 7), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(result["masks"], expected > 0.5)


def test_default_post_processing_is_unchanged():
    result = processor().post_process_panoptic_narrative_grounding(CORNERS, target_sizes=[(5, 7)])[0]
    expected = F.interpolate(CORNERS, size=(5, 7), mode="bilinear", align_corners=False)[0].sigmoid()
    torch.testing.assert_close(result["masks"], expected > 0.5)
    torch.testing.assert_close(result["scores"][0], expected[expected > 0.5].mean())


def test_post_processing_fields_survive_save_and_load(tmp_path):
    released = processor(post_process_align_corners=True, post_process_upsampled="probabilities")
    released.save_pretrained(tmp_path)
    loaded = PngProcessor.from_pretrained(tmp_path)
    assert loaded.image_processor.post_process_align_corners is True
    assert loaded.image_processor.post_process_upsampled == "probabilities"
    fresh = processor()
    fresh.save_pretrained(tmp_path / "ours")
    ours = PngImageProcessor.from_pretrained(tmp_path / "ours")
    assert (ours.post_process_align_corners, ours.post_process_upsampled) == (False, "logits")


def test_released_preset_carries_the_release_post_processing():
    image_processor = PngImageProcessor.from_pretrained(variant_path(RELEASED))
    assert image_processor.post_process_align_corners is True
    assert image_processor.post_process_upsampled == "probabilities"
    ours = PngImageProcessor.from_pretrained(variant_path("epng-r101-bert-base"))
    assert (ours.post_process_align_corners, ours.post_process_upsampled) == (False, "logits")


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        (
            {"post_process_align_corners": "yes"},
            TypeError,
            "post_process_align_corners must be True or False",
        ),
        ({"post_process_upsampled": "masks"}, ValueError, "post_process_upsampled must be one of"),
    ],
)
def test_bad_post_processing_fields_name_the_field(fields, error, message):
    with pytest.raises(error, match=message):
        PngImageProcessor(**fields)


def test_from_pretrained_overrides_of_the_post_processing_fields_are_checked_and_stay_off_the_tokenizer(
    tmp_path,
):
    loaded = PngProcessor.from_pretrained(
        TOKENIZER_DIR, post_process_upsampled="probabilities", post_process_align_corners=True
    )
    assert loaded.image_processor.post_process_upsampled == "probabilities"
    assert loaded.image_processor.post_process_align_corners is True
    loaded.save_pretrained(tmp_path)
    assert "post_process" not in (tmp_path / "tokenizer_config.json").read_text()
    reloaded = PngProcessor.from_pretrained(tmp_path)
    assert (
        reloaded.image_processor.post_process_upsampled,
        reloaded.image_processor.post_process_align_corners,
    ) == (
        "probabilities",
        True,
    )
    with pytest.raises(ValueError, match="post_process_upsampled must be one of"):
        PngProcessor.from_pretrained(TOKENIZER_DIR, post_process_upsampled="probs")
    with pytest.raises(TypeError, match="post_process_align_corners must be True or False"):
        PngImageProcessor.from_pretrained(variant_path(RELEASED), post_process_align_corners="yes")

"""The expected-IoU mask decision (`post_process_mask_decision="expected_iou"`): the rule against a search over
every cut, what it does to blurred masks, and the field through post-processing, save and load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from narrative_grounding.factory import variant_path
from narrative_grounding.modeling.image_processing_png import PngImageProcessor
from narrative_grounding.modeling.processing_png import PngProcessor, expected_iou_masks


def processor(**fields) -> PngProcessor:
    tokenizer = AutoTokenizer.from_pretrained(variant_path("epng-tiny"))
    return PngProcessor(PngImageProcessor(size={"height": 32, "width": 32}, **fields), tokenizer)


def expected_iou(mask: torch.Tensor, probabilities: torch.Tensor) -> float:
    inside = probabilities[mask].sum().item()
    return inside / (mask.sum().item() + probabilities[~mask].sum().item())


def blurred_disk(radius: float, size: int = 32, sharpness: float = 1.5) -> torch.Tensor:
    """Probabilities of a disk whose outline is uncertain: a logistic ramp of `sharpness` pixels."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    distance = ((ys - size / 2 + 0.5) ** 2 + (xs - size / 2 + 0.5) ** 2).sqrt()
    return torch.sigmoid((radius - distance) / sharpness)


def test_the_rule_picks_the_best_of_every_cut():
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.rand(5, 6, 7, generator=generator) ** 3  # skewed: most pixels unlikely
    masks = expected_iou_masks(probabilities)
    for phrase in range(5):
        p = probabilities[phrase]
        cuts = [p >= value for value in p.flatten().tolist()]  # every mask of the k most probable pixels
        best = max(expected_iou(cut, p) for cut in cuts)
        assert expected_iou(masks[phrase], p) == pytest.approx(best, rel=1e-9)
        assert masks[phrase].any()


def test_blurred_masks_grow_beyond_the_half_threshold():
    probabilities = blurred_disk(radius=5.0)[None]
    rule = expected_iou_masks(probabilities)[0]
    half = probabilities[0] > 0.5
    assert (rule & half).equal(half)  # the threshold's mask is inside the rule's
    assert rule.sum() > half.sum()
    cut = probabilities[0][rule].min().item()
    assert 0.25 < cut < 0.5
    assert expected_iou(rule, probabilities[0]) > expected_iou(half, probabilities[0])
    # a confident mask is left as the threshold draws it
    sharp = blurred_disk(radius=8.0, sharpness=0.05)[None]
    assert expected_iou_masks(sharp)[0].equal(sharp[0] > 0.5)


def test_a_phrase_with_no_likely_pixel_still_gets_its_most_likely_pixels():
    probabilities = torch.full((1, 4, 4), 0.01)
    probabilities[0, 2, 3] = 0.2
    mask = expected_iou_masks(probabilities)[0]
    assert mask.any() and mask[2, 3]
    assert expected_iou_masks(torch.zeros(0, 4, 4)).shape == (0, 4, 4)


def test_post_processing_applies_the_saved_decision(tmp_path):
    logits = torch.logit(blurred_disk(radius=4.0).clamp(1e-4, 1 - 1e-4))[None, None]  # 1 x 1 x 32 x 32
    logits = F.avg_pool2d(logits, kernel_size=4)  # the model's stride-4 logits of a 32 x 32 input
    ours = processor(post_process_mask_decision="expected_iou")
    result = ours.post_process_panoptic_narrative_grounding(logits, target_sizes=[(32, 32)])[0]
    probabilities = F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)[0].sigmoid()
    torch.testing.assert_close(result["masks"], expected_iou_masks(probabilities))
    thresholded = ours.post_process_panoptic_narrative_grounding(
        logits, target_sizes=[(32, 32)], mask_decision="threshold"
    )[0]
    torch.testing.assert_close(thresholded["masks"], probabilities > 0.5)
    assert result["masks"].sum() > thresholded["masks"].sum()

    ours.save_pretrained(tmp_path)
    loaded = PngProcessor.from_pretrained(tmp_path)
    assert loaded.image_processor.post_process_mask_decision == "expected_iou"
    assert (
        processor().image_processor.post_process_mask_decision == "threshold"
    )  # the papers' rule by default


def test_unknown_decisions_are_refused_by_name():
    with pytest.raises(ValueError, match="post_process_mask_decision must be one of"):
        PngImageProcessor(post_process_mask_decision="iou")
    with pytest.raises(ValueError, match="mask_decision must be one of"):
        processor().post_process_panoptic_narrative_grounding(
            torch.zeros(1, 1, 8, 8), target_sizes=[(32, 32)], mask_decision="best"
        )

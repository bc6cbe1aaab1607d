"""`epng_mask_stride=2` (ours, off in the paper configs): mask logits at stride 2, where each phrase also
weighs the backbone stem's stride-2 map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from tiny_models import TEST_VOCAB_SIZE, make_inputs, reloaded, tiny_config, tiny_model

from narrative_grounding import PngConfig, PngForPanopticNarrativeGrounding, load_config
from narrative_grounding.modeling.losses import mask_loss_sums


def test_off_in_the_paper_configs_and_other_strides_are_refused_by_name():
    assert PngConfig().epng_mask_stride == 4
    for variant in ("epng-r101-bert-base", "epng-r101-bert-base-paper", "epng-r101-bert-base-released"):
        assert load_config(variant).epng_mask_stride == 4
    model = tiny_model(epng_mask_stride=4)
    assert model.head.stem_kernels is None and model.visual_encoder.stem_projection is None
    for value in (8, 1, "2"):
        with pytest.raises((ValueError, StrictDataclassClassValidationError), match="epng_mask_stride"):
            tiny_config(epng_mask_stride=value)


def test_a_backbone_without_a_resnet_stem_is_refused_by_name():
    settings = tiny_config(epng_mask_stride=2).to_dict()
    # a timm backbone with the FPN's four strides but no ResNet stem
    settings["backbone_config"] = {
        "model_type": "timm_backbone",
        "backbone": "convnext_atto",
        "out_indices": [0, 1, 2, 3],
        "features_only": True,
    }
    with pytest.raises(
        ValueError, match="epng_mask_stride=2 reads the stride-2 output of a timm ResNet stem"
    ):
        PngForPanopticNarrativeGrounding(PngConfig.from_dict(settings))


def test_written_out():
    """pred_masks = the (refined) stride-4 logits upsampled bilinearly to stride 2 + each phrase's stem kernel
    (a linear map of its embedding) . the stem's stride-2 output projected by a 1 x 1 convolution, scaled by
    C^-1/2; the unrefined stride-4 logits stay an auxiliary prediction."""
    model = tiny_model(epng_mask_stride=2)
    inputs = make_inputs([3, 2], height=64, width=96)
    stem = {}
    hook = model.visual_encoder.backbone._backbone.act1.register_forward_hook(
        lambda module, args, output: stem.setdefault("map", output.clone())
    )
    with torch.no_grad():
        output = model(**inputs)
    hook.remove()
    assert output.pred_masks.shape == (2, 3, 32, 48)
    assert output.auxiliary_masks[0].shape == output.pixel_embeddings.shape[:1] + (3, 16, 24)
    head, encoder = model.head, model.visual_encoder
    with torch.no_grad():
        refined = head.refiner(
            output.auxiliary_masks[0],
            output.phrase_embeddings,
            output.pixel_embeddings,
            inputs["phrase_mask"].bool(),
            head.logit_scale,
        )
        stem_map = encoder.stem_projection(stem["map"])  # B x C x 32 x 48
        kernels = head.stem_kernels(output.phrase_embeddings)  # B x P x C
        detail = torch.einsum("bpc,bchw->bphw", kernels, stem_map) * stem_map.shape[1] ** -0.5
        expected = F.interpolate(refined, size=(32, 48), mode="bilinear", align_corners=False) + detail
    torch.testing.assert_close(output.pred_masks, expected, rtol=1e-4, atol=1e-5)


def test_losses_at_each_predictions_own_stride_and_everything_trains(tmp_path):
    model = tiny_model(epng_mask_stride=2).train()
    inputs = make_inputs([2, 1], with_labels=True)
    output = model(**inputs)
    # BCE and Dice: the stride-4 auxiliary logits against the labels area-averaged to stride 4, the stride-2
    # logits against them area-averaged to stride 2; each a mean over the 3 real phrases
    phrase_mask = inputs["phrase_mask"].bool()
    expected_bce = expected_dice = 0.0
    for prediction in (*output.auxiliary_masks, output.pred_masks):
        size = prediction.shape[-2:]
        targets = F.interpolate(inputs["labels"], size=size, mode="area")
        valid = torch.ones(2, *size, dtype=torch.bool)
        bce_sum, dice_sum = mask_loss_sums(prediction, targets, phrase_mask, valid)
        expected_bce, expected_dice = expected_bce + bce_sum / 3, expected_dice + dice_sum / 3
    torch.testing.assert_close(output.loss_dict["bce"], expected_bce)
    torch.testing.assert_close(output.loss_dict["dice"], expected_dice)
    output.loss.backward()
    assert model.head.stem_kernels.weight.grad.abs().sum() > 0
    assert model.visual_encoder.stem_projection.weight.grad.abs().sum() > 0
    loaded = reloaded(model, tmp_path, inputs)
    assert loaded.config.epng_mask_stride == 2


def test_labels_at_stride_4_are_refused_by_name():
    model = tiny_model(epng_mask_stride=2)
    inputs = make_inputs([2], with_labels=True)
    inputs["labels"] = F.interpolate(inputs["labels"], size=(16, 16), mode="area")
    with pytest.raises(ValueError, match="masks are at stride 2 \\(epng_mask_stride=2\\)"):
        model(**inputs)
    # the switch is EPNG's: a DRMN model with it set still predicts at stride 4 and takes stride-4 labels
    drmn = PngForPanopticNarrativeGrounding(
        load_config("drmn-tiny", text_config={"vocab_size": TEST_VOCAB_SIZE}, epng_mask_stride=2)
    ).eval()
    with torch.no_grad():
        assert drmn(**inputs).pred_masks.shape[-2:] == (16, 16)

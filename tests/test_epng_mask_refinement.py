"""`epng_mask_refinement_kernels` (ours, off in the paper configs): a CNN that corrects each phrase's mask
logits from its own maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from tiny_models import make_inputs, reloaded, tiny_config, tiny_model

from narrative_grounding import PngConfig, load_config
from narrative_grounding.modeling.heads_epng import PhraseMaskRefiner


def test_off_in_the_paper_configs_and_bad_sizes_are_refused_by_name():
    assert PngConfig().epng_mask_refinement_kernels == 0
    for variant in ("epng-r101-bert-base", "epng-r101-bert-base-paper", "epng-r101-bert-base-released"):
        assert load_config(variant).epng_mask_refinement_kernels == 0
    assert tiny_model(epng_mask_refinement_kernels=0).head.refiner is None
    for field, value in (("epng_mask_refinement_kernels", -1), ("epng_mask_refinement_channels", 0)):
        with pytest.raises((ValueError, StrictDataclassClassValidationError), match=field):
            tiny_config(**{field: value})


def _refiner_inputs(config, batch=2, phrases=3, height=15, width=20):
    torch.manual_seed(1)
    logits = torch.randn(batch, phrases, height, width)
    phrase_embeddings = torch.randn(batch, phrases, config.d_model)
    pixel_map = torch.randn(batch, config.d_model, height, width)
    phrase_mask = torch.tensor([[True] * phrases, [True] * (phrases - 1) + [False]])
    return logits, phrase_embeddings, pixel_map, phrase_mask


def test_a_fresh_refiner_returns_the_logits_unchanged():
    model = tiny_model(epng_mask_refinement_kernels=3).eval()
    inputs = _refiner_inputs(model.config)
    with torch.no_grad():
        torch.testing.assert_close(model.head.refiner(*inputs, 0.1), inputs[0])


def test_narratives_without_real_phrases_and_odd_sizes():
    model = tiny_model(epng_mask_refinement_kernels=2).eval()
    refiner = model.head.refiner
    with torch.no_grad():
        refiner.output_weight.normal_()
        logits, phrases, pixel_map, phrase_mask = _refiner_inputs(model.config, height=7, width=9)
        # no phrase at all, and only padded phrases: the logits come back as they are
        empty = refiner(logits[:, :0], phrases[:, :0], pixel_map, phrase_mask[:, :0], 0.1)
        assert empty.shape == (2, 0, 7, 9)
        padded = refiner(logits, phrases, pixel_map, torch.zeros_like(phrase_mask), 0.1)
        torch.testing.assert_close(padded, logits)
        # an odd-sized map: pooled in ceil mode, the correction brought back to the logits' size
        assert refiner(logits, phrases, pixel_map, phrase_mask, 0.1).shape == logits.shape


def test_written_out_with_a_trained_output():
    """The maps are the phrase's K extra kernels against the pixel map pooled 2 x 2 (ceil mode), stacked with
    its pooled logits; dilated 3 x 3 convolutions with residuals and the image-wide maximum; the 1 x 1 output,
    upsampled bilinearly, is added to the logits of the real phrases only."""
    config = tiny_config(epng_mask_refinement_kernels=2, epng_mask_refinement_channels=4)
    torch.manual_seed(0)
    refiner = PhraseMaskRefiner(config).eval()
    with torch.no_grad():
        refiner.output_weight.normal_()
        refiner.output_bias.fill_(0.3)
    logits, phrases, pixel_map, phrase_mask = _refiner_inputs(config)
    scale = 0.25
    with torch.no_grad():
        output = refiner(logits, phrases, pixel_map, phrase_mask, scale)
        expected = logits.clone()
        pooled_map = F.avg_pool2d(pixel_map, 2, ceil_mode=True)
        for b in range(logits.shape[0]):
            for p in range(logits.shape[1]):
                if not phrase_mask[b, p]:
                    continue
                kernels = refiner.kernels(phrases[b, p]).view(2, config.d_model)
                maps = torch.einsum("kd,dhw->khw", kernels, pooled_map[b]) * scale
                pooled = F.avg_pool2d(logits[b, p][None], 2, ceil_mode=True)
                hidden = torch.cat([pooled, maps])[None]
                hidden = F.gelu(refiner.convs[0](hidden))
                hidden = hidden + refiner.global_context(hidden.amax(dim=(-2, -1)))[:, :, None, None]
                for conv, dilation in zip(refiner.convs[1:], (2, 4, 8), strict=True):
                    assert conv.dilation == (dilation, dilation)
                    hidden = hidden + F.gelu(conv(hidden))
                correction = (hidden[0] * refiner.output_weight[:, None, None]).sum(0) + 0.3
                expected[b, p] += F.interpolate(
                    correction[None, None], size=logits.shape[-2:], mode="bilinear", align_corners=False
                )[0, 0]
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(output[1, 2], logits[1, 2])  # the padded phrase


def test_the_unrefined_logits_are_supervised_too_and_everything_trains(tmp_path):
    model = tiny_model(epng_mask_refinement_kernels=2).train()
    inputs = make_inputs([2, 1], with_labels=True)
    output = model(**inputs)
    assert len(output.auxiliary_masks) == 1
    # the unrefined logits at stride 4, the refined ones brought to epng-tiny's stride 2 (ours)
    assert output.auxiliary_masks[0].shape == (2, 2, 16, 16)
    assert output.pred_masks.shape == (2, 2, 32, 32)
    output.loss.backward()
    refiner = model.head.refiner
    assert refiner.output_weight.grad.abs().sum() > 0
    assert model.head.phrase_projection.weight.grad.abs().sum() > 0
    # one step moves the zero output, after which the convolutions get gradients too
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    model(**inputs).loss.backward()
    assert all(conv.weight.grad.abs().sum() > 0 for conv in refiner.convs)
    assert refiner.kernels.weight.grad.abs().sum() > 0
    loaded = reloaded(model, tmp_path, inputs)
    assert loaded.config.epng_mask_refinement_kernels == 2

"""The released-code switches: each against a hand-written computation of the authors' formula on small
tensors (EPNG's release Mr-Neko/EPNG at 9e1561d; DRMN's reference reconstruction JaMesLiMers/DRMN), the
named presets, and the training recipes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from tiny_models import TEST_VOCAB_SIZE, make_inputs, tiny_config

from narrative_grounding import PngConfig, PngForPanopticNarrativeGrounding, load_config
from narrative_grounding.modeling.attention import CrossAttention, LocalityPerceptiveAttention, grid_distance
from narrative_grounding.modeling.heads_drmn import DrmnHead
from narrative_grounding.modeling.heads_epng import CommunicatorLayer, EpngHead
from narrative_grounding.modeling.losses import (
    SAMPLES,
    loss_counts,
    mask_loss_sums,
    semantic_alignment_loss_sums,
)
from narrative_grounding.training import parse_args
from narrative_grounding.training.optimization import (
    EpochStepSchedule,
    ReleasedEpochEma,
    build_optimizer,
    resolve_preset,
)

RELEASED = "epng-r101-bert-base-released"


def epng_config(**switches):
    """epng-tiny as EPNG's head is, without the phrase decoder, mask refinement and stride-2 masks the tiny
    variant adds (ours)."""
    return tiny_config(
        epng_phrase_decoder_layers=0,
        epng_phrase_decoder_reads_tokens=False,
        epng_mask_stride=4,
        epng_mask_refinement_kernels=0,
        **switches,
    )


def tiny_drmn_config(**overrides) -> PngConfig:
    return load_config("drmn-tiny", text_config={"vocab_size": TEST_VOCAB_SIZE}, **overrides)


# ------------------------------------------------------------------------------------------- EPNG head
def test_phrase_activation_relu6_bounds_the_projected_phrases():
    torch.manual_seed(0)
    head = EpngHead(epng_config(epng_phrase_activation="relu6")).eval()
    phrase_features = torch.randn(1, 3, 64) * 20  # large enough to reach both clamps of ReLU6
    features = {s: torch.randn(1, 32, 128 // s, 128 // s) for s in (4, 8, 16, 32)}
    output = head(features, phrase_features, torch.ones(1, 3, dtype=torch.bool))
    projected = phrase_features @ head.phrase_projection.weight.T + head.phrase_projection.bias
    expected = projected.clamp(0.0, 6.0)  # the release: ReLU6(Linear(768, 768)(text))
    torch.testing.assert_close(output.phrase_embeddings, expected)
    assert (expected == 6.0).any() and (expected == 0.0).any()


def test_double_add_and_layer_norm_matches_the_released_decoder_layer():
    torch.manual_seed(0)
    config = tiny_config(epng_residual_norm="double", dropout=0.0)
    layer = CommunicatorLayer(config).eval()
    assert sum(isinstance(module, torch.nn.LayerNorm) for module in layer.modules()) == 5
    pixels, phrases = torch.randn(2, 16, 96), torch.randn(2, 3, 96)
    phrase_mask = torch.tensor([[True, True, False], [True, True, True]])

    def ln(norm, x):
        return F.layer_norm(x, (96,), norm.weight, norm.bias, norm.eps)

    # The release (decoder.py, attention.py): MultiHeadAttention returns LN(q + att), DecoderLayer adds its
    # input again and normalises again; the FFN block is LN(x + ffn(x)).
    inner = ln(layer.lpa_inner_norm, pixels + layer.lpa(pixels, 4, 4))
    after_self = ln(layer.lpa_norm, pixels + inner)
    inner = ln(layer.cross_inner_norm, after_self + layer.cross_attention(after_self, phrases, phrase_mask))
    after_cross = ln(layer.cross_norm, after_self + inner)
    expected = ln(layer.ffn_norm, after_cross + layer.ffn(after_cross))
    torch.testing.assert_close(layer(pixels, 4, 4, phrases, phrase_mask), expected)


def test_single_add_and_layer_norm_is_eqs_8_and_9():
    torch.manual_seed(0)
    layer = CommunicatorLayer(tiny_config(dropout=0.0)).eval()
    assert layer.lpa_inner_norm is None and layer.cross_inner_norm is None
    assert sum(isinstance(module, torch.nn.LayerNorm) for module in layer.modules()) == 3


def test_lpa_attention_dropout_drops_the_attention_weights():
    torch.manual_seed(0)
    lpa = LocalityPerceptiveAttention(
        d_model=16, num_heads=2, distance_clamp=2.0, distance_form="squared", attention_dropout=0.5
    )
    hidden = torch.randn(2, 9, 16)
    lpa.train()
    torch.manual_seed(123)
    dropped = lpa(hidden, 3, 3)
    # The release (DSA_attention.py): att = (q k^T * R) / sqrt(d_k); softmax; dropout; att @ v; fc_o.
    query, key, value = lpa.project_heads(hidden)
    prior = lpa.prior_scale.view(-1, 1, 1) * grid_distance(3, 3, clamp=2.0, form="squared")
    weights = ((query @ key.transpose(-1, -2)) * prior / math.sqrt(8)).softmax(dim=-1)
    torch.manual_seed(123)
    weights = F.dropout(weights, 0.5, training=True)
    expected = lpa.out_proj((weights @ value).transpose(1, 2).reshape(2, 9, 16))
    torch.testing.assert_close(dropped, expected)
    lpa.eval()
    assert not torch.allclose(lpa(hidden, 3, 3), dropped)  # no dropout at evaluation


def test_attention_dropout_refuses_the_flex_path_in_training():
    lpa = LocalityPerceptiveAttention(
        d_model=16, num_heads=2, distance_clamp=2.0, distance_form="squared", implementation="flex",
        attention_dropout=0.1,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="epng_attention_dropout"):
        lpa(torch.randn(1, 4, 16), 2, 2)


def test_cross_attention_dropout_only_in_training():
    torch.manual_seed(0)
    attention = CrossAttention(d_model=16, num_heads=2, attention_dropout=0.5)
    queries, keys, mask = torch.randn(1, 5, 16), torch.randn(1, 3, 16), torch.ones(1, 3, dtype=torch.bool)
    attention.eval()
    evaluated = attention(queries, keys, mask)
    torch.testing.assert_close(attention(queries, keys, mask), evaluated)
    attention.train()
    assert not torch.allclose(attention(queries, keys, mask), evaluated)


@pytest.mark.parametrize("scale", [True, False])
def test_mask_logits_scaled_or_plain_dot_product(scale):
    torch.manual_seed(0)
    head = EpngHead(epng_config(epng_scale_mask_logits=scale)).eval()
    features = {s: torch.randn(1, 32, 64 // s, 64 // s) for s in (4, 8, 16, 32)}
    output = head(features, torch.randn(1, 2, 64), torch.ones(1, 2, dtype=torch.bool))
    dot = torch.einsum("bpd,bdhw->bphw", output.phrase_embeddings, output.pixel_embeddings)  # EPNG eq. 10
    torch.testing.assert_close(output.pred_masks, dot * (96**-0.5 if scale else 1.0))


def _bilinear_matrix(size_in: int, size_out: int, align_corners: bool) -> torch.Tensor:
    """size_out x size_in weights of 1-D bilinear interpolation: output i samples input coordinate x(i)."""
    index = torch.arange(size_out, dtype=torch.float64)
    if align_corners:  # the corner pixels' centres coincide: x = i (in - 1) / (out - 1)
        x = index * (size_in - 1) / (size_out - 1)
    else:  # the maps' outer edges coincide: x = (i + 1/2) in / out - 1/2, clamped at the first pixel
        x = ((index + 0.5) * size_in / size_out - 0.5).clamp(min=0)
    left = x.floor().long().clamp(max=size_in - 1)
    right = (left + 1).clamp(max=size_in - 1)
    fraction = x - left
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    weights[index.long(), left] += 1 - fraction
    weights[index.long(), right] += fraction
    return weights


def _upsample(maps: torch.Tensor, height: int, width: int, align_corners: bool) -> torch.Tensor:
    """B x C x h x w -> B x C x height x width, separable bilinear interpolation written out."""
    rows = _bilinear_matrix(maps.shape[-2], height, align_corners)  # height x h
    columns = _bilinear_matrix(maps.shape[-1], width, align_corners)  # width x w
    return torch.einsum("Hh,bchw,Ww->bcHW", rows, maps.double(), columns).to(maps.dtype)


@pytest.mark.parametrize("align_corners", [True, False])
def test_upsample_align_corners_at_both_places_of_the_head(align_corners):
    torch.manual_seed(0)
    head = EpngHead(epng_config(epng_upsample_align_corners=align_corners)).eval()
    features = {s: torch.randn(1, 32, 64 // s, 64 // s) for s in (4, 8, 16, 32)}
    seen = {}
    # fuse_projection (identity: 3 x 32 = d_model 96) receives eq. 2's fused map; the last communicator layer
    # returns the stride-16 pixels that are upsampled to stride 4.
    head.fuse_projection.register_forward_hook(lambda module, args, out: seen.update(fused=args[0]))
    head.layers[-1].register_forward_hook(lambda module, args, out: seen.update(pixels=out))
    output = head(features, torch.randn(1, 2, 64), torch.ones(1, 2, dtype=torch.bool))

    # The release (MainModule.py 35): cat(AdaptiveAvgPool2d(F_v1), F_v2, Upsample(x2, align_corners=True)(F_v3)).
    fused = torch.cat(
        [F.avg_pool2d(features[8], 2), features[16], _upsample(features[32], 4, 4, align_corners)], dim=1
    )
    torch.testing.assert_close(seen["fused"], fused)
    # The release (MainModule.py 49): Upsample(x4, align_corners=True) of the communicator's 4 x 4 map.
    pixel_map = seen["pixels"].transpose(1, 2).reshape(1, 96, 4, 4)  # B x D x h x w
    expected = _upsample(pixel_map, 16, 16, align_corners) + head.stride4_skip(features[4])
    torch.testing.assert_close(output.pixel_embeddings, expected)
    if align_corners:  # the release's own modules give the same maps
        upsample2 = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        upsample4 = torch.nn.Upsample(scale_factor=4, mode="bilinear", align_corners=True)
        torch.testing.assert_close(seen["fused"][:, 64:], upsample2(features[32]))
        torch.testing.assert_close(
            output.pixel_embeddings, upsample4(pixel_map) + head.stride4_skip(features[4])
        )


def test_released_key_mask_is_ours_on_the_release_phrase_layout():
    """The release's cross-attention key mask (MainModule.py 39-44) keeps text slots 1..max(noun_index), where
    noun_index[k - 1] = k for every phrase k with a segment (data/dataset_mix.py 76-98) and slot 0 holds no
    phrase. With phrases 1..K all grounded (every phrase our data loader keeps is), the kept slots are exactly
    the K real phrases: masking them as the release does equals our padded-phrase mask."""
    torch.manual_seed(0)
    attention = CrossAttention(d_model=96, num_heads=8).eval()
    pixels = torch.randn(2, 16, 96)
    counts = [3, 1]  # grounded phrases per sample
    slots = torch.randn(2, 6, 96)  # the release's text tensor: slot 0, phrases 1..K, padding (any values)
    noun_index = torch.zeros(2, 5, dtype=torch.long)
    for sample, count in enumerate(counts):
        noun_index[sample, :count] = torch.arange(1, count + 1)
    released_keep = torch.zeros(2, 6, dtype=torch.bool)  # the release's text_mask, inverted (True = attend)
    for sample in range(2):
        released_keep[sample, 1 : int(noun_index[sample].max()) + 1] = True
    released = attention(pixels, slots, released_keep)
    phrases = slots[:, 1:4]  # ours: phrases from index 0, padded to the batch's most
    phrase_mask = torch.tensor([[True, True, True], [True, False, False]])
    torch.testing.assert_close(attention(pixels, phrases, phrase_mask), released)


def test_released_head_parameter_count_equals_the_authors_modules():
    head = EpngHead(load_config(RELEASED))
    # The release's modules, from their shapes (MainModule.py, TextVisualEncoder.py, decoder.py,
    # attention.py, DSA_attention.py): d = 768, 8 heads of 96, FFN 2048, 3 decoder layers.
    linear = 768 * 768 + 768
    layer_norm = 2 * 768
    self_attention = 4 * linear + 8 + layer_norm  # fc_q/k/v/o + W (8 x 1 x 1) + its LayerNorm
    cross_attention = 4 * linear + layer_norm
    feed_forward = (768 * 2048 + 2048) + (2048 * 768 + 768) + layer_norm
    decoder_layer = self_attention + layer_norm + cross_attention + layer_norm + feed_forward
    text_linear = linear
    expected = text_linear + 3 * decoder_layer
    assert expected == 24_233_496
    assert sum(p.numel() for p in head.parameters()) == expected
    ours = EpngHead(load_config("epng-r101-bert-base"))
    assert sum(p.numel() for p in ours.parameters()) == expected - 3 * 2 * layer_norm  # two LNs fewer a layer


# ------------------------------------------------------------------------------------------- losses
def _released_dice(pred, target, eps=1e-3):  # loss.py dice_loss: eps on each of the two sums
    pred, target = pred.flatten(1), target.flatten(1)
    return 1 - 2 * (pred * target).sum(1) / ((pred * pred).sum(1) + eps + (target * target).sum(1) + eps)


@pytest.mark.parametrize("align_corners", [False, True])
def test_mask_losses_at_input_size_per_sample_match_the_release(align_corners):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, generator=generator) * 3  # stride-4 logits of a 16 x 16 input
    labels = (torch.rand(2, 3, 16, 16, generator=generator) > 0.6).float()
    phrase_mask = torch.tensor([[True, True, True], [True, True, False]])
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    bce_sum, dice_sum = mask_loss_sums(
        logits,
        labels,
        phrase_mask,
        valid,
        resolution="input",
        dice_eps=2e-3,
        reduction="samples",
        align_corners=align_corners,
    )
    # The release (train_net.py): per sample, the real phrases' masks = Up(Sigmoid(logits)) at the input
    # size, BCELoss (mean over phrases x pixels) and dice_loss(...).mean(); summed over samples / batch.
    # Its Up is nn.Upsample(scale_factor=4, mode="bilinear", align_corners=True) (MainModule.py 17, 54).
    upsample = torch.nn.Upsample(scale_factor=4, mode="bilinear", align_corners=align_corners)
    probabilities = upsample(logits.sigmoid())
    expected_bce = expected_dice = 0.0
    for sample, count in enumerate((3, 2)):
        pred, target = probabilities[sample, :count], labels[sample, :count]
        expected_bce += torch.nn.BCELoss()(pred, target)
        expected_dice += _released_dice(pred, target).mean()
    counts = loss_counts(F.interpolate(labels, size=(4, 4), mode="area"), phrase_mask, valid[:, :4, :4])
    assert counts[SAMPLES] == 2
    torch.testing.assert_close(bce_sum / counts[SAMPLES], expected_bce / 2)
    torch.testing.assert_close(dice_sum / counts[SAMPLES], expected_dice / 2)


def test_released_model_loss_upsamples_with_align_corners():
    torch.manual_seed(0)
    overrides = {"mask_loss_resolution": "input", "mask_loss_reduction": "samples", "dice_eps": 2e-3}
    model = PngForPanopticNarrativeGrounding(
        epng_config(epng_upsample_align_corners=True, **overrides)
    ).eval()
    inputs = make_inputs([2, 1], with_labels=True)
    output = model(**inputs)
    upsample = torch.nn.Upsample(scale_factor=4, mode="bilinear", align_corners=True)  # MainModule.py 17, 54
    probabilities = upsample(output.pred_masks.sigmoid())  # B x P x 64 x 64
    expected = sum(
        torch.nn.BCELoss()(probabilities[sample, :count], inputs["labels"][sample, :count])
        for sample, count in enumerate((2, 1))
    )
    torch.testing.assert_close(output.loss_dict["bce"], expected / 2)


def test_input_size_losses_run_under_bfloat16_autocast():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    labels = (torch.rand(1, 2, 16, 16) > 0.5).float()
    args = (labels, torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 16, 16, dtype=torch.bool))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # torch refuses plain BCE on probabilities there
        bce, dice = mask_loss_sums(logits, *args, resolution="input")
    torch.testing.assert_close(bce, mask_loss_sums(logits, *args, resolution="input")[0])
    (bce + dice).backward()


def test_released_sal_on_two_phrases_and_sixteen_pixels():
    generator = torch.Generator().manual_seed(0)
    phrases = torch.randn(1, 2, 3, generator=generator) * 4  # B x P x D
    pixels = torch.randn(1, 3, 4, 4, generator=generator) * 4  # B x D x h x w: 16 pixels
    targets = torch.zeros(1, 2, 4, 4)  # area-averaged coverage at stride 4
    targets[0, 0, :2, :2] = 1.0
    targets[0, 0, 2, 0] = 0.25  # partly covered: a positive for the release, not for the majority rule
    targets[0, 1, 1:, 1:] = 0.5
    phrase_mask = torch.ones(1, 2, dtype=torch.bool)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    to_pixel, to_phrase = semantic_alignment_loss_sums(
        phrases, pixels, targets, phrase_mask, valid, 10.0,
        similarity="dot", positives="any", aggregation="log_sum", reduction="samples",
    )  # fmt: skip
    # The release (loss.py constrative_loss): gt > 0 -> 1; exp(text @ image * 0.1);
    # -log((sum positive + 1e-6) / (sum all + 1e-6)) averaged over the phrases; phrase -> pixel only.
    matrix = torch.exp((phrases[0] @ pixels[0].flatten(1)) * 0.1)  # 2 x 16
    gt = (targets[0].flatten(1) > 0).float()
    expected = -torch.log(((matrix * gt).sum(-1) + 1e-6) / (matrix.sum(-1) + 1e-6)).mean()
    torch.testing.assert_close(to_pixel, expected)
    config = load_config(RELEASED)
    assert (config.sal_directions, config.sal_temperature) == ("phrase_to_pixel", 10.0)


def test_paper_sal_is_eqs_13_and_14_on_raw_dot_products():
    generator = torch.Generator().manual_seed(1)
    phrases = torch.randn(1, 2, 3, generator=generator)
    pixels = torch.randn(1, 3, 2, 2, generator=generator)
    targets = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    phrase_mask, valid = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2, 2, dtype=torch.bool)
    to_pixel, to_phrase = semantic_alignment_loss_sums(
        phrases, pixels, targets, phrase_mask, valid, 0.5, similarity="dot", aggregation="mean_log"
    )
    s = (phrases[0] @ pixels[0].flatten(1)) / 0.5  # 2 x 4
    g = targets[0].flatten(1).bool()
    # eq. 13: per phrase, mean over its positive pixels of -log softmax over pixels; summed over phrases
    l_v = sum(-s[i].log_softmax(0)[g[i]].mean() for i in range(2))
    # eq. 14: per covered pixel, mean over its positive phrases of -log softmax over phrases
    l_t = sum(-s[:, j].log_softmax(0)[g[:, j]].mean() for j in range(4) if g[:, j].any())
    torch.testing.assert_close(to_pixel, l_v)
    torch.testing.assert_close(to_phrase, l_t)


def test_released_model_loss_has_no_pixel_to_phrase_term_and_trains():
    torch.manual_seed(0)
    overrides = {key: value for key, value in load_config(RELEASED).to_dict().items() if key in RELEASED_KEYS}
    model = PngForPanopticNarrativeGrounding(tiny_config(**overrides)).train()
    inputs = make_inputs([2, 3], with_labels=True)
    output = model(**inputs)
    assert set(output.loss_dict) == {"bce", "dice", "sal_phrase_to_pixel"}
    assert torch.isfinite(output.loss)
    output.loss.backward()
    assert model.head.phrase_projection.weight.grad.abs().sum() > 0


RELEASED_KEYS = (
    "epng_phrase_activation", "epng_residual_norm", "epng_attention_dropout", "epng_scale_mask_logits",
    "epng_upsample_align_corners", "mask_loss_resolution", "mask_loss_reduction", "dice_eps", "sal_similarity", "sal_temperature",
    "sal_positives", "sal_aggregation", "sal_directions",
)  # fmt: skip


def test_input_size_loss_needs_input_size_labels():
    model = PngForPanopticNarrativeGrounding(tiny_config(mask_loss_resolution="input", epng_mask_stride=4))
    inputs = make_inputs([2], with_labels=True)
    inputs["labels"] = F.interpolate(inputs["labels"], scale_factor=0.25, mode="area")
    with pytest.raises(ValueError, match="mask_loss_resolution='input' needs labels at the size"):
        model(**inputs)


def test_unknown_switch_value_is_a_clear_error():
    with pytest.raises(
        (ValueError, StrictDataclassClassValidationError), match="sal_aggregation must be one of"
    ):
        tiny_config(sal_aggregation="sum")


def test_released_switches_survive_save_and_load(tmp_path):
    overrides = {key: value for key, value in load_config(RELEASED).to_dict().items() if key in RELEASED_KEYS}
    model = PngForPanopticNarrativeGrounding(tiny_config(**overrides)).eval()
    model.save_pretrained(tmp_path)
    loaded = PngForPanopticNarrativeGrounding.from_pretrained(tmp_path).eval()
    for key, value in overrides.items():
        assert getattr(loaded.config, key) == value
    inputs = make_inputs([2])
    torch.testing.assert_close(loaded(**inputs).pred_masks, model(**inputs).pred_masks)


# ------------------------------------------------------------------------------------------- DRMN head
def test_drmn_reference_level_projection_reduces_p2_to_stride_8():
    torch.manual_seed(0)
    head = DrmnHead(tiny_drmn_config(drmn_level_projection="conv_gn_relu")).eval()
    features = {s: torch.randn(1, 32, 64 // s, 64 // s) for s in (4, 8, 16, 32)}
    maps = [
        projection(features[s]) for projection, s in zip(head.input_projections, head.strides, strict=True)
    ]
    assert [tuple(m.shape[-2:]) for m in maps] == [(8, 8), (8, 8), (4, 4), (2, 2)]  # strides 8, 8, 16, 32
    # conv + GroupNorm(32) + ReLU (deform_encoder_head.py img_encoder_pre)
    conv, norm, _ = head.input_projections[1]
    expected = F.relu(F.group_norm(conv(features[8]), 32, norm.weight, norm.bias, norm.eps))
    torch.testing.assert_close(maps[1], expected)
    output = head(features, torch.randn(1, 2, 64), torch.ones(1, 2, dtype=torch.bool))
    assert output.pred_masks.shape == (1, 2, 16, 16)


def test_drmn_top_k_on_the_stride_16_mask():
    torch.manual_seed(0)
    head = DrmnHead(tiny_drmn_config(drmn_top_k_stride=16, drmn_top_k=4)).eval()
    seen, encoded = [], []
    head.rounds[0].register_forward_pre_hook(lambda module, args: seen.append(args))
    head.encoder_layers[-1].register_forward_hook(lambda module, args, output: encoded.append(output))
    features = {s: torch.randn(1, 32, 64 // s, 64 // s) for s in (4, 8, 16, 32)}
    phrase_features = torch.randn(1, 2, 64)
    head(features, phrase_features, torch.ones(1, 2, dtype=torch.bool))
    _, scores, selection_pixels = seen[0][:3]
    # levels (strides 4, 8, 16, 32 at 64 px): 256, 64, 16 and 4 pixels
    stride8, stride16 = encoded[0].split([256, 64, 16, 4], dim=1)[1:3]
    torch.testing.assert_close(selection_pixels, stride16)  # the pixels come from the stride-16 level
    # and are ranked by the initial stride-8 mask brought to stride 16
    kernels = head.phrase_projection(phrase_features)
    logits = torch.einsum("bpd,bnd->bpn", kernels, stride8).view(1, 2, 8, 8) * head.logit_scale
    expected = F.interpolate(logits, size=(4, 4), mode="bilinear", align_corners=False).flatten(2)
    torch.testing.assert_close(scores, expected)


def test_drmn_kernel_mlp_and_round_pixel_map_give_the_masks():
    torch.manual_seed(0)
    config = tiny_drmn_config(drmn_kernel_mlp_layers=3, drmn_round_pixel_projection=True)
    head = DrmnHead(config).eval()
    round_ = head.rounds[0]
    # 3 x (Linear without bias + LN + ReLU) + Linear (kernel_update_head.py mask_fcs + fc_mask)
    assert sum(p.numel() for p in round_.kernel_mlp.parameters()) == 3 * (64 * 64 + 2 * 64) + 64 * 64 + 64
    assert round_.pixel_projection[0].bias is None
    features = {s: torch.randn(1, 32, 64 // s, 64 // s) for s in (4, 8, 16, 32)}
    output = head(features, torch.randn(1, 3, 64), torch.ones(1, 3, dtype=torch.bool))
    # The last round's masks are its kernels against its own pixel map (the head's documented contract).
    dot = torch.einsum("bpd,bdhw->bphw", output.phrase_embeddings, output.pixel_embeddings) * head.logit_scale
    torch.testing.assert_close(output.pred_masks, dot, atol=1e-4, rtol=1e-4)


def test_drmn_semantic_fpn_initial_matching():
    torch.manual_seed(0)
    config = tiny_drmn_config(drmn_level_projection="conv_gn_relu", drmn_initial_matching="semantic_fpn")
    head = DrmnHead(config).eval()
    fpn = head.semantic_fpn
    # semantic_fpn_wrapper_new.py: 1 + 1 + 2 + 3 conv3x3 + GN blocks over levels of strides 8, 8, 16, 32,
    # then kernel_head_new.py's loc_convs (1x1 without bias + GN)
    conv3x3, group_norm = 64 * 64 * 9 + 64, 2 * 64
    assert sum(p.numel() for p in fpn.parameters()) == 7 * (conv3x3 + group_norm) + 64 * 64 + group_norm
    encoded = []
    head.encoder_layers[-1].register_forward_hook(lambda module, args, output: encoded.append(output))
    features = {s: torch.randn(1, 32, 64 // s, 64 // s) for s in (4, 8, 16, 32)}
    phrase_features = torch.randn(1, 2, 64)
    output = head(features, phrase_features, torch.ones(1, 2, dtype=torch.bool))
    shapes = [(8, 8), (8, 8), (4, 4), (2, 2)]
    levels = [
        level.transpose(1, 2).reshape(1, 64, *shape)
        for level, shape in zip(encoded[0].split([64, 64, 16, 4], dim=1), shapes, strict=True)
    ]
    kernels = head.initial_kernels(
        head.phrase_projection(phrase_features)
    )  # init_kernels(text_encoder_pre(.))
    logits = torch.einsum("bpd,bdhw->bphw", kernels, fpn(levels)) * head.logit_scale  # B x P x H/8 x W/8
    expected = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(output.auxiliary_masks[0], expected)
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="semantic_fpn"):
        tiny_drmn_config(drmn_initial_matching="semantic_fpn")  # stride 4 cannot join a stride-8 sum


def test_drmn_reference_preset_builds_and_groups_norms_need_width_32():
    config = load_config("drmn-r101-bert-base-reference")
    assert (config.drmn_ffn_dim, config.drmn_text_conditioning, config.drmn_top_k_stride) == (256, False, 16)
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="divisible by 32"):
        tiny_drmn_config(drmn_hidden_dim=48, drmn_num_heads=4, drmn_level_projection="conv_gn_relu")


def test_tiny_drmn_with_every_reference_switch_trains():
    torch.manual_seed(0)
    config = tiny_drmn_config(
        drmn_level_projection="conv_gn_relu", drmn_top_k_stride=16, drmn_kernel_mlp_layers=3,
        drmn_round_pixel_projection=True, drmn_text_conditioning=False, drmn_ffn_dim=64, drmn_top_k=8,
        drmn_initial_matching="semantic_fpn",
    )  # fmt: skip
    model = PngForPanopticNarrativeGrounding(config).train()
    output = model(**make_inputs([2, 1], with_labels=True))
    assert torch.isfinite(output.loss)
    output.loss.backward()


# ------------------------------------------------------------------------------------------- recipes
def test_released_step_schedule_by_epoch():
    schedule = EpochStepSchedule(steps_per_epoch=10)
    # train_net.py lambda_lr: 1e-5 (epochs 0-4), 5e-6 (5-9), 2e-6 (10-19), 5e-7 (20+)
    factors = {epoch: schedule(epoch * 10 + 3) for epoch in (0, 4, 5, 9, 10, 19, 20, 59)}
    assert factors == {0: 1.0, 4: 1.0, 5: 0.5, 9: 0.5, 10: 0.2, 19: 0.2, 20: 0.05, 59: 0.05}


def test_released_recipe_fills_what_the_user_left_out(tmp_path):
    args = parse_args(["--synthetic", "--output_dir", str(tmp_path), "--optimization", "epng-released"])
    assert (args.gradient_accumulation_steps, args.num_train_epochs, args.per_device_train_batch_size) == (
        4,
        60,
        8,
    )
    assert (args.max_grad_norm, args.ema_decay, args.eval_image_size) == (0.0, 0.999, 1216)
    args = parse_args(
        ["--synthetic", "--output_dir", str(tmp_path), "--optimization", "epng-released",
         "--gradient_accumulation_steps", "1", "--ema_decay", "0"]
    )  # fmt: skip
    assert (args.gradient_accumulation_steps, args.ema_decay) == (1, 0.0)
    args = parse_args(["--synthetic", "--output_dir", str(tmp_path)])
    assert (args.gradient_accumulation_steps, args.max_grad_norm, args.ema_decay) == (1, 1.0, 0.0)


def test_drmn_never_gets_epng_learning_rate_by_accident():
    assert resolve_preset("auto", 50_000_000, "drmn").learning_rate == 1e-4
    assert resolve_preset("auto", 50_000_000, "epng").learning_rate == 1e-5
    assert resolve_preset("drmn-reference", 50_000_000, "drmn").lr_scheduler_type == "constant"


def test_released_adam_decays_every_parameter():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    optimizer = build_optimizer(
        model, optimizer="adam", learning_rate=1e-5, weight_decay=0.01, decay_all_parameters=True
    )
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["weight_decay"] == 0.01
    assert len(optimizer.param_groups[0]["params"]) == 4
    ours = build_optimizer(model, optimizer="adam", learning_rate=1e-5, weight_decay=0.01)
    assert [len(group["params"]) for group in ours.param_groups] == [1, 3]


def test_released_epoch_ema_matches_the_release_aliasing():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    reference = torch.nn.Linear(4, 2)
    reference.load_state_dict(model.state_dict())
    ema = ReleasedEpochEma(model, 0.999)
    # The release's EMA (utils/util.py) as train_net.py drives it: register before training; at each epoch
    # end update the shadow, then point the weights at it (param.data = shadow), never restoring.
    shadow = {name: p.data.clone() for name, p in reference.named_parameters()}
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (model, reference)]
    inputs = torch.randn(8, 4)
    for epoch in range(3):
        for net, optimizer in zip((model, reference), optimizers, strict=True):
            for _ in range(2):
                optimizer.zero_grad()
                net(inputs).pow(2).sum().backward()
                optimizer.step()
        ema.end_epoch(model)
        for name, p in reference.named_parameters():
            shadow[name] = (0.001 * p.data + 0.999 * shadow[name]).clone()
            p.data = shadow[name]
        for (name, ours), theirs in zip(model.named_parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(ours, theirs, msg=f"epoch {epoch}: {name}")


@pytest.mark.slow
def test_released_recipe_trains_end_to_end_with_the_release_ema(tmp_path):
    from safetensors.torch import load_file

    from narrative_grounding.training import train

    def run(name: str, *extra: str):
        argv = [
            "--synthetic", "easy", "--synthetic_num_train", "8", "--synthetic_num_validation", "4",
            "--synthetic_image_size", "64", "--synthetic_dir", str(tmp_path / "synthetic"),
            "--dataset_cache_dir", str(tmp_path / "arrow"), "--output_dir", str(tmp_path / name),
            "--optimization", "epng-released", "--learning_rate", "1e-2", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "2", "--num_train_epochs", "1", "--eval_image_size", "128",
            "--config_overrides", '{"lpa_implementation": "direct"}', "--report_to", "none",
            "--no_progress_bar", "--cpu", "--seed", "3", *extra,
        ]  # fmt: skip
        result = train(parse_args(argv))
        return result, load_file(tmp_path / name / "model.safetensors")

    with_ema, averaged = run("ema")
    _, trained = run("no-ema", "--ema_decay", "0")
    assert with_ema.completed_steps == 2 and with_ema.metrics["num_phrases"] > 0  # evaluated at 128 x 128
    torch.manual_seed(3)  # the trainer's set_seed(3) before building the model: the initial weights
    from narrative_grounding.loading import load_model_and_processor

    initial = load_model_and_processor("epng-tiny", config_overrides='{"lpa_implementation": "direct"}')[0]
    initial = initial.state_dict()
    name = "head.phrase_projection.weight"
    assert not torch.allclose(trained[name], initial[name])  # the step moved it
    # after the first epoch the release's EMA leaves 0.999 x initial + 0.001 x trained
    torch.testing.assert_close(averaged[name], 0.999 * initial[name] + 0.001 * trained[name])

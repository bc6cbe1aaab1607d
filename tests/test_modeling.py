"""PngForPanopticNarrativeGrounding with the EPNG head: shapes, invariances, losses, training, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from tiny_models import make_inputs, select_sample, tiny_model

from narrative_grounding.modeling.heads import GROUNDING_HEADS
from narrative_grounding.training import local_loss_counts


@pytest.mark.parametrize(("height", "width"), [(64, 64), (96, 64), (64, 128)])
def test_output_shapes(height, width):
    model = tiny_model()
    inputs = make_inputs([3, 1], height=height, width=width, with_labels=True)
    outputs = model(**inputs)
    # epng-tiny's masks are at stride 2 (ours); its pixel map, and its unrefined logits (kept as an
    # auxiliary, supervised prediction by the mask refinement, ours), at stride 4
    assert outputs.pred_masks.shape == (2, 3, height // 2, width // 2)
    assert outputs.phrase_embeddings.shape == (2, 3, model.config.d_model)
    assert outputs.pixel_embeddings.shape == (2, model.config.d_model, height // 4, width // 4)
    assert [masks.shape for masks in outputs.auxiliary_masks] == [(2, 3, height // 4, width // 4)]
    paper_stride = tiny_model(epng_mask_stride=4)(**inputs)
    assert paper_stride.pred_masks.shape == (2, 3, height // 4, width // 4)
    assert outputs.loss.shape == ()
    assert set(outputs.loss_dict) == {"bce", "dice", "sal_phrase_to_pixel", "sal_pixel_to_phrase"}


def test_tuple_output_matches_dict_output():
    model = tiny_model()
    inputs = make_inputs([2])
    with torch.no_grad():
        as_dict = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
    torch.testing.assert_close(as_tuple[0], as_dict.pred_masks)


def test_padding_phrases_does_not_change_real_phrases():
    model = tiny_model()
    inputs = make_inputs([2])
    padded = make_inputs([2])
    padded["phrase_token_mask"] = torch.cat(
        [padded["phrase_token_mask"], torch.zeros(1, 3, 16, dtype=torch.long)], 1
    )
    padded["phrase_token_mask"][0, 2, 9] = 1  # a padded phrase with tokens: still ignored through phrase_mask
    padded["phrase_mask"] = torch.cat([padded["phrase_mask"], torch.zeros(1, 3, dtype=torch.long)], 1)
    with torch.no_grad():
        reference = model(**inputs).pred_masks
        with_padding = model(**padded).pred_masks
    torch.testing.assert_close(with_padding[:, :2], reference, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(with_padding).all()


def test_batch_with_different_phrase_counts_equals_one_by_one():
    model = tiny_model()
    batch = make_inputs([3, 1], with_labels=True)
    with torch.no_grad():
        batched = model(**batch)
        for sample, count in enumerate([3, 1]):
            single = model(**select_sample(batch, sample, count))
            torch.testing.assert_close(
                batched.pred_masks[sample, :count], single.pred_masks[0], atol=1e-5, rtol=1e-5
            )


def test_batch_loss_normalisation_matches_global_counts():
    """The loss of a batch equals the loss recomputed from its halves with the batch's counts passed in:
    the property distributed training relies on."""
    model = tiny_model()
    batch = make_inputs([3, 2], with_labels=True)
    full = model(**batch)
    counts = local_loss_counts(batch)  # what a distributed trainer all-reduces (SAL's pixels at stride 4)
    halves = [model(**{k: v[i : i + 1] for k, v in batch.items()}, loss_counts=counts).loss for i in range(2)]
    torch.testing.assert_close(halves[0] + halves[1], full.loss, atol=1e-4, rtol=1e-4)


def test_narrative_without_real_phrases_is_finite():
    model = tiny_model()
    inputs = make_inputs([2, 1], with_labels=True)
    inputs["phrase_mask"][1] = 0
    outputs = model(**inputs)
    assert torch.isfinite(outputs.pred_masks).all()
    assert torch.isfinite(outputs.loss)
    outputs.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("fill", ["empty", "full"])
def test_loss_terms_finite_and_non_negative_on_edge_masks(fill):
    model = tiny_model()
    inputs = make_inputs([2], with_labels=True)
    inputs["labels"][0, 0] = 0.0 if fill == "empty" else 1.0
    outputs = model(**inputs)
    for name, value in outputs.loss_dict.items():
        assert torch.isfinite(value), name
        assert value >= 0, name
    outputs.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_loss_falls_when_predictions_match_labels():
    """BCE and Dice are smaller for logits that agree with the labels than for the opposite logits."""
    from narrative_grounding.modeling.losses import mask_loss_sums

    targets = (torch.rand(1, 2, 8, 8) > 0.5).float()
    phrase_mask = torch.ones(1, 2, dtype=torch.bool)
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    good = mask_loss_sums((targets * 2 - 1) * 8, targets, phrase_mask, valid)
    bad = mask_loss_sums((1 - targets * 2) * 8, targets, phrase_mask, valid)
    assert good[0] < bad[0] and good[1] < bad[1]
    assert good[1] < 0.05


def test_padded_pixels_are_left_out_of_the_loss():
    model = tiny_model()
    inputs = make_inputs([2], with_labels=True)
    inputs["pixel_mask"] = torch.ones(1, 64, 64, dtype=torch.long)
    inputs["pixel_mask"][:, :, 32:] = 0
    reference = model(**inputs).loss
    inputs["labels"][..., 32:] = 1 - inputs["labels"][..., 32:]  # change only padded pixels
    torch.testing.assert_close(model(**inputs).loss, reference)


def test_tiny_model_overfits_one_batch():
    model = tiny_model(seed=1).train()
    inputs = make_inputs([3, 2], with_labels=True, seed=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(40):
        outputs = model(**inputs)
        optimizer.zero_grad()
        outputs.loss.backward()
        optimizer.step()
        history.append({name: value.item() for name, value in outputs.loss_dict.items()})
    first, last = history[0], history[-1]
    assert last["bce"] < 0.2 * first["bce"] and last["dice"] < 0.2 * first["dice"], (first, last)
    # SAL's phrase -> pixel term is bounded below by log(#positive pixels) (eq. 13): it falls, not to zero.
    assert last["sal_phrase_to_pixel"] < first["sal_phrase_to_pixel"] - 1.0
    assert last["sal_pixel_to_phrase"] < 0.5 * first["sal_pixel_to_phrase"]
    model.eval()
    with torch.no_grad():
        logits = model(**inputs).pred_masks
    targets = torch.nn.functional.interpolate(inputs["labels"], size=logits.shape[-2:], mode="area") > 0.5
    predicted = logits.sigmoid() > 0.5
    real = inputs["phrase_mask"].bool()
    intersection = (predicted & targets).flatten(2).sum(-1)[real]
    union = (predicted | targets).flatten(2).sum(-1)[real]
    assert (intersection / union).mean() > 0.8


@pytest.mark.parametrize("head", GROUNDING_HEADS)
@pytest.mark.parametrize("phrase_counts", [[2], [2, 1]], ids=["batch1", "batch2"])
def test_bfloat16_forward_matches_float32(head, phrase_counts):
    """Every head in bfloat16 at batch 1 and 2: finite and close to float32 (DRMN once gave all-NaN masks at
    batch 1, where CPU grid_sample received a channels-last bfloat16 view)."""
    model = tiny_model(grounding_head=head)
    inputs = make_inputs(phrase_counts, with_labels=True)
    with torch.no_grad():
        reference = model(**inputs).pred_masks
        model = model.to(torch.bfloat16)
        outputs = model(**{**inputs, "pixel_values": inputs["pixel_values"].to(torch.bfloat16)})
    assert outputs.pred_masks.dtype == torch.bfloat16
    assert torch.isfinite(outputs.pred_masks.float()).all()
    assert torch.isfinite(outputs.loss)
    real = inputs["phrase_mask"].bool()
    error = (outputs.pred_masks.float() - reference)[real].abs().mean() / reference[real].abs().mean()
    assert error < 0.1


def test_visual_encoder_runs_channels_last_on_cpu_with_the_same_features_and_gradients():
    """On CPU the backbone takes NHWC images (torch's NCHW max pooling is slow) and keeps its convolution
    weights channels-last; features and gradients are those of the NCHW computation (in float64, where
    summation order does not hide a difference)."""
    encoder = tiny_model().visual_encoder.train().double()
    assert all(
        p.is_contiguous(memory_format=torch.channels_last) for p in encoder.parameters() if p.dim() == 4
    )
    pixel_values = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    features = encoder(pixel_values)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in features.values())
    assert pixel_values.is_contiguous()  # the caller's tensor is left as it was
    nchw_encoder = copy.deepcopy(encoder)  # the same weights in the default layout, fed NCHW images
    for parameter in nchw_encoder.parameters():
        parameter.data = parameter.data.clone(memory_format=torch.contiguous_format)
    nchw = nchw_encoder.neck(list(nchw_encoder.backbone(pixel_values).feature_maps))
    assert not nchw[0].is_contiguous(memory_format=torch.channels_last)
    for stride, reference in zip((4, 8, 16, 32), nchw, strict=True):
        torch.testing.assert_close(features[stride], reference, atol=1e-10, rtol=1e-10)
    # the stem's first convolution (epng-tiny's deep stem is a Sequential of three)
    weight = next(p for p in encoder.backbone.parameters() if p.dim() == 4)
    (gradient,) = torch.autograd.grad(sum(features[s].square().sum() for s in (4, 8, 16, 32)), weight)
    reference_weight = next(p for p in nchw_encoder.backbone.parameters() if p.dim() == 4)
    (reference_gradient,) = torch.autograd.grad(sum(f.square().sum() for f in nchw), reference_weight)
    torch.testing.assert_close(gradient, reference_gradient, atol=1e-8, rtol=1e-10)


def test_freezing_follows_the_config():
    model = tiny_model(freeze_text_encoder=True, backbone_trainable_stages=2)
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    trainable = {
        n.split(".")[1] for n, p in model.visual_encoder.backbone.named_parameters() if p.requires_grad
    }
    assert trainable == {"layer3", "layer4"}
    assert all(p.requires_grad for p in model.visual_encoder.neck.parameters())
    model.train()
    assert not model.text_encoder.training and model.head.training


# ---------------------------------------------------------------- bad input
def test_wrong_image_channels_is_a_clear_error():
    model = tiny_model()
    inputs = make_inputs([2])
    inputs["pixel_values"] = inputs["pixel_values"][:, :1]
    with pytest.raises(ValueError, match="3, height, width"):
        model(**inputs)


def test_image_size_not_multiple_of_32_is_a_clear_error():
    model = tiny_model()
    inputs = make_inputs([2], height=70)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(**inputs)


def test_labels_phrase_count_mismatch_is_a_clear_error():
    model = tiny_model()
    inputs = make_inputs([2], with_labels=True)
    inputs["labels"] = inputs["labels"][:, :1]
    with pytest.raises(ValueError, match="one mask per phrase"):
        model(**inputs)


def test_labels_of_wrong_size_is_a_clear_error():
    model = tiny_model()
    inputs = make_inputs([2], with_labels=True)
    inputs["labels"] = inputs["labels"][..., :50, :50]
    with pytest.raises(ValueError, match="labels must have the size"):
        model(**inputs)


def test_phrase_mask_shape_mismatch_is_a_clear_error():
    model = tiny_model()
    inputs = make_inputs([2])
    inputs["phrase_mask"] = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="phrase_mask must be"):
        model(**inputs)


def test_real_phrase_without_tokens_is_a_clear_error():
    model = tiny_model()
    inputs = make_inputs([2])
    inputs["phrase_token_mask"][0, 1] = 0
    with pytest.raises(ValueError, match="phrase 1 of sample 0"):
        model(**inputs)


def test_token_mask_length_mismatch_is_a_clear_error():
    model = tiny_model()
    inputs = make_inputs([2])
    inputs["phrase_token_mask"] = inputs["phrase_token_mask"][..., :10]
    with pytest.raises(ValueError, match="num_tokens=16"):
        model(**inputs)


def test_misspelled_argument_is_a_clear_error():
    model = tiny_model()
    inputs = make_inputs([2], with_labels=True)
    inputs["phrase_masks"] = inputs.pop("labels")
    with pytest.raises(TypeError, match="phrase_masks"):
        model(**inputs)
    with pytest.raises(TypeError, match="output_attentions"):
        model(**make_inputs([2]), output_attentions=True)
    model(**make_inputs([2]), output_attentions=False)


class _DotProductHead(torch.nn.Module):
    """The smallest head the registry accepts: phrase . stride-4 pixel logits."""

    def __init__(self, config) -> None:
        super().__init__()
        self.phrase_projection = torch.nn.Linear(config.text_config.hidden_size, config.fpn_channels)

    def forward(self, features, phrase_features, phrase_mask):
        from narrative_grounding.modeling.head_output import GroundingHeadOutput

        kernels = self.phrase_projection(phrase_features)  # B x P x C
        return GroundingHeadOutput(pred_masks=torch.einsum("bpc,bchw->bphw", kernels, features[4]))


def test_a_new_head_is_one_registry_entry(monkeypatch):
    from narrative_grounding.modeling.heads import GROUNDING_HEADS

    with pytest.raises(
        (ValueError, StrictDataclassClassValidationError),
        match="grounding_head must be one of .*'epng', 'drmn'.*got 'dot'",
    ):
        tiny_model(grounding_head="dot")
    # The config's validation and the model's construction read the same registry.
    monkeypatch.setitem(GROUNDING_HEADS, "dot", _DotProductHead)
    model = tiny_model(grounding_head="dot")
    assert isinstance(model.head, _DotProductHead)
    outputs = model(**make_inputs([2, 3], height=64, width=64, with_labels=True))
    assert outputs.pred_masks.shape == (2, 3, 16, 16)
    outputs.loss.backward()
    assert model.head.phrase_projection.weight.grad is not None


def test_attention_phrase_pooling_starts_as_the_mean_and_weights_tokens_by_a_softmax_of_their_scores(
    tmp_path,
):
    from narrative_grounding import PngForPanopticNarrativeGrounding
    from narrative_grounding.modeling.text_encoder import PhrasePooling, pool_phrases

    torch.manual_seed(0)
    tokens = torch.randn(2, 6, 8)
    membership = torch.zeros(2, 3, 6)
    membership[0, 0, 1:4] = 1
    membership[0, 1, 4] = 1
    membership[1, 0, 0:6] = 1  # sample 1, phrase 2 and sample 0, phrase 2: padding (no tokens)
    pooling = PhrasePooling("attention", 8)
    torch.testing.assert_close(pooling(tokens, membership), pool_phrases(tokens, membership))
    with torch.no_grad():
        pooling.score.normal_()
    scores = tokens @ pooling.score  # B x T
    expected = torch.zeros(2, 3, 8)
    for sample, phrase in [(0, 0), (0, 1), (1, 0)]:
        member = membership[sample, phrase].bool()
        weights = torch.softmax(scores[sample][member], dim=0)
        expected[sample, phrase] = weights @ tokens[sample][member]
    torch.testing.assert_close(pooling(tokens, membership), expected)
    assert PhrasePooling("mean", 8).score is None

    model = tiny_model(phrase_pooling="attention")
    assert not model.phrase_pooling.score.any()  # the model's weight initialisation keeps the mean start
    inputs = make_inputs([2, 1])
    model.save_pretrained(tmp_path)
    loaded = PngForPanopticNarrativeGrounding.from_pretrained(tmp_path).eval()
    assert loaded.config.phrase_pooling == "attention" and loaded.phrase_pooling.score is not None
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).pred_masks, model(**inputs).pred_masks)

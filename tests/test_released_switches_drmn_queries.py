"""DRMN's reference queries as switches, each against a hand-written computation of the reference's formula on
small tensors (JaMesLiMers/DRMN): one query per noun token (`drmn_queries`), the round's context query
(`drmn_context_query` with its 1-D slot position), unscaled mask logits (`drmn_scale_mask_logits`) and the
phrase update's dropout (`drmn_phrase_update_dropout`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from tiny_models import TEST_VOCAB_SIZE, make_inputs, select_sample

from narrative_grounding import PngConfig, PngForPanopticNarrativeGrounding, load_config
from narrative_grounding.modeling.drmn_queries import noun_token_queries, phrase_mean_logits
from narrative_grounding.modeling.heads_drmn import DrmnHead
from narrative_grounding.modeling.losses import QUERIES, loss_counts
from narrative_grounding.modeling.position_encoding import slot_position_embedding

REFERENCE = "drmn-r101-bert-base-reference"
# The four switches and the values the reference preset sets (drmn_query_slots: the reference's max_seg_num).
REFERENCE_QUERIES = {
    "drmn_queries": "noun_token",
    "drmn_context_query": "pixel",
    "drmn_query_slots": 64,
    "drmn_scale_mask_logits": False,
    "drmn_phrase_update_dropout": 0.0,
}


def tiny_drmn_config(**overrides) -> PngConfig:
    return load_config("drmn-tiny", text_config={"vocab_size": TEST_VOCAB_SIZE}, **overrides)


def random_features(batch: int = 1, size: int = 64, seed: int = 0) -> dict[int, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {s: torch.randn(batch, 32, size // s, size // s, generator=generator) for s in (4, 8, 16, 32)}


def capture_output(module: torch.nn.Module) -> list:
    seen = []
    module.register_forward_hook(lambda _module, _args, output: seen.append(output))
    return seen


# ------------------------------------------------------------------------------------------- queries
def test_one_query_per_token_of_each_real_phrase_in_phrase_then_token_order():
    tokens = torch.arange(2 * 6 * 3, dtype=torch.float32).view(2, 6, 3)  # B x T x C
    phrase_token_mask = torch.zeros(2, 3, 6)
    phrase_token_mask[0, 0, [1, 2]] = 1  # "a black bear": two tokens
    phrase_token_mask[0, 1, 4] = 1
    phrase_token_mask[0, 2, 5] = 1  # a padded phrase slot: its token is no query
    phrase_token_mask[1, 1, [3, 4, 5]] = 1
    phrase_mask = torch.tensor([[True, True, False], [False, True, False]])
    queries = noun_token_queries(tokens, phrase_token_mask, phrase_mask)
    # (phrase, token) pairs: sample 0 -> (0, 1), (0, 2), (1, 4); sample 1 -> (1, 3), (1, 4), (1, 5)
    torch.testing.assert_close(queries.features[0], tokens[0, [1, 2, 4]])
    torch.testing.assert_close(queries.features[1], tokens[1, [3, 4, 5]])
    expected_phrases = torch.zeros(2, 3, 3)
    expected_phrases[0, [0, 1, 2], [0, 0, 1]] = 1
    expected_phrases[1, [0, 1, 2], [1, 1, 1]] = 1
    torch.testing.assert_close(queries.phrases, expected_phrases)
    assert queries.mask.all()
    # Uneven counts pad the shorter sample with zero queries belonging to no phrase.
    phrase_mask[1, 1] = False
    phrase_mask[1, 0] = True
    phrase_token_mask[1, 0, 0] = 1
    padded = noun_token_queries(tokens, phrase_token_mask, phrase_mask)
    assert padded.mask.tolist() == [[True, True, True], [True, False, False]]
    torch.testing.assert_close(padded.features[1, 0], tokens[1, 0])
    assert padded.features[1, 1:].abs().sum() == 0 and padded.phrases[1, 1:].sum() == 0


def test_phrase_logit_is_the_mean_of_its_token_probabilities():
    torch.manual_seed(0)
    token_logits = torch.randn(1, 4, 3, 5) * 4  # B x Q x h x w
    phrases = torch.tensor([[[1.0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0]]])  # 3 tokens, 1 token, a pad
    mean_logits = phrase_mean_logits(token_logits, phrases)
    mean_probability = token_logits[0, :3].sigmoid().mean(dim=0)  # metrics.py phrase_masks: mean(0) > 0.5
    torch.testing.assert_close(mean_logits[0, 0], torch.log(mean_probability / (1 - mean_probability)))
    torch.testing.assert_close(mean_logits[0, 0] > 0, mean_probability > 0.5)
    torch.testing.assert_close(mean_logits[0, 1], token_logits[0, 3])  # one token: its own logit
    assert (mean_logits[0, 2] == 0).all()  # a phrase without queries
    certain = phrase_mean_logits(
        torch.full((1, 1, 1, 2), 200.0) * torch.tensor([1.0, -1.0]), phrases[:, :1, :1]
    )
    assert torch.isfinite(certain).all() and certain[0, 0, 0, 0] > 80 and certain[0, 0, 0, 1] < -80


def test_noun_token_head_averages_every_predictions_token_probabilities():
    torch.manual_seed(0)
    head = DrmnHead(tiny_drmn_config(drmn_queries="noun_token")).eval()
    tokens = torch.randn(1, 7, 64)
    phrase_token_mask = torch.zeros(1, 2, 7)
    phrase_token_mask[0, 0, [1, 2, 3]] = 1
    phrase_token_mask[0, 1, [5, 6]] = 1
    phrase_mask = torch.ones(1, 2, dtype=torch.bool)
    phrase_features = (phrase_token_mask @ tokens) / phrase_token_mask.sum(-1, keepdim=True)
    output = head(
        random_features(),
        phrase_features,
        phrase_mask,
        token_features=tokens,
        phrase_token_mask=phrase_token_mask,
    )
    assert output.pred_masks.shape == (1, 2, 16, 16) and len(output.query_masks) == 4
    for token_masks, phrase_masks in zip(
        output.query_masks, (*output.auxiliary_masks, output.pred_masks), strict=True
    ):
        assert token_masks.shape == (1, 5, 16, 16)
        for phrase, queries in ((0, [0, 1, 2]), (1, [3, 4])):
            probability = token_masks[0, queries].sigmoid().mean(dim=0)
            torch.testing.assert_close(phrase_masks[0, phrase].sigmoid(), probability, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="needs token_features and phrase_token_mask"):
        head(random_features(), phrase_features, phrase_mask)


def test_single_token_phrases_give_the_phrase_queries_result():
    # One token per phrase: each phrase's pooled feature is its token's, so both query forms are one model.
    config = tiny_drmn_config()
    torch.manual_seed(0)
    phrase_head = DrmnHead(config).eval()
    token_head = DrmnHead(tiny_drmn_config(drmn_queries="noun_token")).eval()
    token_head.load_state_dict(phrase_head.state_dict())  # the switch adds no parameter
    tokens = torch.randn(1, 5, 64)
    phrase_token_mask = torch.zeros(1, 3, 5)
    phrase_token_mask[0, [0, 1, 2], [1, 2, 4]] = 1
    mask = torch.ones(1, 3, dtype=torch.bool)
    features = random_features()
    expected = phrase_head(features, tokens[:, [1, 2, 4]], mask)
    output = token_head(
        features, tokens[:, [1, 2, 4]], mask, token_features=tokens, phrase_token_mask=phrase_token_mask
    )
    torch.testing.assert_close(output.pred_masks, expected.pred_masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(output.phrase_embeddings, expected.phrase_embeddings)


def test_noun_token_queries_keep_batched_samples_apart():
    torch.manual_seed(0)
    model = PngForPanopticNarrativeGrounding(tiny_drmn_config(**REFERENCE_QUERIES)).eval()
    inputs = make_inputs([3, 1])  # 6 and 2 token queries: the second sample's are padded to 6
    with torch.no_grad():
        batched = model(**inputs).pred_masks
        alone = model(**select_sample(inputs, 1, 1)).pred_masks
    torch.testing.assert_close(batched[1, :1], alone[0], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------- loss
def _hand_mask_losses(token_logits, phrase_of_token, phrase_targets, dice_eps):
    """runtime.py stage_loss on one prediction: each token against its phrase's mask (targets_token), BCE mean
    over the pixels, Dice 1 - 2 sum(pt) / (sum p^2 + sum t^2 + eps), each averaged over the tokens."""
    bce, dice = [], []
    for query, phrase in enumerate(phrase_of_token):
        logits, target = token_logits[query], phrase_targets[phrase]
        probability = logits.sigmoid()
        bce.append(F.binary_cross_entropy_with_logits(logits, target))
        overlap = (probability * target).sum()
        dice.append(1 - 2 * overlap / ((probability**2).sum() + (target**2).sum() + dice_eps))
    return torch.stack(bce).mean(), torch.stack(dice).mean()


def test_noun_token_loss_is_each_token_against_its_phrase_mask():
    torch.manual_seed(0)
    model = PngForPanopticNarrativeGrounding(tiny_drmn_config(drmn_queries="noun_token")).train()
    head_outputs = capture_output(model.head)
    inputs = make_inputs([2], with_labels=True)  # phrase p = tokens 1 + 2p and 2 + 2p
    inputs["phrase_token_mask"][0, 1, 5] = 1  # phrase 1 gets a third token: 5 token queries in all
    output = model(**inputs)
    targets = F.interpolate(inputs["labels"], size=(16, 16), mode="area")[0]  # the stride-4 targets
    bce = dice = 0.0
    for prediction in head_outputs[0].query_masks:
        prediction_bce, prediction_dice = _hand_mask_losses(
            prediction[0], [0, 0, 1, 1, 1], targets, model.config.dice_eps
        )
        bce, dice = bce + prediction_bce, dice + prediction_dice
    torch.testing.assert_close(output.loss_dict["bce"], bce)
    torch.testing.assert_close(output.loss_dict["dice"], dice)
    output.loss.backward()
    # The distributed trainer's counts (`loss_counts` with the token mask) normalise the same way.
    counts = loss_counts(targets[None], inputs["phrase_mask"].bool(), torch.ones(1, 16, 16, dtype=torch.bool),
                         inputs["phrase_token_mask"])  # fmt: skip
    assert counts[QUERIES] == 5
    model.eval()  # the tiny model's BERT dropout and BatchNorm statistics differ between training calls
    with torch.no_grad():
        own, given = model(**inputs), model(**inputs, loss_counts=counts)
    torch.testing.assert_close(given.loss_dict["bce"], own.loss_dict["bce"])
    torch.testing.assert_close(given.loss_dict["dice"], own.loss_dict["dice"])
    with torch.no_grad():  # the token count is what divides (twice the tokens elsewhere: half the loss)
        shared = model(**inputs, loss_counts={**counts, QUERIES: counts[QUERIES] * 2})
    torch.testing.assert_close(shared.loss_dict["bce"], own.loss_dict["bce"] / 2)


# ------------------------------------------------------------------------------------------- rounds
def test_slot_position_is_the_references_table_with_its_axes_exchanged():
    slots, dim = 6, 5
    # deform_txt_decoder.py prepare_input: positionalencoding1d(B, d_model=slots, max_len=dim), transposed.
    # position_encoding.py: pe[c, 2i] = sin(c * div_i), pe[c, 2i + 1] = cos(c * div_i),
    # div_i = exp(2i * -ln(10000) / slots); the table is read as pe[c, n] for slot n, channel c.
    table = [[0.0] * slots for _ in range(dim)]
    for channel in range(dim):
        for i in range(0, slots, 2):
            div = math.exp(i * -math.log(10000.0) / slots)
            table[channel][i] = math.sin(channel * div)
            table[channel][i + 1] = math.cos(channel * div)
    expected = torch.tensor(table).T  # slots x dim
    embedding = slot_position_embedding(slots, dim, device=torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(embedding, expected)


def test_pixel_context_query_is_the_selected_pixel_plus_its_slot_position():
    torch.manual_seed(0)
    config = tiny_drmn_config(drmn_context_query="pixel", drmn_query_slots=10, drmn_top_k=3)
    head = DrmnHead(config).eval()
    round_ = head.rounds[0]
    queries_seen, norm_inputs, round_inputs = [], [], []
    round_.register_forward_pre_hook(lambda _module, args: round_inputs.append(args))
    round_.context_attention.register_forward_pre_hook(lambda _module, args: queries_seen.append(args[0]))
    context_out = capture_output(round_.context_attention)
    round_.context_norm.register_forward_pre_hook(lambda _module, args: norm_inputs.append(args[0]))
    head(random_features(), torch.randn(1, 2, 64), torch.ones(1, 2, dtype=torch.bool))
    phrases, scores, selection_pixels = round_inputs[0][:3]
    top = scores.topk(3, dim=-1).indices  # 1 x P x K
    slots = slot_position_embedding(10, 64, device=torch.device("cpu"), dtype=torch.float32)
    expected = torch.stack([selection_pixels[0, top[0, phrase]] + slots[phrase] for phrase in range(2)]).view(
        1, 6, 64
    )  # deform_txt_decoder.py: tgt (the pixel) + query_pos (the slot's position)
    torch.testing.assert_close(queries_seen[0], expected)
    # ... and the attended context is added to the phrase state (original_tgt), not to the pixel
    residual = norm_inputs[0] - context_out[0]  # drmn-tiny: dropout 0
    torch.testing.assert_close(residual, phrases.repeat_interleave(3, dim=1))
    with pytest.raises(ValueError, match="drmn_query_slots=10"):
        head(random_features(), torch.randn(1, 11, 64), torch.ones(1, 11, dtype=torch.bool))


@pytest.mark.parametrize("scale", [True, False])
def test_drmn_mask_logits_scaled_or_plain(scale):
    torch.manual_seed(0)
    head = DrmnHead(tiny_drmn_config(drmn_scale_mask_logits=scale)).eval()
    output = head(random_features(), torch.randn(1, 3, 64), torch.ones(1, 3, dtype=torch.bool))
    dot = torch.einsum("bpd,bdhw->bphw", output.phrase_embeddings, output.pixel_embeddings)
    # kernel_update_head.py: einsum('bchw,bnc->bnhw') with nothing after it
    expected = dot * 64**-0.5 if scale else dot
    torch.testing.assert_close(output.pred_masks, expected, atol=1e-4, rtol=1e-4)


def test_phrase_update_dropout_is_its_own_rate():
    torch.manual_seed(0)
    features, phrases, mask = random_features(), torch.randn(1, 2, 64), torch.ones(1, 2, dtype=torch.bool)

    def two_training_runs(**overrides):
        head = DrmnHead(tiny_drmn_config(**overrides)).train()
        return head(features, phrases, mask).pred_masks, head(features, phrases, mask).pred_masks

    first, second = two_training_runs(drmn_dropout=0.0, drmn_phrase_update_dropout=0.5)
    assert not torch.allclose(first, second)  # only the phrase update drops
    first, second = two_training_runs(drmn_dropout=0.0, drmn_phrase_update_dropout=0.0)
    torch.testing.assert_close(first, second)
    head = DrmnHead(tiny_drmn_config(drmn_dropout=0.3, drmn_phrase_update_dropout=0.0))
    assert head.rounds[0].dropout.p == 0.3  # the context encoding keeps drmn_dropout (the reference's 0.1)
    assert head.rounds[0].update_dropout.p == 0.0 and head.rounds[0].phrase_ffn[2].p == 0.0
    assert (
        DrmnHead(tiny_drmn_config(drmn_dropout=0.3)).rounds[0].update_dropout.p == 0.3
    )  # None: drmn_dropout


# ------------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("drmn_queries", "token", "drmn_queries must be one of"),
        ("drmn_context_query", "slot", "drmn_context_query must be one of"),
        ("drmn_query_slots", 0, "drmn_query_slots must be >= 1"),
        ("drmn_phrase_update_dropout", 1.0, "drmn_phrase_update_dropout must be in"),
    ],
)
def test_invalid_query_switches_name_the_field(field, value, message):
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match=message):
        tiny_drmn_config(**{field: value})


def test_reference_preset_sets_the_switches_and_keeps_its_parameter_count():
    config = load_config(REFERENCE)
    assert {key: getattr(config, key) for key in REFERENCE_QUERIES} == REFERENCE_QUERIES
    ours = load_config(REFERENCE, drmn_queries="phrase", drmn_context_query="phrase",
                       drmn_scale_mask_logits=True, drmn_phrase_update_dropout=None)  # fmt: skip
    counts = []
    for each in (config, ours):
        with torch.device("meta"):
            counts.append(sum(p.numel() for p in DrmnHead(each).parameters()))
    assert counts == [13_448_576, 13_448_576]  # none of the four switches adds a weight
    assert load_config("drmn-r101-bert-base").drmn_queries == "phrase"  # ours stays the default


def test_query_switches_survive_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = PngForPanopticNarrativeGrounding(tiny_drmn_config(**REFERENCE_QUERIES)).eval()
    model.save_pretrained(tmp_path)
    loaded = PngForPanopticNarrativeGrounding.from_pretrained(tmp_path).eval()
    assert {key: getattr(loaded.config, key) for key in REFERENCE_QUERIES} == REFERENCE_QUERIES
    inputs = make_inputs([2, 1])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).pred_masks, model(**inputs).pred_masks)

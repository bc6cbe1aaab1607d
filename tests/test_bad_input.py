"""Bad input at the library's public boundaries (processor, post-processing, pipeline, model factory, loading,
metric): each mistake is an error naming the argument, never a silently wrong result."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from tiny_models import tiny_model
from transformers import AutoTokenizer

from narrative_grounding import PngConfig, PngForPanopticNarrativeGrounding, create_model, load_config
from narrative_grounding.factory import available_variants, variant_path
from narrative_grounding.metrics import AverageRecall
from narrative_grounding.modeling.image_processing_png import PngImageProcessor
from narrative_grounding.modeling.processing_png import PngProcessor

TOKENIZER_DIR = variant_path("epng-tiny")  # the tiny tokenizer ships in the tiny variants' folders
TEXT = "a red car near the tall tree"
PHRASES = ["a red car", "the tall tree"]


@pytest.fixture(scope="module")
def processor() -> PngProcessor:
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    return PngProcessor(PngImageProcessor(size={"height": 64, "width": 64}), tokenizer)


@pytest.fixture(scope="module")
def encoding(processor):
    image = PIL.Image.fromarray(np.full((48, 80, 3), 120, dtype=np.uint8))
    return processor(images=image, text=TEXT, phrases=PHRASES)


def logits_for(encoding) -> torch.Tensor:
    """Mask logits of the encoding's two phrases: the first covers the left half, the second nothing."""
    logits = torch.full((1, 2, 16, 16), -4.0)
    logits[0, 0, :, :8] = 4.0
    return logits


# ------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_float_pixel_is_an_error(processor, bad):
    image = np.full((20, 30, 3), 0.5, dtype=np.float32)
    image[7, 11, 1] = bad  # one pixel: NaN passed the [0, 1] check and emptied every mask of the image
    with pytest.raises(ValueError, match=r"image 0: 1 non-finite value.*\(1, 7, 11\)"):
        processor(images=image, text=TEXT, phrases=PHRASES)
    with pytest.raises(ValueError, match="non-finite"):
        processor.image_processor(torch.from_numpy(image).permute(2, 0, 1))


def test_non_finite_pixel_of_a_pil_float_image_is_an_error(processor):
    array = np.full((10, 10), 0.25, dtype=np.float32)
    array[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"image 1: 1 non-finite value"):
        processor.image_processor([np.zeros((10, 10, 3), np.uint8), PIL.Image.fromarray(array, mode="F")])


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"size": {"height": -64, "width": 64}}, ValueError, "size\\['height'\\] must be a positive integer"),
        ({"size": {"height": 0, "width": 64}}, ValueError, "size\\['height'\\] must be a positive integer"),
        (
            {"pad_size": {"height": 64, "width": -1}},
            ValueError,
            "pad_size\\['width'\\] must be a positive integer",
        ),
        ({"keep_aspect_ratio": "yes"}, TypeError, "keep_aspect_ratio must be True or False"),
        ({"image_mean": [0.5, 0.5]}, ValueError, "image_mean must be one finite number or three"),
        ({"image_std": [0.0, 0.0, 0.0]}, ValueError, "image_std must be positive"),
        ({"rescale_factor": math.nan}, ValueError, "rescale_factor must be a positive finite number"),
    ],
)
def test_image_options_that_would_fail_in_torch_or_give_non_finite_pixels(processor, options, error, message):
    # a negative size failed inside torch; a zero std or a NaN rescale factor gave inf / NaN pixel_values
    with pytest.raises(error, match=message):
        processor(images=np.zeros((20, 30, 3), np.uint8), text=TEXT, phrases=PHRASES, **options)


def test_nan_in_ground_truth_masks_is_an_error(processor):
    masks = np.zeros((2, 20, 30), np.float32)
    masks[1, 4, 4] = np.nan  # NaN != 0 read as "inside"
    with pytest.raises(ValueError, match="phrase_masks of image 0: the mask of phrase 1 holds NaN"):
        processor(images=np.zeros((20, 30, 3), np.uint8), text=TEXT, phrases=PHRASES, phrase_masks=[masks])


def test_phrases_given_as_one_string_is_an_error(processor):
    # list("a red car") made every character a phrase and failed with "phrase 1 is empty"
    with pytest.raises(TypeError, match="phrases must be a list of phrases, got the string 'a red car'"):
        processor(text=TEXT, phrases="a red car")


# ------------------------------------------------------------------------------------------ post-processing
@pytest.mark.parametrize("threshold", [7, -0.1, 1.5, math.nan, math.inf, "0.5", None, True])
def test_threshold_outside_zero_one_is_an_error(processor, encoding, threshold):
    # 7 made every mask empty, -0.1 every mask full, NaN every mask empty
    with pytest.raises(ValueError, match="threshold must be a probability in \\[0, 1\\]"):
        processor.post_process_panoptic_narrative_grounding(
            logits_for(encoding), threshold=threshold, inputs=encoding
        )


def test_threshold_limits_are_accepted(processor, encoding):
    for threshold, expected in ((0.0, True), (1.0, False)):
        result = processor.post_process_panoptic_narrative_grounding(
            logits_for(encoding), threshold=threshold, inputs=encoding
        )[0]
        assert bool(result["masks"][1].all()) is expected  # the empty phrase: full at 0, empty at 1


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, "8", None])
def test_chunk_size_below_one_is_an_error(processor, encoding, chunk_size):
    # chunk_size=-1 returned no mask while `phrases` listed two
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        processor.post_process_panoptic_narrative_grounding(
            logits_for(encoding), inputs=encoding, chunk_size=chunk_size
        )


def test_chunk_size_does_not_change_the_masks(processor, encoding):
    results = [
        processor.post_process_panoptic_narrative_grounding(
            logits_for(encoding), inputs=encoding, chunk_size=size
        )[0]
        for size in (1, 2, 100)
    ]
    for result in results:
        assert result["masks"].shape == (2, 48, 80)
        assert torch.equal(result["masks"], results[0]["masks"])


def test_fewer_mask_slots_than_phrases_is_an_error(processor, encoding):
    # one slot for two phrases returned one mask for two phrases
    with pytest.raises(ValueError, match="sample 0 has 2 phrases but pred_masks only 1 phrase slots"):
        processor.post_process_panoptic_narrative_grounding(logits_for(encoding)[:, :1], inputs=encoding)


def test_nan_logits_of_a_real_phrase_are_an_error(processor, encoding):
    logits = logits_for(encoding)
    logits[0, 1, 3, 3] = math.nan
    with pytest.raises(ValueError, match="sample 0 hold NaN for phrase 1"):
        processor.post_process_panoptic_narrative_grounding(logits, inputs=encoding)


@pytest.mark.parametrize(
    "target_sizes", [[(0, 10)], [(10, -5)], [(10.5, 10)], [(10,)], ["ab"], [(10, 10), (10, 10)]]
)
def test_bad_target_sizes_are_errors(processor, encoding, target_sizes):
    with pytest.raises(ValueError, match="target_sizes|target sizes"):
        processor.post_process_panoptic_narrative_grounding(
            logits_for(encoding), target_sizes=target_sizes, inputs=encoding
        )


def test_outputs_that_are_not_mask_logits_are_an_error(processor, encoding):
    with pytest.raises(ValueError, match="pred_masks tensor"):
        processor.post_process_panoptic_narrative_grounding(logits_for(encoding)[0], inputs=encoding)
    with pytest.raises(ValueError, match="got dict"):
        processor.post_process_panoptic_narrative_grounding({"masks": 1}, inputs=encoding)


def test_return_rle_and_overlap_threshold_are_checked(processor, encoding):
    with pytest.raises(TypeError, match="return_rle must be True or False"):
        processor.post_process_panoptic_narrative_grounding(
            logits_for(encoding), inputs=encoding, return_rle="yes"
        )
    with pytest.raises(TypeError, match="inclusive_threshold must be True or False, got '>='"):
        processor.post_process_panoptic_narrative_grounding(
            logits_for(encoding), inputs=encoding, inclusive_threshold=">="
        )
    with pytest.raises(ValueError, match="overlap_threshold must be a fraction in \\[0, 1\\]"):
        processor.post_process_panoptic_map(logits_for(encoding), inputs=encoding, overlap_threshold=2)


def test_pipeline_checks_options_before_running_the_model(processor, tmp_path):
    from transformers import pipeline

    import narrative_grounding  # noqa: F401  (registers the task)

    model = create_model("epng-tiny", lpa_implementation="direct").eval()
    grounder = pipeline("panoptic-narrative-grounding", model=model, processor=processor)
    image = PIL.Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    for options, message in (({"threshold": 7}, "threshold"), ({"chunk_size": -1}, "chunk_size")):
        with pytest.raises(ValueError, match=message):
            grounder(image, narrative=TEXT, phrases=PHRASES, **options)


# ------------------------------------------------------------------------------------------ text options
@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"max_length": 2}, ValueError, "max_length must be an integer >= 3"),
        ({"max_length": 12.5}, ValueError, "max_length must be an integer >= 3"),
        ({"overlapping_windows": "yes"}, TypeError, "overlapping_windows must be True or False"),
        (
            {"overlapping_windows": True, "window_stride": 0},
            ValueError,
            "window_stride must be a positive integer",
        ),
        ({"window_stride": -3}, ValueError, "window_stride must be a positive integer"),
    ],
)
def test_text_options_are_checked_per_call_and_at_construction(processor, options, error, message):
    with pytest.raises(error, match=message):
        processor(text=TEXT, phrases=PHRASES, **options)
    with pytest.raises(error, match=message):
        PngProcessor(processor.image_processor, processor.tokenizer, **options)


# ------------------------------------------------------------------------------------------ model factory
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"grounding_haed": "drmn"}, "'grounding_haed' \\(did you mean 'grounding_head'\\?\\)"),
        ({"d_modle": 128}, "'d_modle' \\(did you mean 'd_model'\\?\\)"),
        ({"text_config": {"hiden_size": 32}}, "'text_config.hiden_size' \\(did you mean 'hidden_size'\\?\\)"),
        (
            {"backbone_config": {"timm_model_arg": {}}},
            "'backbone_config.timm_model_arg' \\(did you mean 'timm_model_args'\\?\\)",
        ),
    ],
)
def test_unknown_config_keys_are_errors_with_a_suggestion(overrides, message):
    # such typos ended up in config.json while the model kept its defaults
    with pytest.raises(ValueError, match="config override: unknown PngConfig key"):
        create_model("epng-tiny", **overrides)
    with pytest.raises(ValueError, match=message):
        load_config("epng-tiny", **overrides)


def test_every_shipped_variant_and_known_overrides_pass():
    for name in available_variants():
        assert isinstance(load_config(name), PngConfig)
    config = load_config(
        "epng-tiny",
        grounding_head="drmn",
        text_config={"num_hidden_layers": 1},
        backbone_config={"out_indices": [1, 2, 3, 4]},
    )
    assert config.grounding_head == "drmn" and config.text_config.num_hidden_layers == 1


def test_unknown_key_in_a_variant_folder_is_an_error(tmp_path):
    variant = tmp_path / "mine"
    shutil.copytree(variant_path("epng-tiny"), variant)
    config = json.loads((variant / "config.json").read_text())
    config["ffn_dimm"] = config.pop("ffn_dim")
    (variant / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match="variant mine .*unknown PngConfig key.*'ffn_dimm' \\(did you mean 'ffn_dim'"
    ):
        load_config(str(variant))
    assert load_config("epng-tiny").ffn_dim  # every shipped folder passes the same check


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("dropout", 2.0, "dropout must be in \\[0, 1\\)"),
        ("sal_temperature", 0.0, "sal_temperature must be > 0"),
        ("dice_loss_weight", math.nan, "dice_loss_weight must be a finite number"),
        ("bce_loss_weight", -1.0, "bce_loss_weight must be >= 0"),
        ("num_attention_heads", 0, "num_attention_heads must be >= 1"),
        ("d_model", "96", "d_model must be an integer"),
        ("freeze_text_encoder", "no", "freeze_text_encoder must be True or False"),
    ],
)
def test_config_values_of_the_wrong_type_or_range_name_the_field(field, value, message):
    from huggingface_hub.errors import StrictDataclassError

    with pytest.raises(StrictDataclassError, match=message):
        load_config("epng-tiny", **{field: value})


TINY_STAGES = {
    "backbone": "resnet18",
    "timm_model_args": {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128]},
}


def _stage_args(**changes) -> dict:
    return {**TINY_STAGES, "timm_model_args": {**TINY_STAGES["timm_model_args"], **changes}}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"text_config": {"vocab_size": 0}}, "text_config.vocab_size must be an integer >= 1, got 0"),
        ({"text_config": {"vocab_size": -3}}, "text_config.vocab_size must be an integer >= 1, got -3"),
        ({"text_config": {"hidden_size": 0}}, "text_config.hidden_size must be an integer >= 1, got 0"),
        (
            {"text_config": {"hidden_size": 65}},
            "text_config.hidden_size \\(65\\) must be divisible by text_config.num_attention_heads \\(2\\)",
        ),
        (
            {"text_config": {"num_attention_heads": 0}},
            "text_config.num_attention_heads must be an integer >= 1",
        ),
        (
            {"text_config": {"num_hidden_layers": -1}},
            "text_config.num_hidden_layers must be an integer >= 0, got -1",
        ),
        (
            {"text_config": {"intermediate_size": 0}},
            "text_config.intermediate_size must be an integer >= 1, got 0",
        ),
        (
            {"text_config": {"max_position_embeddings": 0}},
            "text_config.max_position_embeddings must be an integer",
        ),
        (
            {"text_config": {"type_vocab_size": 0}},
            "text_config.type_vocab_size must be an integer >= 1, got 0",
        ),
        (
            {"text_config": {"hidden_dropout_prob": 1.5}},
            "text_config.hidden_dropout_prob must be in \\[0, 1\\), got 1.5",
        ),
        (
            {"text_config": {"attention_probs_dropout_prob": -0.1}},
            "text_config.attention_probs_dropout_prob must be in \\[0, 1\\), got -0.1",
        ),
        ({"text_config": {"layer_norm_eps": 0.0}}, "text_config.layer_norm_eps must be > 0, got 0.0"),
        (
            {"text_config": {"vocab_size": 10, "pad_token_id": 10}},
            "text_config.pad_token_id must be a token id below",
        ),
        (
            {"backbone_config": _stage_args(channels=[0, 32, 64, 128])},
            "timm_model_args.channels must be 4 integers >= 1",
        ),
        (
            {"backbone_config": _stage_args(channels=[16, -4, 64, 128])},
            "timm_model_args.channels must be 4 integers",
        ),
        ({"backbone_config": _stage_args(channels=[16, 32, 64])}, "got \\[16, 32, 64\\]"),
        (
            {"backbone_config": _stage_args(layers=[0, 1, 1, 1])},
            "timm_model_args.layers must be 4 integers >= 1",
        ),
        (
            {"backbone_config": _stage_args(layers=[1, -1, 1, 1])},
            "timm_model_args.layers must be 4 integers >= 1",
        ),
        (
            {"backbone_config": _stage_args(stem_width=0)},
            "timm_model_args.stem_width must be an integer >= 1, got 0",
        ),
        ({"d_model": 90}, "d_model \\(90\\) must be divisible by num_attention_heads \\(4\\)"),
        ({"num_communicator_layers": -1}, "num_communicator_layers must be >= 0, got -1"),
        ({"ffn_dim": 0}, "ffn_dim must be >= 1, got 0"),
        ({"dropout": 1.0}, "dropout must be in \\[0, 1\\), got 1.0"),
        ({"grounding_head": "drmn", "drmn_top_k": 0}, "drmn_top_k must be >= 1, got 0"),
        ({"grounding_head": "drmn", "drmn_encoder_layers": -2}, "drmn_encoder_layers must be >= 0, got -2"),
    ],
)
def test_nonsensical_sizes_are_refused_by_the_config_naming_field_and_value(overrides, message):
    # each of these failed deep inside torch (IndexError, negative dimension, ZeroDivisionError) or trained
    # silently wrong (a ResNet stage of no block skipped its downsampling)
    from huggingface_hub.errors import StrictDataclassClassValidationError

    with pytest.raises((ValueError, StrictDataclassClassValidationError), match=message):
        load_config("epng-tiny", **overrides)


def test_a_stem_width_the_backbone_ignores_is_refused():
    # timm's default ResNet stem is 64 channels wide whatever stem_width says; its deep stems read it
    with pytest.raises(
        ValueError, match="stem_width=16 cannot be honoured: the stem of 'resnet18' is one conv"
    ):
        create_model("epng-tiny", backbone_config=_stage_args(stem_width=16, stem_type=""))
    model = create_model("epng-tiny", backbone_config=_stage_args(stem_width=16, stem_type="deep"))
    assert model.visual_encoder.backbone._backbone.conv1[0].out_channels == 16
    create_model("epng-tiny", backbone_config=_stage_args(stem_width=64, stem_type=""))  # the default stem's
    # epng-tiny's own: timm's deep stem, 8 channels wide
    assert create_model("epng-tiny").visual_encoder.backbone._backbone.conv1[0].out_channels == 8


def test_an_unknown_timm_backbone_is_a_value_error():
    with pytest.raises(ValueError, match="backbone_config.backbone 'resnet18x' is not a timm model"):
        create_model("epng-tiny", backbone_config={"backbone": "resnet18x"})


def test_training_config_overrides_are_checked_too():
    from narrative_grounding.loading import load_model_and_processor

    with pytest.raises(ValueError, match="'d_modle' \\(did you mean 'd_model'\\?\\)"):
        load_model_and_processor("epng-tiny", config_overrides={"d_modle": 128})


# ------------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("shard", [False, True], ids=["single-file", "indexed"])
def test_model_folder_without_config_json_says_so(tmp_path, shard):
    # built a default ResNet-101 / BERT-base model, then failed with a key-mismatch report
    model = tiny_model()
    model.save_pretrained(tmp_path, **({"max_shard_size": "300KB"} if shard else {}))
    if shard:
        assert (tmp_path / "model.safetensors.index.json").is_file()
    os.remove(tmp_path / "config.json")
    with pytest.raises(OSError, match=f"{tmp_path} has no config.json"):
        PngForPanopticNarrativeGrounding.from_pretrained(tmp_path)
    with pytest.raises(OSError, match="has no config.json"):
        PngConfig.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------ metric
def test_metric_compute_options_are_checked_before_phrases_are_added():
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[:2] = 1
    metric = AverageRecall()
    phrase = {"predictions": [mask], "references": [mask], "is_thing": [True], "num_segments": [1]}
    with pytest.raises(ValueError, match="`integration` must be one of"):
        metric.compute(**phrase, integration="trapezoid")
    with pytest.raises(ValueError, match="`empty_ground_truth` must be one of"):
        metric.compute(**phrase, empty_ground_truth="ignore")
    # the failed calls added nothing: the phrase is counted once
    assert metric.compute(**phrase)["num_phrases"] == 1

"""The DRMN reference reconstruction's checkpoints (JaMesLiMers/DRMN) -> our drmn head.

`reference_head_shapes` lists the names and shapes of the reference checkpoint's `model_state` as its archived
shape record (tests/fixtures/checkpoint_shapes.json in that repository) has them, as a function of the sizes,
so that the same structure serves at full size (the parameter count of the reference preset) and tiny (a fast
end-to-end conversion). The values are random: only names and shapes are facts.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from test_conversion import FPN_CHANNELS, TINY_D2_OVERRIDES, ResNetFPN, detectron2_model_dict
from tiny_models import TEST_VOCAB_SIZE

from narrative_grounding import PngForPanopticNarrativeGrounding, load_config
from narrative_grounding.cli import main as cli_main
from narrative_grounding.conversion import (
    DRMN_KEY_MAP,
    KeyMapError,
    convert_drmn,
    convert_drmn_weights,
    convert_state_dict,
    read_drmn_checkpoint,
)
from narrative_grounding.conversion.drmn import prepare_drmn_tensors
from narrative_grounding.conversion.key_map import prefixed_state_dict
from narrative_grounding.modeling.heads_drmn import DrmnHead

REFERENCE_PRESET = "drmn-r101-bert-base-reference"

# The reference's sizes (checkpoint_shapes.json): width 256, BERT 768, 8 heads, 4 levels x 4 points, encoder
# and decoder FFN 256, phrase FFN 2048, 2 encoder layers, 3 rounds; its (unused) text encoder samples 4 points
# on one 1-D level.
REFERENCE_SIZES = {
    "d": 256,
    "fpn": 256,
    "text": 768,
    "heads": 8,
    "levels": 4,
    "points": 4,
    "ffn": 256,
    "phrase_ffn": 2048,
    "encoder_layers": 2,
    "rounds": 3,
}
# The semantic FPN's layers per level: (conv, GN) pairs at Sequential indices 0/1, 4/5, 8/9 (ReLU and
# upsampling in between), one pair for the two stride-8 levels, two for stride 16, three for stride 32.
SEMANTIC_FPN_INDICES = ((0, 1), (0, 1), (0, 1, 4, 5), (0, 1, 4, 5, 8, 9))


def reference_head_shapes(
    *, d, fpn, text, heads, levels, points, ffn, phrase_ffn, encoder_layers, rounds
) -> dict[str, tuple[int, ...]]:
    """model_state's names (without `module.`) and shapes."""
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name, out_features, in_features, bias=True):
        shapes[f"{name}.weight"] = (out_features, in_features)
        if bias:
            shapes[f"{name}.bias"] = (out_features,)

    def norm(name):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (d,)

    def deformable(name, offsets, weights):
        linear(f"{name}.sampling_offsets", offsets, d)
        linear(f"{name}.attention_weights", weights, d)
        linear(f"{name}.value_proj", d, d)
        linear(f"{name}.output_proj", d, d)

    def multihead(name):  # nn.MultiheadAttention
        shapes[f"{name}.in_proj_weight"] = (3 * d, d)
        shapes[f"{name}.in_proj_bias"] = (3 * d,)
        linear(f"{name}.out_proj", d, d)

    def encoder_layer(name, attention, offsets, weights):
        deformable(f"{name}.{attention}", offsets, weights)
        norm(f"{name}.norm1")
        linear(f"{name}.linear1", ffn, d)
        linear(f"{name}.linear2", d, ffn)
        norm(f"{name}.norm2")

    sampled = heads * levels * points
    shapes["encoder_head.out_embed"] = (levels, d)
    linear("encoder_head.text_encoder_pre.0", d, text)
    for level in range(levels):
        kernel = 4 if level == 0 else 1  # P2 reduced to stride 8 by a 4x4 stride-2 conv
        shapes[f"encoder_head.img_encoder_pre.{level}.0.weight"] = (d, fpn, kernel, kernel)
        shapes[f"encoder_head.img_encoder_pre.{level}.0.bias"] = (d,)
        norm(f"encoder_head.img_encoder_pre.{level}.1")
    for layer in range(encoder_layers):
        name = f"encoder_head.text_encoder.deformable_encoder_txt.{layer}"
        encoder_layer(name, "self_attn_txt", heads * points, heads * points)  # 1-D offsets on one level
    for layer in range(encoder_layers):
        encoder_layer(f"encoder_head.img_encoder.layers.{layer}", "self_attn", 2 * sampled, sampled)
    for level, indices in enumerate(SEMANTIC_FPN_INDICES):
        for index in indices:
            name = f"rpn_head.localization_fpn.convs_all_levels.{level}.{index}"
            if index % 4 == 0:
                shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (d, d, 3, 3), (d,)
            else:
                norm(name)
    linear("rpn_head.init_kernels", d, d)
    shapes["rpn_head.loc_convs.0.weight"] = (d, d, 1, 1)
    norm("rpn_head.loc_convs.1")
    for round_ in range(rounds):
        head = f"roi_head.mask_head.{round_}"
        shapes[f"{head}.loc_convs.0.weight"] = (d, d, 1, 1)
        norm(f"{head}.loc_convs.1")
        shapes[f"{head}.text_decoder.out_embed"] = (levels, d)
        layer = f"{head}.text_decoder.cross_layer"
        deformable(f"{layer}.cross_attn", 2 * sampled, sampled)
        norm(f"{layer}.norm1")
        multihead(f"{layer}.self_attn")
        norm(f"{layer}.norm2")
        linear(f"{layer}.linear1", ffn, d)
        linear(f"{layer}.linear2", d, ffn)
        norm(f"{layer}.norm3")
        multihead(f"{head}.topk_attn.attn")
        norm(f"{head}.topk_norm")
        for name in ("ffn", "ffn_pre"):
            linear(f"{head}.{name}.layers.0.0", phrase_ffn, d)
            linear(f"{head}.{name}.layers.1", d, phrase_ffn)
        norm(f"{head}.ffn_norm")
        norm(f"{head}.ffn_norm_pre")
        for index in (0, 3, 6):
            linear(f"{head}.mask_fcs.{index}", d, d, bias=False)
            norm(f"{head}.mask_fcs.{index + 1}")
        linear(f"{head}.fc_mask", d, d)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def test_reference_shape_record_facts():
    """Spot checks of the generator against entries of the reference's shape record."""
    shapes = reference_head_shapes(**REFERENCE_SIZES)
    assert shapes["encoder_head.img_encoder_pre.0.0.weight"] == (256, 256, 4, 4)
    assert shapes[
        "encoder_head.text_encoder.deformable_encoder_txt.1.self_attn_txt.sampling_offsets.weight"
    ] == (
        32,
        256,
    )
    assert shapes["encoder_head.img_encoder.layers.0.self_attn.sampling_offsets.weight"] == (256, 256)
    assert shapes["encoder_head.img_encoder.layers.0.self_attn.attention_weights.weight"] == (128, 256)
    assert shapes["roi_head.mask_head.2.ffn_pre.layers.1.weight"] == (256, 2048)
    assert shapes["roi_head.mask_head.0.topk_attn.attn.in_proj_weight"] == (768, 256)
    assert "rpn_head.localization_fpn.convs_all_levels.3.9.bias" in shapes
    assert "rpn_head.loc_convs.0.bias" not in shapes and "roi_head.mask_head.1.mask_fcs.3.bias" not in shapes
    assert len(shapes) == 281  # model_state entries of the shape record


def head_only_conversion(head: DrmnHead, config, state: dict[str, torch.Tensor]):
    """Apply DRMN_KEY_MAP to model_state tensors against one head (our names under `head.`)."""
    tensors = {f"model_state/{key}": value for key, value in state.items()}
    return convert_state_dict(
        prepare_drmn_tensors(tensors, config.drmn_num_levels),
        DRMN_KEY_MAP,
        prefixed_state_dict(head, "head."),
        config=config,
        source_name="reference head",
    )


@pytest.fixture(scope="module")
def reference_config():
    return load_config(REFERENCE_PRESET)


@pytest.fixture(scope="module")
def reference_head(reference_config) -> DrmnHead:
    return DrmnHead(reference_config)


def test_reference_checkpoint_head_loads_strictly_into_the_reference_preset(reference_head, reference_config):
    """Every tensor of the preset's head comes from the reference's model_state; every reference tensor is
    mapped or dropped because the reference's forward never calls it."""
    state = random_state(reference_head_shapes(**REFERENCE_SIZES))
    result = head_only_conversion(reference_head, reference_config, state)
    assert not result.unrepresented
    head_state = {key.removeprefix("head."): value for key, value in result.state_dict.items()}
    reference_head.load_state_dict(head_state, strict=True)
    # The reference's modules built but never called, and only those, are dropped.
    unused = re.compile(
        r"model_state/(encoder_head\.text_encoder\.|roi_head\.mask_head\.\d\.(text_decoder\.out_embed"
        r"|text_decoder\.cross_layer\.(self_attn|norm2)\.|ffn\.|ffn_norm\.))"
    )
    assert [key for key in result.dropped if not unused.match(key)] == []
    assert len(result.dropped) == 32 + 3 * (1 + 6 + 2 + 2 + 4 + 2)  # text encoder; per round (q/k/v split)
    assert all("never called" in reason for reason in result.dropped.values())
    decoder = "model_state/roi_head.mask_head.1.text_decoder.cross_layer"
    assert {f"{decoder}.self_attn.in_proj.q.weight", f"{decoder}.norm2.bias"} <= set(result.dropped)
    # Their one value projection serves every level: each of our per-level projections holds it.
    layer = reference_head.encoder_layers[1].deformable_attention
    for projection in layer.value_projections:
        assert torch.equal(
            projection.weight, state["encoder_head.img_encoder.layers.1.self_attn.value_proj.weight"]
        )
    # nn.MultiheadAttention's in_proj stacks q, k, v.
    fused = state["roi_head.mask_head.2.topk_attn.attn.in_proj_weight"]
    attention = reference_head.rounds[2].phrase_attention
    assert torch.equal(
        torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]), fused
    )
    assert torch.equal(
        reference_head.rounds[0].phrase_ffn[0].weight, state["roi_head.mask_head.0.ffn_pre.layers.0.0.weight"]
    )
    assert torch.equal(
        reference_head.rounds[1].kernel_mlp[9].bias, state["roi_head.mask_head.1.fc_mask.bias"]
    )
    assert torch.equal(
        reference_head.semantic_fpn.branches[3][4][1].weight,
        state["rpn_head.localization_fpn.convs_all_levels.3.9.weight"],
    )
    assert torch.equal(reference_head.level_embedding.weight, state["encoder_head.out_embed"])


def test_preset_head_parameter_count_against_the_reference_head_tensors(reference_head):
    """The preset's head has exactly the reference's head parameters, less the modules the reference builds
    but never calls, plus our per-level copies of its shared deformable value projection."""
    shapes = reference_head_shapes(**REFERENCE_SIZES)
    theirs = {key: torch.Size(shape).numel() for key, shape in shapes.items()}
    total = sum(theirs.values())

    def part(*fragments: str) -> int:
        return sum(n for key, n in theirs.items() if any(fragment in key for fragment in fragments))

    unused_text_encoder = part("encoder_head.text_encoder.")
    unused_decoder = part("text_decoder.out_embed", "cross_layer.self_attn.", "cross_layer.norm2.")
    unused_ffn = part(".ffn.layers.", ".ffn_norm.")
    value_projection = 256 * 256 + 256
    per_level_copies = (4 - 1) * value_projection * (2 + 3)  # 2 encoder layers + 3 rounds, 4 levels each
    ours = sum(p.numel() for p in reference_head.parameters())
    assert (total, unused_text_encoder, unused_decoder, unused_ffn) == (
        16_971_264,
        561_280,
        794_112,
        3_154_176,
    )
    assert per_level_copies == 986_880
    assert ours == total - unused_text_encoder - unused_decoder - unused_ffn + per_level_copies == 13_448_576


def test_phrase_ffn_width_is_named_when_the_switch_is_missing():
    config = load_config(REFERENCE_PRESET, drmn_phrase_ffn_dim=None)
    state = random_state(reference_head_shapes(**REFERENCE_SIZES))
    with pytest.raises(KeyMapError) as error:
        head_only_conversion(DrmnHead(config), config, state)
    message = str(error.value)
    assert "roi_head.mask_head.0.ffn_pre.layers.0.0.weight: needs drmn_phrase_ffn_dim" in message
    assert "head.rounds.2.phrase_ffn.3.weight" in message  # unfilled in our head


# ------------------------------------------------------------------------------ the whole checkpoint, tiny
TINY_SIZES = {
    "d": 64,
    "fpn": FPN_CHANNELS,
    "text": 64,
    "heads": 4,
    "levels": 4,
    "points": 4,
    "ffn": 128,
    "phrase_ffn": 96,
    "encoder_layers": 2,
    "rounds": 3,
}
TINY_REFERENCE_OVERRIDES = {
    **TINY_D2_OVERRIDES,
    "d_model": 64,
    "text_config": {"vocab_size": TEST_VOCAB_SIZE},
    "drmn_level_projection": "conv_gn_relu",
    "drmn_initial_matching": "semantic_fpn",
    "drmn_kernel_mlp_layers": 3,
    "drmn_round_pixel_projection": True,
    "drmn_top_k_stride": 16,
    "drmn_text_conditioning": False,
    "drmn_phrase_ffn_dim": 96,
}
LXMERT_KEYS = {
    "model.bert.embeddings.word_embeddings.weight": (30, 64),
    "model.bert.encoder.visn_fc.visn_fc.weight": (64, 16),
    "model.bert.encoder.cross_layers.0.visual_attention.att.query.weight": (64, 64),
}
FPN_WRAPPER_KEYS = {"fpn_wrapper.conv_pred.0.weight": (64, 64, 1, 1), "fpn_wrapper.aux_convs.1.bias": (64,)}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A reference-format checkpoint: DataParallel names, the three state dicts, an epoch counter."""
    head = random_state(reference_head_shapes(**TINY_SIZES), seed=1)
    detector = {key: torch.from_numpy(value) for key, value in detectron2_model_dict(ResNetFPN()).items()}
    detector["proposal_generator.anchor_generator.cell_anchors.0"] = torch.zeros(3, 4)
    detector.update(random_state(FPN_WRAPPER_KEYS, seed=2))
    text = random_state(LXMERT_KEYS, seed=3)
    path = tmp_path_factory.mktemp("drmn") / "checkpoint.pth"
    torch.save(
        {
            "epoch": 19,
            "model_state": {f"module.{k}": v for k, v in head.items()},
            "fpn_model_state": {f"module.{k}": v for k, v in detector.items()},
            "bert_model_state": {f"module.{k}": v for k, v in text.items()},
        },
        path,
    )
    return path, head, detector


def test_reader_flattens_the_three_states_without_the_dataparallel_prefix(tiny_checkpoint):
    path, head, detector = tiny_checkpoint
    tensors = read_drmn_checkpoint(path)
    assert len(tensors) == len(head) + len(detector) + len(LXMERT_KEYS)
    assert "model_state/encoder_head.out_embed" in tensors
    assert "fpn_model_state/backbone.fpn_lateral2.weight" in tensors
    assert "bert_model_state/model.bert.encoder.visn_fc.visn_fc.weight" in tensors


def test_reader_refuses_what_is_not_a_reference_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="expected a dict with 'model_state'"):
        read_drmn_checkpoint(path)
    torch.save({"model_state": {"w": [1, 2]}}, path)
    with pytest.raises(ValueError, match="model_state/w is a list"):
        read_drmn_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no DRMN checkpoint"):
        read_drmn_checkpoint(tmp_path / "missing.pth")


def test_tiny_reference_checkpoint_converts_names_what_has_no_counterpart(tiny_checkpoint, tmp_path):
    path, head, detector = tiny_checkpoint
    with pytest.raises(KeyMapError) as error:
        convert_drmn(path, variant="drmn-tiny", config_overrides=TINY_REFERENCE_OVERRIDES)
    message = str(error.value)
    for key in LXMERT_KEYS:
        assert f"bert_model_state/{key}: needs an LXMERT-style text encoder" in message
    for key in FPN_WRAPPER_KEYS:
        assert f"fpn_model_state/{key}: needs a second semantic FPN" in message
    assert "does not fill" not in message and "shape mismatches" not in message

    output = tmp_path / "converted"
    converted = convert_drmn(
        path, output, variant="drmn-tiny", config_overrides=TINY_REFERENCE_OVERRIDES, allow_unrepresented=True
    )
    assert set(converted.result.unrepresented) == {
        *(f"bert_model_state/{key}" for key in LXMERT_KEYS),
        *(f"fpn_model_state/{key}" for key in FPN_WRAPPER_KEYS),
    }
    model = PngForPanopticNarrativeGrounding.from_pretrained(output)  # strict by default
    assert model.config.backbone_stride_in_1x1  # detectron2's convention, from the Panoptic FPN settings
    assert torch.equal(model.head.phrase_projection.weight, head["encoder_head.text_encoder_pre.0.weight"])
    assert torch.equal(
        model.head.rounds[2].phrase_ffn_norm.bias, head["roi_head.mask_head.2.ffn_norm_pre.bias"]
    )
    assert torch.equal(model.visual_encoder.neck.lateral[0].weight, detector["backbone.fpn_lateral2.weight"])
    processor_config = json.loads((output / "processor_config.json").read_text())["image_processor"]
    assert processor_config["channel_order"] == "BGR"  # detectron2's input convention


def test_cli_convert_drmn(tiny_checkpoint, tmp_path, capsys):
    path, head, _ = tiny_checkpoint
    output = tmp_path / "converted"
    argv = ["convert", "drmn", str(path), str(output), "--variant", "drmn-tiny"]
    argv += ["--config_overrides", json.dumps(TINY_REFERENCE_OVERRIDES)]
    assert cli_main(argv) == 1
    assert "narrative-grounding convert drmn: error: " in capsys.readouterr().err and not output.exists()
    assert cli_main([*argv, "--allow_unrepresented"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {output}" in printed and "without a counterpart in this model" in printed
    model = PngForPanopticNarrativeGrounding.from_pretrained(output)
    assert torch.equal(model.head.initial_kernels.weight, head["rpn_head.init_kernels.weight"])


def test_drmn_checkpoint_needs_a_drmn_model(tiny_checkpoint):
    path, _, _ = tiny_checkpoint
    model = PngForPanopticNarrativeGrounding(
        load_config("epng-tiny", text_config={"vocab_size": TEST_VOCAB_SIZE})
    )
    with pytest.raises(ValueError, match="grounding_head='drmn'"):
        convert_drmn_weights(model, read_drmn_checkpoint(path))

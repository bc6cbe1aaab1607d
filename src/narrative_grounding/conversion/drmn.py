"""The DRMN reference reconstruction's checkpoints (JaMesLiMers/DRMN) -> `PngForPanopticNarrativeGrounding`
(drmn head, preset `drmn-r101-bert-base-reference`).

Facts from the reference's archived checkpoint (tests/fixtures/checkpoint_shapes.json there; names and shapes
only): one `torch.save` dict with three DataParallel-wrapped state dicts,
- `model_state`: the grounding head. `encoder_head` (level embedding `out_embed` 4 x 256, phrase projection
  `text_encoder_pre.0` 768 -> 256, level projections `img_encoder_pre.i` (conv + GN; the stride-4 level by a
  4x4 conv), a 2-layer deformable encoder `img_encoder.layers.i` (8 heads, 4 levels, 4 points, FFN 256), and
  a 2-layer deformable *text* encoder `text_encoder.deformable_encoder_txt.i` (1 level, 2 points, FFN 256));
  `rpn_head` (K-Net style semantic FPN `localization_fpn.convs_all_levels`, `loc_convs`, `init_kernels`);
  `roi_head.mask_head.r` for 3 rounds (per-round pixel map `loc_convs`, a deformable decoder layer
  `text_decoder` with its own level embedding, deformable cross-attention, a self-attention and three
  norms, the phrase's attention over its top-k pixels `topk_attn` + `topk_norm`, two FFNs of width 2048
  (`ffn_pre`, `ffn`) each with a norm, and the 3-layer mask MLP `mask_fcs` + `fc_mask`).
- `fpn_model_state`: detectron2's COCO Panoptic FPN (R101; its RPN, ROI and semantic heads) plus an
  `fpn_wrapper` semantic FPN.
- `bert_model_state`: an LXMERT-style encoder (`visn_fc`, `layer`, `single_layers`, `cross_layers`).

Where the layouts differ and the functions agree, the map converts: their deformable attention has one value
projection shared by all levels, ours one per level (copying theirs into every level computes the same thing,
`prepare_drmn_tensors`); nn.MultiheadAttention's fused q/k/v in-projection is split into our three. Modules the
reference builds but whose forward never calls (its deformable text encoder, the round decoder's self-attention
and level embedding, the rounds' `ffn`) are dropped with that reason. `requires=` rows name what our model
lacks: the phrase FFN width (`drmn_phrase_ffn_dim=2048`, set by the reference preset), the LXMERT text encoder
and the detector's `fpn_wrapper`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch

from .key_map import ConversionResult, KeyRule, convert_into_modules, load_torch_checkpoint
from .panoptic_fpn import DETECTRON2_FROZEN_BN_EPS, PANOPTIC_FPN_KEY_MAP

# The three state dicts of a reference checkpoint, flattened to "<state>/<key>" (without `module.`).
HEAD_STATE, DETECTOR_STATE, TEXT_STATE = "model_state", "fpn_model_state", "bert_model_state"

_H = r"model_state/"
_ENC = _H + r"encoder_head\."
_ROUND = _H + r"roi_head\.mask_head\.(\d+)\."
_PARAM = r"(weight|bias)"
_DEFORMABLE = r"(sampling_offsets|attention_weights)"

# Modules the reference builds (so its checkpoint holds them) but whose forward never calls them.
_UNUSED_TEXT_ENCODER = (
    "built but never called: DeformEncoderHead.forward projects the phrases with text_encoder_pre only"
)
_UNUSED_DECODER = (
    "built but never called: the round's deformable decoder layer runs cross_attn, norm1 and its FFN only; "
    "its level embedding is added to positions the decoder never returns"
)
_UNUSED_FFN = "built but never called: KernelUpdateHead.forward applies ffn_pre / ffn_norm_pre only"
# Modules with no counterpart in our model: what would represent them.
_LXMERT = (
    "an LXMERT-style text encoder (visual and cross-modal layers); our text encoder is a plain BERT loaded "
    "with --text_model"
)
_FPN_WRAPPER = "a second semantic FPN (fpn_wrapper) beside the detector; our visual encoder has none"
_PHRASE_FFN_WIDTH = (
    "drmn_phrase_ffn_dim (the reference's phrase FFN is 2048 wide, its encoder FFNs 256; without the field "
    "ours share drmn_ffn_dim)"
)


def _separate_phrase_ffn(config: Any) -> bool:
    return config.drmn_phrase_ffn_dim is not None


def _deformable_rules(theirs: str, ours: str) -> list[KeyRule]:
    """Multi-scale deformable attention: same names but value_proj (split per level) and output_proj."""
    return [
        KeyRule(rf"{theirs}\.{_DEFORMABLE}\.{_PARAM}", rf"{ours}.\2.\3"),
        KeyRule(rf"{theirs}\.value_proj\.level(\d+)\.{_PARAM}", rf"{ours}.value_projections.\2.\3"),
        KeyRule(rf"{theirs}\.output_proj\.{_PARAM}", rf"{ours}.output_projection.\2"),
    ]


def _semantic_fpn_rules() -> list[KeyRule]:
    """K-Net's flat Sequential per level (conv, GN, ReLU, upsample, conv, GN, ...) -> our nested blocks:
    their index j is block j // 4 (ours 2 * (j // 4): an Upsample sits between our blocks), layer j % 4."""
    rules = []
    for index in (0, 1, 4, 5, 8, 9):
        block, layer = 2 * (index // 4), index % 4
        rules.append(
            KeyRule(
                rf"{_H}rpn_head\.localization_fpn\.convs_all_levels\.(\d)\.{index}\.{_PARAM}",
                rf"head.semantic_fpn.branches.\1.{block}.{layer}.\2",
            )
        )
    return rules


DRMN_KEY_MAP: tuple[KeyRule, ...] = (
    # Encoder head: level embedding, phrase projection, level projections (conv + GN), deformable encoder.
    KeyRule(_ENC + r"out_embed", "head.level_embedding.weight"),
    KeyRule(rf"{_ENC}text_encoder_pre\.0\.{_PARAM}", r"head.phrase_projection.\1"),
    KeyRule(rf"{_ENC}img_encoder_pre\.(\d)\.([01])\.{_PARAM}", r"head.input_projections.\1.\2.\3"),
    *_deformable_rules(
        _ENC + r"img_encoder\.layers\.(\d+)\.self_attn", r"head.encoder_layers.\1.deformable_attention"
    ),
    KeyRule(
        rf"{_ENC}img_encoder\.layers\.(\d+)\.norm1\.{_PARAM}", r"head.encoder_layers.\1.attention_norm.\2"
    ),
    KeyRule(rf"{_ENC}img_encoder\.layers\.(\d+)\.linear1\.{_PARAM}", r"head.encoder_layers.\1.ffn.0.\2"),
    KeyRule(rf"{_ENC}img_encoder\.layers\.(\d+)\.linear2\.{_PARAM}", r"head.encoder_layers.\1.ffn.3.\2"),
    KeyRule(rf"{_ENC}img_encoder\.layers\.(\d+)\.norm2\.{_PARAM}", r"head.encoder_layers.\1.ffn_norm.\2"),
    KeyRule(_ENC + r"text_encoder\..*", None, reason=_UNUSED_TEXT_ENCODER),
    # Initial matching (drmn_initial_matching="semantic_fpn").
    *_semantic_fpn_rules(),
    KeyRule(rf"{_H}rpn_head\.loc_convs\.([01])\.{_PARAM}", r"head.semantic_fpn.output.\1.\2"),
    KeyRule(rf"{_H}rpn_head\.init_kernels\.{_PARAM}", r"head.initial_kernels.\1"),
    # Refinement rounds.
    KeyRule(rf"{_ROUND}loc_convs\.([01])\.{_PARAM}", r"head.rounds.\1.pixel_projection.\2.\3"),
    KeyRule(_ROUND + r"text_decoder\.out_embed", None, reason=_UNUSED_DECODER),
    *_deformable_rules(
        _ROUND + r"text_decoder\.cross_layer\.cross_attn", r"head.rounds.\1.context_attention"
    ),
    KeyRule(rf"{_ROUND}text_decoder\.cross_layer\.norm1\.{_PARAM}", r"head.rounds.\1.context_norm.\2"),
    KeyRule(_ROUND + r"text_decoder\.cross_layer\.(self_attn|norm2)\..*", None, reason=_UNUSED_DECODER),
    KeyRule(rf"{_ROUND}text_decoder\.cross_layer\.linear1\.{_PARAM}", r"head.rounds.\1.context_ffn.0.\2"),
    KeyRule(rf"{_ROUND}text_decoder\.cross_layer\.linear2\.{_PARAM}", r"head.rounds.\1.context_ffn.3.\2"),
    KeyRule(rf"{_ROUND}text_decoder\.cross_layer\.norm3\.{_PARAM}", r"head.rounds.\1.context_ffn_norm.\2"),
    # nn.MultiheadAttention's fused in-projection (q, k, v stacked) -> our q/k/v (split in `_split_in_proj`).
    KeyRule(
        rf"{_ROUND}topk_attn\.attn\.in_proj\.([qkv])\.{_PARAM}", r"head.rounds.\1.phrase_attention.\2_proj.\3"
    ),
    KeyRule(rf"{_ROUND}topk_attn\.attn\.out_proj\.{_PARAM}", r"head.rounds.\1.phrase_attention.out_proj.\2"),
    KeyRule(rf"{_ROUND}topk_norm\.{_PARAM}", r"head.rounds.\1.phrase_norm.\2"),
    # The phrase FFN the forward uses (residual inside, then its LayerNorm); `ffn` / `ffn_norm` are unused.
    KeyRule(
        rf"{_ROUND}ffn_pre\.layers\.0\.0\.{_PARAM}",
        r"head.rounds.\1.phrase_ffn.0.\2",
        when=_separate_phrase_ffn,
    ),
    KeyRule(
        rf"{_ROUND}ffn_pre\.layers\.1\.{_PARAM}", r"head.rounds.\1.phrase_ffn.3.\2", when=_separate_phrase_ffn
    ),
    KeyRule(_ROUND + r"ffn_pre\..*", None, requires=_PHRASE_FFN_WIDTH),
    KeyRule(rf"{_ROUND}ffn_norm_pre\.{_PARAM}", r"head.rounds.\1.phrase_ffn_norm.\2"),
    KeyRule(_ROUND + r"(ffn|ffn_norm)\..*", None, reason=_UNUSED_FFN),
    # Mask MLP: (Linear without bias, LN, ReLU) x 3 at indices 0-8, as ours, then fc_mask = our index 9.
    KeyRule(rf"{_ROUND}mask_fcs\.(\d)\.{_PARAM}", r"head.rounds.\1.kernel_mlp.\2.\3"),
    KeyRule(rf"{_ROUND}fc_mask\.{_PARAM}", r"head.rounds.\1.kernel_mlp.9.\2"),
    # The detector: detectron2's Panoptic FPN rows under fpn_model_state/, and its extra semantic FPN.
    KeyRule(r"fpn_model_state/fpn_wrapper\..*", None, requires=_FPN_WRAPPER),
    *(dataclasses.replace(rule, source="fpn_model_state/" + rule.source) for rule in PANOPTIC_FPN_KEY_MAP),
    KeyRule(r"bert_model_state/.*", None, requires=_LXMERT),
)

# Which of our tensors a reference checkpoint fills: the head, and the visual encoder from fpn_model_state.
DRMN_TARGET_MODULES = ("visual_encoder", "head")


def _split_in_proj(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """nn.MultiheadAttention's `in_proj_weight` (3D x D) / `in_proj_bias` (3D): q, k, v stacked on dim 0."""
    match = re.fullmatch(r"(.*)\.in_proj_(weight|bias)", key)
    if match is None:
        return {key: tensor}
    prefix, kind = match.groups()
    if tensor.shape[0] % 3:
        raise ValueError(
            f"{key}: a fused q/k/v projection needs a first dimension divisible by 3, got {tuple(tensor.shape)}"
        )
    return {
        f"{prefix}.in_proj.{name}.{kind}": part for name, part in zip("qkv", tensor.chunk(3), strict=True)
    }


def _share_value_projections(key: str, tensor: torch.Tensor, num_levels: int) -> dict[str, torch.Tensor]:
    """Their multi-scale deformable attention's (`self_attn`, `cross_attn`) one `value_proj` serves every
    level: one copy per level of ours. (The unused text encoder's `self_attn_txt` stays one tensor.)"""
    match = re.fullmatch(r"(.*\.(?:self_attn|cross_attn))\.value_proj\.(weight|bias)", key)
    if match is None:
        return {key: tensor}
    prefix, kind = match.groups()
    return {f"{prefix}.value_proj.level{level}.{kind}": tensor for level in range(num_levels)}


def read_drmn_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a reference checkpoint (`{"model_state": ..., "fpn_model_state": ...,
    "bert_model_state": ..., ...}`), loaded with `weights_only=True`, flattened to "<state>/<key>" with the
    DataParallel `module.` prefix removed. `model_state` is required; the other two are read when present."""
    path = Path(path)
    data = load_torch_checkpoint(path, "DRMN")
    if not isinstance(data, dict) or not isinstance(data.get(HEAD_STATE), dict):
        found = sorted(map(str, data))[:10] if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{path}: expected a dict with '{HEAD_STATE}' (the DRMN reference's checkpoint), found {found}"
        )
    tensors = {}
    for state in (HEAD_STATE, DETECTOR_STATE, TEXT_STATE):
        entries = data.get(state)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise ValueError(f"{path}: '{state}' is a {type(entries).__name__}, expected a state dict")
        for key, value in entries.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{path}: {state}/{key} is a {type(value).__name__}, not a tensor")
            tensors[f"{state}/{key.removeprefix('module.')}"] = value
    return tensors


def prepare_drmn_tensors(tensors: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """Rename the reference's fused / shared tensors to the per-tensor names the key map reads."""
    prepared = {}
    for key, tensor in tensors.items():
        for split_key, part in _split_in_proj(key, tensor).items():
            prepared.update(_share_value_projections(split_key, part, num_levels))
    return prepared


def convert_drmn_weights(
    model: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    *,
    allow_unrepresented: bool = False,
    source_name: str = "DRMN checkpoint",
) -> ConversionResult:
    """Load a reference checkpoint (`read_drmn_checkpoint`) into `model`'s head, and its visual encoder when
    the checkpoint has `fpn_model_state`, strictly: every tensor of those modules filled, every source key
    accounted for. The error lists the reference's modules our drmn head lacks (`requires=` rows) unless
    `allow_unrepresented`; the model then computes a different function from the reference's."""
    config = model.config
    if config.grounding_head != "drmn":
        raise ValueError(f"a DRMN checkpoint needs grounding_head='drmn', got {config.grounding_head!r}")
    modules = ["head"]
    if any(key.startswith(DETECTOR_STATE + "/") for key in tensors):
        if not config.backbone_stride_in_1x1:
            raise ValueError(
                "the reference's detectron2 ResNet strides in the 1x1 convolution: set backbone_stride_in_1x1=True"
            )
        eps = {
            m.eps for m in model.visual_encoder.modules() if type(m).__name__.startswith("FrozenBatchNorm")
        }
        if eps != {DETECTRON2_FROZEN_BN_EPS}:
            raise ValueError(
                f"detectron2's frozen norms have eps {DETECTRON2_FROZEN_BN_EPS}; the model's: {sorted(eps)}"
            )
        modules.insert(0, "visual_encoder")
    result = convert_into_modules(
        model,
        modules,
        prepare_drmn_tensors(tensors, config.drmn_num_levels),
        DRMN_KEY_MAP,
        allow_unrepresented=allow_unrepresented,
        source_name=source_name,
    )
    return result


__all__ = [
    "DRMN_KEY_MAP",
    "DRMN_TARGET_MODULES",
    "convert_drmn_weights",
    "prepare_drmn_tensors",
    "read_drmn_checkpoint",
]

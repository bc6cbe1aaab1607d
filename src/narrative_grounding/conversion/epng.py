"""The authors' EPNG checkpoints (Mr-Neko/EPNG, `MainModule`) -> `PngForPanopticNarrativeGrounding` (epng head).

Facts from the released model code (models/EPNG/*.py; names and shapes only):
- `vs_backbone`: torchvision's `resnet_fpn_backbone("resnet101", trainable_layers=2)`, i.e. an ImageNet ResNet
  (stride in the 3x3, FrozenBatchNorm2d of eps 1e-5, same module names as timm's: `body.conv1`, `body.bn1`,
  `body.layerN.i.{conv,bn}{1,2,3}`, `downsample.{0,1}`) and an FPN whose 1x1 laterals are
  `fpn.inner_blocks.i` and 3x3 outputs `fpn.layer_blocks.i` (`.0` inside since torchvision 0.13). Its P6
  max-pool has no weights.
- `text_linear`: Linear(768, 768) (then ReLU6, no weights) over BERT features computed offline: the
  checkpoint has no BERT; ours comes from `bert-base-uncased` (`text_model_name_or_path`).
- `encoder.layers.i` (3 `DecoderLayer`s, d 768, 8 heads of 96, FFN 2048): `self_att` (LPA: separate
  `fc_q/fc_k/fc_v/fc_o` and a per-head prior scale `W` of shape (8, 1, 1), then its own LayerNorm
  `self_att.layer_norm`), `lnorm1`, `enc_att` (cross-attention, its own `layer_norm`), `lnorm2`, `pwff`
  (`fc1`, `fc2`, `layer_norm`): five LayerNorms per layer, where our communicator layer has three.
- input pipeline (data/dataset_mix.py): RGB, bicubic resize to 640x640, CLIP's mean and std.

The released code's extra LayerNorms (`lnorm1`, `lnorm2`: it computes `lnorm1(x + LN(x + LPA(x)))`) exist in
our layer with `epng_residual_norm="double"` (the `epng-r101-bert-base-released` variant, the converter's
default): the block-internal norm is then our `*_inner_norm` and `lnorm1` / `lnorm2` our outer norm. With
one norm per block (our other variants) they have no counterpart, and the rows below say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .key_map import ConversionResult, KeyRule, convert_into_modules, load_torch_checkpoint

_BACKBONE = "visual_encoder.backbone._backbone"
_LAYER = r"encoder\.layers\.(\d+)"
_OURS = r"head.layers.\1"
_PARAM = r"(weight|bias)"

# The released data loader's normalisation (CLIP's constants) and resize.
EPNG_IMAGE_PROCESSOR = {
    "channel_order": "RGB",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,  # PIL bicubic: transforms.Resize(..., InterpolationMode.BICUBIC)
    "size": {"height": 640, "width": 640},
}

_SEPARATE_LAYER_NORM = (
    "a LayerNorm after the released code's block-internal one (its DecoderLayer normalises twice: "
    "lnorm(x + LN(x + attention(x)))); our communicator layer has one norm per block"
)


def _projection(theirs: str, ours: str, **kwargs: Any) -> KeyRule:
    return KeyRule(rf"{_LAYER}\.{theirs}\.{_PARAM}", rf"{_OURS}.{ours}.\2", **kwargs)


def _double_norm(config: Any) -> bool:
    return getattr(config, "epng_residual_norm", "single") == "double"


EPNG_KEY_MAP: tuple[KeyRule, ...] = (
    # Visual encoder: torchvision's names are timm's, under body.; FPN blocks with or without the ".0" of
    # Conv2dNormActivation (torchvision >= 0.13 and older).
    KeyRule(r"vs_backbone\.body\.(.*)", rf"{_BACKBONE}.\1"),
    KeyRule(rf"vs_backbone\.fpn\.inner_blocks\.(\d)\.(?:0\.)?{_PARAM}", r"visual_encoder.neck.lateral.\1.\2"),
    KeyRule(rf"vs_backbone\.fpn\.layer_blocks\.(\d)\.(?:0\.)?{_PARAM}", r"visual_encoder.neck.output.\1.\2"),
    # Phrase projection (EPNG's "linear layer" after average pooling; the ReLU6 after it has no weights).
    KeyRule(rf"text_linear\.{_PARAM}", r"head.phrase_projection.\1"),
    # LPA (EPNG eqs. 3-7): separate q/k/v projections -> our fused qkv (q, k, v stacked along the output).
    _projection(r"self_att\.attention\.fc_q", "lpa.qkv", part=(0, 3)),
    _projection(r"self_att\.attention\.fc_k", "lpa.qkv", part=(1, 3)),
    _projection(r"self_att\.attention\.fc_v", "lpa.qkv", part=(2, 3)),
    _projection(r"self_att\.attention\.fc_o", "lpa.out_proj"),
    KeyRule(rf"{_LAYER}\.self_att\.attention\.W", rf"{_OURS}.lpa.prior_scale", transform=torch.flatten),
    # eq. 8; with the released doubled Add & LN, the attention's own norm is the inner one and lnorm1 the outer
    _projection(r"self_att\.layer_norm", "lpa_inner_norm", when=_double_norm),
    _projection(r"lnorm1", "lpa_norm", when=_double_norm),
    _projection(r"self_att\.layer_norm", "lpa_norm"),
    KeyRule(rf"{_LAYER}\.lnorm1\.{_PARAM}", None, requires=_SEPARATE_LAYER_NORM),
    # Cross-attention pixels -> phrases (eq. 9).
    _projection(r"enc_att\.attention\.fc_q", "cross_attention.q_proj"),
    _projection(r"enc_att\.attention\.fc_k", "cross_attention.k_proj"),
    _projection(r"enc_att\.attention\.fc_v", "cross_attention.v_proj"),
    _projection(r"enc_att\.attention\.fc_o", "cross_attention.out_proj"),
    _projection(r"enc_att\.layer_norm", "cross_inner_norm", when=_double_norm),
    _projection(r"lnorm2", "cross_norm", when=_double_norm),
    _projection(r"enc_att\.layer_norm", "cross_norm"),
    KeyRule(rf"{_LAYER}\.lnorm2\.{_PARAM}", None, requires=_SEPARATE_LAYER_NORM),
    # FFN: our nn.Sequential(Linear, ReLU, Dropout, Linear).
    _projection(r"pwff\.fc1", "ffn.0"),
    _projection(r"pwff\.fc2", "ffn.3"),
    _projection(r"pwff\.layer_norm", "ffn_norm"),
    KeyRule(r".*\.num_batches_tracked", None, reason="BatchNorm step counter (frozen norms do not count)"),
)

# Which of our tensors an EPNG checkpoint fills: everything but BERT (EPNG computes BERT features offline).
EPNG_TARGET_MODULES = ("visual_encoder", "head")


def read_epng_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors of an EPNG training checkpoint (`torch.save({"model_state": ..., "optimizer_state":
    ..., ...})` in train_net.py) or of a bare state dict, loaded with `weights_only=True`. A `module.` prefix
    (a DataParallel / DDP-wrapped save) is removed."""
    path = Path(path)
    data = load_torch_checkpoint(path, "EPNG")
    if isinstance(data, dict):
        for key in ("model_state", "state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        kind = sorted(data)[:10] if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{path}: expected a state dict or a dict with 'model_state' (EPNG's train_net.py), found {kind}"
        )
    if all(key.startswith("module.") for key in data):
        data = {key.removeprefix("module."): value for key, value in data.items()}
    return dict(data)


def convert_epng_weights(
    model: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    *,
    allow_unrepresented: bool = False,
    source_name: str = "EPNG checkpoint",
) -> ConversionResult:
    """Load EPNG tensors into `model`'s visual encoder and head, strictly (every tensor of both filled).

    allow_unrepresented: load even though the checkpoint has tensors our modules cannot hold yet (the
        released code's doubled LayerNorms); the result then computes a different function from the authors'
        model, so this is off by default and the error lists the keys."""
    config = model.config
    if config.grounding_head != "epng":
        raise ValueError(f"an EPNG checkpoint needs grounding_head='epng', got {config.grounding_head!r}")
    if config.backbone_stride_in_1x1:
        raise ValueError(
            "EPNG's torchvision ResNet strides in the 3x3 convolution: set backbone_stride_in_1x1=False"
        )
    result = convert_into_modules(
        model,
        EPNG_TARGET_MODULES,
        tensors,
        EPNG_KEY_MAP,
        allow_unrepresented=allow_unrepresented,
        source_name=source_name,
    )
    return result


__all__ = [
    "EPNG_IMAGE_PROCESSOR",
    "EPNG_KEY_MAP",
    "EPNG_TARGET_MODULES",
    "convert_epng_weights",
    "read_epng_checkpoint",
]

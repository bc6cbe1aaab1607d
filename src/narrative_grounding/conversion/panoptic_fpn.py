"""detectron2's COCO Panoptic FPN (`model_final_cafdb1.pkl`) -> our ResNet + FPN visual encoder.

Every PNG method starts its visual encoder from `COCO-PanopticSegmentation/panoptic_fpn_R_101_3x`. Its file
is a pickle of `{"model": {name: numpy array}, "__author__": ...}` (detectron2's model zoo format), read
here without detectron2 and without trusting the pickle (`read_detectron2_checkpoint`).

What detectron2's source fixes and this conversion reproduces (detectron2/config/defaults.py,
modeling/backbone/resnet.py, fpn.py, layers/batch_norm.py):
- norms are FrozenBatchNorm2d (`RESNETS.NORM = "FrozenBN"`): weight, bias, running_mean, running_var, eps 1e-5;
  we use timm's FrozenBatchNorm2d (same buffers, same eps) through `freeze_batch_norm_2d`;
- `RESNETS.STRIDE_IN_1X1 = True` (MSRA-initialised weights): the first bottleneck of each stage strides in its
  1x1 convolution, so converted models set `backbone_stride_in_1x1`;
- input: BGR (`INPUT.FORMAT`), 0..255, minus `MODEL.PIXEL_MEAN` [103.53, 116.28, 123.675], divided by
  `MODEL.PIXEL_STD` [1, 1, 1]: the processor of a converted model is configured so;
- FPN: biased 1x1 lateral and 3x3 output convolutions (`FPN.NORM = ""`), top-down nearest x2 upsampling summed
  with the lateral (`FUSE_TYPE = "sum"`); its max-pooled P6 has no weights and feeds only the RPN.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .key_map import ConversionResult, KeyRule, convert_into_modules

# detectron2's defaults for its ImageNet-MSRA-initialised models (config/defaults.py).
DETECTRON2_PIXEL_MEAN = (103.530, 116.280, 123.675)  # BGR
DETECTRON2_PIXEL_STD = (1.0, 1.0, 1.0)
DETECTRON2_FROZEN_BN_EPS = 1e-5
# The image processor settings that reproduce detectron2's input normalisation (pixel_mean/std may be
# replaced by the values stored in the checkpoint).
DETECTRON2_IMAGE_PROCESSOR = {
    "channel_order": "BGR",
    "do_rescale": False,
    "image_mean": list(DETECTRON2_PIXEL_MEAN),
    "image_std": list(DETECTRON2_PIXEL_STD),
}

_BACKBONE = "visual_encoder.backbone._backbone"
_NORM = r"(weight|bias|running_mean|running_var)"


def _stage_rules(stage: int) -> list[KeyRule]:
    """detectron2's res{stage} (2..5) -> timm's layer{stage - 1}."""
    source, target = rf"backbone\.bottom_up\.res{stage}\.(\d+)", rf"{_BACKBONE}.layer{stage - 1}.\1"
    return [
        KeyRule(rf"{source}\.conv([123])\.weight", rf"{target}.conv\2.weight"),
        KeyRule(rf"{source}\.conv([123])\.norm\.{_NORM}", rf"{target}.bn\2.\3"),
        KeyRule(rf"{source}\.shortcut\.weight", rf"{target}.downsample.0.weight"),
        KeyRule(rf"{source}\.shortcut\.norm\.{_NORM}", rf"{target}.downsample.1.\2"),
    ]


def _fpn_rules(stage: int) -> list[KeyRule]:
    """fpn_lateral{stage} / fpn_output{stage} (stage 2..5 = stride 4..32) -> our neck level stage - 2."""
    return [
        KeyRule(
            rf"backbone\.fpn_lateral{stage}\.(weight|bias)", rf"visual_encoder.neck.lateral.{stage - 2}.\1"
        ),
        KeyRule(
            rf"backbone\.fpn_output{stage}\.(weight|bias)", rf"visual_encoder.neck.output.{stage - 2}.\1"
        ),
    ]


PANOPTIC_FPN_KEY_MAP: tuple[KeyRule, ...] = (
    KeyRule(r"backbone\.bottom_up\.stem\.conv1\.weight", f"{_BACKBONE}.conv1.weight"),
    KeyRule(rf"backbone\.bottom_up\.stem\.conv1\.norm\.{_NORM}", rf"{_BACKBONE}.bn1.\1"),
    *(rule for stage in (2, 3, 4, 5) for rule in _stage_rules(stage)),
    *(rule for stage in (2, 3, 4, 5) for rule in _fpn_rules(stage)),
    KeyRule(r".*\.num_batches_tracked", None, reason="BatchNorm step counter (frozen norms do not count)"),
    KeyRule(r"proposal_generator\..*", None, reason="RPN: proposes detection boxes, not used for grounding"),
    KeyRule(
        r"roi_heads\..*", None, reason="ROI box and mask heads: instance detection, not used for grounding"
    ),
    KeyRule(r"sem_seg_head\..*", None, reason="semantic segmentation head: not used for grounding"),
    KeyRule(
        r"pixel_(mean|std)",
        None,
        reason="input normalisation constants: written into the image processor config instead",
    ),
)


# ---------------------------------------------------------------------------------------------- reading
# The only globals a detectron2 model zoo pickle needs: numpy arrays (and their dtypes) in dicts, whatever the
# pickle protocol. numpy 2 writes `numpy._core`, numpy 1 `numpy.core`; protocol 5 rebuilds arrays with
# `numeric._frombuffer`; Python 3 writing protocol 0-2 stores an array's bytes as `_codecs.encode(text,
# "latin1")`. Each of these only builds bytes or arrays from data.
_ALLOWED_GLOBALS = (
    {
        (f"{package}.multiarray", name)
        for package in ("numpy.core", "numpy._core")
        for name in ("_reconstruct", "scalar")
    }
    | {(f"{package}.numeric", "_frombuffer") for package in ("numpy.core", "numpy._core")}
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"), ("_codecs", "encode")}
)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, numbers, strings and numpy arrays; any other global (a function call an
    untrusted pickle could smuggle in) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a detectron2 checkpoint holds only numpy arrays"
        )


def read_detectron2_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of a detectron2 model zoo pickle (`{"model": {name: array}, ...}`) and its other top-level
    entries (e.g. `__author__`). Norms stored without running statistics (Caffe2-era files: weight and bias
    only) get detectron2's identity statistics (mean 0, variance 1), as its FrozenBatchNorm2d loader does."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no detectron2 checkpoint at {path}")
    try:
        with path.open("rb") as file:
            data = _ArrayOnlyUnpickler(file, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not a readable detectron2 checkpoint: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{path}: expected detectron2's model zoo format, a dict with a 'model' dict of arrays; found {found}"
        )
    tensors: dict[str, torch.Tensor] = {}
    for key, value in data["model"].items():
        if not isinstance(value, np.ndarray):
            raise ValueError(
                f"{path}: entry {key!r} of 'model' is a {type(value).__name__}, not a numpy array"
            )
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
    for key in [k for k in tensors if k.endswith(".norm.weight")]:
        prefix = key[: -len("weight")]
        # Only a norm with neither statistic is a Caffe2-era one; one statistic alone is a damaged file, left
        # for the key check to report.
        if f"{prefix}running_mean" not in tensors and f"{prefix}running_var" not in tensors:
            tensors[f"{prefix}running_mean"] = torch.zeros_like(tensors[key])
            tensors[f"{prefix}running_var"] = torch.ones_like(tensors[key])
    return tensors, {key: value for key, value in data.items() if key != "model"}


def image_processor_settings(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Image processor keyword arguments reproducing the checkpoint's input normalisation: BGR on 0..255,
    with the checkpoint's own `pixel_mean` / `pixel_std` when it stores them (older detectron2 versions
    saved them as buffers), detectron2's defaults otherwise."""
    settings = dict(DETECTRON2_IMAGE_PROCESSOR)
    for key, field in (("pixel_mean", "image_mean"), ("pixel_std", "image_std")):
        if key in tensors:
            values = tensors[key].flatten().tolist()
            if len(values) != 3:
                raise ValueError(f"checkpoint {key} has {len(values)} values, expected 3 (B, G, R)")
            # Stored as float32: keep the 7 significant digits that carry information (103.53, not 103.5299988).
            settings[field] = [float(f"{v:.7g}") for v in values]
    return settings


def convert_visual_encoder(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], *, source_name: str = "detectron2 checkpoint"
) -> ConversionResult:
    """Load detectron2 backbone + FPN tensors into `model.visual_encoder` (strictly: every weight and buffer
    of its ResNet and FPN comes from the checkpoint; the projection of the stem's map that
    `epng_mask_stride=2` adds, ours, starts from scratch like the head). The model must be built with
    detectron2's conventions (`backbone_stride_in_1x1`, frozen norms of eps 1e-5; see `panoptic_fpn_config`)."""
    config = model.config
    if not config.backbone_stride_in_1x1:
        raise ValueError(
            "detectron2's ResNets stride in the 1x1 convolution: build the model with backbone_stride_in_1x1=True"
        )
    norms = [
        m for m in model.visual_encoder.backbone.modules() if type(m).__name__.startswith("FrozenBatchNorm")
    ]
    if not norms:
        raise ValueError(
            "detectron2's ResNet norms are frozen: build the model with backbone_config.freeze_batch_norm_2d=True"
        )
    wrong_eps = {m.eps for m in norms} - {DETECTRON2_FROZEN_BN_EPS}
    if wrong_eps:
        raise ValueError(
            f"frozen norms have eps {sorted(wrong_eps)}; detectron2 uses {DETECTRON2_FROZEN_BN_EPS}"
        )
    return convert_into_modules(
        model,
        ["visual_encoder.backbone", "visual_encoder.neck"],
        tensors,
        PANOPTIC_FPN_KEY_MAP,
        source_name=source_name,
    )


def panoptic_fpn_overrides() -> dict[str, Any]:
    """The config settings that detectron2's weights need, whatever the variant."""
    return {"backbone_stride_in_1x1": True, "backbone_config": {"freeze_batch_norm_2d": True}}


__all__ = [
    "DETECTRON2_IMAGE_PROCESSOR",
    "PANOPTIC_FPN_KEY_MAP",
    "convert_visual_encoder",
    "image_processor_settings",
    "panoptic_fpn_overrides",
    "read_detectron2_checkpoint",
]

"""Converters from the checkpoints the papers start from, or publish, to `from_pretrained` model folders.

- `convert_panoptic_fpn`: detectron2's COCO Panoptic FPN (`model_final_cafdb1.pkl`) -> our visual encoder.
- `convert_epng`: a checkpoint of the EPNG authors' code (Mr-Neko/EPNG) -> the epng head and encoders.
- `convert_drmn`: a checkpoint of the DRMN reference reconstruction (JaMesLiMers/DRMN) -> the drmn head and
  the visual encoder.
Key maps are data (`PANOPTIC_FPN_KEY_MAP`, `EPNG_KEY_MAP`, `DRMN_KEY_MAP`: tuples of `KeyRule`) applied by
`convert_state_dict`.
"""

from .converters import ConvertedModel, convert_drmn, convert_epng, convert_panoptic_fpn
from .drmn import DRMN_KEY_MAP, convert_drmn_weights, read_drmn_checkpoint
from .epng import EPNG_KEY_MAP, convert_epng_weights, read_epng_checkpoint
from .key_map import ConversionResult, KeyMapError, KeyRule, convert_state_dict
from .panoptic_fpn import PANOPTIC_FPN_KEY_MAP, convert_visual_encoder, read_detectron2_checkpoint

__all__ = [
    "DRMN_KEY_MAP",
    "EPNG_KEY_MAP",
    "PANOPTIC_FPN_KEY_MAP",
    "ConversionResult",
    "ConvertedModel",
    "KeyMapError",
    "KeyRule",
    "convert_drmn",
    "convert_drmn_weights",
    "convert_epng",
    "convert_epng_weights",
    "convert_panoptic_fpn",
    "convert_state_dict",
    "convert_visual_encoder",
    "read_detectron2_checkpoint",
    "read_drmn_checkpoint",
    "read_epng_checkpoint",
]

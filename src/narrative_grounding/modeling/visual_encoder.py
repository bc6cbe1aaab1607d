"""The visual encoder shared by every head: a timm ResNet (through transformers) and an FPN neck.

Output: a dict stride -> B x C x H/stride x W/stride for strides 4, 8, 16, 32, C = config.fpn_channels
(EPNG: 256 channels; 80x80 / 40x40 / 20x20 at strides 8 / 16 / 32 for a 640x640 input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.timm_backbone import TimmBackbone

FPN_STRIDES = (4, 8, 16, 32)


def build_timm_backbone(backbone_config, *, pretrained: bool = False, **timm_kwargs) -> TimmBackbone:
    """A `TimmBackbone` for `backbone_config`, forwarding its `timm_model_args` to `timm.create_model`.

    `pretrained=True` fetches timm's ImageNet weights (needs the Hub or a local file given through
    `pretrained_cfg_overlay=dict(file=...)`).
    """
    model_args = dict(getattr(backbone_config, "timm_model_args", None) or {})
    return TimmBackbone(backbone_config, pretrained=pretrained, **model_args, **timm_kwargs)


class FeaturePyramidNeck(nn.Module):
    """FPN (Lin et al. 2017): 1x1 lateral convs, top-down nearest-neighbour sum, 3x3 output convs."""

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """features: fine to coarse, B x C_i x H_i x W_i. Returns the same resolutions with out_channels."""
        laterals = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        for level in range(len(laterals) - 2, -1, -1):  # coarse to fine
            laterals[level] = laterals[level] + F.interpolate(
                laterals[level + 1], size=laterals[level].shape[-2:], mode="nearest"
            )
        return [conv(f) for conv, f in zip(self.output, laterals, strict=True)]


class VisualEncoder(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.backbone = build_timm_backbone(config.backbone_config)
        channels = self.backbone._backbone.feature_info.channels()
        reductions = self.backbone._backbone.feature_info.reduction()
        if tuple(reductions) != FPN_STRIDES:
            raise ValueError(
                f"backbone {config.backbone_config.backbone!r} with out_indices {config.backbone_config.out_indices} "
                f"gives strides {reductions}; the FPN neck needs strides {FPN_STRIDES}"
            )
        self.neck = FeaturePyramidNeck(channels, config.fpn_channels)

    def forward(self, pixel_values: torch.Tensor) -> dict[int, torch.Tensor]:
        """pixel_values: B x 3 x H x W (H, W multiples of 32). Returns stride -> B x C x H/s x W/s."""
        feature_maps = self.backbone(pixel_values).feature_maps
        return dict(zip(FPN_STRIDES, self.neck(list(feature_maps)), strict=True))

    def set_trainable_stages(self, num_stages: int) -> None:
        """Train only the last `num_stages` ResNet stages (EPNG: 2); the neck always trains."""
        stage_names = [
            info["module"] for info in self.backbone._backbone.feature_info.get_dicts()
        ]  # layer1..4
        trainable = set(stage_names[len(stage_names) - num_stages :]) if num_stages > 0 else set()
        train_all = num_stages >= len(stage_names)
        for name, parameter in self.backbone._backbone.named_parameters():
            stage = name.split(".")[0]
            parameter.requires_grad_(train_all or stage in trainable)

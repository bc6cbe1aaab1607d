"""Position codes shared by the heads (DRMN's encoder levels and query slots, EPNG's "absolute" ablation)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sine_position_embedding(
    height: int, width: int, dim: int, *, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """2D sine position embedding of an height x width map (DETR style, coordinates normalised to [0, 2 pi]
    so every level of a pyramid gets the same code at the same image location). Returns (H * W) x dim:
    the first dim / 2 channels encode y, the others x, each as interleaved sin / cos of 10000^(-2i/(dim/2))."""
    half = dim // 2
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 * math.pi
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 * math.pi
    frequencies = 10000.0 ** (-(torch.arange(half, device=device) // 2 * 2).float() / half)  # half

    def encode(positions: torch.Tensor) -> torch.Tensor:  # n -> n x half
        angles = positions[:, None] * frequencies[None, :]
        return torch.where(torch.arange(half, device=device) % 2 == 0, angles.sin(), angles.cos())

    y_code = encode(ys)[:, None, :].expand(height, width, half)  # H x W x half
    x_code = encode(xs)[None, :, :].expand(height, width, half)  # H x W x half
    embedding = torch.cat([y_code, x_code], dim=-1).flatten(0, 1)  # N x 2 half
    if embedding.shape[-1] < dim:  # odd dim: one zero channel
        embedding = F.pad(embedding, (0, dim - embedding.shape[-1]))
    return embedding.to(dtype)


def slot_position_embedding(
    num_slots: int, dim: int, *, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The DRMN reference's 1-D position of its query slots, num_slots x dim.

    The reference builds a standard 1-D sine table with the roles of its two axes exchanged: the channel c
    plays the position and the slot n the frequency. Slot n, channel c holds sin(c * w) for even n and
    cos(c * w) for odd n, with w = 10000^(-2 floor(n / 2) / num_slots). So the code of a slot depends on
    how many slots there are (the reference's 64), not only on its index.
    """
    slots = torch.arange(num_slots, device=device)
    frequencies = 10000.0 ** (-(slots // 2 * 2).float() / num_slots)  # num_slots
    angles = frequencies[:, None] * torch.arange(dim, device=device, dtype=torch.float32)[None, :]  # S x dim
    embedding = torch.where((slots % 2 == 0)[:, None], angles.sin(), angles.cos())  # S x dim
    return embedding.to(dtype)


__all__ = ["sine_position_embedding", "slot_position_embedding"]

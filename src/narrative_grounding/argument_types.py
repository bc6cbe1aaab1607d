"""Argparse `type=` functions that check a flag's value where it enters, at parse time.

A wrong value (a negative wait, a warm-up ratio above 1, NaN, a device that does not exist) stops the command
before any work with argparse's usual one-line usage error, instead of failing (or silently misbehaving)
after a model was loaded or an epoch was trained. Shared by every sub-command and `training/train.py`.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

SEED_RANGE = 2**32  # numpy's seeds, which accelerate's set_seed also sets, are 0 .. 2**32 - 1


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {value!r}") from None


def _finite_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value!r}")
    return number


def positive_int(value: str) -> int:
    number = _int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def non_negative_int(value: str) -> int:
    number = _int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {value}")
    return number


def seed(value: str) -> int:
    number = _int(value)
    if not 0 <= number < SEED_RANGE:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..{SEED_RANGE - 1}, got {value}")
    return number


def positive_float(value: str) -> float:
    number = _finite_float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return number


def non_negative_float(value: str) -> float:
    number = _finite_float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number, got {value}")
    return number


def unit_interval(value: str) -> float:
    """A fraction or a probability: a number in [0, 1]."""
    number = _finite_float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {value}")
    return number


def max_length(value: str) -> int:
    """WordPiece tokens per sequence: room for [CLS], [SEP] and one token at least."""
    number = _int(value)
    if number < 3:
        raise argparse.ArgumentTypeError(f"must be at least 3 ([CLS], [SEP] and one token), got {value}")
    return number


def json_object(value: str) -> dict[str, Any]:
    """A JSON object given on the command line, e.g. '{"d_model": 128}'."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"is not valid JSON ({error}): {value!r}") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object ({{...}}), got {value!r}")
    return parsed


def torch_device(value: str) -> str:
    """A torch device string (cpu, cuda, cuda:1, mps, ...) that exists on this machine."""
    import torch

    try:
        device = torch.device(value)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)"
        ) from None
    if device.type == "cpu":
        return value
    backend = getattr(torch, device.type, None)
    if device.type == "mps":
        available, count = torch.backends.mps.is_available(), 1
    elif backend is not None and hasattr(backend, "is_available"):
        available = bool(backend.is_available())
        count = backend.device_count() if available and hasattr(backend, "device_count") else 0
    else:
        available, count = False, 0
    if not available:
        raise argparse.ArgumentTypeError(f"{value!r}: this machine has no {device.type} device")
    if device.index is not None and device.index >= count:
        raise argparse.ArgumentTypeError(f"{value!r}: this machine has {count} {device.type} device(s)")
    return value


__all__ = [
    "json_object",
    "max_length",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "seed",
    "torch_device",
    "unit_interval",
]

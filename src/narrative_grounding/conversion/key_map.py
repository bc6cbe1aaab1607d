"""Key maps as data: how the tensors of a foreign state dict become ours.

A key map is an ordered tuple of `KeyRule`s. Every source key must match a rule (the first whose regular
expression matches the whole key and whose `when` accepts the target config); the rule then either renames it
(optionally transforming the tensor, or filling one part of a tensor that several source tensors are
concatenated into, e.g. separate q/k/v projections into one fused `qkv`), drops it with a stated reason (a
detector's RPN, a BN step counter), or marks it as having no counterpart yet (`requires`: which switch of
ours would represent it). Extending a map for a new switch of ours is adding a row with a `when` before the
row that says the switch is missing.

`convert_state_dict` applies a map and checks the result against the target modules: every target key
filled, shapes equal, nothing mapped twice or to a key we do not have; each failure names the keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class KeyRule:
    """One row of a key map.

    source: regular expression matched against the whole source key; its groups fill `target`.
    target: `re.Match.expand` template of our key (`r"neck.lateral.\\1.\\2"`); None leaves the key out: then
        `requires` (no counterpart in our modules yet: what would represent it) or `reason` (deliberately
        dropped: why) must say so.
    part: (index, count) when `count` source tensors are concatenated along dim 0 into the target.
    transform: applied to the source tensor before it is stored (e.g. a reshape).
    when: the rule applies only to target configs for which this returns True (config switches).
    """

    source: str
    target: str | None
    reason: str = ""
    requires: str = ""
    part: tuple[int, int] | None = None
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    when: Callable[[Any], bool] | None = None

    def __post_init__(self) -> None:
        if self.target is None and not (self.reason or self.requires):
            raise ValueError(f"key rule {self.source!r} drops its keys without a reason or requirement")


@dataclass
class ConversionResult:
    """The converted tensors and what happened to every source key."""

    state_dict: dict[str, torch.Tensor]
    mapped: dict[str, str] = field(default_factory=dict)  # source key -> target key
    dropped: dict[str, str] = field(default_factory=dict)  # source key -> reason
    unrepresented: dict[str, str] = field(default_factory=dict)  # source key -> the switch it needs

    def summary(self) -> str:
        lines = [f"{len(self.mapped)} tensors mapped onto {len(self.state_dict)} target tensors"]
        if self.dropped:
            reasons: dict[str, int] = {}
            for reason in self.dropped.values():
                reasons[reason] = reasons.get(reason, 0) + 1
            lines.append(f"{len(self.dropped)} dropped deliberately:")
            lines += [f"  {count:5d}  {reason}" for reason, count in sorted(reasons.items())]
        if self.unrepresented:
            lines.append(f"{len(self.unrepresented)} without a counterpart in this model:")
            lines += [f"  {key}: {need}" for key, need in sorted(self.unrepresented.items())]
        return "\n".join(lines)


class KeyMapError(ValueError):
    """A source state dict that does not convert cleanly; the message lists every offending key."""


def _listing(title: str, items: Iterable[str], limit: int = 20) -> str:
    items = sorted(items)
    shown = "\n".join(f"  {item}" for item in items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{title} ({len(items)}):\n{shown}{more}"


def convert_state_dict(
    source: Mapping[str, torch.Tensor],
    rules: Iterable[KeyRule],
    target: Mapping[str, torch.Tensor],
    *,
    config: Any = None,
    allow_unrepresented: bool = False,
    source_name: str = "source",
) -> ConversionResult:
    """Apply `rules` to `source` and check the result against `target` (our state dict, or the part of it the
    source must fill). Raises `KeyMapError` naming every unmatched source key, unrepresented key (unless
    `allow_unrepresented`), shape mismatch, unknown or doubly filled target key, and unfilled target key."""
    compiled = [(re.compile(rule.source), rule) for rule in rules]
    result = ConversionResult(state_dict={})
    parts: dict[str, dict[int, torch.Tensor]] = {}
    part_counts: dict[str, int] = {}
    unmatched, doubled, unknown, shape_errors = [], [], [], []

    for key, tensor in source.items():
        for pattern, rule in compiled:
            match = pattern.fullmatch(key)
            if match is not None and (rule.when is None or rule.when(config)):
                break
        else:
            unmatched.append(key)
            continue
        if rule.target is None:
            if rule.requires:
                result.unrepresented[key] = rule.requires
            else:
                result.dropped[key] = rule.reason
            continue
        name = match.expand(rule.target)
        value = rule.transform(tensor) if rule.transform is not None else tensor
        result.mapped[key] = name
        if name not in target:
            unknown.append(f"{key} -> {name}")
        elif rule.part is not None:
            index, count = rule.part
            slots = parts.setdefault(name, {})
            part_counts[name] = count
            if index in slots:
                doubled.append(f"{name} (part {index})")
            slots[index] = value
        elif name in result.state_dict:
            doubled.append(name)
        else:
            result.state_dict[name] = value

    for name, slots in parts.items():
        count = part_counts[name]
        if sorted(slots) != list(range(count)):
            missing = sorted(set(range(count)) - set(slots))
            sources = sorted(k for k, v in result.mapped.items() if v == name)
            shape_errors.append(f"{name}: parts {missing} of {count} missing (have {sources})")
            continue
        result.state_dict[name] = torch.cat([slots[i] for i in range(count)], dim=0)

    for name, value in result.state_dict.items():
        expected = tuple(target[name].shape)
        if tuple(value.shape) != expected:
            sources = sorted(k for k, v in result.mapped.items() if v == name)
            shape_errors.append(f"{name}: {tuple(value.shape)} from {sources}, expected {expected}")
    unfilled = sorted(set(target) - set(result.state_dict))

    problems = []
    if unmatched:
        problems.append(_listing(f"{source_name} keys no rule covers", unmatched))
    if result.unrepresented and not allow_unrepresented:
        problems.append(
            _listing(
                f"{source_name} keys without a counterpart in this model",
                (f"{k}: needs {v}" for k, v in result.unrepresented.items()),
            )
        )
    if unknown:
        problems.append(_listing("keys mapped to tensors this model does not have", unknown))
    if doubled:
        problems.append(_listing("target keys filled more than once", doubled))
    if shape_errors:
        problems.append(_listing("shape mismatches", shape_errors))
    if unfilled:
        problems.append(_listing(f"target keys the {source_name} does not fill", unfilled))
    if problems:
        raise KeyMapError(f"cannot convert the {source_name}:\n" + "\n".join(problems))
    return result


def prefixed_state_dict(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """`module.state_dict()` with `prefix` before every key (the names the module has inside the model)."""
    return {f"{prefix}{key}": value for key, value in module.state_dict().items()}


def load_torch_checkpoint(path: str | Path, what: str) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU (tensors and plain containers only: a checkpoint from
    the internet cannot run code), with errors that name the file; `what` names the expected checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError / RuntimeError / ValueError variants
        raise ValueError(
            f"{path} is not a checkpoint torch.load(weights_only=True) can read: {error}"
        ) from error


def convert_into_modules(
    model: torch.nn.Module,
    module_names: Iterable[str],
    source: Mapping[str, torch.Tensor],
    rules: Iterable[KeyRule],
    *,
    allow_unrepresented: bool = False,
    source_name: str = "source",
) -> ConversionResult:
    """`convert_state_dict` into the named submodules of `model` (e.g. "visual_encoder", "head", or a dotted
    path such as "visual_encoder.neck"), whose every weight and buffer must be filled, then loaded into them
    strictly."""
    module_names = list(module_names)
    target: dict[str, torch.Tensor] = {}
    for name in module_names:
        target.update(prefixed_state_dict(model.get_submodule(name), f"{name}."))
    result = convert_state_dict(
        source,
        rules,
        target,
        config=model.config,
        allow_unrepresented=allow_unrepresented,
        source_name=source_name,
    )
    for name in module_names:
        prefix = f"{name}."
        state = {k.removeprefix(prefix): v for k, v in result.state_dict.items() if k.startswith(prefix)}
        model.get_submodule(name).load_state_dict(state, strict=True)
    return result


__all__ = [
    "ConversionResult",
    "KeyMapError",
    "KeyRule",
    "convert_into_modules",
    "convert_state_dict",
    "load_torch_checkpoint",
    "prefixed_state_dict",
]

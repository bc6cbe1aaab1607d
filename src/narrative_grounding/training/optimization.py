"""Optimizers and learning-rate schedules: the paper's recipe and a faster one for the tiny configs.

Presets (`--optimization`):
- "paper": EPNG's recipe: Adam, lr 1e-5, halved every 5 epochs, 5e-7 from epoch 10 on
  (`paper-step` schedule), no weight decay.
- "fast": AdamW at a higher learning rate with linear warm-up and cosine decay, for models trained
  from scratch in minutes (the tiny variants on the synthetic data).
- "auto": "fast" for models under 10M parameters, "paper" otherwise.
Every field of a preset can be overridden on the command line (`--learning_rate`, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import get_scheduler

SCHEDULES = ("paper-step", "cosine", "linear", "constant", "constant_with_warmup", "one-cycle")
OPTIMIZERS = ("adam", "adamw")
SMALL_MODEL_PARAMETERS = 10_000_000


@dataclass(frozen=True)
class OptimizationPreset:
    optimizer: str
    learning_rate: float
    lr_scheduler_type: str
    weight_decay: float
    warmup_ratio: float


PRESETS = {
    "paper": OptimizationPreset("adam", 1e-5, "paper-step", 0.0, 0.0),
    "fast": OptimizationPreset("adamw", 3e-3, "cosine", 1e-4, 0.05),
}


def resolve_preset(name: str, num_parameters: int) -> OptimizationPreset:
    """The preset called `name` ("auto" picks by model size, see the module doc)."""
    if name == "auto":
        name = "fast" if num_parameters < SMALL_MODEL_PARAMETERS else "paper"
    if name not in PRESETS:
        raise ValueError(f"unknown optimization preset {name!r}; choose one of auto, {', '.join(PRESETS)}")
    return PRESETS[name]


class PaperStepSchedule:
    """EPNG's step schedule as a LambdaLR factor of the optimizer step: 0.5 ** (epoch // 5) for epochs 0-9,
    then 0.05 (5e-7 for the paper's 1e-5). A class, not a closure, so the scheduler state pickles."""

    def __init__(
        self, steps_per_epoch: int, halve_every: int = 5, final_epoch: int = 10, final_factor: float = 0.05
    ):
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.halve_every = halve_every
        self.final_epoch = final_epoch
        self.final_factor = final_factor

    def __call__(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        if epoch >= self.final_epoch:
            return self.final_factor
        return 0.5 ** (epoch // self.halve_every)


class WarmupCosineSchedule:
    """Linear warm-up over `warmup_steps`, then cosine decay to `final_factor` at `total_steps` (a LambdaLR
    factor). The length may be changed during training (`resize`: a run fitted to a time budget learns how
    many steps fit only after timing the first ones)."""

    def __init__(self, warmup_ratio: float, total_steps: int, final_factor: float = 0.0):
        self.warmup_ratio = float(warmup_ratio)
        self.final_factor = final_factor
        self.resize(total_steps)

    def resize(self, total_steps: int) -> None:
        """A new length; the warm-up keeps its fraction of it."""
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = int(math.ceil(self.warmup_ratio * self.total_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.final_factor + (1 - self.final_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(
    model: torch.nn.Module, *, optimizer: str, learning_rate: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Adam/AdamW over the trainable parameters; no weight decay on biases and normalisation weights."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue  # frozen text encoder / backbone stages
        (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameter (is everything frozen?)")
    # torch's fused kernel updates each parameter in one pass instead of a dozen small ops (the default on CPU):
    # 5% of an epng-tiny training step on CPU. It runs on CPU and CUDA (where the model is when this is built).
    parameters = decay + no_decay
    fused = (
        True if all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters) else None
    )
    if optimizer == "adam":
        # torch's Adam adds weight decay to the gradient (L2), as the paper's Adam does.
        return torch.optim.Adam(groups, lr=learning_rate, fused=fused)
    return torch.optim.AdamW(groups, lr=learning_rate, fused=fused)


def fit_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, total_steps: int) -> bool:
    """Changes the length of a `cosine` schedule (see `WarmupCosineSchedule`); False for other schedules."""
    lambdas = getattr(scheduler, "lr_lambdas", None) or []
    fitted = False
    for schedule in lambdas:
        if isinstance(schedule, WarmupCosineSchedule):
            schedule.resize(total_steps)
            fitted = True
    return fitted


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str,
    num_training_steps: int,
    steps_per_epoch: int,
    warmup_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A scheduler stepped once per optimizer step (never wrapped by accelerate, whose wrapper steps it
    once per process)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    warmup = int(math.ceil(warmup_ratio * num_training_steps))
    if name == "paper-step":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, PaperStepSchedule(steps_per_epoch))
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, WarmupCosineSchedule(warmup_ratio, num_training_steps)
        )
    if name == "one-cycle":
        max_lrs = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=max_lrs,
            total_steps=max(2, num_training_steps),
            pct_start=max(warmup_ratio, 0.05),
            cycle_momentum=False,
        )
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=num_training_steps)

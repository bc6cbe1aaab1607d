"""Optimizers, learning-rate schedules and training recipes: the papers', the released code's, and a faster
one for the tiny configs.

Presets (`--optimization`):
- "paper": EPNG's recipe as the paper states it: Adam, lr 1e-5, halved every 5 epochs, 5e-7 from epoch 10
  on (`paper-step` schedule), no weight decay.
- "epng-released": the recipe of EPNG's released train_net.py, which produced the published numbers: Adam
  with an L2 weight decay of 0.01 on every parameter (biases and norms too), lr 1e-5 / 5e-6 / 2e-6 / 5e-7
  from epochs 0 / 5 / 10 / 20 (`released-step`), 60 epochs, 8 images per device with 4 accumulation steps
  (x 4 GPUs: 128 a step), no gradient clipping, the release's per-epoch EMA (0.999, `ReleasedEpochEma`)
  and evaluation at 1216 x 1216 input. The backbone side of that recipe (the COCO panoptic FPN weights,
  BGR input, CLIP mean/std in training) belongs to the model and its processor, not to this preset.
- "drmn-reference": DRMN's recipe as the reference reconstruction records it: Adam, lr 1e-4, 20 epochs
  (no schedule is recorded: constant), no weight decay.
- "fast": Muon for the hidden layers' weight matrices and AdamW for the other parameters (`MuonAdamW`),
  at higher learning rates, with linear warm-up and cosine decay, for models trained from scratch in minutes
  (the tiny variants on the synthetic data).
- "auto": "fast" for models under 10M parameters, otherwise "drmn-reference" for the DRMN head and
  "paper" for EPNG (so that a DRMN never trains at EPNG's learning rate by accident).
Every field of a preset can be overridden on the command line (`--learning_rate`, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import get_scheduler

from .muon import MuonAdamW, hidden_matrix_names

SCHEDULES = (
    "paper-step",
    "released-step",
    "cosine",
    "linear",
    "constant",
    "constant_with_warmup",
    "one-cycle",
)
OPTIMIZERS = ("adam", "adamw", "muon")
SMALL_MODEL_PARAMETERS = 10_000_000


@dataclass(frozen=True)
class OptimizationPreset:
    optimizer: str
    learning_rate: float
    lr_scheduler_type: str
    weight_decay: float
    warmup_ratio: float
    # optimizer "muon": the hidden layers' weight matrices' rate (`learning_rate`: the other parameters')
    muon_learning_rate: float = 0.01
    # --- training recipe fields (epng-released / drmn-reference); None: the command line's default ---
    decay_all_parameters: bool = False  # weight decay on biases and norms too (the released Adam)
    max_grad_norm: float | None = None
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    num_train_epochs: int | None = None
    ema_decay: float | None = None  # ReleasedEpochEma
    eval_image_size: int | None = None  # square evaluation input (the release's val.py: 1216)
    # --- end training recipe fields ---


PRESETS = {
    "paper": OptimizationPreset("adam", 1e-5, "paper-step", 0.0, 0.0),
    "epng-released": OptimizationPreset(
        "adam",
        1e-5,
        "released-step",
        0.01,
        0.0,
        decay_all_parameters=True,
        max_grad_norm=0.0,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=4,
        num_train_epochs=60,
        ema_decay=0.999,
        eval_image_size=1216,
    ),
    "drmn-reference": OptimizationPreset("adam", 1e-4, "constant", 0.0, 0.0, num_train_epochs=20),
    "fast": OptimizationPreset("muon", 3e-3, "cosine", 1e-4, 0.05, muon_learning_rate=0.01),
}
# The recipe fields a preset may set and the value each takes when neither the preset nor the user does.
RECIPE_DEFAULTS = {
    "max_grad_norm": 1.0,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "num_train_epochs": 20,
    "ema_decay": 0.0,
    "eval_image_size": None,
}


def resolve_preset(name: str, num_parameters: int, grounding_head: str = "epng") -> OptimizationPreset:
    """The preset called `name` ("auto" picks by model size and head, see the module doc)."""
    if name == "auto":
        if num_parameters < SMALL_MODEL_PARAMETERS:
            name = "fast"
        else:
            name = "drmn-reference" if grounding_head == "drmn" else "paper"
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


class EpochStepSchedule:
    """A LambdaLR factor that is constant within an epoch and changes at given epochs: `factors[i]` from
    epoch `milestones[i]` on (milestones[0] = 0). The default is EPNG's released schedule (lambda_lr of
    train_net.py, stepped once per epoch): 1, 1/2, 1/5, 1/20 of 1e-5 from epochs 0, 5, 10, 20."""

    def __init__(
        self,
        steps_per_epoch: int,
        milestones: tuple[int, ...] = (0, 5, 10, 20),
        factors: tuple[float, ...] = (1.0, 0.5, 0.2, 0.05),
    ):
        if len(milestones) != len(factors) or milestones[0] != 0:
            raise ValueError(f"milestones {milestones} must start at 0 and match factors {factors}")
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.milestones = tuple(milestones)
        self.factors = tuple(factors)

    def __call__(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        factor = self.factors[0]
        for milestone, value in zip(self.milestones, self.factors, strict=True):
            if epoch >= milestone:
                factor = value
        return factor


class ReleasedEpochEma:
    """EPNG's per-epoch exponential moving average, exactly as its released train_net.py runs it.

    The release keeps a shadow copy of the trainable weights (taken before training), and at the end of every
    epoch sets shadow = decay * shadow + (1 - decay) * weights, then points the weights at the shadow tensors
    (`param.data = shadow`) without ever restoring them. From then on the optimizer updates the shadow tensors
    themselves, so every later average is of a tensor with itself: a no-op. The net effect, reproduced here,
    is that the weights after the first epoch become decay * initial + (1 - decay) * trained (with 0.999:
    almost the initial weights; the optimizer's moments are kept) and nothing happens after that.
    Frozen parameters and buffers (BatchNorm statistics) are untouched, as in the release.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.applied = False  # True once the shadow has become the weights (after the first epoch)
        self.shadow = {
            name: parameter.detach().clone()
            for name, parameter in model.named_parameters()
            if parameter.requires_grad
        }

    @torch.no_grad()
    def end_epoch(self, model: torch.nn.Module) -> None:
        """Called once at the end of every training epoch, before evaluation (as the release)."""
        if self.applied:
            return  # the release's average of the weights with themselves
        for name, parameter in model.named_parameters():
            if name in self.shadow:
                parameter.mul_(1.0 - self.decay).add_(
                    self.shadow[name].to(parameter.device), alpha=self.decay
                )
        self.applied = True
        self.shadow = {}

    def state_dict(self) -> dict:
        return {"decay": self.decay, "applied": self.applied, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.applied, self.shadow = state["decay"], state["applied"], state["shadow"]


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
    model: torch.nn.Module,
    *,
    optimizer: str,
    learning_rate: float,
    weight_decay: float,
    decay_all_parameters: bool = False,
    muon_learning_rate: float = 0.01,
) -> torch.optim.Optimizer:
    """Adam, AdamW or Muon + AdamW (`MuonAdamW`: Muon for the hidden layers' weight matrices at
    `muon_learning_rate`, AdamW at `learning_rate` for the rest) over the trainable parameters; no weight
    decay on biases and normalisation weights unless `decay_all_parameters` (EPNG's released Adam decays
    every parameter)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    muon_names = hidden_matrix_names(model) if optimizer == "muon" else set()
    decay, no_decay, muon = [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue  # frozen text encoder / backbone stages
        exempt = not decay_all_parameters and (parameter.ndim <= 1 or name.endswith(".bias"))
        (muon if name in muon_names else no_decay if exempt else decay).append(parameter)
    groups = [
        group
        for group in (
            # the AdamW groups first: schedulers and logs report the first group's learning rate
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
            {"params": muon, "weight_decay": weight_decay, "lr": muon_learning_rate, "use_muon": True},
        )
        if group["params"]
    ]
    if not groups:
        raise ValueError("the model has no trainable parameter (is everything frozen?)")
    # torch's fused kernel updates each parameter in one pass instead of a dozen small ops (the default on CPU):
    # 5% of an epng-tiny training step on CPU. It runs on CPU and CUDA (where the model is when this is built).
    parameters = decay + no_decay + muon
    fused = (
        True if all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters) else None
    )
    if optimizer == "adam":
        # torch's Adam adds weight decay to the gradient (L2), as the paper's Adam does.
        return torch.optim.Adam(groups, lr=learning_rate, fused=fused)
    if optimizer == "muon":
        return MuonAdamW(groups, lr=learning_rate, fused=fused)
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
    if name == "released-step":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, EpochStepSchedule(steps_per_epoch))
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

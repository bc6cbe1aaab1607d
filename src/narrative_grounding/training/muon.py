"""Muon for the weight matrices of hidden layers and AdamW for every other parameter, as one optimizer.

Muon (K. Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks") keeps SGD momentum
for each weight matrix and replaces the update by a nearby semi-orthogonal matrix (all singular values near
one), computed with five Newton-Schulz iterations: every direction of the layer's input space moves by about
the same amount, however unevenly the raw gradient spreads over them. Embedding tables, biases, normalisation
weights and convolutions over the raw image are not hidden-layer matrices; they keep AdamW.

torch.optim.Muon takes 2-D parameters only and orthogonalises one matrix at a time. Here a convolution kernel
counts as the (out_channels, in_channels * kh * kw) matrix of its unfolded form, and the updates of all
matrices of one shape are orthogonalised together in batched products: an `epng-tiny` step has 87 such
matrices of 23 shapes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.adam import adam

#: The quintic Newton-Schulz iteration's coefficients (Jordan et al.): they maximise the slope at zero, so
#: that five iterations bring every singular value into about [0.7, 1.2] rather than exactly to 1.
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def orthogonalize(
    matrices: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """N x R x C matrices -> N x R x C: each one with its singular vectors kept and its singular values
    brought close to one (Newton-Schulz iterations, computed in `dtype`, as the reference implementations
    do in bfloat16). Returned in the input's dtype."""
    if matrices.ndim != 3:
        raise ValueError(f"orthogonalize takes N x R x C matrices, got shape {tuple(matrices.shape)}")
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    wide = matrices.to(dtype)
    tall = wide.shape[1] > wide.shape[2]
    if tall:  # iterate on the R x R or C x C Gram matrix of the smaller side
        wide = wide.transpose(1, 2)
    # Scaled to Frobenius norm 1, every singular value is at most 1: inside the iteration's basin.
    wide = wide / wide.flatten(1).norm(dim=1).clamp_min(1e-7)[:, None, None]
    for _ in range(steps):
        gram = torch.bmm(wide, wide.transpose(1, 2))
        polynomial = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        wide = torch.baddbmm(wide, polynomial, wide, beta=a)  # a X + (b G + c G^2) X
    if tall:
        wide = wide.transpose(1, 2)
    return wide.to(matrices.dtype)


def hidden_matrix_names(model: nn.Module) -> set[str]:
    """Names of the parameters Muon updates: the weights of linear and convolution layers, except
    convolutions over the image itself (at most 3 input channels: their few input directions are the
    colours). Embedding tables, biases and normalisation weights are not among them."""
    names = set()
    for module_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.ndim < 2:
            continue
        if isinstance(module, nn.Linear) or (isinstance(module, CONVOLUTIONS) and module.in_channels > 3):
            names.add(f"{module_name}.weight" if module_name else "weight")
    return names


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer over two kinds of parameter groups: groups with `use_muon=True` (2-D or larger weights;
    see the module doc) take Muon's orthogonalised momentum steps, the others AdamW's (torch's own update, fused
    where the parameters allow). Every group has its own `lr` and `weight_decay` (decoupled in both kinds), so
    learning-rate schedulers scale both kinds alike.

    Muon groups: `lr` (the reference implementation's is 0.02; `build_optimizer` gives 0.01), `momentum` (0.95,
    Nesterov), `ns_steps` (5); each matrix's step is scaled by sqrt(max(1, rows / columns)), as in the reference
    implementation. AdamW groups: `lr`, `betas`, `eps`. `lr` and the others here are the defaults of groups
    that set none.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        *,
        lr: float = 1e-3,
        momentum: float = 0.95,
        ns_steps: int = 5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        fused: bool | None = None,
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be positive, got {ns_steps}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "ns_steps": ns_steps,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "use_muon": False,
        }
        super().__init__(params, defaults)
        self.fused = fused
        for group in self.param_groups:
            if group["use_muon"]:
                small = [tuple(p.shape) for p in group["params"] if p.ndim < 2]
                if small:
                    raise ValueError(f"Muon groups take weight matrices (2-D or more); got shapes {small}")

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch.optim.Optimizer's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group: dict[str, Any]) -> None:
        momentum = group["momentum"]
        by_shape: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for parameter in group["params"]:
            if parameter.grad is None:
                continue
            state = self.state[parameter]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
            buffer = state["momentum_buffer"]
            buffer.mul_(momentum).add_(parameter.grad)
            update = parameter.grad.add(buffer, alpha=momentum)  # Nesterov
            matrix = update.reshape(update.shape[0], -1)
            by_shape.setdefault(tuple(matrix.shape), []).append((parameter, matrix))
        for (rows, columns), members in by_shape.items():
            orthogonal = orthogonalize(torch.stack([matrix for _, matrix in members]), group["ns_steps"])
            step_size = group["lr"] * max(1.0, rows / columns) ** 0.5
            for (parameter, _), matrix in zip(members, orthogonal, strict=True):
                if group["weight_decay"]:
                    parameter.mul_(1.0 - group["lr"] * group["weight_decay"])
                parameter.add_(matrix.view_as(parameter), alpha=-step_size)

    def _adamw_step(self, group: dict[str, Any]) -> None:
        parameters, gradients, first, second, steps = [], [], [], [], []
        for parameter in group["params"]:
            if parameter.grad is None:
                continue
            state = self.state[parameter]
            if not state:
                # torch's fused kernels take the step count on the parameter's device, the others on the CPU
                step_device = parameter.device if self.fused else torch.device("cpu")
                state["step"] = torch.zeros((), dtype=torch.float32, device=step_device)
                state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
            parameters.append(parameter)
            gradients.append(parameter.grad)
            first.append(state["exp_avg"])
            second.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not parameters:
            return
        beta1, beta2 = group["betas"]
        adam(
            parameters,
            gradients,
            first,
            second,
            [],
            steps,
            fused=self.fused,
            decoupled_weight_decay=True,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )

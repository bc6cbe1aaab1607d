"""MuonAdamW: Muon's orthogonalised steps for hidden weight matrices, torch's AdamW for the rest."""

import copy

import pytest
import torch
from torch import nn

from narrative_grounding.training.muon import MuonAdamW, hidden_matrix_names, orthogonalize
from narrative_grounding.training.optimization import build_optimizer, build_scheduler


@pytest.mark.parametrize("shape", [(3, 16, 40), (3, 40, 16), (2, 24, 24)])
def test_orthogonalize_keeps_the_singular_vectors_and_flattens_the_singular_values(shape):
    generator = torch.Generator().manual_seed(0)
    # a badly conditioned gradient: singular values spread over two orders of magnitude
    left, _ = torch.linalg.qr(torch.randn(shape[0], shape[1], shape[1], generator=generator))
    right, _ = torch.linalg.qr(torch.randn(shape[0], shape[2], shape[2], generator=generator))
    rank = min(shape[1:])
    spread = torch.logspace(0, -2, rank)
    matrices = (
        left[:, :, :rank]
        @ torch.diag_embed(spread.expand(shape[0], rank))
        @ right[:, :, :rank].transpose(1, 2)
    )

    result = orthogonalize(matrices)

    assert result.shape == matrices.shape and result.dtype == torch.float32
    values = torch.linalg.svdvals(result.double())
    assert values.min() > 0.6 and values.max() < 1.25  # the quintic's band, from 1 ... 0.01 before
    polar = left[:, :, :rank] @ right[:, :, :rank].transpose(1, 2)  # U V^T: the exactly orthogonal factor
    cosine = (polar * result).sum((1, 2)) / (polar.norm(dim=(1, 2)) * result.norm(dim=(1, 2)))
    assert (cosine > 0.97).all()


def test_orthogonalize_refuses_anything_but_a_batch_of_matrices():
    with pytest.raises(ValueError, match="N x R x C"):
        orthogonalize(torch.randn(4, 4))


def test_hidden_matrices_are_linear_and_convolution_weights_past_the_image():
    model = nn.ModuleDict(
        {
            "embed": nn.Embedding(10, 8),
            "stem": nn.Conv2d(3, 8, 3),  # reads the RGB image
            "conv": nn.Conv2d(8, 8, 3),
            "norm": nn.LayerNorm(8),
            "linear": nn.Linear(8, 4),
        }
    )
    assert hidden_matrix_names(model) == {"conv.weight", "linear.weight"}


def test_epng_tiny_gives_muon_every_hidden_matrix_and_adamw_the_rest():
    from narrative_grounding import create_model

    model = create_model("epng-tiny")
    optimizer = build_optimizer(model, optimizer="muon", learning_rate=3e-3, weight_decay=1e-4)
    assert isinstance(optimizer, MuonAdamW)
    groups = optimizer.param_groups
    # AdamW groups first (schedulers and logs read the first group's learning rate), then Muon's
    assert [(group["use_muon"], group["lr"]) for group in groups] == [
        (False, 3e-3),
        (False, 3e-3),
        (True, 0.01),
    ]
    muon = {id(p) for p in groups[2]["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in muon}
    assert len(names) == 87
    assert not any("embeddings" in name or name.endswith(".bias") for name in names)
    assert "visual_encoder.backbone._backbone.conv1.0.weight" not in names  # the 3-channel image convolution
    assert {"head.refiner.convs.1.weight", "head.layers.0.lpa.qkv.weight"} <= names
    counted = sum(len(group["params"]) for group in groups)
    assert counted == sum(1 for p in model.parameters() if p.requires_grad)


def _pair(weight_decay: float = 0.1):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3), nn.Flatten(), nn.Linear(6 * 4, 5), nn.LayerNorm(5))
    return model, copy.deepcopy(model)


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    inputs = torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(step))
    return model(inputs).square().mean()


def test_adamw_groups_step_exactly_like_torch_adamw():
    model, twin = _pair()
    optimizer = MuonAdamW(
        [
            {"params": [model[0].weight, model[2].weight], "weight_decay": 0.1},
            {"params": [model[0].bias, model[2].bias, model[3].weight, model[3].bias], "weight_decay": 0.0},
        ],
        lr=1e-2,
        fused=True,
    )
    reference = torch.optim.AdamW(
        [
            {"params": [twin[0].weight, twin[2].weight], "weight_decay": 0.1},
            {"params": [twin[0].bias, twin[2].bias, twin[3].weight, twin[3].bias], "weight_decay": 0.0},
        ],
        lr=1e-2,
        foreach=False,
    )
    for step in range(4):
        for network, optim in ((model, optimizer), (twin, reference)):
            _loss(network, step).backward()
            optim.step()
            optim.zero_grad()
    for ours, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)  # fused vs per-parameter rounding


def test_muon_groups_take_orthogonalised_nesterov_momentum_steps_of_the_unfolded_kernels():
    model, twin = _pair()
    weights = [model[0].weight, model[2].weight]  # a 6 x 4 x 3 x 3 kernel (6 x 36) and a 5 x 24 matrix
    optimizer = MuonAdamW([{"params": weights, "use_muon": True, "weight_decay": 0.1}], lr=0.05)
    buffers = [torch.zeros_like(w) for w in weights]
    for step in range(3):
        _loss(model, step).backward()
        expected = []
        for index, parameter in enumerate(weights):  # the step from these gradients, written out
            buffers[index] = 0.95 * buffers[index] + parameter.grad
            update = (parameter.grad + 0.95 * buffers[index]).reshape(parameter.shape[0], -1)
            rows, columns = update.shape
            direction = orthogonalize(update[None])[0].view_as(parameter)
            scale = 0.05 * max(1, rows / columns) ** 0.5
            expected.append(parameter.detach() * (1 - 0.05 * 0.1) - scale * direction)
        optimizer.step()
        optimizer.zero_grad()
        for ours, reference in zip(weights, expected, strict=True):
            torch.testing.assert_close(ours.detach(), reference, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model[0].bias, twin[0].bias)  # not in the optimizer: untouched


def test_muon_refuses_vectors():
    with pytest.raises(ValueError, match="weight matrices"):
        MuonAdamW([{"params": [nn.Parameter(torch.zeros(4))], "use_muon": True}])


def test_state_dict_round_trip_resumes_both_kinds_of_step():
    def build(network):
        return build_optimizer(network, optimizer="muon", learning_rate=1e-2, weight_decay=0.1)

    model, twin = _pair()
    optimizer = build(model)
    for step in range(2):
        _loss(model, step).backward()
        optimizer.step()
        optimizer.zero_grad()
    twin.load_state_dict(model.state_dict())
    resumed = build(twin)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    state = resumed.state_dict()["state"]
    assert any("momentum_buffer" in entry for entry in state.values())
    assert any("exp_avg_sq" in entry for entry in state.values())
    for network, optim in ((model, optimizer), (twin, resumed)):
        _loss(network, 2).backward()
        optim.step()
    for ours, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)


def test_schedules_scale_the_muon_and_adamw_rates_alike():
    model, _ = _pair()
    optimizer = build_optimizer(
        model, optimizer="muon", learning_rate=1e-2, weight_decay=0.0, muon_learning_rate=0.04
    )
    scheduler = build_scheduler(
        optimizer, name="cosine", num_training_steps=10, steps_per_epoch=5, warmup_ratio=0.0
    )
    for _ in range(5):
        _loss(model, 0).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    rates = [group["lr"] for group in optimizer.param_groups]
    assert rates[-1] / rates[0] == pytest.approx(4.0)  # Muon's group last, at 4x AdamW's at every step
    assert rates[0] == pytest.approx(1e-2 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 0.5)).item()))

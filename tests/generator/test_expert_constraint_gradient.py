"""The expert term of Eq. 2 trains the generator: it has a gradient and rewards shifts in the intended direction."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from generator.training.expert import ExpertModel, expert_constraint, make_expert_extra_loss

pytestmark = pytest.mark.ml


class BrightnessClassifier(nn.Module):
    """Effusion logit rises with the brightness of the bottom half, pneumonia with the top half."""

    pathologies = ["Effusion", "Pneumonia"]

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(4.0 / 1024))

    def forward(self, x):
        half = x.shape[-2] // 2
        return torch.stack([x[..., half:, :].mean(dim=(1, 2, 3)), x[..., :half, :].mean(dim=(1, 2, 3))], 1) * self.gain


class TwoLayerGenerator(nn.Module):
    """A stand-in image mechanism: x_cf = x + conv(conv([x, disease map]))."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(2, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 1, 3, padding=1)

    def counterfactual(self, x, pa, do):
        disease = do.get("disease", pa["disease"]).float().view(-1, 1, 1, 1).expand_as(x)
        x_cf = torch.tanh(x + self.second(torch.relu(self.first(torch.cat([x, disease], 1)))))
        return SimpleNamespace(x_cf=x_cf, pa_cf={**pa, **do})


def expert():
    return ExpertModel(BrightnessClassifier(), input_resolution=8)


def test_generator_parameters_receive_a_gradient_from_the_expert_term():
    torch.manual_seed(0)
    generator = TwoLayerGenerator()
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    pa = {"disease": torch.tensor([0, 0, 1, 1, 2, 2])}
    do = {"disease": torch.tensor([1, 2, 0, 2, 0, 1])}
    cf = generator.counterfactual(x, pa, do)
    loss = make_expert_extra_loss(expert(), alpha=1.0, beta=10.0, threshold=0.5)(generator, x, pa, cf, do)
    loss.backward()
    assert loss.item() > 0
    for name, parameter in generator.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_term_matches_the_formula_and_prefers_the_intended_direction():
    judge = expert()
    x = torch.zeros(1, 1, 8, 8)
    brighter_bottom = x.clone()
    brighter_bottom[..., 4:, :] = 0.5
    darker_bottom = x.clone()
    darker_bottom[..., 4:, :] = -0.5
    effusion = torch.tensor([1])
    alpha, beta, d = 2.0, 5.0, 0.3

    def by_hand(x_cf):
        shift = torch.sigmoid(4 * x_cf[..., 4:, :].mean()) - torch.sigmoid(torch.tensor(0.0))
        return alpha * math.log1p(beta * max(0.0, d - shift.item()))

    toward = expert_constraint(judge, x, brighter_bottom, effusion, alpha, beta, d)
    away = expert_constraint(judge, x, darker_bottom, effusion, alpha, beta, d)
    assert toward.item() == pytest.approx(by_hand(brighter_bottom), rel=1e-5)
    assert away.item() == pytest.approx(by_hand(darker_bottom), rel=1e-5)
    assert toward < away
    unchanged = expert_constraint(judge, x, x, effusion, alpha, beta, d)
    assert unchanged.item() == pytest.approx(alpha * math.log1p(beta * d), rel=1e-5)
    assert toward < unchanged < away


def test_healthy_target_asks_for_both_findings_to_fall():
    judge = expert()
    x = torch.full((1, 1, 8, 8), 0.4)
    clearer = torch.full((1, 1, 8, 8), -0.4)
    healthy = torch.tensor([0])
    assert expert_constraint(judge, x, clearer, healthy, 1.0, 10.0, 0.2) < expert_constraint(
        judge, x, x, healthy, 1.0, 10.0, 0.2
    )


def test_term_vanishes_once_the_shift_reaches_the_threshold_and_for_unchanged_disease():
    judge = expert()
    x = torch.full((2, 1, 8, 8), -1.0)
    x_cf = x.clone()
    x_cf[..., :4, :] = 1.0
    pneumonia = torch.tensor([2, 2])
    assert expert_constraint(judge, x, x_cf, pneumonia, 1.0, 10.0, 0.4).item() == 0.0
    already = expert_constraint(judge, x, x, pneumonia, 1.0, 10.0, 0.4, factual_disease=torch.tensor([2, 2]))
    assert already.item() == 0.0

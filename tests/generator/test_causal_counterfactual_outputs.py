"""Counterfactual inference: shapes, ranges, uncertainty, composition and differentiability."""

import pytest
import torch

from generator.causal.counterfactual import CounterfactualModel
from generator.data.graph import MIMIC_GRAPH
from generator.training.presets import get_preset
from tests.generator.helpers import random_parents

pytestmark = [pytest.mark.ml, pytest.mark.usefixtures("one_thread")]


def batch(n=6, resolution=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pa = random_parents(n, generator, disease=torch.tensor([0, 1, 2, 1, 2, 0])[:n])
    return torch.rand(n, 1, resolution, resolution, generator=generator) * 2 - 1, pa


def model():
    torch.manual_seed(0)
    cf_model = CounterfactualModel(MIMIC_GRAPH, get_preset("test-32"))
    cf_model.parent_model.fit_standardisation(batch(6)[1])
    return cf_model


def test_counterfactual_has_image_shape_range_and_the_intervened_parents():
    x, pa = batch()
    cf = model().counterfactual(x, pa, {"disease": 0})
    assert cf.x_cf.shape == x.shape == cf.effect.shape == cf.uncertainty.shape
    assert cf.x_cf.min() >= -1 and cf.x_cf.max() <= 1
    assert torch.allclose(cf.effect, cf.x_cf - x)
    assert torch.equal(cf.pa_cf["disease"], torch.zeros(6, dtype=torch.long))
    assert torch.allclose(cf.pa_cf["age"], pa["age"], atol=1e-3)
    assert torch.equal(cf.uncertainty, torch.zeros_like(x))


def test_several_samples_give_a_nonnegative_uncertainty_map():
    x, pa = batch()
    cf = model().counterfactual(x, pa, {"disease": torch.tensor([1, 1, 1, 2, 2, 2])}, samples=4)
    assert cf.x_cf.shape == x.shape
    assert (cf.uncertainty >= 0).all() and cf.uncertainty.sum() > 0
    assert torch.equal(cf.pa_cf["disease"], torch.tensor([1, 1, 1, 2, 2, 2]))


def test_intervening_on_nothing_reproduces_the_input():
    x, pa = batch()
    assert torch.allclose(model().reconstruct(x, pa), x, atol=1e-4)


def test_unknown_parent_in_do_is_rejected():
    x, pa = batch()
    with pytest.raises(KeyError, match="unknown parents"):
        model().counterfactual(x, pa, {"smoker": 1})


def test_counterfactual_is_differentiable_with_respect_to_the_image_model():
    x, pa = batch()
    cf_model = model()
    cf = cf_model.counterfactual(x, pa, {"disease": 2})
    cf.x_cf.mean().backward()
    grads = [p.grad for p in cf_model.hvae.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)

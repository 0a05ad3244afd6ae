"""do() on a parent changes its descendants as the graph says, and nothing else."""

import pytest
import torch

from generator.causal.parents import ParentModel
from generator.data.graph import MIMIC_GRAPH
from tests.generator.helpers import random_parents


@pytest.fixture(scope="module")
def fitted():
    # Synthetic patients whose disease follows white-cell count strongly (and ignores age), so an intervention on
    # wcc must move the disease of many patients while the other roots stay as observed.
    generator = torch.Generator().manual_seed(0)
    pa = random_parents(1000, generator)
    pa["disease"] = torch.where(pa["wcc"] > 15, 2, 0)
    torch.manual_seed(0)
    model = ParentModel(MIMIC_GRAPH)
    model.fit_standardisation(pa)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(100):
        loss = model.nll(pa)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, pa


def test_do_on_a_root_changes_its_descendant_and_nothing_else(fitted):
    model, pa = fitted
    cf = model.counterfactual(pa, do={"wcc": 24.0})
    assert torch.all(cf["wcc"] == 24.0)
    for untouched in ("age", "sex", "race"):
        assert torch.allclose(cf[untouched], pa[untouched], atol=1e-3), untouched
    low_before = pa["wcc"] < 10
    # patients with a low count and no pneumonia get it once the count is set high
    assert (cf["disease"][low_before] == 2).float().mean() > 0.9
    assert (pa["disease"][low_before] == 2).float().mean() < 0.05


def test_do_on_a_root_without_children_changes_only_itself(fitted):
    model, pa = fitted
    cf = model.counterfactual(pa, do={"sex": 1.0})
    assert torch.all(cf["sex"] == 1.0)
    assert torch.equal(cf["disease"], pa["disease"])
    assert torch.equal(cf["race"], pa["race"])
    assert torch.allclose(cf["age"], pa["age"], atol=1e-3)


def test_do_on_the_disease_leaves_its_parents_alone(fitted):
    model, pa = fitted
    cf = model.counterfactual(pa, do={"disease": "healthy"})
    assert torch.all(cf["disease"] == 0)
    assert torch.allclose(cf["wcc"], pa["wcc"], atol=1e-3)
    assert torch.allclose(cf["age"], pa["age"], atol=1e-3)

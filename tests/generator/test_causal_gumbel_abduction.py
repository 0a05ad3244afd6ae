"""Exact abduction of the Gumbel-max noise of discrete parents (truncated-Gumbel posterior)."""

import torch

from generator.causal.parents import ParentModel, abduct_gumbel, sample_gumbel
from generator.data.graph import MIMIC_GRAPH


def test_abducted_noise_reproduces_the_observed_class_under_the_same_logits():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 3, generator=generator) * 3
    observed = torch.randint(0, 3, (2000,), generator=generator)  # including very unlikely classes
    noise = abduct_gumbel(logits, observed, generator)
    assert torch.equal(torch.argmax(logits + noise, dim=-1), observed)


def test_abduction_matches_rejection_sampling_of_the_gumbel_posterior():
    # Posterior of g given argmax(l + g) == k, worked out independently by drawing prior noise and keeping the draws
    # that produce class k: the exact sampler must agree with it in mean and spread.
    generator = torch.Generator().manual_seed(1)
    logits = torch.tensor([0.0, 1.0, -0.5])
    observed_class = 2
    prior = sample_gumbel((400_000, 3), generator)
    kept = prior[torch.argmax(logits + prior, dim=-1) == observed_class]
    exact = abduct_gumbel(logits.expand(len(kept), 3), torch.full((len(kept),), observed_class), generator)
    assert torch.allclose(exact.mean(0), kept.mean(0), atol=0.03)
    assert torch.allclose(exact.std(0), kept.std(0), atol=0.03)


def test_parent_model_with_no_intervention_returns_every_observed_value():
    torch.manual_seed(0)
    model = ParentModel(MIMIC_GRAPH)
    pa = model.sample(500)
    model.fit_standardisation(pa)
    cf = model.counterfactual(pa, do={})
    for name in MIMIC_GRAPH.names:
        if MIMIC_GRAPH[name].kind == "continuous":
            assert torch.allclose(cf[name], pa[name], atol=1e-3), name
        else:
            assert torch.equal(cf[name], pa[name]), name

"""The conditional HVAE learns to reconstruct a trivial image set from its latents and parents."""

import pytest
import torch

from generator.causal.hvae import ConditionalHVAE, discretised_gaussian_log_likelihood
from generator.data.graph import MIMIC_GRAPH
from generator.training.presets import get_preset

pytestmark = pytest.mark.ml


def trivial_set(n=16, resolution=32):
    # bright squares whose position varies (exogenous) and whose size follows the disease label
    generator = torch.Generator().manual_seed(0)
    disease = torch.arange(n) % 3
    x = -torch.ones(n, 1, resolution, resolution)
    for i in range(n):
        top, left = torch.randint(2, 14, (2,), generator=generator).tolist()
        size = 6 + 4 * int(disease[i])
        x[i, :, top : top + size, left : left + size] = 0.8
    pa = {
        "age": torch.full((n,), 50.0),
        "sex": (torch.arange(n) % 2).float(),
        "race": torch.zeros(n, dtype=torch.long),
        "wcc": torch.full((n,), 8.0),
        "disease": disease,
    }
    return x, pa


def test_reconstruction_from_the_posterior_gets_close_to_the_input_after_brief_training():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, pa = trivial_set()
    hvae = ConditionalHVAE(get_preset("test-32"), MIMIC_GRAPH)
    before = (hvae.reconstruct(x, pa) - x).abs().mean().item()
    optimizer = torch.optim.Adam(hvae.parameters(), lr=3e-3)
    for _ in range(150):
        loss = hvae.elbo(x, pa)["free_energy"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = (hvae.reconstruct(x, pa) - x).abs().mean().item()
    # "always predict the mean image" has this error; a working model must do far better than it
    mean_image_error = (x.mean(0, keepdim=True) - x).abs().mean().item()
    assert after < 0.5 * mean_image_error, (before, after, mean_image_error)
    assert after < 0.25 * before


def test_discretised_gaussian_gives_probabilities_that_sum_to_one_over_the_bins():
    bins = torch.linspace(-1, 1, 256)
    for mean, log_sigma in ((0.3, -2.0), (-0.95, -3.0), (0.99, -1.0)):
        log_p = discretised_gaussian_log_likelihood(bins, torch.tensor(mean), torch.tensor(log_sigma))
        assert torch.isclose(log_p.exp().sum(), torch.tensor(1.0), atol=1e-3)


def test_free_energy_is_measured_on_a_validation_set_smaller_than_the_evaluation_batches():
    from generator.training.counterfactual_stage import measure_free_energy

    x, pa = trivial_set(n=5)
    preset = get_preset("test-32")
    hvae = ConditionalHVAE(preset, MIMIC_GRAPH)

    class Tiny:
        pass

    dataset = Tiny()
    dataset.x, dataset.pa = x, pa
    value = measure_free_energy(hvae, dataset, preset, torch.device("cpu"), batches=4)

    expected = hvae.elbo(x, pa, generator=torch.Generator().manual_seed(0))["free_energy"].mean().item()
    assert abs(value - expected) < 1e-4

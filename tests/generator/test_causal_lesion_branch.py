"""The additive lesion branch: the disease can change only what the branch draws, and nothing for "no finding"."""

import pytest
import torch

from generator.causal.counterfactual import CounterfactualModel
from generator.causal.hvae import ConditionalHVAE
from generator.data.graph import CHESTXRAY8_GRAPH, MIMIC_GRAPH
from generator.training.presets import Preset, get_preset
from tests.generator.helpers import random_parents

pytestmark = [pytest.mark.ml, pytest.mark.usefixtures("one_thread")]


def batch(disease, seed=0):
    n = len(disease)
    generator = torch.Generator().manual_seed(seed)
    pa = random_parents(n, generator, disease=disease)
    return torch.rand(n, 1, 32, 32, generator=generator) * 2 - 1, pa


def lesion_model(randomise_branch=True):
    preset = get_preset("test-32")
    preset.lesion_blocks = 1
    torch.manual_seed(0)
    model = CounterfactualModel(MIMIC_GRAPH, preset)
    model.parent_model.fit_standardisation(batch([0, 1, 2, 0, 1, 2])[1])
    if randomise_branch:
        with torch.no_grad():
            for parameter in model.hvae.lesion_output.parameters():
                parameter.normal_(0, 0.3)
    return model.eval()


def test_a_fresh_branch_draws_nothing_so_do_disease_leaves_the_image_exactly_as_it_was():
    model = lesion_model(randomise_branch=False)
    x, pa = batch([0, 1, 2, 1])
    with torch.no_grad():
        for target in (0, 1, 2):
            # equal up to the float round trip of the other parents through their abducted noise
            change = model.counterfactual(x, pa, {"disease": target}).x_cf - model.reconstruct(x, pa)
            assert change.abs().max() < 1e-5
        # the trunk still reads the other parents
        older = model.counterfactual(x, pa, {"age": torch.full((4,), 89.0)}).x_cf
    assert (older - model.reconstruct(x, pa)).abs().max() > 1e-4


def test_the_branch_is_silent_for_no_finding_and_changes_the_image_for_a_disease():
    model = lesion_model()
    x, pa = batch([0, 0, 0])
    with torch.no_grad():
        healthy = model.counterfactual(x, pa, {"disease": 0}).x_cf
        effusion = model.counterfactual(x, pa, {"disease": 1}).x_cf
        pneumonia = model.counterfactual(x, pa, {"disease": 2}).x_cf
    assert (healthy - model.reconstruct(x, pa)).abs().max() < 1e-5
    assert (effusion - healthy).abs().mean() > 1e-3
    assert (pneumonia - effusion).abs().mean() > 1e-3


def test_the_difference_between_diseases_is_exactly_the_branch_output():
    model = lesion_model()
    hvae = model.hvae
    x, pa = batch([1, 2, 1])
    with torch.no_grad():
        latents = hvae.abduct(x, pa).latents
        healthy = dict(pa, disease=torch.zeros(3, dtype=torch.long))
        mean_sick, log_sigma_sick, _, _ = hvae.top_down(pa, latents=latents)
        mean_healthy, log_sigma_healthy, _, _ = hvae.top_down(healthy, latents=latents)
        # the trunk's features under either label are the same, so the branch alone explains the difference
        trunk_features = top_features(hvae, healthy, latents)
        assert torch.allclose(trunk_features, top_features(hvae, pa, latents))
        branch_mean = hvae.lesion(trunk_features, pa)
        removal = model.counterfactual(x, pa, {"disease": 0}).x_cf
    assert torch.allclose(mean_sick - mean_healthy, branch_mean, atol=1e-5)
    assert branch_mean.abs().mean() > 1e-3
    # the pixel scale is the trunk's alone, so removal subtracts the branch's drawing and rescales no pixel noise
    assert torch.equal(log_sigma_sick, log_sigma_healthy)
    assert torch.allclose(removal, (x - branch_mean).clamp(-1, 1), atol=1e-5)


def top_features(hvae, pa, latents):
    """The trunk's top features, as the decoder hands them to the lesion branch."""
    return hvae.decode(pa, latents=latents)["features"]


def test_without_the_branch_the_disease_modulates_every_block_as_in_the_paper():
    preset = get_preset("test-32")
    assert preset.lesion_blocks == 0
    hvae = ConditionalHVAE(preset, MIMIC_GRAPH)
    assert "disease" in hvae.trunk_parents and not hasattr(hvae, "lesion_blocks")
    assert get_preset("cpu-64").lesion_blocks > 0


def test_a_lesion_node_missing_from_the_graph_is_refused():
    preset = get_preset("test-32")
    preset.lesion_blocks, preset.lesion_node = 1, "wcc"
    with pytest.raises(ValueError, match="lesion node 'wcc'"):
        ConditionalHVAE(preset, CHESTXRAY8_GRAPH)


def test_a_checkpoint_preset_from_before_the_branch_loads_without_it():
    stored = get_preset("cpu-64").to_dict()
    del stored["lesion_blocks"], stored["lesion_node"]
    assert Preset.from_dict(stored).lesion_blocks == 0


def test_when_the_trunk_runs_at_half_size_the_branch_draws_a_smooth_map_upsampled_from_it():
    preset = get_preset("cpu-64")
    torch.manual_seed(0)
    hvae = ConditionalHVAE(preset, MIMIC_GRAPH).eval()
    assert hvae.patchify
    with torch.no_grad():
        for parameter in hvae.lesion_output.parameters():
            parameter.normal_(0, 0.3)
    drawn = {}
    hvae.lesion_output.register_forward_hook(lambda module, args, output: drawn.update(map=output))
    x, pa = batch([1, 2, 0])
    x = torch.nn.functional.interpolate(x, size=64)
    with torch.no_grad():
        decoded = hvae.decode(pa, hvae.encode(x))
    # one value per 2x2 patch, spread bilinearly: no sub-pixel freedom to paint a checkerboard with
    assert drawn["map"].shape[-1] == 32
    rectified = drawn["map"].clamp(min=0) if preset.lesion_support else drawn["map"]
    smooth = torch.nn.functional.interpolate(rectified, size=64, mode="bilinear", align_corners=False)
    present = (pa["disease"] != 0).float()[:, None, None, None]
    assert torch.allclose(decoded["lesion"], smooth * present)
    assert decoded["lesion"][:2].abs().mean() > 1e-3

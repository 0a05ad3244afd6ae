"""The lesion latent z_L: the lesion's own exogenous noise, gated by the disease, and the support gate of its map."""

import pytest
import torch

from generator.causal.counterfactual import CounterfactualModel
from generator.causal.hvae import Abduction
from generator.data.graph import MIMIC_GRAPH
from generator.training.presets import get_preset
from tests.generator.test_causal_lesion_branch import batch

pytestmark = [pytest.mark.ml, pytest.mark.usefixtures("one_thread")]


def latent_model(support=True, code=4, channels=0, **fields):
    """A test-32 model with a lesion branch, a 4-dim lesion code per disease (or `code` dimensions and a spatial code
    of `channels` per grid position) and (by default) a rectified map; the branch's output layer, the posterior
    heads and the spatial code's entry are randomised, as after training, so the code shapes what the branch draws.
    `fields` set other preset fields."""
    preset = get_preset("test-32")
    preset.lesion_blocks = 1
    preset.lesion_latent = code
    preset.lesion_latent_map = channels
    preset.lesion_support = support
    for name, value in fields.items():
        setattr(preset, name, value)
    torch.manual_seed(0)
    model = CounterfactualModel(MIMIC_GRAPH, preset)
    model.parent_model.fit_standardisation(batch([0, 1, 2, 0, 1, 2])[1])
    with torch.no_grad():
        model.hvae.lesion_output.weight.normal_(0, 0.3)
        model.hvae.lesion_output.bias.fill_(-0.05)  # part of the map below zero: there the gate must cut it off
        if code:
            model.hvae.lesion_posterior[-1].weight.normal_(0, 0.3)
        if channels:
            model.hvae.lesion_map_posterior[-1].weight.normal_(0, 0.3)
            model.hvae.lesion_map_seed.weight.normal_(0, 0.3)  # the spatial code enters silent until trained
    return model.eval()


# the vector code, and a spatial code alone
CODES = pytest.mark.parametrize("code, channels", [(4, 0), (0, 2)], ids=["vector", "spatial"])


@CODES
def test_a_healthy_images_lesion_posterior_is_the_prior_and_costs_no_kl(code, channels):
    hvae = latent_model(code=code, channels=channels).hvae
    x, pa = batch([0, 0, 1, 2])
    with torch.no_grad():
        mean, logstd = hvae.lesion_posterior_stats(hvae.encode(x), pa)
        kl = hvae.elbo(x, pa)["lesion_kl"]
    assert torch.equal(mean[:2], torch.zeros_like(mean[:2]))
    assert torch.equal(logstd[:2], torch.zeros_like(logstd[:2]))
    assert torch.equal(kl[:2], torch.zeros(2))
    # a diseased image's code is read from the image, so it moves away from the prior and pays for it
    assert mean[2:].abs().sum() > 0
    assert (kl[2:] > 0).all()


@CODES
def test_the_likelihood_of_a_healthy_image_does_not_depend_on_the_lesion_code(code, channels):
    hvae = latent_model(code=code, channels=channels).hvae
    x, pa = batch([0, 0, 0])
    with torch.no_grad():
        latents = hvae.abduct(x, pa).latents
        shape = (3, 2, hvae.lesion_latent_dim)
        first = hvae.decode(pa, latents=latents, lesion_latents=torch.randn(shape))["mean"]
        second = hvae.decode(pa, latents=latents, lesion_latents=torch.randn(shape))["mean"]
    assert torch.equal(first, second)


@CODES
def test_an_addition_with_two_seeds_draws_two_different_lesions_and_a_seed_reproduces_its_lesion(code, channels):
    model = latent_model(code=code, channels=channels)
    x, pa = batch([0, 0, 0])
    with torch.no_grad():

        def add(seed):
            return model.counterfactual(x, pa, {"disease": 1}, generator=torch.Generator().manual_seed(seed)).x_cf

        first, second, again = add(1), add(2), add(1)
    assert (first - x).abs().mean() > 1e-3
    assert (first - second).abs().mean() > 1e-3
    assert torch.equal(first, again)


def test_several_samples_of_an_addition_give_a_per_pixel_uncertainty_inside_the_lesion_only():
    model = latent_model()
    x, pa = batch([0, 0])
    with torch.no_grad():
        cf = model.counterfactual(x, pa, {"disease": 2}, samples=4, generator=torch.Generator().manual_seed(0))
    assert cf.uncertainty.max() > 1e-3
    # where the draws agree on "no lesion" nothing changed, and no uncertainty is reported
    untouched = cf.effect == 0
    assert untouched.any()
    assert torch.equal(cf.uncertainty[untouched], torch.zeros_like(cf.uncertainty[untouched]))


def remove_and_add_back(hvae, seed=3):
    """Diseased test images (halved, away from the clamp at -1 and 1, so subtracting and adding back is lossless),
    their removal do(healthy), and the removal's lesion added back with the code inferred from the diseased image."""
    x, pa = batch([1, 2, 1, 2], seed=seed)
    x = x * 0.5
    healthy = dict(pa, disease=torch.zeros(4, dtype=torch.long))
    with torch.no_grad():
        seen = hvae.abduct(x, pa)
        removed = hvae.predict(seen, healthy)
        # the removed image's own noise: the anatomy's latents and pixel noise are untouched by the removal, and the
        # lesion code is the one inferred from the diseased image
        decoded = hvae.decode(healthy, latents=seen.latents, lesion_latents=seen.lesion_latents)
        without = Abduction(
            latents=seen.latents,
            pixel_noise=(removed - decoded["mean"]) * torch.exp(-decoded["log_sigma"]),
            lesion_latents=seen.lesion_latents,
            x=removed,
            mean=decoded["mean"],
            log_sigma=decoded["log_sigma"],
        )
        restored = hvae.predict(without, pa)
    return x, removed, restored


def test_removing_a_lesion_and_adding_it_back_with_the_inferred_code_returns_the_input():
    x, removed, restored = remove_and_add_back(latent_model().hvae)
    assert (removed - x).abs().mean() > 1e-3
    assert torch.allclose(restored, x, atol=1e-6)


def assert_unchanged_outside_the_support(model):
    """Every intervention on the disease leaves each pixel outside the factual and counterfactual lesions exactly as
    it was, and an addition changes some pixel inside."""
    x, pa = batch([0, 1, 2, 1, 0, 2], seed=5)
    with torch.no_grad():
        for target in (0, 1, 2):
            generator = torch.Generator().manual_seed(target)
            abducted = model.abduct(x, pa, generator=generator)
            pa_cf = model.intervene(abducted, {"disease": target})
            _, lesion_cf = model.hvae.predict(abducted.image_noise[0], pa_cf, with_lesion=True)
            _, lesion = model.hvae.predict(abducted.image_noise[0], pa, with_lesion=True)
            x_cf = model.predict(abducted, pa_cf).x_cf
            outside = (lesion == 0) & (lesion_cf == 0)
            assert outside.any() and (~outside).any()
            assert torch.equal(x_cf[outside], x[outside])
            inside_changed = (x_cf != x) & ~outside
            if target in (1, 2):
                assert inside_changed.any()


def test_outside_the_support_of_the_lesion_map_a_counterfactual_equals_the_input_exactly():
    assert_unchanged_outside_the_support(latent_model())


def test_the_rectified_map_only_adds_opacity():
    model = latent_model()
    x, pa = batch([1, 2, 1, 2])
    with torch.no_grad():
        lesion = model.hvae.predict(model.hvae.abduct(x, pa), pa, with_lesion=True)[1]
    assert (lesion >= 0).all() and (lesion > 0).any() and (lesion == 0).any()


def test_the_lesion_code_is_left_out_of_the_latent_independence_adversary():
    hvae = latent_model().hvae
    x, pa = batch([1, 2])
    out = hvae.elbo(x, pa)
    # the adversary reads `latents` (the anatomy's), which hold no lesion code
    assert all(z.dim() == 4 for z in out["latents"])
    assert out["abduction"].lesion_latents.shape == (2, 2, 4)


def test_free_bits_raise_the_training_objective_only_for_a_lesion_code_that_carries_too_little():
    model = latent_model()
    hvae = model.hvae
    x, pa = batch([0, 1, 2])
    hvae.lesion_free_bits = 1e6
    out = hvae.elbo(x, pa, generator=torch.Generator().manual_seed(0))
    gap = (out["objective"] - out["free_energy"]).detach()
    assert gap[0] == 0  # healthy: no lesion code to use
    assert (gap[1:] > 0).all()


def test_a_lesion_kl_weight_scales_only_the_lesion_codes_kl_in_the_objective_and_never_the_free_energy():
    model = latent_model()
    hvae = model.hvae
    x, pa = batch([0, 1, 2])
    hvae.lesion_free_bits = 0.0
    full = hvae.elbo(x, pa, generator=torch.Generator().manual_seed(0))
    hvae.lesion_kl_weight = 0.25
    light = hvae.elbo(x, pa, generator=torch.Generator().manual_seed(0))
    assert torch.equal(light["free_energy"], full["free_energy"])
    saved = (full["objective"] - light["objective"]).detach()
    dims = x[0].numel()
    assert saved[0] == 0  # healthy: no lesion code, nothing to weigh
    assert (saved[1:] > 0).all()
    assert torch.allclose(saved, 0.75 * full["lesion_kl"].detach() / dims, atol=1e-6)
    # with free bits the floor is weighed with the KL: a code under the floor costs weight x floor
    hvae.lesion_free_bits = 1e6
    floored = hvae.elbo(x, pa, generator=torch.Generator().manual_seed(0))
    expected = floored["free_energy"] + 0.25 * (1e6 - floored["lesion_kl"]) / dims * (pa["disease"] != 0)
    expected = expected - 0.75 * floored["lesion_kl"] / dims * (pa["disease"] != 0)
    assert torch.allclose(floored["objective"].detach(), expected.detach(), rtol=1e-5)


def test_the_lesion_kl_weight_must_be_positive():
    import dataclasses

    with pytest.raises(ValueError, match="lesion_kl_weight"):
        dataclasses.replace(get_preset("test-32"), lesion_kl_weight=0.0)


def test_do_disease_reruns_only_the_branch_and_matches_the_full_decoder():
    model = latent_model()
    hvae = model.hvae
    x, pa = batch([1, 2, 0, 1])
    healthy = dict(pa, disease=torch.zeros(4, dtype=torch.long))
    with torch.no_grad():
        seen = hvae.abduct(x, pa, generator=torch.Generator().manual_seed(0))
        assert hvae.trunk_unchanged(seen, healthy)
        fast = hvae.predict(seen, healthy)
        full = hvae.predict(Abduction(**{**vars(seen), "features": None}), healthy)
        older = dict(pa, age=pa["age"] + 10)
        assert not hvae.trunk_unchanged(seen, older)
    assert torch.allclose(fast, full, atol=1e-6)


def test_the_rectifier_outputs_exact_zeros_but_still_passes_a_gradient_there():
    from generator.causal.hvae import RECTIFIER_LEAK, rectify

    m = torch.tensor([-0.5, 0.0, 0.3, -0.2], requires_grad=True)
    out = rectify(m)
    assert torch.equal(out.detach(), torch.tensor([0.0, 0.0, 0.3, 0.0]))
    # the loss asks for more opacity at the first three pixels and for less at the last
    (-(out[:3].sum()) + out[3]).backward()
    # a map driven below zero can still come back when the likelihood asks for a lesion, and is never pushed further
    # down where its output cannot change
    assert torch.allclose(m.grad, torch.tensor([-RECTIFIER_LEAK, -RECTIFIER_LEAK, -1.0, 0.0]))


def test_the_sparsity_term_adds_the_mean_lesion_map_to_the_objective_of_diseased_images_only():
    model = latent_model()
    hvae = model.hvae
    x, pa = batch([0, 1, 2])
    hvae.lesion_sparsity = 2.0
    out = hvae.elbo(x, pa, generator=torch.Generator().manual_seed(0))
    gap = (out["objective"] - out["free_energy"]).detach()
    expected = 2.0 * out["lesion"].detach().abs().flatten(1).mean(1)
    assert gap[0] == 0 and (gap[1:] > 0).all()
    assert torch.allclose(gap, expected, atol=1e-6)


def test_cpu64_holds_a_consolidations_texture_in_a_spatial_code_on_the_phantoms_texture_grid():
    from generator.causal.hvae import ConditionalHVAE
    from generator.data.phantom import PNEUMONIA_TEXTURE_GRID

    preset = get_preset("cpu-64")
    hvae = ConditionalHVAE(preset, MIMIC_GRAPH)
    assert preset.lesion_latent > 0 and preset.lesion_latent_map > 0
    # one N(0, I) value per channel and position of a 16 px grid, as fine as the texture the phantom draws
    assert hvae.lesion_map_size == PNEUMONIA_TEXTURE_GRID
    assert hvae.lesion_latent_dim == preset.lesion_latent + preset.lesion_latent_map * PNEUMONIA_TEXTURE_GRID**2


def test_a_fresh_spatial_code_enters_the_branch_silent_and_still_learns():
    preset = get_preset("test-32")
    preset.lesion_blocks, preset.lesion_latent, preset.lesion_latent_map, preset.lesion_support = 1, 0, 2, True
    torch.manual_seed(0)
    model = CounterfactualModel(MIMIC_GRAPH, preset)
    hvae = model.hvae
    with torch.no_grad():
        hvae.lesion_output.weight.normal_(0, 0.3)
    x, pa = batch([1, 2, 1, 2])
    with torch.no_grad():
        decoded = hvae.decode(pa, hvae.encode(x), sample=False)
        first = hvae.prior_lesion_latents(4, x.device, torch.Generator().manual_seed(1))
        second = hvae.prior_lesion_latents(4, x.device, torch.Generator().manual_seed(2))
        one = hvae.lesion(decoded["features"], pa, first, decoded["anatomy"])
        two = hvae.lesion(decoded["features"], pa, second, decoded["anatomy"])
    assert torch.equal(one, two)  # at the start the code changes nothing the branch draws
    out = hvae.elbo(x, pa)
    out["objective"].mean().backward()
    assert hvae.lesion_map_seed.weight.grad.abs().sum() > 0  # but its entry is trained from the first step

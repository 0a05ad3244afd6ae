"""The spatial lesion code (`lesion_latent_map`) and a lesion branch detached from the trunk (`lesion_detached`)."""

import pytest
import torch

from generator.causal.counterfactual import CounterfactualModel
from generator.data.graph import MIMIC_GRAPH
from generator.training.presets import get_preset
from tests.test_causal_lesion_branch import batch

pytestmark = [pytest.mark.ml, pytest.mark.usefixtures("one_thread")]


def map_model(code=0, channels=2, detached=False, reads="features"):
    """A test-32 model whose lesion code is (by default only) a spatial map of `channels` values per grid position,
    with the branch's output and posterior heads randomised as after training."""
    preset = get_preset("test-32")
    preset.lesion_blocks = 1
    preset.lesion_latent = code
    preset.lesion_latent_map = channels
    preset.lesion_support = True
    preset.lesion_detached = detached
    preset.lesion_reads = reads
    torch.manual_seed(0)
    model = CounterfactualModel(MIMIC_GRAPH, preset)
    model.parent_model.fit_standardisation(batch([0, 1, 2, 0, 1, 2])[1])
    with torch.no_grad():
        model.hvae.lesion_output.weight.normal_(0, 0.3)
        model.hvae.lesion_output.bias.fill_(-0.05)
        if channels:
            model.hvae.lesion_map_posterior[-1].weight.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("code", [0, 3])
def test_the_lesion_code_is_the_vector_code_followed_by_one_value_per_channel_and_grid_position(code):
    hvae = map_model(code=code).hvae
    size = hvae.lesion_map_size
    assert 1 < size <= 16
    assert hvae.lesion_latent_dim == code + 2 * size * size
    x, pa = batch([0, 1, 2])
    with torch.no_grad():
        seen = hvae.abduct(x, pa)
    assert seen.lesion_latents.shape == (3, 2, code + 2 * size * size)
    assert hvae.prior_lesion_latents(3, "cpu").shape == seen.lesion_latents.shape


def test_a_healthy_images_spatial_code_is_the_prior_and_a_diseased_images_is_read_from_the_image():
    hvae = map_model().hvae
    x, pa = batch([0, 0, 1, 2])
    with torch.no_grad():
        mean, logstd = hvae.lesion_posterior_stats(hvae.encode(x), pa)
        kl = hvae.elbo(x, pa)["lesion_kl"]
    assert torch.equal(mean[:2], torch.zeros_like(mean[:2]))
    assert torch.equal(logstd[:2], torch.zeros_like(logstd[:2]))
    assert torch.equal(kl[:2], torch.zeros(2))
    assert mean[2:].abs().sum() > 0 and (kl[2:] > 0).all()


def test_a_healthy_images_likelihood_ignores_the_spatial_code():
    hvae = map_model().hvae
    x, pa = batch([0, 0, 0])
    with torch.no_grad():
        latents = hvae.abduct(x, pa).latents
        shape = (3, 2, hvae.lesion_latent_dim)
        first = hvae.decode(pa, latents=latents, lesion_latents=torch.randn(shape))["mean"]
        second = hvae.decode(pa, latents=latents, lesion_latents=torch.randn(shape))["mean"]
    assert torch.equal(first, second)


def test_the_spatial_code_places_the_lesion_two_seeds_add_two_different_lesions():
    model = map_model()
    x, pa = batch([0, 0, 0])
    with torch.no_grad():

        def add(seed):
            return model.counterfactual(x, pa, {"disease": 1}, generator=torch.Generator().manual_seed(seed)).x_cf

        first, second, again = add(1), add(2), add(1)
    assert (first - x).abs().mean() > 1e-3
    assert (first - second).abs().mean() > 1e-3
    assert torch.equal(first, again)


def trunk_and_branch_gradients(detached, reads="features"):
    hvae = map_model(code=3, detached=detached, reads=reads).hvae.train()
    x, pa = batch([1, 2, 1, 2])
    decoded = hvae.decode(pa, hvae.encode(x), generator=torch.Generator().manual_seed(0))
    decoded["lesion"].pow(2).sum().backward()
    trunk = [p.grad for p in hvae.decoder_blocks.parameters()]
    branch = [p.grad for p in hvae.lesion_blocks.parameters()]
    trunk_norm = sum(float(g.abs().sum()) for g in trunk if g is not None)
    branch_norm = sum(float(g.abs().sum()) for g in branch if g is not None)
    return trunk_norm, branch_norm


def test_a_detached_branch_learns_without_teaching_the_trunk_to_hint_at_the_lesion():
    trunk, branch = trunk_and_branch_gradients(detached=True)
    assert trunk == 0.0 and branch > 0
    # the same loss reaches the trunk when the branch is attached: the test can tell the two apart
    trunk, branch = trunk_and_branch_gradients(detached=False)
    assert trunk > 0 and branch > 0


def test_a_branch_that_reads_the_lesion_free_image_sends_no_gradient_into_the_trunk_and_ignores_its_features():
    trunk, branch = trunk_and_branch_gradients(detached=False, reads="anatomy")
    assert trunk == 0.0 and branch > 0
    model = map_model(code=3, reads="anatomy")
    hvae = model.hvae
    x, pa = batch([1, 2, 0])
    with torch.no_grad():
        seen = hvae.abduct(x, pa)
        first = hvae.lesion(seen.features, pa, seen.lesion_latents, seen.anatomy)
        other = hvae.lesion(torch.randn_like(seen.features), pa, seen.lesion_latents, seen.anatomy)
        assert torch.equal(first, other) and first[:2].abs().sum() > 0
        # an addition still draws a different lesion for each seed
        healthy = batch([0, 0])

        def add(seed):
            cf = model.counterfactual(*healthy, {"disease": 2}, generator=torch.Generator().manual_seed(seed))
            return cf.x_cf

        assert (add(1) - add(2)).abs().mean() > 1e-3


def test_a_preset_refuses_an_unknown_branch_input():
    preset = get_preset("test-32").to_dict()
    with pytest.raises(ValueError, match="lesion_reads"):
        type(get_preset("test-32")).from_dict({**preset, "lesion_reads": "pixels"})

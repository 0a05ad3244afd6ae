"""The spatial lesion code (`lesion_latent_map`) and a lesion branch detached from the trunk (`lesion_detached`)."""

import pytest
import torch

from generator.training.presets import get_preset
from tests.generator.test_causal_lesion_branch import batch
from tests.generator.test_causal_lesion_latent import latent_model

pytestmark = [pytest.mark.ml, pytest.mark.usefixtures("one_thread")]


def map_model(code=0, channels=2, detached=False, reads="features"):
    """A test-32 model whose lesion code is (by default only) a spatial map of `channels` values per grid position."""
    return latent_model(code=code, channels=channels, lesion_detached=detached, lesion_reads=reads)


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

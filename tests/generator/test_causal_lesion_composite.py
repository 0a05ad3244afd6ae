"""The composite lesion (preset `lesion_blend="composite"`): an optical depth and a density that replace the anatomy."""

import pytest
import torch

from generator.training.presets import Preset, get_preset
from tests.generator.test_causal_lesion_branch import batch
from tests.generator.test_causal_lesion_latent import (
    assert_unchanged_outside_the_support,
    latent_model,
    remove_and_add_back,
)

pytestmark = [pytest.mark.ml, pytest.mark.usefixtures("one_thread")]


def composite_model(randomise=True, **fields):
    model = latent_model(lesion_blend="composite", **fields)
    if randomise:
        with torch.no_grad():
            model.hvae.lesion_output.weight.normal_(0, 0.3)
            model.hvae.lesion_output.bias.copy_(torch.tensor([-0.05, 0.3]))  # part of the depth below zero
    return model


def test_composite_needs_the_support_gate_and_an_unknown_blend_is_refused():
    fields = {k: v for k, v in get_preset("test-32").to_dict().items() if k != "name"}
    with pytest.raises(ValueError, match="composite' needs lesion_support"):
        Preset(name="bad", **dict(fields, lesion_blocks=1, lesion_blend="composite", lesion_support=False))
    with pytest.raises(ValueError, match="lesion_blend must be"):
        Preset(name="bad", **dict(fields, lesion_blend="multiply"))


def test_a_fresh_composite_branch_draws_nothing():
    model = composite_model(randomise=False)
    with torch.no_grad():
        model.hvae.lesion_output.weight.zero_()
        model.hvae.lesion_output.bias.zero_()
    x, pa = batch([0, 1, 2, 1])
    with torch.no_grad():
        for target in (0, 1, 2):
            assert torch.equal(model.counterfactual(x, pa, {"disease": target}).x_cf, x)


def test_the_mean_is_the_anatomy_blended_towards_the_density_by_one_minus_exp_of_the_depth():
    hvae = composite_model().hvae
    x, pa = batch([0, 1, 2, 1, 2], seed=1)
    with torch.no_grad():
        out = hvae.decode(pa, hvae.encode(x), sample=False)
        captured = {}
        handle = hvae.lesion_output.register_forward_hook(lambda module, args, output: captured.update(raw=output))
        hvae.lesion(out["features"], pa, out["lesion_latents"], out["anatomy"])
        handle.remove()
    raw = torch.nn.functional.interpolate(captured["raw"], size=x.shape[-2:], mode="bilinear", align_corners=False)
    depth = torch.nn.functional.interpolate(
        captured["raw"][:, :1].clamp(min=0), size=x.shape[-2:], mode="bilinear", align_corners=False
    )
    present = (pa["disease"] != 0).float()[:, None, None, None]
    alpha = 1 - torch.exp(-depth * present)
    expected = out["anatomy"] + alpha * (torch.tanh(raw[:, 1:2]) - out["anatomy"])
    assert torch.allclose(out["mean"], expected, atol=1e-5)
    # a healthy image's mean is the anatomy itself, bit for bit
    assert torch.equal(out["mean"][0], out["anatomy"][0])
    # the change can darken as well as brighten: what lies under the lesion is replaced, not added to
    change = out["mean"] - out["anatomy"]
    assert (change > 1e-3).any() and (change < -1e-3).any()


def test_outside_the_depths_support_a_composite_counterfactual_equals_the_input_exactly():
    assert_unchanged_outside_the_support(composite_model())


def test_a_composite_removal_followed_by_re_adding_with_the_inferred_code_returns_the_input():
    hvae = composite_model(lesion_scale=True).hvae
    with torch.no_grad():
        hvae.lesion_scale_output.weight.normal_(0, 0.3)
    x, removed, restored = remove_and_add_back(hvae)
    assert (removed - x).abs().mean() > 1e-3
    assert torch.allclose(restored, x, atol=1e-5)


def test_the_elbo_stages_prior_additions_send_no_gradient_into_the_trunk_through_the_anatomy():
    hvae = composite_model().hvae
    x, pa = batch([0, 0, 1, 2])
    out = hvae.elbo(x, pa)
    abduction = out["abduction"]
    added = dict(pa, disease=torch.tensor([1, 2, 1, 2]))
    codes = hvae.prior_lesion_latents(4, x.device)
    # as the pipeline's prior additions call the branch: features and anatomy detached
    maps = hvae.lesion(abduction.features.detach(), added, codes, abduction.anatomy.detach())
    maps.abs().sum().backward()
    trunk = [p for name, p in hvae.named_parameters() if name.startswith(("decoder_", "output", "top_state"))]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in trunk)
    assert hvae.lesion_output.weight.grad.abs().sum() > 0

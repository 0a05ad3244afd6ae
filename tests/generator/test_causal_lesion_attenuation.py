"""The lesion's attenuation of the anatomy's fine structure (preset `lesion_attenuates`): exact zero outside the
support, the hidden detail inside it, nothing new painted."""

import dataclasses

import pytest
import torch

from generator.causal.hvae import anatomy_detail
from generator.training.presets import get_preset
from tests.generator.test_causal_lesion_branch import batch
from tests.generator.test_causal_lesion_latent import assert_unchanged_outside_the_support, latent_model


def attenuating_model(logit=None):
    """A test-32 lesion-code model with the attenuation on; its attenuation head is randomised as after training, or
    set to the constant `logit` (before the start offset)."""
    model = latent_model(channels=2, lesion_attenuates=True)
    head = model.hvae.lesion_attenuation_output
    with torch.no_grad():
        if logit is None:
            head.weight.normal_(0, 0.5)
            head.bias.fill_(2.0)
        else:
            head.weight.zero_()
            head.bias.fill_(float(logit))
    return model


def test_the_anatomy_detail_is_zero_for_a_flat_image_and_keeps_a_fine_pattern():
    flat = torch.full((1, 1, 16, 16), 0.3)
    assert anatomy_detail(flat).abs().max() < 1e-6
    stripes = torch.zeros(1, 1, 16, 16)
    stripes[..., ::2, :] = 1.0  # a two-pixel period, finer than the blur
    detail = anatomy_detail(stripes)
    assert detail[..., 4:12, :].abs().mean() > 0.4
    assert torch.allclose(detail.mean(), torch.zeros(()), atol=0.05)


def test_with_attenuation_a_counterfactual_still_equals_the_input_outside_the_support():
    assert_unchanged_outside_the_support(attenuating_model())


def test_on_the_support_the_lesion_takes_the_attenuated_anatomy_detail_off_and_nothing_else():
    model = attenuating_model(logit=40.0)  # attenuation 1 wherever the map is non-zero
    hvae = model.hvae
    x, pa = batch([1, 2, 1, 2], seed=3)
    with torch.no_grad():
        decoded = hvae.decode(pa, hvae.encode(x), sample=False)
        hvae.lesion_attenuates = False
        plain = hvae.decode(pa, hvae.encode(x), sample=False)
    hvae.lesion_attenuates = True
    support = (plain["lesion"] > 0).float()
    assert 0 < support.mean() < 1
    expected = plain["lesion"] - support * anatomy_detail(decoded["anatomy"])
    assert torch.allclose(decoded["lesion"], expected, atol=1e-6)
    # a removal gives the hidden detail back: the change inside the support holds the anatomy's fine structure
    healthy = dict(pa, disease=torch.zeros(4, dtype=torch.long))
    with torch.no_grad():
        seen = hvae.abduct(x, pa)
        removed = hvae.predict(seen, healthy)
    # what the removal did beyond taking the map off (where the result is not clamped to the pixel range)
    unclamped = (removed.abs() < 1).float()
    restored = (removed - x + plain["lesion"]) * support * unclamped
    assert unclamped.mean() > 0.5
    assert torch.allclose(restored, support * unclamped * anatomy_detail(decoded["anatomy"]), atol=1e-5)


def test_a_fresh_attenuation_head_starts_almost_closed():
    model = latent_model(channels=2, lesion_attenuates=True)
    hvae = model.hvae
    assert all((p == 0).all() for p in hvae.lesion_attenuation_output.parameters())
    x, pa = batch([1, 2], seed=1)
    with torch.no_grad():
        decoded = hvae.decode(pa, hvae.encode(x), sample=False)
        hvae.lesion_attenuates = False
        plain = hvae.decode(pa, hvae.encode(x), sample=False)
    support = (plain["lesion"] > 0).float()
    difference = (plain["lesion"] - decoded["lesion"]).abs()
    bound = torch.sigmoid(torch.tensor(-3.0)) * anatomy_detail(decoded["anatomy"]).abs() * support
    assert (difference <= bound + 1e-6).all()


@pytest.mark.parametrize("changes", [{"lesion_support": False}, {"lesion_blend": "composite"}])
def test_attenuation_needs_an_additive_rectified_map(changes):
    base = dataclasses.replace(get_preset("test-32"), lesion_blocks=1, lesion_support=True)
    with pytest.raises(ValueError, match="lesion_attenuates"):
        dataclasses.replace(base, lesion_attenuates=True, **changes)

"""The lesion's own pixel scale (preset `lesion_scale`): a log-sigma offset drawn by the branch on its support."""

import pytest
import torch

from generator.causal.hvae import LOG_SIGMA_MAX, LOG_SIGMA_MIN, Abduction
from generator.training.presets import Preset, get_preset
from tests.generator.test_causal_lesion_branch import batch
from tests.generator.test_causal_lesion_latent import latent_model, remove_and_add_back

pytestmark = [pytest.mark.ml, pytest.mark.usefixtures("one_thread")]


def scale_model(randomise=True):
    model = latent_model(lesion_scale=True)
    if randomise:
        with torch.no_grad():
            model.hvae.lesion_scale_output.weight.normal_(0, 0.3)
            model.hvae.lesion_scale_output.bias.fill_(
                -0.4
            )  # below the trunk's scale, clear of the clamp at log-sigma 0
    return model


def test_the_scale_needs_the_support_gate():
    fields = {k: v for k, v in get_preset("test-32").to_dict().items() if k != "name"}
    with pytest.raises(ValueError, match="lesion_scale needs lesion_support"):
        Preset(name="bad", **dict(fields, lesion_blocks=1, lesion_scale=True, lesion_support=False))


def test_a_fresh_scale_head_leaves_the_pixel_distribution_as_the_trunk_has_it():
    x, pa = batch([0, 1, 2, 1])
    plain, scaled = latent_model(), scale_model(randomise=False)
    scaled.hvae.load_state_dict(plain.hvae.state_dict(), strict=False)
    with torch.no_grad():
        a = plain.hvae.decode(pa, plain.hvae.encode(x), sample=False)
        b = scaled.hvae.decode(pa, scaled.hvae.encode(x), sample=False)
    assert torch.equal(a["log_sigma"], b["log_sigma"])
    assert torch.equal(a["mean"], b["mean"])


def test_the_offset_lives_on_the_lesions_support_only_and_is_zero_for_a_healthy_image():
    hvae = scale_model().hvae
    x, pa = batch([0, 0, 1, 2, 1, 2], seed=2)
    with torch.no_grad():
        out = hvae.decode(pa, hvae.encode(x), sample=False)
    _, offset = hvae.lesion_outputs(out["features"], pa, out["lesion_latents"], out["anatomy"])
    support = out["lesion"] > 0
    assert support[2:].any() and (~support[2:]).any()
    assert torch.equal(
        out["log_sigma"][~support], out["anatomy_log_sigma"].clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)[~support]
    )
    assert torch.equal(offset[:2], torch.zeros_like(offset[:2]))
    assert (offset[support] != 0).float().mean() > 0.9  # a random head's output is rarely exactly zero


def test_a_removal_rescales_the_lesions_residual_and_keeps_every_pixel_outside_it():
    hvae = scale_model().hvae
    x, pa = batch([1, 2, 1, 2], seed=4)
    x = x * 0.5  # away from the clamp
    healthy = dict(pa, disease=torch.zeros(4, dtype=torch.long))
    with torch.no_grad():
        seen = hvae.abduct(x, pa)
        removed = hvae.predict(seen, healthy)
        factual = hvae.decode(pa, latents=seen.latents, lesion_latents=seen.lesion_latents)
        after = hvae.decode(healthy, latents=seen.latents, lesion_latents=seen.lesion_latents)
    support = factual["lesion"] > 0
    assert torch.equal(removed[~support], x[~support])
    support = support & (removed.abs() < 1)  # the counterfactual is clamped to the image range
    # inside, the removed image's residual is the factual one scaled by sigma_healthy / sigma_lesion
    expected = (x - factual["mean"]) * torch.exp(after["log_sigma"] - factual["log_sigma"])
    assert torch.allclose((removed - after["mean"])[support], expected[support], atol=1e-5)
    assert not torch.allclose((removed - after["mean"])[support], (x - factual["mean"])[support], atol=1e-4)


def test_do_disease_reruns_only_the_branch_and_matches_the_full_decoder_with_the_scale():
    hvae = scale_model().hvae
    x, pa = batch([0, 1, 2, 1], seed=6)
    with torch.no_grad():
        seen = hvae.abduct(x, pa)
        for target in (0, 1, 2):
            pa_cf = dict(pa, disease=torch.full((4,), target, dtype=torch.long))
            fast = hvae.predict(seen, pa_cf)
            slow = hvae.predict(
                Abduction(
                    latents=seen.latents,
                    pixel_noise=seen.pixel_noise,
                    lesion_latents=seen.lesion_latents,
                    x=seen.x,
                    mean=seen.mean,
                    log_sigma=seen.log_sigma,
                ),
                pa_cf,
            )
            assert torch.allclose(fast, slow, atol=1e-5)


def test_removing_and_adding_back_the_lesion_with_its_scale_returns_the_input():
    x, removed, restored = remove_and_add_back(scale_model().hvae)
    assert (removed - x).abs().mean() > 1e-3
    assert torch.allclose(restored, x, atol=1e-5)

"""The anatomy adversary: with a lesion branch, the trunk's image must not tell the disease, so the branch draws it."""

import math

import pytest
import torch

from generator.causal.hvae import ConditionalHVAE
from generator.data.graph import MIMIC_GRAPH
from generator.training.checkpoint import load_checkpoint
from generator.training.counterfactual_stage import AnatomyCritic
from generator.training.critics import AnatomyAdversary, marginal_confusion
from generator.training.pipeline import RunConfig, train
from generator.training.presets import get_preset
from tests.generator.helpers import random_parents, tiny_preset
from tests.generator.test_training_resume import STEPS, interrupt_at, synthetic_split

pytestmark = [pytest.mark.ml, pytest.mark.usefixtures("one_thread")]


def lesion_preset(weight=1.0, **changes):
    return tiny_preset(lesion_blocks=1, anatomy_weight=weight, **changes)


def parents(disease, seed=0):
    return random_parents(len(disease), torch.Generator().manual_seed(seed), disease=disease)


def blob_images(disease, seed=0, size=32):
    """Noise images with a bright square in the lower left for effusion and in the upper right for pneumonia."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(len(disease), 1, size, size, generator=generator) * 0.4 - 0.6
    for i, d in enumerate(disease):
        if d == 1:
            x[i, :, 22:30, 2:10] += 1.0
        elif d == 2:
            x[i, :, 2:10, 22:30] += 1.0
    return x


def test_the_pixel_mean_is_the_trunk_image_plus_the_branch_map_and_the_trunk_image_ignores_the_disease():
    torch.manual_seed(0)
    hvae = ConditionalHVAE(lesion_preset(), MIMIC_GRAPH).eval()
    with torch.no_grad():
        for parameter in hvae.lesion_output.parameters():
            parameter.normal_(0, 0.3)
        pa = parents([0, 1, 2, 1])
        latents = hvae.abduct(blob_images([0, 1, 2, 1]), pa).latents
        sick = hvae.decode(pa, latents=latents)
        healthy = hvae.decode({**pa, "disease": torch.zeros(4, dtype=torch.int64)}, latents=latents)
    assert torch.allclose(sick["mean"], sick["anatomy"] + sick["lesion"])
    assert torch.equal(sick["anatomy"], healthy["anatomy"])
    assert sick["lesion"][1:].abs().max() > 1e-3 and sick["lesion"][0].abs().max() == 0


def test_confusion_is_zero_for_a_guess_of_the_marginal_and_grows_when_the_adversary_reads_the_class():
    labels = torch.tensor([0, 0, 1, 2])
    marginal = torch.tensor([0.5, 0.25, 0.25])
    guess = marginal.log().expand(4, 3)
    assert marginal_confusion(guess, labels, 3).abs() < 1e-6
    reading = torch.nn.functional.one_hot(labels, 3).float() * 10
    assert marginal_confusion(reading, labels, 3) > 1.0


def test_an_adversary_learns_to_read_a_drawn_lesion_from_an_image():
    torch.manual_seed(0)
    adversary = AnatomyAdversary(lesion_preset(), MIMIC_GRAPH)
    optimizer = torch.optim.Adam(adversary.parameters(), lr=3e-3)
    disease = [0, 1, 2] * 8
    x, pa = blob_images(disease), parents(disease)
    before = adversary.loss(x, pa).item()
    for _ in range(60):
        loss = adversary.loss(x, pa)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert before > 0.8 * math.log(3)
    assert adversary.loss(x, pa).item() < 0.2
    # and the image that gives the class away is now penalised
    assert adversary.confusion(x, pa).item() > 0.8


def test_the_anatomy_penalty_reaches_the_trunk_and_never_the_lesion_branch():
    torch.manual_seed(0)
    preset = lesion_preset()
    hvae = ConditionalHVAE(preset, MIMIC_GRAPH)
    with torch.no_grad():
        for parameter in hvae.lesion_output.parameters():
            parameter.normal_(0, 0.3)
    critic = AnatomyCritic(preset, MIMIC_GRAPH, "cpu")
    disease = [0, 1, 2, 1, 2, 0]
    out = hvae.elbo(blob_images(disease), parents(disease))
    critic.confusion(out, parents(disease)).backward()
    trunk = [p.grad for n, p in hvae.named_parameters() if n.startswith("output.")]
    branch = [p.grad for n, p in hvae.named_parameters() if n.startswith("lesion_")]
    assert any(g is not None and g.abs().max() > 0 for g in trunk)
    assert all(g is None or g.abs().max() == 0 for g in branch)


def fit_adversary(adversary, out, pa, steps=60):
    optimizer = torch.optim.Adam(adversary.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = adversary.loss(adversary.trunk_image(out), pa)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return adversary.loss(adversary.trunk_image(out), pa).item()


def test_with_anatomy_reads_scale_the_adversary_reads_a_disease_told_by_the_trunks_pixel_scale_alone():
    disease = [0, 1, 2] * 8
    pa = parents(disease)
    # a trunk whose mean is the same for every image but whose pixel scale is wider where the lesion is
    out = {"anatomy": torch.zeros(len(disease), 1, 32, 32), "anatomy_log_sigma": blob_images(disease) - 3.0}
    torch.manual_seed(0)
    blind = AnatomyAdversary(lesion_preset(), MIMIC_GRAPH)
    torch.manual_seed(0)
    reading = AnatomyAdversary(lesion_preset(anatomy_reads_scale=True), MIMIC_GRAPH)
    assert blind.trunk_image(out).shape[1] == 1 and reading.trunk_image(out).shape[1] == 2
    assert fit_adversary(blind, out, pa) > 0.9  # the mean alone tells nothing: the marginal is log 3 = 1.10
    assert fit_adversary(reading, out, pa) < 0.2


@pytest.mark.parametrize(
    "make_preset",
    # `cpu-64` takes the pixel-scale reading (measured on the phantom, docs/generator.md)
    [lambda: lesion_preset(anatomy_reads_scale=True), lambda: get_preset("cpu-64")],
    ids=["tiny", "cpu-64"],
)
def test_with_anatomy_reads_scale_the_penalty_reaches_the_trunks_pixel_scale(make_preset):
    torch.manual_seed(0)
    preset = make_preset()
    hvae = ConditionalHVAE(preset, MIMIC_GRAPH)
    disease = [0, 1, 2, 1, 2, 0]
    out = hvae.elbo(blob_images(disease, size=preset.resolution), parents(disease))
    assert AnatomyAdversary(preset, MIMIC_GRAPH).trunk_image(out).shape[1] == 2
    log_sigma = out["anatomy_log_sigma"]
    log_sigma.retain_grad()
    AnatomyCritic(preset, MIMIC_GRAPH, "cpu").confusion(out, parents(disease)).backward()
    assert log_sigma.grad is not None and log_sigma.grad.abs().max() > 0


def test_without_a_lesion_branch_or_with_weight_zero_the_critic_does_nothing():
    for preset in (tiny_preset(), lesion_preset(weight=0.0)):
        critic = AnatomyCritic(preset, MIMIC_GRAPH, "cpu")
        out = {"anatomy": torch.randn(3, 1, 32, 32, requires_grad=True), "anatomy_log_sigma": torch.zeros(3, 1, 32, 32)}
        assert critic.confusion(out, parents([0, 1, 2])).item() == 0.0
        assert critic.train_step(out, parents([0, 1, 2])) == 0.0
        assert critic.state_dict() == {}


def test_a_lesion_branch_run_trains_the_anatomy_adversary_and_resumes_bit_identically(tmp_path):
    preset = lesion_preset(checkpoint_every=2)
    splits = {"train": synthetic_split(24, 0), "valid": synthetic_split(8, 1)}
    config = RunConfig(preset="test-32", seed=4, steps=STEPS)
    reference = train(config, preset, splits, tmp_path / "reference")
    history = reference["history"]["hvae"]
    assert all("anatomy_confusion" in entry and entry["anatomy_adversary"] > 0 for entry in history)

    with pytest.raises(Exception, match="stopped at hvae step 2"):
        train(config, preset, splits, tmp_path / "resumed", progress=interrupt_at("hvae", 2))
    resumed = train(config, preset, splits, tmp_path / "resumed", resume=True)
    for stage in ("hvae", "counterfactual"):
        expected = load_checkpoint(reference["checkpoints"][stage])
        actual = load_checkpoint(resumed["checkpoints"][stage])
        for name, tensor in expected["task"]["anatomy"]["adversary"].items():
            assert torch.equal(tensor, actual["task"]["anatomy"]["adversary"][name]), f"{stage}/{name}"
        for name, tensor in expected["hvae_ema"].items():
            assert torch.equal(tensor, actual["hvae_ema"][name]), f"{stage}/hvae_ema/{name}"

"""The lesion critic: maps the branch adds under an intervention are judged against those it draws on real lesions."""

import dataclasses

import pytest
import torch

from generator.data.graph import MIMIC_GRAPH
from generator.training.checkpoint import load_checkpoint
from generator.training.counterfactual_stage import AddedLesionCritic
from generator.training.critics import LesionCritic
from generator.training.pipeline import RunConfig, train
from tests.generator.helpers import tiny_preset
from tests.generator.test_training_resume import STEPS, interrupt_at, synthetic_split

pytestmark = [pytest.mark.ml, pytest.mark.usefixtures("one_thread")]


def critic_preset(weight=1.0, **changes):
    return tiny_preset(lesion_blocks=1, anatomy_weight=1.0, cf_branch_only=True, lesion_critic_weight=weight, **changes)


def real_maps(n, generator):
    """Blobs of varying place and size, like lesions of different patients."""
    maps = torch.zeros(n, 1, 32, 32)
    for i in range(n):
        r, c = torch.randint(4, 24, (2,), generator=generator).tolist()
        s = int(torch.randint(3, 8, (), generator=generator))
        maps[i, :, r : r + s, c : c + s] = 0.5
    return maps


def test_the_critic_learns_to_tell_one_repeated_mark_from_varied_lesions_and_penalises_the_mark():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    critic = LesionCritic(critic_preset(), MIMIC_GRAPH)
    optimizer = torch.optim.Adam(critic.parameters(), lr=3e-3)
    mark = torch.zeros(16, 1, 32, 32)
    mark[:, :, 28:30, 4:28] = 1.0  # the same bright line on every image
    disease = torch.tensor([1, 2] * 8)
    before = critic.realism(mark, disease).item()
    for _ in range(80):
        loss = critic.loss(real_maps(16, generator), disease, mark, disease)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3
    assert critic.realism(mark, disease).item() > before + 1.0
    assert critic.realism(real_maps(16, generator), disease).item() < critic.realism(mark, disease).item()


def test_only_intervened_additions_are_judged_and_only_against_real_diseased_images():
    wrapper = AddedLesionCritic(critic_preset(), MIMIC_GRAPH, "cpu")
    pa = {"disease": torch.tensor([0, 1, 2, 1])}
    pa_cf = {"disease": torch.tensor([1, 0, 1, 1])}
    real, added = wrapper.split(pa, pa_cf)
    assert real.tolist() == [False, True, True, True]
    # healthy -> effusion and pneumonia -> effusion add a lesion; a removal and an unchanged label do not
    assert added.tolist() == [True, False, True, False]
    # no addition in the batch: nothing to judge, nothing trained
    lesion = torch.randn(4, 1, 32, 32)
    assert wrapper.realism(lesion, pa, lesion, pa).item() == 0.0
    assert wrapper.train_step(lesion, pa, lesion, pa) == 0.0
    off = AddedLesionCritic(critic_preset(weight=0.0), MIMIC_GRAPH, "cpu")
    assert off.realism(lesion, pa, lesion, pa_cf).item() == 0.0 and off.state_dict() == {}


def run_and_resume(preset, stage, tmp_path):
    """Train `preset` with 6 steps of `stage`, and again interrupted at its step 4 and resumed; check that the critic
    (where the preset has one) and the EMA weights of both runs are identical. Returns the stage's history."""
    splits = {"train": synthetic_split(24, 0), "valid": synthetic_split(8, 1)}
    preset = dataclasses.replace(preset, checkpoint_every=2)
    config = RunConfig(preset="test-32", seed=4, steps={**STEPS, stage: 6})
    reference = train(config, preset, splits, tmp_path / "reference")
    with pytest.raises(Exception, match=f"stopped at {stage} step 4"):
        train(config, preset, splits, tmp_path / "resumed", progress=interrupt_at(stage, 4))
    resumed = train(config, preset, splits, tmp_path / "resumed", resume=True)
    expected = load_checkpoint(reference["checkpoints"][stage])
    actual = load_checkpoint(resumed["checkpoints"][stage])
    for name, tensor in expected["task"]["lesion_critic"].get("critic", {}).items():
        assert torch.equal(tensor, actual["task"]["lesion_critic"]["critic"][name]), name
    for name, tensor in expected["hvae_ema"].items():
        assert torch.equal(tensor, actual["hvae_ema"][name]), name
    return reference["history"][stage]


def test_a_run_with_the_critic_trains_it_and_resumes_bit_identically(tmp_path):
    history = run_and_resume(critic_preset(), "counterfactual", tmp_path)
    assert any(entry["lesion_critic"] > 0 for entry in history[-1:])


def elbo_critic_preset():
    return critic_preset(
        weight=0.0, lesion_latent=4, lesion_support=True, lesion_reads="anatomy", elbo_lesion_critic_weight=1.0
    )


def test_in_the_elbo_stage_additions_drawn_from_the_prior_code_are_judged_and_the_run_resumes_bit_identically(
    tmp_path,
):
    history = run_and_resume(elbo_critic_preset(), "hvae", tmp_path)
    assert all("added_realism" in entry and "lesion_critic" in entry for entry in history)
    assert any(entry["lesion_critic"] > 0 for entry in history)


def test_the_elbo_stage_critic_trains_only_the_lesion_branch_on_additions():
    from generator.causal.counterfactual import CounterfactualModel
    from generator.training.pipeline import HVAETask

    preset = elbo_critic_preset()
    torch.manual_seed(0)
    model = CounterfactualModel(MIMIC_GRAPH, preset)
    split = synthetic_split(8, 0)
    task = HVAETask(model.hvae, preset, MIMIC_GRAPH, split, split, 0, "cpu")
    pa = {name: values[:8] for name, values in split.pa.items()}
    pa["disease"] = torch.tensor([0, 0, 0, 0, 1, 2, 1, 2])
    out = model.hvae.elbo(split.x[:8], pa)
    maps, pa_cf = task.prior_additions(out, pa)
    assert (pa_cf["disease"][:4] != 0).all() and torch.equal(pa_cf["disease"][4:], pa["disease"][4:])
    model.hvae.zero_grad(set_to_none=True)
    task.added_lesions.realism(out["lesion"], pa, maps, pa_cf).backward()
    # the branch's output layer starts at zero, so its own weights are the first to receive the critic's gradient
    branch = sum(float(p.grad.abs().sum()) for p in model.hvae.lesion_output.parameters() if p.grad is not None)
    trunk = sum(float(p.grad.abs().sum()) for p in model.hvae.decoder_blocks.parameters() if p.grad is not None)
    assert branch > 0 and trunk == 0.0

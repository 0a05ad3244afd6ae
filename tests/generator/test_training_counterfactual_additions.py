"""Counterfactual training on additions only (`cf_interventions="additions"`) and the removal anchor."""

import pytest
import torch

from generator.causal.counterfactual import CounterfactualModel
from generator.causal.predictors import ParentPredictors
from generator.data.graph import MIMIC_GRAPH
from generator.training.checkpoint import load_checkpoint
from generator.training.counterfactual_stage import LESION_POSTERIOR_HEADS, CounterfactualTask, addition_intervention
from generator.training.presets import get_preset
from tests.generator.helpers import tiny_preset
from tests.generator.test_causal_lesion_critic import run_and_resume
from tests.generator.test_training_resume import synthetic_split

pytestmark = [pytest.mark.ml, pytest.mark.usefixtures("one_thread")]


def additions_preset(anchor=1.0, interventions="additions"):
    return tiny_preset(
        lesion_blocks=1,
        anatomy_weight=1.0,
        lesion_latent=4,
        lesion_latent_map=1,
        lesion_support=True,
        cf_branch_only=True,
        cf_interventions=interventions,
        cf_removal_anchor=anchor,
    )


def test_only_healthy_images_get_a_disease_and_every_class_is_drawn():
    torch.manual_seed(0)
    pa = {"disease": torch.tensor([0, 1, 2, 0] * 50)}
    do = addition_intervention(pa, "disease", 3)["disease"]
    healthy = pa["disease"] == 0
    assert torch.equal(do[~healthy], pa["disease"][~healthy])
    assert set(do[healthy].tolist()) == {1, 2}
    assert do.dtype == pa["disease"].dtype


def make_task(preset, split, seed=0):
    torch.manual_seed(seed)
    model = CounterfactualModel(MIMIC_GRAPH, preset)
    predictors = ParentPredictors(MIMIC_GRAPH, preset.resolution, preset.predictor_width)
    return model, CounterfactualTask(model, predictors, preset, split, 1e9, seed, "cpu")


def test_additions_train_the_branch_but_not_its_posterior_and_the_anchor_pulls_back_to_the_start():
    split = synthetic_split(16, 0)
    model, task = make_task(additions_preset(), split)
    trained = {id(p) for p in task.trained}
    for name, p in model.hvae.named_parameters():
        expected = name.startswith("lesion_") and not name.startswith(LESION_POSTERIOR_HEADS)
        assert (id(p) in trained) == expected, name

    x, pa = split.x, dict(split.pa)
    pa["disease"] = torch.tensor([0, 1, 2, 1] * 4)
    out = model.hvae.elbo(x, pa)
    # the model is where the stage started: no distance yet
    assert task.removal_anchor(out, pa).item() == 0.0
    with torch.no_grad():  # the branch moves away from the reference ...
        for p in model.hvae.lesion_output.parameters():
            p.add_(0.5)
    out = model.hvae.elbo(x, pa)
    distance = task.removal_anchor(out, pa)
    assert distance.item() > 0
    # ... and the anchor's gradient reaches the branch alone
    model.hvae.zero_grad(set_to_none=True)
    distance.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.hvae.lesion_output.parameters())
    assert all(p.grad is None for p in model.hvae.decoder_blocks.parameters())
    # healthy images alone: nothing to hold
    pa["disease"] = torch.zeros(16, dtype=pa["disease"].dtype)
    assert task.removal_anchor(model.hvae.elbo(x, pa), pa).item() == 0.0


def test_additions_need_a_branch_trained_alone_and_the_mode_must_be_known():
    preset = additions_preset()
    preset.cf_branch_only = False
    with pytest.raises(ValueError, match="cf_branch_only"):
        make_task(preset, synthetic_split(8, 0))
    with pytest.raises(ValueError, match="cf_interventions"):
        additions_preset(interventions="removals")


def test_a_run_on_additions_with_the_anchor_keeps_the_posterior_and_resumes_bit_identically(tmp_path):
    history = run_and_resume(additions_preset(), "counterfactual", tmp_path)
    assert all("removal_anchor" in entry for entry in history)
    assert any(entry["removal_anchor"] > 0 for entry in history)
    before = load_checkpoint(tmp_path / "reference" / "hvae.pt")["hvae_ema"]
    after = load_checkpoint(tmp_path / "reference" / "counterfactual.pt")["hvae_ema"]
    moved = {name for name, tensor in before.items() if not torch.equal(tensor, after[name])}
    assert moved and all(name.startswith("lesion_") for name in moved)
    assert not any(name.startswith(LESION_POSTERIOR_HEADS) for name in moved)


def test_cpu64_judges_additions_with_the_removal_anchored_and_paper192_keeps_the_papers_objective():
    demo, paper = get_preset("cpu-64"), get_preset("paper-192")
    assert demo.cf_interventions == "additions" and demo.cf_removal_anchor > 0 and demo.elbo_lesion_critic_weight > 0
    assert paper.cf_interventions == "marginal" and paper.cf_removal_anchor == 0


@pytest.mark.parametrize(("judged", "cap", "expected"), [(0.5, 0.0, 0.6931), (0.5, 0.9, 0.5878), (0.95, 0.9, 0.0)])
def test_the_confidence_cap_stops_rewarding_an_addition_the_judge_already_accepts(judged, cap, expected):
    split = synthetic_split(16, 0)
    preset = additions_preset()
    preset.cf_confidence = cap
    _, task = make_task(preset, split)

    def judge(x, pa, names):  # a judge that gives every image the same probability of the disease it is told
        return {name: torch.full((len(x),), judged).log() for name in names}

    task.predictors.log_prob = judge
    metrics = task.step(0)
    # -log p, less -log(cap) where a cap is set, never below zero
    assert metrics["counterfactual_loss"] == pytest.approx(expected, abs=1e-4)


def test_the_confidence_cap_is_a_probability_and_caps_additions_only():
    with pytest.raises(ValueError, match="cf_confidence"):
        tiny_preset(cf_confidence=1.0)
    with pytest.raises(ValueError, match="additions"):
        tiny_preset(cf_confidence=0.9)
    assert additions_preset().cf_confidence == 0.0

"""`cf_anchor_reference`: what the removal anchor holds the lesion branch to in counterfactual training and in each
active-learning round of the proposed model."""

import dataclasses

import pytest
import torch

from generator.causal.counterfactual import CounterfactualModel
from generator.causal.predictors import ParentPredictors
from generator.data.datasets import make_phantom_splits
from generator.data.graph import MIMIC_GRAPH
from generator.training import pipeline, proposed
from generator.training.counterfactual_stage import CounterfactualTask
from generator.training.pipeline import RunConfig
from generator.training.proposed import ActiveLearningSettings, run_proposed
from tests.generator.test_training_counterfactual_additions import additions_preset
from tests.generator.test_training_resume import synthetic_split

pytestmark = [pytest.mark.ml, pytest.mark.usefixtures("one_thread")]

TINY_STEPS = {"parents": 5, "predictors": 3, "hvae": 3, "counterfactual": 4}


def anchored_preset(reference):
    """The tiny lesion-branch preset of the additions tests, anchored to `reference`."""
    return dataclasses.replace(additions_preset(), cf_anchor_reference=reference)


def test_the_reference_must_be_stage_or_elbo():
    with pytest.raises(ValueError, match="cf_anchor_reference"):
        anchored_preset("last-round")


def test_a_task_given_a_reference_anchors_to_it_and_not_to_the_model_it_starts_from():
    preset = anchored_preset("elbo")
    split = synthetic_split(16, 0)
    torch.manual_seed(0)
    model = CounterfactualModel(MIMIC_GRAPH, preset)
    predictors = ParentPredictors(MIMIC_GRAPH, preset.resolution, preset.predictor_width)
    reference = CounterfactualModel(MIMIC_GRAPH, preset).hvae
    reference.load_state_dict(model.hvae.state_dict())
    with torch.no_grad():  # the reference draws other lesions than the model
        for p in reference.lesion_output.parameters():
            p.add_(0.5)
    x, pa = split.x, dict(split.pa)
    pa["disease"] = torch.tensor([0, 1, 2, 1] * 4)

    by_default = CounterfactualTask(model, predictors, preset, split, 1e9, 0, "cpu")
    assert by_default.removal_anchor(model.hvae.elbo(x, pa), pa).item() == 0.0
    given = CounterfactualTask(model, predictors, preset, split, 1e9, 0, "cpu", anchor_reference=reference)
    assert given.removal_anchor(model.hvae.elbo(x, pa), pa).item() > 0
    # the task holds a frozen copy: later changes to the module it was given do not move the anchor
    assert given.reference is not reference
    assert not any(p.requires_grad for p in given.reference.parameters())


@pytest.fixture(scope="module")
def splits():
    return make_phantom_splits(60, 32, seed=0)


def run_recording_references(reference, splits, out, monkeypatch):
    """Run a two-round expert-al model and return, per round, the state the removal anchor was given (None: the
    model the round starts from)."""
    given = []
    finetune = pipeline.finetune_counterfactual

    def recording(model, data, steps, predictors, **kwargs):
        anchor = kwargs.get("anchor_reference")
        given.append(None if anchor is None else {k: v.clone() for k, v in anchor.state_dict().items()})
        return finetune(model, data, steps, predictors, **kwargs)

    monkeypatch.setattr(pipeline, "finetune_counterfactual", recording)
    config = RunConfig(preset="test-32", variant="expert-al", steps=TINY_STEPS, seed=4, al_rounds=2, al_fraction=0.1)
    preset = anchored_preset(reference)
    settings = ActiveLearningSettings.from_config(config, preset, finetune_steps=2, proxy_epochs=1, proxy_batch_size=32)
    summary = run_proposed(config, preset, splits, out, expert_weights=None, al_settings=settings)
    return given, summary


def test_with_elbo_every_round_anchors_to_the_runs_elbo_stage_model(splits, tmp_path, monkeypatch):
    given, summary = run_recording_references("elbo", splits, tmp_path, monkeypatch)
    assert len(given) == 2
    elbo = pipeline.load_model(summary["checkpoints"]["hvae"], device="cpu").hvae.state_dict()
    round_1 = pipeline.load_model(summary["checkpoints"]["round-1"], device="cpu").hvae.state_dict()
    for state in given:
        assert state is not None and state.keys() == elbo.keys()
        assert all(torch.equal(state[k], elbo[k]) for k in elbo)
    # the second round starts from round 1's model, which the anchor does not follow
    assert any(not torch.equal(round_1[k], elbo[k]) for k in elbo if k.startswith("lesion_"))


def test_with_stage_each_round_anchors_to_the_model_it_starts_from(splits, tmp_path, monkeypatch):
    given, _ = run_recording_references("stage", splits, tmp_path, monkeypatch)
    assert given == [None, None]


def test_with_elbo_the_rounds_refuse_a_run_without_its_elbo_stage_checkpoint(splits, tmp_path, monkeypatch):
    _, summary = run_recording_references("elbo", splits, tmp_path / "run", monkeypatch)
    (tmp_path / "run" / "hvae.pt").unlink()
    settings = ActiveLearningSettings.from_config(
        RunConfig(preset="test-32", variant="expert-al", al_rounds=1, al_fraction=0.1),
        anchored_preset("elbo"),
        finetune_steps=1,
        proxy_epochs=1,
        proxy_batch_size=32,
    )
    with pytest.raises(FileNotFoundError, match="hvae.pt"):
        proposed.run_active_learning(summary["checkpoints"]["counterfactual"], splits, tmp_path / "al", None, settings)
    assert not (tmp_path / "al" / "round-1.pt").exists()

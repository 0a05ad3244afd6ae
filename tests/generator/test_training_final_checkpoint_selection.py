"""A run's final model is the checkpoint whose validation counterfactuals score best, not simply the last stage."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from generator.data import load_splits
from generator.training import pipeline
from generator.training.selection import select_final
from tests.generator.helpers import tiny_preset

pytestmark = [pytest.mark.ml, pytest.mark.usefixtures("one_thread")]


class Oracle(nn.Module):
    """Answers with the phantom's true counterfactual (`truthful`), or with the factual image unchanged, or with only
    `strength` of the true change (a faint counterfactual, exactly in the right place)."""

    def __init__(self, dataset, truthful, strength=1.0):
        super().__init__()
        self.dataset, self.truthful, self.strength = dataset, truthful, strength
        self.anchor = nn.Parameter(torch.zeros(()))
        self.rows = {dataset.x[i].numpy().tobytes(): i for i in range(len(dataset.x))}

    def counterfactual(self, x, pa, do, generator=None):
        if not self.truthful:
            return SimpleNamespace(x_cf=x.clone(), pa_cf={**pa, **do})
        index = [self.rows[image.numpy().tobytes()] for image in x]
        u = self.dataset.u[index]
        truth, pa_cf, _ = self.dataset.scm.true_counterfactual(pa, u, do, x.shape[-1])
        return SimpleNamespace(x_cf=x + self.strength * (truth - x), pa_cf=pa_cf)


@pytest.fixture(scope="module")
def phantom_splits(tmp_path_factory):
    return load_splits("phantom", str(tmp_path_factory.mktemp("phantom")), 32, {"n": 96, "seed": 1})


def test_on_phantom_data_the_candidate_closer_to_the_true_counterfactual_is_chosen(phantom_splits):
    valid = phantom_splits["valid"]
    candidates = {"unchanged": Oracle(valid, truthful=False), "true": Oracle(valid, truthful=True)}
    best, scores = select_final(candidates, valid, images=16)
    assert best == "true"
    assert scores["true"]["method"] == "phantom truth"
    assert scores["true"]["removal_error_ratio"] == pytest.approx(0.0, abs=1e-6)
    assert scores["true"]["localisation"] == pytest.approx(1.0)
    assert scores["unchanged"]["removal_error_ratio"] == pytest.approx(1.0)
    assert scores["unchanged"]["score"] > scores["true"]["score"]
    assert scores["true"]["addition_strength"] == pytest.approx(1.0)
    assert 0.0 < scores["true"]["judge_accuracy"] <= 1.0


def test_on_phantom_data_a_faint_counterfactual_in_the_right_place_loses_to_the_true_one(phantom_splits):
    """Localisation alone cannot tell them apart (all of the change is inside the true region); the judge can."""
    valid = phantom_splits["valid"]
    candidates = {"faint": Oracle(valid, truthful=True, strength=0.05), "true": Oracle(valid, truthful=True)}
    best, scores = select_final(candidates, valid, images=16)
    assert best == "true"
    assert scores["faint"]["localisation"] == pytest.approx(scores["true"]["localisation"], abs=1e-4)
    assert scores["faint"]["addition_strength"] == pytest.approx(0.05, rel=1e-3)
    assert scores["faint"]["judge_agreement"] < scores["true"]["judge_agreement"]


def test_on_real_data_a_judge_trained_on_the_validation_split_scores_agreement_and_change(phantom_splits):
    valid = phantom_splits["valid"]
    real = SimpleNamespace(x=valid.x, pa=valid.pa, graph=valid.graph)  # no phantom truth: as a real data set
    candidates = {"unchanged": Oracle(valid, truthful=False)}
    best, scores = select_final(candidates, real, images=16)
    assert best == "unchanged"
    assert scores["unchanged"]["method"] == "validation judge"
    assert scores["unchanged"]["mean_abs_change"] == 0.0
    assert 0.0 <= scores["unchanged"]["judge_agreement"] <= 1.0


def test_a_run_with_selection_records_the_scores_and_names_the_chosen_checkpoint_final(phantom_splits, tmp_path):
    preset = tiny_preset(lesion_blocks=1, lesion_latent=4, lesion_support=True, select_final=True)
    config = pipeline.RunConfig(preset="test-32", steps=dict.fromkeys(pipeline.STAGES, 2))
    summary = pipeline.train(config, preset, phantom_splits, tmp_path / "run")
    selection = summary["selection"]
    assert set(selection["scores"]) == {"hvae", "counterfactual"}
    assert summary["checkpoint"] == summary["checkpoints"][selection["final"]]
    best = min(selection["scores"], key=lambda stage: selection["scores"][stage]["score"])
    assert selection["final"] == best

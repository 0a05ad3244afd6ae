"""A round of active learning adds exactly N counterfactuals, with their intervened labels, and fine-tunes on them."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from generator.data.datasets import CXRDataset
from generator.data.graph import CATEGORICAL, CONTINUOUS, DISEASE_CLASSES, CausalGraph, Node
from generator.training import proposed
from generator.training.proposed import ActiveLearningSettings, active_learning_round, extend_dataset

pytestmark = pytest.mark.ml


GRAPH = CausalGraph(
    "tiny",
    (Node("age", CONTINUOUS, low=18, high=90), Node("disease", CATEGORICAL, ("age",), categories=DISEASE_CLASSES)),
)


def real_images(n=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    disease = torch.arange(n) % 3
    pa = {"age": 20 + 60 * torch.rand(n, generator=generator), "disease": disease}
    x = torch.rand(n, 1, 16, 16, generator=generator) * 2 - 1
    return CXRDataset(x, pa, GRAPH, [f"real-{i}" for i in range(n)], 16)


class ShiftGenerator(nn.Module):
    """Stand-in generator: the counterfactual is the image brightened in proportion to the intervened class."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(0.1))

    def counterfactual(self, x, pa, do):
        x_cf = (x + self.gain * do["disease"].float().view(-1, 1, 1, 1)).clamp(-1, 1)
        return SimpleNamespace(x_cf=x_cf, pa_cf={**pa, **do})


def recording_finetune(calls):
    def finetune(model, train_set):
        calls.append(train_set)
        return {"steps": 1}

    return finetune


def fixed_scores(scores_by_round):
    """Replaces the proxy: candidate scores are given, and the training set it saw is remembered."""
    seen = []

    def score(train_x, train_y, candidate_x, candidate_y, **kwargs):
        seen.append(train_x.shape[0])
        scores = scores_by_round[len(seen) - 1]
        assert len(scores) == candidate_x.shape[0]
        return np.asarray(scores, dtype=float), np.zeros(train_x.shape[0])

    return score, seen


def test_a_round_adds_the_top_n_candidates_with_intervened_labels_and_finetunes_on_them(monkeypatch):
    real = real_images(40)
    settings = ActiveLearningSettings(fraction=0.1, candidates_per_selected=3, proxy_epochs=1)
    # N = 4 of 12 candidates: 9 (never learned), 7, 2, then 1, the first of the three tied at one event.
    scores = [0, 1, 5, 0, 0, 1, 0, 6, 0, np.inf, 0, 1]
    score, _ = fixed_scores([scores])
    monkeypatch.setattr(proposed, "score_candidates", score)
    calls = []

    enlarged, record = active_learning_round(
        ShiftGenerator(), real, real, 1, settings, extend_dataset, recording_finetune(calls)
    )

    assert record["n_added"] == 4 and record["n_candidates"] == 12
    assert len(enlarged.ids) == 44 and len(real.ids) == 40
    assert record["selected_forgetting_counts"] == [None, 6, 5, 1]
    added_ids = enlarged.ids[40:]
    assert added_ids == record["selected_ids"]
    for row, cf_id in enumerate(added_ids, start=40):
        source = int(cf_id.split("-")[3])
        label = int(enlarged.pa["disease"][row])
        assert cf_id == f"cf-r1-real-{source}-do-{DISEASE_CLASSES[label]}"
        assert label != int(real.pa["disease"][source])
        assert enlarged.pa["age"][row] == real.pa["age"][source]
        expected_image = (real.x[source] + 0.1 * label).clamp(-1, 1)
        assert torch.allclose(enlarged.x[row], expected_image)
    assert calls == [enlarged]
    assert enlarged.u is None and enlarged.info["synthetic"] == 4


def test_rounds_accumulate_and_each_proxy_sees_the_enlarged_set(monkeypatch):
    real = real_images(40)
    settings = ActiveLearningSettings(fraction=0.1, candidates_per_selected=2, proxy_epochs=1)
    score, seen = fixed_scores([np.arange(8), np.arange(8)[::-1]])
    monkeypatch.setattr(proposed, "score_candidates", score)
    calls = []
    generator = ShiftGenerator()
    first, _ = active_learning_round(generator, real, real, 1, settings, extend_dataset, recording_finetune(calls))
    second, record = active_learning_round(
        generator, real, first, 2, settings, extend_dataset, recording_finetune(calls)
    )
    assert seen == [40, 44]
    assert len(second.ids) == 48 and record["synthetic_fraction"] == pytest.approx(0.2)
    assert second.ids[:44] == first.ids
    assert all(i.startswith("cf-r2-") for i in second.ids[44:])
    assert [len(c.ids) for c in calls] == [44, 48]


def test_the_real_proxy_scores_every_candidate_and_records_histograms():
    real = real_images(30)
    settings = ActiveLearningSettings(fraction=0.1, candidates_per_selected=3, proxy_epochs=3, proxy_batch_size=16)
    enlarged, record = active_learning_round(ShiftGenerator(), real, real, 1, settings, extend_dataset, lambda m, d: {})
    assert record["n_added"] == 3 and len(enlarged.ids) == 33
    assert record["histogram_training"]["n"] == 30
    assert record["histogram_candidates"]["n"] == 9
    total = sum(record["histogram_candidates"]["percent"]) + record["histogram_candidates"]["never_learned_percent"]
    assert total == pytest.approx(100.0)


def test_extending_a_data_set_needs_every_parent():
    real = real_images(4)
    with pytest.raises(KeyError, match="age"):
        extend_dataset(real, real.x[:1], {"disease": torch.tensor([1])}, ["x"])

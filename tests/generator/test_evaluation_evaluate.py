"""evaluate_model on stand-in models whose figures are known in advance.

The stand-in "coding" model writes its parents into the first pixel row of the image, and the stand-in predictor
reads them back, so a model that honours every intervention must score perfectly and the identity model (which
ignores interventions) must score exactly as often as the shuffled target happens to equal the original value.
"""

import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from generator.data.graph import MIMIC_GRAPH
from generator.data.phantom import PhantomSCM
from generator.evaluation import evaluate

SIZE = 16


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small tensors gain nothing from a second thread, and on a busy machine thread hand-offs dominate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Counterfactual:
    x_cf: torch.Tensor
    pa_cf: dict
    effect: torch.Tensor
    uncertainty: torch.Tensor


def code_parents(x, pa):
    """Write every parent into row 0: scaled continuous values, discrete codes as value / 4."""
    x = x.clone()
    for column, node in enumerate(MIMIC_GRAPH.nodes):
        value = pa[node.name].float()
        if node.kind == "continuous":
            value = (value - node.low) / (node.high - node.low)
        else:
            value = value / 4
        x[:, 0, 0, column] = value
    return x


class CodingModel(nn.Module):
    """Honours every intervention exactly: the image's code row shows the counterfactual parents."""

    graph = MIMIC_GRAPH

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def counterfactual(self, x, pa, do, samples=1):
        pa_cf = {**pa, **{k: v.to(pa[k].dtype) for k, v in do.items()}}
        x_cf = code_parents(x, pa_cf)
        return Counterfactual(x_cf, pa_cf, x_cf - x, torch.zeros_like(x))


class IdentityModel(CodingModel):
    """Ignores every intervention and returns the input."""

    def counterfactual(self, x, pa, do, samples=1):
        pa_cf = {**pa, **{k: v.to(pa[k].dtype) for k, v in do.items()}}
        return Counterfactual(x.clone(), pa_cf, torch.zeros_like(x), torch.zeros_like(x))


class CodeReader(nn.Module):
    """Reads the parents back from the code row: one-hot probabilities or raw values."""

    graph = MIMIC_GRAPH

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def predict(self, x):
        out = {}
        for column, node in enumerate(MIMIC_GRAPH.nodes):
            value = x[:, 0, 0, column]
            if node.kind == "continuous":
                out[node.name] = value * (node.high - node.low) + node.low
            else:
                code = torch.round(value * 4).long().clamp(0, node.cardinality - 1)
                out[node.name] = nn.functional.one_hot(code, node.cardinality).float()
        return out

    def features(self, x):
        return x.flatten(1)[:, :24]


class OtherCodeReader(CodeReader):
    """The same reader under another architecture name, standing in for the training predictors."""


class Expert(nn.Module):
    """A stand-in expert: P(Effusion) and P(Pneumonia) read from the disease code."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def probabilities(self, x):
        code = torch.round(x[:, 0, 0, 4] * 4)
        return {"Effusion": (code == 1).float() * 0.9 + 0.05, "Pneumonia": (code == 2).float() * 0.8 + 0.1}

    def disease_probabilities(self, x):
        named = self.probabilities(x)
        no_finding = (1 - named["Effusion"]) * (1 - named["Pneumonia"])
        return torch.stack([no_finding, named["Effusion"], named["Pneumonia"]], dim=1)

    def features(self, x):
        return x.flatten(1)[:, 16:48]


def make_split(n=40, seed=0, with_noise=False):
    scm = PhantomSCM(MIMIC_GRAPH)
    pa, u = scm.sample(n, rng=np.random.default_rng(seed))
    x, _ = scm.render(pa, u, SIZE)
    split = SimpleNamespace(graph=MIMIC_GRAPH, x=code_parents(x, pa), pa=pa, ids=[f"p{i}" for i in range(n)])
    if with_noise:
        split.u = u
    return split, scm


def test_a_model_that_honours_interventions_scores_perfectly_and_stays_put():
    split, _ = make_split()
    results = evaluate.evaluate_model(
        CodingModel(), {"test": split}, CodeReader(), expert=Expert(), n=32, seed=3, n_boot=50, fid_boot=20
    )
    json.dumps(results)  # JSON-serialisable
    effectiveness = results["effectiveness"]["evaluation_predictors"]
    assert effectiveness["disease"]["accuracy"]["mean"] == 1.0
    assert effectiveness["disease"]["auroc"]["mean"] == pytest.approx(1.0)
    assert effectiveness["sex"]["accuracy"]["mean"] == 1.0
    assert effectiveness["age"]["mae"]["mean"] == pytest.approx(0.0, abs=1e-3)
    for block, key in (("composition", "repeats_10"), ("reversibility", "cycles_5")):
        figures = results[block][key]
        assert figures["l1"]["mean"] == pytest.approx(0.0, abs=1e-4)
        assert figures["ssim"]["mean"] == pytest.approx(1.0, abs=1e-6)
        assert figures["fid"]["mean"] == pytest.approx(0.0, abs=1e-8)
    assert results["seed"] == 3 and results["n"] == 32
    assert results["fid_feature_space"].startswith("expert")
    shift = results["expert_probability_shift"]
    assert shift["do(disease=effusion)"]["Effusion"]["mean"] == pytest.approx(0.95)
    assert shift["do(disease=healthy)"]["Pneumonia"]["mean"] == pytest.approx(0.1)
    assert results["effect_localisation"] is None and results["true_counterfactual_error"] is None


def test_a_model_that_ignores_interventions_scores_at_the_rate_of_accidental_agreement():
    split, _ = make_split()
    seed = 5
    results = evaluate.evaluate_model(
        IdentityModel(),
        split,
        CodeReader(),
        training_predictors=OtherCodeReader(),
        n=40,
        seed=seed,
        n_boot=50,
        fid_boot=20,
    )
    # Recreate the shuffles that evaluate_model draws: one permutation per node, in graph order.
    images = evaluate.EvaluationImages.draw(split, 40, seed)
    rng = np.random.default_rng(seed)
    agreement = {}
    for node in MIMIC_GRAPH.nodes:
        shuffled = rng.permutation(40)
        agreement[node.name] = float((images.pa[node.name][shuffled] == images.pa[node.name]).float().mean())
    for label in ("evaluation_predictors", "training_predictors"):
        figures = results["effectiveness"][label]
        assert figures["disease"]["accuracy"]["mean"] == pytest.approx(agreement["disease"])
        assert figures["sex"]["accuracy"]["mean"] == pytest.approx(agreement["sex"])
    # The identity model trivially composes and reverses.
    assert results["composition"]["repeats_1"]["l1"]["mean"] == 0.0
    assert results["fid_feature_space"] == "evaluation predictors"
    # On the real images the reader is perfect: the ceiling for effectiveness.
    assert results["predictors_on_observations"]["evaluation_predictors"]["race"]["accuracy"]["mean"] == 1.0


def test_training_predictors_of_the_same_architecture_are_refused():
    split, _ = make_split(n=8)
    with pytest.raises(ValueError, match="independent"):
        evaluate.evaluate_model(IdentityModel(), split, CodeReader(), training_predictors=CodeReader(), n=8)


def test_phantom_figures_reward_the_true_counterfactual_and_not_the_input():
    split, scm = make_split(n=30, seed=1, with_noise=True)
    images = evaluate.EvaluationImages.draw(split, None, 0)
    classes = list(MIMIC_GRAPH["disease"].categories)
    true_cfs = [
        scm.true_counterfactual(images.pa, images.u, {"disease": torch.full((30,), k)}, SIZE)[0] for k in range(3)
    ]
    # The code row is not part of the phantom: compare on the phantom's own renderings.
    images.x = scm.render(images.pa, images.u, SIZE)[0]
    localisation, error = evaluate.phantom_figures(scm, images, true_cfs, classes, seed=0, n_boot=50)
    assert localisation["all"]["mean"] == pytest.approx(1.0)
    assert error["removal"]["l1_model"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert error["removal"]["l1_identity"]["mean"] > 0.0
    assert error["additions"]["do(disease=effusion)"]["iou_model"]["mean"] > 0.5
    assert error["additions"]["do(disease=effusion)"]["wasserstein_model"]["mean"] == pytest.approx(0.0, abs=1e-4)

    unchanged = [images.x.clone() for _ in range(3)]
    localisation, error = evaluate.phantom_figures(scm, images, unchanged, classes, seed=0, n_boot=50)
    assert localisation["all"]["n"] == 0  # nothing changed, nothing to locate
    assert error["removal"]["l1_model"]["mean"] == pytest.approx(error["removal"]["l1_identity"]["mean"])
    assert error["additions"]["do(disease=pneumonia)"]["iou_model"]["mean"] == 0.0


def test_phantom_blocks_appear_when_the_split_carries_its_noise():
    split, scm = make_split(n=24, seed=2, with_noise=True)
    results = evaluate.evaluate_model(
        CodingModel(), split, CodeReader(), phantom_scm=scm, n=24, seed=0, n_boot=20, fid_boot=10
    )
    json.dumps(results)
    assert set(results["true_counterfactual_error"]) == {"removal", "additions"}
    assert "all" in results["effect_localisation"]


def test_progress_is_reported_from_zero_to_one():
    split, _ = make_split(n=8)
    seen = []
    evaluate.evaluate_model(
        IdentityModel(), split, CodeReader(), n=8, n_boot=10, fid_boot=5, progress=lambda f, m: seen.append(f)
    )
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)


@pytest.mark.ml
def test_evaluate_model_runs_on_the_real_counterfactual_model_and_expert():
    from generator.causal.counterfactual import CounterfactualModel
    from generator.causal.predictors import ParentPredictors
    from generator.evaluation.predictors import EvaluationPredictors
    from generator.training.expert import SMALL_DENSENET, ExpertModel, _small_densenet
    from generator.training.presets import get_preset

    preset = get_preset("test-32")
    scm = PhantomSCM(MIMIC_GRAPH)
    pa, u = scm.sample(6, rng=np.random.default_rng(0))
    split = SimpleNamespace(
        graph=MIMIC_GRAPH, x=scm.render(pa, u, preset.resolution)[0], pa=pa, u=u, ids=list("abcdef")
    )
    torch.manual_seed(0)
    model = CounterfactualModel(MIMIC_GRAPH, preset)
    expert = ExpertModel(_small_densenet(["Effusion", "Pneumonia"], preset.resolution, SMALL_DENSENET))
    results = evaluate.evaluate_model(
        model,
        {"test": split},
        EvaluationPredictors(MIMIC_GRAPH, preset.resolution),
        expert=expert,
        training_predictors=ParentPredictors(MIMIC_GRAPH, preset.resolution, width=8),
        n=6,
        phantom_scm=scm,
        n_boot=10,
        fid_boot=5,
        composition_repeats=(1, 2),
        reversibility_cycles=(1,),
    )
    json.dumps(results)
    assert set(results["composition"]) == {"repeats_1", "repeats_2"}
    assert 0.0 <= results["composition"]["repeats_2"]["ssim"]["mean"] <= 1.0
    assert results["effectiveness"]["training_predictors"]["disease"]["accuracy"]["n"] == 6
    assert set(results["expert_probability_shift"]) == {
        "observations",
        "do(disease=healthy)",
        "do(disease=effusion)",
        "do(disease=pneumonia)",
    }
    examples = evaluate.disease_examples(model, split, [0], samples=3, expert=expert)
    assert examples["probabilities"]["pneumonia"].shape == (1, 3)
    assert examples["uncertainty"]["effusion"].shape == (1, preset.resolution, preset.resolution)

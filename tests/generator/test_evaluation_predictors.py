"""The independent evaluation predictors learn every parent from real images and survive a save/load round trip;
FID features come from the expert's DenseNet, a bare xrv DenseNet or any module with `features`."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchxrayvision as xrv

from generator.causal.predictors import ParentPredictors
from generator.data.graph import MIMIC_GRAPH
from generator.evaluation import metrics
from generator.evaluation.predictors import EvaluationPredictors, train_eval_predictors
from generator.training.expert import ExpertModel

SIZE = 16


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small tensors gain nothing from a second thread, and on a busy machine thread hand-offs dominate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def coded_set(n, seed):
    """Images whose pixels show the parents plainly: disease and race as a bright column, sex as the top band's
    brightness, age and wcc as the brightness of two corner patches (a learnable, known mapping)."""
    rng = np.random.default_rng(seed)
    pa = {
        "age": torch.tensor(rng.uniform(18, 90, n), dtype=torch.float32),
        "sex": torch.tensor(rng.integers(0, 2, n), dtype=torch.float32),
        "race": torch.tensor(rng.integers(0, 3, n), dtype=torch.int64),
        "wcc": torch.tensor(rng.uniform(2, 25, n), dtype=torch.float32),
        "disease": torch.tensor(rng.integers(0, 3, n), dtype=torch.int64),
    }
    x = torch.full((n, 1, SIZE, SIZE), -0.8) + 0.05 * torch.randn(n, 1, SIZE, SIZE)
    rows = torch.arange(n)
    x[rows, 0, 8:, 2 + 4 * pa["disease"]] = 0.8
    x[rows, 0, 4:8, 2 + 4 * pa["race"]] = 0.6
    x[:, 0, :2, :] = -0.8 + 1.2 * pa["sex"].view(-1, 1, 1)
    x[:, 0, 2:4, 12:] = (-1 + 2 * (pa["age"] - 18) / 72).view(-1, 1, 1)
    x[:, 0, 4:8, 14:] = (-1 + 2 * (pa["wcc"] - 2) / 23).view(-1, 1, 1)
    return SimpleNamespace(graph=MIMIC_GRAPH, x=x.clamp(-1, 1), pa=pa)


@pytest.mark.ml
def test_evaluation_predictors_learn_every_parent_and_reload_identically(tmp_path):
    train, valid = coded_set(384, 0), coded_set(96, 1)
    fractions = []
    model = train_eval_predictors(train, valid, seed=11, epochs=6, progress=lambda f, m: fractions.append(f))
    assert fractions[-1] == 1.0
    assert model.validation["disease"]["accuracy"] > 0.9
    assert model.validation["disease"]["auroc"] > 0.95
    assert model.validation["sex"]["accuracy"] > 0.9
    assert model.validation["age"]["mae"] < 10.0  # years; guessing the middle would give about 18
    assert model.seed == 11

    path = model.save(tmp_path / "eval_predictors.pt")
    loaded = EvaluationPredictors.load(path)
    before, after = model.predict(valid.x), loaded.predict(valid.x)
    for name in MIMIC_GRAPH.names:
        assert torch.allclose(before[name], after[name], atol=1e-6)
    assert loaded.validation == model.validation


def test_evaluation_predictors_differ_in_architecture_from_the_training_predictors():
    evaluation = EvaluationPredictors(MIMIC_GRAPH, 64)
    training = ParentPredictors(MIMIC_GRAPH, 64)

    def layer_types(model):
        return {type(m) for m in model.modules() if not list(m.children())}

    def parameter_shapes(model):
        return sorted(tuple(p.shape) for p in model.parameters())

    assert layer_types(evaluation) != layer_types(training)
    assert parameter_shapes(evaluation) != parameter_shapes(training)
    assert any(type(m).__name__ == "ResidualBlock" for m in evaluation.modules())


def test_loading_a_foreign_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a file saved by EvaluationPredictors"):
        EvaluationPredictors.load(path)


def test_fid_features_come_from_the_xrv_densenet_of_the_expert():
    torch.manual_seed(0)
    classifier = xrv.models.DenseNet(
        weights=None, num_classes=2, growth_rate=4, block_config=(1, 1), num_init_features=8, bn_size=2
    )
    classifier.pathologies = ["Effusion", "Pneumonia"]
    expert = ExpertModel(classifier, input_resolution=32)
    x = torch.rand(5, 1, SIZE, SIZE) * 2 - 1
    feats = metrics.features(expert, x, batch_size=2)
    expected = classifier.features2(expert.to_classifier_input(x)).double().numpy()
    assert feats.shape == (5, classifier.features.norm5.num_features)
    assert np.allclose(feats, expected, atol=1e-5)
    assert metrics.fid(feats, feats) == pytest.approx(0.0, abs=1e-8)
    bare = metrics.features(classifier, x)
    assert bare.shape == feats.shape


def test_fid_features_fall_back_to_any_module_with_features():
    model = EvaluationPredictors(MIMIC_GRAPH, SIZE)
    feats = metrics.features(model, torch.zeros(3, 1, SIZE, SIZE))
    assert feats.shape == (3, model.feature_width)
    with pytest.raises(TypeError, match="cannot take FID features"):
        metrics.features(torch.nn.Identity(), torch.zeros(1, 1, 4, 4))

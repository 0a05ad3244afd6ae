"""The expert wrapper reads any xrv classifier by pathology name, with xrv's pixel scale and resolution."""

import pytest
import torch
import torchxrayvision as xrv
from torch import nn

from generator.training import expert as expert_module
from generator.training.expert import ExpertModel, load_expert, pretrained_weights_path, train_expert

pytestmark = pytest.mark.ml


class RecordingClassifier(nn.Module):
    """Returns fixed logits per pathology and remembers the input it was given."""

    pathologies = ["Atelectasis", "Pneumonia", "Cardiomegaly", "Effusion"]

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)
        self.scale = nn.Parameter(torch.ones(()))
        self.seen = None

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.logits.expand(x.shape[0], -1) * self.scale


def test_outputs_are_read_by_name_and_no_finding_is_derived():
    logits = [0.3, -1.0, 2.0, 0.5]
    expert = ExpertModel(RecordingClassifier(logits), input_resolution=16)
    probs = expert.probabilities(torch.zeros(2, 1, 16, 16))
    p_effusion, p_pneumonia = torch.sigmoid(torch.tensor(0.5)), torch.sigmoid(torch.tensor(-1.0))
    assert torch.allclose(probs["Effusion"], p_effusion.expand(2))
    assert torch.allclose(probs["Pneumonia"], p_pneumonia.expand(2))
    assert torch.allclose(probs["No Finding"], ((1 - p_effusion) * (1 - p_pneumonia)).expand(2))
    table = expert.disease_probabilities(torch.zeros(2, 1, 16, 16))
    assert table.shape == (2, 3)
    assert torch.allclose(table[0], torch.stack([(1 - p_effusion) * (1 - p_pneumonia), p_effusion, p_pneumonia]))


def test_pixels_are_scaled_to_xrv_range_and_resized():
    classifier = RecordingClassifier([0.0, 0.0, 0.0, 0.0])
    expert = ExpertModel(classifier, input_resolution=24)
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    expert.probabilities(x)
    assert classifier.seen.shape == (1, 1, 24, 24)
    assert classifier.seen.min() >= -1024 and classifier.seen.max() <= 1024
    assert classifier.seen.max() > 900 and classifier.seen.min() < -900


def test_expert_is_frozen_but_passes_gradient_to_its_input():
    torch.manual_seed(0)
    classifier = xrv.models.DenseNet(num_classes=2, growth_rate=4, block_config=(1, 1), num_init_features=8)
    classifier.pathologies = ["Effusion", "Pneumonia"]
    # Small output weights keep the untrained sigmoid away from saturation, where its gradient is exactly zero.
    nn.init.normal_(classifier.classifier.weight, std=1e-4)
    expert = ExpertModel(classifier, input_resolution=32)
    expert.train()
    assert not expert.training and not classifier.training
    assert all(not p.requires_grad for p in expert.parameters())
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    expert.disease_probabilities(x * 2 - 1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_classifier_without_the_needed_findings_is_rejected():
    classifier = RecordingClassifier([0.0] * 4)
    classifier.pathologies = ["Atelectasis", "Pneumonia", "Cardiomegaly", "Mass"]
    with pytest.raises(ValueError, match="Effusion"):
        ExpertModel(classifier)


def test_missing_pretrained_weights_are_never_downloaded(tmp_path, monkeypatch):
    def refuse_download(*args, **kwargs):
        raise AssertionError("the expert loader must not download")

    monkeypatch.setattr(xrv.utils, "download", refuse_download)
    assert pretrained_weights_path("densenet121-res224-all", cache_dir=str(tmp_path)) is None
    assert load_expert("densenet121-res224-all", cache_dir=str(tmp_path)) is None
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_expert(str(tmp_path / "nowhere.pt"))
    with pytest.raises(ValueError, match="unknown"):
        pretrained_weights_path("densenet-made-up")


class TinyDataset:
    def __init__(self, x, disease):
        self.x, self.pa, self.ids = x, {"disease": disease}, [f"img-{i}" for i in range(len(disease))]


def separable_images(n, seed):
    """Healthy: dark; effusion: bright bottom band; pneumonia: bright top band (any classifier can learn it)."""
    generator = torch.Generator().manual_seed(seed)
    disease = torch.arange(n) % 3
    x = -0.6 + 0.1 * torch.randn(n, 1, 16, 16, generator=generator)
    x[disease == 1, :, 11:, :] += 1.2
    x[disease == 2, :, :5, :] += 1.2
    return TinyDataset(x.clamp(-1, 1), disease)


def test_trained_expert_separates_the_classes_and_reloads_identically(tmp_path):
    train, valid = separable_images(96, seed=1), separable_images(48, seed=2)
    path = tmp_path / "expert.pt"
    expert, report = train_expert(train, valid, path, steps=60, batch_size=32, seed=0, architecture=TINY)
    assert set(report["auroc"]) == {"Effusion", "Pneumonia", "No Finding"}
    assert all(value > 0.9 for value in report["auroc"].values()), report
    reloaded = load_expert(str(path))
    with torch.no_grad():
        assert torch.allclose(reloaded.disease_probabilities(valid.x), expert.disease_probabilities(valid.x))
    assert reloaded.input_resolution == 16


def test_auroc_of_an_absent_class_is_none():
    valid = TinyDataset(torch.zeros(4, 1, 16, 16), torch.tensor([0, 1, 0, 1]))
    classifier = RecordingClassifier([0.0, 0.1, 0.0, 0.2])
    auroc = expert_module.validation_auroc(ExpertModel(classifier, input_resolution=16), valid)
    assert auroc["Pneumonia"] is None
    assert auroc["Effusion"] == pytest.approx(0.5)


TINY = {"growth_rate": 4, "block_config": (1, 1), "num_init_features": 8, "bn_size": 2}


def test_pretrained_weights_in_the_cache_are_loaded_by_name_or_path(tmp_path, monkeypatch):
    def refuse_download(*args, **kwargs):
        raise AssertionError("the expert loader must not download")

    monkeypatch.setattr(xrv.utils, "download", refuse_download)
    # A stand-in for the published file: a DenseNet-121 with 18 outputs, pickled whole as xrv publishes its weights.
    torch.manual_seed(0)
    published = xrv.models.DenseNet(num_classes=18)
    filename = xrv.models.model_urls["densenet121-res224-all"]["weights_url"].rsplit("/", 1)[-1]
    torch.save(published, tmp_path / filename)

    by_name = load_expert("densenet121-res224-all", cache_dir=str(tmp_path))
    by_path = load_expert(str(tmp_path / filename))
    assert by_name.pathologies[7:9] == ["Effusion", "Pneumonia"]
    assert by_name.input_resolution == 224 and by_name.outputs_probabilities
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        table = by_name.disease_probabilities(x)
        assert torch.allclose(table, by_path.disease_probabilities(x))
        raw = published.eval()(by_name.to_classifier_input(x))
    assert ((table >= 0) & (table <= 1)).all()
    # Reading by name: column 1 is the published model's "Effusion" output after xrv's operating-point scaling.
    threshold = xrv.models.model_urls["all"]["op_threshs"][7]
    p = torch.sigmoid(raw[:, 7])
    expected = torch.where(p < threshold, p / (2 * threshold), 1 - (1 - p) / (2 * (1 - threshold)))
    assert torch.allclose(table[:, 1], expected, atol=1e-6)

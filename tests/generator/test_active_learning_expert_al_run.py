"""`expert` and `expert-al` runs of the test-32 preset: the expert term reaches training, one checkpoint per round."""

import json

import pytest
import torch

from generator.data.datasets import make_phantom_splits
from generator.evaluation.figures import plot_forgetting_histograms
from generator.training import pipeline, proposed
from generator.training.pipeline import RunConfig
from generator.training.proposed import ActiveLearningSettings, run_proposed
from tests.generator.helpers import tiny_preset

pytestmark = pytest.mark.ml

TINY_STEPS = {"parents": 5, "predictors": 3, "hvae": 3, "counterfactual": 4}


@pytest.fixture(scope="module")
def splits():
    return make_phantom_splits(60, 32, seed=0)


def counting(monkeypatch):
    """Wrap the expert term so the test can see the counterfactual stage call it."""
    calls = []
    make = proposed.make_expert_extra_loss

    def make_counting(*args, **kwargs):
        term = make(*args, **kwargs)

        def counted(model, x, pa, cf, do):
            value = term(model, x, pa, cf, do)
            calls.append((sorted(do), value.requires_grad))
            return value

        return counted

    monkeypatch.setattr(proposed, "make_expert_extra_loss", make_counting)
    return calls


def test_expert_variant_trains_an_expert_and_adds_its_term_to_the_counterfactual_stage(splits, tmp_path, monkeypatch):
    calls = counting(monkeypatch)
    config = RunConfig(preset="test-32", variant="expert", steps=TINY_STEPS, seed=1)
    summary = run_proposed(config, tiny_preset(), splits, tmp_path, expert_weights=None)
    assert summary["expert"]["source"] == "trained"
    assert set(summary["expert"]["auroc"]) == {"Effusion", "Pneumonia", "No Finding"}
    assert (tmp_path / "expert.pt").is_file()
    assert len(calls) == TINY_STEPS["counterfactual"]
    assert all(carries_gradient for names, carries_gradient in calls if names == ["disease"])
    assert "round-1" not in summary["checkpoints"]


def test_expert_al_run_writes_one_loadable_checkpoint_per_round_and_resumes(splits, tmp_path):
    config = RunConfig(preset="test-32", variant="expert-al", steps=TINY_STEPS, seed=2, al_rounds=2, al_fraction=0.1)
    preset = tiny_preset()
    settings = ActiveLearningSettings.from_config(config, preset, finetune_steps=2, proxy_epochs=2, proxy_batch_size=32)
    summary = run_proposed(config, preset, splits, tmp_path, expert_weights=None, al_settings=settings)

    n_real = len(splits["train"].ids)
    n_add = round(0.1 * n_real)
    report = summary["active_learning"]
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert [r["training_size"] for r in report["rounds"]] == [n_real + n_add, n_real + 2 * n_add]
    assert summary["checkpoint"] == str(tmp_path / "round-2.pt")
    for k in (1, 2):
        path = tmp_path / f"round-{k}.pt"
        assert summary["checkpoints"][f"round-{k}"] == str(path)
        model = pipeline.load_model(path, device="cpu")
        x, pa = splits["valid"].x[:2], {n: v[:2] for n, v in splits["valid"].pa.items()}
        assert model.counterfactual(x, pa, {"disease": torch.tensor([1, 2])}).x_cf.shape == x.shape
        state = torch.load(path, weights_only=False)
        assert len(state["added"]["ids"]) == n_add
        assert state["added"]["ids"] == report["rounds"][k - 1]["selected_ids"]
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert {"round-1", "round-2"} <= set(manifest["stages"])
    record = proposed.read_summary(tmp_path)
    assert record["histogram_final"]["n"] == n_real + 2 * n_add
    curves = proposed.training_set_histograms(record)
    assert [h["n"] for _, h in curves] == [n_real, n_real + n_add, n_real + 2 * n_add]
    plot_forgetting_histograms([h for _, h in curves], tmp_path / "fig4a.png")
    assert (tmp_path / "fig4a.png").is_file()

    json.dumps(summary)  # the run's summary is stored as JSON by the training service

    resumed = run_proposed(config, preset, splits, tmp_path, resume=True, expert_weights=None, al_settings=settings)
    assert resumed["active_learning"]["rounds"] == json.loads(json.dumps(report["rounds"]))


def test_active_learning_starts_from_the_elbo_stage_model_when_the_run_chose_it(splits, tmp_path):
    """select_final may choose hvae.pt, which holds no predictors, adversary or constraint: those come from the run's
    counterfactual checkpoint, and the rounds fine-tune the chosen model."""
    config = RunConfig(preset="test-32", variant="expert", steps=TINY_STEPS, seed=3)
    summary = run_proposed(config, tiny_preset(), splits, tmp_path, expert_weights=None)
    hvae_checkpoint = summary["checkpoints"]["hvae"]
    settings = ActiveLearningSettings.from_config(
        RunConfig(preset="test-32", variant="expert-al", al_rounds=1, al_fraction=0.1),
        tiny_preset(),
        finetune_steps=2,
        proxy_epochs=1,
        proxy_batch_size=32,
    )
    report = proposed.run_active_learning(hvae_checkpoint, splits, tmp_path / "al", None, settings)
    assert list(report["checkpoints"]) == ["round-1"]
    model = pipeline.load_model(report["checkpoints"]["round-1"], device="cpu")
    assert model.preset.name == "test-32"

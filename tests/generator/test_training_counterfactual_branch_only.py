"""With a lesion branch and `cf_branch_only`, counterfactual training changes the branch and nothing else."""

import pytest
import torch

from generator.training.checkpoint import load_checkpoint
from generator.training.pipeline import RunConfig, finetune_counterfactual, load_model, load_predictors, train
from generator.training.presets import get_preset
from tests.generator.helpers import tiny_preset
from tests.generator.test_training_resume import STEPS, synthetic_split

pytestmark = pytest.mark.ml


def branch_preset(branch_only):
    return tiny_preset(lesion_blocks=1, anatomy_weight=1.0, cf_branch_only=branch_only)


@pytest.fixture
def splits():
    torch.set_num_threads(1)
    return {"train": synthetic_split(24, 0), "valid": synthetic_split(8, 1)}


def changed_parameters(summary):
    before = load_checkpoint(summary["checkpoints"]["hvae"])["hvae_ema"]
    after = load_checkpoint(summary["checkpoints"]["counterfactual"])["hvae_ema"]
    return {name for name, tensor in before.items() if not torch.equal(tensor, after[name])}


def test_only_the_branch_learns_and_only_the_lesion_node_is_intervened(splits, tmp_path):
    summary = train(RunConfig(preset="test-32", seed=2, steps=STEPS), branch_preset(True), splits, tmp_path)
    changed = changed_parameters(summary)
    assert changed and all(name.startswith("lesion_") for name in changed)
    assert summary["stages"]["counterfactual"]["intervened"] == ["disease"]

    # a further fine-tune in memory (as active learning runs it) also moves the branch alone, and hands the model
    # back whole, every parameter trainable again
    model = load_model(summary["checkpoints"]["counterfactual"], device="cpu")
    before = {name: p.detach().clone() for name, p in model.hvae.named_parameters()}
    predictors = load_predictors(summary["checkpoints"]["counterfactual"], device="cpu")
    result = finetune_counterfactual(model, splits, 2, predictors)
    assert result["steps"] == 2
    moved = {name for name, p in model.hvae.named_parameters() if not torch.equal(p, before[name])}
    assert moved and all(name.startswith("lesion_") for name in moved)
    assert all(p.requires_grad for p in model.hvae.parameters())


def test_without_the_flag_the_whole_decoder_learns(splits, tmp_path):
    summary = train(RunConfig(preset="test-32", seed=2, steps=STEPS), branch_preset(False), splits, tmp_path)
    changed = changed_parameters(summary)
    assert any(not name.startswith("lesion_") for name in changed)
    assert get_preset("cpu-64").cf_branch_only and not get_preset("paper-192").cf_branch_only

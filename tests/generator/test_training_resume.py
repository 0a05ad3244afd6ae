"""An interrupted training run resumes from its partial checkpoint and continues bit-identically."""

from types import SimpleNamespace

import pytest
import torch

from generator.data.graph import MIMIC_GRAPH
from generator.training.checkpoint import load_checkpoint, read_manifest
from generator.training.pipeline import RunConfig, train
from generator.training.trainer import StageStopped
from tests.generator.helpers import random_parents, tiny_preset

pytestmark = pytest.mark.ml

STEPS = {"parents": 4, "predictors": 2, "hvae": 4, "counterfactual": 2}


def synthetic_split(n, seed, resolution=32):
    generator = torch.Generator().manual_seed(seed)
    pa = random_parents(n, generator)
    x = torch.rand(n, 1, resolution, resolution, generator=generator) * 2 - 1
    return SimpleNamespace(graph=MIMIC_GRAPH, x=x, pa=pa, ids=[str(i) for i in range(n)])


@pytest.fixture
def splits():
    torch.set_num_threads(1)
    return {"train": synthetic_split(24, 0), "valid": synthetic_split(8, 1)}


def interrupt_at(stage, step):
    def progress(current, fraction, message):
        if current == stage and message.startswith(f"step {step}/"):
            raise StageStopped(f"stopped at {stage} step {step}")

    return progress


def test_resumed_hvae_stage_matches_an_uninterrupted_run(splits, tmp_path):
    config, preset = RunConfig(preset="test-32", seed=3, steps=STEPS), tiny_preset(checkpoint_every=2)
    reference = train(config, preset, splits, tmp_path / "reference")

    with pytest.raises(StageStopped):
        train(config, preset, splits, tmp_path / "resumed", progress=interrupt_at("hvae", 2))
    manifest = read_manifest(tmp_path / "resumed")
    assert set(manifest["stages"]) == {"parents", "predictors"}
    assert (tmp_path / "resumed" / "hvae.partial.pt").is_file()
    assert not (tmp_path / "resumed" / "hvae.pt").exists()

    resumed = train(config, preset, splits, tmp_path / "resumed", resume=True)
    for stage in ("hvae", "counterfactual"):
        expected = load_checkpoint(reference["checkpoints"][stage])
        actual = load_checkpoint(resumed["checkpoints"][stage])
        for key in ("hvae", "hvae_ema"):
            for name, tensor in expected[key].items():
                assert torch.equal(tensor, actual[key][name]), f"{stage}/{key}/{name} differs after resume"
    assert resumed["stages"]["hvae"]["valid_free_energy"] == reference["stages"]["hvae"]["valid_free_energy"]
    assert not (tmp_path / "resumed" / "hvae.partial.pt").exists()


def test_every_checkpoint_carries_config_preset_seed_and_code_version(splits, tmp_path):
    summary = train(RunConfig(preset="test-32", seed=5, steps=STEPS), tiny_preset(), splits, tmp_path)
    for stage, path in summary["checkpoints"].items():
        meta = load_checkpoint(path)["meta"]
        assert meta["stage"] == stage and meta["complete"] is True
        assert meta["seed"] == 5 and meta["preset"]["name"] == "test-32"
        assert meta["config"]["steps"] == STEPS
        assert meta["code_version"]

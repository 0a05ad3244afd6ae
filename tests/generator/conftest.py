"""Fixtures of the generator's tests: a tiny phantom data set and a tiny trained model shared by the tests that only
read one."""

from pathlib import Path

import pytest

from generator.data import load_splits
from generator.models import Dataset, TrainingRun
from generator.services import runs
from generator.training import pipeline
from tests.generator.helpers import PHANTOM_OPTIONS, TINY_STEPS, tiny_preset


@pytest.fixture
def artifacts(settings, tmp_path):
    settings.ARTIFACTS_ROOT = tmp_path / "artifacts"
    # A job run in-process inside the test's transaction: a heartbeat thread writing meanwhile would find SQLite
    # locked, so it waits longer than any test job takes.
    settings.JOB_HEARTBEAT_SECONDS = 3600
    return settings.ARTIFACTS_ROOT


@pytest.fixture(scope="session")
def phantom_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("phantom-cache")


@pytest.fixture
def phantom_dataset(db, phantom_cache):
    """A registered 64-image phantom data set at 32 px (rendered once per session into a cache folder)."""
    return Dataset.objects.create(
        name="phantom-tiny", kind="phantom", root=str(phantom_cache), resolution=32, options=PHANTOM_OPTIONS
    )


@pytest.fixture(scope="session")
def trained_checkpoints(phantom_cache):
    """One test-32 model trained a couple of steps per stage, shared by the tests that only read a model."""
    out_dir = Path(phantom_cache).parent / "trained-tiny"
    splits = load_splits("phantom", str(phantom_cache), 32, PHANTOM_OPTIONS)
    config = pipeline.RunConfig(preset="test-32", seed=3, steps=dict.fromkeys(pipeline.STAGES, TINY_STEPS))
    summary = pipeline.train(config, tiny_preset(), splits, out_dir)
    return {**summary["checkpoints"], "final": summary["checkpoint"]}


@pytest.fixture
def finished_run(artifacts, phantom_dataset, trained_checkpoints):
    """make(name, variant) -> a TrainingRun that finished training with the shared tiny model."""

    def make(name="tiny-run", variant="baseline"):
        run = runs.create_training_run(phantom_dataset, variant, "test-32", seed=3, name=name, steps=TINY_STEPS)
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRun.Status.SUCCEEDED, stage="done", checkpoints=dict(trained_checkpoints)
        )
        run.refresh_from_db()
        return run

    return make

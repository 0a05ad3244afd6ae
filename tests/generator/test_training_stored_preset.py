"""A run trains, resumes and loads from the preset snapshot it stored, whatever the preset registry holds later."""

import dataclasses

import pytest
import torch

from generator.models import TrainingRun
from generator.services.requests import TrainingRequest
from generator.services.runs import create_training_run
from generator.services.training import run_training
from generator.training.checkpoint import load_checkpoint
from generator.training.pipeline import STAGES, RunConfig, load_model, load_predictors, train
from generator.training.presets import PRESETS, SnapshotMismatch, get_preset, require_same_snapshot
from generator.training.trainer import StageStopped
from tests.generator.helpers import tiny_preset
from tests.generator.test_training_resume import STEPS, interrupt_at, synthetic_split

pytestmark = [pytest.mark.ml, pytest.mark.usefixtures("one_thread")]

# test-32 writes a partial checkpoint every 5 steps: an ELBO stage of 6 steps stopped after its step 5 resumes from it
RUN_STEPS = "parents=2,predictors=2,hvae=6,counterfactual=2"


class Interrupt(Exception):
    pass


def stop_after_hvae_step_5(stage, fraction, message):
    if stage == "hvae" and message.startswith("step 5/"):
        raise Interrupt("stopped by the test")


def edit_the_registry(monkeypatch):
    monkeypatch.setitem(PRESETS, "test-32", tiny_preset(lr=0.5, widths=(8, 8, 8, 8, 8), checkpoint_every=1))


def remove_from_the_registry(monkeypatch):
    monkeypatch.delitem(PRESETS, "test-32")


@pytest.mark.django_db
@pytest.mark.parametrize("change", [edit_the_registry, remove_from_the_registry])
def test_a_preset_changed_after_a_run_started_does_not_change_its_resume(
    artifacts, phantom_dataset, monkeypatch, change
):
    reference = create_training_run(phantom_dataset, "baseline", "test-32", seed=1, name="reference", steps=RUN_STEPS)
    run_training(TrainingRequest(run=reference.name))
    run = create_training_run(phantom_dataset, "baseline", "test-32", seed=1, name="changed", steps=RUN_STEPS)
    with pytest.raises(Interrupt):
        run_training(TrainingRequest(run=run.name), progress=stop_after_hvae_step_5)
    assert load_checkpoint(artifacts / "runs" / "changed" / "hvae.partial.pt")["step"] == 5

    change(monkeypatch)
    run = run_training(TrainingRequest(run=run.name, resume=True))
    reference.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED
    for stage in STAGES:
        expected, actual = load_checkpoint(reference.checkpoints[stage]), load_checkpoint(run.checkpoints[stage])
        assert actual["meta"]["preset"] == run.config["preset"] == expected["meta"]["preset"]
        for key in ("parents", "hvae_ema"):
            for name, tensor in expected.get(key, {}).items():
                assert torch.equal(tensor, actual[key][name]), f"{stage}/{key}/{name} differs after resume"


def test_a_run_of_a_preset_the_registry_never_held_trains_resumes_and_loads(tmp_path):
    snapshot = tiny_preset(name="retired-32", checkpoint_every=2)
    assert "retired-32" not in PRESETS
    config = RunConfig(preset="retired-32", seed=3, steps=STEPS)
    splits = {"train": synthetic_split(24, 0), "valid": synthetic_split(8, 1)}
    with pytest.raises(StageStopped):
        train(config, snapshot, splits, tmp_path, progress=interrupt_at("hvae", 2))
    summary = train(config, snapshot, splits, tmp_path, resume=True)

    model = load_model(summary["checkpoint"], device="cpu")
    assert model.preset == snapshot
    predictors = load_predictors(summary["checkpoints"]["counterfactual"], device="cpu").state_dict()
    for name, tensor in load_checkpoint(summary["checkpoints"]["counterfactual"])["predictors"].items():
        assert torch.equal(predictors[name], tensor), name


def test_resuming_with_another_snapshot_than_the_checkpoints_is_refused_and_writes_nothing(tmp_path):
    config = RunConfig(preset="test-32", seed=3, steps=STEPS)
    splits = {"train": synthetic_split(24, 0), "valid": synthetic_split(8, 1)}
    snapshot = tiny_preset(checkpoint_every=2)
    with pytest.raises(StageStopped):
        train(config, snapshot, splits, tmp_path, progress=interrupt_at("hvae", 2))
    files = {path: path.stat().st_mtime_ns for path in tmp_path.iterdir()}

    with pytest.raises(SnapshotMismatch, match=r"run\.json .*lr: 0\.002 there, 0\.01 in the run"):
        train(config, dataclasses.replace(snapshot, lr=0.01), splits, tmp_path, resume=True)
    assert {path: path.stat().st_mtime_ns for path in tmp_path.iterdir()} == files


def test_a_partial_checkpoint_of_another_snapshot_is_refused_before_any_stage_is_recorded(tmp_path):
    config = RunConfig(preset="test-32", seed=3, steps={**STEPS, "parents": 6})
    splits = {"train": synthetic_split(24, 0), "valid": synthetic_split(8, 1)}
    snapshot = tiny_preset(checkpoint_every=2)
    with pytest.raises(StageStopped):
        train(config, snapshot, splits, tmp_path, progress=interrupt_at("parents", 4))
    assert not (tmp_path / "run.json").exists()

    with pytest.raises(SnapshotMismatch, match=r"parents\.partial\.pt .*parents_lr"):
        train(config, dataclasses.replace(snapshot, parents_lr=0.5), splits, tmp_path, resume=True)


def test_a_snapshot_stored_before_a_field_existed_reads_as_its_default():
    snapshot = get_preset("test-32").to_dict()
    older = {key: value for key, value in snapshot.items() if key != "select_final"}
    require_same_snapshot(snapshot, older, "an older checkpoint")
    require_same_snapshot(snapshot, None, "a run folder with no stage recorded yet")
    with pytest.raises(SnapshotMismatch, match="select_final: False there, True in the run"):
        require_same_snapshot({**snapshot, "select_final": True}, older, "an older checkpoint")


def test_the_run_configuration_and_the_snapshot_must_name_the_same_preset(tmp_path):
    splits = {"train": synthetic_split(24, 0), "valid": synthetic_split(8, 1)}
    with pytest.raises(ValueError, match="names preset 'cpu-64', the snapshot is of 'test-32'"):
        train(RunConfig(preset="cpu-64", steps=STEPS), tiny_preset(), splits, tmp_path)
    assert not any(tmp_path.iterdir())

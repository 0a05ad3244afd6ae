"""`train_generator` records a TrainingRun stage by stage; resume, failure and background jobs behave."""

import hashlib
import io
import json

import pytest
from django.core.management import CommandError, call_command

from generator.models import Dataset, TrainingRun
from generator.services import runs, training
from generator.services.requests import TrainingRequest
from generator.training import pipeline
from generator.training.checkpoint import load_checkpoint
from jobs import runner
from jobs.models import Job

pytestmark = pytest.mark.django_db
TINY_STEPS = 2


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.ml
def test_command_trains_every_stage_and_records_checkpoints_config_and_code_version(artifacts, phantom_dataset):
    dataset = phantom_dataset
    err = io.StringIO()
    call_command(
        "train_generator",
        "--dataset", dataset.name, "--preset", "test-32", "--steps", str(TINY_STEPS), "--seed", "5", "--name", "tiny",
        stdout=io.StringIO(), stderr=err,
    )  # fmt: skip
    run = TrainingRun.objects.get(name="tiny")
    assert run.status == TrainingRun.Status.SUCCEEDED and run.stage == "done" and run.error == ""
    assert set(pipeline.STAGES) <= set(run.checkpoints)
    assert run.checkpoints["final"] == run.checkpoints["counterfactual"]
    for stage in pipeline.STAGES:
        path = run.checkpoints[stage]
        assert path.startswith(str(artifacts / "runs" / "tiny"))
        meta = load_checkpoint(path)["meta"]
        assert meta["complete"] is True and meta["seed"] == 5 and meta["preset"]["name"] == "test-32"
        assert meta["step"] == TINY_STEPS
    assert run.config["run"]["seed"] == 5 and run.config["run"]["steps"] == dict.fromkeys(pipeline.STAGES, 2)
    assert run.config["preset"]["name"] == "test-32" and run.config["preset"]["resolution"] == 32
    assert run.code_version == load_checkpoint(run.checkpoints["final"])["meta"]["code_version"] != ""
    assert set(pipeline.STAGES) <= set(run.history)
    manifest = json.loads((artifacts / "runs" / "tiny" / "run.json").read_text())
    assert set(manifest["stages"]) == set(pipeline.STAGES)
    # one progress bar per stage, in order
    output = err.getvalue()
    positions = [output.index(stage) for stage in ("data", "parents", "predictors", "hvae", "counterfactual")]
    assert positions == sorted(positions)


class Interrupt(Exception):
    pass


@pytest.mark.ml
def test_interrupted_run_keeps_only_completed_stages_and_resume_finishes_it(artifacts, phantom_dataset):
    dataset = phantom_dataset
    run = runs.create_training_run(dataset, "baseline", "test-32", seed=1, name="stopped", steps=TINY_STEPS)

    def stop_in_hvae(stage, fraction, message):
        if stage == "hvae" and fraction > 0:
            raise Interrupt("stopped by the test")

    with pytest.raises(Interrupt):
        training.run_training(TrainingRequest(run.name), progress=stop_in_hvae)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and "stopped by the test" in run.error
    assert set(run.checkpoints) == {"parents", "predictors"}
    parents_digest = digest(run.checkpoints["parents"])

    with pytest.raises(CommandError, match="already exists"):
        call_command("train_generator", "--dataset", dataset.name, "--name", "stopped", "--preset", "test-32")
    with pytest.raises(ValueError, match="resume it instead"):
        training.run_training(TrainingRequest(run.name))
    call_command("train_generator", "--resume", "--name", "stopped", stdout=io.StringIO(), stderr=io.StringIO())
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED and run.error == ""
    assert set(pipeline.STAGES) <= set(run.checkpoints)
    # the completed stage was kept, not trained again
    assert digest(run.checkpoints["parents"]) == parents_digest


def test_missing_data_set_folder_fails_the_run_clearly_without_checkpoints(artifacts, tmp_path):
    missing = tmp_path / "no-such-folder"
    dataset = Dataset.objects.create(name="broken-nih", kind="nih", root=str(missing), resolution=32)
    with pytest.raises(CommandError) as failure:
        call_command(
            "train_generator", "--dataset", "broken-nih", "--preset", "test-32", "--name", "broken",
            stdout=io.StringIO(), stderr=io.StringIO(),
        )  # fmt: skip
    assert "broken-nih" in str(failure.value) and str(missing) in str(failure.value)
    run = TrainingRun.objects.get(name="broken")
    assert run.status == TrainingRun.Status.FAILED
    assert "broken-nih" in run.error and str(missing) in run.error
    assert run.checkpoints == {}
    assert not (artifacts / "runs" / "broken" / "run.json").exists()
    assert run.dataset == dataset


def test_corrupt_labels_fail_the_run_naming_the_file(artifacts, tmp_path):
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    (root / "Data_Entry_2017.csv").write_text("this is not,the NIH table\n1,2\n")
    Dataset.objects.create(name="corrupt-nih", kind="nih", root=str(root), resolution=32)
    with pytest.raises(CommandError, match="corrupt-nih"):
        call_command(
            "train_generator", "--dataset", "corrupt-nih", "--preset", "test-32", "--name", "corrupt",
            stdout=io.StringIO(), stderr=io.StringIO(),
        )  # fmt: skip
    run = TrainingRun.objects.get(name="corrupt")
    assert run.status == TrainingRun.Status.FAILED and "Data_Entry_2017.csv" in run.error
    assert run.checkpoints == {}


def test_bad_arguments_are_refused_before_a_run_is_created(artifacts, phantom_dataset):
    with pytest.raises(CommandError, match="no data set named 'nope'"):
        call_command("train_generator", "--dataset", "nope", "--preset", "test-32")
    with pytest.raises(CommandError, match="unknown preset"):
        call_command("train_generator", "--dataset", "phantom-tiny", "--preset", "huge-512")
    with pytest.raises(CommandError, match="steps"):
        call_command("train_generator", "--dataset", "phantom-tiny", "--preset", "test-32", "--steps", "hvea=3")
    assert TrainingRun.objects.count() == 0


@pytest.mark.ml
def test_background_queues_a_job_that_trains_the_run(artifacts, phantom_dataset):
    out = io.StringIO()
    call_command(
        "train_generator", "--dataset", "phantom-tiny", "--preset", "test-32", "--steps", "1", "--name", "queued",
        "--background", stdout=out,
    )  # fmt: skip
    run = TrainingRun.objects.get(name="queued")
    job = Job.objects.get(kind="train_generator")
    assert str(job.pk) in out.getvalue()
    assert job.status == Job.Status.QUEUED and job.params == {"run": run.name, "resume": False}
    assert run.job == job and run.status == TrainingRun.Status.CREATED and run.checkpoints == {}

    runner.execute(str(job.pk))
    job.refresh_from_db()
    run.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.progress == 100 and job.result["run"] == "queued"
    assert run.status == TrainingRun.Status.SUCCEEDED and set(pipeline.STAGES) <= set(run.checkpoints)
    assert job.result["checkpoints"]["final"] == run.checkpoints["final"]


def test_create_only_records_the_run_for_a_later_torchrun_resume(artifacts, phantom_dataset):
    out = io.StringIO()
    call_command(
        "train_generator", "--dataset", "phantom-tiny", "--preset", "paper-192", "--name", "gpu-run", "--create-only",
        stdout=out,
    )  # fmt: skip
    run = TrainingRun.objects.get(name="gpu-run")
    assert run.status == TrainingRun.Status.CREATED and run.config["preset"]["resolution"] == 192
    assert "--name gpu-run --resume" in out.getvalue()
    assert not Job.objects.exists() and not (artifacts / "runs" / "gpu-run").exists()

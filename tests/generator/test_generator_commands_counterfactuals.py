"""`generate_counterfactuals` writes 8-bit PNGs at the model resolution and a manifest that traces every image."""

import io
import json

import numpy as np
import pytest
import torch
from django.core.management import CommandError, call_command
from PIL import Image

from generator.causal.production import to_png
from generator.data import load_splits
from generator.services import runs
from generator.training import pipeline
from generator.training.checkpoint import load_checkpoint
from generator.training.expert import load_expert, train_expert
from jobs import runner
from jobs.models import Job

pytestmark = [pytest.mark.django_db, pytest.mark.ml]


@pytest.fixture
def splits(phantom_dataset):
    return load_splits("phantom", phantom_dataset.root, 32, phantom_dataset.options)


@pytest.fixture
def tiny_expert(splits, tmp_path):
    path = tmp_path / "expert.pt"
    train_expert(splits["train"], splits["valid"], path, steps=2, batch_size=16)
    return path


def expected_png(model, x, pa, do, seed):
    """The counterfactual the manifest's seed promises, computed here directly, as 8-bit pixels."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        cf = model.counterfactual(x[None], {k: v[None] for k, v in pa.items()}, do, samples=1, generator=generator)
    return ((cf.x_cf[0, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy(), cf.x_cf


def test_dataset_ids_under_two_interventions_give_traceable_pngs(finished_run, splits, tiny_expert, tmp_path):
    run = finished_run()
    test = splits["test"]
    ids = test.ids[:2]
    out = tmp_path / "cfs"
    call_command(
        "generate_counterfactuals", run.name, "--ids", *ids, "--do", "disease=healthy", "--do", "disease=pneumonia",
        "--seed", "10", "--out", str(out), "--expert", str(tiny_expert), stdout=io.StringIO(), stderr=io.StringIO(),
    )  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"] == run.name and manifest["run_id"] == str(run.pk)
    assert manifest["checkpoint"] == run.checkpoints["final"]
    assert manifest["preset"] == "test-32" and manifest["seed"] == 3
    assert manifest["code_version"] == load_checkpoint(run.checkpoints["final"])["meta"]["code_version"]
    items = manifest["items"]
    assert [(i["source_id"], i["intervention"]) for i in items] == [
        (ids[0], {"disease": "healthy"}),
        (ids[0], {"disease": "pneumonia"}),
        (ids[1], {"disease": "healthy"}),
        (ids[1], {"disease": "pneumonia"}),
    ]
    assert [i["seed"] for i in items] == [10, 11, 12, 13]
    assert len({i["file"] for i in items}) == 4

    model = pipeline.load_model(run.checkpoints["final"], device="cpu")
    expert = load_expert(str(tiny_expert))
    for item in items:
        index = test.ids.index(item["source_id"])
        image = Image.open(out / item["file"])
        assert image.mode == "L" and image.size == (32, 32)
        pixels, x_cf = expected_png(
            model, test.x[index], {k: v[index] for k, v in test.pa.items()}, item["intervention"], item["seed"]
        )
        assert np.array_equal(np.asarray(image), pixels)
        assert item["counterfactual_parents"]["disease"] == item["intervention"]["disease"]
        assert item["parents"]["disease"] == test.graph["disease"].categories[int(test.pa["disease"][index])]
        with torch.no_grad():
            probabilities = expert.probabilities(x_cf.clamp(-1, 1))
        for name in ("Effusion", "Pneumonia", "No Finding"):
            assert item["expert_probabilities"][name] == pytest.approx(float(probabilities[name][0]), abs=1e-4)


def test_image_files_are_resized_and_their_parents_read_by_the_run_predictors(finished_run, splits, tmp_path):
    run = finished_run()
    source = tmp_path / "scan.png"
    to_png(torch.nn.functional.interpolate(splits["test"].x[:1], size=64, mode="bilinear")[0], source)
    out = tmp_path / "from-files"
    call_command(
        "generate_counterfactuals", run.name, "--images", str(source), "--do", "disease=effusion", "--out", str(out),
        stdout=io.StringIO(), stderr=io.StringIO(),
    )  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    (item,) = manifest["items"]
    assert item["source_id"] == "scan.png" and item["source_image"] == str(source.resolve())
    assert item["parents_source"] == "predicted" and set(item["parents"]) == set(splits["test"].graph.names)
    assert Image.open(out / item["file"]).size == (32, 32)


def test_unknown_ids_and_impossible_interventions_are_refused_without_output(finished_run, tmp_path):
    run = finished_run()
    out = tmp_path / "nothing"
    with pytest.raises(CommandError, match="no image with id not-an-id"):
        call_command("generate_counterfactuals", run.name, "--ids", "not-an-id", "--do", "disease=healthy",
                     "--out", str(out), stderr=io.StringIO())  # fmt: skip
    with pytest.raises(CommandError, match="choose one of healthy, effusion, pneumonia"):
        call_command("generate_counterfactuals", run.name, "--ids", "x", "--do", "disease=flu", "--out", str(out))
    with pytest.raises(CommandError, match="only age, sex, race, wcc, disease"):
        call_command("generate_counterfactuals", run.name, "--ids", "x", "--do", "colour=red", "--out", str(out))
    with pytest.raises(CommandError, match="no checkpoint 'round-2'"):
        call_command("generate_counterfactuals", run.name, "--ids", "x", "--do", "disease=healthy",
                     "--checkpoint", "round-2")  # fmt: skip
    assert not out.exists()


def test_background_generation_runs_as_a_job(finished_run, splits, tmp_path):
    run = finished_run()
    out = tmp_path / "queued"
    stdout = io.StringIO()
    call_command("generate_counterfactuals", run.name, "--ids", splits["test"].ids[0], "--do", "disease=healthy",
                 "--out", str(out), "--background", stdout=stdout)  # fmt: skip
    job = Job.objects.get(kind="generate_counterfactuals")
    assert str(job.pk) in stdout.getvalue() and job.status == Job.Status.QUEUED
    assert not out.exists()
    runner.execute(str(job.pk))
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.result["manifest"] == str(out / "manifest.json") and job.result["items"] == 1
    assert len(json.loads((out / "manifest.json").read_text())["items"]) == 1


def test_an_unfinished_run_cannot_generate(artifacts, phantom_dataset):
    run = runs.create_training_run(phantom_dataset, "baseline", "test-32", name="not-trained")
    with pytest.raises(CommandError, match="has not finished training"):
        call_command("generate_counterfactuals", run.name, "--ids", "x", "--do", "disease=healthy")

"""`evaluate_generator` stores metrics on the run and writes JSON/CSV/Markdown reports; --compare tabulates runs."""

import csv
import io
import json

import pytest
from django.core.management import CommandError, call_command

from generator.data import load_splits
from generator.models import TrainingRun
from generator.services import evaluation, reports, runs
from jobs import runner
from jobs.models import Job
from tests.generator.test_evaluation_figures import al_record

pytestmark = [pytest.mark.django_db, pytest.mark.ml]


@pytest.fixture
def judges(phantom_dataset):
    """The shared evaluation predictors and expert, trained tiny so the tests stay short (then reused from disk)."""
    splits = load_splits("phantom", phantom_dataset.root, 32, phantom_dataset.options)
    return evaluation.evaluation_assets(phantom_dataset, splits, 32, expert_steps=2, predictor_epochs=1)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_evaluation_stores_metrics_and_writes_reports(finished_run, judges, artifacts, tmp_path):
    run = finished_run()
    json_path = tmp_path / "results.json"
    stdout = io.StringIO()
    figures = tmp_path / "figures"
    call_command("evaluate_generator", run.name, "--n", "6", "--seed", "4", "--n-boot", "20",
                 "--json", str(json_path), "--figures", str(figures), stdout=stdout, stderr=io.StringIO())  # fmt: skip
    run.refresh_from_db()
    assert list(run.metrics) == ["counterfactual"]
    results = run.metrics["counterfactual"]
    assert results["n"] == 6 and results["seed"] == 4 and results["run"] == run.name
    assert results["checkpoint_path"] == run.checkpoints["final"]
    assert results["expert"] == str(artifacts / "evaluation" / "phantom-tiny-32px" / "expert.pt")
    for block in ("effectiveness", "composition", "reversibility", "true_counterfactual_error"):
        assert results[block], block
    accuracy = results["effectiveness"]["evaluation_predictors"]["disease"]["accuracy"]
    assert 0 <= accuracy["mean"] <= 1 and accuracy["n"] == 6
    assert json.loads(json_path.read_text()) == {"counterfactual": results}
    assert len(list((figures / "counterfactual").glob("counterfactuals_*.png"))) == 4
    assert not (figures / "forgetting_histograms.png").exists()  # a baseline run has no active learning

    folder = artifacts / "runs" / run.name / "evaluation" / "counterfactual"
    (row,) = read_csv(folder / "report.csv")
    assert row["model"] == f"Baseline ({run.name})"
    assert float(row["composition_ssim"]) == pytest.approx(results["composition"]["repeats_1"]["ssim"]["mean"])
    assert json.loads((folder / "report.json").read_text())["results"][row["model"]] == results
    assert "| Model |" in (folder / "report.md").read_text()
    assert "Effectiveness (disease, AUROC)" in stdout.getvalue()
    # the admin shows the same figures
    (admin_row,) = reports.metrics_rows(run)
    assert admin_row["Model"] == row["model"]


def test_evaluating_an_active_learning_run_draws_its_forgetting_histograms(finished_run, judges, tmp_path):
    run = finished_run("ours", variant="expert-al")
    folder = runs.run_directory(run)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "active_learning.json").write_text(json.dumps(al_record()))
    figures = tmp_path / "figures"
    call_command("evaluate_generator", run.name, "--n", "6", "--n-boot", "20", "--figures", str(figures),
                 stdout=io.StringIO(), stderr=io.StringIO())  # fmt: skip
    assert (figures / "forgetting_histograms.png").stat().st_size > 1000
    assert len(list((figures / "counterfactual").glob("counterfactuals_*.png"))) == 4


def test_background_evaluation_then_compare_writes_one_row_per_evaluated_checkpoint(finished_run, judges, tmp_path):
    baseline, proposed = finished_run("base"), finished_run("ours", variant="expert-al")
    stdout = io.StringIO()
    call_command("evaluate_generator", "base", "--n", "6", "--n-boot", "20", "--background", stdout=stdout)
    job = Job.objects.get(kind="evaluate_generator")
    assert str(job.pk) in stdout.getvalue() and job.params["runs"] == ["base"]
    assert job.status == Job.Status.QUEUED
    runner.execute(str(job.pk))
    job.refresh_from_db()
    baseline.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.result == {"evaluated": {"base": ["counterfactual"]}}
    assert baseline.metrics["counterfactual"]["n"] == 6

    # the proposed run's AL rounds, evaluated elsewhere: stored results are what --compare reads
    TrainingRun.objects.filter(pk=proposed.pk).update(
        metrics={"round-1": baseline.metrics["counterfactual"], "round-2": baseline.metrics["counterfactual"]}
    )
    out = tmp_path / "table"
    call_command("evaluate_generator", "--compare", "base", "ours", "--out", str(out), stdout=io.StringIO())
    rows = read_csv(out / "comparison.csv")
    assert [r["model"] for r in rows] == ["Baseline (base)", "Ours+10% (ours)", "Ours+20% (ours)"]
    assert len({r["reversibility_ssim"] for r in rows}) == 1
    document = json.loads((out / "comparison.json").read_text())
    assert [r["model"] for r in document["rows"]] == [r["model"] for r in rows]
    assert (out / "comparison.md").read_text().count("(ours)") >= 2


def test_evaluation_refuses_unknown_runs_and_checkpoints(finished_run):
    run = finished_run()
    with pytest.raises(CommandError, match="no training run named 'missing'"):
        call_command("evaluate_generator", "missing")
    with pytest.raises(CommandError, match="no checkpoint 'round-9'"):
        call_command("evaluate_generator", run.name, "--checkpoint", "round-9")
    with pytest.raises(CommandError, match="either a RUN"):
        call_command("evaluate_generator")

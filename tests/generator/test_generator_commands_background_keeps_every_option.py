"""Every option of a generator command that can run in the background reaches the job: the request a queued job
rebuilds from its stored parameters is the request the command hands the service in the foreground, and every
option changes that request. The options are read from each command's parser, so an option added without its
plumbing fails here."""

import io
from types import SimpleNamespace

import pytest
from django.core.management import call_command, load_command_class

from generator.models import Dataset, TrainingRun
from generator.services import counterfactuals, evaluation, runs, training
from generator.services.requests import CounterfactualRequest, EvaluationRequest
from jobs.models import Job

pytestmark = pytest.mark.django_db

# Django's own options of every command, and the switch under test.
COMMON_OPTIONS = {
    "help",
    "version",
    "verbosity",
    "settings",
    "pythonpath",
    "traceback",
    "no_color",
    "force_color",
    "skip_checks",
    "background",
}

# option -> (arguments without it, the same arguments with it)
COUNTERFACTUAL_BASE = ["r1", "--ids", "a", "--do", "disease=healthy"]
COUNTERFACTUAL_CASES = {
    "run": (COUNTERFACTUAL_BASE, ["r2", "--ids", "a", "--do", "disease=healthy"]),
    "dataset": (COUNTERFACTUAL_BASE, [*COUNTERFACTUAL_BASE, "--dataset", "d2"]),
    "ids": (COUNTERFACTUAL_BASE, ["r1", "--ids", "a", "b", "--do", "disease=healthy"]),
    "images": (
        ["r1", "--ids", "a.png", "--do", "disease=healthy"],
        ["r1", "--images", "a.png", "--do", "disease=healthy"],
    ),
    "do": (COUNTERFACTUAL_BASE, [*COUNTERFACTUAL_BASE, "--do", "age=70"]),
    "samples": (COUNTERFACTUAL_BASE, [*COUNTERFACTUAL_BASE, "--samples", "3"]),
    "out": (COUNTERFACTUAL_BASE, [*COUNTERFACTUAL_BASE, "--out", "elsewhere"]),
    "checkpoint": (COUNTERFACTUAL_BASE, [*COUNTERFACTUAL_BASE, "--checkpoint", "round-2"]),
    "seed": (COUNTERFACTUAL_BASE, [*COUNTERFACTUAL_BASE, "--seed", "9"]),
    "expert": (COUNTERFACTUAL_BASE, [*COUNTERFACTUAL_BASE, "--expert", "judge.pt"]),
}

EVALUATION_CASES = {
    "run": (["r1"], ["r2"]),
    "checkpoint": (["r1"], ["r1", "--checkpoint", "all"]),
    "n": (["r1"], ["r1", "--n", "12"]),
    "seed": (["r1"], ["r1", "--seed", "4"]),
    "n_boot": (["r1"], ["r1", "--n-boot", "30"]),
    "json": (["r1"], ["r1", "--json", "results.json"]),
    "figures": (["r1"], ["r1", "--figures", "figures"]),
    "expert": (["r1"], ["r1", "--expert", "judge.pt"]),
    "compare": (["r1"], ["--compare", "r1", "r2"]),
    "out": (["--compare", "r1", "r2"], ["--compare", "r1", "r2", "--out", "table"]),
}

TRAINING_BASE = ["--dataset", "d1", "--preset", "test-32", "--name", "new"]
TRAINING_CASES = {
    "dataset": (TRAINING_BASE, [*TRAINING_BASE, "--dataset", "d2"]),
    "variant": (TRAINING_BASE, [*TRAINING_BASE, "--variant", "expert-al"]),
    "preset": (TRAINING_BASE, [*TRAINING_BASE, "--preset", "cpu-64"]),
    "steps": (TRAINING_BASE, [*TRAINING_BASE, "--steps", "hvae=7"]),
    "budget": (TRAINING_BASE, [*TRAINING_BASE, "--budget", "60"]),
    "seed": (TRAINING_BASE, [*TRAINING_BASE, "--seed", "5"]),
    "name": (TRAINING_BASE, [*TRAINING_BASE, "--name", "other"]),
    "resume": (TRAINING_BASE, ["--name", "r1", "--resume"]),
    "al_rounds": (TRAINING_BASE, [*TRAINING_BASE, "--al-rounds", "2"]),
    "al_fraction": (TRAINING_BASE, [*TRAINING_BASE, "--al-fraction", "0.3"]),
}
# Options that never reach a job, and why.
NOT_FOR_JOBS = {"train_generator": {"create_only"}}


@pytest.fixture
def recorded_runs(settings, tmp_path):
    settings.ARTIFACTS_ROOT = tmp_path / "artifacts"
    datasets = [
        Dataset.objects.create(name=name, kind="phantom", root=str(tmp_path / name), resolution=32)
        for name in ("d1", "d2")
    ]
    return [runs.create_training_run(datasets[0], "baseline", "test-32", name=name) for name in ("r1", "r2")]


def command_options(name):
    parser = load_command_class("generator", name).create_parser("manage.py", name)
    return {action.dest for action in parser._actions} - COMMON_OPTIONS - NOT_FOR_JOBS.get(name, set())


def queued_params(command, argv):
    Job.objects.all().delete()
    call_command(command, *argv, "--background", stdout=io.StringIO(), stderr=io.StringIO())
    return Job.objects.get(kind=command).params


def counterfactual_trip(monkeypatch, argv):
    handed = []
    monkeypatch.setattr(
        counterfactuals,
        "generate_counterfactuals",
        lambda request, progress=None: handed.append(request) or ("folder", {"items": []}),
    )
    call_command("generate_counterfactuals", *argv, stdout=io.StringIO(), stderr=io.StringIO())
    return handed[0], CounterfactualRequest.from_params(queued_params("generate_counterfactuals", argv))


def evaluation_trip(monkeypatch, argv, tmp_path):
    handed = []
    table = tmp_path / "comparison.md"
    table.write_text("table")

    def evaluate(request, progress=None):
        handed.append(request)
        evaluated = {name: {} for name in request.runs}
        return {"evaluated": evaluated, "comparison": {"markdown": str(table)} if request.compare else None}

    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    call_command("evaluate_generator", *argv, stdout=io.StringIO(), stderr=io.StringIO())
    return handed[0], EvaluationRequest.from_params(queued_params("evaluate_generator", argv))


def training_trip(monkeypatch, argv):
    """(what the foreground trains, what the queued job trains): the request and the configuration stored on the
    run it names."""

    def trained(request_params):
        run = TrainingRun.objects.get(name=request_params["run"])
        stored = (run.dataset.name, run.variant, run.preset, run.seed, run.config)
        TrainingRun.objects.exclude(name__in=("r1", "r2")).delete()
        return request_params, stored

    handed = []
    finished = SimpleNamespace(name="", checkpoints={"final": "final.pt"}, training_warning="")
    monkeypatch.setattr(training, "run_training", lambda request, progress=None: handed.append(request) or finished)
    call_command("train_generator", *argv, stdout=io.StringIO(), stderr=io.StringIO())
    foreground = trained(handed[0].to_params())
    return foreground, trained(queued_params("train_generator", argv))


@pytest.mark.parametrize(
    ("command", "cases"),
    [
        ("generate_counterfactuals", COUNTERFACTUAL_CASES),
        ("evaluate_generator", EVALUATION_CASES),
        ("train_generator", TRAINING_CASES),
    ],
)
def test_every_option_of_the_command_has_a_case_here(command, cases):
    assert set(cases) == command_options(command)


@pytest.mark.parametrize("option", sorted(COUNTERFACTUAL_CASES))
def test_counterfactual_options_survive_the_background(recorded_runs, monkeypatch, option):
    without, with_option = COUNTERFACTUAL_CASES[option]
    foreground, background = counterfactual_trip(monkeypatch, with_option)
    assert background == foreground
    assert counterfactual_trip(monkeypatch, without)[0] != foreground


@pytest.mark.parametrize("option", sorted(EVALUATION_CASES))
def test_evaluation_options_survive_the_background(recorded_runs, monkeypatch, tmp_path, option):
    without, with_option = EVALUATION_CASES[option]
    foreground, background = evaluation_trip(monkeypatch, with_option, tmp_path)
    assert background == foreground
    assert evaluation_trip(monkeypatch, without, tmp_path)[0] != foreground


@pytest.mark.parametrize("option", sorted(TRAINING_CASES))
def test_training_options_survive_the_background(recorded_runs, monkeypatch, option):
    without, with_option = TRAINING_CASES[option]
    foreground, background = training_trip(monkeypatch, with_option)
    assert background == foreground
    assert training_trip(monkeypatch, without)[0] != foreground

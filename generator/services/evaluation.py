"""Evaluation of training runs: the independent judges, the metrics stored on each run, reports and figures."""

import json
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from generator.data.phantom import PhantomSCM
from generator.evaluation.evaluate import disease_examples, evaluate_model
from generator.evaluation.figures import (
    plot_counterfactual_examples,
    plot_effectiveness_curve,
    plot_forgetting_histograms,
)
from generator.evaluation.predictors import EvaluationPredictors, train_eval_predictors
from generator.evaluation.report import write_report
from generator.models import TrainingRun
from generator.services.counterfactuals import PRETRAINED_EXPERT
from generator.services.reports import compare_runs, model_label
from generator.services.runs import (
    RunNotReady,
    find_run,
    jsonable,
    model_checkpoints,
    resolve_checkpoint,
    run_directory,
)
from generator.services.training import load_run_splits
from generator.training import pipeline
from generator.training.expert import load_expert, train_expert
from generator.training.proposed import read_summary, training_set_histograms

EVALUATION_SEED = 7919  # the independent evaluation predictors and expert never share a seed with a run
FID_BOOT = 200  # bootstrap resamples of FID (a matrix square root each), fewer than for the per-image figures


def evaluate(request, progress=None):
    """Carry out an EvaluationRequest: evaluate each run, or with `compare` the runs not evaluated yet and then write
    the side-by-side table. Returns {"evaluated": {run: {label: results}}, "comparison": {format: path} or None}."""
    runs = [find_run(name) for name in request.runs]
    to_evaluate = [run for run in runs if not (request.compare and run.metrics)]
    single = len(runs) == 1 and not request.compare
    report = progress or (lambda fraction, message: None)
    evaluated = {}
    for index, run in enumerate(to_evaluate):

        def run_progress(fraction, message, index=index, run=run):
            report((index + fraction) / len(to_evaluate), f"{run.name}: {message}")

        evaluated[run.name] = evaluate_run(run, request, single=single, progress=run_progress)
    comparison = None
    if request.compare:
        for run in runs:
            run.refresh_from_db()
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        out = request.compare_dir or Path(settings.ARTIFACTS_ROOT) / "comparisons" / stamp
        comparison = {name: str(path) for name, path in compare_runs(runs, out).items()}
    report(1.0, "evaluation done")
    return {"evaluated": evaluated, "comparison": comparison}


def evaluation_assets(dataset, splits, resolution, expert=None, expert_steps=400, predictor_epochs=8, progress=None):
    """The independent judges every run of a data set is evaluated with: (evaluation predictors, expert, name).

    Both are trained once per data set and resolution on real images with their own seed and kept under
    ARTIFACTS_ROOT/evaluation/, so runs evaluated at different times are compared by the same judges. The expert is
    an explicit one, else the pretrained TorchXrayVision DenseNet when on disk, else one trained here.
    """
    folder = Path(settings.ARTIFACTS_ROOT) / "evaluation" / f"{dataset.name}-{resolution}px"
    folder.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda fraction, message: None)
    predictors_path = folder / "evaluation-predictors.pt"
    if predictors_path.is_file():
        eval_predictors = EvaluationPredictors.load(predictors_path)
    else:
        eval_predictors = train_eval_predictors(
            splits["train"],
            splits["valid"],
            seed=EVALUATION_SEED,
            epochs=predictor_epochs,
            progress=lambda f, m: report(0.5 * f, m),
        )
        eval_predictors.save(predictors_path)
    expert_name = expert or PRETRAINED_EXPERT
    expert_model = load_expert(expert_name)
    if expert_model is None and expert:
        raise ValueError(f"expert {expert!r}: its weights are not on this machine")
    if expert_model is None:
        expert_name = str(folder / "expert.pt")
        if Path(expert_name).is_file():
            expert_model = load_expert(expert_name)
        else:
            expert_model, _ = train_expert(
                splits["train"],
                splits["valid"],
                expert_name,
                steps=expert_steps,
                seed=EVALUATION_SEED,
                progress=lambda stage, f, m: report(0.5 + 0.5 * f, f"evaluation {stage}: {m}"),
            )
    return eval_predictors, expert_model, expert_name


def evaluate_run(run, request, *, single=True, progress=None):
    """Evaluate one run's final model (or the request's checkpoint, or every model checkpoint with "all"); store the
    metrics on the run under the checkpoint's label and write report.json/.csv/.md into the run's evaluation/<label>/
    folder. With `single` (the request names this run alone) the request's JSON file and figures are written too.
    Returns {label: results}.
    """
    if request.checkpoint == "all":
        if run.status != TrainingRun.Status.SUCCEEDED:
            raise RunNotReady(f"run {run.name!r} has not finished training (status {run.status})")
        targets = sorted(model_checkpoints(run).items())
    else:
        targets = [resolve_checkpoint(run, request.checkpoint)]
    json_path = request.json_path if single else None
    figures_dir = Path(request.figures_dir) if single and request.figures_dir else None
    report = progress or (lambda fraction, message: None)
    first = pipeline.load_model(targets[0][1])
    splits = load_run_splits(run.dataset, first.resolution)
    eval_predictors, expert_model, expert_name = evaluation_assets(
        run.dataset,
        splits,
        first.resolution,
        expert=request.expert,
        expert_steps=request.expert_steps,
        predictor_epochs=request.predictor_epochs,
        progress=lambda f, m: report(0.2 * f, m),
    )
    training_predictors = pipeline.load_predictors(run.checkpoints["predictors"])
    phantom_scm = PhantomSCM(first.graph) if run.dataset.kind.startswith("phantom") else None
    device = next(first.parameters()).device
    eval_predictors.to(device)
    expert_model.to(device)

    results = {}
    for index, (label, path) in enumerate(targets):
        model = first if index == 0 else pipeline.load_model(path)
        evaluated = evaluate_model(
            model,
            splits,
            eval_predictors,
            expert=expert_model,
            training_predictors=training_predictors,
            n=request.n,
            seed=request.seed,
            phantom_scm=phantom_scm,
            n_boot=request.n_boot,
            fid_boot=min(FID_BOOT, request.n_boot),
            progress=lambda f, m, i=index, label=label: report(0.2 + 0.8 * (i + f) / len(targets), f"{label}: {m}"),
        )
        evaluated.update(
            run=run.name,
            variant=run.variant,
            checkpoint=label,
            checkpoint_path=str(path),
            expert=expert_name,
            evaluated_at=timezone.now().isoformat(),
        )
        results[label] = jsonable(evaluated)
        write_report({model_label(run, label): results[label]}, run_directory(run) / "evaluation" / label, "report")
        if figures_dir:
            write_figures(model, splits, expert_model, figures_dir / label, request.seed)

    with transaction.atomic():
        locked = TrainingRun.objects.select_for_update().get(pk=run.pk)
        locked.metrics = {**locked.metrics, **results}
        locked.save(update_fields=["metrics", "updated_at"])
    run.refresh_from_db()
    if figures_dir and run.variant == TrainingRun.Variant.EXPERT_AL:
        write_effectiveness_curve(run, figures_dir)
        write_forgetting_histograms(run, figures_dir)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2))
    return results


def write_figures(model, splits, expert_model, folder, seed, examples=4):
    """Per test image: observation, counterfactual under each disease, direct effect and uncertainty (PNG)."""
    test = splits["test"]
    rng = np.random.default_rng(seed)
    indices = sorted(rng.choice(len(test.x), size=min(examples, len(test.x)), replace=False).tolist())
    material = disease_examples(model, test, indices, expert=expert_model)
    return plot_counterfactual_examples(material, str(folder))


def write_effectiveness_curve(run, folder):
    """Fig. 4b for an active-learning run: disease effectiveness against the synthetic share of the training set."""
    fraction = run.config.get("run", {}).get("al_fraction", 0.1)
    points = []
    for label, results in run.metrics.items():
        share = 0.0 if label == "counterfactual" else fraction * int(label.split("-", 1)[1])
        auroc = ((results.get("effectiveness") or {}).get("evaluation_predictors") or {}).get("disease") or {}
        if auroc.get("auroc", {}).get("mean") is not None:
            points.append((share, auroc["auroc"]))
    if len(points) < 2:
        return None
    points.sort(key=lambda point: point[0])
    return plot_effectiveness_curve([p[0] for p in points], [p[1] for p in points], str(folder / "effectiveness.png"))


def write_forgetting_histograms(run, folder):
    """Fig. 4a for an active-learning run: forgetting-count distribution of the training set, before the first
    round and after each (from the run's active_learning.json); None when the run has no such record."""
    record = read_summary(run_directory(run))
    if not record or not record.get("rounds"):
        return None
    curves = training_set_histograms(record)
    labels = ["real data" if share == 0 else f"+{round(100 * share)}%" for share, _ in curves]
    histograms = [histogram for _, histogram in curves]
    return plot_forgetting_histograms(histograms, str(folder / "forgetting_histograms.png"), labels=labels)

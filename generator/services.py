"""Training runs of the generator: create, train, produce counterfactuals, evaluate.

Every state change of a TrainingRun happens here; management commands, background jobs and the admin only parse
their input and call one of these functions. The machine-learning work itself is done by the framework-free core
(generator.data, generator.training, generator.evaluation); this module adds the bookkeeping that makes every
checkpoint and every counterfactual image traceable to its run, preset, seed and code version.
"""

import json
import os
import re
import secrets
import uuid
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from generator.models import Dataset, TrainingRun
from generator.training.presets import get_preset

# The admin imports this module in the web process, which must not load PyTorch: NumPy, PyTorch, Pillow and the
# training core are imported inside the functions that train, generate or evaluate.

# A stored loss curve keeps at most this many points per stage (paper-192 logs tens of thousands).
HISTORY_POINTS = 500
EXPERT_PROBABILITY_NAMES = ("Effusion", "Pneumonia", "No Finding")
PRETRAINED_EXPERT = "densenet121-res224-all"
EVALUATION_SEED = 7919  # the independent evaluation predictors and expert never share a seed with a run
FID_BOOT = 200  # bootstrap resamples of FID (a matrix square root each), fewer than for the per-image figures


class RunNotReady(ValueError):
    """The run has no checkpoint that can answer the request (not trained yet, failed, or an unknown round)."""


def run_directory(run):
    """Where a run's checkpoints, counterfactuals and reports live."""
    return Path(settings.ARTIFACTS_ROOT) / "runs" / run.name


# --- creating and training a run ------------------------------------------------------------------------------------


def parse_steps(value):
    """`--steps 200` (every stage) or `--steps hvae=2000,counterfactual=500` -> {stage: steps}."""
    from generator.training import pipeline

    if value in (None, "", {}):
        return {}
    if isinstance(value, dict):
        return {str(k): int(v) for k, v in value.items()}
    text = str(value).strip()
    if text.isdigit():
        return {stage: int(text) for stage in pipeline.STAGES}
    steps = {}
    for part in text.split(","):
        stage, _, number = part.partition("=")
        if stage.strip() not in pipeline.STAGES or not number.strip().isdigit():
            raise ValueError(f"steps {value!r}: expected N or stage=N,... with stages {', '.join(pipeline.STAGES)}")
        steps[stage.strip()] = int(number)
    return steps


def create_training_run(
    dataset,
    variant="baseline",
    preset="cpu-64",
    *,
    seed=0,
    name=None,
    steps=None,
    budget=None,
    al_rounds=3,
    al_fraction=0.1,
):
    """A new TrainingRun (status created) with its full configuration; nothing is trained yet.

    `steps` is N (every stage) or {stage: N}; `budget` a wall-clock limit in seconds shared by the stages.
    """
    from generator.training import pipeline
    from generator.training.checkpoint import code_version

    try:
        preset_settings = get_preset(preset)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    if al_rounds < 0 or not 0 <= al_fraction <= 1:
        raise ValueError("al_rounds must be >= 0 and al_fraction between 0 and 1")
    config = pipeline.RunConfig(
        preset=preset,
        variant=variant,
        seed=int(seed),
        steps=parse_steps(steps),
        time_budget_s=float(budget) if budget else None,
        al_rounds=int(al_rounds),
        al_fraction=float(al_fraction),
    )
    name = name or f"{dataset.name}-{variant}-{preset}-s{seed}-{secrets.token_hex(2)}"
    if not re.fullmatch(r"[-a-zA-Z0-9_]+", name) or len(name) > 100:
        raise ValueError(f"run name {name!r}: use at most 100 letters, digits, '-' or '_'")
    if TrainingRun.objects.filter(name=name).exists():
        raise ValueError(f"a training run named {name!r} already exists (use --resume to continue it)")
    if run_directory(TrainingRun(name=name)).exists():
        raise ValueError(f"{run_directory(TrainingRun(name=name))} already exists; choose another run name")
    return TrainingRun.objects.create(
        name=name,
        dataset=dataset,
        variant=variant,
        preset=preset,
        seed=int(seed),
        config={"run": config.to_dict(), "preset": preset_settings.to_dict()},
        code_version=code_version(),
    )


def stage_plan(run):
    """The stages a run goes through, in order (progress bars and job percentages are built from it)."""
    from generator.training import pipeline

    plan = ["data"]
    if run.variant != TrainingRun.Variant.BASELINE:
        plan.append("expert")
    plan += list(pipeline.STAGES)
    if (run.config or {}).get("preset", {}).get("select_final"):
        plan.append("selection")
    if run.variant == TrainingRun.Variant.EXPERT_AL:
        plan.append("active-learning")
    return plan


def load_run_splits(dataset, resolution):
    """The train/valid/test splits of a registered data set at the model's resolution, or a clear error."""
    from generator.data.datasets import load_splits

    try:
        splits = load_splits(dataset.kind, dataset.root, resolution, dict(dataset.options or {}))
    except Exception as exc:
        raise ValueError(f"data set {dataset.name!r} ({dataset.kind} at {dataset.root}) cannot be read: {exc}") from exc
    missing = {"train", "valid", "test"} - set(splits)
    if missing:
        raise ValueError(f"data set {dataset.name!r}: the loader returned no {', '.join(sorted(missing))} split")
    return splits


def run_training(run, progress=None, resume=False):
    """Train (or resume) a run stage by stage; returns the run with status succeeded.

    `progress(stage, fraction, message)` is called as the stages advance (tqdm bars, job progress). On any error
    the run is marked failed with the error text, only stages whose checkpoint was completely written stay
    recorded, and the exception propagates. Under torchrun only rank 0 writes to the database (and to disk).
    """
    from generator.training.checkpoint import code_version

    out_dir = run_directory(run)
    if not is_main_process():
        _train(run, out_dir, progress, resume)
        return run
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if not resume and (run.checkpoints or (out_dir / "run.json").exists()):
            raise ValueError(f"run {run.name!r} has already trained stages in {out_dir}; resume it instead")
        run.status, run.error, run.stage = TrainingRun.Status.RUNNING, "", "data"
        run.code_version = code_version()
        run.save(update_fields=["status", "error", "stage", "code_version", "updated_at"])
    try:
        summary = _train(run, out_dir, _StageRecorder(run, out_dir, progress), resume)
    except BaseException as exc:
        _finish_failed(run, out_dir, exc)
        raise
    return _finish_succeeded(run, out_dir, summary)


def is_main_process():
    return int(os.environ.get("RANK", "0")) == 0


def _train(run, out_dir, progress, resume):
    from generator.training import pipeline
    from generator.training.trainer import apply_thread_policy

    progress = progress or (lambda stage, fraction, message="": None)
    threads = apply_thread_policy()
    progress("data", 0.0, f"{threads} torch thread(s), load {os.getloadavg()[0]:.1f}")
    progress("data", 0.0, f"loading data set {run.dataset.name}")
    config = pipeline.RunConfig.from_dict(run.config["run"])
    splits = load_run_splits(run.dataset, config.resolved_preset().resolution)
    progress("data", 1.0, ", ".join(f"{name} {len(split.x)}" for name, split in splits.items()))
    if run.variant == TrainingRun.Variant.BASELINE:
        return pipeline.train(config, splits, out_dir, progress=progress, resume=resume)
    from generator.training import proposed

    return proposed.run_proposed(config, splits, out_dir, progress=progress, resume=resume)


class _StageRecorder:
    """Progress callback: stores the current stage on the run and the checkpoints of completed stages."""

    def __init__(self, run, out_dir, forward):
        self.run, self.out_dir, self.forward = run, out_dir, forward
        self.stage = None

    def __call__(self, stage, fraction, message=""):
        if stage != self.stage:
            self.stage = stage
            TrainingRun.objects.filter(pk=self.run.pk).update(
                stage=stage, checkpoints=completed_checkpoints(self.out_dir), updated_at=timezone.now()
            )
        if self.forward is not None:
            self.forward(stage, fraction, message)


def completed_checkpoints(out_dir):
    """Stage -> checkpoint path of every stage the run manifest marks complete (never a partial file)."""
    from generator.training.checkpoint import read_manifest

    stages = read_manifest(out_dir).get("stages", {})
    return {stage: record["checkpoint"] for stage, record in stages.items() if Path(record["checkpoint"]).is_file()}


def _thin(history):
    import numpy as np

    if len(history) <= HISTORY_POINTS:
        return history
    keep = np.unique(np.linspace(0, len(history) - 1, HISTORY_POINTS).round().astype(int))
    return [history[i] for i in keep]


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _finish_succeeded(run, out_dir, summary):
    from generator.training.checkpoint import read_manifest

    checkpoints = completed_checkpoints(out_dir)
    checkpoints.update({k: str(v) for k, v in summary.get("checkpoints", {}).items()})
    checkpoints["final"] = str(summary["checkpoint"])
    history = {stage: _thin(points) for stage, points in summary.get("history", {}).items()}
    extra = {k: v for k, v in summary.items() if k not in ("history", "checkpoints", "checkpoint", "out_dir")}
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.SUCCEEDED,
        stage="done",
        code_version=read_manifest(out_dir).get("code_version", run.code_version),
        history=_jsonable({**history, "summary": extra}),
        under_trained=_jsonable(summary.get("under_trained", {})),
        checkpoints=checkpoints,
        error="",
        updated_at=timezone.now(),
    )
    run.refresh_from_db()
    return run


def _finish_failed(run, out_dir, exc):
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.FAILED,
        error=message,
        checkpoints=completed_checkpoints(out_dir),
        updated_at=timezone.now(),
    )


def fail_runs_of_jobs(job_ids):
    """Mark the running training runs of these (lost) jobs failed, keeping only completely written checkpoints."""
    for run in TrainingRun.objects.filter(job_id__in=job_ids, status=TrainingRun.Status.RUNNING):
        _finish_failed(run, run_directory(run), RuntimeError("the worker running this training was lost"))


def start_training_job(run, resume=False):
    """Queue the training of `run` as a background Job and link the job to the run."""
    import generator.tasks  # noqa: F401  (registers the job kinds)
    from studyplatform import jobs

    if run.job is not None and not run.job.is_finished:
        raise RunNotReady(f"run {run.name!r} already has an unfinished job {run.job.pk}")
    job = jobs.enqueue("train_generator", run_id=str(run.pk), resume=bool(resume))
    TrainingRun.objects.filter(pk=run.pk).update(job=job, updated_at=timezone.now())
    run.job = job
    return job


# --- checkpoints of a finished run ----------------------------------------------------------------------------------


def model_checkpoints(run):
    """Label -> path of every checkpoint that holds a full counterfactual model (the final stage and AL rounds)."""
    return {
        label: path
        for label, path in run.checkpoints.items()
        if label == "counterfactual" or label.startswith("round-")
    }


def resolve_checkpoint(run, checkpoint=None):
    """(label, path) of the requested checkpoint: None -> the run's final model, 'round-2' -> that AL round."""
    if checkpoint is None:
        if run.status != TrainingRun.Status.SUCCEEDED or "final" not in run.checkpoints:
            raise RunNotReady(f"run {run.name!r} has not finished training (status {run.status})")
        path = run.checkpoints["final"]
        label = next((k for k, v in model_checkpoints(run).items() if v == path), "final")
    elif checkpoint in model_checkpoints(run):
        label, path = checkpoint, run.checkpoints[checkpoint]
    else:
        available = ", ".join(sorted(model_checkpoints(run))) or "none"
        raise RunNotReady(f"run {run.name!r} has no checkpoint {checkpoint!r} (available: {available})")
    if not Path(path).is_file():
        raise RunNotReady(f"run {run.name!r}: checkpoint file {path} is missing")
    return label, path


# --- producing counterfactuals --------------------------------------------------------------------------------------


def parse_intervention(graph, spec):
    """`disease=healthy,age=70` (or a dict) -> {parent: value} with category names checked against the graph."""
    if isinstance(spec, str):
        pairs = [part.partition("=") for part in spec.split(",") if part.strip()]
        if not pairs or any(not sep or not value.strip() for _, sep, value in pairs):
            raise ValueError(f"intervention {spec!r}: expected parent=value[,parent=value]")
        spec = {name.strip(): value.strip() for name, _, value in pairs}
    intervention = {}
    for name, value in dict(spec).items():
        if name not in graph:
            raise ValueError(f"intervention on {name!r}: the graph has only {', '.join(graph.names)}")
        node = graph[name]
        if node.kind == "continuous":
            try:
                intervention[name] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"intervention {name}={value!r}: expected a number ({node.unit})") from None
        elif str(value) in node.categories:
            intervention[name] = str(value)
        else:
            raise ValueError(f"intervention {name}={value!r}: choose one of {', '.join(node.categories)}")
    if not intervention:
        raise ValueError("an intervention needs at least one parent=value")
    return intervention


def resolve_expert(run=None, expert=None):
    """(ExpertModel or None, description) used to annotate counterfactuals with expert probabilities.

    An explicit `expert` (xrv weights name or file) wins; otherwise the run's own expert (proposed variants), then
    the pretrained TorchXrayVision DenseNet when its weights are on disk.
    """
    from generator.training.expert import load_expert

    candidates = [expert] if expert else []
    if run is not None:
        candidates.append(str(run_directory(run) / "expert.pt"))
    candidates.append(PRETRAINED_EXPERT)
    for candidate in candidates:
        if candidate != expert and candidate.endswith(".pt") and not Path(candidate).is_file():
            continue
        try:
            loaded = load_expert(candidate)
        except (OSError, ValueError) as exc:
            raise ValueError(f"expert {candidate!r} cannot be loaded: {exc}") from exc
        if loaded is not None:
            return loaded, candidate
        if candidate == expert:
            raise ValueError(f"expert {expert!r}: its weights are not on this machine")
    return None, None


def _source_images(dataset, resolution, ids, image_files, predictors_path):
    """(x [N,1,H,W] in [-1,1], pa {name: Tensor[N]}, descriptions) of the requested real images."""
    import torch

    from generator.training import pipeline

    if bool(ids) == bool(image_files):
        raise ValueError("give either dataset image ids or image files, not both and not neither")
    if ids:
        splits = load_run_splits(dataset, resolution)
        where = {}
        for split in splits.values():
            paths = getattr(split, "paths", None)
            for row, image_id in enumerate(split.ids):
                where.setdefault(str(image_id), (split, row, str(paths[row]) if paths is not None else None))
        missing = [str(i) for i in ids if str(i) not in where]
        if missing:
            raise ValueError(f"data set {dataset.name!r} has no image with id {', '.join(missing[:5])}")
        chosen = [where[str(i)] for i in ids]
        x = torch.stack([split.x[row] for split, row, _ in chosen]).float()
        names = chosen[0][0].graph.names
        pa = {name: torch.stack([torch.as_tensor(split.pa[name][row]) for split, row, _ in chosen]) for name in names}
        sources = [
            {"source_id": str(i), "source_image": path or f"{dataset.root}#{i}", "parents_source": "data set"}
            for i, (_, _, path) in zip(ids, chosen)
        ]
        return x, pa, sources
    x = torch.stack([read_image_file(path, resolution) for path in image_files])
    predictors = pipeline.load_predictors(predictors_path, device="cpu")
    predicted = predictors.predict(x)
    pa = {}
    for node in predictors.graph.nodes:
        value = predicted[node.name]
        pa[node.name] = value.float() if node.kind == "continuous" else value.argmax(-1)
        if node.kind == "binary":
            pa[node.name] = pa[node.name].float()
    sources = [
        {"source_id": Path(p).name, "source_image": str(Path(p).resolve()), "parents_source": "predicted"}
        for p in image_files
    ]
    return x, pa, sources


def read_image_file(path, resolution):
    """A radiograph file as [1, H, W] in [-1, 1]: grayscale, centre-cropped to a square, resized to `resolution`."""
    import numpy as np
    import torch
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("F") if image.mode.startswith("I") else image.convert("L")
            array = np.asarray(image, dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from exc
    if image.mode == "F":
        array = (array - array.min()) / max(float(array.max() - array.min()), 1e-6) * 255.0
    height, width = array.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(array[top : top + side, left : left + side].astype(np.uint8), mode="L")
    resized = np.asarray(square.resize((resolution, resolution), Image.Resampling.LANCZOS), dtype=np.float32)
    return torch.from_numpy(resized / 127.5 - 1.0).unsqueeze(0)


def to_png(x, path):
    """Write one image in [-1, 1] ([1,H,W] or [H,W]) as an 8-bit grayscale PNG."""
    import torch
    from PIL import Image

    pixels = ((x.detach().float().cpu().squeeze().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    Image.fromarray(pixels, mode="L").save(path, format="PNG")


def _file_stem(source_id, intervention):
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(str(source_id)).stem).strip("_") or "image"
    action = "_".join(f"{k}-{v}" for k, v in intervention.items())
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}_do-{action}")


def _scalar(value):
    value = value.item() if hasattr(value, "item") else value
    return round(value, 4) if isinstance(value, float) else value


def _readable_parents(graph, pa, row):
    readable = {}
    for node in graph.nodes:
        value = _scalar(pa[node.name][row])
        readable[node.name] = node.categories[int(value)] if node.kind != "continuous" else value
    return readable


def generate_counterfactuals(
    run,
    do,
    *,
    ids=None,
    image_files=None,
    dataset=None,
    out_dir=None,
    samples=1,
    checkpoint=None,
    seed=0,
    expert=None,
    model_role=None,
    progress=None,
):
    """Counterfactual images of real images under interventions, as PNG files plus manifest.json in `out_dir`.

    `do` is one intervention for every image ("disease=healthy" or {"disease": "healthy"}) or a list with one
    intervention per image. Images are a data set's (`ids`; the run's own data set unless `dataset` is given) or
    files (`image_files`; their parents are read by the run's parent predictors). Image i is generated under seed
    `seed + i`, so any item can be reproduced on its own.
    Returns (folder, manifest dict); the manifest is also written to folder/manifest.json.
    """
    import torch

    from generator.training import pipeline

    label, checkpoint_path = resolve_checkpoint(run, checkpoint)
    model = pipeline.load_model(checkpoint_path)
    device = next(model.parameters()).device
    sources_requested = list(ids or image_files or [])
    interventions = do if isinstance(do, list) else [do] * len(sources_requested)
    if len(interventions) != len(sources_requested):
        raise ValueError(f"{len(interventions)} interventions for {len(sources_requested)} images")
    interventions = [parse_intervention(model.graph, spec) for spec in interventions]
    if samples < 1:
        raise ValueError("samples must be at least 1")
    x, pa, sources = _source_images(
        dataset or run.dataset, model.resolution, ids, image_files, run.checkpoints.get("predictors")
    )
    expert_model, expert_name = resolve_expert(run, expert)
    if expert_model is not None:
        expert_model.to(device)

    out_dir = Path(out_dir) if out_dir else _default_output_folder(run, label, interventions)
    out_dir.mkdir(parents=True, exist_ok=True)
    items, used_names = [], set()
    for row, (source, intervention) in enumerate(zip(sources, interventions)):
        item_seed = int(seed) + row
        generator = torch.Generator(device=device).manual_seed(item_seed)
        with torch.no_grad():
            cf = model.counterfactual(
                x[row : row + 1].to(device),
                {name: value[row : row + 1].to(device) for name, value in pa.items()},
                intervention,
                samples=samples,
                generator=generator,
            )
        stem = _file_stem(source["source_id"], intervention)
        name, copy = f"{stem}.png", 1
        while name in used_names:
            copy += 1
            name = f"{stem}_{copy}.png"
        used_names.add(name)
        to_png(cf.x_cf[0], out_dir / name)
        item = {
            "file": name,
            **source,
            "intervention": intervention,
            "seed": item_seed,
            "parents": _readable_parents(model.graph, pa, row),
            "counterfactual_parents": _readable_parents(model.graph, {k: v.cpu() for k, v in cf.pa_cf.items()}, 0),
            "expert_probabilities": None,
            "expert_probabilities_source": None,
        }
        if expert_model is not None:
            with torch.no_grad():
                after = expert_model.probabilities(cf.x_cf.clamp(-1, 1))
                before = expert_model.probabilities(x[row : row + 1].to(device))
            item["expert_probabilities"] = {k: round(float(after[k][0]), 4) for k in EXPERT_PROBABILITY_NAMES}
            item["expert_probabilities_source"] = {k: round(float(before[k][0]), 4) for k in EXPERT_PROBABILITY_NAMES}
        items.append(item)
        if progress is not None:
            progress((row + 1) / len(sources), f"{name} ({row + 1}/{len(sources)})")

    manifest = {
        "run": run.name,
        "run_id": str(run.pk),
        "variant": run.variant,
        "dataset": run.dataset.name,
        "checkpoint": str(checkpoint_path),
        "checkpoint_label": label,
        "preset": run.preset,
        "seed": run.seed,
        "code_version": model.meta.get("code_version", run.code_version),
        "resolution": model.resolution,
        "samples": samples,
        "expert": expert_name,
        "created_at": timezone.now().isoformat(),
        "items": items,
    }
    if model_role:
        manifest["model_role"] = model_role
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out_dir, manifest


def _default_output_folder(run, label, interventions):
    actions = sorted({"_".join(f"{k}-{v}" for k, v in i.items()) for i in interventions})
    action = actions[0] if len(actions) == 1 else "mixed"
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    return run_directory(run) / "counterfactuals" / f"{label}-do-{action}-{stamp}"


def find_run(name_or_id):
    """A TrainingRun by name or primary key, or a ValueError naming what was asked for."""
    if isinstance(name_or_id, TrainingRun):
        return name_or_id
    found = TrainingRun.objects.filter(name=str(name_or_id)).first()
    if found is None:
        try:
            found = TrainingRun.objects.filter(pk=uuid.UUID(str(name_or_id))).first()
        except ValueError:
            found = None
    if found is None:
        raise ValueError(f"no training run named {name_or_id!r}")
    return found


def find_dataset(name):
    found = Dataset.objects.filter(name=name).first()
    if found is None:
        known = ", ".join(Dataset.objects.values_list("name", flat=True)) or "none registered"
        raise ValueError(f"no data set named {name!r} (known: {known})")
    return found


# --- evaluation -----------------------------------------------------------------------------------------------------


def evaluation_assets(dataset, splits, resolution, expert=None, expert_steps=400, predictor_epochs=8, progress=None):
    """The independent judges every run of a data set is evaluated with: (evaluation predictors, expert, name).

    Both are trained once per data set and resolution on real images with their own seed and kept under
    ARTIFACTS_ROOT/evaluation/, so runs evaluated at different times are compared by the same judges. The expert is
    an explicit one, else the pretrained TorchXrayVision DenseNet when on disk, else one trained here.
    """
    from generator.evaluation.predictors import EvaluationPredictors, train_eval_predictors
    from generator.training.expert import load_expert, train_expert

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


def evaluate_run(
    run,
    checkpoint=None,
    *,
    n=256,
    seed=0,
    json_path=None,
    figures_dir=None,
    expert=None,
    expert_steps=400,
    predictor_epochs=8,
    n_boot=1000,
    progress=None,
):
    """Evaluate a run's final model (or `checkpoint`, or every model checkpoint with "all"); store the metrics on
    the run under the checkpoint's label and write report.json/.csv/.md into the run's evaluation/<label>/ folder.
    `json_path` receives all results, `figures_dir` the counterfactual figures. Returns {label: results}.
    """
    from generator.data.phantom import PhantomSCM
    from generator.evaluation.evaluate import evaluate_model
    from generator.evaluation.report import write_report
    from generator.training import pipeline

    if checkpoint == "all":
        if run.status != TrainingRun.Status.SUCCEEDED:
            raise RunNotReady(f"run {run.name!r} has not finished training (status {run.status})")
        targets = sorted(model_checkpoints(run).items())
    else:
        targets = [resolve_checkpoint(run, checkpoint)]
    report = progress or (lambda fraction, message: None)
    first = pipeline.load_model(targets[0][1])
    splits = load_run_splits(run.dataset, first.resolution)
    eval_predictors, expert_model, expert_name = evaluation_assets(
        run.dataset,
        splits,
        first.resolution,
        expert=expert,
        expert_steps=expert_steps,
        predictor_epochs=predictor_epochs,
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
            n=n,
            seed=seed,
            phantom_scm=phantom_scm,
            n_boot=n_boot,
            fid_boot=min(FID_BOOT, n_boot),
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
        results[label] = _jsonable(evaluated)
        write_report({model_label(run, label): results[label]}, run_directory(run) / "evaluation" / label, "report")
        if figures_dir:
            write_figures(model, splits, expert_model, Path(figures_dir) / label, seed)

    with transaction.atomic():
        locked = TrainingRun.objects.select_for_update().get(pk=run.pk)
        locked.metrics = {**locked.metrics, **results}
        locked.save(update_fields=["metrics", "updated_at"])
    run.refresh_from_db()
    if figures_dir and run.variant == TrainingRun.Variant.EXPERT_AL:
        write_effectiveness_curve(run, Path(figures_dir))
        write_forgetting_histograms(run, Path(figures_dir))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2))
    report(1.0, "evaluation done")
    return results


def write_figures(model, splits, expert_model, folder, seed, examples=4):
    """Per test image: observation, counterfactual under each disease, direct effect and uncertainty (PNG)."""
    import numpy as np

    from generator.evaluation.evaluate import disease_examples
    from generator.evaluation.figures import plot_counterfactual_examples

    test = splits["test"]
    rng = np.random.default_rng(seed)
    indices = sorted(rng.choice(len(test.x), size=min(examples, len(test.x)), replace=False).tolist())
    material = disease_examples(model, test, indices, expert=expert_model)
    return plot_counterfactual_examples(material, str(folder))


def write_effectiveness_curve(run, folder):
    """Fig. 4b for an active-learning run: disease effectiveness against the synthetic share of the training set."""
    from generator.evaluation.figures import plot_effectiveness_curve

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
    from generator.evaluation.figures import plot_forgetting_histograms
    from generator.training.proposed import read_summary, training_set_histograms

    record = read_summary(run_directory(run))
    if not record or not record.get("rounds"):
        return None
    curves = training_set_histograms(record)
    labels = ["real data" if share == 0 else f"+{round(100 * share)}%" for share, _ in curves]
    histograms = [histogram for _, histogram in curves]
    return plot_forgetting_histograms(histograms, str(folder / "forgetting_histograms.png"), labels=labels)


def model_label(run, checkpoint):
    """Table row name after the paper (Baseline, Ours+10%, ...), followed by the run name."""
    if checkpoint.startswith("round-"):
        fraction = run.config.get("run", {}).get("al_fraction", 0.1)
        percent = round(100 * fraction * int(checkpoint.split("-", 1)[1]))
        return f"Ours+{percent}% ({run.name})"
    names = {"baseline": "Baseline", "expert": "Ours (expert)", "expert-al": "Ours (expert, before AL)"}
    return f"{names.get(run.variant, run.variant)} ({run.name})"


def labelled_results(runs):
    """{row name: evaluation results} of every evaluated checkpoint of the runs, in run order."""
    return {model_label(run, label): results for run in runs for label, results in sorted(run.metrics.items())}


# The figures the admin shows per evaluated checkpoint (the report files hold all of them).
ADMIN_COLUMNS = (
    "effectiveness_disease_auroc",
    "effectiveness_disease_accuracy",
    "training_predictors_disease_auroc",
    "composition_ssim",
    "composition_fid",
    "reversibility_ssim",
    "reversibility_fid",
    "effect_localisation",
    "removal_l1_model",
    "removal_l1_identity",
)


def metrics_rows(run):
    """Readable rows (label -> text) of the run's evaluated checkpoints: mean [95% interval]."""
    from generator.evaluation.report import table_rows

    if not run.metrics:
        return []
    rows, columns = table_rows(labelled_results([run]))
    labels = {column.name: column.label for column in columns}
    readable = []
    for row in rows:
        entry = {"Model": row["model"]}
        for name in ADMIN_COLUMNS:
            mean, low, high = row.get(name), row.get(f"{name}_lo"), row.get(f"{name}_hi")
            entry[labels.get(name, name)] = "-" if mean is None else f"{mean:.3f} [{low:.3f}, {high:.3f}]"
        entry["n / seed"] = f"{row['n']} / {row['seed']}"
        readable.append(entry)
    return readable


def compare_runs(runs, out_dir):
    """Side-by-side Table-1-style report (CSV, JSON, Markdown) of every evaluated checkpoint of the given runs."""
    from generator.evaluation.report import write_report

    missing = [run.name for run in runs if not run.metrics]
    if missing:
        raise RunNotReady(f"evaluate these runs first (evaluate_generator RUN): {', '.join(missing)}")
    return write_report(labelled_results(runs), out_dir, stem="comparison")


# --- stimuli for a reader study -------------------------------------------------------------------------------------


# Stimuli come from the held-out test split: the models were trained on `train` and tuned on `valid` images.
STIMULUS_SPLITS = ("test",)


def check_stimulus_splits(splits):
    """The data-set splits stimuli may come from: `test` unless the researcher names others."""
    from generator.data import SPLITS

    chosen = tuple(dict.fromkeys(splits or STIMULUS_SPLITS))
    unknown = sorted(set(chosen) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {', '.join(unknown)}; choose from {', '.join(SPLITS)}")
    return chosen


def screen_stimulus_sources(splits, ids, *, allowed=STIMULUS_SPLITS, screening=None):
    """Where each data-set image comes from and whether it may become a stimulus.

    `splits` are the loaded data set ({"train", "valid", "test"}); `screening` as
    `generator.data.screening.ScreeningRules.from_value` (None: the default rules, False: off). Returns
    {image id: {"split", "passed", "reasons", "age", "view", "blank_border", "rules"}}; an image outside the allowed
    splits, missing from the data set or failing a screening criterion has passed False and says why in reasons.
    """
    from generator.data.screening import ScreeningRules, screen_sample

    rules = ScreeningRules.from_value(screening)
    where = {}
    for name, split in splits.items():
        for row, image_id in enumerate(split.ids):
            where.setdefault(str(image_id), (name, split, row))
    checks = {}
    for image_id in dict.fromkeys(str(i) for i in ids):
        if image_id not in where:
            checks[image_id] = {"split": "", "passed": False, "reasons": ["not in the data set"]}
            continue
        name, split, row = where[image_id]
        check = {"split": name, **screen_sample(split, row, rules), "rules": rules.to_dict()}
        if name not in allowed:
            use = "trained" if name == "train" else "tuned"
            check["reasons"].insert(0, f"from the {name} split, which the models were {use} on (not held out)")
            check["passed"] = False
        checks[image_id] = check
    return checks


def stimulus_candidates(dataset, resolution, *, splits=STIMULUS_SPLITS, screening=None):
    """Every image of the allowed splits that passes screening, as (image id, condition name, split), in split order
    and then data-set order; and {image id: check} of the images that were screened out."""
    loaded = load_run_splits(dataset, resolution)
    allowed = check_stimulus_splits(splits)
    ids = [str(i) for name in allowed for i in loaded[name].ids]
    checks = screen_stimulus_sources(loaded, ids, allowed=allowed, screening=screening)
    conditions = loaded["train"].graph["disease"].categories
    candidates, skipped = [], {}
    for name in allowed:
        split = loaded[name]
        for row, image_id in enumerate(split.ids):
            check = checks[str(image_id)]
            if check["passed"]:
                candidates.append((str(image_id), conditions[int(split.pa["disease"][row])], name))
            else:
                skipped[str(image_id)] = check
    return candidates, skipped


def generate_stimuli(
    study,
    baseline_run,
    proposed_run,
    *,
    case_ids=None,
    checkpoints=None,
    samples=1,
    seed=0,
    expert=None,
    splits=None,
    screening=None,
    progress=None,
):
    """Both models' counterfactuals of the study's cases, attached through the study's manifest import.

    Every case with a data-set `source_id` (or those in `case_ids`) gets each model's counterfactual under
    do(disease := the case's counterfactual condition). Both models see the same images under the same seeds and
    are annotated by the same expert (the proposed run's own when it has one), so their stimuli differ only by
    the model.

    Source images come from the test split unless `splits` names others, and pass the stimulus screening (adults,
    frontal view, no large blank border; `screening` relaxes it or, with False, turns it off). Each case records
    its split and its screening result; a case that fails is skipped (no counterfactuals) with its reasons.
    Returns {"folders": {role: path}, "imported": {role: import result}, "splits": {case: split},
    "skipped": {case: [reasons]}}.
    """
    from studyplatform import services as study_services
    from studyplatform.models import Case

    allowed = check_stimulus_splits(splits)
    report = progress or (lambda fraction, message: None)
    cases = Case.objects.filter(study=study).exclude(source_id="").order_by("block", "position", "label")
    if case_ids:
        cases = cases.filter(pk__in=case_ids)
    cases = list(cases)
    if not cases:
        raise ValueError(f"study {study.slug!r} has no case with a data-set image id to make counterfactuals of")
    dataset = baseline_run.dataset
    checks = screen_stimulus_sources(
        load_run_splits(dataset, dataset.resolution),
        [case.source_id for case in cases],
        allowed=allowed,
        screening=screening,
    )
    skipped = {}
    for case in cases:
        check = checks[case.source_id]
        study_services.record_case_source(case, split=check["split"], screening=check)
        if not check["passed"]:
            skipped[case.label] = check["reasons"]
    summary = "; ".join(f"{label}: {', '.join(reasons)}" for label, reasons in skipped.items())
    if len(skipped) == len(cases):
        raise ValueError(f"no case of study {study.slug!r} can become a stimulus: {summary}")
    passed = f"{len(cases) - len(skipped)} of {len(cases)} cases passed the screening"
    report(0.0, passed + (f"; skipped {summary}" if summary else ""))
    # One counterfactual per (image, condition): a Block-1 patient and a Block-2 case may share an image.
    requests = sorted({(case.source_id, case.cf_condition) for case in cases if case.label not in skipped})
    if expert is None and (run_directory(proposed_run) / "expert.pt").is_file():
        expert = str(run_directory(proposed_run) / "expert.pt")
    checkpoints = checkpoints or {}
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    folders, imported = {}, {}
    roles = (("baseline", baseline_run), ("proposed", proposed_run))
    report = progress or (lambda fraction, message: None)
    for index, (role, run) in enumerate(roles):
        folder, _ = generate_counterfactuals(
            run,
            [{"disease": condition} for _, condition in requests],
            ids=[source_id for source_id, _ in requests],
            out_dir=run_directory(run) / "stimuli" / f"{study.slug}-{role}-{stamp}",
            samples=samples,
            checkpoint=checkpoints.get(role),
            seed=seed,
            expert=expert,
            model_role=role,
            progress=lambda f, m, index=index, role=role: report(0.5 * (index + f), f"{role}: {m}"),
        )
        folders[role] = str(folder)
        imported[role] = study_services.import_counterfactual_manifest(study, folder, model_role=role)
    if skipped:
        report(1.0, f"done; skipped {len(skipped)} case(s) without counterfactuals: {summary}")
    return {
        "folders": folders,
        "imported": imported,
        "splits": {case.label: checks[case.source_id]["split"] for case in cases},
        "skipped": skipped,
    }

"""Counterfactual images of a run's model, traceable to the run, its checkpoint, preset, seed and code version.

The per-image work is the framework-free `generator.causal.production`; this module finds the run, its checkpoint,
the source images and the expert, and heads the manifest with the run's provenance.
"""

from pathlib import Path

from django.utils import timezone

from generator.causal.intervention import Intervention
from generator.causal.production import images_from_files, images_from_splits, produce_counterfactuals
from generator.services.runs import find_dataset, find_run, resolve_checkpoint, run_directory
from generator.services.training import load_run_splits
from generator.training import pipeline
from generator.training.expert import load_expert

PRETRAINED_EXPERT = "densenet121-res224-all"


def resolve_expert(run=None, expert=None):
    """(ExpertModel or None, description) used to annotate counterfactuals with expert probabilities.

    An explicit `expert` (xrv weights name or file) wins; otherwise the run's own expert (proposed variants), then
    the pretrained TorchXrayVision DenseNet when its weights are on disk.
    """
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


def generate_counterfactuals(request, progress=None):
    """The CounterfactualRequest's images as PNG files plus manifest.json; returns (folder, manifest).

    The folder is `request.out_dir`, else a new one under the run's counterfactuals/. Bad requests (unknown run,
    checkpoint, image ids or interventions) are refused before anything is written.
    """
    run = find_run(request.run)
    dataset = find_dataset(request.dataset) if request.dataset else run.dataset
    label, checkpoint_path = resolve_checkpoint(run, request.checkpoint)
    model = pipeline.load_model(checkpoint_path)
    interventions = [Intervention.parse(model.graph, spec) for spec in request.do]
    if request.ids:
        try:
            images = images_from_splits(load_run_splits(dataset, model.resolution), request.ids, dataset.root)
        except ValueError as exc:
            raise ValueError(f"data set {dataset.name!r}: {exc}") from exc
    else:
        predictors = pipeline.load_predictors(run.checkpoints["predictors"], device="cpu")
        images = images_from_files(request.images, model.resolution, predictors)
    expert, expert_name = resolve_expert(run, request.expert)
    if expert is not None:
        expert.to(next(model.parameters()).device)
    out_dir = Path(request.out_dir) if request.out_dir else _default_output_folder(run, label, interventions)
    provenance = {
        "run": run.name,
        "run_id": str(run.pk),
        "variant": run.variant,
        "dataset": dataset.name,
        "checkpoint": str(checkpoint_path),
        "checkpoint_label": label,
        "preset": run.preset,
        "seed": run.seed,
        "code_version": model.meta.get("code_version", run.code_version),
        "expert": expert_name,
    }
    if request.model_role:
        provenance["model_role"] = request.model_role
    manifest = produce_counterfactuals(
        model,
        images,
        interventions,
        out_dir,
        provenance=provenance,
        samples=request.samples,
        seed=request.seed,
        expert=expert,
        progress=progress,
    )
    return out_dir, manifest


def _default_output_folder(run, label, interventions):
    actions = sorted({intervention.label() for intervention in interventions})
    action = actions[0] if len(actions) == 1 else "mixed"
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    return run_directory(run) / "counterfactuals" / f"{label}-do-{action}-{stamp}"

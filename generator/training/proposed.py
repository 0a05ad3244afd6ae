"""The proposed generator: the baseline DSCM plus expert supervision (Eq. 2) and forgetting-event active learning.

Variant "expert": obtain an expert (pretrained TorchXrayVision weights when on disk, otherwise a classifier trained
here on the training split), then train the DSCM with the expert term added to the counterfactual stage.

Variant "expert-al": the same, followed by `al_rounds` rounds of active learning. Each round
1. makes candidate counterfactuals of real training images under random disease interventions,
2. trains a proxy classifier on the current training set plus the candidates and counts forgetting events,
3. adds the N most-forgotten candidates (N = al_fraction x the real training-set size) to the generator's training
   set, labelled with the disease they were intervened to,
4. fine-tunes the counterfactual stage on the enlarged set (expert term included) and saves `round-<k>.pt`, a
   checkpoint `pipeline.load_model` reads like any other.
The rounds are cumulative: rounds 1-3 with fraction 0.1 are the paper's Ours+10%, +20% and +30%.

    config = RunConfig(preset="cpu-64", variant="expert-al")
    summary = run_proposed(config, get_preset("cpu-64"), splits, Path("var/runs/ours"))
    ours_30 = pipeline.load_model(summary["checkpoints"]["round-3"])
"""

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from generator.data.datasets import CXRDataset
from generator.data.graph import DISEASE_CLASSES
from generator.training import pipeline
from generator.training.active_learning import (
    forgetting_histogram,
    generate_candidates,
    score_candidates,
    select_top,
    track_forgetting,
)
from generator.training.budget import run_stages, under_trained_stages
from generator.training.checkpoint import atomic_save, atomic_write_json, load_checkpoint, record_stage
from generator.training.critics import LatentAdversary
from generator.training.expert import load_expert, make_expert_extra_loss, train_expert, validation_auroc
from generator.training.presets import require_same_snapshot
from generator.training.trainer import choose_device

PROPOSED_VARIANTS = ("expert", "expert-al")
DEFAULT_EXPERT_WEIGHTS = "densenet121-res224-all"
EXPERT_FILE = "expert.pt"
SUMMARY_FILE = "active_learning.json"
# Validation images used to measure a pretrained expert's AUROC (a DenseNet-121 at 224 px is slow on a CPU).
PRETRAINED_AUROC_IMAGES = 256
# Shares of a wall-clock budget: the expert, then the active-learning rounds; the pipeline's stages get the rest.
EXPERT_BUDGET_SHARE = 0.1
ACTIVE_LEARNING_BUDGET_SHARE = 0.3


@dataclass
class ActiveLearningSettings:
    rounds: int = 3
    fraction: float = 0.1  # of the REAL training-set size, added per round
    candidates_per_selected: int = 3  # candidate pool = this many x N (capped at the real training-set size)
    proxy_epochs: int = 8
    proxy_batch_size: int = 64
    finetune_steps: int = 200
    finetune_time_budget_s: float | None = None
    time_budget_s: float | None = None  # wall clock for all rounds together: selection and fine-tuning
    seed: int = 0

    @classmethod
    def from_config(cls, config, preset, **overrides):
        """Rounds, fraction and seed from the run configuration; fine-tuning sized like half a counterfactual stage of
        the run's preset snapshot."""
        settings = {
            "rounds": config.al_rounds,
            "fraction": config.al_fraction,
            "seed": config.seed,
            "finetune_steps": max(1, config.stage_steps(preset, "counterfactual") // 2),
        }
        return cls(**{**settings, **overrides})


def run_proposed(
    config,
    preset,
    splits,
    out_dir,
    progress=None,
    resume=False,
    expert_weights=DEFAULT_EXPERT_WEIGHTS,
    al_settings=None,
):
    """Train the proposed model (variant "expert" or "expert-al") with the run's preset snapshot `preset`; returns the
    pipeline's summary, extended.

    Adds "expert" (source, weights, validation AUROC per class) and, for "expert-al", "active_learning" (one record
    per round with the selected ids and forgetting histograms, and the final histogram) and a checkpoint per round
    under "checkpoints" ("round-1", ...); "checkpoint" then names the last round's.
    """
    if config.variant not in PROPOSED_VARIANTS:
        raise ValueError(f"run_proposed trains the variants {PROPOSED_VARIANTS}, not {config.variant!r}")
    out_dir = Path(out_dir)
    # A wall-clock budget covers everything the proposed model does: the expert, the pipeline's stages and the
    # active-learning rounds (selection included) each get a share, and each takes what the one before left.
    started = time.monotonic()
    budget = config.time_budget_s
    with_al = config.variant == "expert-al" and config.al_rounds > 0
    expert, expert_report = obtain_expert(
        expert_weights,
        splits["train"],
        splits["valid"],
        out_dir,
        seed=config.seed,
        progress=progress,
        resume=resume,
        time_budget=None if budget is None else budget * EXPERT_BUDGET_SHARE,
    )
    extra_loss = make_expert_extra_loss(expert, config.expert_alpha, config.expert_beta, config.expert_threshold)
    stage_config = config
    if budget is not None:
        left = max(0.0, budget - (time.monotonic() - started))
        share = 1.0 - ACTIVE_LEARNING_BUDGET_SHARE / (1.0 - EXPERT_BUDGET_SHARE) if with_al else 1.0
        stage_config = replace(config, time_budget_s=left * share)
    summary = pipeline.train(
        stage_config, preset, splits, out_dir, progress=progress, resume=resume, extra_loss=extra_loss
    )
    summary["expert"] = expert_report
    if config.variant == "expert-al":
        settings = al_settings or ActiveLearningSettings.from_config(config, preset)
        if budget is not None and settings.time_budget_s is None:
            settings = replace(settings, time_budget_s=max(0.0, budget - (time.monotonic() - started)))
        report = run_active_learning(summary["checkpoint"], splits, out_dir, extra_loss, settings, progress, resume)
        summary["active_learning"] = report
        summary["checkpoints"].update(report["checkpoints"])
        if report["checkpoints"]:
            summary["checkpoint"] = report["checkpoints"][f"round-{settings.rounds}"]
    # the expert and every round's fine-tuning count as stages too: any of them cut short leaves the run under-trained
    summary["under_trained"] = under_trained_stages(run_stages(summary))
    summary["seconds"] = time.monotonic() - started
    return summary


def obtain_expert(
    weights,
    train_set,
    valid_set,
    out_dir,
    epochs=8,
    batch_size=64,
    seed=0,
    progress=None,
    resume=False,
    time_budget=None,
):
    """Pretrained xrv weights when available locally, otherwise a classifier trained on the training split.

    Returns (ExpertModel, report): report["source"] is "pretrained" or "trained", report["auroc"] the validation
    AUROC per class (Effusion, Pneumonia, No Finding). On resume a previously trained expert is reused.
    """
    expert = load_expert(weights) if weights else None
    if expert is not None:
        auroc = validation_auroc(expert, valid_set.subset(range(min(PRETRAINED_AUROC_IMAGES, len(valid_set.ids)))))
        return expert, {"source": "pretrained", "weights": weights, "auroc": auroc}
    path = Path(out_dir) / EXPERT_FILE
    if resume and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        return load_expert(str(path)), {"source": "trained", "weights": str(path), "auroc": saved["auroc"]}
    steps = max(1, epochs * len(train_set.ids) // batch_size)
    expert, report = train_expert(
        train_set,
        valid_set,
        path,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        time_budget=time_budget,
    )
    return expert, {"source": "trained", "requested": weights, "weights": str(path), **report}


def run_active_learning(base_checkpoint, splits, out_dir, extra_loss, settings, progress=None, resume=False):
    """Rounds of selection and fine-tuning starting from a trained run's counterfactual checkpoint.

    Each round's checkpoint holds the fine-tuned model and the examples it added, so a resumed run rebuilds the
    enlarged training set from the finished rounds and continues with the next.
    """
    out_dir = Path(out_dir)
    device = choose_device()
    base_state = load_checkpoint(base_checkpoint)
    meta = base_state["meta"]
    model = pipeline.load_model(base_checkpoint, device)
    # The predictors, the latent adversary and the measured ELBO constraint live in the run's counterfactual
    # checkpoint, also when the model the run chose as final (select_final) is the ELBO-stage one.
    training_checkpoint = Path(base_checkpoint).with_name("counterfactual.pt")
    same = Path(base_checkpoint) == training_checkpoint
    training_state = base_state if same else load_checkpoint(training_checkpoint)
    predictors = pipeline.load_predictors(training_checkpoint, device)
    adversary = LatentAdversary(model.preset, model.graph).to(device)
    adversary.load_state_dict(training_state["adversary"])
    # The base run's measured ELBO constraint stays the constraint of every round.
    constraint = training_state["task"]["constraint"]
    real_set, valid_set = splits["train"], splits["valid"]
    # With `cf_anchor_reference="elbo"` every round's removal anchor holds the branch to the run's ELBO-stage model,
    # not to the round before it, so what the rounds teach additions cannot move removals step by step.
    anchor_reference = None
    if model.preset.lesion_blocks and model.preset.cf_removal_anchor > 0 and model.preset.cf_anchor_reference == "elbo":
        elbo_checkpoint = Path(base_checkpoint).with_name("hvae.pt")
        if not elbo_checkpoint.is_file():
            raise FileNotFoundError(
                f"cf_anchor_reference='elbo' needs the run's ELBO-stage checkpoint beside {base_checkpoint}: "
                f"{elbo_checkpoint} is missing"
            )
        anchor_reference = pipeline.load_model(elbo_checkpoint, device).hvae

    started = time.monotonic()
    deadline = {"round": None}

    def finetune(model, train_set):
        time_budget = settings.finetune_time_budget_s
        if deadline["round"] is not None:  # what the round's share leaves after its selection
            left = max(0.0, deadline["round"] - time.monotonic())
            time_budget = left if time_budget is None else min(time_budget, left)
        round_progress = None
        if progress is not None:

            def round_progress(stage, fraction, message):
                progress("active-learning", fraction, f"fine-tuning: {message}")

        return pipeline.finetune_counterfactual(
            model,
            {"train": train_set, "valid": valid_set},
            settings.finetune_steps,
            predictors,
            extra_loss=extra_loss,
            progress=round_progress,
            constraint=constraint,
            seed=settings.seed,
            time_budget=time_budget,
            adversary=adversary,
            anchor_reference=anchor_reference,
        )

    train_set = real_set
    rounds, checkpoints = [], {}
    for k in range(1, settings.rounds + 1):
        path = out_dir / f"round-{k}.pt"
        if resume and path.is_file():
            state = load_checkpoint(path)
            require_same_snapshot(meta["preset"], state["meta"]["preset"], path)
            model.hvae.load_state_dict(state["hvae_ema"])
            added = state["added"]
            train_set = extend_dataset(train_set, added["x"], added["pa"], added["ids"])
            rounds.append(state["active_learning"])
            checkpoints[f"round-{k}"] = str(path)
            continue
        if settings.time_budget_s is not None:
            left = max(0.0, settings.time_budget_s - (time.monotonic() - started))
            deadline["round"] = time.monotonic() + left / (settings.rounds - k + 1)
        _report(progress, (k - 1) / settings.rounds, f"round {k}/{settings.rounds}: selecting counterfactuals")
        n_before = len(train_set.ids)
        train_set, record = active_learning_round(
            model, real_set, train_set, k, settings, extend_dataset, finetune, progress=progress
        )
        added = {
            "x": train_set.x[n_before:].clone(),
            "pa": {name: values[n_before:].clone() for name, values in train_set.pa.items()},
            "ids": list(train_set.ids[n_before:]),
        }
        record["finetune"] = {key: value for key, value in record["finetune"].items() if key != "history"}
        record["finetune"]["planned_steps"] = settings.finetune_steps
        round_meta = {**meta, "stage": f"round-{k}", "step": record["finetune"]["steps"], "complete": True}
        atomic_save(
            {
                "meta": round_meta,
                "parents": model.parent_model.state_dict(),
                "hvae": model.hvae.state_dict(),
                "hvae_ema": model.hvae.state_dict(),
                "predictors": predictors.state_dict(),
                "adversary": adversary.state_dict(),
                "added": added,
                "active_learning": record,
            },
            path,
        )
        record_stage(out_dir, f"round-{k}", path, _scalar_metrics(record), round_meta)
        rounds.append(record)
        checkpoints[f"round-{k}"] = str(path)

    final_seed = settings.seed * 1000 + settings.rounds + 1
    final = training_set_histogram(train_set, settings, seed=final_seed, device=device)
    report = {
        "settings": asdict(settings),
        "rounds": rounds,
        "histogram_final": final,
        "checkpoints": checkpoints,
    }
    atomic_write_json(report, out_dir / SUMMARY_FILE)
    _report(progress, 1.0, f"{settings.rounds} rounds complete, {len(train_set.ids)} training examples")
    return report


def added_per_round(fraction, n_real):
    """N = fraction x real training-set size, at least one example when the fraction is positive."""
    return max(1, int(round(fraction * n_real))) if fraction > 0 else 0


def synthetic_id(round_index, source_id, disease):
    return f"cf-r{round_index}-{source_id}-do-{DISEASE_CLASSES[int(disease)]}"


def extend_dataset(dataset, x, pa, ids):
    """A new training set: `dataset` with examples appended (images, every parent, ids); `dataset` is unchanged.

    Generated examples have no phantom noise or lesion masks, so the enlarged set carries neither; it holds what
    training reads (images, parents, ids) and keeps the graph, resolution and the phantom's renderer.
    """
    missing = set(dataset.pa) - set(pa)
    if missing:
        raise KeyError(f"new examples lack the parents {sorted(missing)}")
    return CXRDataset(
        torch.cat([dataset.x, x.to(dataset.x.dtype)]),
        {name: torch.cat([values, pa[name].to(values.dtype)]) for name, values in dataset.pa.items()},
        dataset.graph,
        list(dataset.ids) + list(ids),
        dataset.resolution,
        scm=dataset.scm,
        info={**dataset.info, "synthetic": dataset.info.get("synthetic", 0) + len(ids)},
    )


def active_learning_round(
    model, real_set, train_set, round_index, settings, augment, finetune, disease_node="disease", progress=None
):
    """One round of selection via proxy; returns (enlarged training set, round record).

    `augment(train_set, x, pa, ids)` returns the training set with the new examples appended and
    `finetune(model, train_set)` fine-tunes the generator on it and returns its metrics.
    """
    n_real = len(real_set.ids)
    n_add = added_per_round(settings.fraction, n_real)
    n_candidates = min(max(n_add * settings.candidates_per_selected, n_add), n_real)
    round_seed = settings.seed * 1000 + round_index

    was_training = model.training
    model.eval()
    candidates = generate_candidates(model, real_set, n_candidates, seed=round_seed, disease_node=disease_node)
    model.train(was_training)
    _report(progress, 0.2, f"round {round_index}: {len(candidates.source_ids)} candidates, training the proxy")

    candidate_counts, training_counts = score_candidates(
        train_set.x,
        train_set.pa[disease_node],
        candidates.x,
        candidates.disease,
        epochs=settings.proxy_epochs,
        batch_size=settings.proxy_batch_size,
        seed=round_seed,
        device=next(model.parameters()).device,
    )
    chosen = torch.as_tensor(select_top(candidate_counts, n_add), dtype=torch.long)
    new_ids = [synthetic_id(round_index, candidates.source_ids[i], candidates.disease[i]) for i in chosen.tolist()]
    new_pa = {name: values[chosen] for name, values in candidates.pa.items()}
    enlarged = augment(train_set, candidates.x[chosen], new_pa, new_ids)
    _report(progress, 0.4, f"round {round_index}: added {len(new_ids)} counterfactuals, fine-tuning")

    record = {
        "round": round_index,
        "n_added": len(new_ids),
        "n_candidates": len(candidates.source_ids),
        "training_size": len(enlarged.ids),
        "synthetic_fraction": (len(enlarged.ids) - n_real) / n_real,
        "selected_ids": new_ids,
        "selected_labels": [DISEASE_CLASSES[int(k)] for k in new_pa[disease_node]],
        "selected_forgetting_counts": _json_counts(candidate_counts[chosen.numpy()]),
        "histogram_training": forgetting_histogram(training_counts),
        "histogram_candidates": forgetting_histogram(candidate_counts),
    }
    record["finetune"] = finetune(model, enlarged)
    return enlarged, record


def training_set_histogram(train_set, settings, disease_node="disease", seed=0, device=None):
    """Forgetting-count distribution of a training set on its own (one proxy run), for Fig. 4a."""
    counts, _ = track_forgetting(
        train_set.x,
        train_set.pa[disease_node],
        epochs=settings.proxy_epochs,
        batch_size=settings.proxy_batch_size,
        seed=seed,
        device=device,
    )
    return forgetting_histogram(counts)


def _scalar_metrics(record):
    metrics = {k: v for k, v in record["finetune"].items() if isinstance(v, int | float)}
    metrics.update(n_added=record["n_added"], synthetic_fraction=record["synthetic_fraction"])
    return metrics


def _json_counts(counts):
    return [None if not np.isfinite(c) else int(c) for c in np.asarray(counts, dtype=np.float64)]


def _report(progress, fraction, message):
    if progress is not None:
        progress("active-learning", fraction, message)


def read_summary(out_dir):
    """The active-learning record of a finished run (rounds, histograms, selected ids), or None."""
    path = Path(out_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def training_set_histograms(record):
    """[(synthetic share, forgetting histogram)] of the training set before the first round and after each round.

    Round k's training-set histogram describes the set it started from (the real data for round 1, then the set
    enlarged by round k-1), and `histogram_final` the set after the last round: with three rounds, the four curves
    of Fig. 4a (real data, +10%, +20%, +30%).
    """
    rounds = record["rounds"]
    shares = [0.0] + [r["synthetic_fraction"] for r in rounds]
    histograms = [r["histogram_training"] for r in rounds] + [record["histogram_final"]]
    return list(zip(shares, histograms))

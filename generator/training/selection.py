"""Which checkpoint of a run is its final model: the one whose counterfactuals score best on the validation split.

The counterfactual stage is meant to improve counterfactuals, but classifier-driven training can also teach
shortcuts (the same bright mark on every added lesion, dark holes left by removals). So a run does not simply end
with its last stage: each candidate (the ELBO-stage model and the counterfactually trained one) is scored on
held-out validation images, and the best becomes the final checkpoint. Lower scores are better.

- Phantom data (the validation split carries its structural causal model): the error of removals do(healthy) to the
  TRUE counterfactual, relative to the "no change" answer, plus one minus the localisation (the share of the change
  inside the true change region for removals, inside the lesion's plausible zone for additions), plus one minus the
  agreement of the judge with the intervened disease. Without the judge's term a model whose additions change almost
  nothing, but change it in the right place, scores as well as one whose additions draw a lesion.
- Real data: one minus the agreement of the judge with the intervened disease, plus a minimal-change term.

The judge is a small classifier trained here on the validation split, which no part of the generator saw in training;
its accuracy on that split is reported with the scores.
"""

import torch
from torch.nn import functional as F

from generator.causal.predictors import ParentPredictors
from generator.evaluation.evaluate import counterfactuals
from generator.training.counterfactual_stage import device_of

DEFAULT_IMAGES = 128
JUDGE_STEPS = 150
CHANGE_WEIGHT = 5.0  # real data: a mean change of 0.02 (1% of the grey range) costs as much as 10% judge agreement
ZONE_DRAWS = 16


def counterfactuals_under(model, dataset, index, node, target, seed):
    """do(node := target) on the images `index` of `dataset`, with a seeded generator for what cannot be abducted."""
    pa = {k: v[index] for k, v in dataset.pa.items()}
    do = {node: torch.full((len(index),), target, dtype=pa[node].dtype)}
    generator = torch.Generator(device=device_of(model)).manual_seed(seed)
    return pa, counterfactuals(model, dataset.x[index], pa, do, generator=generator)[0]


def phantom_score(model, dataset, node, images, seed, judge):
    """Removal error ratio and localisation against the phantom's truth, and the judge's agreement.

    `addition_strength` (reported, not scored) is the mean change of the additions relative to the true
    counterfactual's: 0 when they draw nothing, above 1 when they draw more than the phantom's lesions.
    """
    scm, resolution = dataset.scm, dataset.x.shape[-1]
    disease = dataset.pa[node]
    ratios, shares, agree, strengths = [], [], [], []
    for target in range(dataset.graph[node].cardinality):
        index = torch.nonzero(disease != target).flatten()[:images]
        if len(index) == 0:
            continue
        pa, x_cf = counterfactuals_under(model, dataset, index, node, target, seed)
        x, u = dataset.x[index], dataset.u[index]
        truth, pa_cf, _ = scm.true_counterfactual(pa, u, {node: target}, resolution)
        region = scm.change_region(pa, u, pa_cf, resolution)
        if target != 0:
            region = region | scm.plausible_zone(pa, u, target, resolution, draws=ZONE_DRAWS, rng=seed)
        change = (x_cf - x).abs()
        shares.append(((change * region).flatten(1).sum(1) / change.flatten(1).sum(1).clamp(min=1e-8)).mean().item())
        with torch.no_grad():
            agree.append((judge(x_cf)[node].argmax(-1) == target).float().mean().item())
        if target == 0:
            ratios.append(((x_cf - truth).abs().mean() / (x - truth).abs().mean().clamp(min=1e-8)).item())
        else:
            strengths.append((change.mean() / (truth - x).abs().mean().clamp(min=1e-8)).item())
    removal = mean(ratios, 1.0)
    localisation = mean(shares, 0.0)
    agreement = mean(agree, 0.0)
    return {
        "score": removal + (1 - localisation) + (1 - agreement),
        "removal_error_ratio": removal,
        "localisation": localisation,
        "judge_agreement": agreement,
        "addition_strength": mean(strengths, 0.0),
    }


def mean(values, empty):
    return sum(values) / len(values) if values else empty


def train_judge(dataset, node, seed, steps=JUDGE_STEPS, width=16, batch_size=32):
    """A small classifier of the lesion node trained on `dataset` alone (the validation split)."""
    torch.manual_seed(seed)
    judge = ParentPredictors(dataset.graph, dataset.x.shape[-1], width)
    optimizer = torch.optim.Adam(judge.parameters(), lr=2e-3)
    # decayed to zero, as the anti-causal predictors are: at a constant rate the judge's end state swings with its last
    # few batches (generator.training.pipeline.PredictorsTask)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    labels = dataset.pa[node].long()
    for _ in range(steps):
        index = torch.randint(0, len(labels), (min(batch_size, len(labels)),))
        loss = F.cross_entropy(judge(dataset.x[index])[node], labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return judge.eval()


def judge_score(model, dataset, node, images, seed, judge):
    """Judge agreement with the intervened disease, and the mean absolute change, on real validation images."""
    disease = dataset.pa[node]
    agree, changes = [], []
    for target in range(dataset.graph[node].cardinality):
        index = torch.nonzero(disease != target).flatten()[:images]
        if len(index) == 0:
            continue
        _, x_cf = counterfactuals_under(model, dataset, index, node, target, seed)
        with torch.no_grad():
            agree.append((judge(x_cf)[node].argmax(-1) == target).float().mean().item())
        changes.append((x_cf - dataset.x[index]).abs().mean().item())
    agreement, change = mean(agree, 0.0), mean(changes, 0.0)
    return {"score": (1 - agreement) + CHANGE_WEIGHT * change, "judge_agreement": agreement, "mean_abs_change": change}


def select_final(candidates, dataset, node="disease", images=DEFAULT_IMAGES, seed=0):
    """Score every candidate model {name: model} on the validation `dataset`; returns (best name, {name: scores})."""
    phantom = getattr(dataset, "scm", None) is not None and getattr(dataset, "u", None) is not None
    judge = train_judge(dataset, node, seed)
    with torch.no_grad():
        judge_accuracy = (judge(dataset.x)[node].argmax(-1) == dataset.pa[node]).float().mean().item()
    scores = {}
    for name, model in candidates.items():
        if phantom:
            scores[name] = {"method": "phantom truth", **phantom_score(model, dataset, node, images, seed, judge)}
        else:
            scores[name] = {"method": "validation judge", **judge_score(model, dataset, node, images, seed, judge)}
        scores[name]["judge_accuracy"] = judge_accuracy
    best = min(scores, key=lambda name: scores[name]["score"])
    return best, scores

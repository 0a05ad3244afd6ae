"""Evaluate a counterfactual model: effectiveness, composition, reversibility and, on phantom data, the error
against the true counterfactual (definitions after Monteiro et al. 2023 and Sec. 2.4 of the paper).

`evaluate_model` draws `n` images of the evaluation split with a seed and reports every figure as a mean with a
95% bootstrap interval over images (`{"mean", "ci95": [low, high], "n"}`), plus the seed. The output is plain JSON.

What each block measures:
- effectiveness: each parent is intervened on with values drawn from its marginal (the evaluation images' own
  values, shuffled); predictors read the parent back from the counterfactual. The independent evaluation
  predictors (generator/evaluation/predictors.py) give the headline figures; the training predictors, which the
  generator was optimised against, are reported beside them under their own key, since a shortcut fools them;
- composition: the null intervention do(pa := pa) applied 1 and 10 times must leave the image unchanged;
- reversibility: do(disease := another class) and back to the observed parents, 1 and 5 cycles, must return the
  original image;
- expert probability shift: the expert's P(Effusion) and P(Pneumonia) on observations and on counterfactuals under
  do(disease := each class);
- effect localisation (phantom): share of |x_cf - x| inside the region the true counterfactual changes;
- true-counterfactual error (phantom): removal judged pixel by pixel, additions on the true change region, both
  beside the trivial answer that returns the input.
"""

import numpy as np
import torch

from generator.evaluation import metrics

DISEASE = "disease"
HEALTHY = 0


class EvaluationImages:
    """The evaluated images: `x`, parent values `pa`, the graph and, for phantom data, the exogenous noise `u`."""

    def __init__(self, graph, x, pa, u=None, ids=None):
        self.graph, self.x, self.pa, self.u, self.ids = graph, x, pa, u, ids

    @classmethod
    def draw(cls, dataset, n, seed):
        """`n` images of `dataset` chosen at random under `seed` (all of them when n is None or too large)."""
        total = dataset.x.shape[0]
        if total == 0:
            raise ValueError("the evaluation split has no images")
        order = np.random.default_rng(seed).permutation(total)
        index = torch.as_tensor(np.sort(order[: min(n or total, total)]), dtype=torch.long)
        pa = {name: torch.as_tensor(dataset.pa[name])[index] for name in dataset.graph.names}
        u = getattr(dataset, "u", None)
        ids = getattr(dataset, "ids", None)
        return cls(
            dataset.graph,
            dataset.x[index].float(),
            pa,
            u[index] if u is not None else None,
            [ids[i] for i in index.tolist()] if ids is not None else None,
        )

    def __len__(self):
        return self.x.shape[0]


def evaluation_split(splits):
    """The test split of `splits` (a dict or an object with a `test` attribute), or `splits` itself if a data set."""
    if hasattr(splits, "x") and hasattr(splits, "pa"):
        return splits
    for name in ("test", "valid"):
        if isinstance(splits, dict) and name in splits:
            return splits[name]
        if hasattr(splits, name):
            return getattr(splits, name)
    raise ValueError("splits must be a data set or carry a 'test' (or 'valid') split")


# ----------------------------------------------------------------------------------------------------------------
# Running the model in batches


def _device_of(module):
    try:
        return next(module.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


@torch.no_grad()
def counterfactuals(model, x, pa, do, batch_size=64, generator=None):
    """Batched model.counterfactual on the CPU side: returns (x_cf [N,1,H,W], pa_cf dict).

    `generator` draws whatever noise the model cannot abduct (e.g. the code of an added lesion), reproducibly."""
    model.eval()
    device = _device_of(model)
    seeded = {} if generator is None else {"generator": generator}  # models without unabducted noise take none
    images, parents = [], []
    for start in range(0, x.shape[0], batch_size):
        part = slice(start, start + batch_size)
        cf = model.counterfactual(
            x[part].to(device),
            {name: value[part].to(device) for name, value in pa.items()},
            {name: value[part].to(device) for name, value in do.items()},
            **seeded,
        )
        images.append(cf.x_cf.detach().float().cpu())
        parents.append({name: value.detach().cpu() for name, value in cf.pa_cf.items()})
    return torch.cat(images), {name: torch.cat([p[name] for p in parents]) for name in parents[0]}


@torch.no_grad()
def predict(predictors, x, batch_size=256):
    """Batched `predictors.predict(x)`: name -> class probabilities [N, K] or values [N], on the CPU."""
    if hasattr(predictors, "eval"):
        predictors.eval()
    device = _device_of(predictors)
    chunks = [predictors.predict(x[i : i + batch_size].to(device)) for i in range(0, x.shape[0], batch_size)]
    return {name: torch.cat([c[name].detach().cpu() for c in chunks]) for name in chunks[0]}


@torch.no_grad()
def expert_probabilities(expert, x, batch_size=128):
    """The expert's named probabilities (Effusion, Pneumonia, ...) as numpy arrays."""
    device = _device_of(expert)
    chunks = [expert.probabilities(x[i : i + batch_size].to(device)) for i in range(0, x.shape[0], batch_size)]
    return {name: torch.cat([c[name].detach().cpu() for c in chunks]).double().numpy() for name in chunks[0]}


def _constant(value, like):
    return torch.full_like(like, value)


# ----------------------------------------------------------------------------------------------------------------
# The figures


def _parent_scores(node, predicted, target, n_boot, seed):
    """Accuracy and macro AUROC (discrete) or MAE in raw units (continuous) of predictions against targets."""
    if node.kind == "continuous":
        return {"mae": metrics.summarise((predicted - target.float()).abs().numpy(), n_boot, seed)}
    labels = target.long().numpy()
    probs = predicted.double().numpy()
    return {
        "accuracy": metrics.summarise((probs.argmax(axis=1) == labels).astype(float), n_boot, seed),
        "auroc": metrics.summarise_statistic(
            lambda idx: metrics.macro_auroc(labels[idx], probs[idx]), len(labels), n_boot, seed
        ),
    }


def effectiveness(model, images, predictor_sets, seed, n_boot, batch_size):
    """Per parent: intervene with values from its marginal, read them back with each predictor set."""
    rng = np.random.default_rng(seed)
    results = {label: {} for label in predictor_sets}
    for node in images.graph.nodes:
        shuffled = torch.as_tensor(rng.permutation(len(images)), dtype=torch.long)
        target = images.pa[node.name][shuffled]
        x_cf, _ = counterfactuals(model, images.x, images.pa, {node.name: target}, batch_size)
        for label, predictors in predictor_sets.items():
            predicted = predict(predictors, x_cf)
            if node.name in predicted:
                results[label][node.name] = _parent_scores(node, predicted[node.name], target, n_boot, seed)
    return results


def predictor_reference(images, predictor_sets, seed, n_boot):
    """Each predictor set on the real evaluation images against their true values: the ceiling for effectiveness."""
    results = {}
    for label, predictors in predictor_sets.items():
        predicted = predict(predictors, images.x)
        results[label] = {
            node.name: _parent_scores(node, predicted[node.name], images.pa[node.name], n_boot, seed)
            for node in images.graph.nodes
            if node.name in predicted
        }
    return results


def _similarity(x, x_result, feats_x, feature_model, seed, n_boot, fid_boot):
    return {
        "l1": metrics.summarise(metrics.l1_255(x, x_result), n_boot, seed),
        "ssim": metrics.summarise(metrics.ssim(x, x_result), n_boot, seed),
        "fid": metrics.paired_fid_summary(feats_x, metrics.features(feature_model, x_result), fid_boot, seed),
    }


def composition(model, images, repeats, feature_model, feats_x, seed, n_boot, fid_boot, batch_size):
    """Null intervention do(pa := pa) applied repeatedly; each requested count compared with the originals."""
    results, x_now = {}, images.x
    for step in range(1, max(repeats) + 1):
        x_now, _ = counterfactuals(model, x_now, images.pa, dict(images.pa), batch_size)
        if step in repeats:
            results[f"repeats_{step}"] = _similarity(images.x, x_now, feats_x, feature_model, seed, n_boot, fid_boot)
    return results


def other_class(values, cardinality, rng):
    """For each value, a different class drawn uniformly from the rest."""
    offset = torch.as_tensor(rng.integers(1, cardinality, size=len(values)), dtype=values.dtype)
    return (values + offset) % cardinality


def reversibility(model, images, cycles, parent, feature_model, feats_x, seed, n_boot, fid_boot, batch_size):
    """do(parent := another class), then back to the observed parents; each requested cycle count compared."""
    rng = np.random.default_rng(seed + 1)
    node = images.graph[parent]
    target = other_class(images.pa[parent], node.cardinality, rng)
    results, x_now = {}, images.x
    for cycle in range(1, max(cycles) + 1):
        x_there, pa_there = counterfactuals(model, x_now, images.pa, {parent: target}, batch_size)
        x_now, _ = counterfactuals(model, x_there, pa_there, dict(images.pa), batch_size)
        if cycle in cycles:
            results[f"cycles_{cycle}"] = _similarity(images.x, x_now, feats_x, feature_model, seed, n_boot, fid_boot)
    results["intervened_parent"] = parent
    return results


def expert_shift(expert, images, disease_cfs, classes, seed, n_boot):
    """Mean expert probabilities on the observations and on the counterfactuals under do(disease := k)."""
    findings = ("Effusion", "Pneumonia")

    def summary(x):
        probs = expert_probabilities(expert, x)
        return {name: metrics.summarise(probs[name], n_boot, seed) for name in findings}

    results = {"observations": summary(images.x)}
    for k, name in enumerate(classes):
        results[f"do({DISEASE}={name})"] = summary(disease_cfs[k])
    return results


def phantom_figures(phantom_scm, images, disease_cfs, classes, seed, n_boot):
    """Effect localisation and error against the true counterfactual, for every do(disease := k)."""
    resolution = images.x.shape[-1]
    factual = images.pa[DISEASE]
    localisation, additions, removal = {}, {}, None
    shares = []
    for k, name in enumerate(classes):
        do = {DISEASE: _constant(k, factual)}
        x_true, pa_true, _ = phantom_scm.true_counterfactual(images.pa, images.u, do, resolution)
        region = phantom_scm.change_region(images.pa, images.u, pa_true, resolution)
        moved = (factual != k).numpy()
        share = metrics.effect_localisation(images.x, disease_cfs[k], region)
        share[~moved] = np.nan
        shares.append(share)
        localisation[f"do({DISEASE}={name})"] = metrics.summarise(share, n_boot, seed)
        if k == HEALTHY:
            diseased = torch.as_tensor(moved)
            if diseased.any():
                errors = metrics.removal_error(images.x[diseased], disease_cfs[k][diseased], x_true[diseased])
                removal = {key: metrics.summarise(v, n_boot, seed) for key, v in errors.items()}
        else:
            healthy = factual == HEALTHY
            if healthy.any():
                errors = metrics.addition_error(
                    images.x[healthy], disease_cfs[k][healthy], x_true[healthy], region[healthy]
                )
                additions[f"do({DISEASE}={name})"] = {
                    key: metrics.summarise(v, n_boot, seed) for key, v in errors.items()
                }
    localisation["all"] = metrics.summarise(np.concatenate(shares), n_boot, seed)
    return localisation, {"removal": removal, "additions": additions}


# ----------------------------------------------------------------------------------------------------------------
# The whole evaluation


def evaluate_model(
    model,
    splits,
    eval_predictors,
    expert=None,
    training_predictors=None,
    n=256,
    seed=0,
    phantom_scm=None,
    progress=None,
    batch_size=64,
    n_boot=1000,
    fid_boot=200,
    composition_repeats=(1, 10),
    reversibility_cycles=(1, 5),
    reversibility_parent=DISEASE,
):
    """All figures for one counterfactual model on `n` images of the evaluation split; returns a JSON-ready dict.

    - model: has `.graph` and `counterfactual(x, pa, do) -> Counterfactual` (x_cf, pa_cf).
    - eval_predictors: independent predictors (`predict(x)` -> name -> probabilities/values); training_predictors:
      the ones the generator was trained against, reported beside them (optional).
    - expert: the xrv expert; gives the probability shift and the FID feature space. Without it FID uses the
      evaluation predictors' features (the report names the space used).
    - phantom_scm: the phantom's SCM (default: the split's `.scm`, which phantom data sets carry); with it and the
      split's exogenous noise `.u`, effect localisation and the true-counterfactual error are computed.
    - progress(fraction, message) is called between stages.
    """
    if training_predictors is not None and (
        eval_predictors is training_predictors or type(eval_predictors) is type(training_predictors)
    ):
        raise ValueError(
            "the evaluation predictors must be independent of the training predictors (other architecture)"
        )
    torch.manual_seed(seed)
    split = evaluation_split(splits)
    images = EvaluationImages.draw(split, n, seed)
    phantom_scm = phantom_scm if phantom_scm is not None else getattr(split, "scm", None)
    graph = images.graph
    has_disease = DISEASE in graph
    classes = list(graph[DISEASE].categories) if has_disease else []
    phantom = phantom_scm is not None and images.u is not None
    stages = 4 + int(has_disease) + int(phantom)
    done = 0

    def step(message):
        nonlocal done
        if progress is not None:
            progress(done / stages, message)
        done += 1

    predictor_sets = {"evaluation_predictors": eval_predictors}
    if training_predictors is not None:
        predictor_sets["training_predictors"] = training_predictors
    feature_model = expert if expert is not None else eval_predictors
    feature_space = "expert (TorchXrayVision DenseNet)" if expert is not None else "evaluation predictors"

    results = {
        "seed": seed,
        "n": len(images),
        "n_boot": n_boot,
        "fid_boot": fid_boot,
        "graph": graph.name,
        "resolution": int(images.x.shape[-1]),
        "fid_feature_space": feature_space,
        "evaluation_predictors": {
            "architecture": getattr(eval_predictors, "architecture", type(eval_predictors).__name__),
            "seed": getattr(eval_predictors, "seed", None),
        },
    }

    step("predictors on the real images")
    results["predictors_on_observations"] = predictor_reference(images, predictor_sets, seed, n_boot)

    step("effectiveness")
    results["effectiveness"] = effectiveness(model, images, predictor_sets, seed, n_boot, batch_size)

    step("composition")
    feats_x = metrics.features(feature_model, images.x)
    results["composition"] = composition(
        model, images, set(composition_repeats), feature_model, feats_x, seed, n_boot, fid_boot, batch_size
    )

    step("reversibility")
    results["reversibility"] = reversibility(
        model,
        images,
        set(reversibility_cycles),
        reversibility_parent,
        feature_model,
        feats_x,
        seed,
        n_boot,
        fid_boot,
        batch_size,
    )

    results["expert_probability_shift"] = None
    results["effect_localisation"] = None
    results["true_counterfactual_error"] = None
    if has_disease:
        step("counterfactuals under each disease")
        disease_cfs = [
            counterfactuals(model, images.x, images.pa, {DISEASE: _constant(k, images.pa[DISEASE])}, batch_size)[0]
            for k in range(len(classes))
        ]
        if expert is not None:
            results["expert_probability_shift"] = expert_shift(expert, images, disease_cfs, classes, seed, n_boot)
        if phantom:
            step("true counterfactuals of the phantom")
            localisation, error = phantom_figures(phantom_scm, images, disease_cfs, classes, seed, n_boot)
            results["effect_localisation"] = localisation
            results["true_counterfactual_error"] = error
        results["judgement"] = judgement(results, images, disease_cfs)
    if progress is not None:
        progress(1.0, "evaluation done")
    return results


# A mean |x_cf - x| below this (on the [-1, 1] scale: a tenth of one 8-bit grey level) means nothing changed.
IDENTICAL_FLOOR = 1e-3
# A judge is "clearly better than chance" when its AUROC on real images is at least this and its 95% interval lies
# above 0.5.
MEANINGFUL_AUROC = 0.6


def judgement(results, images, disease_cfs):
    """Can these figures judge the model at all? The judges' own accuracy on real images, and whether the
    counterfactuals changed anything; `warnings` says in plain words what is not meaningful."""
    disease = images.pa[DISEASE]
    changes = [
        (x_cf - images.x)[disease != k].abs().mean().item()
        for k, x_cf in enumerate(disease_cfs)
        if (disease != k).any()
    ]
    mean_change = float(sum(changes) / len(changes)) if changes else 0.0
    judge = (results["predictors_on_observations"].get("evaluation_predictors") or {}).get(DISEASE) or {}
    auroc = judge.get("auroc")
    low = auroc["ci95"][0] if auroc else None
    meaningful = low is not None and low > 0.5 and auroc["mean"] >= MEANINGFUL_AUROC
    warnings = []
    if not meaningful:
        shown = (
            "not measured"
            if auroc is None
            else f"AUROC {auroc['mean']:.2f} [{auroc['ci95'][0]:.2f}, {auroc['ci95'][1]:.2f}]"
        )
        warnings.append(
            f"NOT MEANINGFUL: the evaluation judges read the disease on real images no better than chance ({shown}, "
            f"n {len(images)}); effectiveness figures cannot tell a good model from a bad one."
        )
    identical = mean_change < IDENTICAL_FLOOR
    if identical:
        warnings.append(
            f"COUNTERFACTUALS IDENTICAL TO THEIR INPUTS: mean |x_cf - x| {mean_change:.2g} under do(disease) is below "
            f"{IDENTICAL_FLOOR:g}; SSIM near 1 and FID near 0 then only say that nothing changed."
        )
    return {
        "judge_auroc_on_real": auroc,
        "judge_meaningful": bool(meaningful),
        "mean_abs_change": mean_change,
        "identical_to_inputs": bool(identical),
        "warnings": warnings,
    }


@torch.no_grad()
def disease_examples(model, dataset, indices, samples=8, expert=None, batch_size=16):
    """Material for the counterfactual figures: per example the observation and, under each do(disease := k),
    the counterfactual, its direct effect (x_cf - x) and per-pixel uncertainty (std over `samples` posterior draws).

    Returns numpy arrays: {"x": [K,H,W], "classes": [...], "counterfactuals"/"effects"/"uncertainty":
    {class: [K,H,W]}, "probabilities": {"observation"/class: [K, 3]} when an expert is given, "ids"}.
    """
    model.eval()
    index = torch.as_tensor(list(indices), dtype=torch.long)
    x = dataset.x[index].float()
    pa = {name: torch.as_tensor(dataset.pa[name])[index] for name in dataset.graph.names}
    classes = list(dataset.graph[DISEASE].categories)
    device = _device_of(model)
    out = {"x": x[:, 0].numpy(), "classes": classes, "counterfactuals": {}, "effects": {}, "uncertainty": {}}
    if expert is not None:
        out["probabilities"] = {"observation": _disease_probabilities(expert, x)}
    for k, name in enumerate(classes):
        cf = model.counterfactual(
            x.to(device),
            {key: value.to(device) for key, value in pa.items()},
            {DISEASE: _constant(k, pa[DISEASE]).to(device)},
            samples=samples,
        )
        x_cf = cf.x_cf.detach().float().cpu()
        out["counterfactuals"][name] = x_cf[:, 0].numpy()
        out["effects"][name] = (x_cf - x)[:, 0].numpy()
        out["uncertainty"][name] = cf.uncertainty.detach().float().cpu()[:, 0].numpy()
        if expert is not None:
            out["probabilities"][name] = _disease_probabilities(expert, x_cf)
    ids = getattr(dataset, "ids", None)
    out["ids"] = [str(ids[i]) for i in index.tolist()] if ids is not None else [str(i) for i in index.tolist()]
    return out


def _disease_probabilities(expert, x):
    return expert.disease_probabilities(x.to(_device_of(expert))).detach().double().cpu().numpy()

"""Reader-study statistics on the tidy answer table (one row per answer, the columns of the study export).

Every function takes plain pandas objects and returns plain dicts or DataFrames, so the module works from a notebook
as well as from `manage.py run_analysis`. A statistic that cannot be computed (too few participants, a constant
variable, no wrong first decisions) comes back as NaN together with a `note` saying why; nothing here raises on thin
data.

Conventions
- Differences are always "proposed minus the other" (proposed - baseline, proposed - real).
- Accuracy counts answered trials only; an unanswered trial is missing, not wrong.
- Block 2 is read as pairs: the `pre` row (first decision, real image alone) and the `post` row (final decision,
  real image beside the "if healthy" counterfactual) of one participant and one case.
"""

import math
import warnings

import numpy as np
import pandas as pd
from scipy import sparse
from scipy import stats as sps
from scipy.linalg import cho_factor, cho_solve
from scipy.optimize import minimize

SOURCES = ("real", "baseline", "proposed")
MODELS = ("baseline", "proposed")
CONDITIONS = ("healthy", "effusion", "pneumonia")
# How Block 1 was shown: "paired" (the paper's: every patient as real, baseline and proposed to each participant) or
# "counterbalanced" (each patient once per participant, its source by a Latin square over participants).
BLOCK1_DESIGNS = ("paired", "counterbalanced")
BLOCK2_CONDITIONS = ("effusion", "pneumonia")
DECISIONS = ("first", "final")
CONFIDENCE_SCALE = (1, 6)
PRIMARY_ENDPOINT = "block1.realness_ttest.proposed_vs_baseline"
# In the counterbalanced design two sources of one patient are seen by different participants: the confirmatory
# Block-1 tests are linear mixed models with crossed participant and patient effects (see `mixed_linear_source_tests`).
PRIMARY_ENDPOINTS = {"paired": PRIMARY_ENDPOINT, "counterbalanced": "block1.realness_lmm.proposed_vs_baseline"}
PRIMARY_ENDPOINT_DESCRIPTIONS = {
    "paired": "Block 1 realness, proposed vs baseline (paired t-test across participants)",
    "counterbalanced": "Block 1 realness, proposed vs baseline (linear mixed model, crossed random intercepts for "
    "participant and patient)",
}


def block1_design(answers):
    """The Block-1 design of the study behind `answers`: its `block1_design` column, paired when there is none."""
    if "block1_design" not in answers.columns:
        return "paired"
    values = sorted(set(answers["block1_design"].dropna().astype(str).unique()) - {""})
    if len(values) > 1 or not set(values) <= set(BLOCK1_DESIGNS):
        raise ValueError(f"the answers must come from one Block-1 design of {BLOCK1_DESIGNS}, got {values}")
    return values[0] if values else "paired"


def nan_result(note, **fields):
    """A statistic that could not be computed: its fields (NaN where undefined) plus the reason."""
    return {**fields, "note": note}


def _t_interval(values, level=0.95):
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return [math.nan, math.nan]
    mean = values.mean()
    half = sps.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return [float(mean - half), float(mean + half)]


# ---------------------------------------------------------------------------------------------------------------
# Proportions


def wilson_interval(successes, n, level=0.95):
    """Wilson score interval for a binomial proportion (well behaved at 0 and 1, unlike the Wald interval)."""
    if n == 0:
        return [math.nan, math.nan]
    z = sps.norm.ppf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # The interval always holds p; clamping removes rounding residue at p = 0 and p = 1 (e.g. a bound of 5.6e-17).
    return [float(min(p, max(0.0, centre - half))), float(max(p, min(1.0, centre + half)))]


def proportion(outcomes):
    """Share of ones among the non-missing 0/1 outcomes, with its Wilson 95% CI."""
    outcomes = pd.Series(outcomes, dtype=float).dropna()
    n = len(outcomes)
    k = int(outcomes.sum())
    if n == 0:
        return {"estimate": math.nan, "k": 0, "n": 0, "ci95": [math.nan, math.nan], "note": "no answers"}
    return {"estimate": k / n, "k": k, "n": n, "ci95": wilson_interval(k, n)}


# ---------------------------------------------------------------------------------------------------------------
# Tests


def paired_ttest(first, second):
    """Paired t-test of `first - second` over the index entries present in both (participants, usually).

    Returns t, df, two-sided p, the mean difference with its 95% CI and Cohen's d_z (mean difference / SD of the
    differences)."""
    both = pd.concat([pd.Series(first, dtype=float), pd.Series(second, dtype=float)], axis=1).dropna()
    diff = (both.iloc[:, 0] - both.iloc[:, 1]).to_numpy()
    n = len(diff)
    fields = {"t": math.nan, "df": math.nan, "p": math.nan, "mean_diff": math.nan, "dz": math.nan}
    if n < 2:
        return nan_result(f"needs at least 2 paired observations, has {n}", n=n, ci95=[math.nan, math.nan], **fields)
    mean = float(diff.mean())
    sd = float(diff.std(ddof=1))
    if sd == 0:
        return nan_result(
            "the differences have zero variance", n=n, ci95=[mean, mean], **{**fields, "mean_diff": mean, "df": n - 1}
        )
    t = mean / (sd / math.sqrt(n))
    return {
        "t": t,
        "df": n - 1,
        "p": float(2 * sps.t.sf(abs(t), n - 1)),
        "mean_diff": mean,
        "ci95": _t_interval(diff),
        "dz": mean / sd,
        "n": n,
    }


def one_sample_ttest(values, null_value=0.0):
    """t-test of the mean of `values` against `null_value`, with the mean and its 95% CI."""
    values = pd.Series(values, dtype=float).dropna()
    result = paired_ttest(values, pd.Series(null_value, index=values.index))
    result["mean"] = float(values.mean()) if len(values) else math.nan
    result["ci95_mean"] = _t_interval(values)
    return result


def pearson(x, y):
    """Pearson correlation with df = n - 2, two-sided p and a Fisher-z 95% CI."""
    both = pd.concat([pd.Series(x, dtype=float), pd.Series(y, dtype=float)], axis=1).dropna()
    n = len(both)
    fields = {"r": math.nan, "df": math.nan, "p": math.nan}
    if n < 3:
        return nan_result(f"needs at least 3 participants, has {n}", n=n, ci95=[math.nan, math.nan], **fields)
    for column, name in zip(both.columns, ("confidence", "accuracy")):
        if both[column].nunique() == 1:
            return nan_result(f"{name} is constant across participants", n=n, ci95=[math.nan, math.nan], **fields)
    r = float(np.corrcoef(both.iloc[:, 0], both.iloc[:, 1])[0, 1])
    r = max(-1.0, min(1.0, r))
    df = n - 2
    p = 0.0 if abs(r) == 1 else float(2 * sps.t.sf(abs(r) * math.sqrt(df / (1 - r * r)), df))
    return {"r": r, "df": df, "p": p, "n": n, "ci95": _fisher_interval(r, n)}


def _fisher_interval(r, n):
    if n <= 3 or abs(r) == 1:
        return [math.nan, math.nan]
    z, half = math.atanh(r), sps.norm.ppf(0.975) / math.sqrt(n - 3)
    return [math.tanh(z - half), math.tanh(z + half)]


def repeated_measures_correlation(frame, x, y, subject="participant"):
    """Within-subject correlation of x and y (Bakdash & Marusich's rmcorr).

    rmcorr is the partial correlation of x and y in the ANCOVA y ~ subject + x. Centring x and y on each subject's
    own means removes the subject term exactly, so r is the ordinary correlation of the centred values and the
    residual degrees of freedom are N - k - 1 (N observations, k subjects). Subjects with a single observation carry
    no within-subject information and are dropped."""
    data = frame[[subject, x, y]].dropna()
    data = data[data.groupby(subject)[x].transform("size") >= 2]
    n_obs, n_subjects = len(data), data[subject].nunique()
    df = n_obs - n_subjects - 1
    fields = {"r": math.nan, "df": math.nan, "p": math.nan}
    if df < 1:
        return nan_result(
            f"needs more observations than subjects + 1 (N={n_obs}, k={n_subjects})",
            n_obs=n_obs,
            n_subjects=n_subjects,
            **fields,
        )
    dx = data[x] - data.groupby(subject)[x].transform("mean")
    dy = data[y] - data.groupby(subject)[y].transform("mean")
    sxx, syy = float((dx * dx).sum()), float((dy * dy).sum())
    if sxx == 0 or syy == 0:
        which = x if sxx == 0 else y
        return nan_result(f"{which} never varies within a participant", n_obs=n_obs, n_subjects=n_subjects, **fields)
    r = max(-1.0, min(1.0, float((dx * dy).sum()) / math.sqrt(sxx * syy)))
    p = 0.0 if abs(r) == 1 else float(2 * sps.t.sf(abs(r) * math.sqrt(df / (1 - r * r)), df))
    return {"r": r, "df": df, "p": p, "n_obs": n_obs, "n_subjects": n_subjects}


def holm(pvalues):
    """Holm step-down adjustment of a {name: p} mapping; NaN p-values stay NaN and do not count in the family."""
    present = sorted(((p, name) for name, p in pvalues.items() if not _isnan(p)), key=lambda item: item[0])
    m = len(present)
    adjusted, running_max = {name: math.nan for name in pvalues}, 0.0
    for rank, (p, name) in enumerate(present):
        running_max = max(running_max, min(1.0, (m - rank) * p))
        adjusted[name] = running_max
    return adjusted


def _isnan(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def mcnemar_test(table):
    """McNemar test on a 2x2 first/final table: exact binomial when the discordant count is below 25, else the
    continuity-corrected chi-square."""
    from statsmodels.stats.contingency_tables import mcnemar

    discordant = table[0][1] + table[1][0]
    if discordant == 0:
        return nan_result("no discordant pairs (no decision changed)", statistic=math.nan, p=math.nan, exact=True)
    exact = discordant < 25
    result = mcnemar(np.asarray(table), exact=exact, correction=True)
    return {"statistic": float(result.statistic), "p": float(result.pvalue), "exact": exact}


# ---------------------------------------------------------------------------------------------------------------
# Block 1


def block1_answers(answers):
    return answers[answers["block"] == 1]


def accuracy_by_source(answers):
    rows = block1_answers(answers)
    return {source: proportion(rows.loc[rows["image_source"] == source, "correct"]) for source in SOURCES}


def accuracy_by_source_condition(answers):
    """Accuracy per image source and per condition the image shows (its correct answer)."""
    rows = block1_answers(answers)
    return {
        source: {
            condition: proportion(
                rows.loc[(rows["image_source"] == source) & (rows["true_condition"] == condition), "correct"]
            )
            for condition in CONDITIONS
        }
        for source in SOURCES
    }


def within_patient_difference(answers):
    """Proposed minus baseline correctness on the two synthetic images of the same patient seen by the same
    participant, per condition shown. The CI is a t-interval over those paired differences."""
    rows = block1_answers(answers).dropna(subset=["correct"])
    synthetic = rows[rows["image_source"].isin(MODELS)]
    wide = synthetic.pivot_table(
        index=["participant", "case"], columns="image_source", values="correct", aggfunc="mean"
    ).reindex(columns=list(MODELS))
    condition = synthetic.groupby(["participant", "case"])["true_condition"].first()
    wide = wide.join(condition).dropna(subset=list(MODELS))
    result = {}
    for name in CONDITIONS:
        diff = (wide["proposed"] - wide["baseline"])[wide["true_condition"] == name]
        if len(diff) == 0:
            result[name] = nan_result("no patient with both synthetic images answered", mean_diff=math.nan, n_pairs=0)
            result[name]["ci95"] = [math.nan, math.nan]
            continue
        result[name] = {"mean_diff": float(diff.mean()), "ci95": _t_interval(diff), "n_pairs": len(diff)}
    return result


def between_participant_difference(answers):
    """Counterbalanced design: proposed minus baseline correctness per condition shown, with patients as the units.

    No participant sees two images of one patient, so a patient's difference is between participants: the accuracy
    on its proposed image (among the participants shown it) minus the accuracy on its baseline image (among
    others). The CI is a t-interval over the patients."""
    rows = block1_answers(answers).dropna(subset=["correct"])
    synthetic = rows[rows["image_source"].isin(MODELS)]
    wide = synthetic.pivot_table(index="case", columns="image_source", values="correct", aggfunc="mean").reindex(
        columns=list(MODELS)
    )
    wide = wide.join(synthetic.groupby("case")["true_condition"].first()).dropna(subset=list(MODELS))
    result = {}
    for name in CONDITIONS:
        diff = (wide["proposed"] - wide["baseline"])[wide["true_condition"] == name]
        if len(diff) == 0:
            result[name] = nan_result(
                "no patient with answers to both its synthetic images", mean_diff=math.nan, n_patients=0
            )
            result[name]["ci95"] = [math.nan, math.nan]
            continue
        result[name] = {"mean_diff": float(diff.mean()), "ci95": _t_interval(diff), "n_patients": len(diff)}
    return result


def mixed_linear_source_tests(answers, value, comparisons):
    """Proposed minus each other source in `value` per Block-1 image, from one linear mixed model with crossed random
    intercepts for participant and patient (REML, see `crossed_intercepts_reml`; Wald z tests and intervals).

    This is the between/within structure of the counterbalanced design: every participant sees every source (on
    different patients), every patient is shown as every source (to different participants), and the model
    separates both sources of variation from the source effect."""
    rows = block1_answers(answers).dropna(subset=[value])
    names = [f"proposed_vs_{other}" for other in comparisons]
    counts = {
        "n_obs": len(rows),
        "n_participants": int(rows["participant"].nunique()),
        "n_patients": int(rows["case"].nunique()),
    }
    empty = {"mean_diff": math.nan, "ci95": [math.nan, math.nan], "z": math.nan, "p": math.nan, **counts}
    missing = [s for s in ("proposed", *comparisons) if not (rows["image_source"] == s).any()]
    if missing or counts["n_participants"] < 2 or counts["n_patients"] < 2 or rows[value].nunique() < 2:
        note = f"no {', '.join(missing)} images answered" if missing else "too little data or no variation"
        return {name: nan_result(note, **empty) for name in names}
    source = rows["image_source"].astype(str).to_numpy()
    # Treatment coding against proposed: an intercept, then one indicator per other source shown.
    others = sorted(set(source) - {"proposed"})
    design = np.column_stack([np.ones(len(rows))] + [(source == other).astype(float) for other in others])
    try:
        fit = crossed_intercepts_reml(
            rows[value].to_numpy(dtype=float),
            design,
            {"participant": rows["participant"].astype(str), "case": rows["case"].astype(str)},
        )
    except (ValueError, np.linalg.LinAlgError) as error:  # a fit that fails leaves the tests undefined, with the reason
        return {name: nan_result(f"mixed model failed ({type(error).__name__}: {error})", **empty) for name in names}
    z_crit = sps.norm.ppf(0.975)
    result = {}
    for other, name in zip(comparisons, names):
        column = 1 + others.index(other)
        # The model's coefficient is other - proposed; the convention here is proposed - other.
        estimate, se = -fit["coef"][column], fit["se"][column]
        result[name] = {
            "method": "linear mixed model (REML), crossed random intercepts for participant and patient",
            "mean_diff": float(estimate),
            "ci95": [float(estimate - z_crit * se), float(estimate + z_crit * se)],
            "se": float(se),
            "z": float(estimate / se),
            "p": float(2 * sps.norm.sf(abs(estimate / se))),
            "converged": fit["converged"],
            "random_effects_sd": fit["random_effects_sd"],
            **counts,
        }
    return result


def crossed_intercepts_reml(y, design, factors):
    """REML fit of y = design @ coef + one random intercept per level of each of two crossed `factors` (name -> labels
    per observation) + noise. Returns coef, their standard errors (sqrt of sigma^2 (X' V^-1 X)^-1, V the marginal
    covariance over sigma^2), random_effects_sd (per factor and residual) and whether the optimiser converged.

    The profiled REML criterion is the one lme4 minimises (Bates et al. 2015, J Stat Softw 67(1), eqs. 34-42), a
    function of the two standard-deviation ratios only. It needs only the design's cross-products, and its penalised
    normal equations have a diagonal block for the factor with more levels (a participant's intercept touches no other
    participant's), so that block is eliminated in closed form and each evaluation costs one dense Cholesky of the
    other factor's levels plus the coefficients (in a Block-1 study 12 patients + 3 coefficients), however many
    participants there are."""
    y = np.asarray(y, dtype=float)
    design = np.asarray(design, dtype=float)
    n, k = design.shape
    if len(factors) != 2 or n <= k or np.linalg.matrix_rank(design) < k:
        raise ValueError("need two factors, more observations than coefficients and a full-rank design")
    # The factor with more levels goes first: its block of the normal equations is the diagonal one eliminated.
    names = sorted(factors, key=lambda name: -pd.unique(np.asarray(factors[name])).size)
    codes = [pd.factorize(np.asarray(factors[name]))[0] for name in names]
    indicators = [sparse.csr_matrix((np.ones(n), (np.arange(n), code)), shape=(n, code.max() + 1)) for code in codes]
    eliminated, kept = indicators
    size_e = np.asarray(eliminated.sum(axis=0)).ravel()
    cross = (eliminated.T @ kept).toarray()
    kept_design = np.column_stack([kept.toarray(), design])
    zx_e = np.column_stack([cross, eliminated.T @ design])
    gram_k = kept_design.T @ kept_design
    zy_e, zy_k = eliminated.T @ y, kept_design.T @ y
    yy = float(y @ y)
    n_kept = kept.shape[1]

    def solve(variance_ratios):
        theta_e, theta_k = np.sqrt(variance_ratios)
        scale_k = np.concatenate([np.full(n_kept, theta_k), np.ones(k)])
        diagonal = theta_e**2 * size_e + 1.0
        border = theta_e * zx_e * scale_k
        schur = gram_k * np.outer(scale_k, scale_k) - border.T @ (border / diagonal[:, None])
        schur[:n_kept, :n_kept] += np.eye(n_kept)
        rhs_e = theta_e * zy_e
        rhs_k = scale_k * zy_k - border.T @ (rhs_e / diagonal)
        factor = cho_factor(schur)
        solution_k = cho_solve(factor, rhs_k)
        solution_e = (rhs_e - border @ solution_k) / diagonal
        penalised_rss = yy - rhs_e @ solution_e - scale_k * zy_k @ solution_k
        log_det = np.log(diagonal).sum() + 2 * np.log(np.diag(factor[0])).sum()
        return penalised_rss, log_det, factor, solution_k

    def criterion(variance_ratios):
        penalised_rss, log_det, _, _ = solve(variance_ratios)
        return log_det + (n - k) * (1 + math.log(2 * math.pi * penalised_rss / (n - k)))

    # Searched over the variance ratios rather than lme4's standard-deviation ratios: the criterion is flat in a
    # standard-deviation ratio at 0 (it enters squared), a stationary point where a gradient search would stop.
    optimum = minimize(
        criterion,
        x0=[1.0, 1.0],
        method="L-BFGS-B",
        jac="3-point",
        bounds=[(0, None)] * 2,
        options={"ftol": 1e-15, "gtol": 1e-9},
    )
    penalised_rss, _, factor, solution_k = solve(optimum.x)
    sigma2 = penalised_rss / (n - k)
    covariance = sigma2 * cho_solve(factor, np.eye(len(solution_k)))[n_kept:, n_kept:]
    return {
        "coef": solution_k[n_kept:],
        "se": np.sqrt(np.diag(covariance)),
        "random_effects_sd": {
            **{name: float(math.sqrt(ratio * sigma2)) for name, ratio in zip(names, optimum.x)},
            "residual": float(math.sqrt(sigma2)),
        },
        "converged": bool(optimum.success),
    }


def per_participant_by_source(answers, value, how="mean"):
    """Participant x source table of the mean (or total) of `value` over that participant's Block-1 images."""
    rows = block1_answers(answers).dropna(subset=[value])
    table = rows.groupby(["participant", "image_source"])[value].agg(how).unstack("image_source")
    return table.reindex(columns=list(SOURCES)).astype(float)


def paired_source_tests(table, comparisons):
    return {f"proposed_vs_{other}": paired_ttest(table["proposed"], table[other]) for other in comparisons}


def realness_auroc(answers):
    """Per participant, the probability that a real image gets a higher realness rating than an image of the given
    model (ties count half): the Mann-Whitney AUROC. 0.5 means the participant could not tell them apart."""
    rows = block1_answers(answers).dropna(subset=["realness"])
    participants = pd.Index(sorted(rows["participant"].unique()), name="participant")
    table = pd.DataFrame({model: _auroc_per_participant(rows, model) for model in MODELS}, index=participants)
    summary = {}
    for model in MODELS:
        test = one_sample_ttest(table[model] if len(table) else [], 0.5)
        summary[model] = {
            "mean": test["mean"],
            "ci95": test["ci95_mean"],
            "t": test["t"],
            "df": test["df"],
            "p": test["p"],
            "n": int(table[model].notna().sum()) if len(table) else 0,
        }
        if "note" in test:
            summary[model]["note"] = test["note"]
    return summary, table


def _auroc_per_participant(rows, model):
    """Each participant's AUROC of real against `model` images, from midranks within the participant (the
    Mann-Whitney U of the real images is their rank sum minus n(n+1)/2); NaN for a participant without both."""
    chosen = rows[rows["image_source"].isin(("real", model))]
    is_real = chosen["image_source"] == "real"
    ranks = chosen.groupby("participant")["realness"].rank(method="average")
    per_participant = pd.DataFrame(
        {"real_rank": ranks.where(is_real, 0.0), "n_real": is_real.astype(int), "n_model": (~is_real).astype(int)}
    ).groupby(chosen["participant"])
    totals = per_participant.sum()
    u = totals["real_rank"] - totals["n_real"] * (totals["n_real"] + 1) / 2
    pairs = totals["n_real"] * totals["n_model"]
    return (u / pairs).where(pairs > 0).astype(float)


# ---------------------------------------------------------------------------------------------------------------
# Block 2


def block2_pairs(answers):
    """One row per (participant, case) of Block 2: model shown, condition, first/final correctness and confidence.
    A case whose final answer is missing keeps its first decision with NaN for the final one."""
    rows = answers[answers["block"] == 2]
    columns = ["participant", "case", "cf_model", "true_condition"]
    measures = ["first_correct", "final_correct", "first_confidence", "final_confidence"]
    if rows.empty:
        return pd.DataFrame(
            {**{c: pd.Series(dtype=str) for c in columns}, **{m: pd.Series(dtype=float) for m in measures}}
        )
    wide = rows.pivot_table(
        index=["participant", "case"], columns="phase", values=["correct", "confidence"], aggfunc="mean"
    )
    wide.columns = [f"{value}_{phase}" for value, phase in wide.columns]
    wide = wide.reindex(columns=["correct_pre", "correct_post", "confidence_pre", "confidence_post"])
    wide.columns = measures
    labels = rows.groupby(["participant", "case"])[["cf_model", "true_condition"]].first()
    return labels.join(wide).reset_index()[[*columns, *measures]]


def first_accuracy(pairs):
    result = proportion(pairs["first_correct"])
    result["by_model"] = {model: proportion(pairs.loc[pairs["cf_model"] == model, "first_correct"]) for model in MODELS}
    return result


def final_accuracy(pairs):
    result = proportion(pairs["final_correct"])
    result["by_model"] = {model: proportion(pairs.loc[pairs["cf_model"] == model, "final_correct"]) for model in MODELS}
    return result


def _wrong_first(pairs, model):
    chosen = pairs[(pairs["cf_model"] == model) & (pairs["first_correct"] == 0)]
    return chosen.dropna(subset=["final_correct"])


def correction_rate(pairs):
    """Per model: among (participant, case) pairs whose first diagnosis was wrong, the share corrected finally."""
    result = {}
    for model in MODELS:
        result[model] = proportion(_wrong_first(pairs, model)["final_correct"])
        if result[model]["n"] == 0:
            result[model]["note"] = "no wrong first decisions"
    return result


def correction_rate_excluding_top_case(pairs):
    """The correction rate per model after dropping that model's case with the highest correction rate (ties go to
    the case with more wrong first decisions, then the smaller case id), so one easy case cannot drive the result."""
    result = {}
    for model in MODELS:
        wrong = _wrong_first(pairs, model)
        if wrong.empty:
            result[model] = {**proportion([]), "excluded_case": None, "note": "no wrong first decisions"}
            continue
        per_case = wrong.groupby("case")["final_correct"].agg(["mean", "size"]).reset_index()
        per_case = per_case.sort_values(["mean", "size", "case"], ascending=[False, False, True])
        top = per_case.iloc[0]
        result[model] = proportion(wrong.loc[wrong["case"] != top["case"], "final_correct"])
        result[model]["excluded_case"] = str(top["case"])
        result[model]["excluded_case_rate"] = float(top["mean"])
        if result[model]["n"] == 0:
            result[model]["note"] = "no wrong first decisions outside the excluded case"
    return result


def accuracy_change_per_participant(pairs):
    """Participant x model table of final minus first accuracy over that participant's cases of the model."""
    complete = pairs.dropna(subset=["first_correct", "final_correct"])
    change = complete.assign(change=complete["final_correct"] - complete["first_correct"])
    table = change.groupby(["participant", "cf_model"])["change"].mean().unstack("cf_model")
    return table.reindex(columns=list(MODELS)).astype(float)


def accuracy_change_per_case(pairs):
    """Case x model table of mean final minus first accuracy (the paper's Fig. 5a)."""
    complete = pairs.dropna(subset=["first_correct", "final_correct"])
    change = complete.assign(change=complete["final_correct"] - complete["first_correct"])
    table = change.groupby(["case", "cf_model"])["change"].mean().unstack("cf_model")
    return table.reindex(columns=list(MODELS)).astype(float)


def accuracy_change_summary(per_participant):
    result = {}
    for model in MODELS:
        test = one_sample_ttest(per_participant[model])
        result[model] = {"mean": test["mean"], "ci95": test["ci95_mean"], "t": test["t"], "df": test["df"]}
        result[model]["p"] = test["p"]
        if "note" in test:
            result[model]["note"] = test["note"]
    result["proposed_vs_baseline"] = paired_ttest(per_participant["proposed"], per_participant["baseline"])
    return result


def confidence_accuracy_table(pairs, decision, model, condition=None):
    """Per participant: mean confidence and mean accuracy over the Block-2 cases of one model (and condition)."""
    chosen = pairs[pairs["cf_model"] == model]
    if condition is not None:
        chosen = chosen[chosen["true_condition"] == condition]
    columns = {f"{decision}_confidence": "confidence", f"{decision}_correct": "accuracy"}
    chosen = chosen.rename(columns=columns).dropna(subset=["confidence", "accuracy"])
    return chosen.groupby("participant")[["confidence", "accuracy"]].mean()


def confidence_accuracy(pairs, condition=None):
    return {
        decision: {
            model: pearson(*_columns(confidence_accuracy_table(pairs, decision, model, condition))) for model in MODELS
        }
        for decision in DECISIONS
    }


def _columns(table):
    return table["confidence"], table["accuracy"]


def confidence_accuracy_by_condition(pairs):
    by_condition = {condition: confidence_accuracy(pairs, condition) for condition in BLOCK2_CONDITIONS}
    return {
        decision: {
            model: {condition: by_condition[condition][decision][model] for condition in BLOCK2_CONDITIONS}
            for model in MODELS
        }
        for decision in DECISIONS
    }


def confidence_accuracy_within(pairs):
    """Repeated-measures (within-participant) correlation of confidence and correctness per decision and model."""
    result = {}
    for decision in DECISIONS:
        result[decision] = {}
        for model in MODELS:
            chosen = pairs[pairs["cf_model"] == model]
            result[decision][model] = repeated_measures_correlation(
                chosen, f"{decision}_confidence", f"{decision}_correct"
            )
    return result


def confidence_as_probability(confidence, scale=CONFIDENCE_SCALE, n_options=len(CONDITIONS)):
    """Map the confidence scale linearly onto [1/n_options, 1]: the lowest rating means guessing among the
    diagnosis options, the highest means certainty."""
    low, high = scale
    chance = 1.0 / n_options
    return chance + (np.asarray(confidence, dtype=float) - low) / (high - low) * (1 - chance)


def brier_scores(pairs, scale=CONFIDENCE_SCALE):
    """Brier score (mean squared gap between the confidence-as-probability and correctness; 0 is perfect) per
    decision and model, pooled over answers, with a t-interval over the participants' own Brier scores."""
    result = {}
    for decision in DECISIONS:
        result[decision] = {}
        for model in MODELS:
            chosen = pairs[pairs["cf_model"] == model].dropna(subset=[f"{decision}_confidence", f"{decision}_correct"])
            if chosen.empty:
                result[decision][model] = nan_result("no answers", brier=math.nan, n=0)
                result[decision][model]["ci95"] = [math.nan, math.nan]
                continue
            squared = (
                confidence_as_probability(chosen[f"{decision}_confidence"], scale) - chosen[f"{decision}_correct"]
            ) ** 2
            per_participant = squared.groupby(chosen["participant"]).mean()
            result[decision][model] = {
                "brier": float(squared.mean()),
                "ci95": _t_interval(per_participant),
                "n": len(chosen),
            }
    return result


def switch_tables(pairs):
    """Per model: first/final agreement counts and McNemar's test of wrong->right against right->wrong."""
    result = {}
    complete = pairs.dropna(subset=["first_correct", "final_correct"])
    for model in MODELS:
        chosen = complete[complete["cf_model"] == model]
        first, final = chosen["first_correct"], chosen["final_correct"]
        counts = {
            "right_to_right": int(((first == 1) & (final == 1)).sum()),
            "right_to_wrong": int(((first == 1) & (final == 0)).sum()),
            "wrong_to_right": int(((first == 0) & (final == 1)).sum()),
            "wrong_to_wrong": int(((first == 0) & (final == 0)).sum()),
        }
        table = [
            [counts["right_to_right"], counts["right_to_wrong"]],
            [counts["wrong_to_right"], counts["wrong_to_wrong"]],
        ]
        result[model] = {**counts, "unchanged": counts["right_to_right"] + counts["wrong_to_wrong"]}
        result[model]["mcnemar"] = mcnemar_test(table)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Mixed-effects logistic regressions


# The crossed random intercepts of the logistic models, in the order of their variance parameters.
RANDOM_INTERCEPTS = ("participant", "case")


def mixed_logistic(data, formula, description):
    """Logistic regression of `correct` with crossed random intercepts for participant and case.

    Fitted with statsmodels' BinomialBayesMixedGLM (variational Bayes; estimates are posterior means with +-1.96
    posterior SD intervals). If that fit fails or is degenerate, a GEE logistic model with exchangeable correlation
    within participants is fitted instead (population-averaged, no case effect), and `method` says so."""
    data = data.dropna(subset=["correct"]).copy()
    base = {"formula": formula, "description": description, "n_obs": len(data)}
    if len(data) < 10 or data["participant"].nunique() < 2 or data["correct"].nunique() < 2:
        return {**base, "method": None, "note": "too little data or no variation in correctness"}
    try:
        return {**base, **_fit_bayes_mixed(data, formula)}
    except Exception as error:  # noqa: BLE001 - any fitting failure falls back to GEE, the reason is reported
        failure = f"{type(error).__name__}: {error}"
    try:
        return {**base, **_fit_gee(data, formula), "note": f"mixed model failed ({failure}); GEE fitted instead"}
    except Exception as error:  # noqa: BLE001
        return {**base, "method": None, "note": f"mixed model failed ({failure}); GEE failed ({error})"}


def _fit_bayes_mixed(data, formula):
    """The variational Bayes fit of the crossed random-intercept logistic model.

    The objective (the evidence lower bound) and its optimum are statsmodels' own; two things make the fit fast and
    reliable at a thousand participants. The random-effect design is built directly as sparse indicator columns (a
    formula builds a dense observation x participant matrix first). And the bound is maximised by a Newton trust-region
    method, `_newton_trust_region` below, instead of a quasi-Newton one."""
    import patsy
    from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

    endog, exog = patsy.dmatrices(formula, data, return_type="dataframe")
    rows = data.loc[exog.index]
    indicators, ident = [], []
    for number, name in enumerate(RANDOM_INTERCEPTS):
        codes, levels = pd.factorize(rows[name], sort=True)
        cells = (np.ones(len(codes)), (np.arange(len(codes)), codes))
        indicators.append(sparse.csr_array(cells, shape=(len(codes), len(levels))))
        ident.append(np.full(len(levels), number))
    model = BinomialBayesMixedGLM(
        endog.iloc[:, 0].to_numpy(),
        exog.to_numpy(),
        sparse.hstack(indicators, format="csr"),
        np.concatenate(ident),
        fep_names=list(exog.columns),
        vcp_names=list(RANDOM_INTERCEPTS),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # fixed start: the same data give the same numbers
        fit = model.fit_vb(fit_method=_newton_trust_region, minim_opts={"gtol": 1e-5}, rng=np.random.default_rng(0))
    names = model.fep_names
    means, sds = np.asarray(fit.fe_mean), np.asarray(fit.fe_sd)
    if not (np.all(np.isfinite(means)) and np.all(np.isfinite(sds))):
        raise ValueError("non-finite estimates")
    fixed = {}
    for name, mean, sd in zip(names, means, sds):
        low, high = mean - 1.96 * sd, mean + 1.96 * sd
        fixed[name] = {
            "estimate": float(mean),
            "sd": float(sd),
            "ci95": [float(low), float(high)],
            "odds_ratio": float(np.exp(mean)),
            "odds_ratio_ci95": [float(np.exp(low)), float(np.exp(high))],
        }
    random_sd = {name: float(np.exp(value)) for name, value in zip(model.vcp_names, np.asarray(fit.vcp_mean))}
    return {
        "method": "BinomialBayesMixedGLM (variational Bayes)",
        "converged": bool(fit.optim_retvals.success),
        "fixed_effects": fixed,
        "random_effects_sd": random_sd,
    }


def _newton_trust_region(fun, x0, jac, gtol, **_):
    """Minimise `fun` by scipy's Newton trust-region method `trust-krylov`, Hessian-vector products taken as central
    differences of the exact gradient `jac`; a callable `method` of `scipy.optimize.minimize` (other arguments unused).

    Why not quasi-Newton: scipy's BFGS updates a dense inverse Hessian over every variational parameter (two per
    participant and case) by matrix products, a cost that grows with the cube of the number of participants, and
    `trust-constr` with dense BFGS Hessians stalled on a counterbalanced study of 1,000 participants (from some step
    on, every conjugate-gradient subproblem ran to its iteration limit and no step was tried again); limited-memory
    BFGS is cheap but stopped short of the optimum on simulated studies of 800 and 1,000 participants (at 1,000 with
    gradient components in the hundreds) once its line search made no more progress (the posterior SDs of the
    variance parameters enter the bound doubly exponentially). The trust region bounds every step, the Krylov
    subproblem copes with the bound's non-concave regions, and each Hessian product costs two gradient evaluations,
    a pass over the answers each. It stops once the gradient's Euclidean norm is below `gtol`, which bounds every
    component as statsmodels' default BFGS stop does."""

    def hessian_times(x, direction):
        length = np.linalg.norm(direction)
        if length == 0:
            return np.zeros_like(direction)
        step = 1e-6 / length
        return (jac(x + step * direction) - jac(x - step * direction)) / (2 * step)

    return minimize(fun, x0, jac=jac, hessp=hessian_times, method="trust-krylov", options={"gtol": gtol})


def _fit_gee(data, formula):
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = smf.gee(
            formula, "participant", data, family=sm.families.Binomial(), cov_struct=sm.cov_struct.Exchangeable()
        ).fit()
    fixed = {}
    intervals = fit.conf_int()
    for name in fit.params.index:
        low, high = intervals.loc[name]
        fixed[name] = {
            "estimate": float(fit.params[name]),
            "sd": float(fit.bse[name]),
            "ci95": [float(low), float(high)],
            "p": float(fit.pvalues[name]),
            "odds_ratio": float(np.exp(fit.params[name])),
            "odds_ratio_ci95": [float(np.exp(low)), float(np.exp(high))],
        }
    return {"method": "GEE logistic, exchangeable within participant", "fixed_effects": fixed}


def glmm_block1(answers):
    data = block1_answers(answers)[["participant", "case", "image_source", "correct"]]
    formula = "correct ~ C(image_source, Treatment('real'))"
    return mixed_logistic(data, formula, "Block 1 correctness by image source (reference: real)")


def block2_decisions(pairs):
    """One row per Block-2 decision: each pair's first and final correctness as rows with a `decision` column."""
    return pd.concat(
        [
            pairs.assign(decision=decision, correct=pairs[f"{decision}_correct"])[
                ["participant", "case", "cf_model", "decision", "correct"]
            ]
            for decision in DECISIONS
        ],
        ignore_index=True,
    )


def glmm_block2(pairs):
    long = block2_decisions(pairs)
    formula = "correct ~ C(decision, Treatment('first')) * C(cf_model, Treatment('baseline'))"
    return mixed_logistic(long, formula, "Block 2 correctness by decision (first/final) x counterfactual model")


# ---------------------------------------------------------------------------------------------------------------
# Export for external MRMC software


def imrmc_realness(answers):
    """iMRMC list-mode rows for the real-versus-synthetic task: truth 1 for a real image, 0 for a synthetic one,
    score = realness. Modality = counterfactual model; each modality holds the patient's real image (read once, used
    in both modalities) and that model's image, so the two modalities are read on the same cases."""
    rows = block1_answers(answers).dropna(subset=["realness"])
    records = []
    for model in MODELS:
        for source in ("real", model):
            chosen = rows[rows["image_source"] == source]
            kind = "real" if source == "real" else "synthetic"
            records.append(
                pd.DataFrame(
                    {
                        "reader": chosen["participant"].astype(str),
                        "case": chosen["case"].astype(str) + f"-{kind}",
                        "modality": model,
                        "score": chosen["realness"].astype(float),
                        "truth": 1 if source == "real" else 0,
                    }
                )
            )
    table = pd.concat(records, ignore_index=True) if records else pd.DataFrame()
    return table.sort_values(["modality", "reader", "case"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------------
# Everything together


def analyse(answers, fit_models=True, progress=None):
    """Run every statistic on the tidy answer table. Returns (results, tables): a JSON-ready nested dict and the
    per-participant / per-case tables behind it. `fit_models=False` skips the (slow) mixed models; `progress` is
    called with the name of each stage."""
    progress = progress or (lambda stage: None)
    progress("block 1")
    design = block1_design(answers)
    realness = per_participant_by_source(answers, "realness", "mean")
    reasons = per_participant_by_source(answers, "n_reasons", "sum")
    auroc_summary, auroc_table = realness_auroc(answers)
    progress("block 2")
    pairs = block2_pairs(answers)
    change_by_participant = accuracy_change_per_participant(pairs)
    change_by_case = accuracy_change_per_case(pairs)
    block1 = {
        "accuracy_by_source": accuracy_by_source(answers),
        "accuracy_by_source_condition": accuracy_by_source_condition(answers),
    }
    if design == "counterbalanced":
        block1["between_participant_difference"] = between_participant_difference(answers)
    else:
        block1["within_patient_difference"] = within_patient_difference(answers)
    block1.update(
        {
            "realness_mean": _column_means(realness),
            "realness_ttest": paired_source_tests(realness, ("baseline", "real")),
            "reasons_mean": _column_means(reasons),
            "reasons_ttest": paired_source_tests(reasons, ("real", "baseline")),
            "realness_auroc": auroc_summary,
        }
    )
    if design == "counterbalanced":
        block1["realness_lmm"] = mixed_linear_source_tests(answers, "realness", ("baseline", "real"))
        block1["reasons_lmm"] = mixed_linear_source_tests(answers, "n_reasons", ("real", "baseline"))
    block2 = {
        "n_pairs": len(pairs),
        "first_accuracy": first_accuracy(pairs),
        "final_accuracy": final_accuracy(pairs),
        "correction_rate": correction_rate(pairs),
        "correction_rate_excluding_top_case": correction_rate_excluding_top_case(pairs),
        "accuracy_change": accuracy_change_summary(change_by_participant),
        "confidence_accuracy_r": confidence_accuracy(pairs),
        "confidence_accuracy_r_by_condition": confidence_accuracy_by_condition(pairs),
        "confidence_accuracy_rmcorr": confidence_accuracy_within(pairs),
        "brier": brier_scores(pairs),
        "switch_table": switch_tables(pairs),
    }
    for key in ("correction_rate", "correction_rate_excluding_top_case"):
        rates = block2[key]
        block2[key]["proposed_minus_baseline"] = rates["proposed"]["estimate"] - rates["baseline"]["estimate"]
    skipped = {"method": None, "note": "mixed models not requested"}
    if fit_models:
        progress("mixed models")
    results = {
        "block1_design": design,
        "block1_design_note": BLOCK1_DESIGN_NOTES[design],
        "block1": block1,
        "block2": block2,
        "models": {
            "glmm_block1": glmm_block1(answers) if fit_models else skipped,
            "glmm_block2": glmm_block2(pairs) if fit_models else dict(skipped),
        },
    }
    results["multiplicity"] = apply_holm(results, HOLM_FAMILIES[design], design)
    tables = {
        "realness_per_participant": realness,
        "reasons_per_participant": reasons,
        "realness_auroc_per_participant": auroc_table,
        "block2_pairs": pairs,
        "accuracy_change_per_participant": change_by_participant,
        "accuracy_change_per_case": change_by_case,
        "confidence_accuracy_per_participant": _confidence_accuracy_long(pairs),
        "imrmc_realness": imrmc_realness(answers),
    }
    return results, tables


def _column_means(table):
    return {source: float(table[source].mean()) if table[source].notna().any() else math.nan for source in SOURCES}


def _confidence_accuracy_long(pairs):
    frames = []
    for decision in DECISIONS:
        for model in MODELS:
            table = confidence_accuracy_table(pairs, decision, model).reset_index()
            frames.append(table.assign(decision=decision, cf_model=model))
    columns = ["participant", "decision", "cf_model", "confidence", "accuracy"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


# The confirmatory family for the Holm correction, primary endpoint first. Paths point into the results dict; each
# entry gets a `p_holm` next to its `p`.
HOLM_FAMILY = (
    PRIMARY_ENDPOINT,
    "block1.realness_ttest.proposed_vs_real",
    "block1.reasons_ttest.proposed_vs_real",
    "block1.reasons_ttest.proposed_vs_baseline",
    "block2.switch_table.baseline.mcnemar",
    "block2.switch_table.proposed.mcnemar",
    "block2.confidence_accuracy_r.final.baseline",
    "block2.confidence_accuracy_r.final.proposed",
)


# The counterbalanced design's family: the Block-1 tests are the mixed models (the paired t-tests stay secondary).
HOLM_FAMILIES = {
    "paired": HOLM_FAMILY,
    "counterbalanced": tuple(
        path.replace("realness_ttest", "realness_lmm").replace("reasons_ttest", "reasons_lmm") for path in HOLM_FAMILY
    ),
}
BLOCK1_DESIGN_NOTES = {
    "paired": "Paired Block-1 design (the paper's): each participant saw every patient as the real image and as "
    "both counterfactuals, so sources are compared within participants and within patients (paired t-tests across "
    "participants; within-patient differences).",
    "counterbalanced": "Counterbalanced Block-1 design: each participant saw every patient once, its source "
    "assigned by a Latin square over participants, so two sources of one patient were always seen by different "
    "participants. The confirmatory realness and reasons tests are linear mixed models with crossed random "
    "intercepts for participant and patient; the within-patient paired difference does not apply and is replaced by "
    "a between-participant difference per patient; the per-participant paired t-tests are secondary (each "
    "participant's mean per source is over different patients).",
}


def apply_holm(results, family=HOLM_FAMILY, design="paired"):
    entries = {path: _lookup(results, path) for path in family}
    adjusted = holm({path: entry["p"] for path, entry in entries.items()})
    for path, entry in entries.items():
        entry["p_holm"] = adjusted[path]
    return {
        "method": "Holm step-down, family-wise error 0.05",
        "primary_endpoint": PRIMARY_ENDPOINTS[design],
        "primary_endpoint_description": PRIMARY_ENDPOINT_DESCRIPTIONS[design],
        "family": list(family),
        "p_holm": adjusted,
    }


def _lookup(results, path):
    node = results
    for key in path.split("."):
        node = node[key]
    return node

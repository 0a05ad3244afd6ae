"""A behaviour model of study participants, for dry runs and power checks.

A `Profile` says how simulated readers behave: Block-1 accuracy, realness ratings and ticked reasons per image
source; Block-2 first-decision accuracy, how often each counterfactual model makes them correct a wrong first
diagnosis (or spoil a right one), and how their confidence tracks correctness. Participants differ by a random
ability (on the logit scale) and a random realness bias.

The same answer functions serve two callers: `simulate_answers` builds a whole tidy answer table (the study export's
columns) for fast statistical checks, and the `simulate_participants` command asks them for one trial at a time while
driving real sessions through the participant API. No Django here.
"""

import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from studycolumns import ANSWER_COLUMNS

SOURCES = ("real", "baseline", "proposed")
MODELS = ("baseline", "proposed")
CONDITIONS = ("healthy", "effusion", "pneumonia")
N_REASONS = 7
CONFIDENCE_SCALE = (1, 6)
REALNESS_SCALE = (1, 100)


@dataclass(frozen=True)
class SourceBehaviour:
    """Block-1 behaviour for images of one source."""

    accuracy: float = 0.5
    realness_mean: float = 50.0
    realness_sd: float = 20.0
    reasons_mean: float = 1.3  # expected number of the 7 reasons ticked per image


@dataclass(frozen=True)
class ModelBehaviour:
    """Block-2 behaviour once the counterfactual of one model is shown."""

    correction: float = 0.27  # P(final right | first wrong)
    spoil: float = 0.05  # P(final wrong | first right)
    confidence_shift: float = 0.0  # added to the final confidence
    confidence_slope: float = 0.0  # extra final confidence when the final answer is right


@dataclass(frozen=True)
class Profile:
    block1: dict = field(default_factory=lambda: {source: SourceBehaviour() for source in SOURCES})
    block2_first_accuracy: float = 0.5
    block2: dict = field(default_factory=lambda: {model: ModelBehaviour() for model in MODELS})
    confidence_mean: float = 3.5
    confidence_sd: float = 1.0
    confidence_slope: float = 0.0  # extra first confidence when the first answer is right
    ability_sd: float = 0.5  # participant random intercept of correctness, logit scale
    realness_bias_sd: float = 8.0  # participant random intercept of realness ratings
    patient_realness_sd: float = 0.0  # patient random intercept of realness (simulate_answers only)
    rt_mean_ms: float = 6000.0

    @classmethod
    def from_dict(cls, data):
        """Build a profile from a (possibly partial) dict, e.g. a JSON profile file; unknown keys are an error."""
        data = dict(data)
        _reject_unknown(data, {f.name for f in fields(cls)}, "profile")
        block1 = {source: SourceBehaviour() for source in SOURCES}
        for source, values in (data.pop("block1", None) or {}).items():
            _reject_unknown({source: 0}, set(SOURCES), "profile.block1")
            _reject_unknown(values, {f.name for f in fields(SourceBehaviour)}, f"profile.block1.{source}")
            block1[source] = SourceBehaviour(**values)
        block2 = {model: ModelBehaviour() for model in MODELS}
        for model, values in (data.pop("block2", None) or {}).items():
            _reject_unknown({model: 0}, set(MODELS), "profile.block2")
            _reject_unknown(values, {f.name for f in fields(ModelBehaviour)}, f"profile.block2.{model}")
            block2[model] = ModelBehaviour(**values)
        profile = cls(block1=block1, block2=block2, **data)
        profile.validate()
        return profile

    def validate(self):
        probabilities = {f"block1.{s}.accuracy": b.accuracy for s, b in self.block1.items()}
        probabilities["block2_first_accuracy"] = self.block2_first_accuracy
        for model, behaviour in self.block2.items():
            probabilities[f"block2.{model}.correction"] = behaviour.correction
            probabilities[f"block2.{model}.spoil"] = behaviour.spoil
        for name, value in probabilities.items():
            if not 0 <= value <= 1:
                raise ValueError(f"profile {name} must be a probability in [0, 1], got {value}")
        for source, behaviour in self.block1.items():
            if not 0 <= behaviour.reasons_mean <= N_REASONS:
                raise ValueError(f"profile block1.{source}.reasons_mean must be in [0, {N_REASONS}]")

    def with_realness_shift(self, source, shift):
        """The same profile with `shift` added to the mean realness of one source (a planted effect)."""
        behaviour = self.block1[source]
        block1 = {**self.block1, source: replace(behaviour, realness_mean=behaviour.realness_mean + shift)}
        return replace(self, block1=block1)


def _reject_unknown(data, allowed, where):
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {', '.join(map(str, unknown))} (allowed: {sorted(allowed)})")


def load_profile(path):
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    try:
        return Profile.from_dict(data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error


# ---------------------------------------------------------------------------------------------------------------
# One simulated reader, answering one trial at a time


@dataclass(frozen=True)
class Reader:
    ability: float  # logit offset added to every correctness probability
    realness_bias: float


def new_reader(rng, profile):
    return Reader(ability=rng.normal(0, profile.ability_sd), realness_bias=rng.normal(0, profile.realness_bias_sd))


def _shifted_probability(p, ability):
    p = min(max(p, 1e-6), 1 - 1e-6)
    return 1 / (1 + math.exp(-(math.log(p / (1 - p)) + ability)))


def _diagnose(rng, truth, right):
    if right:
        return truth
    others = [c for c in CONDITIONS if c != truth]
    return others[int(rng.integers(len(others)))]


def _rating(value, scale):
    low, high = scale
    return int(min(max(round(value), low), high))


def _confidence(rng, mean, sd):
    return _rating(rng.normal(mean, sd), CONFIDENCE_SCALE)


def answer_block1(rng, profile, reader, source, truth, patient_shift=0.0):
    """Diagnosis, realness (1-100), ticked reason numbers (1-7), slider start and response time for one image.
    `patient_shift` is added to the realness of every image of the patient (a patient effect)."""
    behaviour = profile.block1[source]
    right = rng.random() < _shifted_probability(behaviour.accuracy, reader.ability)
    realness = _rating(
        rng.normal(behaviour.realness_mean + reader.realness_bias + patient_shift, behaviour.realness_sd),
        REALNESS_SCALE,
    )
    ticked = rng.random(N_REASONS) < behaviour.reasons_mean / N_REASONS
    slider_start = 50
    if realness == slider_start:  # the slider must be moved before submitting
        realness += 1
    return {
        "diagnosis": _diagnose(rng, truth, right),
        "realness": realness,
        "reasons": [int(i) + 1 for i in np.flatnonzero(ticked)],
        "slider_start": slider_start,
        "rt_ms": int(rng.exponential(profile.rt_mean_ms)) + 500,
    }


def answer_block2_first(rng, profile, reader, truth):
    right = rng.random() < _shifted_probability(profile.block2_first_accuracy, reader.ability)
    mean = profile.confidence_mean + profile.confidence_slope * (right - 0.5)
    return {"diagnosis": _diagnose(rng, truth, right), "confidence": _confidence(rng, mean, profile.confidence_sd)}


def answer_block2_final(rng, profile, model, truth, first):
    """The final decision after the counterfactual of `model`: a wrong first answer is corrected with probability
    `correction`, a right one spoilt with probability `spoil`; otherwise the first diagnosis stands."""
    behaviour = profile.block2[model]
    first_right = first["diagnosis"] == truth
    if first_right:
        right = rng.random() >= behaviour.spoil
        diagnosis = truth if right else _diagnose(rng, truth, False)
    else:
        right = rng.random() < behaviour.correction
        diagnosis = truth if right else first["diagnosis"]
    mean = first["confidence"] + behaviour.confidence_shift + behaviour.confidence_slope * (right - 0.5)
    return {"diagnosis": diagnosis, "confidence": _confidence(rng, mean, profile.confidence_sd)}


# ---------------------------------------------------------------------------------------------------------------
# Whole answer tables


def default_cases(n_block1=12, n_block2=12):
    """Block-1 patients (real condition, condition both counterfactuals show) and Block-2 cases (condition)."""
    block1 = [(f"p{i + 1:02d}", CONDITIONS[i % 3], CONDITIONS[(i // 3 + i) % 3]) for i in range(n_block1)]
    block2 = [(f"c{i + 1:02d}", ("effusion", "pneumonia")[i % 2]) for i in range(n_block2)]
    return block1, block2


def simulate_answers(profile, n_participants, seed=0, n_block1=12, n_block2=12, block1_design="paired"):
    """A tidy answer table, as the study export writes it (strings and plain numbers), for `n_participants`
    simulated readers (`simulated` is 1 in every row). Block-2 models are counterbalanced: participant j sees case i
    with model (i + j) mod 2.

    Block 1 follows `block1_design`: "paired" shows every patient as each source; "counterbalanced" shows each
    patient once, the source from the study platform's Latin square (patients ranked by the conditions their real
    and synthetic images show; participant number i, from 1, sees the patient of rank r as SOURCES[(i + r) mod 3]),
    with a random effect per patient (`Profile.patient_realness_sd`) on realness that the analysis must separate from
    the source."""
    if block1_design not in ("paired", "counterbalanced"):
        raise ValueError(f"unknown Block-1 design {block1_design!r}")
    rng = np.random.default_rng(seed)
    block1_cases, block2_cases = default_cases(n_block1, n_block2)
    ranks = {
        case[0]: rank for rank, case in enumerate(sorted(block1_cases, key=lambda case: (case[1], case[2], case[0])))
    }
    # A generator of its own, so that the answers of a profile without patient effects do not change with it.
    patient_rng = np.random.default_rng([seed, 1])
    patient_shift = {case: patient_rng.normal(0, profile.patient_realness_sd) for case, _, _ in block1_cases}
    start = pd.Timestamp("2025-06-02T09:00:00Z")
    records = []
    for j in range(n_participants):
        reader = new_reader(rng, profile)
        participant = f"sim{j + 1:03d}"
        trials = [
            (case, source, real if source == "real" else synthetic)
            for case, real, synthetic in block1_cases
            for source in SOURCES
            if block1_design == "paired" or source == SOURCES[(j + 1 + ranks[case]) % 3]
        ]
        order = rng.permutation(len(trials))
        clock = start + pd.Timedelta(hours=j)
        for index, position in enumerate(order):
            case, source, truth = trials[position]
            answer = answer_block1(rng, profile, reader, source, truth, patient_shift[case])
            clock += pd.Timedelta(milliseconds=answer["rt_ms"])
            records.append(_row(participant, 1, index, case, source, truth, "block1", "", answer, clock))
        for index, position in enumerate(rng.permutation(len(block2_cases))):
            case, truth = block2_cases[position]
            model = MODELS[(position + j) % 2]
            first = answer_block2_first(rng, profile, reader, truth)
            final = answer_block2_final(rng, profile, model, truth, first)
            for phase, answer in (("pre", first), ("post", final)):
                clock += pd.Timedelta(seconds=5)
                records.append(_row(participant, 2, index, case, "real", truth, phase, model, answer, clock))
    table = pd.DataFrame.from_records(records, columns=list(ANSWER_COLUMNS))
    return table.assign(block1_design=block1_design)


def _row(participant, block, index, case, source, truth, phase, model, answer, clock):
    reasons = answer.get("reasons", [])
    return {
        "participant": participant,
        "external_id": f"ext-{participant}",
        "block": block,
        "trial_index": index,
        "case": case,
        "image_source": source,
        "true_condition": truth,
        "phase": phase,
        "cf_model": model,
        "diagnosis": answer["diagnosis"],
        "correct": int(answer["diagnosis"] == truth),
        "realness": answer.get("realness", ""),
        "slider_start": answer.get("slider_start", ""),
        "reasons": ";".join(str(r) for r in reasons) if block == 1 else "",
        "n_reasons": len(reasons) if block == 1 else "",
        "confidence": answer.get("confidence", ""),
        "rt_ms": answer.get("rt_ms", 4000),
        "answered_at": clock.isoformat(),
        "simulated": 1,
    }

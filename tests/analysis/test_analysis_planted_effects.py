"""The analysis finds an effect planted in simulated readers at its planted size, and stays at the nominal false
positive rate when nothing is planted."""

import math

import numpy as np
import pytest

from analysis import stats
from analysis.frames import answers_from_records
from analysis.simulate import ModelBehaviour, Profile, simulate_answers


def realness_tests(answers):
    return stats.paired_source_tests(stats.per_participant_by_source(answers, "realness"), ("baseline", "real"))


def test_planted_realness_effect_is_detected_at_its_size():
    profile = Profile().with_realness_shift("proposed", 10)
    answers = answers_from_records(simulate_answers(profile, 30, seed=11).to_dict("records"))
    tests = realness_tests(answers)
    for comparison in ("proposed_vs_baseline", "proposed_vs_real"):
        result = tests[comparison]
        assert result["p"] < 0.001
        low, high = result["ci95"]
        assert low < 10 < high
        assert result["mean_diff"] == pytest.approx(10, abs=3)


def test_without_a_planted_effect_tests_reject_at_about_the_nominal_rate():
    rejections, n_tests = 0, 0
    for seed in range(150):
        answers = simulate_answers(Profile(), 12, seed=seed, n_block1=6, n_block2=0)
        for result in realness_tests(answers).values():
            n_tests += 1
            rejections += result["p"] < 0.05
    rate = rejections / n_tests
    assert 0.015 <= rate <= 0.10, rate


def test_planted_correction_benefit_shows_in_the_correction_rates():
    profile = Profile(block2={"baseline": ModelBehaviour(correction=0.2), "proposed": ModelBehaviour(correction=0.6)})
    answers = answers_from_records(simulate_answers(profile, 40, seed=5).to_dict("records"))
    rates = stats.correction_rate(stats.block2_pairs(answers))
    assert rates["baseline"]["ci95"][0] < 0.2 < rates["baseline"]["ci95"][1]
    assert rates["proposed"]["ci95"][0] < 0.6 < rates["proposed"]["ci95"][1]
    assert rates["proposed"]["ci95"][0] > rates["baseline"]["ci95"][1]


def test_planted_calibration_shows_within_participants():
    calibrated = ModelBehaviour(correction=0.3, confidence_slope=3.0)
    profile = Profile(block2={"baseline": ModelBehaviour(correction=0.3), "proposed": calibrated})
    answers = answers_from_records(simulate_answers(profile, 30, seed=8).to_dict("records"))
    within = stats.confidence_accuracy_within(stats.block2_pairs(answers))
    assert within["final"]["proposed"]["r"] > 0.4 and within["final"]["proposed"]["p"] < 0.001
    assert abs(within["first"]["proposed"]["r"]) < 0.2


def test_mixed_model_recovers_a_planted_accuracy_difference():
    profile = Profile.from_dict(
        {"block1": {"real": {"accuracy": 0.5}, "baseline": {"accuracy": 0.3}, "proposed": {"accuracy": 0.7}}}
    )
    answers = answers_from_records(simulate_answers(profile, 24, seed=2).to_dict("records"))
    model = stats.glmm_block1(answers)
    assert model["method"].startswith("BinomialBayesMixedGLM")
    effects = model["fixed_effects"]
    proposed = effects["C(image_source, Treatment('real'))[T.proposed]"]
    baseline = effects["C(image_source, Treatment('real'))[T.baseline]"]
    # planted log-odds ratios against real: logit(0.7) = +0.85 and logit(0.3) = -0.85
    assert proposed["ci95"][0] < math.log(0.7 / 0.3) < proposed["ci95"][1]
    assert baseline["ci95"][0] < -math.log(0.7 / 0.3) < baseline["ci95"][1]
    assert set(model["random_effects_sd"]) == {"participant", "case"}


def test_mixed_model_failure_falls_back_to_gee_and_says_so(monkeypatch):
    def broken(data, formula):
        raise np.linalg.LinAlgError("singular matrix")

    monkeypatch.setattr(stats, "_fit_bayes_mixed", broken)
    answers = answers_from_records(simulate_answers(Profile(), 10, seed=3).to_dict("records"))
    model = stats.glmm_block2(stats.block2_pairs(answers))
    assert model["method"].startswith("GEE")
    assert "singular matrix" in model["note"]
    assert "C(decision, Treatment('first'))[T.final]" in model["fixed_effects"]


def test_profile_files_are_checked():
    with pytest.raises(ValueError, match="probability"):
        Profile.from_dict({"block2_first_accuracy": 1.5})
    with pytest.raises(ValueError, match="unknown key"):
        Profile.from_dict({"block1": {"proposed": {"realnes_mean": 60}}})
    assert Profile.from_dict({"block1": {"proposed": {"realness_mean": 60}}}).block1["proposed"].realness_mean == 60

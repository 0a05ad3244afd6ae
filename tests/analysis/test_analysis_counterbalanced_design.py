"""Analysis of a counterbalanced Block-1 design: two sources of one patient are seen by different participants, so
the confirmatory realness and reasons tests are mixed models with crossed participant and patient effects, the
within-patient paired difference is replaced by a between-participant one, and the report says which design it read.
"""

import io
import json
import math
import zlib
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from django.core.management import call_command

from analysis import stats
from analysis.frames import answers_from_records, answers_from_study
from analysis.report import build_document, render_html, summary_lines
from analysis.simulate import Profile, answer_block1, new_reader, simulate_answers
from studyplatform import services
from studyplatform.models import Participant, Response, Stimulus
from tests.study.factories import complete_study, run_whole_session

PATIENT_EFFECTS = Profile(patient_realness_sd=15.0)
READERS_SEED = 0


def counterbalanced(profile, n, seed, **sizes):
    table = simulate_answers(profile, n, seed=seed, block1_design="counterbalanced", **sizes)
    return answers_from_records(table.to_dict("records"))


def test_simulated_counterbalanced_readers_see_each_patient_once_as_the_latin_square_says():
    answers = counterbalanced(Profile(), 6, seed=1)
    block1 = answers[answers["block"] == 1]
    assert (block1.groupby(["participant", "case"]).size() == 1).all()
    assert set(block1.groupby("participant").size()) == {12}
    assert set(Counter(zip(block1["case"], block1["image_source"])).values()) == {2}
    assert set(block1.groupby(["participant", "image_source"]).size()) == {4}


def test_a_planted_realness_effect_is_recovered_by_the_mixed_model():
    answers = counterbalanced(PATIENT_EFFECTS.with_realness_shift("proposed", 10), 45, seed=11)
    results, _ = stats.analyse(answers, fit_models=False)
    assert results["block1_design"] == "counterbalanced"
    for comparison in ("proposed_vs_baseline", "proposed_vs_real"):
        test = results["block1"]["realness_lmm"][comparison]
        assert test["p"] < 0.01, test
        assert test["ci95"][0] < 10 < test["ci95"][1]
        assert test["mean_diff"] == pytest.approx(10, abs=4)
        assert test["n_patients"] == 12 and test["n_participants"] == 45
        # The patient effect is found and kept out of the source comparison.
        assert test["random_effects_sd"]["case"] > 5
    assert results["multiplicity"]["primary_endpoint"] == "block1.realness_lmm.proposed_vs_baseline"
    assert "block1.reasons_lmm.proposed_vs_real" in results["multiplicity"]["family"]
    assert not any("ttest" in path for path in results["multiplicity"]["family"])
    assert results["block1"]["realness_lmm"]["proposed_vs_baseline"]["p_holm"] < 0.01


def test_the_mixed_model_keeps_the_nominal_false_positive_rate():
    rejections = n_tests = 0
    for seed in range(60):
        answers = simulate_answers(
            PATIENT_EFFECTS, 12, seed=seed, n_block1=6, n_block2=0, block1_design="counterbalanced"
        )
        for test in stats.mixed_linear_source_tests(answers, "realness", ("baseline", "real")).values():
            n_tests += 1
            rejections += test["p"] < 0.05
    assert 0.0 <= rejections / n_tests <= 0.12, rejections / n_tests


def test_the_within_patient_difference_is_replaced_by_a_between_participant_one():
    profile = Profile.from_dict({"block1": {"baseline": {"accuracy": 0.4}, "proposed": {"accuracy": 0.8}}})
    answers = counterbalanced(profile, 30, seed=3)
    results, _ = stats.analyse(answers, fit_models=False)
    assert "within_patient_difference" not in results["block1"]
    difference = results["block1"]["between_participant_difference"]
    for condition in ("healthy", "effusion", "pneumonia"):
        assert difference[condition]["n_patients"] == 4 and difference[condition]["mean_diff"] > 0.15
    # Within-patient pairs do not exist in this design: the paired statistic finds none.
    assert all(r["n_pairs"] == 0 for r in stats.within_patient_difference(answers).values())


def test_the_correctness_model_has_crossed_participant_and_patient_effects_in_both_designs():
    profile = Profile.from_dict(
        {"block1": {"real": {"accuracy": 0.5}, "baseline": {"accuracy": 0.3}, "proposed": {"accuracy": 0.7}}}
    )
    model = stats.glmm_block1(counterbalanced(profile, 36, seed=2))
    assert model["method"].startswith("BinomialBayesMixedGLM")
    assert set(model["random_effects_sd"]) == {"participant", "case"}
    proposed = model["fixed_effects"]["C(image_source, Treatment('real'))[T.proposed]"]
    assert proposed["ci95"][0] < math.log(0.7 / 0.3) < proposed["ci95"][1]


def test_the_paired_design_keeps_its_paired_tests():
    answers = answers_from_records(simulate_answers(Profile(), 6, seed=1, n_block1=6, n_block2=4).to_dict("records"))
    results, _ = stats.analyse(answers, fit_models=False)
    assert results["block1_design"] == "paired"
    assert "within_patient_difference" in results["block1"] and "realness_lmm" not in results["block1"]
    assert results["multiplicity"]["primary_endpoint"] == "block1.realness_ttest.proposed_vs_baseline"
    assert results["multiplicity"]["family"] == list(stats.HOLM_FAMILY)


def document_of(answers):
    results, _ = stats.analyse(answers, fit_models=False)
    return build_document(results, int(answers["participant"].nunique()), [], {"input": "simulated answers"})


def test_the_report_prints_the_design_and_the_primary_test_it_used():
    document = document_of(counterbalanced(PATIENT_EFFECTS.with_realness_shift("proposed", 10), 12, seed=5))
    figures = dict.fromkeys(
        ("realness_by_source", "accuracy_by_source_condition", "accuracy_change_by_case", "confidence_accuracy"), b""
    )
    page = render_html(document, figures)
    assert "Block-1 design: counterbalanced." in page
    assert "between participants" in page and "crossed random intercepts for participant and patient" in page
    assert "z = " in page.split("<h2>Primary endpoint</h2>")[1].split("<h2>")[0]
    lines = summary_lines(document)
    assert "Block-1 design: counterbalanced" in lines
    assert any(line.startswith("Primary endpoint") and "z = " in line for line in lines)
    paired = document_of(
        answers_from_records(simulate_answers(Profile(), 6, seed=1, n_block1=6, n_block2=4).to_dict("records"))
    )
    assert "Block-1 design: paired" in summary_lines(paired)
    assert "Block-1 design: paired." in render_html(paired, figures)


# --- a counterbalanced study in the database, exported and analysed --------------------------------------------------


def take_part(participant, profile, number):
    """Reader `number` of `profile` answers a whole session through the services (the pages' path). Every answer is
    drawn from its own generator, seeded by the reader, the patient and the image source, so the draws are the same
    whatever order the session serves the trials in (each session draws its own order) and whatever order the
    database returns rows in."""
    reader = new_reader(np.random.default_rng([READERS_SEED, number]), profile)
    participant.refresh_from_db()
    plan = {trial["id"]: trial for trial in participant.plan}

    def answer(shown):
        trial = plan[shown["id"]]
        stimulus = Stimulus.objects.select_related("case").get(pk=trial["stimulus"])
        if trial["phase"] == "block1":
            image = zlib.crc32(f"{stimulus.case.label}/{stimulus.source}".encode())
            rng = np.random.default_rng([READERS_SEED, number, image])
            drawn = answer_block1(rng, profile, reader, stimulus.source, stimulus.condition)
            return {**{key: drawn[key] for key in ("diagnosis", "realness", "reasons", "rt_ms")}, "slider_moved": True}
        return {"diagnosis": stimulus.condition, "rt_ms": 2000, "confidence": 4}

    run_whole_session(participant, answer)


@pytest.mark.django_db
def test_a_counterbalanced_study_is_exported_and_analysed_with_its_planted_effect(media_root, tmp_path):
    study = complete_study(block1_patients=6, block2_cases=2, block1_design="counterbalanced")
    # ratings of sd 10 around 50 and 80 stay clear of the scale's ends, so the planted 30 is the effect on the scale
    quiet = {source: replace(behaviour, realness_sd=10.0) for source, behaviour in Profile().block1.items()}
    profile = Profile(block1=quiet, realness_bias_sd=0.0).with_realness_shift("proposed", 30)
    for number in range(9):
        participant, _ = services.start_session(study, external_id=f"reader{number}")
        take_part(participant, profile, number)
    assert Participant.objects.filter(study=study, status="completed").count() == 9
    assert Response.objects.filter(participant__study=study, block=1).count() == 9 * 6

    answers, participants = answers_from_study(study.slug)
    assert set(answers["block1_design"]) == {"counterbalanced"}
    out = tmp_path / "analysis"
    stdout = io.StringIO()
    call_command("run_analysis", study.slug, out=str(out), format="json,html", no_models=True, stdout=stdout)
    document = json.loads((out / "analysis.json").read_text())
    assert document["n_participants"] == 9 and document["block1_design"] == "counterbalanced"
    primary = document["block1"]["realness_lmm"]["proposed_vs_baseline"]
    low, high = primary["ci95"]
    # within three standard errors of the planted effect (a 95% interval alone misses it on one draw in twenty); the
    # answers are the same on every backend and run (see take_part), so this is one fixed draw, not a coin toss
    standard_error = (high - low) / (2 * 1.96)
    assert primary["p"] < 0.01 and low - standard_error < 30 < high + standard_error
    assert document["multiplicity"]["primary_endpoint"] == "block1.realness_lmm.proposed_vs_baseline"
    assert "Block-1 design: counterbalanced" in stdout.getvalue()
    assert "Block-1 design: counterbalanced." in (out / "report.html").read_text()


@pytest.mark.django_db
def test_simulate_participants_takes_a_counterbalanced_study(media_root):
    study = complete_study(block1_patients=6, block2_cases=2, block1_design="counterbalanced")
    stdout = io.StringIO()
    call_command("simulate_participants", study.slug, "--n", "3", verbosity=0, stdout=stdout)
    assert "3 of 3 simulated participants completed" in stdout.getvalue()
    block1 = Response.objects.filter(participant__study=study, block=1).select_related("stimulus", "case")
    assert block1.count() == 3 * 6
    shown = Counter((r.case.label, r.stimulus.source) for r in block1)
    assert set(shown.values()) == {1} and len(shown) == 18
    assert Counter((r.participant_id, r.case_id) for r in block1).most_common(1)[0][1] == 1

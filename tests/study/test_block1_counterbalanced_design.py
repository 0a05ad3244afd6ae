"""The counterbalanced Block-1 design: each participant sees each patient once, and a Latin square over participants
shows every patient as real, baseline and proposed equally often, every source showing the conditions in the same
proportions. The paired design (the paper's) is unchanged."""

import csv
import io
import json
from collections import Counter

import pytest
from django.core.exceptions import ValidationError

from studyplatform import counterbalance, export, services
from studyplatform.models import Participant, Response, Study
from tests.study.admin_pages import form_as_shown
from tests.study.factories import (
    StudyFactory,
    add_block1_case,
    add_block2_case,
    complete_study,
    run_whole_session,
    valid_answer,
)

pytestmark = pytest.mark.django_db

SOURCES = ("real", "baseline", "proposed")
CONDITIONS = ("healthy", "effusion", "pneumonia")


def demo_like_patients(n=12):
    """Patients as the demo builds them: real conditions balanced, each patient's counterfactuals showing another
    condition in rotation. (label, position, true_condition, cf_condition)."""
    patients = []
    for index in range(n):
        condition = CONDITIONS[index % 3]
        target = CONDITIONS[(CONDITIONS.index(condition) + 1 + index % 2) % 3]
        patients.append((f"P{index + 1:02d}", index, condition, target))
    return patients


def shown_condition(patient, source):
    return patient[2] if source == "real" else patient[3]


def counterbalanced_study(n_patients=6, **fields):
    return complete_study(block1_patients=n_patients, block2_cases=2, block1_design="counterbalanced", **fields)


def block1_trials(participant):
    return [t for t in participant.plan if t["phase"] == "block1"]


# --- the Latin square ----------------------------------------------------------------------------------------------


def test_every_three_participants_see_each_patient_once_as_each_source():
    patients = demo_like_patients()
    for first in range(1, 10):
        shown = Counter(
            (label, source)
            for index in range(first, first + 3)
            for label, source in counterbalance.block1_sources(index, patients).items()
        )
        assert set(shown.values()) == {1} and len(shown) == 3 * len(patients)


def test_each_participant_sees_each_source_on_a_third_of_the_patients():
    patients = demo_like_patients()
    for index in range(1, 7):
        assert Counter(counterbalance.block1_sources(index, patients).values()) == {s: 4 for s in SOURCES}


def test_every_source_shows_every_condition_in_the_same_proportions():
    patients = demo_like_patients()
    by_label = {p[0]: p for p in patients}
    for index in range(1, 7):
        shown = counterbalance.block1_sources(index, patients)
        for source in SOURCES:
            # Within one participant: each source shows all three conditions (4 images: 2, 1 and 1).
            conditions = Counter(shown_condition(by_label[label], s) for label, s in shown.items() if s == source)
            assert sorted(conditions.values()) == [1, 1, 2], (index, source, conditions)
    over_a_cycle = Counter(
        (source, shown_condition(by_label[label], source))
        for index in (1, 2, 3)
        for label, source in counterbalance.block1_sources(index, patients).items()
    )
    assert over_a_cycle == {(s, c): 4 for s in SOURCES for c in CONDITIONS}


def test_the_paired_plan_is_the_one_the_platform_always_made():
    """A fixed seed and stimulus set give the same paired plan (order, slider starts, attention check, Block-2
    assignment) as before the counterbalanced design existed."""
    block1 = [(f"P{i:02d}", {"real": 10 * i + 1, "baseline": 10 * i + 2, "proposed": 10 * i + 3}) for i in range(1, 5)]
    block2 = [(f"C{i:02d}", i - 1, 100 + i, {"baseline": 200 + i, "proposed": 300 + i}) for i in range(1, 3)]
    checks = [{"after": 5, "instruction": "Select Pneumonia.", "expected": "pneumonia"}]
    plan, assignment = counterbalance.build_plan(
        seed=20250602,
        participant_index=7,
        block1_cases=block1,
        block2_cases=block2,
        slider_ranges={"block1": (("slider_start", (1, 100)),)},
        attention_checks=checks,
    )
    assert [(t.get("case"), t.get("source") or t["phase"], t.get("slider_start")) for t in plan] == [
        ("P03", "real", 9),
        ("P01", "proposed", 67),
        ("P04", "proposed", 47),
        ("P01", "baseline", 82),
        ("P03", "proposed", 49),
        (None, "attention", None),
        ("P02", "proposed", 63),
        ("P01", "real", 43),
        ("P03", "baseline", 23),
        ("P04", "baseline", 77),
        ("P02", "real", 84),
        ("P04", "real", 29),
        ("P02", "baseline", 93),
        ("C01", "pre", None),
        ("C01", "post", None),
        ("C02", "pre", None),
        ("C02", "post", None),
    ]
    assert assignment == {"C01": "proposed", "C02": "baseline"}


def test_an_unknown_design_is_refused():
    with pytest.raises(ValueError, match="unknown Block-1 design"):
        counterbalance.build_plan(
            seed=1,
            participant_index=1,
            block1_cases=[],
            block2_cases=[],
            slider_ranges={"block1": (("slider_start", (1, 100)),)},
            block1_design="x",
        )


# --- sessions of a counterbalanced study --------------------------------------------------------------------------


def test_sessions_show_each_patient_once_and_balance_sources_across_participants(media_root):
    study = counterbalanced_study(6)
    participants = [services.start_session(study, external_id=f"pid{n}")[0] for n in range(6)]
    shown = Counter()
    for participant in participants:
        trials = block1_trials(participant)
        assert sorted(t["case"] for t in trials) == [f"P0{n}" for n in range(1, 7)]
        assert Counter(t["source"] for t in trials) == {s: 2 for s in SOURCES}
        shown.update((t["case"], t["source"]) for t in trials)
    assert set(shown.values()) == {2} and len(shown) == 18
    # The plan's stimulus is the image of the assigned source, and the stored seed reproduces the plan.
    first = participants[0]
    for trial in block1_trials(first):
        assert first.study.cases.get(label=trial["case"]).stimuli.get(pk=trial["stimulus"]).source == trial["source"]
    plan, _ = services.session_plan(study, first.seed, first.index)
    assert [{k: v for k, v in t.items() if k != "id"} for t in plan] == [
        {k: v for k, v in t.items() if k != "id"} for t in first.plan
    ]


def test_a_paired_study_still_shows_every_image_of_every_patient(media_root):
    study = complete_study(block1_patients=3, block2_cases=2)
    assert study.block1_design == "paired" and study.block1_images == 9
    participant, _ = services.start_session(study, external_id="pid")
    assert Counter(t["case"] for t in block1_trials(participant)) == {"P01": 3, "P02": 3, "P03": 3}


def test_trial_count_attention_checks_and_progress_follow_the_design(media_root):
    check = {"after": 6, "instruction": "Select Pneumonia for this question.", "expected": "pneumonia"}
    study = counterbalanced_study(6, attention_checks=[check])
    assert study.block1_images == 6
    participant, _ = services.start_session(study, external_id="pid")
    assert participant.n_trials == 6 + 1 + 2 * 2
    assert [t["phase"] for t in participant.plan if t["block"] == 1][-1] == "attention"
    services.begin_block(participant, 1)
    participant.refresh_from_db()
    progress = services.next_step(participant)["progress"]
    assert (progress["block"], progress["block_total"], progress["total"]) == (1, 7, 11)
    run_whole_session(
        participant, answer=lambda t: valid_answer(t, diagnosis="pneumonia" if t["phase"] == "attention" else "healthy")
    )
    participant.refresh_from_db()
    assert participant.status == Participant.Status.COMPLETED and not participant.excluded
    assert Response.objects.filter(participant=participant, phase="block1").count() == 6


def test_an_attention_check_after_the_last_counterbalanced_image_is_a_problem(media_root):
    check = {"after": 7, "instruction": "Select Pneumonia for this question.", "expected": "pneumonia"}
    study = counterbalanced_study(6, open_it=False, attention_checks=[check])
    problems = services.study_problems(study)
    assert any("'after' must be a Block-1 trial number (1 to 6 in the counterbalanced design)" in p for p in problems)
    study.block1_design = Study.Block1Design.PAIRED
    assert not services.study_problems(study)


# --- opening ------------------------------------------------------------------------------------------------------


def test_the_counterbalanced_design_needs_a_multiple_of_three_patients(media_root):
    study = complete_study(open_it=False, block1_patients=4, block1_design="counterbalanced")
    with pytest.raises(ValidationError, match="divisible by 3"):
        services.open_study(study)


def test_the_counterbalanced_design_needs_the_same_condition_proportions_for_every_source(media_root):
    study = StudyFactory(block1_patients=3, block2_cases=1, block1_design="counterbalanced")
    add_block1_case(study, 0, cf_condition="pneumonia")  # a healthy patient whose counterfactuals show pneumonia
    add_block1_case(study, 1)
    add_block1_case(study, 2)
    add_block2_case(study, 0)
    with pytest.raises(ValidationError, match="real images show healthy 1, effusion 1, pneumonia 1, the "):
        services.open_study(study)
    study.block1_design = Study.Block1Design.PAIRED
    assert not services.study_problems(study)


def test_instructions_that_state_another_number_of_images_are_a_problem(media_root):
    study = counterbalanced_study(6, open_it=False, instructions_block1="You will see 18 chest X-rays one at a time.")
    assert any(
        "speak of 18 images, but each participant sees 6 in the counterbalanced design" in p
        for p in services.study_problems(study)
    )
    study.instructions_block1 = "You will see 6 chest X-rays one at a time."
    assert not services.study_problems(study)


# --- frozen, admin, export -----------------------------------------------------------------------------------------


def test_the_design_cannot_change_once_the_study_is_open(admin_client, media_root):
    study = counterbalanced_study(3)
    reply = admin_client.patch(
        f"/api/studies/{study.slug}/", {"block1_design": "paired"}, content_type="application/json"
    )
    assert reply.status_code == 409 and "block1_design" in reply.json()["fields"]
    stale = Study.objects.get(pk=study.pk)
    stale.block1_design = Study.Block1Design.PAIRED
    with pytest.raises(services.StudyFrozen, match="block1_design"):
        services.save_study(stale)
    assert Study.objects.get(pk=study.pk).block1_design == "counterbalanced"


def test_the_admin_offers_both_designs_and_explains_the_trade_off(admin_client, media_root):
    draft = StudyFactory()
    page = admin_client.get(f"/admin/studyplatform/study/{draft.pk}/change/").content.decode()
    assert 'name="block1_design" value="paired"' in page and 'name="block1_design" value="counterbalanced"' in page
    assert "found by elimination" in page and "compared between participants" in page
    assert "1 (counterbalanced design, a multiple of 3 patients)" in page
    opened = counterbalanced_study(3)
    page = admin_client.get(f"/admin/studyplatform/study/{opened.pk}/change/").content.decode()
    assert 'name="block1_design"' not in page and "counterbalanced (each patient once per participant" in page


def admin_form(client, study, **changes):
    """The study change form as the admin renders and posts it (every inline included), with `changes`."""
    form = form_as_shown(client.get(f"/admin/studyplatform/study/{study.pk}/change/"))
    form.update(changes)
    return form


def test_the_admin_form_stores_the_chosen_design(admin_client, db):
    draft = StudyFactory()
    form = admin_form(admin_client, draft, block1_design="counterbalanced")
    reply = admin_client.post(f"/admin/studyplatform/study/{draft.pk}/change/", form)
    assert reply.status_code == 302, reply.content.decode()[:3000]
    assert Study.objects.get(pk=draft.pk).block1_design == "counterbalanced"


def test_the_answers_export_names_the_design(media_root):
    for design in ("paired", "counterbalanced"):
        study = complete_study(block1_patients=3, block2_cases=2, block1_design=design)
        participant, _ = services.start_session(study, external_id="pid")
        run_whole_session(participant)
        buffer = io.StringIO()
        export.write_answers_csv(study, buffer)
        rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
        assert {r["block1_design"] for r in rows} == {design}
        block1 = [r for r in rows if r["block"] == "1"]
        assert len(block1) == (3 if design == "counterbalanced" else 9)


def test_an_attention_check_the_chosen_design_never_reaches_is_a_form_error(admin_client, db):
    check = {"after": 5, "instruction": "Select Pneumonia for this question.", "expected": "pneumonia"}
    draft = StudyFactory(block1_patients=3, attention_checks=[check])
    form = admin_form(admin_client, draft, block1_design="counterbalanced", attention_checks=json.dumps([check]))
    reply = admin_client.post(f"/admin/studyplatform/study/{draft.pk}/change/", form)
    assert reply.status_code == 200
    assert "(1 to 3 in the counterbalanced design)" in reply.content.decode()
    assert Study.objects.get(pk=draft.pk).block1_design == "paired"

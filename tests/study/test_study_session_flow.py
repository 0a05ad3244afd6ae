"""A participant's session through the services: planning, ordering, counterbalancing, idempotency and resume."""

import random
from collections import Counter

import pytest

from studyplatform import counterbalance, services
from studyplatform.models import AuditLog, Participant, Response
from tests.study.factories import complete_study, run_whole_session, valid_answer

pytestmark = pytest.mark.django_db


def test_a_whole_session_stores_one_answer_per_trial_and_completes(participant):
    run_whole_session(participant)
    participant.refresh_from_db()
    answers = Response.objects.filter(participant=participant)
    assert participant.status == Participant.Status.COMPLETED
    assert participant.completed_at is not None
    assert answers.filter(phase="block1").count() == 3 * 3
    assert answers.filter(phase="pre").count() == 2
    assert answers.filter(phase="post").count() == 2
    assert list(answers.values_list("sequence", flat=True)) == list(range(13))


def test_block1_order_never_shows_one_patient_twice_in_a_row_and_covers_every_image(participant):
    block1 = [t for t in participant.plan if t["block"] == 1]
    patients = [t["case"] for t in block1]
    assert all(a != b for a, b in zip(patients, patients[1:]))
    assert sorted((t["case"], t["source"]) for t in block1) == sorted(
        (f"P0{n}", s) for n in (1, 2, 3) for s in ("real", "baseline", "proposed")
    )


def test_spread_order_holds_for_many_seeds_and_group_sizes():
    for seed in range(300):
        rng = random.Random(seed)
        groups = {g: [(g, i) for i in range(3)] for g in range(rng.randint(2, 12))}
        order = counterbalance.spread_order(groups, random.Random(seed))
        assert sorted(order) == sorted(item for items in groups.values() for item in items)
        assert all(a[0] != b[0] for a, b in zip(order, order[1:]))


def test_spread_order_refuses_an_impossible_set():
    with pytest.raises(ValueError):
        counterbalance.spread_order({"a": [1, 2, 3], "b": [4]}, random.Random(0))


def test_the_stored_seed_reproduces_the_stored_order(participant, open_study):
    plan, assignment = services.session_plan(open_study, participant.seed, participant.index)
    strip = [{k: v for k, v in t.items() if k != "id"} for t in plan]
    assert strip == [{k: v for k, v in t.items() if k != "id"} for t in participant.plan]
    assert assignment == participant.cf_assignment


def test_block2_models_are_counterbalanced_across_participants(db, media_root):
    study = complete_study(block1_patients=2, block2_cases=4)
    participants = [services.start_session(study, external_id=f"pid{n}")[0] for n in range(6)]
    per_case = Counter((case, model) for p in participants for case, model in p.cf_assignment.items())
    # Each of the 4 cases is shown 3 times with each model over 6 participants.
    assert set(per_case.values()) == {3} and len(per_case) == 8
    for p in participants:
        assert Counter(p.cf_assignment.values()) == {"baseline": 2, "proposed": 2}
        posts = [t for t in p.plan if t["phase"] == "post"]
        cf_ids = {t["cf_stimulus"] for t in posts}
        assert len(cf_ids) == 4
        for trial in posts:
            assert trial["cf_model"] == p.cf_assignment[trial["case"]]


def test_block2_shows_each_case_before_and_after_its_counterfactual(participant):
    block2 = [t for t in participant.plan if t["block"] == 2]
    assert [t["phase"] for t in block2] == ["pre", "post"] * 2
    for pre, post in zip(block2[::2], block2[1::2]):
        assert pre["case"] == post["case"] and pre["stimulus"] == post["stimulus"]
        assert "cf_stimulus" not in pre and post["cf_stimulus"]


def _begin_and_get_trial(participant):
    services.begin_block(participant, 1)
    participant.refresh_from_db()
    return services.next_step(participant)["trial"]


def test_a_repeated_submission_returns_the_stored_answer(participant):
    trial = _begin_and_get_trial(participant)
    first, created = services.submit_answer(participant, trial["id"], valid_answer(trial, diagnosis="effusion"))
    again, created_again = services.submit_answer(
        participant, trial["id"], valid_answer(trial, diagnosis="pneumonia", realness=3)
    )
    assert created and not created_again
    assert again.pk == first.pk and again.diagnosis == "effusion" and again.realness == 70
    assert Response.objects.filter(participant=participant).count() == 1
    participant.refresh_from_db()
    assert participant.n_answers == 1


def test_the_first_block2_answer_cannot_change_after_the_counterfactual_was_shown(participant):
    run_whole_session(participant, answer=lambda t: valid_answer(t, diagnosis="effusion"))
    participant.refresh_from_db()
    pre = next(t for t in participant.plan if t["phase"] == "pre")
    stored, created = services.submit_answer(participant, pre["id"], valid_answer(pre, diagnosis="pneumonia"))
    assert not created and stored.diagnosis == "effusion"


def test_resume_continues_at_the_next_unanswered_trial(participant, open_study):
    trial = _begin_and_get_trial(participant)
    services.submit_answer(participant, trial["id"], valid_answer(trial))
    again, created = services.start_session(
        open_study, external_id=participant.external_id, prolific_session_id=participant.prolific_session_id
    )
    assert not created and again.pk == participant.pk
    step = services.next_step(again)
    assert step["state"] == "trial" and step["trial"]["id"] == participant.plan[1]["id"]


def test_an_out_of_order_trial_is_refused_and_nothing_is_stored(participant):
    _begin_and_get_trial(participant)
    with pytest.raises(services.TrialOutOfOrder):
        services.submit_answer(participant, participant.plan[2]["id"], valid_answer(participant.plan[2]))
    assert not Response.objects.exists()


def test_another_participants_trial_is_refused(participant, open_study):
    other, _ = services.start_session(open_study, external_id="someoneelse")
    services.begin_block(other, 1)
    _begin_and_get_trial(participant)
    with pytest.raises(services.TrialNotFound):
        services.submit_answer(participant, other.plan[0]["id"], valid_answer(other.plan[0]))
    assert not Response.objects.exists()


def test_a_closed_study_accepts_no_answers(participant, open_study):
    trial = _begin_and_get_trial(participant)
    services.close_study(open_study)
    with pytest.raises(services.StudyNotOpen):
        services.submit_answer(participant, trial["id"], valid_answer(trial))
    assert not Response.objects.exists()


def test_block2_cannot_begin_before_block1_is_done(participant):
    services.begin_block(participant, 1)
    with pytest.raises(services.TrialOutOfOrder):
        services.begin_block(participant, 2)


def test_answers_are_refused_before_the_instructions_were_read(participant):
    with pytest.raises(services.TrialOutOfOrder):
        services.submit_answer(participant, participant.plan[0]["id"], valid_answer(participant.plan[0]))


def test_every_state_change_writes_an_audit_row(participant):
    run_whole_session(participant)
    actions = Counter(AuditLog.objects.values_list("action", flat=True))
    assert actions["participant.start"] == 1
    assert actions["answer.submit"] == 13
    assert actions["participant.begin_block1"] == 1 and actions["participant.begin_block2"] == 1
    assert actions["participant.complete"] == 1
    assert actions["study.open"] == 1

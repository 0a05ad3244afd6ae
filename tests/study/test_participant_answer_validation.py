"""Every answer field is checked against the trial and the study's scales; a refused answer stores nothing."""

import pytest

from studyplatform import services
from studyplatform.models import Response
from tests.study.factories import run_whole_session, valid_answer

pytestmark = pytest.mark.django_db


@pytest.fixture
def block1_trial(participant):
    services.begin_block(participant, 1)
    participant.refresh_from_db()
    return services.next_step(participant)["trial"]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"diagnosis": "cardiomegaly"}, "diagnosis"),
        ({"diagnosis": ""}, "diagnosis"),
        ({"realness": 0}, "realness"),
        ({"realness": 101}, "realness"),
        ({"realness": "fifty"}, "realness"),
        ({"realness": 50.5}, "realness"),
        ({"realness": True}, "realness"),
        ({"realness": None}, "realness"),
        ({"slider_moved": False}, "slider_moved"),
        ({"reasons": [0]}, "reasons"),
        ({"reasons": [8]}, "reasons"),
        ({"reasons": ["1; DROP TABLE"]}, "reasons"),
        ({"reasons": [2, 2]}, "reasons"),
        ({"confidence": 3}, "confidence"),
        ({"rt_ms": -1}, "rt_ms"),
        ({"rt_ms": "soon"}, "rt_ms"),
        ({"colour": "blue"}, "unknown"),
    ],
)
def test_a_bad_block1_field_is_refused_with_its_name(participant, block1_trial, change, field):
    answer = {**valid_answer(block1_trial), **change}
    with pytest.raises(services.AnswerInvalid) as caught:
        services.submit_answer(participant, block1_trial["id"], answer)
    assert field in caught.value.errors
    assert not Response.objects.exists()
    participant.refresh_from_db()
    assert participant.n_answers == 0


def test_form_strings_are_accepted_as_numbers(participant, block1_trial):
    answer = {"diagnosis": "pneumonia", "realness": "100", "slider_moved": "1", "reasons": ["7", "1"], "rt_ms": "12"}
    response, created = services.submit_answer(participant, block1_trial["id"], answer)
    assert created and response.realness == 100 and response.reasons == [1, 7] and response.rt_ms == 12


def test_no_reasons_at_all_is_a_valid_answer(participant, block1_trial):
    response, _ = services.submit_answer(participant, block1_trial["id"], valid_answer(block1_trial, reasons=()))
    assert response.reasons == []
    assert response.slider_start == block1_trial["slider_start"]


def _first_block2_trial(participant):
    answered_block1 = lambda t: valid_answer(t)  # noqa: E731
    while True:
        participant.refresh_from_db()
        step = services.next_step(participant)
        if step["state"] == "instructions":
            services.begin_block(participant, step["block"])
        elif step["trial"]["block"] == 2:
            return step["trial"]
        else:
            services.submit_answer(participant, step["trial"]["id"], answered_block1(step["trial"]))


@pytest.mark.parametrize(
    "change, field",
    [
        ({"confidence": 0}, "confidence"),
        ({"confidence": 7}, "confidence"),
        ({"confidence": None}, "confidence"),
        ({"realness": 50}, "realness"),
        ({"reasons": [1]}, "reasons"),
    ],
)
def test_a_bad_block2_field_is_refused(participant, change, field):
    trial = _first_block2_trial(participant)
    participant.refresh_from_db()
    before = participant.n_answers
    with pytest.raises(services.AnswerInvalid) as caught:
        services.submit_answer(participant, trial["id"], {**valid_answer(trial), **change})
    assert field in caught.value.errors
    assert Response.objects.filter(participant=participant).count() == before


def test_the_study_scales_bound_the_answers(participant, open_study):
    open_study.confidence_max = 4
    open_study.save()
    trial = _first_block2_trial(participant)
    with pytest.raises(services.AnswerInvalid):
        services.submit_answer(participant, trial["id"], valid_answer(trial, confidence=5))


def test_a_completed_session_accepts_only_replays(participant):
    run_whole_session(participant)
    participant.refresh_from_db()
    last = participant.plan[-1]
    stored, created = services.submit_answer(participant, last["id"], valid_answer(last, diagnosis="pneumonia"))
    assert not created and stored.sequence == len(participant.plan) - 1
    with pytest.raises(services.TrialNotFound):
        services.submit_answer(participant, "not-a-trial", valid_answer(last))

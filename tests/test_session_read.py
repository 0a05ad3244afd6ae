"""`services.read_session` (the participant's session read, compiled once per connection) returns what the ORM query
it stands for returns, and `services.study_stimuli` keeps the stimulus set of an open study only while that opening
lasts."""

import uuid

import pytest
from django.db import transaction
from django.forms.models import model_to_dict

from studyplatform import services
from studyplatform.models import Participant, Stimulus, Study

pytestmark = pytest.mark.django_db


def as_dicts(participant):
    return model_to_dict(participant), model_to_dict(participant.study)


def orm_read(lookup):
    return Participant.objects.select_related("study").get(**lookup)


@pytest.mark.parametrize("lock", [False, True])
def test_each_lookup_reads_the_same_participant_and_study_as_the_orm(participant, lock):
    study = participant.study
    lookups = [
        {"pk": participant.pk},
        {"token": participant.token},
        {"pk": participant.pk, "study_id": study.pk},
        {"pk": participant.pk, "study__slug": study.slug},
    ]
    for lookup in lookups:
        with transaction.atomic():
            read = services.read_session(lookup, lock=lock)
        assert as_dicts(read) == as_dicts(orm_read(lookup)), lookup
        assert read.study.pk == study.pk and read._state.adding is False


def test_a_lookup_that_finds_nothing_reads_none(participant):
    assert services.read_session({"pk": uuid.uuid4()}) is None
    assert services.read_session({"token": "no-such-token"}) is None
    assert services.read_session({"pk": participant.pk, "study__slug": "another-study"}) is None
    assert services.read_session({"pk": participant.pk, "study_id": participant.study_id + 1}) is None


def test_a_session_is_read_by_nothing_else(participant):
    with pytest.raises(ValueError, match="not read by external_id"):
        services.read_session({"external_id": participant.external_id})


def test_a_read_session_saves_what_changed_and_nothing_else(participant):
    read = services.read_session({"pk": participant.pk})
    read.n_answers = 1
    read.save(update_fields=["n_answers"])
    participant.refresh_from_db()
    assert participant.n_answers == 1 and participant.plan == read.plan


def test_the_stimulus_set_is_kept_per_opening_of_the_study(open_study, monkeypatch):
    monkeypatch.setattr(services, "_open_study_stimuli", {})
    stimulus = Stimulus.objects.filter(case__study=open_study).first()
    assert services.study_stimuli(open_study, {stimulus.pk}) == {stimulus.pk: (stimulus.token, stimulus.case_id)}
    assert list(services._open_study_stimuli) == [(open_study.pk, open_study.opened_at)]

    # Another opening of the study (a new opened_at) reads its stimulus set again; a closed study is never kept.
    Stimulus.objects.filter(pk=stimulus.pk).update(token="changed-token")
    reopened = Study.objects.get(pk=open_study.pk)
    reopened.opened_at = open_study.opened_at.replace(year=open_study.opened_at.year + 1)
    assert services.study_stimuli(reopened, {stimulus.pk})[stimulus.pk][0] == "changed-token"
    closed = services.close_study(open_study)
    Stimulus.objects.filter(pk=stimulus.pk).update(token="closed-token")
    assert services.study_stimuli(closed, {stimulus.pk})[stimulus.pk][0] == "closed-token"
    assert len(services._open_study_stimuli) == 2

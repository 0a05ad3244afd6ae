"""`services.read_session` (the participant's session read, compiled once per connection) returns what the ORM query
it stands for returns, each read with its own copy of the plan; `services.insert_row` and `services.update_row` (the
answer's writes, compiled once per connection) run the statements that save() runs and send its signals; and
`services.study_stimuli` keeps the stimulus set of an open study only while that opening lasts."""

import uuid

import pytest
from django.db import DatabaseError, connection, transaction
from django.db.models.signals import post_save, pre_save
from django.forms.models import model_to_dict
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from studyplatform import services
from studyplatform.models import AuditLog, Participant, Response, Stimulus, Study

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


def test_each_read_has_its_own_copy_of_the_plan(participant):
    stored = Participant.objects.get(pk=participant.pk).plan
    first = services.read_session({"pk": participant.pk})
    first.plan[0]["phase"] = "changed in memory"
    first.plan.append({"id": "added in memory"})
    assert services.read_session({"pk": participant.pk}).plan == stored

    # Another plan stored for the participant is read as stored.
    Participant.objects.filter(pk=participant.pk).update(plan=stored[:1])
    assert services.read_session({"pk": participant.pk}).plan == stored[:1]


def written(write):
    """The INSERT and UPDATE statements (with their values) that `write` runs; what they wrote is rolled back."""
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        write()
        transaction.set_rollback(True)
    return [q["sql"] for q in queries.captured_queries if q["sql"].startswith(("INSERT", "UPDATE"))]


def an_answer(participant, stimulus):
    return Response(
        participant=participant,
        sequence=0,
        block=1,
        phase="block1",
        trial_index=1,
        case_id=stimulus.case_id,
        stimulus=stimulus,
        diagnosis="effusion",
        realness=40,
        slider_start=55,
        reasons=[1, 3],
        rt_ms=900,
    )


def test_the_compiled_writes_run_the_statements_save_runs(participant, monkeypatch):
    moment = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: moment)  # auto_now_add: the same time in both statements
    stimulus = Stimulus.objects.filter(case__study=participant.study).first()
    audit = services._audit_fields(participant, "answer.submit", participant, participant.study, sequence=0)

    assert written(lambda: services.insert_row(an_answer(participant, stimulus))) == written(
        lambda: an_answer(participant, stimulus).save()
    )
    assert written(lambda: services.insert_row(AuditLog(**audit))) == written(lambda: AuditLog(**audit).save())
    participant.n_answers, participant.last_seen_at = 1, moment
    participant.excluded, participant.exclusion_reason = True, "failed attention check 1"
    for fields in (["n_answers", "last_seen_at"], ["n_answers", "last_seen_at", "excluded", "exclusion_reason"]):
        assert written(lambda fields=fields: services.update_row(participant, fields)) == written(
            lambda fields=fields: participant.save(update_fields=fields)
        )


def test_the_compiled_writes_store_the_row_and_only_the_fields_named(participant):
    stimulus = Stimulus.objects.filter(case__study=participant.study).first()
    answer = services.insert_row(an_answer(participant, stimulus))
    assert answer.pk is not None and answer.answered_at is not None
    assert (answer._state.adding, answer._state.db) == (False, "default")
    assert model_to_dict(Response.objects.get(pk=answer.pk)) == model_to_dict(answer)

    participant.n_answers = 1
    participant.exclusion_reason = "not among the fields written"
    services.update_row(participant, ["n_answers"])
    stored = Participant.objects.get(pk=participant.pk)
    assert (stored.n_answers, stored.exclusion_reason) == (1, "")


def test_the_compiled_writes_send_the_save_signals(participant):
    seen = []

    def receiver(signal, sender, instance, **kwargs):
        seen.append((signal, sender, instance, kwargs.get("created"), kwargs["update_fields"], kwargs["raw"]))

    stimulus = Stimulus.objects.filter(case__study=participant.study).first()
    for signal in (pre_save, post_save):
        signal.connect(receiver, sender=Response)
        signal.connect(receiver, sender=Participant)
    try:
        answer = services.insert_row(an_answer(participant, stimulus))
        services.update_row(participant, ["n_answers"])
    finally:
        for signal in (pre_save, post_save):
            signal.disconnect(receiver, sender=Response)
            signal.disconnect(receiver, sender=Participant)
    assert seen == [
        (pre_save, Response, answer, None, None, False),
        (post_save, Response, answer, True, None, False),
        (pre_save, Participant, participant, None, frozenset({"n_answers"}), False),
        (post_save, Participant, participant, False, frozenset({"n_answers"}), False),
    ]


def test_an_update_of_a_row_that_is_gone_fails_as_save_does(participant):
    gone = services.read_session({"pk": participant.pk})
    Participant.objects.filter(pk=participant.pk).delete()
    for update in (lambda: services.update_row(gone, ["n_answers"]), lambda: gone.save(update_fields=["n_answers"])):
        with pytest.raises(DatabaseError, match="did not affect any rows"), transaction.atomic():
            update()


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

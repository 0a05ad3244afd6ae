"""The participant's hot path reads the session once: an answer is one transaction of at most four statements (lock
the participant, store the answer, count it, audit it), and the next step and the trial page are one read each with
no transaction at all. The stimulus set of an open study is read once per process (`services.study_stimuli`)."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from studyplatform import services
from studyplatform.models import AuditLog, Participant, Response
from tests.study.factories import valid_answer

pytestmark = pytest.mark.django_db
TRANSACTION_CONTROL = ("BEGIN", "SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK", "COMMIT")


class Statements(CaptureQueriesContext):
    """The SQL statements of a block: `data` reads and writes rows, `transactions` opened (BEGIN or, inside the
    test's own transaction, SAVEPOINT)."""

    @property
    def data(self):
        return [q["sql"] for q in self.captured_queries if not q["sql"].upper().startswith(TRANSACTION_CONTROL)]

    @property
    def transactions(self):
        return sum(q["sql"].upper().startswith(("BEGIN", "SAVEPOINT")) for q in self.captured_queries)


def count(call):
    with Statements(connection) as statements:
        result = call()
    return statements, result


@pytest.fixture
def api_session(client, open_study):
    body = {"study": open_study.slug, "consent": True, "prolific_pid": "queries01", "session_id": "S-q"}
    token = client.post("/api/participant/sessions/", body, content_type="application/json").json()["token"]
    client.post(f"/api/participant/{token}/begin/", {"block": 1}, content_type="application/json")
    return token


@pytest.fixture
def browser_session(client, open_study):
    client.get(f"/s/{open_study.slug}/?PROLIFIC_PID=queries02&SESSION_ID=S-b")
    client.post(f"/s/{open_study.slug}/", {"PROLIFIC_PID": "queries02", "SESSION_ID": "S-b", "decision": "accept"})
    client.post(f"/s/{open_study.slug}/run/", {"action": "begin", "block": "1"})
    return Participant.objects.get(external_id="queries02")


def post_answer(client, token, trial):
    body = {"trial": trial["id"], **valid_answer(trial)}
    return client.post(f"/api/participant/{token}/answers/", body, content_type="application/json")


def test_an_answer_through_the_json_api_is_one_transaction_of_at_most_four_statements(client, api_session):
    step = client.get(f"/api/participant/{api_session}/").json()
    answered = 0
    while step["state"] == "trial":
        statements, reply = count(lambda step=step: post_answer(client, api_session, step["trial"]))
        assert reply.status_code == 201, reply.json()
        assert len(statements.data) <= 4, statements.data
        assert statements.transactions == 1
        answered += 1
        step = reply.json()["next"]
    assert step == {**step, "state": "instructions", "block": 2} and answered >= 3


def test_a_replayed_answer_reads_and_writes_nothing_more(client, api_session):
    trial = client.get(f"/api/participant/{api_session}/").json()["trial"]
    first = post_answer(client, api_session, trial)
    statements, replay = count(lambda: post_answer(client, api_session, trial))
    assert replay.status_code == 200 and replay.json()["answer"] == first.json()["answer"]
    assert replay.json()["next"] == first.json()["next"]
    assert len(statements.data) <= 3, statements.data
    assert not any(sql.upper().startswith(("INSERT", "UPDATE", "DELETE")) for sql in statements.data)
    assert Response.objects.count() == 1 and AuditLog.objects.filter(action="answer.submit").count() == 1


def test_the_next_step_as_json_is_one_read_without_a_transaction(client, api_session):
    statements, reply = count(lambda: client.get(f"/api/participant/{api_session}/"))
    assert reply.status_code == 200 and reply.json()["state"] == "trial"
    assert len(statements.data) == 1, statements.data
    assert statements.transactions == 0


def test_a_process_reads_the_stimulus_set_of_an_open_study_once(client, api_session, monkeypatch):
    monkeypatch.setattr(services, "_open_study_stimuli", {})
    first, reply = count(lambda: client.get(f"/api/participant/{api_session}/"))
    again, same = count(lambda: client.get(f"/api/participant/{api_session}/"))
    assert reply.json() == same.json() and reply.json()["state"] == "trial"
    assert (len(first.data), len(again.data)) == (2, 1), first.data


def test_the_trial_page_is_one_read_without_a_transaction(client, open_study, browser_session):
    client.get(f"/s/{open_study.slug}/run/")  # the process's first page of the study reads its stimulus set
    statements, page = count(lambda: client.get(f"/s/{open_study.slug}/run/"))
    assert page.status_code == 200 and 'name="trial"' in page.content.decode()
    assert len(statements.data) == 1, statements.data
    assert statements.transactions == 0


def test_an_answer_through_the_form_is_one_transaction_of_at_most_four_statements(client, open_study, browser_session):
    trial = services.next_step(browser_session)["trial"]
    form = {"trial": trial["id"], "diagnosis": "effusion", "rt_ms": "900", "realness": "40", "slider_moved": "1"}
    statements, reply = count(lambda: client.post(f"/s/{open_study.slug}/run/", {**form, "reasons": ["2"]}))
    assert reply.status_code == 302 and reply.url == f"/s/{open_study.slug}/run/"
    assert len(statements.data) <= 4, statements.data
    assert statements.transactions == 1
    stored = Response.objects.get()
    assert (stored.diagnosis, stored.realness, stored.reasons) == ("effusion", 40, [2])


def test_an_idle_session_times_out_inside_the_answer_transaction(client, api_session):
    trial = client.get(f"/api/participant/{api_session}/").json()["trial"]
    participant = Participant.objects.get(token=api_session)
    limit = participant.study.time_limit_minutes
    Participant.objects.filter(pk=participant.pk).update(
        last_seen_at=participant.last_seen_at - timedelta(minutes=limit + 1)
    )
    statements, reply = count(lambda: post_answer(client, api_session, trial))
    assert reply.status_code == 409 and reply.json()["error"] == "session_ended"
    assert statements.transactions == 1
    participant.refresh_from_db()
    assert participant.status == "timed_out" and participant.excluded and not Response.objects.exists()
    assert AuditLog.objects.filter(action="participant.timeout").count() == 1


def test_the_form_refuses_a_field_its_trial_does_not_ask_for_as_the_json_api_does(client, open_study, browser_session):
    trial = services.next_step(browser_session)["trial"]
    form = {"trial": trial["id"], "diagnosis": "effusion", "rt_ms": "900", "realness": "40", "slider_moved": "1"}
    page = client.post(f"/s/{open_study.slug}/run/", {**form, "confidence": "3"})
    assert page.status_code == 400 and "confidence is not asked" in page.content.decode()
    assert not Response.objects.exists()

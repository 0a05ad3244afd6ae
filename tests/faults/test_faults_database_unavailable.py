"""The database failing for a moment: the participant sees the friendly retry page (503 with Retry-After), the
failed request leaves no partial rows, and the same answer goes through once the database is back."""

from unittest import mock

import pytest
from django.db import InterfaceError, OperationalError, connection
from django.test import Client

from studyplatform import services
from studyplatform.models import AuditLog, Participant, Response
from tests.study.factories import valid_answer

pytestmark = [pytest.mark.slow, pytest.mark.django_db]


def database_gone(*args, **kwargs):
    raise OperationalError("server closed the connection unexpectedly")


def audit_insert_fails(error):
    """The database fails on the INSERT of an audit row: an answer's last write, after its Response row and the
    participant's counter (however the code writes that row)."""
    statement = f"INSERT INTO {connection.ops.quote_name(AuditLog._meta.db_table)}"

    def execute(execute, sql, params, many, context):
        if sql.startswith(statement):
            raise error
        return execute(sql, params, many, context)

    return connection.execute_wrapper(execute)


def snapshot(participant):
    participant.refresh_from_db()
    return (Response.objects.count(), AuditLog.objects.count(), participant.n_answers, participant.status)


def assert_retry_page(response):
    assert response.status_code == 503
    assert response["Retry-After"].isdigit()
    body = response.content.decode()
    assert "Nothing you answered has been lost" in body
    assert "OperationalError" not in body and "Traceback" not in body


@pytest.fixture
def in_block1(client, participant):
    """A participant with a browser session, past the Block-1 instructions."""
    client.get(
        f"/s/{participant.study.slug}/?PROLIFIC_PID={participant.external_id}&SESSION_ID={participant.prolific_session_id}"
    )
    return services.begin_block(participant, 1)


def test_a_failure_in_the_middle_of_storing_an_answer_rolls_everything_back(client, in_block1):
    participant = in_block1
    run_url = f"/s/{participant.study.slug}/run/"
    trial = services.next_step(participant)["trial"]
    form = {"trial": trial["id"], "diagnosis": "pneumonia", "rt_ms": "800", "realness": "12", "slider_moved": "1"}
    before = snapshot(participant)

    # The Response row and the participant's counter are written before the audit row (the last write) fails.
    with audit_insert_fails(OperationalError("server closed the connection unexpectedly")):
        assert_retry_page(client.post(run_url, form))
    assert snapshot(participant) == before

    # The retry page reloads the same trial, and the answer is stored once the database is back.
    page = client.get(run_url)
    assert page.status_code == 200 and trial["id"] in page.content.decode()
    assert client.post(run_url, form).status_code == 302
    assert Response.objects.filter(participant=participant).count() == 1
    assert Response.objects.get().diagnosis == "pneumonia"


@pytest.mark.parametrize("error", [OperationalError, InterfaceError])
def test_the_json_api_answers_503_and_stores_nothing(client, in_block1, error):
    participant = in_block1
    trial = services.next_step(participant)["trial"]
    body = {"trial": trial["id"], **valid_answer(trial)}
    before = snapshot(participant)

    with audit_insert_fails(error("connection lost")):
        reply = client.post(f"/api/participant/{participant.token}/answers/", body, content_type="application/json")
    assert reply.status_code == 503 and reply["Retry-After"].isdigit()
    assert snapshot(participant) == before

    reply = client.post(f"/api/participant/{participant.token}/answers/", body, content_type="application/json")
    assert reply.status_code == 201 and Response.objects.count() == 1


def test_a_database_down_before_any_work_shows_the_retry_page_on_every_participant_page(client, in_block1):
    participant = in_block1
    slug = participant.study.slug
    before = snapshot(participant)
    with mock.patch.object(services, "get_session", side_effect=database_gone):
        assert_retry_page(client.get(f"/s/{slug}/run/"))
        assert_retry_page(client.get(f"/s/{slug}/withdraw/"))
        assert client.get(f"/api/participant/{participant.token}/").status_code == 503
    with mock.patch.object(services, "start_session", side_effect=database_gone):
        newcomer = Client()
        assert_retry_page(newcomer.post(f"/s/{slug}/", {"decision": "accept", "PROLIFIC_PID": "newcomer42"}))
    assert snapshot(participant) == before
    assert not Participant.objects.filter(external_id="newcomer42").exists()


def test_a_failed_session_start_leaves_no_participant_and_no_used_counter(client, open_study):
    counter = open_study.participant_counter
    with mock.patch.object(AuditLog.objects, "create", side_effect=database_gone):
        reply = client.post(
            f"/s/{open_study.slug}/?PROLIFIC_PID=halfstart1", {"decision": "accept", "PROLIFIC_PID": "halfstart1"}
        )
    assert_retry_page(reply)
    open_study.refresh_from_db()
    assert not Participant.objects.exists() and open_study.participant_counter == counter

"""Fuzzing the participant JSON API and forms: generated requests from the OpenAPI schema (schemathesis) and
hand-written hostile answers. Nothing a participant sends may produce a server error, and everything refused leaves
the database exactly as it was."""

import json
from collections import Counter
from urllib.parse import urlencode

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from studyplatform import services
from studyplatform.models import AuditLog, Invite, Participant, Response, Study
from tests.study.factories import valid_answer

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

EXAMPLES_PER_OPERATION = 15


def database_state():
    """Everything a participant request could change."""
    return (
        Response.objects.count(),
        Participant.objects.count(),
        AuditLog.objects.count(),
        Invite.objects.filter(used_at__isnull=False).count(),
        sorted(Participant.objects.values_list("token", "status", "n_answers", "block1_started_at")),
        sorted(Response.objects.values_list("participant_id", "sequence", "diagnosis", "realness", "confidence")),
    )


def send(client, method, path, body=None, media_type="application/json", query=None):
    if query:
        path = f"{path}?{urlencode(query, doseq=True)}"
    if method == "GET":
        return client.get(path)
    if isinstance(body, bytes):
        return client.generic(method, path, body, content_type=media_type or "application/octet-stream")
    if media_type == "application/x-www-form-urlencoded" and isinstance(body, dict):
        return client.generic(method, path, urlencode(body, doseq=True), content_type=media_type)
    return client.generic(method, path, json.dumps(body, default=str), content_type="application/json")


@pytest.fixture
def participant_schema(admin_client):
    # Loaded through the test client (the schema is for staff): the WSGI handler would close the test's database
    # connection.
    schema = schemathesis.openapi.from_dict(admin_client.get("/api/schema/?format=json").json())
    return schema.include(path_regex="^/api/participant/")


def test_generated_requests_never_cause_a_server_error_or_a_change(client, participant, participant_schema):
    services.begin_block(participant, 1)
    operations = [result.ok() for result in participant_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/participant/sessions/", "/api/participant/{token}/answers/"}
    sessions_before = Participant.objects.count()
    accepted, refusals = [], Counter()

    def check(case):
        if case.path_parameters and "token" in case.path_parameters:
            case.path_parameters["token"] = participant.token  # a real session, so the answer is what's fuzzed
        body = case.body if not isinstance(case.body, schemathesis.core.NotSet) else None
        if case.path.endswith("/answers/") and isinstance(body, dict):
            # Aim at the trial the server expects next, so the generated values reach the answer validation.
            participant.refresh_from_db()
            step = services.next_step(participant)
            if step["state"] == "trial":
                body["trial"] = step["trial"]["id"]
        reply = send(client, case.method, case.formatted_path, body, case.media_type or "", case.query)
        assert reply.status_code < 500, (case.formatted_path, body, reply.content[:300])
        if reply.status_code >= 400:  # a clear JSON problem: the flow's {"error": ...} or DRF's parse {"detail": ...}
            problem = reply.json()
            assert problem.get("error") or problem.get("detail"), reply.content[:300]
            refusals[problem.get("error", "parse")] += 1
        if case.path.endswith("/answers/") and reply.status_code == 201:
            accepted.append(body)

    fuzz_settings = settings(
        max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    for operation in operations:
        if operation.path.endswith("/withdraw/"):
            continue  # withdrawing is a legitimate change; it is tested by hand below
        fuzz_settings(given(case=operation.as_strategy())(check))()
        if operation.method.upper() == "POST":  # and bodies that deliberately break the schema
            fuzz_settings(given(case=operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))(check))()

    assert refusals["invalid_answer"] > 0, f"the generated answers never reached the validation: {refusals}"
    # Generated study slugs never name a real study, so no session starts; the only answers stored are the generated
    # ones the server accepted, each once and each within the study's scales.
    assert Participant.objects.count() == sessions_before
    stored = list(Response.objects.filter(participant=participant).order_by("sequence"))
    assert len(stored) == len(accepted)
    for row, body in zip(stored, accepted):
        assert row.diagnosis == body["diagnosis"] and row.diagnosis in ("healthy", "effusion", "pneumonia")
        assert 1 <= row.realness <= 100 and row.realness == int(body["realness"])
        assert set(row.reasons) <= set(range(1, 8)) and row.confidence is None


# --- hand-written hostile answers ----------------------------------------------------------------------------------


def post_answer(client, token, body):
    return client.post(f"/api/participant/{token}/answers/", body, content_type="application/json")


@pytest.fixture
def block1_trial(participant):
    services.begin_block(participant, 1)
    participant.refresh_from_db()
    return services.next_step(participant)["trial"]


BAD_BLOCK1_FIELDS = [
    {"realness": 0},
    {"realness": 101},
    {"realness": -5},
    {"realness": "abc"},
    {"realness": 50.5},
    {"realness": "50; DROP TABLE"},
    {"realness": True},
    {"realness": None},
    {"realness": [50]},
    {"realness": {"value": 50}},
    {"realness": "1e2"},
    {"slider_moved": False},
    {"diagnosis": "cancer"},
    {"diagnosis": "HEALTHY"},
    {"diagnosis": ""},
    {"diagnosis": None},
    {"diagnosis": 0},
    {"diagnosis": ["healthy"]},
    {"reasons": [0]},
    {"reasons": [8]},
    {"reasons": ["The image is too smooth"]},
    {"reasons": [1, 1]},
    {"reasons": "1;2"},
    {"reasons": [{}]},
    {"reasons": [1.5]},
    {"reasons": list(range(1, 10_000))},
    {"confidence": 3},
    {"rt_ms": -1},
    {"rt_ms": "fast"},
    {"rt_ms": 10**15},
    {"image_source": "real"},
    {"correct": 1},
]


def test_a_bad_block1_field_is_refused_with_400_and_stores_nothing(client, participant, block1_trial):
    before = database_state()
    for change in BAD_BLOCK1_FIELDS:
        body = {"trial": block1_trial["id"], **valid_answer(block1_trial), **change}
        reply = post_answer(client, participant.token, body)
        assert reply.status_code == 400, (change, reply.content[:300])
        assert reply.json()["error"] == "invalid_answer" and reply.json()["fields"], change
    assert database_state() == before


def answer_until(client, participant, phase):
    """Answer trials through the API until the next one is of `phase`; returns that trial."""
    while True:
        participant.refresh_from_db()
        step = services.next_step(participant)
        if step["state"] == "instructions":
            services.begin_block(participant, step["block"])
            continue
        if step["trial"]["phase"] == phase:
            return step["trial"]
        trial = step["trial"]
        assert post_answer(client, participant.token, {"trial": trial["id"], **valid_answer(trial)}).status_code == 201


BAD_BLOCK2_FIELDS = [
    {"confidence": 0},
    {"confidence": 7},
    {"confidence": "high"},
    {"confidence": 3.5},
    {"confidence": None},
    {"realness": 50},
    {"reasons": [1]},
    {"slider_moved": True},
]


def test_a_bad_block2_field_is_refused_with_400_and_stores_nothing(client, participant):
    trial = answer_until(client, participant, "pre")
    before = database_state()
    for change in BAD_BLOCK2_FIELDS:
        reply = post_answer(client, participant.token, {"trial": trial["id"], **valid_answer(trial), **change})
        assert reply.status_code == 400 and reply.json()["error"] == "invalid_answer", change
    assert database_state() == before


def test_oversized_bodies_are_refused_without_a_change(client, participant, block1_trial, settings):
    before = database_state()
    padding = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1024)
    huge = {"trial": block1_trial["id"], **valid_answer(block1_trial), "note": padding}
    assert 400 <= post_answer(client, participant.token, huge).status_code < 500
    start = {"study": participant.study.slug, "consent": True, "prolific_pid": "p" * 5000, "study_id": padding}
    assert 400 <= client.post("/api/participant/sessions/", start, content_type="application/json").status_code < 500
    assert database_state() == before


def test_a_replay_returns_the_stored_answer_and_never_changes_it(client, participant, block1_trial):
    body = {"trial": block1_trial["id"], **valid_answer(block1_trial, diagnosis="effusion", realness=22)}
    assert post_answer(client, participant.token, body).status_code == 201
    before = database_state()
    for replay in (body, {**body, "diagnosis": "pneumonia", "realness": 99}, {**body, "realness": 500}):
        reply = post_answer(client, participant.token, replay)
        assert reply.status_code == 200 and reply.json()["created"] is False
        assert reply.json()["answer"]["diagnosis"] == "effusion" and reply.json()["answer"]["realness"] == 22
    assert database_state() == before


def test_out_of_order_and_foreign_trials_are_refused(client, participant, block1_trial, open_study):
    participant.refresh_from_db()
    later = next(t for t in participant.plan if t["sequence"] == 2)
    block2_trial = next(t for t in participant.plan if t["block"] == 2)
    other, _ = services.start_session(open_study, external_id="someoneelse77")
    services.begin_block(other, 1)
    other.refresh_from_db()
    other_trial = services.next_step(other)["trial"]
    before = database_state()

    answer = valid_answer(block1_trial)
    assert post_answer(client, participant.token, {"trial": later["id"], **answer}).status_code == 409
    reply = post_answer(client, participant.token, {"trial": block2_trial["id"], **answer})
    assert reply.status_code in (400, 409)
    # Another participant's trial under my token, and my trial under a made-up token.
    assert post_answer(client, participant.token, {"trial": other_trial["id"], **answer}).status_code == 404
    assert post_answer(client, "A" * 43, {"trial": block1_trial["id"], **answer}).status_code == 404
    assert post_answer(client, participant.token, {"trial": "", **answer}).status_code == 404
    begin2 = client.post(f"/api/participant/{participant.token}/begin/", {"block": 2}, content_type="application/json")
    assert begin2.status_code == 409
    for block in (0, 3, "1", None):
        reply = client.post(
            f"/api/participant/{participant.token}/begin/", {"block": block}, content_type="application/json"
        )
        assert reply.status_code == 400
    assert database_state() == before


def test_a_closed_study_refuses_answers_and_new_sessions(client, participant, block1_trial, open_study):
    services.close_study(open_study)
    before = database_state()
    reply = post_answer(client, participant.token, {"trial": block1_trial["id"], **valid_answer(block1_trial)})
    assert reply.status_code == 409 and reply.json()["error"] == "study_not_open"
    start = {"study": open_study.slug, "consent": True, "prolific_pid": "latecomer1"}
    assert client.post("/api/participant/sessions/", start, content_type="application/json").status_code in (403, 409)
    assert client.get(f"/s/{open_study.slug}/?PROLIFIC_PID=latecomer2").status_code in (403, 409)
    assert database_state() == before
    assert Study.objects.get(pk=open_study.pk).status == Study.Status.CLOSED


def test_a_withdrawn_session_accepts_nothing_more(client, participant, block1_trial):
    assert client.post(f"/api/participant/{participant.token}/withdraw/").status_code == 200
    before = database_state()
    reply = post_answer(client, participant.token, {"trial": block1_trial["id"], **valid_answer(block1_trial)})
    assert reply.status_code == 409
    assert database_state() == before


# --- the same through the HTML form -------------------------------------------------------------------------------


BAD_FORM_FIELDS = [
    {"realness": "0"},
    {"realness": "abc"},
    {"realness": ""},
    {"diagnosis": "cancer"},
    {"reasons": ["9"]},
    {"reasons": ["1", "1"]},
    {"slider_moved": ""},
    {"rt_ms": "-3"},
]


def test_the_trial_form_refuses_bad_values_with_400_and_stores_nothing(client, participant, block1_trial):
    client.get(
        f"/s/{participant.study.slug}/?PROLIFIC_PID={participant.external_id}&SESSION_ID={participant.prolific_session_id}"
    )
    form = {"trial": block1_trial["id"], "diagnosis": "healthy", "rt_ms": "1000", "realness": "40", "slider_moved": "1"}
    before = database_state()
    for change in BAD_FORM_FIELDS:
        reply = client.post(f"/s/{participant.study.slug}/run/", {**form, **change})
        assert reply.status_code == 400 and b'role="alert"' in reply.content, change
    assert database_state() == before


def test_the_trial_form_refuses_a_foreign_or_garbled_trial(client, participant, block1_trial):
    client.get(
        f"/s/{participant.study.slug}/?PROLIFIC_PID={participant.external_id}&SESSION_ID={participant.prolific_session_id}"
    )
    before = database_state()
    run_url = f"/s/{participant.study.slug}/run/"
    for trial_id in ("", "nonsense", "../../etc/passwd", "x" * 10_000):
        reply = client.post(run_url, {"trial": trial_id, "diagnosis": "healthy", "rt_ms": "5"})
        assert reply.status_code == 404
    assert client.post(run_url, {"action": "begin", "block": "two"}).status_code == 400
    assert database_state() == before

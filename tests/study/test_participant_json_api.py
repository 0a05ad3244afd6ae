"""The participant flow as JSON under the participant token, and the staff API behind admin rights."""

import pytest

from studyplatform.models import Participant, Response
from tests.study.factories import valid_answer

pytestmark = pytest.mark.django_db


def start(client, study, pid="apiuser1"):
    body = {"study": study.slug, "prolific_pid": pid, "study_id": "", "session_id": "s", "consent": True}
    return client.post("/api/participant/sessions/", body, content_type="application/json")


def test_a_bot_completes_a_session_through_the_json_api(client, open_study):
    started = start(client, open_study)
    assert started.status_code == 201
    token = started.json()["token"]
    assert start(client, open_study).status_code == 200  # the same PID resumes
    step = client.get(f"/api/participant/{token}/").json()
    answered = 0
    while step["state"] != "complete":
        if step["state"] == "instructions":
            step = client.post(
                f"/api/participant/{token}/begin/", {"block": step["block"]}, content_type="application/json"
            ).json()
            continue
        trial = step["trial"]
        assert all(url.startswith("/i/") for url in trial["images"]) and "source" not in trial
        body = {"trial": trial["id"], **valid_answer(trial)}
        reply = client.post(f"/api/participant/{token}/answers/", body, content_type="application/json")
        assert reply.status_code == 201, reply.json()
        replay = client.post(f"/api/participant/{token}/answers/", body, content_type="application/json")
        assert replay.status_code == 200 and replay.json()["created"] is False
        answered += 1
        step = reply.json()["next"]
    assert answered == 13 and Response.objects.count() == 13
    assert step["completion_code"] == open_study.completion_code


def test_api_errors_are_4xx_with_a_code_and_store_nothing(client, open_study):
    token = start(client, open_study).json()["token"]
    other = start(client, open_study, pid="apiuser2").json()["token"]
    client.post(f"/api/participant/{token}/begin/", {"block": 1}, content_type="application/json")
    client.post(f"/api/participant/{other}/begin/", {"block": 1}, content_type="application/json")
    trial = client.get(f"/api/participant/{token}/").json()["trial"]
    other_trial = client.get(f"/api/participant/{other}/").json()["trial"]
    cases = [
        (token, {"trial": trial["id"], **valid_answer(trial), "realness": 500}, 400, "invalid_answer"),
        (token, {"trial": other_trial["id"], **valid_answer(other_trial)}, 404, "trial_not_found"),
        ("x" * 43, {"trial": trial["id"], **valid_answer(trial)}, 404, "session_not_found"),
        (token, ["not", "an", "object"], 400, "invalid_answer"),
    ]
    for used_token, body, status, code in cases:
        reply = client.post(f"/api/participant/{used_token}/answers/", body, content_type="application/json")
        assert (reply.status_code, reply.json()["error"]) == (status, code)
    assert not Response.objects.exists()


def test_consent_is_required_to_start(client, open_study):
    body = {"study": open_study.slug, "prolific_pid": "nope", "consent": False}
    assert client.post("/api/participant/sessions/", body, content_type="application/json").status_code == 403
    assert not Participant.objects.exists()


def test_the_staff_api_refuses_anonymous_users_and_participants(client, open_study):
    token = start(client, open_study).json()["token"]
    for url in ("/api/studies/", "/api/participants/", "/api/responses/", "/api/stimuli/", "/api/cases/"):
        assert client.get(url).status_code in (401, 403)
        assert client.get(url, HTTP_AUTHORIZATION=f"Token {token}").status_code in (401, 403)


def test_staff_can_list_open_and_export(admin_client, open_study, participant):
    studies = admin_client.get("/api/studies/").json()["results"]
    assert studies[0]["slug"] == open_study.slug and studies[0]["participant_counts"]["started"] == 1
    listed = admin_client.get(f"/api/participants/?study={open_study.slug}").json()["results"]
    assert [p["label"] for p in listed] == ["P001"] and "token" not in listed[0] and "plan" not in listed[0]
    csv_text = admin_client.get(f"/api/studies/{open_study.slug}/export/?table=participants").content.decode()
    assert csv_text.startswith("participant,external_id,status")
    assert admin_client.get("/api/schema/").status_code == 200

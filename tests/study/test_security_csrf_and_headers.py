"""Forms refuse cross-site posts (CSRF), the participant JSON API cannot be driven by a victim's cookies, and every
response a participant receives carries the security headers."""

import re

import pytest
from django.test import Client

from studyplatform import services
from studyplatform.models import Participant, Response

pytestmark = pytest.mark.django_db

CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def csrf_token_of(page):
    match = CSRF_INPUT.search(page.content.decode())
    assert match, "the form carries no CSRF token"
    return match.group(1)


def test_every_participant_form_refuses_a_post_without_the_csrf_token(open_study):
    browser = Client(enforce_csrf_checks=True)
    entry = f"/s/{open_study.slug}/"
    consent = browser.get(entry + "?PROLIFIC_PID=csrfcheck01")
    assert browser.post(entry, {"PROLIFIC_PID": "csrfcheck01", "decision": "accept"}).status_code == 403
    assert not Participant.objects.exists()

    token = csrf_token_of(consent)
    reply = browser.post(entry, {"PROLIFIC_PID": "csrfcheck01", "decision": "accept", "csrfmiddlewaretoken": token})
    assert reply.status_code == 302 and Participant.objects.count() == 1

    run_url = f"/s/{open_study.slug}/run/"
    instructions = browser.get(run_url)
    assert browser.post(run_url, {"action": "begin", "block": "1"}).status_code == 403
    assert Participant.objects.get().block1_started_at is None
    browser.post(run_url, {"action": "begin", "block": "1", "csrfmiddlewaretoken": csrf_token_of(instructions)})
    trial_page = browser.get(run_url)
    trial_id = re.search(r'name="trial" value="([^"]+)"', trial_page.content.decode()).group(1)
    answer = {"trial": trial_id, "diagnosis": "healthy", "rt_ms": "900", "realness": "40", "slider_moved": "1"}
    assert browser.post(run_url, answer).status_code == 403
    assert browser.post(run_url, {**answer, "csrfmiddlewaretoken": "forged" * 8}).status_code == 403
    assert not Response.objects.exists()

    withdraw_url = f"/s/{open_study.slug}/withdraw/"
    assert browser.post(withdraw_url).status_code == 403
    assert Participant.objects.get().status != Participant.Status.WITHDRAWN
    assert browser.post(run_url, {**answer, "csrfmiddlewaretoken": csrf_token_of(trial_page)}).status_code == 302
    assert Response.objects.count() == 1


def test_the_admin_login_enforces_csrf(admin_user):
    browser = Client(enforce_csrf_checks=True)
    reply = browser.post("/admin/login/", {"username": admin_user.username, "password": "password"})
    assert reply.status_code == 403


def test_the_json_api_ignores_the_page_session_cookie(open_study):
    """A cross-site page could make the browser post with its cookies; the JSON API only acts on the token in its
    path, so the cookie alone reaches nothing."""
    browser = Client(enforce_csrf_checks=True)
    consent = browser.get(f"/s/{open_study.slug}/?PROLIFIC_PID=cookieonly1")
    browser.post(
        f"/s/{open_study.slug}/",
        {"PROLIFIC_PID": "cookieonly1", "decision": "accept", "csrfmiddlewaretoken": csrf_token_of(consent)},
    )
    participant = Participant.objects.get()
    assert browser.cookies.get(f"study-{open_study.slug}") and participant.token not in str(browser.cookies)
    reply = browser.post("/api/participant//withdraw/")
    assert reply.status_code == 404
    participant.refresh_from_db()
    assert participant.status != Participant.Status.WITHDRAWN


EXPECTED_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def test_security_headers_are_on_every_kind_of_participant_response(client, participant):
    services.begin_block(participant, 1)
    participant.refresh_from_db()
    step = services.next_step(participant)
    client.get(
        f"/s/{participant.study.slug}/?PROLIFIC_PID={participant.external_id}&SESSION_ID={participant.prolific_session_id}"
    )
    responses = {
        "home": client.get("/"),
        "consent": Client().get(f"/s/{participant.study.slug}/?PROLIFIC_PID=headers01"),
        "trial page": client.get(f"/s/{participant.study.slug}/run/"),
        "error page": Client().get(f"/s/{participant.study.slug}/run/"),
        "json api": client.get(f"/api/participant/{participant.token}/"),
        "json api error": client.get("/api/participant/nosuchtoken/"),
        "image": client.get(f"/i/{step['trial']['images'][0]}"),
        "missing image": client.get("/i/nosuchimage"),
    }
    for name, response in responses.items():
        for header, value in EXPECTED_HEADERS.items():
            assert response.get(header) == value, (name, header, response.get(header))
    # The cookie that binds the browser to the session is signed and not readable by scripts.
    session_cookie = client.cookies[f"study-{participant.study.slug}"]
    assert session_cookie["httponly"]
    assert session_cookie["samesite"].lower() == "lax"

"""A participant's session belongs to the browser that started it: a PROLIFIC_PID (or a used invite) alone opens
nothing. Another browser continues the session only with its Prolific SESSION_ID or the resume code shown at the
start; withdrawal needs the session's own credential; session starts are rate-limited per client and per study and
the refusals are counted for the admin."""

import re

import pytest
from django.test import Client

from studyplatform import services
from studyplatform.models import Participant, Study

pytestmark = pytest.mark.django_db

VICTIM = "5e0f7a1b2c3d4e5f60718293"


def api_start(client, study, headers=None, **fields):
    body = {"study": study.slug, "consent": True, **fields}
    return client.post("/api/participant/sessions/", body, content_type="application/json", **(headers or {}))


def page_entry(study, pid=VICTIM, session_id="SESS-victim"):
    return f"/s/{study.slug}/?PROLIFIC_PID={pid}&STUDY_ID=&SESSION_ID={session_id}"


def consent_in_browser(browser, study, pid=VICTIM, session_id="SESS-victim"):
    browser.get(page_entry(study, pid, session_id))
    data = {"PROLIFIC_PID": pid, "STUDY_ID": "", "SESSION_ID": session_id, "decision": "accept"}
    reply = browser.post(f"/s/{study.slug}/", data)
    assert reply.status_code == 302
    return Participant.objects.get(external_id=pid)


def test_the_json_api_hands_out_no_token_for_a_pid_alone(client, open_study):
    started = api_start(client, open_study, prolific_pid=VICTIM, session_id="SESS-victim")
    assert started.status_code == 201
    token, code = started.json()["token"], started.json()["resume_code"]
    assert re.fullmatch(r"[2-9A-HJKMNP-Z]{4}-[2-9A-HJKMNP-Z]{4}", code)

    for attempt in ({}, {"session_id": ""}, {"session_id": "SESS-guess"}, {"resume_code": "AAAA-AAAA"}):
        refused = api_start(Client(), open_study, prolific_pid=VICTIM, **attempt)
        assert refused.status_code == 403, attempt
        assert refused.json()["error"] == "resume_required" and token not in refused.content.decode()

    same_session = api_start(Client(), open_study, prolific_pid=VICTIM, session_id="SESS-victim")
    assert same_session.status_code == 200 and same_session.json()["token"] == token
    typed = code.lower().replace("-", " ")
    with_code = api_start(Client(), open_study, prolific_pid=VICTIM, resume_code=typed)
    assert with_code.status_code == 200 and with_code.json()["token"] == token
    assert Participant.objects.count() == 1


def test_another_browser_with_the_pid_cannot_answer_or_withdraw(open_study):
    victim_browser = Client()
    victim = consent_in_browser(victim_browser, open_study)
    attacker = Client()

    page = attacker.get(f"/s/{open_study.slug}/?PROLIFIC_PID={VICTIM}")
    assert page.status_code == 200 and 'name="resume_code"' in page.content.decode()
    assert f"study-{open_study.slug}" not in attacker.cookies
    assert attacker.get(f"/s/{open_study.slug}/run/").status_code == 404
    assert attacker.post(f"/s/{open_study.slug}/withdraw/").status_code == 404
    wrong = attacker.post(f"/s/{open_study.slug}/", {"PROLIFIC_PID": VICTIM, "resume_code": "ZZZZ-ZZZZ"})
    assert wrong.status_code == 403 and "not the one of this session" in wrong.content.decode()
    assert attacker.get(f"/s/{open_study.slug}/run/").status_code == 404

    victim.refresh_from_db()
    assert victim.status == Participant.Status.STARTED
    assert victim_browser.get(f"/s/{open_study.slug}/run/").status_code == 200


def test_the_resume_code_is_shown_after_consent_and_continues_the_session_elsewhere(open_study):
    browser = Client()
    participant = consent_in_browser(browser, open_study)
    instructions = browser.get(f"/s/{open_study.slug}/run/").content.decode()
    shown = services.format_resume_code(participant.resume_code)
    assert len(participant.resume_code) == 8 and shown in instructions

    laptop = Client()
    resumed = laptop.post(f"/s/{open_study.slug}/", {"PROLIFIC_PID": VICTIM, "resume_code": f" {shown.lower()} "})
    assert resumed.status_code == 302 and resumed.url == f"/s/{open_study.slug}/run/"
    cookie = laptop.cookies[f"study-{open_study.slug}"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == f"/s/{open_study.slug}/"
    assert participant.token not in cookie.value
    assert "Part 1 of 2: instructions" in laptop.get(f"/s/{open_study.slug}/run/").content.decode()
    # The same Prolific SESSION_ID continues it too, without a code.
    assert Client().get(page_entry(open_study)).status_code == 302


def test_a_forged_browser_cookie_opens_nothing(open_study):
    participant = consent_in_browser(Client(), open_study)
    forger = Client()
    forger.cookies[f"study-{open_study.slug}"] = str(participant.pk)
    assert forger.get(f"/s/{open_study.slug}/run/").status_code == 404
    forger.cookies[f"study-{open_study.slug}"] = f"{participant.pk}:forgedsignature"
    assert forger.post(f"/s/{open_study.slug}/withdraw/").status_code == 404
    participant.refresh_from_db()
    assert participant.status != Participant.Status.WITHDRAWN


def test_wrong_resume_codes_are_limited_per_session(settings, open_study):
    settings.SESSION_START_LIMITS = {**settings.SESSION_START_LIMITS, "resume_code_attempts": 3}
    participant = api_start(Client(), open_study, prolific_pid=VICTIM).json()
    for _ in range(3):
        assert api_start(Client(), open_study, prolific_pid=VICTIM, resume_code="2222-2222").status_code == 403
    right = api_start(Client(), open_study, prolific_pid=VICTIM, resume_code=participant["resume_code"])
    assert right.status_code == 429 and right.json()["error"] == "rate_limited" and "token" not in right.json()
    assert Study.objects.get().sessions_refused == 0  # wrong codes are not refused session starts


def test_a_prolific_study_binds_the_session_to_its_session_id(client, open_study):
    open_study.prolific_study_id = "STUDY-P1"
    open_study.save()
    without = api_start(client, open_study, prolific_pid=VICTIM, study_id="STUDY-P1")
    assert without.status_code == 403 and "SESSION_ID" in without.json()["detail"]
    assert client.get(f"/s/{open_study.slug}/?PROLIFIC_PID={VICTIM}&STUDY_ID=STUDY-P1").status_code == 403
    assert not Participant.objects.exists()
    assert api_start(client, open_study, prolific_pid=VICTIM, study_id="STUDY-P1", session_id="S1").status_code == 201
    assert Participant.objects.get().prolific_session_id == "S1"


def test_a_used_invite_in_another_browser_offers_the_resume_code_not_a_dead_link(open_study):
    invite = services.create_invites(open_study, 1)[0]
    url = f"/s/{open_study.slug}/invite/{invite.token}/"
    first = Client()
    first.get(url)
    first.post(url, {"decision": "accept"})
    participant = Participant.objects.get()

    phone = Client()
    page = phone.get(url)
    text = page.content.decode()
    assert page.status_code == 403 and 'name="resume_code"' in text and "already been used" in text
    assert f"/s/{open_study.slug}/run/" not in text
    lost = phone.get(f"/s/{open_study.slug}/run/").content.decode()
    assert f'href="/s/{open_study.slug}/run/"' not in lost and "resume code" in lost

    assert phone.post(url, {"resume_code": "2222-3333"}).status_code == 403
    resumed = phone.post(url, {"resume_code": services.format_resume_code(participant.resume_code)})
    assert resumed.status_code == 302 and resumed.url == f"/s/{open_study.slug}/run/"
    assert phone.get(f"/s/{open_study.slug}/run/").status_code == 200
    assert Participant.objects.count() == 1


def test_session_starts_are_limited_per_client_and_per_study_and_counted(settings, open_study, admin_client):
    settings.SESSION_START_LIMITS = {**settings.SESSION_START_LIMITS, "per_client": 2, "per_study": 3}
    here = Client(REMOTE_ADDR="203.0.113.7")
    assert [api_start(here, open_study, prolific_pid=f"pid{n}").status_code for n in range(3)] == [201, 201, 429]
    refused = api_start(here, open_study, prolific_pid="pid9")
    assert refused.json()["error"] == "rate_limited" and refused["Retry-After"] == "3600"
    # Resuming is not a new session and is not limited by the start limits.
    assert api_start(here, open_study, prolific_pid="pid0", resume_code=resume_code_of("pid0")).status_code == 200

    elsewhere = Client(REMOTE_ADDR="198.51.100.4")
    assert api_start(elsewhere, open_study, prolific_pid="pid5").status_code == 201
    assert api_start(elsewhere, open_study, prolific_pid="pid6").status_code == 429  # the study's limit
    page = Client(REMOTE_ADDR="192.0.2.1")
    page.get(f"/s/{open_study.slug}/?PROLIFIC_PID=pid7")
    assert page.post(f"/s/{open_study.slug}/", {"PROLIFIC_PID": "pid7", "decision": "accept"}).status_code == 429

    assert Participant.objects.count() == 3
    open_study.refresh_from_db()
    assert open_study.sessions_refused == 4
    change_page = admin_client.get(f"/admin/studyplatform/study/{open_study.pk}/change/").content.decode()
    assert "Sessions refused" in change_page
    assert admin_client.get("/admin/studyplatform/study/").content.decode().count(">4<") >= 1


def test_the_client_address_comes_from_the_configured_proxy_header(settings, open_study):
    settings.SESSION_START_LIMITS = {**settings.SESSION_START_LIMITS, "per_client": 1}
    settings.CLIENT_ADDRESS_HEADER = "X-Real-IP"
    proxy = Client(REMOTE_ADDR="127.0.0.1")
    assert api_start(proxy, open_study, prolific_pid="a1", headers={"HTTP_X_REAL_IP": "203.0.113.1"}).status_code == 201
    assert api_start(proxy, open_study, prolific_pid="a2", headers={"HTTP_X_REAL_IP": "203.0.113.2"}).status_code == 201
    assert api_start(proxy, open_study, prolific_pid="a3", headers={"HTTP_X_REAL_IP": "203.0.113.2"}).status_code == 429


def resume_code_of(pid):
    return Participant.objects.get(external_id=pid).resume_code

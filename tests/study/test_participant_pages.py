"""The participant's pages: entry links, consent, the server-driven trial pages, withdrawal and time-outs."""

from datetime import timedelta

import pytest
from django.utils import timezone

from studyplatform import services
from studyplatform.models import AuditLog, Participant, Response

pytestmark = pytest.mark.django_db
PID = "60a1b2c3d4e5f60718293a4b"


def entry_url(study, pid=PID, study_id="", session_id="S1"):
    return f"/s/{study.slug}/?PROLIFIC_PID={pid}&STUDY_ID={study_id}&SESSION_ID={session_id}"


def consent(client, study, **params):
    client.get(entry_url(study, **params))
    data = {"PROLIFIC_PID": params.get("pid", PID), "STUDY_ID": params.get("study_id", ""), "SESSION_ID": "S1"}
    return client.post(f"/s/{study.slug}/", {**data, "decision": "accept"})


def test_opening_the_link_shows_consent_and_stores_nothing(client, open_study):
    page = client.get(entry_url(open_study))
    assert page.status_code == 200 and open_study.consent_text in page.content.decode()
    assert not Participant.objects.exists()


def test_declining_consent_stores_nothing(client, open_study):
    client.get(entry_url(open_study))
    page = client.post(f"/s/{open_study.slug}/", {"PROLIFIC_PID": PID, "decision": "decline"})
    assert page.status_code == 200 and "Nothing about you has been stored" in page.content.decode()
    assert not Participant.objects.exists() and not AuditLog.objects.filter(action__startswith="participant").exists()


def test_consenting_starts_the_session_and_the_same_pid_resumes_it(client, open_study, django_user_model):
    assert consent(client, open_study).url == f"/s/{open_study.slug}/run/"
    page = client.get(f"/s/{open_study.slug}/run/")
    assert "Part 1 of 2: instructions" in page.content.decode()
    fresh_browser = client.__class__()
    again = fresh_browser.get(entry_url(open_study))
    assert again.status_code == 302 and again.url.endswith("/run/")
    assert Participant.objects.count() == 1


def test_a_wrong_study_id_is_refused(client, open_study):
    open_study.prolific_study_id = "STUDY123"
    open_study.save()
    page = client.get(entry_url(open_study, study_id="OTHER"))
    assert page.status_code == 403 and "different study" in page.content.decode()
    assert consent(client, open_study, study_id="OTHER").status_code == 403
    assert not Participant.objects.exists()
    assert consent(client, open_study, study_id="STUDY123").status_code == 302


def test_a_malformed_pid_and_a_missing_pid_are_refused(client, open_study):
    assert client.get(entry_url(open_study, pid="<script>")).status_code == 403
    assert client.get(f"/s/{open_study.slug}/").status_code == 403


def test_a_draft_study_is_not_open_to_participants(client, db, media_root):
    from tests.study.factories import complete_study

    study = complete_study(open_it=False)
    assert client.get(entry_url(study)).status_code == 409


def test_an_invite_link_works_once(client, open_study):
    invite = services.create_invites(open_study, 1)[0]
    url = f"/s/{open_study.slug}/invite/{invite.token}/"
    assert client.get(url).status_code == 200
    assert client.post(url, {"decision": "accept"}).status_code == 302
    assert client.get(url).status_code == 302  # the same browser comes back to its session
    other = client.__class__()
    assert other.get(url).status_code == 403
    assert other.post(url, {"decision": "accept"}).status_code == 403
    assert Participant.objects.count() == 1


def _answer_page(client, study, **fields):
    page = client.get(f"/s/{study.slug}/run/")
    trial_id = page.content.decode().split('name="trial" value="')[1].split('"')[0]
    return client.post(f"/s/{study.slug}/run/", {"trial": trial_id, **fields}), trial_id


def test_the_form_stores_an_answer_and_a_double_submit_stores_nothing_more(client, open_study):
    consent(client, open_study)
    client.post(f"/s/{open_study.slug}/run/", {"action": "begin", "block": "1"})
    fields = {"diagnosis": "effusion", "realness": "40", "slider_moved": "1", "reasons": ["2", "5"], "rt_ms": "900"}
    first, trial_id = _answer_page(client, open_study, **fields)
    assert first.status_code == 302
    again = client.post(f"/s/{open_study.slug}/run/", {"trial": trial_id, **fields, "diagnosis": "healthy"})
    assert again.status_code == 302
    stored = Response.objects.get()
    assert stored.diagnosis == "effusion" and stored.reasons == [2, 5] and stored.realness == 40


def test_an_invalid_form_shows_the_errors_and_stores_nothing(client, open_study):
    consent(client, open_study)
    client.post(f"/s/{open_study.slug}/run/", {"action": "begin", "block": "1"})
    page, _ = _answer_page(client, open_study, diagnosis="effusion", realness="40", rt_ms="900")
    assert page.status_code == 400 and "move the realness slider" in page.content.decode()
    assert not Response.objects.exists()


def test_every_session_page_has_progress_and_a_withdraw_link(client, open_study):
    consent(client, open_study)
    for _ in range(2):
        page = client.get(f"/s/{open_study.slug}/run/").content.decode()
        assert 'role="progressbar"' in page and f"/s/{open_study.slug}/withdraw/" in page
        client.post(f"/s/{open_study.slug}/run/", {"action": "begin", "block": "1"})


def test_withdrawing_deletes_the_answers_and_ends_the_session(client, open_study):
    consent(client, open_study)
    client.post(f"/s/{open_study.slug}/run/", {"action": "begin", "block": "1"})
    _answer_page(client, open_study, diagnosis="effusion", realness="40", slider_moved="1", rt_ms="9")
    assert client.get(f"/s/{open_study.slug}/withdraw/").status_code == 200
    client.post(f"/s/{open_study.slug}/withdraw/")
    participant = Participant.objects.get()
    assert participant.status == "withdrawn" and participant.excluded and not Response.objects.exists()
    assert "withdrew" in client.get(f"/s/{open_study.slug}/run/").content.decode()


def test_an_idle_session_times_out_and_is_excluded(client, open_study):
    consent(client, open_study)
    Participant.objects.update(last_seen_at=timezone.now() - timedelta(minutes=open_study.time_limit_minutes + 1))
    page = client.get(f"/s/{open_study.slug}/run/")
    assert "inactive for longer" in page.content.decode()
    participant = Participant.objects.get()
    assert participant.status == "timed_out" and participant.excluded


def test_expire_idle_sessions_marks_only_idle_active_sessions(open_study):
    idle, _ = services.start_session(open_study, external_id="idle")
    busy, _ = services.start_session(open_study, external_id="busy")
    Participant.objects.filter(pk=idle.pk).update(last_seen_at=timezone.now() - timedelta(hours=5))
    assert services.expire_idle_sessions() == 1
    assert Participant.objects.get(pk=idle.pk).status == "timed_out"
    assert Participant.objects.get(pk=busy.pk).status == "started"


def test_a_page_without_a_session_asks_for_the_link(client, open_study):
    assert client.get(f"/s/{open_study.slug}/run/").status_code == 404

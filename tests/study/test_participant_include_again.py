"""Excluding a participant and including them again: "Include again" restores the status they had, so a completed
participant counts in the analysis again, through the services, the admin action and the staff API."""

import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from studyplatform import services
from studyplatform.models import AuditLog, Participant
from tests.study.factories import run_whole_session

pytestmark = pytest.mark.django_db


def test_including_a_completed_participant_again_restores_completed(participant):
    run_whole_session(participant)
    services.exclude_participant(participant, "answered too fast")
    participant.refresh_from_db()
    assert (participant.status, participant.excluded) == ("excluded", True)

    services.include_participant(participant)
    participant.refresh_from_db()
    assert (participant.status, participant.excluded, participant.exclusion_reason) == ("completed", False, "")
    assert participant.status_before_exclusion == ""
    include = AuditLog.objects.filter(action="participant.include").get()
    assert include.details == {"status": "completed"}


def test_excluding_twice_keeps_the_first_status(participant):
    run_whole_session(participant)
    services.exclude_participant(participant, "answered too fast")
    services.exclude_participant(participant, "also failed the debrief question")
    services.include_participant(participant)
    participant.refresh_from_db()
    assert participant.status == "completed" and not participant.excluded


def test_a_timed_out_participant_included_again_stays_timed_out(open_study, participant):
    services.begin_block(participant, 1)
    Participant.objects.filter(pk=participant.pk).update(last_seen_at=timezone.now() - timedelta(hours=2))
    services.expire_idle_sessions(open_study)
    services.include_participant(participant)
    participant.refresh_from_db()
    assert (participant.status, participant.excluded) == ("timed_out", False)


def test_a_participant_included_again_counts_in_the_analysis(open_study, participant, tmp_path):
    run_whole_session(participant)
    second, _ = services.start_session(open_study, external_id="secondreader")
    run_whole_session(second)
    services.exclude_participant(participant, "checking their answers")
    services.include_participant(participant)
    options = ["--out", str(tmp_path), "--no-models", "--format", "json"]
    call_command("run_analysis", open_study.slug, *options, verbosity=0, stdout=io.StringIO())
    document = json.loads((tmp_path / "analysis.json").read_text())
    assert document["n_participants"] == 2 and document["exclusions"] == []


def test_the_admin_action_and_the_staff_api_restore_the_status(admin_client, open_study, participant):
    run_whole_session(participant)
    url = "/admin/studyplatform/participant/"
    reply = admin_client.post(url, {"action": "exclude_selected", "_selected_action": [str(participant.pk)]})
    assert reply.status_code == 302
    participant.refresh_from_db()
    assert participant.status == "excluded"
    reply = admin_client.post(url, {"action": "include_selected", "_selected_action": [str(participant.pk)]})
    participant.refresh_from_db()
    assert participant.status == "completed"

    reply = admin_client.post(
        f"/api/participants/{participant.pk}/exclude/", {"reason": "test"}, content_type="application/json"
    )
    assert reply.json()["status"] == "excluded"
    reply = admin_client.post(f"/api/participants/{participant.pk}/include/")
    assert reply.status_code == 200 and reply.json()["status"] == "completed" and reply.json()["excluded"] is False

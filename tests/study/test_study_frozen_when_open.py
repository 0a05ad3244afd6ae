"""Once a study is open, the settings that shape a session or the meaning of an answer cannot change (the staff API
answers 409, the admin shows them read-only and refuses a change); texts may change, and the audit log keeps each
version."""

from datetime import timedelta

import pytest
from django.utils import timezone

from studyplatform import services
from studyplatform.models import AuditLog, Participant, Study

pytestmark = pytest.mark.django_db

FROZEN_CHANGES = {
    "realness_max": 50,
    "realness_min": 5,
    "confidence_max": 7,
    "block1_patients": 2,
    "block1_design": "counterbalanced",
    "block2_cases": 3,
    "working_size": 64,
    "display_size": 256,
    "time_limit_minutes": 5,
    "attention_checks": [{"after": 2, "instruction": "Select Pneumonia.", "expected": "pneumonia"}],
    "reasons": ["Too smooth", "Too clean"],
    "diagnosis_labels": {"healthy": "Normal", "effusion": "Effusion", "pneumonia": "Consolidation"},
    "slug": "another-slug",
}


def patch(client, study, body):
    return client.patch(f"/api/studies/{study.slug}/", body, content_type="application/json")


def settings_of(study):
    study = Study.objects.get(pk=study.pk)
    return {name: getattr(study, name) for name in FROZEN_CHANGES}


def test_the_api_refuses_to_change_a_frozen_setting_of_an_open_study(admin_client, open_study):
    before = settings_of(open_study)
    for name, value in FROZEN_CHANGES.items():
        reply = patch(admin_client, open_study, {name: value})
        assert reply.status_code == 409, (name, reply.status_code, reply.content[:300])
        body = reply.json()
        assert name in body["fields"] and "cannot change once the study has opened" in body["fields"][name]
    assert settings_of(open_study) == before
    assert not AuditLog.objects.filter(action="study.update").exists()


def test_a_closed_study_stays_frozen(admin_client, open_study):
    services.close_study(open_study)
    assert patch(admin_client, open_study, {"realness_max": 10}).status_code == 409


def test_sending_a_frozen_setting_unchanged_is_fine(admin_client, open_study):
    reply = patch(admin_client, open_study, {"realness_max": open_study.realness_max, "title": "Renamed"})
    assert reply.status_code == 200 and reply.json()["title"] == "Renamed"


def test_a_draft_can_still_change_everything(admin_client, db, media_root):
    from tests.study.factories import complete_study

    draft = complete_study(open_it=False)
    reply = patch(admin_client, draft, {"realness_max": 50, "time_limit_minutes": 5})
    assert reply.status_code == 200, reply.content[:300]
    draft.refresh_from_db()
    assert (draft.realness_max, draft.time_limit_minutes) == (50, 5)


def test_texts_change_and_each_version_is_in_the_audit_log(admin_client, open_study):
    old_consent = open_study.consent_text
    reply = patch(admin_client, open_study, {"consent_text": "New consent text.", "title": "Renamed study"})
    assert reply.status_code == 200
    row = AuditLog.objects.get(action="study.update")
    assert row.details["changes"] == {
        "consent_text": {"old": old_consent, "new": "New consent text."},
        "title": {"old": open_study.title, "new": "Renamed study"},
    }
    assert row.actor_label == "admin"


def test_a_shorter_time_limit_cannot_time_out_a_running_session(admin_client, open_study, participant):
    services.begin_block(participant, 1)
    Participant.objects.filter(pk=participant.pk).update(last_seen_at=timezone.now() - timedelta(minutes=30))
    assert patch(admin_client, open_study, {"time_limit_minutes": 10}).status_code == 409
    assert services.expire_idle_sessions(open_study) == 0
    participant.refresh_from_db()
    assert participant.status == "block1"


def test_new_attention_checks_cannot_give_later_sessions_another_plan(admin_client, open_study, participant):
    checks = [{"after": 2, "instruction": "Select Pneumonia for this question.", "expected": "pneumonia"}]
    assert patch(admin_client, open_study, {"attention_checks": checks}).status_code == 409
    later, _ = services.start_session(open_study, external_id="laterperson1")
    assert later.n_trials == participant.n_trials


def test_the_admin_shows_frozen_settings_read_only_and_keeps_them(admin_client, open_study):
    url = f"/admin/studyplatform/study/{open_study.pk}/change/"
    page = admin_client.get(url).content.decode()
    for name in services.FROZEN_WHEN_OPEN:
        assert f'name="{name}"' not in page, name
    assert 'name="consent_text"' in page and 'name="title"' in page
    form = {
        "title": "Renamed in the admin",
        "consent_text": open_study.consent_text,
        "instructions_block1": open_study.instructions_block1,
        "instructions_block2": open_study.instructions_block2,
        "debrief_text": open_study.debrief_text,
        "prolific_study_id": "",
        "completion_code": open_study.completion_code,
        "completion_url": open_study.completion_url,
        "realness_max": 10,
        "time_limit_minutes": 1,
        "cases-TOTAL_FORMS": 0,
        "cases-INITIAL_FORMS": 0,
    }
    reply = admin_client.post(url, form)
    assert reply.status_code == 302, reply.content.decode()[:3000]
    open_study.refresh_from_db()
    assert open_study.title == "Renamed in the admin"
    assert (open_study.realness_max, open_study.time_limit_minutes) == (100, 60)


def test_a_change_racing_the_opening_is_refused(db, media_root):
    from studyplatform.forms import StudyForm
    from tests.study.factories import complete_study

    draft = complete_study(open_it=False)
    stale = Study.objects.get(pk=draft.pk)
    services.open_study(draft)
    stale.realness_max = 10
    with pytest.raises(services.StudyFrozen, match="realness_max"):
        services.save_study(stale)
    data = {f.name: getattr(stale, f.name) for f in Study._meta.fields if f.editable and f.name != "id"}
    form = StudyForm(data=data, instance=Study.objects.get(pk=draft.pk))
    assert not form.is_valid() and "realness_max" in form.errors
    assert Study.objects.get(pk=draft.pk).realness_max == 100

"""The staff API, its schema and its docs page follow Django's model permissions, like the admin: being staff is not
enough, reads need the view permission, writes and actions the matching add/change/delete permission, and raw
Prolific ids a permission of their own."""

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from studyplatform.models import AuditLog, Participant, Stimulus
from tests.study.factories import run_whole_session

pytestmark = pytest.mark.django_db

PID = "5f2a9c0e1b3d4a6f8e7c9b01"


def user_client(django_user_model, name, *codenames, staff=True):
    user = django_user_model.objects.create_user(name, password="a-long-password-1", is_staff=staff)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="studyplatform", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


def reads(open_study, participant):
    stimulus = Stimulus.objects.first()
    return {
        "/api/studies/": "view_study",
        f"/api/studies/{open_study.slug}/": "view_study",
        f"/api/studies/{open_study.slug}/problems/": "view_study",
        "/api/cases/": "view_case",
        f"/api/cases/{stimulus.case_id}/": "view_case",
        "/api/stimuli/": "view_stimulus",
        f"/api/stimuli/{stimulus.pk}/": "view_stimulus",
        "/api/participants/": "view_participant",
        f"/api/participants/{participant.pk}/": "view_participant",
        "/api/responses/": "view_response",
    }


def test_a_staff_user_without_permissions_reads_and_changes_nothing(django_user_model, open_study, participant):
    run_whole_session(participant)
    bare = user_client(django_user_model, "bare")
    for url in [*reads(open_study, participant), f"/api/studies/{open_study.slug}/export/?table=answers&raw_ids=1"]:
        reply = bare.get(url)
        assert reply.status_code == 403, (url, reply.status_code)
        assert PID.encode() not in reply.content
    assert bare.post(f"/api/participants/{participant.pk}/exclude/", {"reason": "x"}).status_code == 403
    assert bare.post(f"/api/studies/{open_study.slug}/close/").status_code == 403
    assert bare.delete(f"/api/participants/{participant.pk}/").status_code == 403
    participant.refresh_from_db()
    assert participant.status == "completed" and not participant.excluded
    open_study.refresh_from_db()
    assert open_study.status == "open"


def test_each_read_needs_its_own_view_permission(django_user_model, open_study, participant):
    for url, codename in reads(open_study, participant).items():
        allowed = user_client(django_user_model, f"u-{codename}-{len(url)}", codename)
        assert allowed.get(url).status_code == 200, url
        others = {"view_study", "view_case", "view_stimulus", "view_participant", "view_response"} - {codename}
        refused = user_client(django_user_model, f"o-{codename}-{len(url)}", *others)
        assert refused.get(url).status_code == 403, url


def test_writes_and_actions_need_the_matching_permission(django_user_model, open_study, participant):
    viewer = user_client(django_user_model, "viewer", "view_study", "view_participant")
    reply = viewer.patch(f"/api/studies/{open_study.slug}/", {"title": "x"}, content_type="application/json")
    assert reply.status_code == 403
    assert viewer.post(f"/api/studies/{open_study.slug}/close/").status_code == 403
    assert viewer.post(f"/api/participants/{participant.pk}/exclude/", {"reason": "x"}).status_code == 403

    editor = user_client(django_user_model, "editor", "view_participant", "change_participant")
    reply = editor.post(f"/api/participants/{participant.pk}/exclude/", {"reason": "too fast"})
    assert reply.status_code == 200 and reply.json()["excluded"] is True
    assert editor.delete(f"/api/participants/{participant.pk}/").status_code == 403
    deleter = user_client(django_user_model, "deleter", "view_participant", "delete_participant")
    assert deleter.delete(f"/api/participants/{participant.pk}/").status_code == 204
    assert not Participant.objects.filter(pk=participant.pk).exists()

    closer = user_client(django_user_model, "closer", "view_study", "change_study")
    assert closer.post(f"/api/studies/{open_study.slug}/close/").status_code == 200


def test_raw_prolific_ids_need_their_own_permission(django_user_model, open_study, participant):
    run_whole_session(participant)
    url = f"/api/studies/{open_study.slug}/export/?table=participants"
    reader = user_client(django_user_model, "reader", "view_study", "view_participant", "view_response")
    reply = reader.get(url)
    assert reply.status_code == 200 and PID.encode() not in reply.content
    refused = reader.get(url + "&raw_ids=1")
    assert refused.status_code == 403 and PID.encode() not in refused.content
    assert not AuditLog.objects.filter(action="export.raw_ids").exists()

    exporter = user_client(
        django_user_model, "exporter", "view_study", "view_participant", "view_response", "export_raw_ids"
    )
    reply = exporter.get(url + "&raw_ids=1")
    assert reply.status_code == 200 and PID.encode() in reply.content
    assert AuditLog.objects.filter(action="export.raw_ids").count() == 1


def test_permissions_without_staff_status_are_not_enough(django_user_model, open_study, participant):
    everything = [p.codename for p in Permission.objects.filter(content_type__app_label="studyplatform")]
    outsider = user_client(django_user_model, "outsider", *everything, staff=False)
    for url in reads(open_study, participant):
        assert outsider.get(url).status_code == 403, url


def test_the_schema_and_the_docs_page_are_for_staff_only(client, django_user_model, admin_client):
    plain = user_client(django_user_model, "plain", staff=False)
    for url in ("/api/schema/", "/api/docs/"):
        assert client.get(url).status_code in (302, 401, 403), url
        assert plain.get(url).status_code in (302, 401, 403), url
        assert admin_client.get(url).status_code == 200, url
    staff = user_client(django_user_model, "staffer")
    assert staff.get("/api/docs/").status_code == 200


def test_the_docs_page_loads_no_outside_script(admin_client):
    page = admin_client.get("/api/docs/")
    text = page.content.decode()
    assert "<script" not in text and "cdn" not in text.lower()
    assert "/api/participant/{token}/answers/" in text and "/api/studies/{slug}/export/" in text
    assert 'href="/api/schema/"' in text


def test_the_admin_actions_follow_the_same_permissions(django_user_model, open_study, participant):
    run_whole_session(participant)
    viewer = user_client(django_user_model, "adminviewer", "view_participant")
    url = "/admin/studyplatform/participant/"
    assert viewer.get(url).status_code == 200
    for action in ("exclude_selected", "delete_data"):
        viewer.post(url, {"action": action, "_selected_action": [str(participant.pk)]})
        participant.refresh_from_db()
        assert participant.status == "completed" and not participant.excluded, action
    assert "exclude_selected" not in viewer.get(url).content.decode()

    editor = user_client(django_user_model, "admineditor", "view_participant", "change_participant")
    editor.post(url, {"action": "exclude_selected", "_selected_action": [str(participant.pk)]})
    participant.refresh_from_db()
    assert participant.status == "excluded"

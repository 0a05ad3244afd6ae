"""Building a stimulus set: the admin pages, manifest import, open-study validation and researcher actions."""

import io
import json

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile

from studyplatform import services
from studyplatform.models import AuditLog, Case, Participant, Response, Stimulus, Study
from tests.study.factories import StudyFactory, add_block1_case, add_block2_case, real_image_bytes, run_whole_session

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("media_root")]


def test_a_study_missing_parts_cannot_open_and_the_error_lists_them():
    study = StudyFactory(consent_text="", completion_code="")
    add_block1_case(study, 0, models=("baseline",))
    add_block2_case(study, 0)
    with pytest.raises(ValidationError) as caught:
        services.open_study(study)
    text = " | ".join(caught.value.messages)
    for expected in (
        "consent text is empty",
        "completion code is empty",
        "Block 1 needs 3 cases, has 1",
        "Block 2 needs 2 cases, has 1",
        "case P01: missing proposed image",
    ):
        assert expected in text
    study.refresh_from_db()
    assert study.status == Study.Status.DRAFT


def test_a_complete_set_opens_and_then_cannot_change():
    study = StudyFactory(block1_patients=2, block2_cases=1)
    add_block1_case(study, 0)
    add_block1_case(study, 1)
    case = add_block2_case(study, 0)
    services.open_study(study)
    with pytest.raises(ValidationError, match="draft"):
        services.attach_stimulus(case, "baseline", real_image_bytes("healthy", 0)[0])


def test_counterfactuals_must_show_the_cases_target_condition():
    study = StudyFactory()
    case = add_block1_case(study, 1, models=())  # effusion patient
    data, _ = real_image_bytes("healthy", 2)
    with pytest.raises(ValidationError, match="must show effusion"):
        services.attach_stimulus(case, "baseline", data, condition="pneumonia")
    with pytest.raises(ValidationError, match="effusion or pneumonia"):
        services.add_case(study, label="C9", block=2, true_condition="healthy", real_image=data)


def test_a_corrupt_upload_stores_nothing():
    study = StudyFactory()
    with pytest.raises(Exception, match="broken.png: not a readable image"):
        services.add_case(
            study, label="P1", block=1, true_condition="healthy", real_image=b"junk", real_image_name="broken.png"
        )
    assert not Case.objects.exists() and not Stimulus.objects.exists()


def write_manifest(folder, items, role="proposed"):
    folder.mkdir(parents=True, exist_ok=True)
    for item in items:
        (folder / item["file"]).write_bytes(real_image_bytes("healthy", 3)[0])
    manifest = {"run": "run-7", "checkpoint": "ckpt.pt", "model_role": role, "items": items}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_generator_manifest_attaches_counterfactuals_by_source_id_and_condition(tmp_path):
    study = StudyFactory()
    patient = add_block1_case(study, 1, models=())  # effusion patient: its counterfactuals show effusion
    block2 = add_block2_case(study, 0, models=())  # its counterfactuals show the patient as healthy
    items = [
        {
            "file": "a.png",
            "source_id": patient.source_id,
            "intervention": {"disease": "effusion"},
            "seed": 1,
            "expert_probabilities": {"Effusion": 0.8},
        },
        {"file": "b.png", "source_id": block2.source_id, "intervention": {"disease": "healthy"}, "seed": 2},
        {"file": "c.png", "source_id": "not-in-study.png", "intervention": {"disease": "healthy"}, "seed": 3},
    ]
    write_manifest(tmp_path / "gen", items)
    result = services.import_counterfactual_manifest(study, tmp_path / "gen")
    assert sorted(result["attached"]) == [f"{block2.label}:proposed", f"{patient.label}:proposed"]
    assert result["unmatched"] == ["not-in-study.png"]
    stimulus = Stimulus.objects.get(case=patient, source="proposed")
    assert stimulus.condition == "effusion" and stimulus.provenance["run"] == "run-7"
    assert stimulus.provenance["expert_probabilities"] == {"Effusion": 0.8}


def test_a_bad_manifest_item_imports_nothing(tmp_path):
    study = StudyFactory()
    patient = add_block1_case(study, 0, models=())
    items = [
        {"file": "a.png", "source_id": patient.source_id, "intervention": {"disease": "healthy"}},
        {"file": "b.png", "source_id": patient.source_id, "intervention": {"disease": "healthy"}},
    ]
    write_manifest(tmp_path / "gen", items, role="baseline")
    (tmp_path / "gen" / "b.png").write_bytes(b"truncated")
    with pytest.raises(ValidationError, match="item 2 .*b.png.*not a readable image"):
        services.import_counterfactual_manifest(study, tmp_path / "gen")
    assert not Stimulus.objects.filter(source="baseline").exists()
    with pytest.raises(ValidationError, match="no manifest.json"):
        services.import_counterfactual_manifest(study, tmp_path)


def test_the_admin_builds_a_case_with_its_images_and_shows_thumbnails(admin_client):
    study = StudyFactory()
    real, name = real_image_bytes("effusion", 0)
    form = {
        "study": study.pk,
        "block": 1,
        "label": "P01",
        "source_id": name,
        "true_condition": "effusion",
        "cf_condition": "effusion",
        "position": 0,
        "real_image": SimpleUploadedFile(name, real),
        "baseline_image": SimpleUploadedFile("b.png", real),
        "stimuli-TOTAL_FORMS": 0,
        "stimuli-INITIAL_FORMS": 0,
    }
    reply = admin_client.post("/admin/studyplatform/case/add/", form)
    assert reply.status_code == 302, reply.content.decode()[:2000]
    case = Case.objects.get()
    assert sorted(case.stimuli.values_list("source", flat=True)) == ["baseline", "real"]
    page = admin_client.get(f"/admin/studyplatform/study/{study.pk}/change/").content.decode()
    assert "/i/" in page and "Block 1 needs 3 cases, has 1" in page
    bad = {**form, "label": "P02", "real_image": SimpleUploadedFile("x.png", b"nope"), "baseline_image": ""}
    reply = admin_client.post("/admin/studyplatform/case/add/", bad)
    assert reply.status_code == 200 and "not a readable image" in reply.content.decode()
    assert Case.objects.count() == 1


def test_the_admin_open_action_reports_problems(admin_client):
    study = StudyFactory()
    reply = admin_client.post(
        "/admin/studyplatform/study/", {"action": "open_studies", "_selected_action": [study.pk]}, follow=True
    )
    assert "cannot open" in reply.content.decode()
    study.refresh_from_db()
    assert study.status == "draft"


def test_admin_lists_participants_and_exports_csv(admin_client, open_study, participant):
    run_whole_session(participant)
    page = admin_client.get("/admin/studyplatform/participant/").content.decode()
    assert "P001" in page and "13/13" in page
    reply = admin_client.post(
        "/admin/studyplatform/study/", {"action": "export_answers", "_selected_action": [open_study.pk]}
    )
    assert reply["Content-Type"].startswith("text/csv") and len(reply.content.decode().splitlines()) == 14
    invites = admin_client.post(
        "/admin/studyplatform/study/",
        {"action": "create_invites", "_selected_action": [open_study.pk], "count": 3, "note": "ward"},
    )
    assert invites.status_code == 302 and open_study.invites.count() == 3
    assert "/invite/" in admin_client.get("/admin/studyplatform/invite/").content.decode()


def test_deleting_a_participants_data_is_audit_logged(open_study, participant, admin_user):
    run_whole_session(participant)
    assert services.delete_participant_data(participant, by=admin_user) == 13
    assert not Participant.objects.exists() and not Response.objects.exists()
    row = AuditLog.objects.get(action="participant.delete_data")
    assert row.actor == admin_user and row.details == {"label": "P001", "answers": 13}
    assert participant.external_id not in json.dumps(row.details)


def test_attention_checks_are_served_and_a_failure_excludes():
    study = StudyFactory(attention_checks=[{"after": 2, "instruction": "Select Pneumonia.", "expected": "pneumonia"}])
    for n in range(3):
        add_block1_case(study, n)
    for n in range(2):
        add_block2_case(study, n)
    services.open_study(study)
    participant, _ = services.start_session(study, external_id="attn")
    assert [t["phase"] for t in participant.plan[:4]] == ["block1", "block1", "attention", "block1"]
    run_whole_session(participant)
    participant.refresh_from_db()
    assert participant.status == "completed" and participant.excluded
    assert participant.exclusion_reason == "failed attention check 1"
    buffer = io.StringIO()
    from studyplatform import export

    export.write_answers_csv(study, buffer)
    assert "attention" not in buffer.getvalue()

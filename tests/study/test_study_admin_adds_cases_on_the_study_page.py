"""Cases can be added on the study page while the study is a draft (through the service: normalised real image,
audit row); once the study is open its case list there is read-only."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from studyplatform.models import AuditLog, Case
from tests.study.admin_pages import form_as_shown
from tests.study.factories import StudyFactory, add_block1_case, complete_study, real_image_bytes

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("media_root")]


def change_url(study):
    return f"/admin/studyplatform/study/{study.pk}/change/"


def new_case_prefix(page):
    (inline,) = [i for i in page.context["inline_admin_formsets"] if i.formset.prefix != "cases"]
    return inline.formset.prefix


def test_a_case_added_on_the_draft_study_page_is_stored_with_its_normalised_real_image(admin_client):
    study = StudyFactory()
    add_block1_case(study, 0)
    page = admin_client.get(change_url(study))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'enctype="multipart/form-data"' in html and "Add cases" in html
    prefix = new_case_prefix(page)
    real, name = real_image_bytes("pneumonia", 3)
    data = form_as_shown(page)
    data.update(
        {
            f"{prefix}-0-label": "P02",
            f"{prefix}-0-block": "1",
            f"{prefix}-0-source_id": name,
            f"{prefix}-0-true_condition": "pneumonia",
            f"{prefix}-0-cf_condition": "healthy",
            f"{prefix}-0-real_image": SimpleUploadedFile(name, real),
        }
    )

    reply = admin_client.post(change_url(study), data)

    assert reply.status_code == 302, reply.content.decode()[-3000:]
    case = Case.objects.get(study=study, label="P02")
    assert (case.block, case.true_condition, case.cf_condition, case.source_id) == (1, "pneumonia", "healthy", name)
    (real_stimulus,) = case.stimuli.all()
    assert real_stimulus.source == "real" and real_stimulus.condition == "pneumonia"
    assert AuditLog.objects.filter(action="case.add", object_id=str(case.pk)).exists()
    assert "P02" in admin_client.get(change_url(study)).content.decode()


def test_a_new_case_without_its_real_image_is_refused_and_nothing_is_stored(admin_client):
    study = StudyFactory()
    page = admin_client.get(change_url(study))
    prefix = new_case_prefix(page)
    data = form_as_shown(page)
    data.update({f"{prefix}-0-label": "C01", f"{prefix}-0-block": "2", f"{prefix}-0-true_condition": "effusion",
                 f"{prefix}-0-cf_condition": "healthy"})  # fmt: skip

    reply = admin_client.post(change_url(study), data)

    assert reply.status_code == 200 and "A new case needs its real image." in reply.content.decode()
    assert not Case.objects.exists()


def test_the_case_list_of_an_open_study_is_read_only(admin_client):
    study = complete_study()
    page = admin_client.get(change_url(study))
    html = page.content.decode()
    assert [inline.formset.prefix for inline in page.context["inline_admin_formsets"]] == ["cases"]
    assert "Add cases" not in html and 'name="cases-0-label"' not in html
    assert "P01" in html and "/i/" in html  # listed with thumbnails

"""Admin texts read right: the slug's help and the Prolific URL never render an empty `/s//`, the proposed variant is
"Expert-AL", and /favicon.ico leads to the site's icon."""

import pytest
import requests
from django.urls import reverse

import generator.admin_runs  # noqa: F401  (registers the TrainingRun admin)
from generator.models import Dataset, TrainingRun
from tests.study.factories import complete_study

pytestmark = pytest.mark.django_db


def test_the_add_study_page_shows_no_empty_link(admin_client):
    page = admin_client.get("/admin/studyplatform/study/add/").content.decode()
    assert "/s//" not in page
    assert "the part of the participant link after /s/ (letters, digits, hyphens)" in page
    assert "shown here once the study is saved with its slug" in page


def test_an_open_study_page_shows_its_link_and_the_slug_help(admin_client, media_root):
    study = complete_study()
    page = admin_client.get(f"/admin/studyplatform/study/{study.pk}/change/").content.decode()
    assert "/s//" not in page and f"/s/{study.slug}/?PROLIFIC_PID=" in page
    assert "the part of the participant link after /s/" in page


def test_the_proposed_variant_reads_expert_al(admin_client, tmp_path):
    assert TrainingRun.Variant.EXPERT_AL.label == "Expert-AL"
    dataset = Dataset.objects.create(name="phantom-labels", kind="phantom", root=str(tmp_path), resolution=32)
    run = TrainingRun.objects.create(name="ours", dataset=dataset, variant="expert-al")
    pages = [
        admin_client.get(reverse("admin:generator_trainingrun_start")).content.decode(),
        admin_client.get(reverse("admin:generator_trainingrun_change", args=[run.pk])).content.decode(),
        admin_client.get(reverse("admin:generator_trainingrun_changelist")).content.decode(),
    ]
    for page in pages:
        assert "Expert Al" not in page and "Expert-AL" in page


def test_favicon_ico_leads_to_the_served_icon(live_server):
    reply = requests.get(f"{live_server.url}/favicon.ico", timeout=10)
    assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("image/svg+xml")
    assert reply.history[0].status_code == 301 and reply.url.endswith("/static/favicon.svg")
    assert reply.content.startswith(b"<svg")

import io
import json

import pytest
from django.core.management import CommandError, call_command

from studyplatform.models import Participant, Response

# Perfect Block-1 readers who find proposed images very real, and Block-2 readers who are always wrong at first and
# corrected by the proposed model's counterfactual only.
PROFILE = {
    "block1": {
        "real": {"accuracy": 1.0, "realness_mean": 30, "realness_sd": 0.1, "reasons_mean": 0},
        "baseline": {"accuracy": 1.0, "realness_mean": 30, "realness_sd": 0.1, "reasons_mean": 7},
        "proposed": {"accuracy": 1.0, "realness_mean": 95, "realness_sd": 0.1, "reasons_mean": 0},
    },
    "block2_first_accuracy": 0.0,
    "block2": {"baseline": {"correction": 0.0}, "proposed": {"correction": 1.0}},
    "ability_sd": 0.0,
    "realness_bias_sd": 0.0,
}


@pytest.fixture
def profile_file(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(PROFILE))
    return path


def check_sessions(study, n):
    participants = Participant.objects.filter(study=study)
    assert participants.count() == n
    assert all(p.simulated for p in participants)  # marked, so that no analysis takes them for real readers
    assert {p.status for p in participants} == {Participant.Status.COMPLETED}
    per_participant = study.block1_patients * 3 + study.block2_cases * 2
    assert Response.objects.filter(participant__study=study).count() == n * per_participant
    block1 = Response.objects.filter(participant__study=study, block=1).select_related("stimulus")
    for response in block1:
        assert response.diagnosis == response.stimulus.condition
        assert response.realness == (95 if response.stimulus.source == "proposed" else 30)
        assert len(response.reasons) == (7 if response.stimulus.source == "baseline" else 0)
    for response in Response.objects.filter(participant__study=study, block=2).select_related("stimulus"):
        right = response.diagnosis == response.stimulus.condition
        assert right == (response.phase == "post" and response.cf_model == "proposed")


@pytest.mark.django_db
def test_bots_complete_sessions_through_the_participant_api_in_process(open_study, profile_file):
    stdout = io.StringIO()
    call_command(
        "simulate_participants", open_study.slug, "--n", "3", "--profile", str(profile_file), verbosity=0, stdout=stdout
    )
    assert "3 of 3 simulated participants completed" in stdout.getvalue()
    check_sessions(open_study, 3)


@pytest.mark.django_db(transaction=True)
def test_bots_complete_sessions_over_http(live_server, media_root, profile_file):
    from tests.study.factories import complete_study

    study = complete_study()
    call_command(
        "simulate_participants",
        study.slug,
        "--n",
        "2",
        "--profile",
        str(profile_file),
        "--base-url",
        live_server.url,
        verbosity=0,
        stdout=io.StringIO(),
    )
    check_sessions(study, 2)


@pytest.mark.django_db
def test_a_closed_study_or_a_bad_profile_is_refused(open_study, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"block2": {"proposed": {"correction": 2}}}))
    with pytest.raises(CommandError, match="correction must be a probability"):
        call_command("simulate_participants", open_study.slug, "--profile", str(bad), stdout=io.StringIO())
    from studyplatform import services

    services.close_study(open_study)
    with pytest.raises(CommandError, match="open it before"):
        call_command("simulate_participants", open_study.slug, stdout=io.StringIO())
    assert not Participant.objects.filter(study=open_study).exists()


@pytest.mark.django_db
def test_the_admin_lists_filters_and_shows_simulated_participants(admin_client, open_study):
    from studyplatform import services

    real, _ = services.start_session(open_study, external_id="a-real-reader")
    call_command("simulate_participants", open_study.slug, "--n", "1", verbosity=0, stdout=io.StringIO())
    bot = Participant.objects.get(study=open_study, simulated=True)
    assert not Participant.objects.get(pk=real.pk).simulated

    listing = admin_client.get("/admin/studyplatform/participant/").content.decode()
    assert "column-simulated" in listing and "?simulated__exact=1" in listing
    only_bots = admin_client.get("/admin/studyplatform/participant/?simulated__exact=1").content.decode()
    assert bot.label in only_bots and real.label not in only_bots
    page = admin_client.get(f"/admin/studyplatform/participant/{bot.pk}/change/").content.decode()
    assert "field-simulated" in page

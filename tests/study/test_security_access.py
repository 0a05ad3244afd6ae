"""Who can reach what: the admin and the staff API only for staff, a participant's token only for that
participant's own session, and tokens no one can guess."""

import math
import re
from collections import Counter
from pathlib import Path

import pytest
from django.test import Client

from studyplatform import services
from studyplatform.models import Participant, Response, Stimulus
from tests.study.factories import run_whole_session

pytestmark = pytest.mark.django_db

STAFF_ENDPOINTS = ["/api/studies/", "/api/cases/", "/api/stimuli/", "/api/participants/", "/api/responses/"]
URLSAFE = re.compile(r"^[A-Za-z0-9_-]+$")


@pytest.fixture
def participant_browser(client, participant):
    """A browser that holds a participant's session (cookie) for the open study."""
    client.get(
        f"/s/{participant.study.slug}/?PROLIFIC_PID={participant.external_id}&SESSION_ID={participant.prolific_session_id}"
    )
    assert client.get(f"/s/{participant.study.slug}/run/").status_code == 200
    return client


@pytest.fixture
def plain_user_client(django_user_model):
    user = django_user_model.objects.create_user("reader", password="a-long-password-1")
    client = Client()
    client.force_login(user)
    return client


def detail_urls(open_study, participant):
    stimulus = Stimulus.objects.first()
    return [
        f"/api/studies/{open_study.slug}/",
        f"/api/studies/{open_study.slug}/export/?table=answers&raw_ids=1",
        f"/api/studies/{open_study.slug}/problems/",
        f"/api/cases/{stimulus.case_id}/",
        f"/api/stimuli/{stimulus.pk}/",
        f"/api/participants/{participant.pk}/",
    ]


def test_the_staff_api_refuses_everyone_but_staff(
    client, participant_browser, plain_user_client, admin_client, open_study, participant
):
    token = participant.token
    urls = STAFF_ENDPOINTS + detail_urls(open_study, participant)
    refused = {
        "anonymous": lambda url: Client().get(url),
        "participant session cookie": lambda url: participant_browser.get(url),
        "participant token as API token": lambda url: Client().get(url, HTTP_AUTHORIZATION=f"Token {token}"),
        "participant token as bearer": lambda url: Client().get(url, HTTP_AUTHORIZATION=f"Bearer {token}"),
        "logged-in non-staff user": lambda url: plain_user_client.get(url),
    }
    for who, get in refused.items():
        for url in urls:
            reply = get(url)
            assert reply.status_code in (401, 403), (who, url, reply.status_code)
            assert participant.external_id.encode() not in reply.content
    for url in urls:
        assert admin_client.get(url).status_code == 200, url


def test_staff_api_writes_are_refused_to_non_staff(client, plain_user_client, open_study, participant):
    before = (Participant.objects.count(), Response.objects.count(), open_study.status)
    for api in (Client(), plain_user_client):
        assert api.post(f"/api/studies/{open_study.slug}/close/").status_code in (401, 403)
        assert api.delete(f"/api/participants/{participant.pk}/").status_code in (401, 403)
        assert api.patch(
            f"/api/studies/{open_study.slug}/", {"title": "x"}, content_type="application/json"
        ).status_code in (
            401,
            403,
        )
    open_study.refresh_from_db()
    assert (Participant.objects.count(), Response.objects.count(), open_study.status) == before


def test_the_admin_refuses_anonymous_users_participants_and_non_staff(
    participant_browser, plain_user_client, admin_client, participant
):
    pages = [
        "/admin/",
        "/admin/studyplatform/study/",
        "/admin/studyplatform/participant/",
        f"/admin/studyplatform/participant/{participant.pk}/change/",
        "/admin/studyplatform/response/",
    ]
    for browser in (Client(), participant_browser, plain_user_client):
        for page in pages:
            reply = browser.get(page)
            assert reply.status_code == 302 and "/admin/login/" in reply["Location"], (page, reply.status_code)
    assert admin_client.get("/admin/").status_code == 200


def test_a_participant_token_only_ever_shows_its_own_session(client, open_study, participant):
    other, _ = services.start_session(open_study, external_id="secondperson9")
    run_whole_session(other)
    services.begin_block(participant, 1)
    other.refresh_from_db()
    own_ids = {t["id"] for t in Participant.objects.get(pk=participant.pk).plan}
    other_ids = {t["id"] for t in other.plan}

    seen = client.get(f"/api/participant/{participant.token}/").content.decode()
    assert other.token not in seen and other.external_id not in seen and str(other.pk) not in seen
    assert not any(trial_id in seen for trial_id in other_ids)
    assert any(trial_id in seen for trial_id in own_ids)
    # The other participant's completion (and code) is not visible through this token.
    assert '"state":"trial"' in seen.replace(" ", "")


def test_the_browser_session_of_one_participant_never_reaches_another_study_session(client, open_study, participant):
    """The page session stores a token per study; a made-up or foreign cookie value finds nothing."""
    from tests.study.factories import complete_study

    second_study = complete_study()
    client.get(
        f"/s/{open_study.slug}/?PROLIFIC_PID={participant.external_id}&SESSION_ID={participant.prolific_session_id}"
    )
    reply = client.get(f"/s/{second_study.slug}/run/")
    assert reply.status_code == 404 and b"trial-form" not in reply.content


def entropy_bits_per_char(tokens):
    counts = Counter("".join(tokens))
    total = sum(counts.values())
    return -sum(n / total * math.log2(n / total) for n in counts.values())


def test_tokens_are_long_random_and_unrelated(open_study):
    participants = [services.start_session(open_study, external_id=f"pid{i:04d}")[0] for i in range(40)]
    invite_tokens = [invite.token for invite in services.create_invites(open_study, 20)]
    groups = {
        "participant": [p.token for p in participants],
        "stimulus": list(Stimulus.objects.values_list("token", flat=True)),
        "invite": invite_tokens,
    }
    for kind, tokens in groups.items():
        assert len(tokens) >= 10, kind
        assert len(set(tokens)) == len(tokens), f"{kind} tokens repeat"
        assert all(URLSAFE.match(t) for t in tokens), kind
        # At least 128 bits: base64url carries 6 bits per character.
        assert min(len(t) for t in tokens) * 6 >= 128, kind
        # No shared prefix or sequence: consecutive tokens share no more than chance would give.
        assert len({t[:4] for t in tokens}) == len(tokens), f"{kind} tokens share prefixes"
        # The characters are spread over the whole alphabet (log2(64) = 6 bits per character).
        assert entropy_bits_per_char(tokens) > 5.6, kind
    # Plans, seeds and trial ids are per participant and not derived from the participant index.
    trial_ids = [t["id"] for p in participants for t in p.plan]
    assert len(set(trial_ids)) == len(trial_ids)
    assert len({p.seed for p in participants}) == len(participants)
    for stored, original in Stimulus.objects.values_list("file", "original_name"):
        assert not any(word in stored.lower() for word in ("real", "baseline", "proposed", Path(original).stem.lower()))

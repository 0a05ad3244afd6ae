"""Block 2 shows the counterfactual only after the first diagnosis is locked, and the browser cannot get it earlier:
the counterfactual's image token is in no page, preload hint or API answer before that first answer is stored."""

import json

import pytest
from django.test import Client

from studyplatform import services
from studyplatform.models import Participant, Stimulus
from tests.study.factories import valid_answer

pytestmark = pytest.mark.django_db


def answer_block1(participant):
    services.begin_block(participant, 1)
    participant.refresh_from_db()
    while (step := services.next_step(participant))["state"] == "trial":
        services.submit_answer(participant, step["trial"]["id"], valid_answer(step["trial"]))
        participant.refresh_from_db()
    assert step == {**step, "state": "instructions", "block": 2}


def test_the_counterfactual_token_is_issued_only_after_the_first_answer(open_study):
    api = Client()
    body = {"study": open_study.slug, "consent": True, "prolific_pid": "preload01", "session_id": "S-pre"}
    token = api.post("/api/participant/sessions/", body, content_type="application/json").json()["token"]
    participant = Participant.objects.get(token=token)
    answer_block1(participant)
    browser = Client()
    browser.get(f"/s/{open_study.slug}/?PROLIFIC_PID=preload01&SESSION_ID=S-pre")
    begun = api.post(f"/api/participant/{token}/begin/", {"block": 2}, content_type="application/json").json()

    participant.refresh_from_db()
    posts = [t for t in participant.plan if t["phase"] == "post"]
    assert len(posts) == open_study.block2_cases
    for post in posts:
        counterfactual = Stimulus.objects.get(pk=post["cf_stimulus"]).token
        real = Stimulus.objects.get(pk=post["stimulus"]).token
        before = {
            "api step": json.dumps(api.get(f"/api/participant/{token}/").json()),
            "trial page": browser.get(f"/s/{open_study.slug}/run/").content.decode(),
        }
        if post is posts[0]:
            before["begin block 2"] = json.dumps(begun)
        assert all(counterfactual not in seen for seen in before.values()), post["case"]
        assert all(real in seen for seen in before.values())  # the real image is shown and preloaded as before

        pre = services.next_step(participant)["trial"]
        assert pre["phase"] == "pre"
        reply = api.post(
            f"/api/participant/{token}/answers/",
            {"trial": pre["id"], **valid_answer(pre)},
            content_type="application/json",
        )
        assert reply.status_code == 201
        shown = reply.json()["next"]["trial"]
        assert shown["phase"] == "post" and shown["images"] == [f"/i/{real}", f"/i/{counterfactual}"]
        assert counterfactual in browser.get(f"/s/{open_study.slug}/run/").content.decode()

        final = api.post(
            f"/api/participant/{token}/answers/",
            {"trial": shown["id"], **valid_answer(shown)},
            content_type="application/json",
        ).json()
        next_cf = [Stimulus.objects.get(pk=p["cf_stimulus"]).token for p in posts if p is not post]
        assert not any(cf in json.dumps(final) for cf in next_cf)
        participant.refresh_from_db()
    assert participant.status == Participant.Status.COMPLETED

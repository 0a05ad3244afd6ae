"""Every response carries a Content-Security-Policy: the strict one (scripts and styles from this site's files only,
no inline script or style) on the participant pages, the JSON APIs, images and errors; a policy that allows inline
styles, but still no inline script, under /admin/. The templates give the strict policy nothing to block."""

import re
from pathlib import Path

import pytest
from django.test import Client

from studyplatform import services
from tests.study.factories import run_whole_session, valid_answer

pytestmark = pytest.mark.django_db

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
SCRIPT = re.compile(r"<script\b([^>]*)>(.*?)</script>", re.S | re.I)
INLINE_STYLE = re.compile(r"<style\b|\sstyle\s*=", re.I)
EVENT_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.I)
URL_ATTRIBUTE = re.compile(r"<(?:script|link|img|iframe|source)\b[^>]*\s(?:src|href)=\"([^\"]*)\"", re.I)


def directives(policy):
    parsed = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            parsed[words[0]] = words[1:]
    return parsed


def assert_strict(policy, where):
    parsed = directives(policy)
    assert parsed.get("default-src") == ["'none'"], where
    assert parsed.get("script-src") == ["'self'"], where
    assert parsed.get("style-src") == ["'self'"], where
    assert parsed.get("frame-ancestors") == ["'none'"] and parsed.get("base-uri") == ["'none'"], where
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy and "*" not in policy, where


def assert_nothing_inline(html, where):
    for attributes, body in SCRIPT.findall(html):
        assert "src=" in attributes and not body.strip(), (where, attributes, body[:80])
    assert not INLINE_STYLE.search(html), (where, INLINE_STYLE.search(html).group(0))
    assert not EVENT_HANDLER.search(html), (where, EVENT_HANDLER.search(html).group(0))
    for url in URL_ATTRIBUTE.findall(html):
        assert url.startswith("/") and not url.startswith("//"), (where, url)


def participant_responses(study):
    """One response of every kind a participant (or a custom front end) can receive."""
    slug = study.slug
    entry = f"/s/{slug}/?PROLIFIC_PID=csp0001&STUDY_ID=&SESSION_ID=S-csp"
    browser = Client()
    seen = {"home": browser.get("/"), "consent": browser.get(entry)}
    seen["declined"] = Client().post(f"/s/{slug}/", {"PROLIFIC_PID": "csp0002", "decision": "decline"})
    browser.post(f"/s/{slug}/", {"PROLIFIC_PID": "csp0001", "SESSION_ID": "S-csp", "decision": "accept"})
    seen["instructions"] = browser.get(f"/s/{slug}/run/")
    browser.post(f"/s/{slug}/run/", {"action": "begin", "block": "1"})
    seen["trial"] = trial = browser.get(f"/s/{slug}/run/")
    trial_id = re.search(r'name="trial" value="([^"]+)"', trial.content.decode()).group(1)
    seen["invalid answer"] = browser.post(f"/s/{slug}/run/", {"trial": trial_id, "diagnosis": "healthy"})
    seen["withdraw page"] = browser.get(f"/s/{slug}/withdraw/")
    seen["resume form"] = Client().get(f"/s/{slug}/?PROLIFIC_PID=csp0001")
    seen["no session"] = Client().get(f"/s/{slug}/run/")
    seen["refused entry"] = Client().get(f"/s/{slug}/?PROLIFIC_PID=<bad>")
    seen["image"] = browser.get(re.search(r'<img src="(/i/[^"]+)"', trial.content.decode()).group(1))
    seen["missing image"] = browser.get("/i/nosuchimage")
    seen["missing study"] = browser.get("/s/no-such-study/")

    done, _ = services.start_session(study, external_id="csp0003", prolific_session_id="S-done")
    run_whole_session(done)
    finished = Client()
    finished.get(f"/s/{slug}/?PROLIFIC_PID=csp0003&SESSION_ID=S-done")
    seen["complete"] = finished.get(f"/s/{slug}/run/")
    seen["withdrawn"] = browser.post(f"/s/{slug}/withdraw/")
    seen["ended"] = browser.get(f"/s/{slug}/run/")

    api = Client()
    body = {"study": slug, "consent": True, "prolific_pid": "csp0004", "session_id": "S-api"}
    started = api.post("/api/participant/sessions/", body, content_type="application/json")
    token = started.json()["token"]
    api.post(f"/api/participant/{token}/begin/", {"block": 1}, content_type="application/json")
    step = api.get(f"/api/participant/{token}/")
    answer = {"trial": step.json()["trial"]["id"], **valid_answer(step.json()["trial"])}
    seen.update(
        {
            "api start": started,
            "api step": step,
            "api answer": api.post(f"/api/participant/{token}/answers/", answer, content_type="application/json"),
            "api error": api.post(f"/api/participant/{token}/answers/", {}, content_type="application/json"),
            "api unknown token": api.get("/api/participant/nosuchtoken/"),
            "api withdraw": api.post(f"/api/participant/{token}/withdraw/"),
            "staff api refused": api.get("/api/studies/"),
            "health": api.get("/healthz"),
        }
    )
    return seen


def test_every_participant_response_and_the_api_carry_the_strict_policy(open_study):
    for name, response in participant_responses(open_study).items():
        policy = response.get("Content-Security-Policy")
        assert policy, f"{name}: no Content-Security-Policy"
        assert_strict(policy, name)
        if response.get("Content-Type", "").startswith("text/html"):
            assert_nothing_inline(response.content.decode(), name)


def test_staff_pages_outside_the_admin_are_strict_and_script_free(admin_client, open_study):
    for url in ("/api/docs/", f"/api/studies/{open_study.slug}/"):
        response = admin_client.get(url, HTTP_ACCEPT="text/html")
        assert_strict(response["Content-Security-Policy"], url)
    assert_nothing_inline(admin_client.get("/api/docs/").content.decode(), "/api/docs/")


def test_the_admin_allows_inline_styles_but_no_inline_script(admin_client, open_study, participant):
    for browser, url in (
        (Client(), "/admin/login/"),
        (admin_client, "/admin/"),
        (admin_client, "/admin/studyplatform/study/"),
        (admin_client, f"/admin/studyplatform/study/{open_study.pk}/change/"),
        (admin_client, "/admin/studyplatform/participant/"),
        (admin_client, f"/admin/studyplatform/participant/{participant.pk}/change/"),
    ):
        response = browser.get(url)
        assert response.status_code == 200, url
        parsed = directives(response["Content-Security-Policy"])
        assert parsed["script-src"] == ["'self'"], url
        assert parsed["style-src"] == ["'self'", "'unsafe-inline'"], url
        assert parsed["frame-ancestors"] == ["'none'"] and parsed["object-src"] == ["'none'"], url
        for attributes, body in SCRIPT.findall(response.content.decode()):
            assert "src=" in attributes and not body.strip(), (url, attributes)


def test_participant_templates_hold_no_inline_script_style_or_handler():
    templates = sorted(TEMPLATES.rglob("*.html"))
    assert len(templates) >= 10
    for template in templates:
        text = template.read_text()
        for attributes, body in SCRIPT.findall(text):
            assert "src=" in attributes and not body.strip(), (template.name, body[:80])
        assert not INLINE_STYLE.search(text), template.name
        assert not EVENT_HANDLER.search(text), template.name

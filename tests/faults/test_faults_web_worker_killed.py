"""A web server killed in the middle of a session: the participant's browser comes back to a restarted server and
continues at the next unanswered trial, with every earlier answer kept and none stored twice.

The server is real gunicorn in its own process group, serving the file-backed test database; it is killed with
SIGKILL (no request finishes, nothing cleans up) and a new one is started on the same database.
"""

import re

import pytest
import requests
from django.conf import settings

from benchmarks.participant_bots import ServerProcess
from studyplatform.models import Participant, Response
from tests.jobs.worker import worker_environment

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FIELD = re.compile(r'name="(csrfmiddlewaretoken|trial|block)" value="([^"]*)"')


def form_fields(html):
    return dict(FIELD.findall(html))


class Browser:
    """The participant's browser: one cookie jar that outlives the servers."""

    def __init__(self):
        self.http = requests.Session()

    def get(self, url):
        return self.http.get(url, timeout=30)

    def post(self, url, page_html, **data):
        return self.http.post(url, data={**form_fields(page_html), **data}, headers={"Referer": url}, timeout=30)


def answer_current_page(browser, run_url, page):
    """Answer whatever the run page shows (instructions or a trial); returns the next page."""
    fields = form_fields(page.text)
    if 'name="action" value="begin"' in page.text:
        return browser.post(run_url, page.text, action="begin")
    answer = {"diagnosis": "effusion", "rt_ms": "1200", "confidence": "3"}
    if 'data-phase="block1"' in page.text:
        answer = {"diagnosis": "healthy", "rt_ms": "900", "realness": "37", "slider_moved": "1", "reasons": ["2"]}
    assert "trial" in fields, page.text[:500]
    return browser.post(run_url, page.text, **answer)


def start_server(tmp_path, name):
    env = worker_environment(MEDIA_ROOT=settings.MEDIA_ROOT, DJANGO_SETTINGS_MODULE="studyplatform.settings")
    return ServerProcess(env, tmp_path / f"{name}.log", workers=2).start()


def test_participant_resumes_at_the_next_unanswered_trial_after_the_server_is_killed(open_study, tmp_path):
    browser = Browser()
    server = start_server(tmp_path, "first")
    try:
        entry = f"{server.url}/s/{open_study.slug}/?PROLIFIC_PID=killtest01&STUDY_ID=&SESSION_ID=s1"
        consent = browser.get(entry)
        assert consent.status_code == 200 and "consent" in consent.text.lower()
        page = browser.post(entry, consent.text, decision="accept", PROLIFIC_PID="killtest01")
        run_url = f"{server.url}/s/{open_study.slug}/run/"
        for _ in range(5):  # the Block-1 instructions and four trials
            page = answer_current_page(browser, run_url, page)
            assert page.status_code == 200, page.text[:500]
        assert Response.objects.count() == 4
    finally:
        server.kill()

    participant = Participant.objects.get()
    assert participant.n_answers == 4

    restarted = start_server(tmp_path, "second")
    try:
        run_url = f"{restarted.url}/s/{open_study.slug}/run/"
        page = browser.get(run_url)
        assert page.status_code == 200
        assert form_fields(page.text)["trial"] == participant.plan[4]["id"], "did not resume at trial 5"
        answered = 0
        while "completion" not in page.text.lower() or "trial-form" in page.text:
            page = answer_current_page(browser, run_url, page)
            assert page.status_code == 200, page.text[:500]
            answered += 1
            assert answered < 40, "the session never ended"
        assert open_study.completion_code in page.text
    finally:
        restarted.stop()

    participant.refresh_from_db()
    assert participant.status == Participant.Status.COMPLETED
    sequences = list(Response.objects.filter(participant=participant).values_list("sequence", flat=True))
    assert sorted(sequences) == list(range(len(participant.plan)))
    first_four = Response.objects.filter(participant=participant, sequence__lt=4)
    assert all(r.diagnosis == "healthy" and r.realness == 37 and r.reasons == [2] for r in first_four)

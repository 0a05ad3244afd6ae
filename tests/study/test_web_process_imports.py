"""The web process stays lean: importing the WSGI application, loading the URLconf and serving the admin and the
participant's pages and JSON API never imports PyTorch, Pyro, pandas or statsmodels (each gunicorn worker would
otherwise spend seconds and hundreds of megabytes on them). Checked in a fresh interpreter, because the test
process itself has imported them for other tests."""

import json
import subprocess
import sys

import pytest

from tests.jobs.worker import ROOT, worker_environment

pytestmark = pytest.mark.django_db(transaction=True)

PROBE = r"""
import json, sys

HEAVY = ("torch", "pyro", "pandas", "statsmodels")


def loaded():
    return sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY))


report = {}
from studyplatform.wsgi import application  # noqa: E402,F401

report["wsgi"] = loaded()
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns
report["urls"] = loaded()

from django.contrib.auth import get_user_model  # noqa: E402
from django.test import Client  # noqa: E402

slug, study_pk = sys.argv[1], sys.argv[2]
statuses = {}
admin = Client()
admin.force_login(get_user_model().objects.get(username="probe-admin"))
for url in (
    "/admin/",
    "/admin/studyplatform/study/",
    f"/admin/studyplatform/study/{study_pk}/change/",
    "/admin/studyplatform/participant/",
    "/admin/studyplatform/response/",
    "/admin/jobs/job/",
    "/admin/generator/trainingrun/",
    "/admin/generator/trainingrun/start/",
    "/admin/generator/dataset/",
):
    statuses[url] = admin.get(url).status_code
report["admin"] = loaded()

browser = Client()
entry = f"/s/{slug}/?PROLIFIC_PID=probe01&SESSION_ID=S-probe"
statuses["consent"] = browser.get(entry).status_code
consent = {"PROLIFIC_PID": "probe01", "SESSION_ID": "S-probe", "decision": "accept"}
statuses["start"] = browser.post(entry, consent).status_code
run = f"/s/{slug}/run/"
statuses["instructions"] = browser.get(run).status_code
statuses["begin"] = browser.post(run, {"action": "begin", "block": "1"}).status_code
page = browser.get(run)
statuses["trial"] = page.status_code
trial_id = page.content.decode().split('name="trial" value="', 1)[1].split('"', 1)[0]
form = {"trial": trial_id, "diagnosis": "healthy", "rt_ms": "900", "realness": "40", "slider_moved": "1"}
statuses["answer"] = browser.post(run, form).status_code
report["pages"] = loaded()

api = Client()
body = {"study": slug, "consent": True, "prolific_pid": "probe02", "session_id": "S-api"}
token = api.post("/api/participant/sessions/", body, content_type="application/json").json()["token"]
api.post(f"/api/participant/{token}/begin/", {"block": 1}, content_type="application/json")
step = api.get(f"/api/participant/{token}/").json()
answer = {"trial": step["trial"]["id"], "diagnosis": "healthy", "rt_ms": 900, "realness": 40, "slider_moved": True}
reply = api.post(f"/api/participant/{token}/answers/", answer, content_type="application/json")
statuses["api_answer"] = reply.status_code
report["api"] = loaded()
report["statuses"] = statuses
print(json.dumps(report))
"""


def test_the_web_process_never_imports_the_ml_and_analysis_libraries(open_study, django_user_model, settings):
    django_user_model.objects.create_superuser("probe-admin", "probe@example.org", "pw")
    env = worker_environment(MEDIA_ROOT=settings.MEDIA_ROOT, DJANGO_SETTINGS_MODULE="studyplatform.settings")
    finished = subprocess.run(
        [sys.executable, "-c", PROBE, open_study.slug, str(open_study.pk)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    statuses = report.pop("statuses")
    assert report == {"wsgi": [], "urls": [], "admin": [], "pages": [], "api": []}
    expected = {url: 200 for url in statuses}
    expected.update(start=302, begin=302, answer=302, api_answer=201)
    assert statuses == expected

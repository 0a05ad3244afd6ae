"""The participant's hot path in process: CPU time per answer, per next-step JSON and per trial page, each as a
multiple of a framework floor measured in the same run, and the SQL statements of one answer.

The floor is a plain Django view under the same settings and middleware (production settings, DEBUG off, SQLite)
that parses a JSON body of the same size as an answer and writes one row. A ratio near 1 means the request costs
little more than Django itself; the targets are at most 3x for each request and at most 5 statements per answer.
Requests go through Django's test client (no network, no server), so the figures are CPU in this process only.

Environment:
    BENCH_ANSWER_PARTICIPANTS=20   sessions that answer (each answers all of Block 1; the first one's answers count
                                   the SQL statements, the others' are timed)
    BENCH_ANSWER_ROUNDS=400        floor requests, next-step and trial-page requests (each)
"""

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_load import production_settings  # noqa: E402

PARTICIPANTS = int(os.environ.get("BENCH_ANSWER_PARTICIPANTS", "20"))
ROUNDS = int(os.environ.get("BENCH_ANSWER_ROUNDS", "400"))
TARGET_RATIO = 3.0
TARGET_STATEMENTS = 5
TRANSACTION_CONTROL = ("BEGIN", "SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK", "COMMIT")


def configure(folder):
    os.environ.update(production_settings(folder, "testserver"))
    os.environ["DATABASE_URL"] = f"sqlite:///{folder / 'bench.sqlite3'}"
    import django

    django.setup()


def floor_view(request):
    """The framework floor: parse a JSON body and write one row."""
    from django.http import JsonResponse

    from studyplatform.models import AuditLog

    data = json.loads(request.body)
    row = AuditLog.objects.create(actor_label="floor", action="floor", object_type="floor", details=data)
    return JsonResponse({"id": row.pk}, status=201)


def cpu_per_call(call, n):
    """Median and mean CPU seconds of `call()` over n calls (each call timed alone)."""
    samples = []
    for _ in range(n):
        started = time.process_time()
        call()
        samples.append(time.process_time() - started)
    return statistics.median(samples), statistics.fmean(samples)


def main():
    folder = Path(tempfile.mkdtemp(prefix="bench-answer-"))
    try:
        configure(folder)
        return run(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(folder):
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, override_settings
    from django.urls import include, path
    from django.views.decorators.csrf import csrf_exempt

    from tests.study.factories import complete_study, valid_answer

    call_command("migrate", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)
    # The full-size session plan (60 trials); small images, which do not change what a request costs.
    study = complete_study(block1_patients=12, block2_cases=12, working_size=32, display_size=64, slug="bench-path")

    urlconf = type(sys)("bench_answer_path_urls")
    urlconf.urlpatterns = [path("floor/", csrf_exempt(floor_view)), path("", include("studyplatform.urls"))]
    sys.modules[urlconf.__name__] = urlconf

    with override_settings(ROOT_URLCONF=urlconf.__name__):
        api = Client()
        sessions = []
        for number in range(PARTICIPANTS):
            body = {"study": study.slug, "consent": True, "prolific_pid": f"bench{number:04d}", "session_id": "S"}
            token = api.post("/api/participant/sessions/", body, content_type="application/json").json()["token"]
            step = api.post(f"/api/participant/{token}/begin/", {"block": 1}, content_type="application/json").json()
            sessions.append([token, step])

        sample_trial = sessions[0][1]["trial"]
        answer_body = json.dumps({"trial": sample_trial["id"], **valid_answer(sample_trial)})

        def floor():
            reply = api.post("/floor/", answer_body, content_type="application/json")
            assert reply.status_code == 201

        floor()
        floor_cpu = cpu_per_call(floor, ROUNDS)

        # The first session's answers count the SQL statements; the others are timed. Capturing statements slows
        # every one of them (and, on SQLite, adds a query to quote its parameters), which the floor does not pay.
        answer_samples, statements = [], []
        for number, (token, step) in enumerate(sessions):
            while step["state"] == "trial":
                body = json.dumps({"trial": step["trial"]["id"], **valid_answer(step["trial"])})
                url = f"/api/participant/{token}/answers/"
                if number == 0:
                    with CaptureQueriesContext(connection) as queries:
                        reply = api.post(url, body, content_type="application/json")
                    statements.append(
                        sum(not q["sql"].upper().startswith(TRANSACTION_CONTROL) for q in queries.captured_queries)
                    )
                else:
                    started = time.process_time()
                    reply = api.post(url, body, content_type="application/json")
                    answer_samples.append(time.process_time() - started)
                assert reply.status_code == 201, reply.content
                step = reply.json()["next"]
        answer_cpu = statistics.median(answer_samples), statistics.fmean(answer_samples)

        # Block 2 of the first session: a trial page (the browser's view of the same session) and its JSON step.
        token = sessions[0][0]
        api.post(f"/api/participant/{token}/begin/", {"block": 2}, content_type="application/json")
        browser = Client()
        browser.get(f"/s/{study.slug}/?PROLIFIC_PID=bench0000&SESSION_ID=S")
        assert browser.get(f"/s/{study.slug}/run/").status_code == 200

        def next_json():
            assert api.get(f"/api/participant/{token}/").status_code == 200

        def trial_page():
            assert browser.get(f"/s/{study.slug}/run/").status_code == 200

        next_cpu = cpu_per_call(next_json, ROUNDS)
        page_cpu = cpu_per_call(trial_page, ROUNDS)

    print(
        f"answer path in process: production settings (DEBUG off), SQLite, {PARTICIPANTS} sessions of 60 trials, "
        f"{len(answer_samples)} answers, {ROUNDS} requests of every other kind; CPU ms per request (median / mean)"
    )
    print(f"    {'request':<22} {'median':>8} {'mean':>8} {'x floor':>8}")
    rows = [
        ("floor (JSON + 1 row)", floor_cpu),
        ("answer (JSON API)", answer_cpu),
        ("next step (JSON API)", next_cpu),
        ("trial page (HTML)", page_cpu),
    ]
    ok = True
    for label, (median, mean) in rows:
        ratio = median / floor_cpu[0]
        within = ratio <= TARGET_RATIO
        ok &= within
        print(f"    {label:<22} {1000 * median:>8.2f} {1000 * mean:>8.2f} {ratio:>7.1f}x{'' if within else '  > 3x'}")
    most = max(statements)
    ok &= most <= TARGET_STATEMENTS
    print(f"    SQL statements per answer (without BEGIN/COMMIT): at most {most}, target {TARGET_STATEMENTS}")
    load = os.getloadavg()
    print(f"    load average during the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    print(f"    -> {'OK' if ok else 'above target'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Load: simulated participants take whole study sessions at the same time against gunicorn, on SQLite and on
PostgreSQL, and every answer they sent must be in the database exactly once.

For each database a child process makes a fresh database (a temporary SQLite file, or a new PostgreSQL database that
is dropped afterwards), migrates it, builds a full-size open study (12 Block-1 patients x 3 images, 12 Block-2 cases,
512 px stimuli), starts gunicorn with production settings (DEBUG off) and runs the bots of
benchmarks/participant_bots.py: each one consents, starts each block, answers every trial through the participant
JSON API, downloads every image it is shown (and the next trial's preload) like a browser, sends 10% of its answers
twice (a double click) and reloads now and then. Between requests a bot waits an exponentially distributed think
time. Reported: throughput, p50/p95/p99 latency per request type, errors (5xx and failed bots), and the exactly-once
check of every sent answer against the Response rows.

A time-limited run (BENCH_LOAD_DURATION_S) stops every bot after that many seconds, wherever it is in its session:
at a realistic think time (5 s) a whole session takes longer than the run. Its check is the same: every answer a
bot sent was acknowledged and is stored exactly once, with nothing stored that no bot sent.

    BENCH_LOAD_DURATION_S=180 BENCH_LOAD_THINK_S=5 python benchmarks/bench_load.py

Environment:
    BENCH_LOAD_PARTICIPANTS=100   bots, all started at once
    BENCH_LOAD_THINK_S=0.5        mean think time between a bot's requests (0: back-to-back stress)
    BENCH_LOAD_DURATION_S=0       stop the bots after this many seconds (0: each bot takes its whole session)
    BENCH_LOAD_WORKERS=4          gunicorn worker processes
    BENCH_LOAD_BACKENDS=sqlite,postgres
    BENCH_LOAD_PG=postgres://postgres@127.0.0.1:5432/postgres   server used to create and drop the database
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTICIPANTS = int(os.environ.get("BENCH_LOAD_PARTICIPANTS", "100"))
THINK_S = float(os.environ.get("BENCH_LOAD_THINK_S", "0.5"))
WORKERS = int(os.environ.get("BENCH_LOAD_WORKERS", "4"))
BACKENDS = [b.strip() for b in os.environ.get("BENCH_LOAD_BACKENDS", "sqlite,postgres").split(",") if b.strip()]
PG_SERVER = os.environ.get("BENCH_LOAD_PG", "postgres://postgres@127.0.0.1:5432/postgres")
DURATION_S = float(os.environ.get("BENCH_LOAD_DURATION_S", "0"))
TARGET_P95_MS = 100


def postgres_admin(statement):
    import psycopg

    with psycopg.connect(PG_SERVER, autocommit=True) as connection:
        connection.execute(statement)


def production_settings(folder, allowed_hosts):
    """Environment variables for the production settings (no debug, a fresh secret key, no HTTPS redirect) with every
    file of the run under `folder`; the benchmarks add the database."""
    return {
        "DJANGO_SETTINGS_MODULE": "studyplatform.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "DJANGO_ALLOWED_HOSTS": allowed_hosts,
        "VAR_DIR": str(folder),
        "MEDIA_ROOT": str(folder / "media"),
        "STATIC_ROOT": str(folder / "static"),
        "LOG_LEVEL": "WARNING",
        "CELERY_BROKER_URL": "filesystem://",
    }


def prepare_environment(backend, folder):
    env = {**os.environ, **production_settings(folder, "127.0.0.1,localhost")}
    database = None
    if backend == "sqlite":
        env["DATABASE_URL"] = f"sqlite:///{folder / 'bench.sqlite3'}"
    elif backend == "postgres":
        database = f"bench_load_{secrets.token_hex(4)}"
        postgres_admin(f'CREATE DATABASE "{database}"')
        server = urlparse(PG_SERVER)
        env["DATABASE_URL"] = server._replace(path=f"/{database}").geturl()
    else:
        raise SystemExit(f"unknown backend {backend!r} (sqlite or postgres)")
    return env, database


def build_study():
    """A full-size open study, made through the same services the admin uses."""
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from tests.study.factories import complete_study

    return complete_study(block1_patients=12, block2_cases=12, working_size=192, display_size=512, slug="load-study")


def run_backend(backend):
    """Child process: one database, one server, all the bots; prints one JSON result line."""
    from benchmarks.participant_bots import ServerProcess, run_bots, stored_answers, stored_vs_sent

    folder = Path(tempfile.mkdtemp(prefix=f"bench-load-{backend}-"))
    env, database = prepare_environment(backend, folder)
    os.environ.update(env)
    server = None
    try:
        import django

        django.setup()
        from django.db import connections

        study = build_study()
        connections.close_all()
        server = ServerProcess(env, folder / "gunicorn.log", workers=WORKERS).start()
        bots, recorder = run_bots(
            server.url, study.slug, PARTICIPANTS, think_s=THINK_S, replay_rate=0.1, duration_s=DURATION_S or None
        )
        server.stop()
        server = None
        from studyplatform.models import Participant, Response

        check = stored_vs_sent(bots, stored_answers(bot.token for bot in bots if bot.token))
        result = {
            "backend": backend,
            "participants": PARTICIPANTS,
            "duration_s": DURATION_S,
            "acknowledged": sum(bot.acknowledged for bot in bots),
            "load": os.getloadavg(),
            "completed": Participant.objects.filter(status=Participant.Status.COMPLETED).count(),
            "response_rows": Response.objects.count(),
            "check": check,
            "errors": recorder.errors[:20],
            "n_errors": len(recorder.errors),
            **recorder.summary(),
        }
        connections.close_all()
        print("RESULT " + json.dumps(result), flush=True)
    finally:
        if server is not None:
            server.kill()
        if database:
            postgres_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(folder, ignore_errors=True)


def report(result):
    ok = (
        result["n_errors"] == 0
        and (result["duration_s"] or result["completed"] == result["participants"])
        and result["acknowledged"] == result["check"]["sent"]
        and result["check"]["lost"] == result["check"]["duplicated"] == result["check"]["changed"] == 0
        and result["check"]["unexpected"] == 0
        and result["response_rows"] == result["check"]["sent"]
    )
    print(
        f"  {result['backend']}: {result['participants']} participants, {result['completed']} completed, "
        f"{result['requests']} requests in {result['seconds']:.1f} s = {result['throughput']:.1f} req/s, "
        f"{result['n_errors']} errors, load average at the end {' '.join(f'{x:.2f}' for x in result['load'])} "
        f"on {os.cpu_count()} cores"
    )
    print(f"    {'request':<8} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for kind, row in result["per"].items():
        print(
            f"    {kind:<8} {row['n']:>6} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['p99_ms']:>8.1f} "
            f"{row['max_ms']:>8.1f}"
        )
    check = result["check"]
    print(
        f"    exactly once: sent {check['sent']}, acknowledged {result['acknowledged']}, "
        f"rows {result['response_rows']}, lost {check['lost']}, "
        f"duplicated {check['duplicated']}, changed {check['changed']}, unexpected {check['unexpected']}"
        f" -> {'OK' if ok else 'FAILED'}"
    )
    slow = [k for k in ("next", "answer") if k in result["per"] and result["per"][k]["p95_ms"] > TARGET_P95_MS]
    if slow:
        print(f"    note: p95 above the {TARGET_P95_MS} ms target for {', '.join(slow)}")
    for line in result["errors"][:5] + check["problems"][:5]:
        print(f"    ! {line}")
    return ok


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--backend":
        run_backend(sys.argv[2])
        return 0
    sessions = f"for {DURATION_S:.0f} s" if DURATION_S else "whole sessions (36 Block-1 + 24 Block-2 answers)"
    print(
        f"load: {PARTICIPANTS} simulated participants at once, {sessions}, "
        f"think time {THINK_S} s mean, gunicorn {WORKERS} sync workers, bots in this machine's CPU too"
    )
    failures = 0
    for backend in BACKENDS:
        started = time.monotonic()
        child = subprocess.run(
            [sys.executable, __file__, "--backend", backend], cwd=ROOT, capture_output=True, text=True, timeout=3600
        )
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode != 0 or not lines:
            failures += 1
            print(f"  {backend}: FAILED (exit {child.returncode})\n{child.stderr[-3000:]}")
            continue
        failures += not report(json.loads(lines[-1].removeprefix("RESULT ")))
        print(f"    (whole run incl. setup {time.monotonic() - started:.0f} s)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

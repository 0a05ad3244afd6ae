"""The one settings module: environment-driven, SQLite by default, PostgreSQL via DATABASE_URL, deploy-clean."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from studyplatform.settings import database_from_url

ROOT = Path(__file__).resolve().parents[2]


def test_postgres_url_is_parsed_into_django_settings():
    db = database_from_url("postgres://alice:s%40cret@db.example.org:6543/study?sslmode=require")
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["NAME"], db["USER"], db["PASSWORD"]) == ("study", "alice", "s@cret")
    assert (db["HOST"], db["PORT"]) == ("db.example.org", "6543")
    assert db["OPTIONS"] == {"sslmode": "require"}


def test_sqlite_url_gets_wal_and_busy_timeout():
    db = database_from_url("sqlite:////tmp/x.sqlite3")
    assert db["NAME"] == "/tmp/x.sqlite3"
    assert "journal_mode=WAL" in db["OPTIONS"]["init_command"]
    assert db["OPTIONS"]["timeout"] >= 5


def test_unknown_database_scheme_is_refused():
    with pytest.raises(ValueError, match="not supported"):
        database_from_url("mysql://x@y/z")


@pytest.mark.django_db
def test_sqlite_connection_runs_in_wal_mode():
    if connection.vendor != "sqlite":
        pytest.skip("SQLite-only property; this pass runs on PostgreSQL")
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0].lower() == "wal"
        cursor.execute("PRAGMA busy_timeout")
        assert cursor.fetchone()[0] >= 5000


def production_env():
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="studyplatform.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="study.example.org",
    )
    return env


def test_check_deploy_is_clean_with_production_variables():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=production_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_mode_refuses_to_start_without_a_secret_key():
    env = production_env()
    del env["DJANGO_SECRET_KEY"]
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


@pytest.mark.django_db
def test_home_and_health_pages_respond(client):
    assert client.get("/").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}

"""`manage.py demo --quick`: the whole main job on the embedded data with a tiny model, as a smoke test.

Trains both generators, evaluates them, builds and opens the study with both models' counterfactuals, runs 30
simulated participants through the participant API and analyses them; a second run reuses everything and serves.
"""

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.ml, pytest.mark.worker]


def demo_env(var_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(VAR_DIR=str(var_dir), CELERY_BROKER_URL="filesystem://", PYTHONUNBUFFERED="1")
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_quick_demo_runs_the_whole_chain_then_serves_the_study(tmp_path):
    var_dir = tmp_path / "var"
    prepared = subprocess.run(
        [sys.executable, "manage.py", "demo", "--quick", "--no-serve"],
        cwd=ROOT,
        env=demo_env(var_dir),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert prepared.returncode == 0, prepared.stdout[-4000:] + prepared.stderr[-4000:]

    # the final summary says how far each run trained
    assert re.search(r"demo-baseline-quick: steps parents \d+/\d+, predictors \d+/\d+, hvae \d+/\d+", prepared.stdout)
    # the proposed model's expert and active-learning rounds are stages too
    assert re.search(r"demo-expert-al-quick: steps expert \d+/\d+, parents .*, round-1 \d+/\d+", prepared.stdout)
    out = var_dir / "demo" / "quick"
    assert "Baseline" in (out / "evaluation" / "comparison.md").read_text()
    assert (out / "evaluation" / "figures" / "demo-expert-al-quick" / "forgetting_histograms.png").is_file()
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    assert analysis["n_participants"] == 30
    assert (out / "analysis" / "report.html").stat().st_size > 10_000
    # The dry run's readers are simulated, and the report says so.
    assert analysis["readers"]["analysed"] == "simulated" and analysis["readers"]["n_simulated"] == 30
    assert "SIMULATED DATA" in (out / "analysis" / "report.html").read_text()

    db = sqlite3.connect(var_dir / "db.sqlite3")
    (status,) = db.execute("SELECT status FROM studyplatform_study WHERE slug = 'demo-quick'").fetchone()
    assert status == "open"
    sources = dict(
        db.execute(
            "SELECT s.source, COUNT(*) FROM studyplatform_stimulus s JOIN studyplatform_case c ON s.case_id = c.id "
            "JOIN studyplatform_study st ON c.study_id = st.id WHERE st.slug = 'demo-quick' GROUP BY s.source"
        ).fetchall()
    )
    assert sources == {"real": 24, "baseline": 24, "proposed": 24}
    # Every stimulus comes from the held-out test split.
    splits = db.execute(
        "SELECT DISTINCT c.split FROM studyplatform_case c JOIN studyplatform_study st ON c.study_id = st.id "
        "WHERE st.slug = 'demo-quick'"
    ).fetchall()
    assert splits == [("test",)]
    runs = dict(db.execute("SELECT variant, status FROM generator_trainingrun").fetchall())
    assert runs == {"baseline": "succeeded", "expert-al": "succeeded"}

    # A second run reuses the runs, the evaluation and the study, and serves them.
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "demo", "--quick", "--skip-training", "--port", str(port)],
        cwd=ROOT,
        env=demo_env(var_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 300
        link = None
        while time.monotonic() < deadline and link is None:
            line = server.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"Participant link:\s+(\S+)", line)
            link = match.group(1) if match else None
        assert link, "".join(lines)[-3000:]
        assert "reusing the finished run" in "".join(lines)
        for _ in range(100):
            try:
                page = requests.get(link, timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.3)
        assert page.status_code == 200
        assert "consent" in page.text.lower()
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)

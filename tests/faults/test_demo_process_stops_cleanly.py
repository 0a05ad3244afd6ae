"""The demo process owns its web server and worker: SIGTERM or SIGHUP stop them as Ctrl-C does, and a busy port or a
child that cannot start stops the demo with a clear message and a non-zero exit, before any link is printed.

A prepared demo (an open study named like the quick demo's) is made in seconds, and `demo --serve-only` serves it
without training, evaluation or analysis.
"""

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.worker]

PREPARE = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", interactive=False, verbosity=0)
from tests.study.factories import complete_study
complete_study(slug="demo-quick", block1_patients=3, block2_cases=2, working_size=32, display_size=64)
"""


def demo_env(var_dir, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE", "PORT")}
    env.update(
        VAR_DIR=str(var_dir),
        CELERY_BROKER_URL="filesystem://",
        PYTHONUNBUFFERED="1",
        DJANGO_SETTINGS_MODULE="studyplatform.settings",
    )
    env.update(extra)
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port):
    try:
        with socket.create_server(("127.0.0.1", port)):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def prepared_demo(tmp_path_factory):
    var_dir = tmp_path_factory.mktemp("demo") / "var"
    done = subprocess.run(
        [sys.executable, "-c", PREPARE], cwd=ROOT, env=demo_env(var_dir), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return var_dir


def run_demo(var_dir, *arguments):
    """`manage.py demo --quick` with `arguments`, run to its end (these runs are expected to stop early)."""
    return subprocess.run(
        [sys.executable, "manage.py", "demo", "--quick", *arguments],
        cwd=ROOT,
        env=demo_env(var_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )


def default_stop_signals():
    """In the child: SIGTERM and SIGHUP as a terminal's shell leaves them. A test run started under nohup passes
    SIGHUP on ignored, and the demo rightly keeps a signal it was started to ignore."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def start_demo(var_dir, port, *extra, **env):
    return subprocess.Popen(
        [sys.executable, "manage.py", "demo", "--quick", "--serve-only", "--port", str(port), *extra],
        cwd=ROOT,
        env=demo_env(var_dir, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_stop_signals,
    )


def read_until(process, patterns, timeout=240):
    """Lines of the process's output until every pattern has matched (or it ends, or time runs out). A thread reads
    the output, so a silent process cannot block the test."""
    if not hasattr(process, "lines"):
        process.lines = queue.Queue()

        def pump():
            for line in process.stdout:
                process.lines.put(line)
            process.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
    lines, waiting = [], list(patterns)
    deadline = time.monotonic() + timeout
    while waiting:
        try:
            line = process.lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        lines.append(line)
        waiting = [pattern for pattern in waiting if not re.search(pattern, line)]
    return "".join(lines), not waiting


def wait_for_children(demo, timeout=120):
    """The demo's processes once the worker has started its pool: the web server, the worker and its pool child."""
    deadline = time.monotonic() + timeout
    while True:
        children, commands = [], []
        for child in psutil.Process(demo.pid).children(recursive=True):
            try:  # a short-lived helper may have exited (a zombie until reaped) between the listing and the read
                commands.append(" ".join(child.cmdline()))
            except (psutil.ZombieProcess, psutil.NoSuchProcess):
                continue
            children.append(child)
        if sum("celery" in command for command in commands) >= 2 or time.monotonic() > deadline:
            assert sum("celery" in command for command in commands) >= 2, commands
            return children
        time.sleep(0.2)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_ends_the_web_server_and_the_worker_and_frees_the_port(prepared_demo, stop_signal):
    port = free_port()
    demo = start_demo(prepared_demo, port)
    try:
        output, seen = read_until(demo, [r"Participant link:\s+http://127\.0\.0\.1:\d+/s/demo-quick/invite/"])
        assert seen, output[-3000:]
        # The link is printed once the site answers.
        assert not port_is_free(port)
        children = wait_for_children(demo)
        commands = [" ".join(child.cmdline()) for child in children]
        assert any("runserver" in command for command in commands), commands

        demo.send_signal(stop_signal)  # to the demo alone, as `kill` or a closed terminal would
        demo.wait(timeout=60)
        rest, _ = read_until(demo, [r"(?!)"], timeout=10)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()

    assert demo.returncode == 0, (output + rest)[-3000:]
    assert "Stopping the web server and the worker" in rest
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [child.pid for child in alive]
    assert port_is_free(port)


def test_a_busy_port_stops_the_demo_before_it_prepares_anything(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = run_demo(tmp_path / "var", "--port", str(port))
    assert done.returncode != 0
    assert f"cannot serve on 127.0.0.1:{port}" in done.stderr
    assert "PORT=" in done.stderr
    assert "Participant link" not in done.stdout
    assert "== Generators" not in done.stdout and "== Database" not in done.stdout
    assert not (tmp_path / "var" / "db.sqlite3").exists()


def test_a_worker_that_cannot_start_stops_the_demo_with_an_error_and_the_web_server_with_it(prepared_demo):
    port = free_port()
    demo = start_demo(prepared_demo, port, CELERY_BROKER_URL="no-such-transport://")
    try:
        output, _ = demo.communicate(timeout=240)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode != 0, output[-3000:]
    assert "the worker stopped with exit status" in output
    assert port_is_free(port)


def test_serve_only_without_a_prepared_demo_says_what_to_run(tmp_path):
    done = run_demo(tmp_path / "var", "--serve-only", "--port", str(free_port()))
    assert done.returncode != 0
    assert "run `make demo-quick` once first" in done.stderr
    assert "Participant link" not in done.stdout

"""A demo killed outright (SIGKILL, an out-of-memory kill) takes its web server and worker with it: they are started
through `studyplatform.childguard`, which has the kernel send them SIGTERM when the demo dies."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.faults.test_demo_process_stops_cleanly import (
    free_port,
    port_is_free,
    prepared_demo,  # noqa: F401 (a fixture)
    read_until,
    start_demo,
    wait_for_children,
)

ROOT = Path(__file__).resolve().parents[2]

# A parent that starts a guarded child (a long sleep), says its pid, and waits to be killed.
PARENT = """
import os, subprocess, sys, time
command = [sys.executable, "-c", "import time; time.sleep(120)"]
guard = [sys.executable, "-m", "studyplatform.childguard", str(os.getpid())]
child = subprocess.Popen(guard + command, start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_guarded_child_ends_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        # exec'd into the command: same pid, the command's own command line
        deadline = time.monotonic() + 30
        while "childguard" in " ".join(child.cmdline()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.cmdline()[1:] == ["-c", "import time; time.sleep(120)"]
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        # Not this test's child, so its exit status cannot be read: it is enough that it is gone.
        _, alive = psutil.wait_procs([child], timeout=10)
        assert not alive
    finally:
        parent.kill()
        parent.wait()


def test_a_guard_whose_parent_is_already_gone_does_not_run_the_command(tmp_path):
    marker = tmp_path / "ran"
    done = subprocess.run(
        [sys.executable, "-m", "studyplatform.childguard", "1", sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "has already exited" in done.stderr
    assert not marker.exists()


def test_a_guard_without_a_parent_pid_says_how_to_call_it():
    done = subprocess.run(
        [sys.executable, "-m", "studyplatform.childguard", "sleep", "1"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode != 0 and "usage:" in done.stderr


@pytest.mark.slow
@pytest.mark.worker
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_demo_takes_its_web_server_and_worker_with_it(prepared_demo):  # noqa: F811
    port = free_port()
    demo = start_demo(prepared_demo, port)
    try:
        output, seen = read_until(demo, [r"Participant link:\s+http://127\.0\.0\.1:\d+/s/demo-quick/invite/"])
        assert seen, output[-3000:]
        children = wait_for_children(demo)
        assert not port_is_free(port)
        os.kill(demo.pid, signal.SIGKILL)
        demo.wait(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    gone, alive = psutil.wait_procs(children, timeout=40)
    assert not alive, [(child.pid, child.cmdline()) for child in alive]
    assert port_is_free(port)

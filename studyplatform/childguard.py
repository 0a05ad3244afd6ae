"""Run a command that stops when the process that started it dies, however it dies.

    python -m studyplatform.childguard PARENT_PID COMMAND [ARG ...]

`manage.py demo` starts its web server and worker through this. It stops them itself on Ctrl-C, SIGTERM or SIGHUP,
but a SIGKILL (an out-of-memory kill, `kill -9`) gives it no chance, and the children, each in its own session, would
live on and hold the port. On Linux the guard asks the kernel to send SIGTERM to it when its parent dies
(`prctl(PR_SET_PDEATHSIG)`, kept across `exec`), checks that the parent is still the one that started it (it may have
died in between), and then becomes the command. Elsewhere it only runs the command.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def guard(parent_pid):
    """Have SIGTERM sent to this process when its parent dies; exit at once if that has already happened."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        sys.exit(f"childguard: the process that started {sys.argv[2:]} (pid {parent_pid}) has already exited")


def main(argv):
    if len(argv) < 2 or not argv[0].isdigit():
        sys.exit("usage: python -m studyplatform.childguard PARENT_PID COMMAND [ARG ...]")
    guard(int(argv[0]))
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])

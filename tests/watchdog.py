"""Run a service for the tests so that it dies with the test process, even
under SIGKILL: `python watchdog.py COMMAND...`.

PR_SET_PDEATHSIG reaches only a direct child, and an `mlflow server` starts
uvicorn, a job runner and huey consumers, some in sessions of their own.  So
this process becomes a child subreaper (Linux): every descendant that loses
its parent is reparented here, not to PID 1, and stays findable.  It starts
the service, then watches its own parent; when the test process is gone, or
the service has ended, it kills every descendant it has and exits.  A SIGTERM
(the tests' stop()) is passed to the service, which has GRACE_SECONDS to end
as usual."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
# After a SIGTERM, the time the service has to end before everything is killed
# (stop() in helpers.py waits 15 s before it kills the watchdog too).  Short:
# the services' state is thrown away, and an `mlflow server` whose clients keep
# connections alive would wait for them until killed (10 s a stop, at 10 s).
GRACE_SECONDS = 2.0


def parents() -> dict[int, int]:
    """{pid: parent pid} of every process, from /proc/PID/stat."""
    found = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name in parentheses may hold spaces: split after it.
            found[int(stat.parent.name)] = int(stat.read_text().rsplit(')', 1)[1].split()[1])
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid`."""
    children: dict[int, list[int]] = {}
    for child, parent in parents().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def kill_all_below(pid: int) -> None:
    """SIGKILL every descendant until none is left (a dying one may fork)."""
    while below := descendants(pid):
        for child in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_CHILD_SUBREAPER)')
    service = subprocess.Popen(argv)
    deadline = float('inf')

    def terminate(*_: object) -> None:
        nonlocal deadline
        service.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS

    signal.signal(signal.SIGTERM, terminate)
    while service.poll() is None and os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.2)
    kill_all_below(os.getpid())
    code = service.wait()  # 0 if kill_all_below() reaped it first
    return code if code >= 0 else 128 - code


if __name__ == '__main__':
    raise SystemExit(main(sys.argv[1:]))

"""The test suite itself: the README's test commands are what .ci/run runs on a
fresh clone in a fresh virtual environment, and a test run killed with
SIGKILL leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    wait_for,
)

INNER_TEST = """\
import os
import time
from pathlib import Path

from proxy import proxy_in_front_of


def test_holds_the_services(mlflow_server, git_daemon):
    with proxy_in_front_of(mlflow_server):
        Path(os.environ['SUITE_READY']).write_text(str(os.getpid()))
        time.sleep(600)
"""


def readme_test_commands(readme: str) -> list[str]:
    """The lines of the first ```sh block after `## Running the tests`."""
    match = re.search(r'^## Running the tests\n.*?^```sh\n(.*?)^```', readme, re.M | re.S)
    assert match, 'README.md has no ```sh block under "## Running the tests"'
    return match.group(1).splitlines()


def test_readme_test_commands_make_a_venv_install_and_run_the_whole_suite():
    """What .ci/run relies on: it runs these commands as written."""
    commands = readme_test_commands((ROOT / 'README.md').read_text())
    assert commands[0].startswith('python3 -m venv ')
    assert any('-r requirements-dev.txt' in line for line in commands)
    assert commands[-1].startswith('python3 -m pytest ') and commands[-1].endswith(' tests')


def processes_marked(mark: str) -> dict[int, str]:
    """{pid: command line} of the running processes whose environment holds
    REPRODUCE_SUITE_MARK=mark (a zombie shows an empty environment)."""
    found = {}
    for environ in Path('/proc').glob('[0-9]*/environ'):
        try:
            if f'REPRODUCE_SUITE_MARK={mark}'.encode() in environ.read_bytes().split(b'\0'):
                cmdline = (environ.parent / 'cmdline').read_bytes()
                found[int(environ.parent.name)] = cmdline.replace(b'\0', b' ').decode()
        except OSError:
            pass  # gone meanwhile
    return found


@pytest.mark.slow
def test_sigkill_of_pytest_in_a_server_test_leaves_no_process_of_the_suite(tmp_path):
    """An inner pytest with the suite's fixtures holds an `mlflow server`, a
    `git daemon` and a proxy; it is killed with SIGKILL mid-test, as a CI
    timeout does.  Every process started with the inner run's environment is
    marked, so even one that made itself a new session is found."""
    (tmp_path / 'test_inner.py').write_text(INNER_TEST)
    (tmp_path / 'pytest.ini').write_text('[pytest]\n')
    mark = uuid.uuid4().hex
    ready = tmp_path / 'ready'
    env = {
        **os.environ,
        'SUITE_READY': str(ready),
        # as pytest.ini's `pythonpath = . tests`, which the inner run's own ini lacks
        'PYTHONPATH': os.pathsep.join(
            (str(ROOT), str(ROOT / 'tests'), os.environ.get('PYTHONPATH', ''))
        ),
        'REPRODUCE_SUITE_MARK': mark,
    }
    inner = subprocess.Popen(
        (
            *(sys.executable, '-m', 'pytest', '-p', 'conftest', '-p', 'no:cacheprovider'),
            *('-c', str(tmp_path / 'pytest.ini'), '--basetemp', str(tmp_path / 'basetemp')),
            str(tmp_path / 'test_inner.py'),
        ),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: ready.exists() or inner.poll() is not None, 240, 'the services')
        assert inner.poll() is None, 'the inner test run ended early'
        started = [cmd for cmd in processes_marked(mark).values() if 'watchdog.py' not in cmd]
        assert any(' -m mlflow server ' in cmd for cmd in started), started
        assert any(re.search(r'git[ -]daemon ', cmd) for cmd in started), started

        os.kill(inner.pid, signal.SIGKILL)
        inner.wait()

        wait_for(lambda: not processes_marked(mark), 30, 'the services to die')
    finally:
        inner.kill()
        inner.wait()
        for pid in processes_marked(mark):  # what this test failed to see die
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

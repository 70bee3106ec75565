"""The test suite itself: the README's test commands pass on a fresh clone in a
fresh virtual environment, and a test run killed with SIGKILL leaves no
process behind."""

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
from conftest import ROOT, git
from helpers import (
    wait_for,
)

# The selection the README-commands test appends to the README's test command:
# tests that need the backend plugin, which nothing but the tests installs.
PLUGIN_TESTS = (
    'test_unknown_backend_lists_the_installed_plugin'
    ' or test_a_reproduction_through_the_plugin_is_judged_and_recorded'
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
    """What the other tests of this file and .ci/run rely on."""
    commands = readme_test_commands((ROOT / 'README.md').read_text())
    assert commands[0].startswith('python3 -m venv ')
    assert any('-r requirements-dev.txt' in line for line in commands)
    assert commands[-1].startswith('python3 -m pytest ') and commands[-1].endswith(' tests')


def clean_environment() -> dict[str, str]:
    """This environment less what would let the inner run lean on this one:
    its virtual environment, its PYTHONPATH (the backend plugin is on it), its
    tracking URI and pytest's own variables."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ('PYTHONPATH', 'VIRTUAL_ENV', 'MLFLOW_TRACKING_URI')
        and not k.startswith('PYTEST_')
    }


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readme_test_commands_pass_on_a_fresh_clone_in_a_fresh_venv(tmp_path):
    """The README's commands, as written, with a selection appended to the test
    command; the selection needs the backend plugin, which the README's
    commands do not install and the new environment does not have."""
    clone = tmp_path / 'clone'
    git('clone', '--quiet', str(ROOT), str(clone), cwd=tmp_path)
    commands = readme_test_commands((clone / 'README.md').read_text())
    script = '\n'.join([*commands[:-1], f'{commands[-1]} -k {PLUGIN_TESTS!r}'])
    proc = subprocess.run(
        ('bash', '-e', '-c', script),
        cwd=clone,
        env=clean_environment(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=1700,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert re.search(r'^=+ 2 passed in ', proc.stdout, re.M), proc.stdout[-3000:]
    venv_python = clone / '.venv' / 'bin' / 'python3'
    plugin = subprocess.run(
        (venv_python, '-m', 'pip', 'show', 'reproduce-test-backend'),
        env=clean_environment(),
        capture_output=True,
    )
    assert plugin.returncode == 1  # the tests installed it for themselves, elsewhere
    assert git('status', '--porcelain', '--ignored', 'tests/backend_plugin', cwd=clone) == ''


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
        'PYTHONPATH': os.pathsep.join((str(ROOT / 'tests'), os.environ.get('PYTHONPATH', ''))),
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

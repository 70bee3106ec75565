"""Signals and processes: a signal ends the project and marks its run KILLED,
a signal during a fetch ends it, and no temporary folder survives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    SCRIPT,
    git,
    process_gone,
    recorded_run,
    reproductions_of,
    run_snapshot,
    start_tool,
    wait_for,
)
from proxy import silent_server


@pytest.mark.parametrize(
    ('sig', 'code'),
    [
        pytest.param(signal.SIGINT, 130, id='SIGINT'),
        pytest.param(signal.SIGTERM, 143, id='SIGTERM'),
    ],
)
def test_signal_mid_run_ends_the_project_and_marks_the_run_killed(
    samples_repo, store, tmp_path, sig, code
):
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(f'file://{samples_repo}#slow', commit, {'seconds': '120'})
    before = run_snapshot(run_id)
    pid_file, tmp = tmp_path / 'pid', tmp_path / 'tmp'
    tmp.mkdir()
    tool = start_tool(
        '--run_id', run_id, env={'SAMPLE_PID_FILE': str(pid_file), 'TMPDIR': str(tmp)}
    )
    try:
        wait_for(pid_file.exists, 90, 'the project to start')
        wait_for(lambda: pid_file.read_text().strip(), 10, 'the PID')
        tool.send_signal(sig)
        out, err = tool.communicate(timeout=60)
    finally:
        tool.kill()
    assert tool.returncode == code, err
    assert process_gone(int(pid_file.read_text()))
    [new] = reproductions_of(run_id)
    assert new.info.status == 'KILLED'
    assert list(tmp.iterdir()) == []
    assert 'reproduce_run.py", line' not in err  # no traceback of ours
    assert run_snapshot(run_id) == before


@pytest.mark.slow
def test_no_temporary_folder_survives(reference, tmp_path):
    for sample, args, code in (('sklearn_regression', (), 0), ('failing', ('-P', 'fail_at=2'), 3)):
        tmp = tmp_path / sample
        tmp.mkdir()
        run_id = reference(sample, *args, fails=code == 3)
        tool = start_tool('--run_id', run_id, env={'TMPDIR': str(tmp)})
        tool.communicate(timeout=240)
        assert tool.returncode == code
        assert list(tmp.iterdir()) == []


def _git_fetches_of(pid: int) -> list[int]:
    """The `git fetch` processes that are children of pid."""
    found = []
    for entry in os.listdir('/proc'):
        try:
            stat = Path(f'/proc/{entry}/stat').read_text().rsplit(')', 1)[1].split()
            argv = Path(f'/proc/{entry}/cmdline').read_bytes().split(b'\0')
        except (OSError, ValueError):
            continue
        fetch = argv[0] == b'git' and b'fetch' in argv[1:4]  # after git's own -c settings
        if int(stat[1]) == pid and fetch and stat[0] not in 'ZX':
            found.append(int(entry))
    return found


def test_sigterm_during_a_fetch_from_a_silent_remote_ends_the_fallback_fetch_too():
    with silent_server() as (url, _):
        remote = url.replace('http://', 'git://') + '/project.git'
        run_id = recorded_run(remote, 'b' * 40)
        tool = subprocess.Popen(
            [sys.executable, str(SCRIPT), '--run_id', run_id, '--output', 'json'],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        wait_for(lambda: _git_fetches_of(tool.pid), 120, 'the first git fetch')
        tool.send_signal(signal.SIGTERM)
        # The killed fetch makes the tool try another one: that one is ended too.
        out, err = tool.communicate(timeout=120)
    report = json.loads(out)
    assert (tool.returncode, report['status']) == (143, 'terminated'), err.decode()
    assert err.decode().splitlines()[-1] == 'reproduce_run.py: terminated'

"""Found by an adversarial review: each test is a way a careful, hostile user
broke the tool, and now does not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCRIPT, git
from proxy import silent_server
from test_reproduce_run import add_project, client, recorded_run, reproduce, wait_for

NOISY = {
    'MLproject': 'entry_points:\n  main:\n    command: python noisy.py\n',
    # More than a pipe holds (64 KiB), UTF-8 and bytes that are not UTF-8.
    'noisy.py': (
        'import sys, mlflow\n'
        'for i in range(3000):\n'
        '    sys.stdout.buffer.write(b"caf\\xc3\\xa9 \\xff\\xfe " + b"x" * 100 + b"\\n")\n'
        'sys.stdout.flush()\n'
        'mlflow.log_metric("lines", 3000)\n'
    ),
}


def test_a_silent_server_with_a_password_in_its_uri_is_detected(capsys, monkeypatch):
    with silent_server() as (url, accepted):
        with_password = url.replace('http://', 'http://alice:s3cret@')
        monkeypatch.setenv('MLFLOW_TRACKING_URI', with_password)
        monkeypatch.setenv('MLFLOW_HTTP_REQUEST_TIMEOUT', '120')
        code, out, err = reproduce(capsys, '--run_id', 'a' * 32)
        connections = accepted[0]
    masked = url.replace('http://', 'http://***@')
    assert (code, out) == (2, '')
    assert err == (
        f'reproduce_run: error: the tracking server {masked} does not answer (no '
        f'response within 10 s)\n'
    )
    assert connections == 1  # the probe reached the server, without the password in its host


@pytest.mark.parametrize(
    'uri',
    [
        pytest.param('http://alice:s3cret@127.0.0.1', id='http-no-port'),
        pytest.param('http://alice:s3cret@127.0.0.1/', id='http-no-port-slash'),
    ],
)
def test_a_password_in_a_tracking_uri_without_port_is_not_taken_for_a_port(
    capsys, monkeypatch, uri
):
    monkeypatch.setenv('MLFLOW_TRACKING_URI', uri)
    monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')
    code, out, err = reproduce(capsys, '--run_id', 'a' * 32)
    assert (code, out) == (2, '')
    assert 's3cret' not in err
    assert err.startswith(
        f'reproduce_run: error: cannot read run {"a" * 32} from http://***@127.0.0.1'
    )
    assert 'does not answer (Connection refused)' in err


def test_project_output_that_the_locale_cannot_encode_is_logged(own_repo, tmp_path):
    project = add_project(own_repo, 'noisy', NOISY)
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    run_id = recorded_run(f'file://{own_repo}#{project.name}', commit, metrics={'lines': 3000})
    # An ASCII locale, as on a host without a UTF-8 one: open() writes ASCII.
    env = {**os.environ, 'LC_ALL': 'C', 'PYTHONUTF8': '0', 'PYTHONCOERCECLOCALE': '0'}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), '--run_id', run_id, '--output', 'json', '--quiet'],
        env=env,
        capture_output=True,
        timeout=300,
    )
    report = json.loads(done.stdout)
    assert (done.returncode, report['status']) == (0, 'equal'), done.stderr.decode()
    assert b'Traceback' not in done.stderr
    log = client().download_artifacts(
        report['reproduced_run_id'], 'reproduce/output.log', str(tmp_path)
    )
    lines = Path(log).read_text(encoding='utf-8').splitlines()
    assert lines[0] == 'caf\u00e9 \ufffd\ufffd ' + 'x' * 100
    assert len(lines) == 3000


def _git_fetches_of(pid: int) -> list[int]:
    """The `git fetch` processes that are children of pid."""
    found = []
    for entry in os.listdir('/proc'):
        try:
            stat = Path(f'/proc/{entry}/stat').read_text().rsplit(')', 1)[1].split()
            argv = Path(f'/proc/{entry}/cmdline').read_bytes().split(b'\0')
        except (OSError, ValueError):
            continue
        if int(stat[1]) == pid and argv[:2] == [b'git', b'fetch'] and stat[0] not in 'ZX':
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


def test_runs_file_from_a_closed_standard_input(capsys):
    message = 'cannot read --runs-file -: standard input is closed'
    done = subprocess.run(
        [
            'bash',
            '-c',
            'exec "$@" <&-',
            'bash',
            sys.executable,
            str(SCRIPT),
            '--runs-file',
            '-',
            '--output',
            'json',
        ],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.decode() == f'reproduce_run.py: error: {message}\n'
    assert json.loads(done.stdout)['message'] == message


def test_runs_file_that_is_not_text(capsys, tmp_path):
    runs_file = tmp_path / 'runs.txt'
    runs_file.write_bytes(b'\xff\xfe\x00junk\n')
    code, out, err = reproduce(capsys, '--runs-file', str(runs_file), '--output', 'json')
    message = f'cannot read --runs-file {runs_file}: it is not text (invalid start byte at byte 0)'
    assert (code, err) == (2, f'reproduce_run: error: {message}\n')
    assert json.loads(out)['message'] == message


def test_an_empty_batch_is_recorded_and_says_nothing_differs(capsys, tmp_path):
    name = f'empty-{tmp_path.name}'
    client().create_experiment(name)
    code, out, err = reproduce(
        capsys, '--from-experiment', name, '--experiment-name', name, '--output', 'json'
    )
    doc = json.loads(out)
    assert (code, doc['exit_code'], doc['summary']['total']) == (0, 0, 0)
    assert 'reproduce_run: warning: no run to reproduce' in err
    parent = client().get_run(doc['batch_run_id'])  # the empty night is in MLflow too
    assert (parent.info.status, parent.data.metrics['runs_total']) == ('FINISHED', 0)
    code, out, _ = reproduce(capsys, '--from-experiment', name, '--experiment-name', name)
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True')


@pytest.mark.parametrize(
    'how',
    [
        pytest.param('closed', id='closed-standard-output'),
        pytest.param('broken-pipe', id='reader-gone'),
    ],
)
def test_a_report_that_cannot_be_written_is_a_warning_not_a_traceback(reference, how):
    run_id = reference('sklearn_regression')
    argv = (sys.executable, str(SCRIPT), '--run_id', run_id, '--dry-run')
    if how == 'closed':
        proc = subprocess.run(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: os.close(1),
        )
    else:
        read, write = os.pipe()
        os.close(read)  # nobody will read the report
        proc = subprocess.run(
            argv, stdout=write, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
        )
        os.close(write)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(
        'reproduce_run.py: warning: the report could not be written to standard output: '
    )
    assert 'Traceback' not in proc.stderr

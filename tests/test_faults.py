"""The guarantees under hostile conditions:
projects that ignore signals or leave daemons behind, tracking servers that
are slow, down or silent, and what reaches standard output on every path."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    QUIET,
    add_project,
    artifact_bytes,
    client,
    free_port,
    git,
    process_gone,
    recorded_run,
    reproduce,
    reproductions_of,
    start_mlflow_server,
    start_tool,
    stop,
    wait_for,
)
from proxy import Rule, proxy_in_front_of, silent_server

STUBBORN = {
    'MLproject': 'entry_points:\n  main:\n    parameters:\n'
    '      seconds: {type: float, default: 40}\n'
    '    command: python stubborn.py {seconds}\n',
    'stubborn.py': (
        'import os, signal, sys, time, mlflow\n'
        'signal.signal(signal.SIGTERM, signal.SIG_IGN)\n'
        'open(os.environ["SAMPLE_PID_FILE"], "w").write(str(os.getpid()))\n'
        'for step in range(int(float(sys.argv[1]))):\n'
        '    mlflow.log_metric("tick", step, step=step)\n'
        '    time.sleep(1)\n'
    ),
}

DAEMON = {
    'MLproject': 'entry_points:\n  main:\n    parameters:\n'
    '      new_session: {type: string, default: "yes"}\n'
    '      fail: {type: string, default: "no"}\n'
    '    command: python leave_daemon.py {new_session} {fail}\n',
    'leave_daemon.py': (
        'import os, subprocess, sys\n'
        'daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],\n'
        '                          start_new_session=sys.argv[1] == "yes",\n'
        '                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n'
        'open(os.environ["SAMPLE_PID_FILE"], "w").write(str(daemon.pid))\n'
        'sys.exit(1 if sys.argv[2] == "yes" else 0)\n'
    ),
}


QUIET_WITH_A_PARAM = {  # its params are logged by the tool, through runs/log-batch
    'MLproject': 'entry_points:\n  main:\n    parameters:\n'
    '      n: {type: float, default: 1}\n'
    '    command: python quiet.py {n}\n',
    'quiet.py': 'print("quiet project done")\n',
}

CHATTY_FAILURE = {
    'MLproject': 'entry_points:\n  main:\n    command: python fail.py\n',
    'fail.py': (
        'import mlflow\n'
        'mlflow.log_metric("loss", 1.0)\n'
        'print("about to fail")\n'
        'raise ValueError("the data file is empty")\n'
    ),
}

PROGRESS = {
    'MLproject': 'entry_points:\n  main:\n    command: python progress.py\n',
    'progress.py': (
        'import sys\n'
        'for i in range(100000):\n'
        '    sys.stdout.write(f"\\rstep {i:6d} of 100000 " + "#" * (i % 50))\n'
        'sys.stdout.write("\\n")\n'
        'raise SystemExit("progress sample failure")\n'
    ),
}


def project_run(repo: Path, name: str, files: dict[str, str], params=None) -> str:
    add_project(repo, name, files)
    return recorded_run(f'file://{repo}#{name}', git('rev-parse', 'HEAD', cwd=repo), params)


def pid_from(path: Path) -> int:
    wait_for(lambda: path.exists() and path.read_text().strip(), 90, f'{path.name}')
    return int(path.read_text())


@pytest.fixture
def server(mlflow_server, monkeypatch):
    """The session's server, for the tests that put a proxy in front of it (a
    test that stops its server starts one of its own)."""
    monkeypatch.setenv('MLFLOW_TRACKING_URI', mlflow_server)
    return types.SimpleNamespace(url=mlflow_server)


# --- runs left RUNNING, processes that outlive the tool (rows 1-5) ----------


@pytest.mark.slow
def test_a_project_that_ignores_sigterm_is_killed_and_its_run_stays_killed(own_repo, tmp_path):
    run_id = project_run(own_repo, 'stubborn', STUBBORN)
    pid_file = tmp_path / 'pid'
    proc = start_tool('--run_id', run_id, env={'SAMPLE_PID_FILE': str(pid_file)})
    try:
        pid = pid_from(pid_file)
        [new] = reproductions_of(run_id)
        wait_for(lambda: 'tick' in client().get_run(new.info.run_id).data.metrics, 30, 'a tick')
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert process_gone(pid)
    ticks = len(client().get_metric_history(new.info.run_id, 'tick'))
    time.sleep(1)  # the project is gone: only a request already in flight could still land
    after = client().get_run(new.info.run_id)
    assert after.info.status == 'KILLED'
    assert len(client().get_metric_history(new.info.run_id, 'tick')) == ticks
    assert after.data.tags['reproduce.status'] == 'terminated'


@pytest.mark.parametrize(
    ('new_session', 'fail', 'code'),
    [
        pytest.param('yes', 'no', 0, id='new-session-on-success'),
        pytest.param('no', 'yes', 3, id='same-group-on-failure'),
    ],
)
def test_no_daemon_the_project_leaves_outlives_the_tool(
    own_repo, tmp_path, capsys, new_session, fail, code, monkeypatch
):
    run_id = project_run(own_repo, 'daemon', DAEMON, {'new_session': new_session, 'fail': fail})
    pid_file = tmp_path / 'daemon-pid'
    monkeypatch.setenv('SAMPLE_PID_FILE', str(pid_file))
    got, _, err = reproduce(capsys, '--run_id', run_id)
    assert got == code, err
    assert process_gone(int(pid_file.read_text()))
    assert 'left 1 process(es) running; ended them' in err


@pytest.mark.slow
def test_sigterm_while_a_slow_server_creates_the_run_leaves_it_killed(own_repo, server, tmp_path):
    run_id = project_run(own_repo, 'stubborn', STUBBORN)
    with proxy_in_front_of(server.url) as proxy:
        proxy.add(Rule('runs/create', delay=2))  # the SIGTERM arrives within its 2 s
        proxy.add(Rule('runs/log-batch', delay=2))
        proxy.add(Rule('runs/update', delay=2))
        proc = start_tool(
            '--run_id',
            run_id,
            env={'MLFLOW_TRACKING_URI': proxy.url, 'SAMPLE_PID_FILE': str(tmp_path / 'pid')},
        )
        try:
            wait_for(lambda: proxy.count('runs/create'), 60, 'the run to be created')
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
    assert proc.returncode == 143, err
    [new] = reproductions_of(run_id)
    assert new.info.status == 'KILLED'
    assert not (tmp_path / 'pid').exists()  # the project never started
    assert json.loads(out or 'null') is None or out == ''


def test_a_run_is_closed_once_the_server_answers_again(own_repo, server, capsys, monkeypatch):
    run_id = project_run(own_repo, 'quiet', QUIET)
    with proxy_in_front_of(server.url) as proxy:
        proxy.add(Rule('runs/update', status=503))
        monkeypatch.setenv('MLFLOW_TRACKING_URI', proxy.url)
        monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')
        monkeypatch.setenv('REPRODUCE_RUN_CLOSE_TIMEOUT', '30')
        import threading

        threading.Timer(3, proxy.clear).start()  # the server comes back after 3 s
        code, out, err = reproduce(capsys, '--run_id', run_id)
    assert code == 0, err
    [new] = reproductions_of(run_id)
    assert new.info.status == 'FINISHED'
    assert 'left RUNNING' not in err


def test_a_server_that_never_comes_back_names_the_run_and_the_command(
    own_repo, server, capsys, monkeypatch
):
    run_id = project_run(own_repo, 'quiet', QUIET)
    with proxy_in_front_of(server.url) as proxy:
        proxy.add(Rule('runs/update', status=503))
        monkeypatch.setenv('MLFLOW_TRACKING_URI', proxy.url)
        monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')
        monkeypatch.setenv('REPRODUCE_RUN_CLOSE_TIMEOUT', '3')
        code, out, err = reproduce(capsys, '--run_id', run_id)
    [new] = reproductions_of(run_id)
    assert new.info.status == 'RUNNING'
    last = err.splitlines()[-1]
    assert last.startswith(f'reproduce_run: error: run {new.info.run_id} is left RUNNING')
    command = last.split('close it with: ', 1)[1]
    # The command works as printed, once the server answers again.
    subprocess.run(command.replace(proxy.url, server.url), shell=True, check=True)
    assert client().get_run(new.info.run_id).info.status == 'FINISHED'


def test_a_server_that_accepts_but_never_answers_is_detected(capsys, monkeypatch):
    with silent_server() as (url, accepted):
        monkeypatch.setenv('MLFLOW_TRACKING_URI', url)
        # Settings that would make MLflow wait 6 x 120 s.
        monkeypatch.setenv('MLFLOW_HTTP_REQUEST_TIMEOUT', '120')
        monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '5')
        code, out, err = reproduce(capsys, '--run_id', 'a' * 32)
        connections = accepted[0]
    assert (code, out) == (2, '')
    assert err == (
        f'reproduce_run: error: the tracking server {url} does not answer (no '
        f'response within 10 s)\n'
    )
    assert connections == 1  # one probe; MLflow's retries never started


# --- the output contract (rows 6-12) -------------------------------------------


@pytest.mark.parametrize(
    ('sig', 'status', 'code'),
    [
        pytest.param(signal.SIGINT, 'interrupted', 130, id='SIGINT'),
        pytest.param(signal.SIGTERM, 'terminated', 143, id='SIGTERM'),
    ],
)
def test_a_signal_gives_one_json_document_naming_the_run(
    samples_repo, server, tmp_path, sig, status, code
):
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(f'file://{samples_repo}#slow', commit, {'seconds': '120'})
    pid_file = tmp_path / 'pid'
    proc = start_tool(
        '--run_id',
        run_id,
        '--output',
        'json',
        env={'SAMPLE_PID_FILE': str(pid_file), 'MLFLOW_TRACKING_URI': server.url},
    )
    try:
        pid_from(pid_file)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    doc = json.loads(out)  # the report only: no "View run" line from MLflow
    [new] = reproductions_of(run_id)
    assert (proc.returncode, doc['status'], doc['exit_code']) == (code, status, code)
    assert doc['reproduced_run_id'] == new.info.run_id
    assert new.info.status == 'KILLED'
    assert new.data.tags['reproduce.status'] == status
    assert status in new.data.tags['mlflow.note.content']
    assert err.splitlines()[-1] == f'reproduce_run.py: {status}'


def test_a_launch_failure_after_the_run_exists_is_recorded_and_named(reference, server, capfd):
    run_id = reference('sklearn_regression')  # in the server's store
    code = main_in_process('--run_id', run_id, '--env-manager', 'conda', '--output', 'json')
    out, err = capfd.readouterr()
    doc = json.loads(out)
    assert (code, doc['status']) == (2, 'error')
    new = client().get_run(doc['reproduced_run_id'])
    assert new.info.status == 'FAILED'
    assert new.data.tags['reproduce.status'] == 'error'
    assert (
        'python_env project cannot be executed using conda' in new.data.tags['mlflow.note.content']
    )


def main_in_process(*argv: str) -> int:
    from reproduce_run import main

    return main(argv)


def test_the_failure_message_quotes_the_projects_own_error(own_repo, server, capsys):
    run_id = project_run(own_repo, 'chatty', CHATTY_FAILURE)
    code, out, err = reproduce(capsys, '--run_id', run_id, '--output', 'json')
    doc = json.loads(out)
    assert code == 3
    assert doc['message'].endswith('its last error: ValueError: the data file is empty')
    assert err.splitlines()[-1].endswith('ValueError: the data file is empty')


def test_progress_bars_do_not_bloat_the_report(own_repo, capsys):
    run_id = project_run(own_repo, 'progress', PROGRESS)
    code, out, err = reproduce(capsys, '--run_id', run_id, '--output', 'json')
    doc = json.loads(out)
    assert code == 3
    assert len(out) < 20_000
    assert all(len(line) <= 500 for line in doc['output_tail'])
    assert doc['output_tail'][-1] == 'progress sample failure'
    assert any(line.startswith('step  99999 of 100000') for line in doc['output_tail'])
    assert len(artifact_bytes(doc['reproduced_run_id'], 'reproduce/output.log')) < 20_000


def test_unreadable_metrics_after_the_run_are_an_error_naming_the_run(
    reference, server, capsys, monkeypatch
):
    run_id = reference('sklearn_regression')  # in the server's store
    with proxy_in_front_of(server.url) as proxy:
        proxy.add(Rule('metrics/get-history', status=500))
        monkeypatch.setenv('MLFLOW_TRACKING_URI', proxy.url)
        monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')
        code, out, err = reproduce(capsys, '--run_id', run_id, '--output', 'json')
    monkeypatch.setenv('MLFLOW_TRACKING_URI', server.url)  # the proxy is gone
    doc = json.loads(out)
    new_id = doc['reproduced_run_id']
    assert (code, doc['status']) == (2, 'error')
    assert doc['message'].startswith(
        f'the reproduced run {new_id} ran, but its metrics could not be read back: '
    )
    new = client().get_run(new_id)
    assert new.info.status == 'FINISHED'
    assert new.data.tags['reproduce.status'] == 'error'


def test_a_password_in_the_tracking_uri_is_masked_everywhere(reference, server, capfd, monkeypatch):
    run_id = reference('history')  # in the server's store
    secret_uri = server.url.replace('http://', 'http://user:s3cret@')
    monkeypatch.setenv('MLFLOW_TRACKING_URI', secret_uri)
    code = main_in_process('--run_id', run_id, '--output', 'json', '--verbose')
    out, err = capfd.readouterr()
    doc = json.loads(out)
    assert code == 0, err
    new_id = doc['reproduced_run_id']
    recorded = [
        artifact_bytes(new_id, f'reproduce/{name}').decode()
        for name in ('comparison.json', 'output.log')
    ]
    tags = json.dumps(client().get_run(new_id).data.tags)
    assert 's3cret' not in out + err + tags + ''.join(recorded)
    assert 'user:' not in out + err


# --- bad model URIs, servers that answer 500 or nothing, runs left running ----------


def all_runs() -> list[str]:
    from mlflow.entities import ViewType

    c = client()
    experiments = [e.experiment_id for e in c.search_experiments(view_type=ViewType.ALL)]
    return [r.info.run_id for r in c.search_runs(experiments, run_view_type=ViewType.ALL)]


def test_a_malformed_model_uri_is_an_argument_error_that_creates_nothing(capsys):
    before = all_runs()
    with pytest.raises(SystemExit) as exc:
        main_in_process('--model', 'notamodeluri')
    out, err = capsys.readouterr()
    assert (exc.value.code, out) == (2, '')
    assert err == (
        'reproduce_run: error: argument --model: expected models:/NAME/VERSION or '
        "models:/NAME@ALIAS, got 'notamodeluri' (see --help)\n"
    )
    assert all_runs() == before


def test_a_model_that_is_not_found_is_a_batch_entry_with_its_error_on_stderr(capsys, tmp_path):
    uri = f'models:/absent-{tmp_path.name}/1'
    code, out, err = reproduce(capsys, '--model', uri, '--dry-run', '--output', 'json')
    [entry] = json.loads(out)['runs']
    assert code == 2
    assert (entry['status'], entry['model']) == ('error', uri)
    assert entry['message'].startswith(f'model {uri} not found: ')
    assert f'reproduce_run: error: {entry["message"]}\n' in err


@pytest.mark.parametrize(
    ('run_ids', 'start'),
    [
        pytest.param(['A'], 'run A is left RUNNING', id='one'),
        pytest.param(['A', 'B'], 'runs A and B are left RUNNING', id='two'),
        pytest.param(['A', 'B', 'C'], 'runs A, B and C are left RUNNING', id='three'),
    ],
)
def test_left_running_line_names_the_runs_in_plain_english(run_ids, start, monkeypatch):
    from reproduce_run import LeftOpen, left_running_line

    monkeypatch.setenv('REPRODUCE_RUN_CLOSE_TIMEOUT', '3')
    why = 'the tracking server answered HTTP 500'
    line = left_running_line([LeftOpen(r, 'FINISHED', 'http://h:5000', why) for r in run_ids])
    it = 'them' if len(run_ids) > 1 else 'it'
    assert line.startswith(f'reproduce_run: error: {start}: {why} (retried for 3 s); close {it}')


@pytest.mark.slow
def test_runs_left_running_by_a_server_answering_500_are_named_with_that_cause(
    own_repo, server, capsys, monkeypatch
):
    first = project_run(own_repo, 'quiet', QUIET)
    second = recorded_run(f'file://{own_repo}#quiet', git('rev-parse', 'HEAD', cwd=own_repo))
    with proxy_in_front_of(server.url) as proxy:
        proxy.add(Rule('runs/update', status=500))
        monkeypatch.setenv('MLFLOW_TRACKING_URI', proxy.url)
        monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')
        monkeypatch.setenv('REPRODUCE_RUN_CLOSE_TIMEOUT', '2')
        code, out, err = reproduce(capsys, '--run_id', first, second, '--output', 'json')
    monkeypatch.setenv('MLFLOW_TRACKING_URI', server.url)
    doc = json.loads(out)
    left = [r['reproduced_run_id'] for r in doc['runs']] + [doc['batch_run_id']]
    assert all(client().get_run(r).info.status == 'RUNNING' for r in left)
    last = err.splitlines()[-1]
    assert last.startswith('reproduce_run: error: runs ')
    named = last.split('runs ', 1)[1].split(' are left RUNNING: ')[0]
    assert sorted(named.replace(' and ', ', ').split(', ')) == sorted(left)
    assert ' are left RUNNING: the tracking server answered HTTP 500 (retried for 2 s); ' in last
    assert 'did not answer' not in err


@pytest.mark.slow
@pytest.mark.parametrize('batch', [False, True], ids=['single', 'batch'])
def test_a_server_answering_500_to_log_batch_is_quoted_and_the_run_is_named(
    own_repo, server, capsys, monkeypatch, tmp_path, batch
):
    run_id = project_run(own_repo, 'quiet', QUIET_WITH_A_PARAM, {'n': '2'})
    (tmp_path / 'runs.txt').write_text(f'{run_id}\n')
    chosen = ('--runs-file', str(tmp_path / 'runs.txt')) if batch else ('--run_id', run_id)
    with proxy_in_front_of(server.url) as proxy:
        proxy.add(Rule('runs/log-batch', status=500))
        monkeypatch.setenv('MLFLOW_TRACKING_URI', proxy.url)
        monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')
        code, out, err = reproduce(capsys, *chosen, '--output', 'json')
    monkeypatch.setenv('MLFLOW_TRACKING_URI', server.url)
    doc = json.loads(out)
    [entry] = doc['runs'] if batch else [doc]
    [new] = reproductions_of(run_id)
    assert code == 2
    assert (entry['status'], entry['reproduced_run_id']) == ('error', new.info.run_id)
    assert entry['message'] == (
        f'cannot log the params of run {new.info.run_id} (marked FAILED): the tracking '
        'server answered HTTP 500: {"error_code": "INTERNAL_ERROR", "message": "injected '
        'by the test proxy"}'
    )
    assert new.info.status == 'FAILED'
    assert new.data.tags['reproduce.status'] == 'error'
    assert f'{entry["message"]}\n' in err  # on standard error too, where cron mails it


# --- a tracking server that refuses, hangs up or stops ----------------------------


def test_unreachable_tracking_server_is_one_line(capsys, monkeypatch):
    uri = f'http://127.0.0.1:{free_port()}'
    monkeypatch.setenv('MLFLOW_TRACKING_URI', uri)
    code, out, err = reproduce(capsys, '--run_id', 'a' * 32)
    assert (code, out) == (2, '')
    assert err == (
        f'reproduce_run: error: cannot read run {"a" * 32} from {uri}: the tracking '
        f'server does not answer (Connection refused)\n'
    )


@contextlib.contextmanager
def hanging_up_server() -> Iterator[tuple[str, list[int]]]:
    """(URL, [connections so far]) of a port on 127.0.0.1 that accepts each
    connection and closes it at once, as a server failing every request would."""
    listener = socket.create_server(('127.0.0.1', 0))
    accepted = [0]

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener closed
            while True:
                connection = listener.accept()[0]
                accepted[0] += 1  # before the client can see the hang-up
                connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{listener.getsockname()[1]}', accepted
    finally:
        listener.close()


@pytest.mark.parametrize(
    ('user_retries', 'connections'),
    [
        # One probe of /health, the search for a dead tool's leftovers (tried
        # once), then MLflow's first request and its retries (its own default
        # would make 1 + 8).
        pytest.param(None, 1 + 1 + 3, id='tool-default-2-retries'),
        pytest.param('0', 1 + 1 + 1, id='user-setting-wins'),
    ],
)
def test_retries_to_an_unanswering_server(capsys, monkeypatch, user_retries, connections):
    monkeypatch.setenv('MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR', '0')  # same count, no waiting
    if user_retries is not None:
        monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', user_retries)
    with hanging_up_server() as (uri, accepted):
        monkeypatch.setenv('MLFLOW_TRACKING_URI', uri)
        code, out, err = reproduce(capsys, '--run_id', 'a' * 32)
    assert (code, out) == (2, '')
    assert err.startswith(f'reproduce_run: error: cannot read run {"a" * 32} from {uri}: ')
    assert accepted == [connections]
    assert os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES') == user_retries


@pytest.mark.slow
def test_tracking_server_stopping_mid_run(tmp_path, samples_repo, monkeypatch):
    server = start_mlflow_server(tmp_path / 'server')
    try:
        monkeypatch.setenv('MLFLOW_TRACKING_URI', server.url)
        commit = git('rev-parse', 'HEAD', cwd=samples_repo)
        run_id = recorded_run(f'file://{samples_repo}#slow', commit, {'seconds': '120'})
        pid_file = tmp_path / 'pid'
        tool = start_tool(
            '--run_id',
            run_id,
            '--output',
            'json',
            env={
                'SAMPLE_PID_FILE': str(pid_file),
                'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '0',
                'MLFLOW_HTTP_REQUEST_TIMEOUT': '5',
                'REPRODUCE_RUN_CLOSE_TIMEOUT': '1',
            },
        )
        try:
            wait_for(pid_file.exists, 90, 'the project to start')
            wait_for(lambda: pid_file.read_text().strip(), 10, 'the PID')
            stop(server.proc)
            out, err = tool.communicate(timeout=120)
        finally:
            tool.kill()
    finally:
        stop(server.proc)
    # The project cannot log without its server, so it fails: exit 3, its own
    # error quoted; the run cannot be closed, and the last line says how to.
    doc = json.loads(out)
    assert (tool.returncode, doc['status']) == (3, 'failed'), err
    new_id = doc['reproduced_run_id']
    # The script's messages start with the name it was called by.
    assert err.splitlines()[-1].startswith(f'reproduce_run.py: error: run {new_id} is left RUNNING')
    assert 'reproduce_run.py", line' not in err  # no traceback of ours
    assert process_gone(int(pid_file.read_text()))

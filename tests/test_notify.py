"""--notify (issue 20): a Slack- or Teams-compatible incoming webhook, tested
against a real HTTP server on 127.0.0.1 that records what it receives,
answers 500, or never answers."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from conftest import git
from helpers import (
    ECHO_PROJECT,
    HOSTILE_VALUES,
    add_project,
    assert_markdown_safe,
    assert_terminal_safe,
    client,
    commit_all,
    python_run,
    recorded_run,
    reproduce,
)
from junitparser import JUnitXml

import reproduce_run

UNKNOWN = 'f' * 32
SECRET = 'T0SECRET/B0SECRET/xoxb-not-to-be-seen'


class Receiver:
    """An incoming webhook on 127.0.0.1: answers 200 ('ok'), 500 ('fail') or
    never ('hang'), and keeps every request it got."""

    def __init__(self, mode: str) -> None:
        self.mode, self.received = mode, []
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers['Content-Length']))
                receiver.received.append((self.path, dict(self.headers), body))
                if receiver.mode == 'hang':
                    receiver.release.wait(60)
                    return
                self.send_response(200 if receiver.mode == 'ok' else 500)
                self.end_headers()
                self.wfile.write(b'ok' if receiver.mode == 'ok' else b'boom')

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.server.daemon_threads = True
        self.url = f'http://127.0.0.1:{self.server.server_port}/services/{SECRET}'

    def texts(self) -> list[str]:
        return [json.loads(body)['text'] for _, _, body in self.received]


@contextlib.contextmanager
def receiving(mode: str) -> Iterator[Receiver]:
    receiver = Receiver(mode)
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        receiver.server.shutdown()
        receiver.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    with receiving('ok') as receiver:
        yield receiver


def summary(counts: str, worst: str, code: int, what: str = f'run {UNKNOWN[:8]}') -> str:
    return (
        f"reproduce_run on {socket.gethostname()}: {what} reproduced into experiment 'Default': "
        f'{counts}; worst: {worst} (exit {code})'
    )


ENV_PROBE_PROJECT = {
    'MLproject': 'entry_points:\n  main:\n    command: python probe.py\n',
    'probe.py': 'import os, mlflow\n'
    'seen = os.environ.get("REPRODUCE_RUN_NOTIFY_URL")\n'
    'open(os.environ["PROBE_FILE"], "w").write(repr(seen))\n'
    'print("the project says:", seen)\n'
    'mlflow.log_metric("x", 1.0)\n',
}


def test_an_outcome_not_equal_posts_one_message(webhook, sqlite_store, capsys, monkeypatch):
    monkeypatch.setenv('MLFLOW_TRACKING_URI', sqlite_store)  # a store with no UI to link to
    code, out, err = reproduce(capsys, '--run_id', UNKNOWN, '--notify', webhook.url)
    assert code == 2
    [(path, headers, body)] = webhook.received
    assert path == f'/services/{SECRET}'
    assert headers['Content-Type'] == 'application/json'
    message = json.loads(body)
    assert list(message) == ['text']  # what Slack and Teams webhooks both take
    text = message['text']
    assert text.splitlines()[0] == summary('0 equal, 0 differ, 0 failed, 1 error', 'error', 2)
    assert f'**Reproduction of run {UNKNOWN}**: error' in text  # the Markdown report
    assert f'> run {UNKNOWN} not found at tracking URI ' in text
    assert text.splitlines()[-1] == f'- {UNKNOWN[:8]}: error: reference run {UNKNOWN}'  # no UI
    assert SECRET not in out + err + text
    assert 'warning' not in err


def test_an_equal_outcome_notifies_only_with_notify_always(webhook, own_repo, capsys):
    add_project(own_repo, 'probe', ENV_PROBE_PROJECT)
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    run_id = recorded_run(f'file://{own_repo}#probe', commit, metrics={'x': 1.0})
    dry = ('--run_id', run_id, '--dry-run', '--notify', webhook.url)
    assert reproduce(capsys, *dry)[0] == 0
    assert webhook.received == []
    assert reproduce(capsys, *dry, '--notify-always')[0] == 0
    [text] = webhook.texts()
    what = f'run {client().get_run(run_id).info.run_name} ({run_id[:8]})'
    first = text.splitlines()[0]
    assert first == summary('0 equal, 0 differ, 0 failed, 0 error, 1 planned', 'planned', 0, what)


def test_a_script_run_is_named_with_the_experiment_it_went_to(webhook, own_repo, tmp_path, capsys):
    """A script run's reproduction goes to the reference's experiment, not
    Default: the notification and the JUnit classname say so."""
    (own_repo / 'fit.py').write_text("import mlflow\nmlflow.log_metric('m', 1.0)\n")
    commit_all(own_repo, 'a script')
    name = f'scripts-{tmp_path.name}'
    run_id = python_run(own_repo, 'fit.py', env={'MLFLOW_EXPERIMENT_NAME': name})
    junit = tmp_path / 'junit.xml'
    argv = ('--run_id', run_id, '--uri', str(own_repo), '--script-args', '', '--dry-run')
    code, out, err = reproduce(
        capsys, *argv, '--notify', webhook.url, '--notify-always', '--junit-xml', str(junit)
    )
    assert code == 0, err
    [text] = webhook.texts()
    assert f"reproduced into experiment '{name}': " in text.splitlines()[0]
    [suite] = JUnitXml.fromfile(str(junit))
    assert [case.classname for case in suite] == [name]


def test_a_webhook_answering_500_is_one_warning_and_the_exit_code_stays(capsys):
    with receiving('fail') as failing, receiving('ok') as working:
        code, out, err = reproduce(
            capsys, '--run_id', UNKNOWN, '--notify', failing.url, '--notify', working.url
        )
    assert code == 2
    assert len(failing.received) == len(working.received) == 1  # the second still gets it
    warnings = [line for line in err.splitlines() if 'warning' in line]
    assert warnings == [
        'reproduce_run: warning: --notify webhook 1 at 127.0.0.1 failed: HTTP 500; '
        'exit code unchanged'
    ]
    assert SECRET not in out + err


def test_a_webhook_that_never_answers_is_given_up_after_10_s(capsys):
    with receiving('hang') as hanging:
        started = time.monotonic()
        code, out, err = reproduce(capsys, '--run_id', UNKNOWN, '--notify', hanging.url)
        took = time.monotonic() - started
    assert code == 2
    assert len(hanging.received) == 1
    assert 9 < took < 30
    assert (
        'reproduce_run: warning: --notify webhook 1 at 127.0.0.1 failed: no answer within '
        '10 s; exit code unchanged'
    ) in err.splitlines()
    assert SECRET not in out + err


def test_an_unreachable_webhook_is_a_warning(capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    url = f'http://user:pass@127.0.0.1:{port}/hook/{SECRET}'
    code, out, err = reproduce(capsys, '--run_id', UNKNOWN, '--notify', url)
    assert code == 2
    [warning] = [line for line in err.splitlines() if 'warning' in line]
    assert warning.startswith('reproduce_run: warning: --notify webhook 1 at 127.0.0.1 failed: ')
    assert 'Connection refused' in warning
    assert SECRET not in out + err and 'pass' not in err


def test_the_url_can_come_from_the_environment(webhook, capsys, monkeypatch):
    monkeypatch.setenv('REPRODUCE_RUN_NOTIFY_URL', webhook.url)
    assert reproduce(capsys, '--run_id', UNKNOWN)[0] == 2
    assert len(webhook.received) == 1


def test_a_login_in_the_url_is_sent_as_basic_auth(webhook, capsys):
    url = webhook.url.replace('http://', 'http://hook%40user:p%3Ass@')
    code, out, err = reproduce(capsys, '--run_id', UNKNOWN, '--notify', url)
    assert code == 2 and 'warning' not in err
    [(path, headers, _)] = webhook.received
    assert path == f'/services/{SECRET}'
    assert headers['Authorization'] == 'Basic ' + base64.b64encode(b'hook@user:p:ss').decode()
    assert 'p%3Ass' not in out + err


def test_a_url_that_is_not_http_is_refused_without_showing_it(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        reproduce_run.main(['--run_id', UNKNOWN, '--notify', f'ftp://{SECRET}'])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == '' and err.count('\n') == 1 and SECRET not in err
    assert 'argument --notify: expected an http:// or https:// URL' in err
    monkeypatch.setenv('REPRODUCE_RUN_NOTIFY_URL', SECRET)
    with pytest.raises(SystemExit) as exc:
        reproduce_run.main(['--run_id', UNKNOWN])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('reproduce_run: error: REPRODUCE_RUN_NOTIFY_URL: expected an http')
    assert SECRET not in err


def test_the_secret_reaches_neither_the_project_nor_mlflow(
    webhook, own_repo, capsys, monkeypatch, tmp_path
):
    add_project(own_repo, 'probe', ENV_PROBE_PROJECT)
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    run_id = recorded_run(f'file://{own_repo}#probe', commit, metrics={'x': 1.0})
    probe = tmp_path / 'seen'
    monkeypatch.setenv('PROBE_FILE', str(probe))
    monkeypatch.setenv('REPRODUCE_RUN_NOTIFY_URL', webhook.url)
    code, out, err = reproduce(capsys, '--run_id', run_id, '--notify-always', '--output', 'json')
    assert code == 0, err
    assert probe.read_text() == 'None'
    new = client().get_run(json.loads(out)['reproduced_run_id'])
    recorded = json.dumps([new.data.tags, new.data.params, new.data.metrics])
    assert SECRET not in recorded + out + err
    [text] = webhook.texts()
    assert SECRET not in text
    assert text.splitlines()[0].endswith(
        '1 equal, 0 differ, 0 failed, 0 error; worst: equal (exit 0)'
    )


# --- what the message says: pure -----------------------------------------------


@pytest.mark.parametrize(
    ('tracking_uri', 'ui'),
    [
        pytest.param('http://mlflow:5000', 'http://mlflow:5000', id='http'),
        pytest.param('https://u:p4ss@mlflow.example/', 'https://mlflow.example', id='credentials'),
        pytest.param('https://host/prefix/', 'https://host/prefix', id='path'),
        pytest.param('sqlite:///mlflow.db', None, id='sqlite'),
        pytest.param('/tmp/mlruns', None, id='path-store'),
        pytest.param(None, None, id='unset'),
    ],
)
def test_ui_address(tracking_uri, ui):
    assert reproduce_run.ui_address(tracking_uri) == ui


def big_batch(n: int) -> reproduce_run.BatchReport:
    reports = tuple(
        reproduce_run.Report(
            status='failed',
            exit_code=3,
            reference_run_id=f'{i:032x}',
            reproduced_run_id=f'{i + 1000:032x}',
            message='x' * 900,
            reference_run_name=f'run-{i}',
        )
        for i in range(n)
    )
    return reproduce_run.BatchReport(reports, batch_run_id='a' * 32)


def test_a_long_report_is_cut_to_the_webhook_limit_keeping_summary_and_links():
    delivery = reproduce_run.Delivery(
        notify=(f'https://hooks.example/{SECRET}',),
        tracking_uri='https://user:p4ss@mlflow.example/',
    )
    text = reproduce_run.notification_text(big_batch(300), delivery)
    assert len(text.encode()) <= reproduce_run.NOTIFY_TEXT_BYTES
    lines = text.splitlines()
    assert lines[0].endswith(
        "300 runs reproduced into experiment 'Default': 0 equal, 0 differ, "
        '300 failed, 0 error; worst: failed (exit 3)'
    )
    assert "_… cut to fit the webhook's size limit_" in text
    assert lines[-1] == '- and 280 more'
    assert f'- parent run: https://mlflow.example/#/runs/{"a" * 32}' in lines
    assert (
        f'- run-0 (00000000): failed: reference run https://mlflow.example/#/runs/{0:032x}, '
        f'reproduced run https://mlflow.example/#/runs/{1000:032x}'
    ) in lines
    assert 'p4ss' not in text and SECRET not in text


def test_links_point_into_a_real_servers_ui(mlflow_server, webhook, capsys, monkeypatch):
    monkeypatch.setenv('MLFLOW_TRACKING_URI', mlflow_server)
    assert reproduce(capsys, '--run_id', UNKNOWN, '--notify', webhook.url)[0] == 2
    [text] = webhook.texts()
    assert text.splitlines()[-1] == (
        f'- {UNKNOWN[:8]}: error: reference run {mlflow_server}/#/runs/{UNKNOWN}'
    )
    with urllib.request.urlopen(f'{mlflow_server}/', timeout=30) as page:  # the UI itself
        assert page.status == 200 and b'<html' in page.read().lower()


def test_hostile_values_reach_neither_the_webhook_nor_the_run_description_raw(
    webhook, own_repo, capsys, tmp_path, monkeypatch
):
    """A param value, the run's name and the experiment's name, each holding
    Markdown, HTML and terminal controls, through a real reproduction."""
    summary = tmp_path / 'step_summary.md'
    monkeypatch.setenv('GITHUB_STEP_SUMMARY', str(summary))
    add_project(own_repo, 'echo', ECHO_PROJECT)
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    msg = '|'.join(v for k, v in HOSTILE_VALUES.items() if k != 'nul')  # refused before a run
    run_id = recorded_run(f'file://{own_repo}#echo', commit, {'msg': msg}, metrics={'m': 0.0})
    name = '|'.join(HOSTILE_VALUES.values())
    client().set_tag(run_id, 'mlflow.runName', name)
    argv = ('--run_id', run_id, '--experiment-name', name, '--notify', webhook.url)
    code, out, err = reproduce(capsys, *argv, '--output', 'json')
    assert code == 1, err  # the metric m is missing from the reproduction
    doc = json.loads(out)
    assert doc['params']['passed'] == {'msg': msg}  # JSON: the exact value
    [text] = webhook.texts()
    assert_markdown_safe(text)
    assert '&lt;details&gt;' in text.splitlines()[0]  # the run's and the experiment's names
    note = client().get_run(doc['reproduced_run_id']).data.tags['mlflow.note.content']
    assert_markdown_safe(note)
    assert_markdown_safe(summary.read_text())
    assert_terminal_safe(err + reproduce_run.shown(HOSTILE_VALUES['ansi']))  # err may hold none

"""--notify: a Slack- or Teams-compatible incoming webhook, tested
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
import tracemalloc
import urllib.request
from collections.abc import Iterator

import pytest
from helpers import (
    ECHO_PROJECT,
    HOSTILE,
    HOSTILE_VALUES,
    add_project,
    assert_markdown_safe,
    assert_no_forged_line,
    assert_terminal_safe,
    client,
    commit_all,
    dataset_input,
    git,
    log_environment,
    python_run,
    recorded_run,
    reproduce,
    tagged_run,
)
from junitparser import JUnitXml

import reproduce_run

UNKNOWN = 'f' * 32
SECRET = 'T0SECRET/B0SECRET/xoxb-not-to-be-seen'
LOGIN = 'hook-user:p4ss-w0rd'  # a user:password@ in a webhook's URL
NOT_SHOWN = '(not shown: it is a secret)'
# 'endless' stops after 256 MB, so that a tool that reads it all fails its test, not the host
ENDLESS_CHUNKS = 4096
FLAT_BYTES = 2**20  # the most memory a delivery may take, from the request's arrival


class Receiver:
    """An incoming webhook on 127.0.0.1 (or another loopback address): answers
    200 ('ok'), 500 ('fail'), a redirect (`redirect`: status, location), its
    status line one byte every 5 s ('drip'), 200 and an endless body
    ('endless'), or never ('hang'); it keeps every request it got, and when
    (with the memory Python held then)."""

    def __init__(self, mode: str, host: str = '127.0.0.1', redirect: tuple[int, str] = (302, '')):
        self.mode, self.redirect_to, self.received, self.arrived = mode, redirect, [], []
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.arrived.append((time.monotonic(), traced_now()))
                body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
                receiver.received.append((self.path, dict(self.headers), body))
                getattr(receiver, receiver.mode, receiver.answer)(self)

            do_GET = do_POST  # a redirect followed as a GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f'http://{host}:{self.server.server_port}/services/{SECRET}'

    def answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200 if self.mode == 'ok' else 500)
        handler.end_headers()
        handler.wfile.write(b'ok' if self.mode == 'ok' else b'boom')

    def hang(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        self.release.wait(60)

    def redirect(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        status, location = self.redirect_to
        handler.send_response(status)
        handler.send_header('Location', location)
        handler.end_headers()

    def drip(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        for byte in b'HTTP/1.1 200 OK\r\n\r\n':
            if self.release.wait(5):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()

    def endless(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.end_headers()
        chunk = b'x' * 65536
        with contextlib.suppress(OSError):  # the tool hung up
            for _ in range(ENDLESS_CHUNKS):
                handler.wfile.write(chunk)

    def texts(self) -> list[str]:
        return [json.loads(body)['text'] for _, _, body in self.received]


@contextlib.contextmanager
def receiving(mode: str, host: str = '127.0.0.1', redirect=(302, '')) -> Iterator[Receiver]:
    receiver = Receiver(mode, host, redirect)
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


def traced_now() -> int:
    """The memory Python holds (bytes), from when the peak starts again; 0
    untraced."""
    tracemalloc.reset_peak()
    return tracemalloc.get_traced_memory()[0]


def notified(capsys, url: str) -> tuple[int, str, float, int]:
    """The tool's exit code, its output (both streams), when it returned, and
    the most memory Python held meanwhile (bytes)."""
    tracemalloc.start()
    try:
        code, out, err = reproduce(capsys, '--run_id', UNKNOWN, '--notify', url)
        return code, out + err, time.monotonic(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def with_login(url: str) -> str:
    return url.replace('http://', f'http://{LOGIN}@')


def warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if 'warning' in line]


def credentials_in(text: str) -> list[str]:
    """Which of the webhook's secrets text shows: its path, password, basic auth."""
    basic = base64.b64encode(LOGIN.encode()).decode()
    return [secret for secret in (SECRET, LOGIN.partition(':')[2], basic) if secret in text]


def failed(why: str) -> str:
    return f'reproduce_run: warning: --notify webhook 1 at 127.0.0.1 failed: {why}; ' + (
        'exit code unchanged'
    )


@pytest.mark.parametrize(
    ('mode', 'warned'),
    [
        pytest.param('drip', [failed('no answer within 10 s')], id='one-byte-every-5-s'),
        pytest.param('hang', [failed('no answer within 10 s')], id='never-answers'),
        pytest.param('endless', [], id='endless-body'),
    ],
)
def test_a_webhook_holds_the_tool_at_most_12_s_in_flat_memory(mode, warned, capsys):
    """Connect, send, the status line and headers: 10 s in all, whatever the
    receiver does; the body (here 256 MB, endless for all the tool knows) is
    not read."""
    with receiving(mode) as receiver:
        code, output, ended, peak = notified(capsys, with_login(receiver.url))
    assert code == 2
    [(arrived, held)] = receiver.arrived
    assert ended - arrived < 12
    assert peak - held < FLAT_BYTES, f'{(peak - held) / 2**20:.1f} MiB more'
    assert warnings(output) == warned
    assert credentials_in(output) == []


@pytest.mark.parametrize('status', [301, 302, 303, 307, 308])
def test_a_redirect_is_a_failed_delivery_and_is_not_followed(status, capsys):
    """The Authorization header would go to the other host, and a GET there
    would count as delivered."""
    with (
        receiving('ok', host='127.0.0.2') as elsewhere,
        receiving('redirect', redirect=(status, elsewhere.url)) as redirecting,
    ):
        code, output, _, _ = notified(capsys, with_login(redirecting.url))
    assert code == 2
    assert len(redirecting.received) == 1
    assert elsewhere.received == []
    assert warnings(output) == [failed(f'HTTP {status}, a redirect (not followed)')]
    assert credentials_in(output) == []


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


def test_the_proxy_variables_are_honoured(webhook, sqlite_store, capsys, monkeypatch):
    monkeypatch.setenv('MLFLOW_TRACKING_URI', sqlite_store)  # MLflow's requests go direct
    for name in ('no_proxy', 'NO_PROXY'):
        monkeypatch.delenv(name, raising=False)
    with receiving('ok', host='127.0.0.2') as proxy:
        monkeypatch.setenv('http_proxy', proxy.url.partition('/services')[0])
        code, out, err = reproduce(capsys, '--run_id', UNKNOWN, '--notify', webhook.url)
    assert code == 2 and 'warning' not in err
    assert webhook.received == []
    [(target, _, _)] = proxy.received
    assert target == webhook.url  # a proxy's request line names the whole URL


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


NOT_HTTP = 'expected an http:// or https:// URL, got something else'
UNSENDABLE = 'expected a URL without spaces or control characters, got one with some'
BAD_PORT = 'expected a port from 1 to 65535 in the URL, got something else'
HOOK = f'https://{LOGIN}@hooks.example/services/{SECRET}'


def refused(capsys, *argv: str) -> str:
    """The one line of standard error with which the tool refuses argv at start."""
    with pytest.raises(SystemExit) as exc:
        reproduce_run.main(['--run_id', UNKNOWN, *argv])
    out, err = capsys.readouterr()
    assert (exc.value.code, out, err.count('\n')) == (2, '', 1), err
    return err


@pytest.mark.parametrize(
    ('url', 'expected'),
    [
        pytest.param(f'ftp://{SECRET}', NOT_HTTP, id='ftp'),
        pytest.param(SECRET, NOT_HTTP, id='no-scheme'),
        pytest.param(f'https://[::1/services/{SECRET}', NOT_HTTP, id='broken-ipv6-host'),
        pytest.param(f'{HOOK} ', UNSENDABLE, id='trailing-space'),
        pytest.param(HOOK.replace('/B0', ' /B0'), UNSENDABLE, id='space'),
        pytest.param(HOOK.replace('/B0', '/\tB0'), UNSENDABLE, id='tab'),
        pytest.param(f'{HOOK}\r\nX-Injected: 1', UNSENDABLE, id='header-injection'),
        pytest.param(f'{HOOK}\x00', UNSENDABLE, id='nul'),
        pytest.param(f'{HOOK}\x7f', UNSENDABLE, id='del'),
        pytest.param(HOOK.replace('/B0', '/\u200bB0'), UNSENDABLE, id='zero-width-space'),
        pytest.param(HOOK.replace('.example/', '.example:99999/'), BAD_PORT, id='port-99999'),
        pytest.param(HOOK.replace('.example/', '.example:0/'), BAD_PORT, id='port-0'),
        pytest.param(HOOK.replace('.example/', '.example:-1/'), BAD_PORT, id='port-negative'),
        pytest.param(HOOK.replace('.example/', '.example:https/'), BAD_PORT, id='port-name'),
    ],
)
def test_a_url_that_cannot_be_sent_is_refused_at_start_without_showing_it(
    url, expected, capsys, monkeypatch
):
    err = refused(capsys, '--notify', url)
    assert err == f'reproduce_run: error: argument --notify: {expected} {NOT_SHOWN} (see --help)\n'
    assert credentials_in(err) == []
    if '\x00' in url:
        return  # no environment variable can hold it
    monkeypatch.setenv('REPRODUCE_RUN_NOTIFY_URL', url)
    err = refused(capsys)
    assert err.startswith(f'reproduce_run: error: REPRODUCE_RUN_NOTIFY_URL: {expected} {NOT_SHOWN}')
    assert credentials_in(err) == []


TEAMS_PATH = f'/workflows/{SECRET}/triggers/manual/paths/invoke'


@pytest.mark.parametrize(
    ('url', 'bare', 'where'),
    [
        pytest.param(
            HOOK, f'https://hooks.example/services/{SECRET}', f'/services/{SECRET}', id='slack'
        ),
        pytest.param(
            f'https://prod-1.westus.logic.azure.com:443{TEAMS_PATH}?v=1&sig=S1GN4TURE',
            f'https://prod-1.westus.logic.azure.com:443{TEAMS_PATH}?v=1&sig=S1GN4TURE',
            f'{TEAMS_PATH}?v=1&sig=S1GN4TURE',
            id='teams-workflow',
        ),
    ],
)
def test_mask_webhook_hides_the_url_its_path_and_its_query(url, bare, where):
    said = f'{url} failed; {bare} failed; POST {where}; at {where.partition("?")[0]}'
    masked = reproduce_run.mask_webhook(said, url)
    assert masked == '*** failed; *** failed; POST ***; at ***'


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
    """A param value, the run's name and the experiment's name, the
    reference's reproduce/environment.json and dataset input, each holding
    Markdown, HTML and terminal controls, through a real reproduction."""
    summary = tmp_path / 'step_summary.md'
    monkeypatch.setenv('GITHUB_STEP_SUMMARY', str(summary))
    add_project(own_repo, 'echo', ECHO_PROJECT)
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    msg = '|'.join(v for k, v in HOSTILE_VALUES.items() if k != 'nul')  # refused before a run
    run_id = recorded_run(f'file://{own_repo}#echo', commit, {'msg': msg}, metrics={'m': 0.0})
    name = '|'.join(HOSTILE_VALUES.values())
    client().set_tag(run_id, 'mlflow.runName', name)
    environment = {'python': {'version': HOSTILE}, 'env': {HOSTILE: HOSTILE}}
    log_environment(run_id, environment, tmp_path / 'environment')
    client().log_inputs(run_id, [dataset_input(HOSTILE, 'd', context=HOSTILE)])
    argv = ('--run_id', run_id, '--experiment-name', name, '--notify', webhook.url)
    code, out, err = reproduce(capsys, *argv, '--output', 'json')
    assert code == 1, err  # the metric m is missing from the reproduction
    doc = json.loads(out)
    assert doc['params']['passed'] == {'msg': msg}  # JSON: the exact value
    [text] = webhook.texts()
    assert_markdown_safe(text)
    assert_no_forged_line(text)
    assert '&lt;details&gt;' in text.splitlines()[0]  # the run's and the experiment's names
    assert f'  - Python version: {reproduce_run.markdown_escaped(HOSTILE)} -> ' in text
    note = client().get_run(doc['reproduced_run_id']).data.tags['mlflow.note.content']
    assert_markdown_safe(note)
    assert_no_forged_line(note)
    assert f'  - dataset {reproduce_run.markdown_escaped(HOSTILE)} (' in note
    assert_markdown_safe(summary.read_text())
    assert_terminal_safe(err + reproduce_run.shown(HOSTILE_VALUES['ansi']))  # err may hold none


def test_hostile_skip_reasons_and_leftovers_reach_no_report_raw(
    webhook, capsys, tmp_path, monkeypatch
):
    """A batch skips a run whose recorded commit is hostile (its reason quotes
    it), and --reap-after closes a run whose owner tag is hostile: the lines
    saying so, in the Markdown report, the step summary and the webhook."""
    summary = tmp_path / 'step_summary.md'
    monkeypatch.setenv('GITHUB_STEP_SUMMARY', str(summary))
    c = client()
    name = f'hostile-{tmp_path.name}'
    tags = {
        'mlflow.source.name': 'file:///nowhere',
        'mlflow.source.type': 'PROJECT',
        'mlflow.source.git.commit': 'deadbeef' + HOSTILE,
    }
    tagged_run(tags, experiment_id=c.create_experiment(name))
    started = int((time.time() - 3600) * 1000)
    left = c.create_experiment(f'{name}-left')
    leftover = c.create_run(left, start_time=started, tags={'reproduce.owner': HOSTILE})
    argv = ('--from-experiment', name, '--reap-after', '1s', '--notify', webhook.url)
    code, out, err = reproduce(capsys, *argv, '--notify-always', '--output', 'markdown')
    assert code == 0, err  # nothing reproduced, nothing differs
    assert c.get_run(leftover.info.run_id).info.status == 'KILLED'
    [text] = webhook.texts()
    for markdown in (out, summary.read_text(), text):
        commit = reproduce_run.markdown_escaped(repr('deadbeef' + HOSTILE))
        assert f'- skipped 1 run: its recorded commit {commit} is refused: ' in markdown
        owner = reproduce_run.markdown_escaped(HOSTILE)
        closed = f'closed run {leftover.info.run_id} of {owner} as KILLED: RUNNING longer than'
        assert f'- Leftover of a dead tool: {closed}' in markdown
        assert_markdown_safe(markdown)
        assert_no_forged_line(markdown)
    assert_terminal_safe(err)
    leftover = c.create_run(left, start_time=started, tags={'reproduce.owner': HOSTILE})
    code, out, err = reproduce(capsys, '--from-experiment', name, '--reap-after', '1s')
    assert code == 0, err
    closed = f'closed run {leftover.info.run_id} of {reproduce_run.shown(HOSTILE)} as KILLED'
    assert f'Leftover of a dead tool: {closed}' in out
    assert_terminal_safe(out)
    assert_no_forged_line(out)

"""Launching the reproduction: the params passed to the entry point, the
entry point itself, the tracking URI the project sees, and its output."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from helpers import (
    ECHO_PROJECT,
    add_project,
    artifact_bytes,
    client,
    commit_all,
    git,
    mlflow_run,
    recorded_run,
    reproduce,
    reproduce_json,
    reproduced_run,
    run_snapshot,
    start_tool,
)

import reproduce_run
from reproduce_run import main


@pytest.mark.parametrize(
    ('logged', 'expected'),
    [
        pytest.param('0.5', '0.5', id='plain'),
        pytest.param("'a b'", 'a b', id='mlflow-quoted-space'),
        pytest.param("'x; touch /tmp/pwned'", 'x; touch /tmp/pwned', id='mlflow-quoted-command'),
        pytest.param("''\"'\"'a'\"'\"''", "'a'", id='value-with-its-own-quotes'),
        pytest.param("'a", "'a", id='unbalanced-kept'),
        pytest.param('a b', 'a b', id='unquoted-space-kept'),
        pytest.param("''", '', id='empty'),
    ],
)
def test_unquote_param(logged, expected):
    assert reproduce_run.unquote_param(logged) == expected


@pytest.mark.parametrize(
    ('declared', 'passed', 'not_passed'),
    [
        pytest.param(
            ('alpha',),
            {'alpha': '1'},
            {'own': 'x', 'autolog_p': '2'},
            id='only-declared-params-are-passed',
        ),
        pytest.param(
            None, {'alpha': '1', 'own': 'x', 'autolog_p': '2'}, {}, id='script-entry-point-gets-all'
        ),
        pytest.param(
            ('alpha', 'beta'),
            {'alpha': '1'},
            {'own': 'x', 'autolog_p': '2'},
            id='declared-but-absent-is-not-invented',
        ),
    ],
)
def test_select_params(declared, passed, not_passed):
    params = reproduce_run.select_params(declared, {'alpha': '1', 'own': 'x', 'autolog_p': '2'})
    assert (params.passed, params.not_passed) == (passed, not_passed)


def metric_table(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('| Metric')) - 1
    return lines[start:-1]


def test_deterministic_run_is_reproduced(reference, capsys):
    run_id = reference('sklearn_regression')
    code, out, _ = reproduce(capsys, '--run_id', run_id)
    assert code == 0
    assert out.splitlines()[-1] == 'Runs equal: True'
    table = metric_table(out)
    assert table[1].split() == ['|', 'Metric', '|', 'Run1', '|', 'Run2', '|', 'Diff', '|']
    assert [line.split()[1] for line in table[3:6]] == ['mae', 'r2', 'rmse']
    new = reproduced_run(out)
    ref = client().get_run(run_id)
    assert new.info.status == 'FINISHED'
    assert new.data.metrics == ref.data.metrics
    assert new.data.tags['mlflow.source.git.commit'] == ref.data.tags['mlflow.source.git.commit']
    assert new.data.tags['mlflow.source.name'] == ref.data.tags['mlflow.source.name']
    assert new.info.run_name == f'reproduce-{ref.info.run_name}'


def test_extra_params_are_not_passed(reference, capsys):
    run_id = reference('own_params')
    own = set(client().get_run(run_id).data.params) - {'n_neighbors'}
    assert own
    code, report, err = reproduce_json(capsys, '--run_id', run_id)
    assert code == 0, err
    assert report['params']['compared'] == [
        {'key': 'n_neighbors', 'reference': '5', 'reproduced': '5', 'equal': True}
    ]
    assert (report['params']['passed'].keys(), report['params']['not_passed'].keys()) == (
        {'n_neighbors'},
        own,
    )


def test_verbose_lists_the_params_not_passed(reference, capsys):
    run_id = reference('own_params')
    own = sorted(set(client().get_run(run_id).data.params) - {'n_neighbors'})
    code, out, err = reproduce(capsys, '--run_id', run_id, '--verbose')
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith('Params not passed'))
    assert all(f'{key}=' in line for key in own)
    assert f'reproduce_run: reproducing run {run_id} (' in err


def test_entry_point_other_than_main(reference, capsys):
    run_id = reference('entry_points', '-e', 'train_tree', '-P', 'max_depth=2')
    code, report, err = reproduce_json(capsys, '--run_id', run_id)
    assert code == 0, err
    new = client().get_run(report['reproduced_run_id'])
    assert new.data.tags['mlflow.project.entryPoint'] == 'train_tree'
    assert new.data.params['max_depth'] == '2'


def test_script_entry_point_gets_the_params_mlflow_logged(reference, capsys):
    run_id = reference('entry_points', '-e', 'score.py', '-P', 'threshold=0.3')
    code, report, err = reproduce_json(capsys, '--run_id', run_id)
    assert code == 0, err
    assert report['params']['compared'] == [
        {'key': 'threshold', 'reference': '0.3', 'reproduced': '0.3', 'equal': True}
    ]


@pytest.mark.parametrize(
    'msg',
    [
        pytest.param('two words', id='space'),
        pytest.param("it's", id='quote'),
        pytest.param('$(id) `id` ; echo x', id='shell-syntax'),
    ],
)
def test_param_values_reach_the_project_unchanged(own_repo, store, capsys, msg):
    project = add_project(own_repo, 'echo', ECHO_PROJECT)
    run_id = mlflow_run(str(project), store, '-P', f'msg={msg}')
    code, report, err = reproduce_json(capsys, '--run_id', run_id)
    assert code == 0, err
    assert client().get_run(report['reproduced_run_id']).data.metrics['msg_length'] == len(msg)


def test_project_output_goes_to_stderr_and_report_to_stdout(reference, capfd):
    # The history sample prints each epoch on its standard output.
    code = main(['--run_id', reference('history'), '--output', 'json'])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert 'epoch 9: loss ' in err
    assert json.loads(out)['status'] == 'equal'  # stdout holds the report and nothing else


def test_failed_reproduction_exits_3_and_marks_the_run_failed(reference, capsys):
    ref_id = reference('failing', '-P', 'fail_at=2', fails=True)
    before = run_snapshot(ref_id)
    code, out, err = reproduce(capsys, '--run_id', ref_id)
    assert code == 3
    lines = out.splitlines()  # a cron job mails standard output: what ran, how it ended
    assert lines[0] == f'Reference run:  {ref_id}'
    assert lines[1].startswith('Reproduced run: ') and lines[1].endswith(' (marked FAILED)')
    assert 'Command:        python train.py --fail-at 2' in lines
    assert lines[-1] == '  sample failure: giving up at step 2'
    assert any(line.startswith('Status:         failed: the reproduced run ') for line in lines)
    last = err.splitlines()[-1]
    assert last.startswith('reproduce_run: error: the reproduced run ')
    assert last.endswith(
        'failed (exit status 1); its last error: sample failure: giving up at step 2'
    )
    assert 'Traceback' not in err
    run_id = last.split('the reproduced run ')[1].split()[0]
    assert client().get_run(run_id).info.status == 'FAILED'
    assert run_snapshot(ref_id) == before


@pytest.mark.slow
def test_against_a_real_tracking_server(reference, mlflow_server, capsys, monkeypatch):
    run_id = reference('sklearn_regression')  # the tests' store is the session's server
    monkeypatch.setenv('MLFLOW_TRACKING_URI', mlflow_server)
    code, out, _ = reproduce(capsys, '--run_id', run_id, '--experiment-name', 'reproductions')
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True')
    new = reproduced_run(out)
    assert client().get_experiment(new.info.experiment_id).name == 'reproductions'


@pytest.mark.parametrize(
    ('uri', 'expected'),
    [
        pytest.param('sqlite:///mlflow.db', 'sqlite:///{cwd}/mlflow.db', id='relative-sqlite'),
        pytest.param(
            'sqlite:////data/mlflow.db', 'sqlite:////data/mlflow.db', id='absolute-sqlite'
        ),
        pytest.param('mlruns', '{cwd}/mlruns', id='relative-path'),
        pytest.param('http://host:5000', 'http://host:5000', id='http'),
        pytest.param('databricks', 'databricks', id='databricks'),
        pytest.param(None, None, id='unset'),
    ],
)
def test_absolute_tracking_uri(uri, expected, tmp_path):
    # The autouse fixture runs each test in tmp_path.
    expected = expected and expected.format(cwd=tmp_path)
    assert reproduce_run.absolute_tracking_uri(uri) == expected


def test_relative_sqlite_store_reaches_the_project(
    sqlite_reference, sqlite_store, capsys, monkeypatch
):
    run_id = sqlite_reference('sklearn_regression')
    monkeypatch.chdir(Path(sqlite_store[len('sqlite:///') :]).parent)
    monkeypatch.setenv('MLFLOW_TRACKING_URI', 'sqlite:///mlflow.db')
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True'), err
    assert os.environ['MLFLOW_TRACKING_URI'] == 'sqlite:///mlflow.db'


# --- reproductions in parallel share no process state ---------------------------

CHATTY = {
    'MLproject': 'name: chatty\nentry_points:\n  main:\n    command: bash chatty.sh\n',
    'chatty.sh': 'for i in $(seq 30); do\n'
    '  echo "line $i of run $MLFLOW_RUN_ID marker $REPRODUCE_RUN_PROCESS_TAG"\n'
    '  sleep 0.05\n'
    'done\n',
}
# git, with a line for each process: its process marker, its TMPDIR and its
# first two arguments (the tool's own git always starts with -c protocol.ext.allow=never).
GIT_LOGGER = (
    '#!/bin/sh\necho "$REPRODUCE_RUN_PROCESS_TAG $TMPDIR $1 $2" >> {log}\nexec {git} "$@"\n'
)
TOOLS_OWN_GIT = '-c protocol.ext.allow=never'
PLUGIN = 'reproduce-test-backend'  # tests/backend_plugin
_LINE_RE = re.compile(r'line \d+ of run (\w+) marker (\S+)')


@pytest.mark.slow
def test_parallel_reproductions_keep_their_process_markers_and_output_apart(own_repo, tmp_path):
    """--jobs 4 over a backend whose launch takes seconds (the plugin's
    submit_seconds, as a docker build does) while sibling projects chat and
    the tool fetches other commits: each output.log holds its own launch's
    and project's lines and nothing else, each project sees its own
    reproduction's process marker, the tool's git processes the tool's, and
    the git processes MLflow starts in a launch that reproduction's."""
    add_project(own_repo, 'chatty', CHATTY)
    runs = []
    for k in range(6):  # a commit each: the tool fetches while siblings launch
        (own_repo / 'chatty' / 'notes.txt').write_text(f'note {k}\n')
        runs.append(recorded_run(f'file://{own_repo}#chatty', commit_all(own_repo, f'{k}')))
    bin_dir, log = tmp_path / 'bin', tmp_path / 'git.log'
    bin_dir.mkdir()
    (bin_dir / 'git').write_text(GIT_LOGGER.format(log=log, git=shutil.which('git')))
    (bin_dir / 'git').chmod(0o755)
    proc = start_tool(
        '--run_id', *runs, '--jobs', '4', '-b', PLUGIN, '-c', '{"submit_seconds": 3}',
        '--experiment-name', f'parallel-{tmp_path.name}', '--output', 'json',
        env={'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}'},
    )  # fmt: skip
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    markers = set()
    for report in json.loads(out)['runs']:
        new_id = report['reproduced_run_id']
        lines = artifact_bytes(new_id, 'reproduce/output.log').decode().splitlines()
        marker = _LINE_RE.fullmatch(lines[-1]).group(2)
        assert lines == [
            f'{PLUGIN}: preparing the job of run {new_id}',
            f'{PLUGIN}: the job of run {new_id} is ready',
            *(f'line {i} of run {new_id} marker {marker}' for i in range(1, 31)),
        ]
        markers.add(marker)
    tools = {m.rsplit('.', 1)[0] for m in markers}
    assert len(markers) == len(runs) and len(tools) == 1
    launches = {}  # TMPDIR: the markers of MLflow's git processes with it
    for line in log.read_text().splitlines():
        marker, tmpdir, args = line.split(' ', 2)
        if args == TOOLS_OWN_GIT:
            assert {marker} == tools, line
        else:
            launches.setdefault(tmpdir, set()).add(marker)
    assert all(len(m) == 1 and m <= markers for m in launches.values()), launches


DOCKERISED = {
    'MLproject': 'name: dockerised\ndocker_env:\n  image: python:3.11-slim\n'
    'entry_points:\n  main:\n    command: python -c pass\n',
}


def test_a_docker_project_without_docker_is_one_line_and_a_failed_run(
    own_repo, tmp_path, capsys, monkeypatch
):
    """MLflow's docker launch, in a launcher process, fails for want of a
    docker daemon (DOCKER_HOST names nothing): its reason in one line, exit
    2, and the run FAILED."""
    add_project(own_repo, 'dockerised', DOCKERISED)
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    ref_id = recorded_run(f'file://{own_repo}#dockerised', commit)
    monkeypatch.setenv('DOCKER_HOST', f'unix://{tmp_path}/no-docker.sock')
    code, out, err = reproduce(capsys, '--run_id', ref_id, '--output', 'json')
    doc = json.loads(out)
    assert (code, doc['status']) == (2, 'error'), err
    run_id = doc['reproduced_run_id']
    assert doc['message'].startswith(f'cannot launch the project (run {run_id} marked FAILED): ')
    assert err == f'reproduce_run: error: {doc["message"]}\n'
    assert client().get_run(run_id).info.status == 'FAILED'

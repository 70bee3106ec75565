"""What a reproduction records in MLflow: the verdict tags and note (a
description that fits MLflow's tag limit), the comparison artifact, plots (one
per metric, names that cannot collide), the project output log, failed runs,
and the experiment two reproductions create at once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    SCRIPT,
    TIGHT,
    add_project,
    artifact_bytes,
    client,
    git,
    logged_run,
    recorded_run,
    reproduce,
    reproductions_of,
    run_snapshot,
)

import reproduce_run


def test_verdict_is_recorded_on_the_reproduced_run(reference, capsys):
    run_id = reference('sklearn_regression')
    before = run_snapshot(run_id)
    code, out, _ = reproduce(capsys, '--run_id', run_id, '--output', 'json', '--atol', '0.001')
    assert code == 0
    doc = json.loads(out)
    new = client().get_run(doc['reproduced_run_id'])
    tags = new.data.tags
    assert {k: v for k, v in tags.items() if k.startswith('reproduce.')} == {
        'reproduce.reference_run_id': run_id,
        'reproduce.equal': 'true',
        'reproduce.status': 'equal',
        'reproduce.rtol': '1e-09',
        'reproduce.atol': '0.001',
        'reproduce.owner': reproduce_run.tool_owner(),  # this process: the tool, in-process
    }
    ref_experiment = client().get_run(run_id).info.experiment_id
    note = tags['mlflow.note.content']
    assert note.startswith(
        f'**Reproduction of run [{run_id}](#/experiments/{ref_experiment}/runs/{run_id})**: equal'
    )
    assert '| mae ' in note and note.endswith('Runs equal: True')
    assert json.loads(artifact_bytes(new.info.run_id, 'reproduce/comparison.json')) == doc
    assert run_snapshot(run_id) == before


def test_failed_reproduction_is_recorded_as_failed(reference, capsys):
    code, out, _ = reproduce(
        capsys, '--run_id', reference('failing', fails=True), '--output', 'json'
    )
    assert code == 3
    tags = client().get_run(json.loads(out)['reproduced_run_id']).data.tags
    assert (tags['reproduce.status'], tags['reproduce.equal']) == ('failed', 'false')
    assert 'failed (exit status 1)' in tags['mlflow.note.content']


def test_a_differing_history_gets_a_png_plot(reference, capsys, monkeypatch):
    run_id = reference('history')
    monkeypatch.setenv('SAMPLE_PERTURB_STEP', '3')
    code, out, _ = reproduce(capsys, '--run_id', run_id, '--output', 'json')
    assert code == 1
    new_id = json.loads(out)['reproduced_run_id']
    plots = [f.path for f in client().list_artifacts(new_id, 'reproduce/plots')]
    assert plots == ['reproduce/plots/loss.png']
    png = artifact_bytes(new_id, 'reproduce/plots/loss.png')
    assert png.startswith(b'\x89PNG\r\n\x1a\n') and len(png) > 1000


def test_no_plots_turns_plots_off(reference, capsys, monkeypatch):
    run_id = reference('history')
    monkeypatch.setenv('SAMPLE_PERTURB_STEP', '3')
    code, out, _ = reproduce(capsys, '--run_id', run_id, '--output', 'json', '--no-plots')
    new_id = json.loads(out)['reproduced_run_id']
    assert code == 1
    assert [f.path for f in client().list_artifacts(new_id, 'reproduce')] == [
        'reproduce/comparison.json',
        'reproduce/environment.json',
        'reproduce/output.log',
    ]


def test_mlflow_failing_after_creating_the_run_marks_it_failed(reference, capsys):
    run_id = reference('sklearn_regression')  # shared: other tests reproduce it too
    before = {r.info.run_id for r in reproductions_of(run_id)}
    code, out, err = reproduce(capsys, '--run_id', run_id, '--env-manager', 'conda')
    assert (code, out) == (2, '')
    assert 'cannot launch the project (run ' in err and 'marked FAILED' in err
    [new] = [r for r in reproductions_of(run_id) if r.info.run_id not in before]
    assert new.data.tags['mlflow.project.env'] == 'conda'
    assert new.info.status == 'FAILED'


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


# --- two reproductions create one experiment at once ----------------------------------

SQL_TAIL = (
    '\n[SQL: INSERT INTO experiments (name, workspace, artifact_location, lifecycle_stage,'
    " creation_time, last_update_time) VALUES (?, ?, ?, ?, ?, ?)]\n[parameters: ('e0', "
    "'default', None, 'active', 1795962003100, 1795962003100)]\n(Background on this "
    'error at: https://sqlalche.me/e/21/gkpj)'
)


@pytest.mark.parametrize(
    ('text', 'expected'),
    [
        pytest.param(
            'Experiment(name=e0) already exists. Error: (sqlite3.IntegrityError) UNIQUE '
            'constraint failed: experiments.workspace, experiments.name' + SQL_TAIL,
            'Experiment(name=e0) already exists. Error: (sqlite3.IntegrityError) UNIQUE '
            'constraint failed: experiments.workspace, experiments.name',
            id='integrity-error',
        ),
        pytest.param(
            '(sqlite3.OperationalError) database is locked\n[SQL: UPDATE runs SET '
            "status=? WHERE runs.run_uuid = ?]\n[parameters: ('FINISHED', 'abc')]\n"
            '(Background on this error at: https://sqlalche.me/e/20/e3q8)',
            '(sqlite3.OperationalError) database is locked',
            id='operational-error',
        ),
        pytest.param(
            '(psycopg2.OperationalError) connection to server at "db" failed\n'
            '(Background on this error at: https://sqlalche.me/e/20/e3q8)',
            '(psycopg2.OperationalError) connection to server at "db" failed',
            id='link-without-statement',
        ),
        pytest.param(
            '[SQL: SELECT 1]\n(Background on this error at: https://sqlalche.me/e/20/x)',
            '[SQL: SELECT 1]',
            id='nothing-before-the-statement',
        ),
        pytest.param('first\nsecond line\n', 'second line', id='plain-text-last-line'),
        pytest.param('', '', id='empty'),
    ],
)
def test_last_line_of_an_error_is_its_cause(text, expected):
    assert reproduce_run._last_line(text) == expected


def test_experiment_creation_is_race_safe(tmp_path):
    """Two clients create the same new experiment at once, ten times over."""
    import threading

    import mlflow

    uri = f'sqlite:///{tmp_path / "race.db"}'
    mlflow.MlflowClient(uri).search_experiments()  # the schema, made once

    def create(name: str, barrier: threading.Barrier, ids: list, errors: list) -> None:
        c = mlflow.MlflowClient(uri)
        barrier.wait()
        try:
            ids.append(reproduce_run._experiment_id(c, name))
        except Exception as e:  # noqa: BLE001 - the failure the test looks for
            errors.append(e)

    for attempt in range(10):
        name = f'race-{attempt}'
        barrier, ids, errors = threading.Barrier(2), [], []
        threads = [
            threading.Thread(target=create, args=(name, barrier, ids, errors)) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(ids) == 2 and ids[0] == ids[1]
        assert mlflow.MlflowClient(uri).get_experiment_by_name(name).experiment_id == ids[0]


def test_mlflow_error_names_the_cause_not_the_sqlalchemy_link(tmp_path):
    import mlflow
    from mlflow.exceptions import MlflowException

    c = mlflow.MlflowClient(f'sqlite:///{tmp_path / "twice.db"}')
    c.create_experiment('twice')
    with pytest.raises(MlflowException) as raised:
        c.create_experiment('twice')
    assert 'sqlalche.me' in str(raised.value)
    message = str(reproduce_run._mlflow_error('cannot create the reproduced run', raised.value))
    assert message.startswith(
        'cannot create the reproduced run: Experiment(name=twice) already '
        'exists. Error: (sqlite3.IntegrityError) UNIQUE constraint failed'
    )
    assert 'sqlalche.me' not in message and '\n' not in message


# --- the run description always fits MLflow's tag limit -------------------------------


def wide_report(
    metrics: int,
    param_chars: int,
    run_id: str = 'b' * 32,
    message: str | None = None,
    reference_id: str = 'a' * 32,
) -> reproduce_run.Report:
    """metrics metrics of which every 50th differs; one param of param_chars characters."""
    reference = {f'm{i:03d}': [(0, float(i))] for i in range(metrics)}
    reproduced = {f'm{i:03d}': [(0, float(i) + (i % 50 == 0))] for i in range(metrics)}
    params = [
        reproduce_run.ParamVerdict('long', 'x' * param_chars, 'x' * param_chars),
        reproduce_run.ParamVerdict('lr', '0.1', '0.2'),
    ]
    verdict = reproduce_run.judge(reference, reproduced, reproduce_run.Rules(TIGHT), params)
    return reproduce_run.Report('differ', reference_id, run_id, verdict=verdict, message=message)


@pytest.mark.parametrize(
    ('metrics', 'param_chars', 'message'),
    [
        pytest.param(300, 10, None, id='300-metrics'),
        pytest.param(3, 5000, None, id='5000-character-param'),
        pytest.param(300, 5000, None, id='both'),
        pytest.param(2000, 5000, 'y' * 20000, id='huge-everything'),
    ],
)
def test_description_fits_with_summary_and_verdict(metrics, param_chars, message):
    report = wide_report(metrics, param_chars, message=message)
    assert len(reproduce_run.format_markdown(report, '#/x')) > 8000
    text = reproduce_run.describe(report, '#/x')
    assert len(text) <= 8000
    lines = text.splitlines()
    assert lines[0] == f'**Reproduction of run [{"a" * 32}](#/x)**: differ'
    assert lines[-1] == 'Runs equal: False'
    differing = len(range(0, metrics, 50))
    assert f'- {differing} of {metrics} metrics differ, 1 of 2 params differ' in text
    assert 'the full report is `reproduce/comparison.json`' in text
    assert any(line.startswith('| lr ') and 'differs' in line for line in lines)
    assert ('x' * 59 + '…' in text) == (param_chars > 60)
    assert any(line.startswith('| m000 ') and 'differs' in line for line in lines)


def test_short_description_is_the_whole_report():
    report = wide_report(5, 10)
    assert reproduce_run.describe(report, '#/x') == reproduce_run.format_markdown(report, '#/x')


@pytest.mark.parametrize(
    ('value', 'expected'),
    [
        pytest.param('short', 'short', id='short'),
        pytest.param('x' * 8000, 'x' * 8000, id='at-the-limit'),
        pytest.param('x' * 8001, 'x' * 7999 + '…', id='over-the-limit'),
    ],
)
def test_fit_tag(value, expected):
    assert reproduce_run.fit_tag(value) == expected


def test_recorded_description_of_a_wide_report_keeps_its_verdict(capsys):
    reference, run_id = logged_run({'m000': [1.0]}), logged_run({'m000': [1.0]})
    report = wide_report(300, 5000, run_id=run_id, reference_id=reference)
    reproduce_run.record_verdict(client(), report, plots=False)
    assert capsys.readouterr().err == ''
    note = client().get_run(run_id).data.tags['mlflow.note.content']
    assert len(note) <= 8000
    assert note.startswith(f'**Reproduction of run [{reference}]')
    assert '- 6 of 300 metrics differ, 1 of 2 params differ' in note
    assert note.endswith('\nRuns equal: False')
    assert re.search(r'\n_\d+ more metrics not shown: see `reproduce/comparison.json`._\n', note)


# --- one plot per metric, names that cannot collide -----------------------------------

HASHED = r'-[0-9a-f]{10}\.png'


@pytest.mark.parametrize(
    ('keys', 'expected'),
    [
        pytest.param(['loss', 'val_loss'], ['loss.png', 'val_loss.png'], id='safe-keys-kept'),
        pytest.param(
            ['a b', 'a/b', 'a:b', 'a_b'],
            ['a_b' + HASHED, 'a_b' + HASHED, 'a_b' + HASHED, r'a_b\.png'],
            id='sanitized-keys-hashed',
        ),
        pytest.param(['Loss', 'loss'], ['Loss' + HASHED, 'loss' + HASHED], id='case-collision'),
        pytest.param(['x' * 250], ['x' * 100 + HASHED], id='long-key-shortened'),
        pytest.param(['é/ü'], ['___' + HASHED], id='non-ascii'),
        pytest.param(['.', '..', 'a.png'], [r'\.\.png', r'\.\.\.png', r'a\.png\.png'], id='dots'),
    ],
)
def test_plot_names(keys, expected):
    names = reproduce_run.plot_names(keys)
    assert list(names) == keys
    for key, pattern in zip(keys, expected, strict=True):
        assert re.fullmatch(pattern, names[key]), (key, names[key])
    assert len({n.casefold() for n in names.values()}) == len(keys)
    assert all(re.fullmatch(r'[A-Za-z0-9_.-]+', n) and len(n) < 255 for n in names.values())


def test_hashed_name_cannot_collide_with_a_key_spelled_like_it():
    taken = reproduce_run.plot_names(['a b'])['a b']
    spelled = taken[: -len('.png')]
    names = reproduce_run.plot_names(['a b', spelled])
    assert len({n.casefold() for n in names.values()}) == 2


def test_every_differing_metric_gets_its_own_plot(capsys):
    keys = ['a b', 'a/b', 'a:b', 'a_b']
    ref = logged_run({k: [1.0, 2.0, 3.0] for k in keys})
    other = logged_run({k: [1.0, 2.0, 4.0 + i] for i, k in enumerate(keys)})
    c = client()
    options = reproduce_run.Options(rules=reproduce_run.Rules(TIGHT))
    session = reproduce_run.Session(options, c, '', {}, '', '', reproduce_run.Stop())
    verdict, _, histories = reproduce_run.judge_runs(session, c.get_run(ref), c.get_run(other), [])
    report = reproduce_run.Report('differ', ref, other, verdict=verdict, histories=histories)
    reproduce_run.record_verdict(c, report, plots=True)
    assert capsys.readouterr().err == ''
    plots = sorted(f.path for f in c.list_artifacts(other, 'reproduce/plots'))
    assert len(plots) == 4
    names = reproduce_run.plot_names(keys)
    assert plots == sorted(f'reproduce/plots/{names[k]}' for k in keys)
    for path in plots:
        assert artifact_bytes(other, path).startswith(b'\x89PNG')

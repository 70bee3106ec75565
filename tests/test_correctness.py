"""Correctness under odd data and odd conditions (issue 7, rows 8 and 19-24):
infinite tolerances, ties in metric histories, concurrent experiment creation,
long descriptions, plot names, the reference's status, a missing store."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    SCRIPT,
    artifact_bytes,
    client,
    logged_run,
    reproduce,
)

import reproduce_run
from reproduce_run import Tolerance

NAN, INF = math.nan, math.inf
TIGHT = Tolerance(rtol=1e-9, atol=0.0)


# --- row 8: infinite tolerances -------------------------------------------------


@pytest.mark.parametrize(
    ('reproduced', 'reference', 'tol', 'expected'),
    [
        pytest.param(5.0, 0.0, Tolerance(rtol=INF), True, id='inf-rtol-zero-reference'),
        pytest.param(-1e300, 1e300, Tolerance(rtol=INF), True, id='inf-rtol-far-apart'),
        pytest.param(1e-12, 0.0, Tolerance(rtol=0.0, atol=INF), True, id='inf-atol'),
        pytest.param(3.0, 2.0, Tolerance(rtol=INF, atol=INF), True, id='both-inf'),
        pytest.param(NAN, 1.0, Tolerance(rtol=INF, atol=INF), False, id='nan-still-differs'),
        pytest.param(NAN, NAN, Tolerance(rtol=INF), True, id='nan-equals-nan'),
        pytest.param(INF, 1.0, Tolerance(rtol=INF, atol=INF), False, id='inf-value-still-differs'),
        pytest.param(-INF, -INF, Tolerance(rtol=INF), True, id='same-inf-equal'),
    ],
)
def test_values_close_with_infinite_tolerance(reproduced, reference, tol, expected):
    assert reproduce_run.values_close(reproduced, reference, tol) is expected


@pytest.mark.parametrize(
    ('argv', 'rtol', 'atol', 'overrides'),
    [
        pytest.param(
            ('--tolerance', 'final=inf'),
            1e-9,
            0.0,
            [{'pattern': 'final', 'rtol': 'Infinity', 'atol': 0.0}],
            id='tolerance-inf',
        ),
        pytest.param(('--rtol', 'inf'), 'Infinity', 0.0, [], id='rtol-inf'),
        pytest.param(('--atol', '1e999'), 1e-9, 'Infinity', [], id='atol-overflows-to-inf'),
        pytest.param(
            ('--tolerance', 'final=1,inf'),
            1e-9,
            0.0,
            [{'pattern': 'final', 'rtol': 1.0, 'atol': 'Infinity'}],
            id='tolerance-atol-inf',
        ),
    ],
)
def test_infinite_tolerance_is_accepted_and_written_as_json_strings(
    argv, rtol, atol, overrides, capsys
):
    ref = logged_run({'final': [0.0, 1.0], 'other': [2.0]})
    other = logged_run({'final': [7.0, 1e6], 'other': [2.0]})
    code, out, err = reproduce(
        capsys, '--run_id', ref, '--compare-to', other, '--output', 'json', *argv
    )
    assert err == ''
    doc = json.loads(out)
    assert (code, doc['status'], doc['equal']) == (0, 'equal', True)
    assert doc['tolerance'] == {'rtol': rtol, 'atol': atol, 'overrides': overrides, 'ignored': []}
    final = next(m for m in doc['metrics'] if m['key'] == 'final')
    expected = overrides[0] if overrides else {'rtol': rtol, 'atol': atol}
    assert (final['rtol'], final['atol'], final['equal']) == (
        expected['rtol'],
        expected['atol'],
        True,
    )
    assert float(final['rtol']) >= 0 and float(final['atol']) >= 0


def test_infinite_tolerance_in_a_recorded_comparison(capsys):
    """comparison.json is written (not silently missing) with an inf tolerance."""
    ref = logged_run({'final': [1.0]})
    other = logged_run({'final': [2.0]})
    c = client()
    run = c.get_run(other)
    verdict = reproduce_run.judge(
        {'final': [(0, 1.0)]}, {'final': [(0, 2.0)]}, reproduce_run.Rules(Tolerance(rtol=INF))
    )
    report = reproduce_run.Report(
        'equal',
        0,
        ref,
        run.info.run_id,
        verdict=verdict,
        rules=reproduce_run.Rules(Tolerance(rtol=INF)),
    )
    reproduce_run.record_verdict(c, report, None, plots=False)
    assert capsys.readouterr().err == ''
    doc = json.loads(artifact_bytes(other, 'reproduce/comparison.json'))
    assert (doc['tolerance']['rtol'], doc['metrics'][0]['rtol'], doc['equal']) == (
        'Infinity',
        'Infinity',
        True,
    )
    assert c.get_run(other).data.tags['reproduce.rtol'] == 'inf'


# --- row 19: values tied at one step and one timestamp ---------------------------


def batch_run(metrics: list[tuple[str, float, int, int]]) -> str:
    """A finished run whose metrics are logged as given: (key, value, timestamp, step)."""
    from mlflow.entities import Metric

    c = client()
    run_id = c.create_run(c.get_experiment_by_name('Default').experiment_id).info.run_id
    c.log_batch(run_id, metrics=[Metric(*m) for m in metrics])
    c.set_terminated(run_id)
    return run_id


def test_values_tied_at_one_step_and_timestamp_compare_equal(capsys):
    t = 1_700_000_000_000
    # The store hands the tie back sorted by value: 1.0 before 2.0.
    ref = batch_run(
        [
            ('loss', 2.0, t, 0),
            ('loss', 1.0, t, 0),
            ('loss', 0.5, t + 5, 1),
            ('acc', 0.9, t, 0),
            ('acc', 0.1, t, 0),
        ]
    )
    assert [m.value for m in client().get_metric_history(ref, 'loss')] == [1.0, 2.0, 0.5]
    # The reproduction logged the same values in the same order, a millisecond apart.
    other = batch_run(
        [
            ('loss', 2.0, t + 100, 0),
            ('loss', 1.0, t + 101, 0),
            ('loss', 0.5, t + 102, 1),
            ('acc', 0.9, t + 100, 0),
            ('acc', 0.1, t + 100, 0),
        ]
    )
    code, out, err = reproduce(capsys, '--run_id', ref, '--compare-to', other)
    assert (code, out.splitlines()[-1], err) == (0, 'Runs equal: True', ''), out
    assert 'differs' not in out


def test_values_at_one_step_in_another_order_still_differ(capsys):
    t = 1_700_000_000_000
    ref = batch_run([('loss', 2.0, t, 0), ('loss', 1.0, t + 1, 0)])
    other = batch_run([('loss', 1.0, t, 0), ('loss', 2.0, t + 1, 0)])
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other)
    assert code == 1
    assert 'differs from step 0' in out


# --- row 20: two reproductions create one experiment at once -----------------------

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


# --- row 21: the run description always fits MLflow's tag limit ---------------------


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
    return reproduce_run.Report('differ', 1, reference_id, run_id, verdict=verdict, message=message)


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
    reproduce_run.record_verdict(client(), report, None, plots=False)
    assert capsys.readouterr().err == ''
    note = client().get_run(run_id).data.tags['mlflow.note.content']
    assert len(note) <= 8000
    assert note.startswith(f'**Reproduction of run [{reference}]')
    assert '- 6 of 300 metrics differ, 1 of 2 params differ' in note
    assert note.endswith('\nRuns equal: False')
    assert re.search(r'\n_\d+ more metrics not shown: see `reproduce/comparison.json`._\n', note)


# --- row 22: one plot per metric, names that cannot collide ------------------------

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
    verdict, histories = reproduce_run.judge_runs(
        c, reproduce_run.Rules(TIGHT), False, c.get_run(ref), c.get_run(other), []
    )
    report = reproduce_run.Report('differ', 1, ref, other, verdict=verdict)
    reproduce_run.record_verdict(c, report, histories, plots=True)
    assert capsys.readouterr().err == ''
    plots = sorted(f.path for f in c.list_artifacts(other, 'reproduce/plots'))
    assert len(plots) == 4
    names = reproduce_run.plot_names(keys)
    assert plots == sorted(f'reproduce/plots/{names[k]}' for k in keys)
    for path in plots:
        assert artifact_bytes(other, path).startswith(b'\x89PNG')


# --- row 23: the reference's status is said ----------------------------------------


def ended_run(status: str, metrics: dict[str, list[float]]) -> str:
    run_id = logged_run(metrics)
    client().set_terminated(run_id, status)
    return run_id


@pytest.mark.parametrize(
    'status', [pytest.param('FAILED', id='failed'), pytest.param('KILLED', id='killed')]
)
def test_a_failed_or_killed_reference_is_said_in_every_format(status, capsys):
    ref = ended_run(status, {'acc': [0.5]})
    other = logged_run({'acc': [0.5]})
    code, out, err = reproduce(capsys, '--run_id', ref, '--compare-to', other)
    assert code == 0
    assert out.splitlines()[0] == f'Reference run:  {ref} ({status})'
    assert (
        err == f'reproduce_run: warning: run {ref} ended {status}: its metrics may be incomplete\n'
    )
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'json')
    assert json.loads(out)['reference_status'] == status
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'markdown')
    assert out.splitlines()[2] == f'- reference run status: **{status}**'


def test_reference_status_in_json_is_always_present(capsys):
    ref = logged_run({'acc': [0.5]})
    code, out, err = reproduce(capsys, '--run_id', ref, '--compare-to', ref, '--output', 'json')
    assert (code, json.loads(out)['reference_status'], err) == (0, 'FINISHED', '')
    code, out, _ = reproduce(capsys, '--run_id', 'f' * 32, '--output', 'json')
    doc = json.loads(out)
    assert (code, doc['status'], doc['reference_status']) == (2, 'error', None)


def test_dry_run_says_the_reference_failed(reference, capsys):
    run_id = reference('failing', fails=True)
    code, out, err = reproduce(capsys, '--run_id', run_id, '--dry-run')
    assert code == 0
    assert out.splitlines()[0] == f'Reference run:  {run_id} (FAILED)'
    assert (
        f'reproduce_run: warning: run {run_id} ended FAILED: its metrics may be incomplete\n' in err
    )
    code, out, _ = reproduce(capsys, '--run_id', run_id, '--dry-run', '--output', 'json')
    assert (code, json.loads(out)['reference_status']) == (0, 'FAILED')


# --- row 24: no tracking store is ever created by the tool ---------------------------


def run_tool(cwd: Path, uri: str | None, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != 'MLFLOW_TRACKING_URI'}
    if uri is not None:
        env['MLFLOW_TRACKING_URI'] = uri
    return subprocess.run(
        (sys.executable, str(SCRIPT), '--run_id', 'a' * 32, *argv),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_no_store_is_created_without_tracking_uri(tmp_path):
    folder = tmp_path / 'empty'
    folder.mkdir()
    proc = run_tool(folder, None)
    assert (proc.returncode, proc.stdout) == (2, '')
    assert proc.stderr == (
        f'reproduce_run.py: error: no tracking store found: MLFLOW_TRACKING_URI is not set and '
        f'the current folder {folder} has no mlflow.db (nor mlruns); set MLFLOW_TRACKING_URI '
        f'to the store that holds the run (for example sqlite:////path/to/mlflow.db or '
        f'http://host:5000)\n'
    )
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    ('uri', 'missing'),
    [
        pytest.param('sqlite:///missing.db', 'missing.db', id='relative-sqlite'),
        pytest.param('sqlite:///{tmp}/missing.db', '{tmp}/missing.db', id='absolute-sqlite'),
        pytest.param('file://{tmp}/mlruns', '{tmp}/mlruns', id='file-uri'),
        pytest.param('mlruns', 'mlruns', id='plain-path'),
    ],
)
def test_no_store_is_created_for_a_missing_local_store(uri, missing, tmp_path):
    folder = tmp_path / 'empty'
    folder.mkdir()
    uri, missing = uri.format(tmp=folder), missing.format(tmp=folder)
    proc = run_tool(folder, uri, '--output', 'json')
    assert proc.returncode == 2
    assert proc.stderr == (
        f'reproduce_run.py: error: no tracking store found: MLFLOW_TRACKING_URI is {uri}, but '
        f'{folder / missing} does not exist; set MLFLOW_TRACKING_URI to the store that holds '
        f'the run (for example sqlite:////path/to/mlflow.db or http://host:5000)\n'
    )
    assert json.loads(proc.stdout)['status'] == 'error'
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    ('uri', 'make', 'ok'),
    [
        pytest.param(None, (), False, id='unset-empty-folder'),
        pytest.param(None, ('mlflow.db',), True, id='unset-mlflow-db'),
        pytest.param(None, ('mlruns/0/meta.yaml',), True, id='unset-mlruns-with-experiment'),
        pytest.param(None, ('mlruns/.trash/x',), False, id='unset-mlruns-without-experiment'),
        pytest.param('sqlite:///here.db', ('here.db',), True, id='sqlite-present'),
        pytest.param('sqlite:///here.db', (), False, id='sqlite-missing'),
        pytest.param('sqlite:///here%20db.db', ('here db.db',), True, id='sqlite-quoted'),
        pytest.param('sqlite://', (), True, id='sqlite-in-memory'),
        pytest.param('file:///{tmp}/store', ('store/x',), True, id='file-uri-present'),
        pytest.param('store', (), False, id='plain-path-missing'),
        pytest.param('http://127.0.0.1:5000', (), True, id='server-is-not-checked-here'),
        pytest.param('postgresql://u:p@db/mlflow', (), True, id='database-server'),
        pytest.param('databricks', (), True, id='databricks-workspace'),
    ],
)
def test_check_tracking_store(uri, make, ok, tmp_path, monkeypatch):
    folder = tmp_path / 'here'
    folder.mkdir()
    monkeypatch.chdir(folder)
    for name in make:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text('')
    uri = uri and uri.format(tmp=folder)
    if ok:
        reproduce_run.check_tracking_store(uri)
    else:
        with pytest.raises(reproduce_run.ReproduceError, match='no tracking store found'):
            reproduce_run.check_tracking_store(uri)

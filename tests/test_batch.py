"""Batch reproduction (issue 9): many reference runs in one invocation,
chosen by ID, file, registered model or search, reproduced --jobs at a time
under one parent run, with one summary and one exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCRIPT, git, mlflow_run
from test_reproduce_run import client, process_gone, recorded_run, reproduce, wait_for

import reproduce_run


@pytest.mark.parametrize(
    ('statuses', 'code'),
    [
        pytest.param([], 0, id='nothing'),
        pytest.param(['equal', 'equal'], 0, id='all-equal'),
        pytest.param(['equal', 'differ'], 1, id='one-differs'),
        pytest.param(['differ', 'failed', 'equal'], 3, id='failed-beats-differ'),
        pytest.param(['failed', 'error'], 2, id='error-beats-failed'),
        pytest.param(['error', 'interrupted'], 130, id='signal-beats-all'),
        pytest.param(['interrupted', 'terminated'], 143, id='sigterm-beats-sigint'),
        pytest.param(['planned', 'planned'], 0, id='dry-run'),
    ],
)
def test_fold_exit_code(statuses, code):
    assert reproduce_run.fold_exit_code(statuses) == code


@pytest.mark.parametrize(
    ('text', 'seconds'),
    [
        pytest.param('90m', 5400, id='minutes'),
        pytest.param('36h', 129600, id='hours'),
        pytest.param('7d', 604800, id='days'),
        pytest.param('1.5h', 5400, id='fraction'),
    ],
)
def test_duration(text, seconds):
    assert reproduce_run._duration(text) == seconds


@pytest.mark.parametrize(
    ('argv', 'message'),
    [
        pytest.param(
            ['--since', '7d', '--run_id', 'a'],
            '--since selects among the runs of --from-experiment, which is missing',
            id='since-without-experiment',
        ),
        pytest.param(
            ['--from-experiment', 'x', '--since', 'week'],
            "expected a duration such as 90m, 36h or 7d, got 'week'",
            id='bad-duration',
        ),
        pytest.param(
            ['--run_id', 'a', '--jobs', '0'], "expected a number >= 1, got '0'", id='zero-jobs'
        ),
        pytest.param(
            ['--run_id', 'a', 'b', '--compare-to', 'c'],
            '--compare-to compares exactly one --run_id with one other run',
            id='compare-to-in-a-batch',
        ),
        pytest.param(
            ['--run_id', 'a', '--quiet', '--verbose'],
            '--quiet and --verbose exclude each other',
            id='quiet-and-verbose',
        ),
    ],
)
def test_batch_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        reproduce_run.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def experiment_runs(name: str):
    c = client()
    experiment = c.get_experiment_by_name(name)
    return c.search_runs([experiment.experiment_id], run_view_type=3)


def batch_runs(name: str):
    """(parent, children) of the one batch in experiment `name`."""
    runs = experiment_runs(name)
    [parent] = [r for r in runs if r.data.tags.get('reproduce.batch') == 'true']
    children = [r for r in runs if r.data.tags.get('mlflow.parentRunId') == parent.info.run_id]
    return parent, children


def test_several_run_ids_with_mixed_outcomes(reference, capsys, tmp_path):
    equal, differ = reference('sklearn_regression'), reference('nondeterministic')
    failing = reference('failing', fails=True)
    name = f'batch-{tmp_path.name}'
    code, out, err = reproduce(
        capsys,
        '--run_id',
        equal,
        differ,
        '--run_id',
        failing,
        '--run_id',
        'f' * 32,
        '--experiment-name',
        name,
        '--output',
        'json',
    )
    doc = json.loads(out)
    assert code == doc['exit_code'] == 2
    assert [r['status'] for r in doc['runs']] == ['equal', 'differ', 'failed', 'error']
    assert [r['reference_run_id'] for r in doc['runs']] == [equal, differ, failing, 'f' * 32]
    assert doc['summary'] == {
        'total': 4,
        'equal': 1,
        'differ': 1,
        'failed': 1,
        'error': 1,
        'skipped': 0,
    }
    assert doc['skipped'] == []
    parent, children = batch_runs(name)
    assert doc['batch_run_id'] == parent.info.run_id
    assert parent.info.status == 'FINISHED'
    assert parent.info.run_name.startswith('reproduce-batch-')
    assert {
        k: parent.data.metrics[k]
        for k in ('runs_total', 'runs_equal', 'runs_differ', 'runs_failed', 'runs_error')
    } == {'runs_total': 4, 'runs_equal': 1, 'runs_differ': 1, 'runs_failed': 1, 'runs_error': 1}
    assert sorted(c.info.run_id for c in children) == sorted(
        r['reproduced_run_id'] for r in doc['runs'] if r['reproduced_run_id']
    )
    summary = json.loads(
        Path(client().download_artifacts(parent.info.run_id, 'reproduce/summary.json')).read_text()
    )
    assert summary['summary'] == doc['summary']
    assert '| Reference run' in parent.data.tags['mlflow.note.content']
    assert f'[4/4] {"f" * 8} error in ' in err
    assert f'[1/4] {equal[:8]} (' in err and ') equal in ' in err


def test_a_batch_table_ends_with_one_verdict_line(reference, capsys):
    code, out, err = reproduce(
        capsys, '--run_id', reference('sklearn_regression'), reference('nondeterministic')
    )
    assert code == 1
    lines = out.splitlines()
    assert lines[-1] == 'Runs equal: False'
    assert sum(line.startswith('Runs equal:') for line in lines) == 1
    assert any(line.startswith('| test_mae ') for line in lines)  # the differing run's table
    assert not any(line.startswith('| mae ') for line in lines)  # no table for the equal one


def test_markdown_batch_report(reference, capsys):
    equal = reference('sklearn_regression')
    code, out, _ = reproduce(capsys, '--run_id', equal, equal, '--output', 'markdown')
    assert code == 0
    assert out.startswith('**Batch reproduction**: Reproduced 1 runs: 1 equal, 0 differ')
    assert '| Reference run ' in out and f'| {equal} ' in out
    assert out.endswith('\nRuns equal: True\n')


def search_setup(samples_repo, store, name: str) -> dict[str, str]:
    """An experiment with two deterministic runs, a failed one, one that is
    not a project, and a reproduction of the first."""
    made = {
        'alpha1': mlflow_run(
            str(samples_repo / 'sklearn_regression'),
            store,
            '--experiment-name',
            name,
            '-P',
            'alpha=0.1',
        ),
        'alpha2': mlflow_run(
            str(samples_repo / 'sklearn_regression'),
            store,
            '--experiment-name',
            name,
            '-P',
            'alpha=0.2',
        ),
        'failed': mlflow_run(
            str(samples_repo / 'failing'), store, '--experiment-name', name, fails=True
        ),
    }
    c = client()
    experiment_id = c.get_experiment_by_name(name).experiment_id
    notebook = c.create_run(experiment_id)
    c.set_terminated(notebook.info.run_id)
    made['notebook'] = notebook.info.run_id
    reproduction = c.create_run(
        experiment_id,
        tags={'reproduce.reference_run_id': made['alpha1'], 'mlflow.source.type': 'PROJECT'},
    )
    c.set_terminated(reproduction.info.run_id)
    made['reproduction'] = reproduction.info.run_id
    return made


def test_from_experiment_with_filter_since_and_max_runs(samples_repo, store, capsys, tmp_path):
    name = f'search-{tmp_path.name}'
    made = search_setup(samples_repo, store, name)
    # Newest first: alpha2, then alpha1; --max-runs stops the search after one.
    code, out, _ = reproduce(
        capsys,
        '--from-experiment',
        name,
        '--since',
        '1h',
        '--filter',
        "params.alpha != '0.9'",
        '--max-runs',
        '1',
        '--output',
        'json',
        '--dry-run',
    )
    doc = json.loads(out)
    assert code == 0, out
    assert doc['batch_run_id'] is None
    assert [r['reference_run_id'] for r in doc['runs']] == [made['alpha2']]
    assert [r['status'] for r in doc['runs']] == ['planned']
    code, out, _ = reproduce(
        capsys,
        '--from-experiment',
        name,
        '--filter',
        "params.alpha = '0.1'",
        '--output',
        'json',
        '--dry-run',
    )
    assert [r['reference_run_id'] for r in json.loads(out)['runs']] == [made['alpha1']]
    # Without a filter, the search meets the runs it must skip, and says why.
    code, out, _ = reproduce(
        capsys, '--from-experiment', name, '--since', '1h', '--output', 'json', '--dry-run'
    )
    doc = json.loads(out)
    assert code == 0
    assert [r['reference_run_id'] for r in doc['runs']] == [made['alpha2'], made['alpha1']]
    reasons = {s['run_id']: s['reason'] for s in doc['skipped']}
    assert reasons == {
        made['reproduction']: 'it is itself a reproduction',
        made['notebook']: 'it was not launched as an MLflow Project (tag mlflow.source.type is '
        'None) and recorded no remote (tag mlflow.source.git.repoURL): pass --uri with the git '
        'URL of its code',
        made['failed']: 'its status is FAILED, not FINISHED',
    }
    code, out, _ = reproduce(
        capsys, '--from-experiment', name, '--since', '1s', '--output', 'json', '--dry-run'
    )
    assert json.loads(out)['runs'] == []  # --since: nothing started in the last second


def test_sample_with_a_seed_chooses_the_same_runs_twice(samples_repo, store, capsys, tmp_path):
    name = f'sample-{tmp_path.name}'
    for alpha in ('0.1', '0.2', '0.3', '0.4'):
        mlflow_run(
            str(samples_repo / 'sklearn_regression'),
            store,
            '--experiment-name',
            name,
            '-P',
            f'alpha={alpha}',
        )

    def chosen(seed: str) -> list[str]:
        code, out, _ = reproduce(
            capsys,
            '--from-experiment',
            name,
            '--sample',
            '2',
            '--sample-seed',
            seed,
            '--dry-run',
            '--output',
            'json',
        )
        assert code == 0
        return [r['reference_run_id'] for r in json.loads(out)['runs']]

    first = chosen('7')
    assert len(first) == 2
    assert chosen('7') == first
    assert len({tuple(chosen(str(seed))) for seed in range(8)}) > 1  # the seed matters


def test_runs_file_and_standard_input(reference, capsys, tmp_path, monkeypatch):
    equal = reference('sklearn_regression')
    path = tmp_path / 'runs.txt'
    path.write_text(f'# nightly\n{equal}  # the regression\n\n')
    code, out, _ = reproduce(capsys, '--runs-file', str(path), '--dry-run', '--output', 'json')
    assert code == 0
    assert [r['reference_run_id'] for r in json.loads(out)['runs']] == [equal]
    import io

    monkeypatch.setattr('sys.stdin', io.StringIO(f'{equal}\n{"e" * 32}\n'))
    code, out, _ = reproduce(capsys, '--runs-file', '-', '--dry-run', '--output', 'json')
    doc = json.loads(out)
    assert code == 2  # an explicitly named run that cannot be reproduced
    assert [r['status'] for r in doc['runs']] == ['planned', 'error']


def test_a_registered_model_names_its_run(reference, capsys, tmp_path):
    run_id = reference('sklearn_regression')
    c = client()
    name = f'model-{tmp_path.name}'
    c.create_registered_model(name)
    version = c.create_model_version(name, f'runs:/{run_id}/model', run_id=run_id)
    c.set_registered_model_alias(name, 'champion', version.version)
    code, out, _ = reproduce(
        capsys,
        '--model',
        f'models:/{name}@champion',
        '--model',
        f'models:/{name}/99',
        '--dry-run',
        '--output',
        'json',
    )
    doc = json.loads(out)
    assert code == 2
    first, missing = doc['runs']
    assert (first['reference_run_id'], first['status']) == (run_id, 'planned')
    assert first['model'] == f'models:/{name}@champion (version {version.version})'
    assert missing['status'] == 'error'
    assert missing['message'].startswith(f'model models:/{name}/99 not found')


@pytest.mark.parametrize(
    'server',
    [
        pytest.param(False, id='sqlite'),
        pytest.param(True, id='server'),
    ],
)
def test_two_jobs_at_once_finish_every_run_nested(
    samples_repo, store, mlflow_server, capsys, tmp_path, monkeypatch, server
):
    uri = mlflow_server if server else store
    monkeypatch.setenv('MLFLOW_TRACKING_URI', uri)
    refs = [
        mlflow_run(str(samples_repo / sample), uri)
        for sample in ('sklearn_regression', 'history', 'sklearn_regression')
    ]
    name = f'jobs-{tmp_path.name}'
    code, out, err = reproduce(
        capsys, '--run_id', *refs, '--jobs', '2', '--experiment-name', name, '--output', 'json'
    )
    doc = json.loads(out)
    assert code == 0, err
    parent, children = batch_runs(name)
    assert len(children) == 3
    assert all(c.info.status == 'FINISHED' for c in children)
    assert all(c.data.tags['reproduce.status'] == 'equal' for c in children)
    assert parent.info.status == 'FINISHED'
    assert doc['summary']['equal'] == 3


def test_sigterm_mid_batch_leaves_nothing_running(samples_repo, capsys, tmp_path):
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    refs = [
        recorded_run(f'file://{samples_repo}#slow', commit, {'seconds': str(100 + i)})
        for i in range(3)
    ]
    name = f'sigterm-{tmp_path.name}'
    pid_file = tmp_path / 'pid'
    proc = subprocess.Popen(
        (
            sys.executable,
            str(SCRIPT),
            '--run_id',
            *refs,
            '--jobs',
            '2',
            '--experiment-name',
            name,
            '--output',
            'json',
        ),
        env={**os.environ, 'SAMPLE_PID_FILE': str(pid_file)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: (
                len(
                    [
                        r
                        for r in experiment_runs_or_empty(name)
                        if r.data.tags.get('mlflow.parentRunId')
                    ]
                )
                == 2
            ),
            90,
            'two projects to start',
        )
        wait_for(pid_file.exists, 60, 'a project to start')
        pid = int(pid_file.read_text() or 0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    doc = json.loads(out)
    assert proc.returncode == doc['exit_code'] == 143
    parent, children = batch_runs(name)
    assert parent.info.status == 'KILLED'
    assert len(children) == 2  # the third was never started, and left no run behind
    assert all(c.info.status == 'KILLED' for c in children)
    assert [r['status'] for r in doc['runs']] == ['terminated'] * 3
    assert doc['runs'][2]['reproduced_run_id'] is None
    assert not pid or process_gone(pid)
    assert not slow_projects_alive(('100', '101', '102'))


def experiment_runs_or_empty(name: str):
    c = client()
    return experiment_runs(name) if c.get_experiment_by_name(name) else []


def slow_projects_alive(seconds) -> list[str]:
    """Processes of this test's `slow` projects, told apart by their params."""
    out = subprocess.run(('ps', '-eo', 'args'), capture_output=True, text=True).stdout
    return [
        line
        for line in out.splitlines()
        if 'train.py' in line and any(line.rstrip().endswith(f'--seconds {s}') for s in seconds)
    ]

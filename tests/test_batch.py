"""Batch reproduction: many reference runs in one invocation,
chosen by ID, file, registered model or search, reproduced --jobs at a time
under one parent run, with one summary and one exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import (
    SCRIPT,
    add_project,
    artifact_bytes,
    batch_runs,
    client,
    experiment_runs_or_empty,
    git,
    mlflow_run,
    process_gone,
    recorded_run,
    reproduce,
    tagged_run,
    wait_for,
)

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
def test_a_batch_exits_with_the_code_of_its_worst_status(statuses, code):
    assert reproduce_run.STATUS_EXIT_CODES[reproduce_run.worst_status(statuses)] == code


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
        'stopped': 0,
        'not_started': 0,
        'skipped': 0,
        'own_reproductions': 0,
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
    summary = json.loads(artifact_bytes(parent.info.run_id, 'reproduce/summary.json'))
    assert summary['summary'] == doc['summary']
    assert '| Reference run' in parent.data.tags['mlflow.note.content']
    assert f'[4/4] {"f" * 32} error in ' in err
    assert f'[1/4] {equal} (' in err and ') equal in ' in err


def test_a_batch_table_ends_with_one_verdict_line(reference, capsys):
    """...and each reproduction's warnings name it."""
    runs = reference('sklearn_regression'), reference('nondeterministic')
    code, out, err = reproduce(capsys, '--run_id', *runs, '--tolerance', 'zzz*=0.1')
    assert code == 1
    warnings = sorted(line for line in err.splitlines() if 'warning:' in line)
    assert warnings == [
        f"reproduce_run: [{i}/2] {run[:8]}: warning: 'zzz*' matches no metric of either run"
        for i, run in enumerate(runs, 1)
    ]
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
    assert '| Reference run ' not in out and f'| {equal} ' not in out  # only runs not equal
    assert '\nNot listed: 1 run that came back equal (--output json lists every run)\n' in out
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


def test_order_by_repeated_breaks_ties_in_the_given_order(samples_repo, store, capsys, tmp_path):
    c = client()
    experiment_id = c.create_experiment(f'order-{tmp_path.name}')
    tags = {
        'mlflow.source.name': f'file://{samples_repo}#sklearn_regression',
        'mlflow.source.type': 'PROJECT',
        'mlflow.source.git.commit': git('rev-parse', 'HEAD', cwd=samples_repo),
    }
    made = {
        (r2, alpha): tagged_run(tags, {'alpha': alpha}, experiment_id, {'r2': [r2]})
        for r2, alpha in [(0.4, '0.2'), (0.5, '0.3'), (0.4, '0.1'), (0.5, '0.4')]
    }

    def order(*clauses: str) -> list[str]:
        argv = ['--from-experiment', f'order-{tmp_path.name}', '--output', 'json', '--dry-run']
        code, out, err = reproduce(capsys, *argv, *clauses)
        assert code == 0, err
        return [r['reference_run_id'] for r in json.loads(out)['runs']]

    by_r2_then_alpha = ['--order-by', 'metrics.r2 DESC', '--order-by', 'params.alpha ASC']
    assert order(*by_r2_then_alpha) == [
        made[0.5, '0.3'],
        made[0.5, '0.4'],
        made[0.4, '0.1'],
        made[0.4, '0.2'],
    ]
    by_alpha = ['--order-by', 'params.alpha DESC']
    assert order(*by_alpha) == [
        made[0.5, '0.4'],
        made[0.5, '0.3'],
        made[0.4, '0.2'],
        made[0.4, '0.1'],
    ]
    # The default is the newest first.
    assert order() == list(reversed(made.values()))


@pytest.mark.slow
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
    # Without a filter, the search meets the runs it must skip, and says why;
    # the tool's own reproduction it counts, unlisted.
    code, out, _ = reproduce(
        capsys, '--from-experiment', name, '--since', '1h', '--output', 'json', '--dry-run'
    )
    doc = json.loads(out)
    assert code == 0
    assert [r['reference_run_id'] for r in doc['runs']] == [made['alpha2'], made['alpha1']]
    assert doc['summary']['own_reproductions'] == 1
    assert {s['experiment'] for s in doc['skipped']} == {name}
    reasons = {s['run_id']: s['reason'] for s in doc['skipped']}
    assert reasons == {
        made['notebook']: 'it was not launched as an MLflow Project (tag mlflow.source.type is '
        'None) and recorded no remote (tag mlflow.source.git.repoURL): pass --uri with the git '
        'URL of its code',
        made['failed']: 'its status is FAILED, not FINISHED',
    }
    code, out, _ = reproduce(
        capsys, '--from-experiment', name, '--since', '1s', '--output', 'json', '--dry-run'
    )
    assert json.loads(out)['runs'] == []  # --since: nothing started in the last second


def test_sample_with_a_seed_chooses_the_same_runs_twice(samples_repo, capsys, tmp_path):
    name = f'sample-{tmp_path.name}'
    experiment_id = client().create_experiment(name)
    tags = {  # what `mlflow run` records: the sample chooses among runs, it runs none
        'mlflow.source.name': f'file://{samples_repo}#sklearn_regression',
        'mlflow.source.type': 'PROJECT',
        'mlflow.source.git.commit': git('rev-parse', 'HEAD', cwd=samples_repo),
        'mlflow.project.entryPoint': 'main',
    }
    for alpha in ('0.1', '0.2', '0.3', '0.4'):
        tagged_run(tags, {'alpha': alpha}, experiment_id)

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


def test_a_run_chosen_by_search_names_no_model(samples_repo, capsys, tmp_path):
    """JSON `model` is the --model version that chose a run, else null: not the
    name of a run that a search chose."""
    name = f'named-{tmp_path.name}'
    experiment_id = client().create_experiment(name)
    tags = {  # what `mlflow run` records
        'mlflow.source.name': f'file://{samples_repo}#sklearn_regression',
        'mlflow.source.type': 'PROJECT',
        'mlflow.source.git.commit': git('rev-parse', 'HEAD', cwd=samples_repo),
        'mlflow.project.entryPoint': 'main',
        'mlflow.runName': 'honorable-carp-84',
    }
    run_id = tagged_run(tags, {'alpha': '0.1'}, experiment_id)
    code, out, err = reproduce(capsys, '--from-experiment', name, '--dry-run', '--output', 'json')
    assert code == 0, err
    [run] = json.loads(out)['runs']
    assert (run['reference_run_id'], run['model']) == (run_id, None)


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


@pytest.mark.slow
@pytest.mark.parametrize(
    'server',
    [
        pytest.param(False, id='sqlite'),
        pytest.param(True, id='server'),
    ],
)
def test_two_jobs_at_once_finish_every_run_nested(
    samples_repo,
    sqlite_store,
    mlflow_server,
    sqlite_reference,
    reference,
    capsys,
    tmp_path,
    monkeypatch,
    server,
):
    uri = mlflow_server if server else sqlite_store
    made = reference if server else sqlite_reference  # made once per test process
    monkeypatch.setenv('MLFLOW_TRACKING_URI', uri)
    first = client().get_run(made('sklearn_regression'))
    second = recorded_run(  # one project's second run, recorded as `mlflow run` records it
        first.data.tags['mlflow.source.name'],
        first.data.tags['mlflow.source.git.commit'],
        first.data.params,
        metrics=first.data.metrics,
    )
    refs = [first.info.run_id, made('history'), second]
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
    assert (doc['summary']['stopped'], doc['summary']['not_started']) == (2, 1)
    assert (parent.data.metrics['runs_stopped'], parent.data.metrics['runs_not_started']) == (2, 1)
    assert not pid or process_gone(pid)
    assert not slow_projects_alive(('100', '101', '102'))


def slow_projects_alive(seconds) -> list[str]:
    """Processes of this test's `slow` projects, told apart by their params."""
    out = subprocess.run(('ps', '-eo', 'args'), capture_output=True, text=True).stdout
    return [
        line
        for line in out.splitlines()
        if 'train.py' in line and any(line.rstrip().endswith(f'--seconds {s}') for s in seconds)
    ]


# --- what a batch says, and how it takes many jobs ---------------------------------------


def cheap_search_setup(samples_repo, name: str) -> dict[str, list[str]]:
    """An experiment with two runs to plan and three to skip for two reasons,
    made without running anything."""
    c = client()
    experiment_id = c.create_experiment(name)
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    made: dict[str, list[str]] = {'planned': [], 'notebook': [], 'running': []}
    for alpha in ('0.1', '0.2'):
        run = c.create_run(
            experiment_id,
            tags={
                'mlflow.source.name': f'file://{samples_repo}#sklearn_regression',
                'mlflow.source.type': 'PROJECT',
                'mlflow.source.git.commit': commit,
                'mlflow.project.entryPoint': 'main',
            },
        )
        c.log_param(run.info.run_id, 'alpha', alpha)
        c.set_terminated(run.info.run_id)
        made['planned'].append(run.info.run_id)
    for _ in range(2):
        notebook = c.create_run(experiment_id)
        c.set_terminated(notebook.info.run_id)
        made['notebook'].append(notebook.info.run_id)
    made['running'].append(c.create_run(experiment_id).info.run_id)
    return made


NOT_A_PROJECT = (
    'it was not launched as an MLflow Project (tag mlflow.source.type is None) and recorded no '
    'remote (tag mlflow.source.git.repoURL): pass --uri with the git URL of its code'
)


def test_a_batch_dry_run_ends_with_what_it_planned(samples_repo, capsys, tmp_path):
    name = f'dry-{tmp_path.name}'
    made = cheap_search_setup(samples_repo, name)
    code, out, err = reproduce(capsys, '--from-experiment', name, '--dry-run')
    assert code == 0, err
    lines = out.splitlines()
    assert lines[-1] == 'Planned: 2 runs, 3 skipped'
    assert lines[0] == 'Dry run: nothing was run and no run was created.'
    assert not any(line.startswith(('Runs equal:', 'Reproduced ')) for line in lines)
    # one line per reason, with a count, in the order the reasons came
    skipped = [line for line in lines if line.startswith('Skipped ')]
    assert skipped == [
        'Skipped 1 run: its status is RUNNING, not FINISHED',
        f'Skipped 2 runs: {NOT_A_PROJECT}',
    ]

    code, out, _ = reproduce(capsys, '--from-experiment', name, '--dry-run', '--output', 'markdown')
    assert code == 0
    assert out.startswith('**Batch dry run**: Planned: 2 runs, 3 skipped\n')
    assert out.endswith('\nPlanned: 2 runs, 3 skipped\n')
    assert f'- skipped 2 runs: {NOT_A_PROJECT}\n' in out
    assert 'Runs equal' not in out

    code, out, _ = reproduce(capsys, '--from-experiment', name, '--dry-run', '--output', 'json')
    doc = json.loads(out)
    assert code == doc['exit_code'] == 0
    assert sorted(s['run_id'] for s in doc['skipped']) == sorted(
        made['notebook'] + made['running']
    )  # JSON lists every skipped run
    assert doc['summary']['planned'] == 2 and doc['summary']['skipped'] == 3
    assert sorted(r['reference_run_id'] for r in doc['runs']) == sorted(made['planned'])


def test_a_batch_dry_run_with_an_unknown_run_says_so_in_its_plan(reference, capsys):
    equal = reference('sklearn_regression')
    code, out, err = reproduce(capsys, '--run_id', equal, 'e' * 32, '--dry-run')
    assert code == 2, err  # a named run that cannot be reproduced
    assert out.splitlines()[-1] == 'Planned: 1 run, 1 error'


def test_progress_names_each_run_in_full_with_its_name(reference, capsys):
    equal = reference('sklearn_regression')
    run_name = client().get_run(equal).info.run_name
    code, out, err = reproduce(capsys, '--run_id', equal, 'f' * 32, '--output', 'json')
    doc = json.loads(out)
    assert code == 2, err
    new = doc['runs'][0]['reproduced_run_id']
    lines = [line for line in err.splitlines() if line.startswith('[')]
    assert f'[1/2] {equal} ({run_name}) started' in lines
    assert any(
        line.startswith(f'[1/2] {equal} ({run_name}) equal in ') and line.endswith(f' -> {new}')
        for line in lines
    ), lines
    assert f'[2/2] {"f" * 32} started' in lines
    assert any(line.startswith(f'[2/2] {"f" * 32} error in ') for line in lines), lines


def test_quiet_hides_progress_but_never_errors(reference, capsys):
    failing = reference('failing', fails=True)
    code, out, err = reproduce(capsys, '--run_id', failing, 'f' * 32, '--quiet', '--output', 'json')
    doc = json.loads(out)
    assert code == doc['exit_code'] == 2
    failed, missing = doc['runs']
    lines = err.splitlines()
    assert not any(line.startswith('[') for line in lines)  # no progress
    assert [
        line for line in lines if line.startswith(('reproduce_run: failed', 'reproduce_run: error'))
    ] == [
        f'reproduce_run: failed: {failing}: {failed["message"]}',
        f'reproduce_run: error: {"f" * 32}: {missing["message"]}',
    ]


@pytest.mark.slow
def test_a_thousand_jobs_on_sqlite_run_eight_at_once_and_all_succeed(
    own_repo, sqlite_store, capsys, tmp_path, monkeypatch
):
    """More writers at once than sqlite's connection pool takes made
    reproductions fail; the store's cap holds them back instead, said once."""
    monkeypatch.setenv('MLFLOW_TRACKING_URI', sqlite_store)
    add_project(
        own_repo,
        'sleeper',
        {
            'MLproject': 'name: sleeper\nentry_points:\n  main:\n    command: "sleep 4"\n',
        },
    )
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    refs = [recorded_run(f'file://{own_repo}#sleeper', commit) for _ in range(12)]
    name = f'jobs-{tmp_path.name}'
    code, out, err = reproduce(
        capsys, '--run_id', *refs, '--jobs', '1000', '--experiment-name', name, '--output', 'json'
    )
    doc = json.loads(out)
    assert code == doc['exit_code'] == 0, err
    assert doc['summary']['equal'] == 12
    warning = (
        'reproduce_run: warning: --jobs 1000: the sqlite store takes 8 reproductions at once; '
        'the others wait their turn'
    )
    assert err.count(warning) == 1
    _, children = batch_runs(name)
    assert len(children) == 12
    spans = [(c.info.start_time, c.info.end_time) for c in children]
    most = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert most <= reproduce_run.SQLITE_JOBS


def report_of(status: str, message: str | None = None) -> reproduce_run.Report:
    return reproduce_run.Report(
        status=status,
        reference_run_id='a' * 32,
        message=message,
    )


@pytest.mark.parametrize(
    ('statuses', 'skipped', 'line'),
    [
        pytest.param(['planned'] * 12, 3, 'Planned: 12 runs, 3 skipped', id='planned-and-skipped'),
        pytest.param(['planned'], 0, 'Planned: 1 run', id='one'),
        pytest.param(['planned', 'error'], 1, 'Planned: 1 run, 1 error, 1 skipped', id='an-error'),
        pytest.param([], 0, 'Planned: 0 runs', id='nothing'),
    ],
)
def test_planned_line(statuses, skipped, line):
    batch = reproduce_run.BatchReport(
        tuple(report_of(s) for s in statuses),
        tuple({'run_id': str(i), 'reason': 'r'} for i in range(skipped)),
        dry_run=True,
    )
    assert reproduce_run.planned_line(batch) == line
    assert reproduce_run.format_batch_text(batch).splitlines()[-1] == line
    assert reproduce_run.format_batch_markdown(batch).splitlines()[-1] == line


@pytest.mark.parametrize(
    ('reasons', 'lines'),
    [
        pytest.param([], [], id='none'),
        pytest.param(
            ['x', 'y', 'x', 'x'],
            ['Skipped 3 runs: x', 'Skipped 1 run: y'],
            id='counted-in-first-order',
        ),
    ],
)
def test_skipped_lines_collapse_by_reason(reasons, lines):
    skipped = [{'run_id': str(i), 'reason': r} for i, r in enumerate(reasons)]
    assert reproduce_run.skipped_lines(skipped) == lines


@pytest.mark.parametrize(
    ('reports', 'stopped', 'not_started'),
    [
        pytest.param([('equal', None)], 0, 0, id='no-signal'),
        pytest.param(
            [('terminated', 'terminated by a signal'), ('terminated', 'not started')],
            1,
            1,
            id='one-stopped-one-never-started',
        ),
        pytest.param([('interrupted', 'not started')] * 3, 0, 3, id='none-started'),
    ],
)
def test_a_signal_counts_stopped_and_not_started(reports, stopped, not_started):
    batch = reproduce_run.BatchReport(tuple(report_of(s, m) for s, m in reports))
    assert (batch.stopped, batch.not_started) == (stopped, not_started)
    summary = reproduce_run.batch_json(batch)['summary']
    assert (summary['stopped'], summary['not_started']) == (stopped, not_started)
    record = reproduce_run.batch_record(batch, 'p')
    assert (record.metrics['runs_stopped'], record.metrics['runs_not_started']) == (
        stopped,
        not_started,
    )


# --- runs files that cannot be read, and an empty batch ---------------------------


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

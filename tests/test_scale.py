"""Big selections: thousands of reference runs are read in a few
searches, planned as the earlier ones end, kept small once judged, and the
table lists only the runs that did not come back equal."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from helpers import (
    client,
    fill_store,
    git,
    reproduce,
    start_mlflow_server,
    stop,
    tagged_run,
)
from proxy import proxy_in_front_of

import reproduce_run as rr
from reproduce_run import Chosen, Probe, Report

A, B, C = 'a' * 32, 'b' * 32, 'c' * 32


# --- planning: a batch plans a window of probes ahead of its results --------


def report(run_id, status='equal', **fields):
    return Report(status=status, reference_run_id=run_id, **fields)


@pytest.mark.parametrize(
    ('window', 'ended', 'planned'),
    [
        pytest.param(2, [0], [[A, B], [], [C]], id='one-more-as-each-ends'),
        pytest.param(2, [0, 0], [[A, B], [], [], [C]], id='nothing-while-the-window-is-full'),
        pytest.param(5, [], [[A, B, C]], id='a-window-wider-than-the-list'),
        pytest.param(1, [1, 1], [[A], [B], [C]], id='one-at-a-time'),
    ],
)
def test_a_batch_plans_a_window_ahead_of_its_results(window, ended, planned):
    """ended[i]: how many probes end before the planner is asked again."""
    planner = rr.BatchPlanner([Chosen(A), Chosen(B), Chosen(C)], [], window=window)
    assert planner.total == 3
    results: list = []
    asked = [[p.run_id for p in planner.next_probes(results)]]
    probes = [Probe(r) for r in asked[0]]
    for n in [*ended, 1, 1, 1]:
        for _ in range(n):
            if len(results) < len(probes):
                probe = probes[len(results)]
                results.append((probe, report(probe.run_id)))
        new = planner.next_probes(results)
        probes += new
        asked.append([p.run_id for p in new])
    assert [step for step in asked if step] == [step for step in planned if step]
    assert asked[: len(planned)] == planned
    assert planner.next_probes(results) == []


def test_after_a_signal_the_rest_of_a_batch_is_planned_to_be_reported_not_started():
    planner = rr.BatchPlanner([Chosen(A), Chosen(B), Chosen(C)], [], window=1)
    assert [p.run_id for p in planner.next_probes([])] == [A]
    assert [p.run_id for p in planner.rest()] == [B, C]
    assert planner.rest() == []


def test_a_batch_lets_go_of_each_chosen_run_once_planned():
    """The list of chosen runs (a dry run's holds each run the search read)
    is the planner's: an entry planned is dropped, its run now the probe's."""
    from mlflow.entities import Run, RunData, RunInfo

    runs = {i: Run(RunInfo(i, '0', 'u', 'FINISHED', 0, 1, 'active'), RunData()) for i in (A, B, C)}
    chosen = [Chosen(i, reference=run) for i, run in runs.items()]
    planner = rr.BatchPlanner(chosen, [], window=2)
    probes = planner.next_probes([])
    assert [p.reference for p in probes] == [runs[A], runs[B]]
    assert chosen == [None, None, None]  # read in one step: all are the probes' now
    assert [p.reference for p in planner.rest()] == [runs[C]]


@pytest.mark.parametrize(
    ('n', 'jobs', 'dry_run', 'lanes'),
    [
        pytest.param(3, 2, False, [[0], [1], [2]], id='a-thread-task-a-probe'),
        pytest.param(5, 2, True, [[0, 2, 4], [1, 3]], id='dry-run-every-jobs-th'),
        pytest.param(4, 1, True, [[0, 1, 2, 3]], id='dry-run-one-job-one-task'),
        pytest.param(2, 4, True, [[0], [1]], id='dry-run-no-empty-task'),
        pytest.param(0, 2, True, [], id='nothing'),
    ],
)
def test_a_dry_run_hands_its_threads_a_few_tasks_not_one_a_probe(n, jobs, dry_run, lanes):
    probes = [(i, Probe(f'{i:032x}')) for i in range(n)]
    got = rr._lanes(probes, jobs, dry_run)
    assert [[i for i, _ in lane] for lane in got] == lanes


def test_a_batch_keeps_no_histories_nor_the_reference_runs_data(tmp_path):
    import mlflow

    c = mlflow.MlflowClient(f'sqlite:///{tmp_path / "m.db"}')
    run = c.create_run('0', tags={'big': 'x' * 5000})
    c.log_param(run.info.run_id, 'alpha', '0.1')
    run = c.get_run(run.info.run_id)
    source = rr.Source('file:///repo', '', 'abc')
    plan = rr.Plan(run, source, '/tmp/p', 'main', 'local', 'e', rr.Params({}, {}), {}, 'true')
    kept = rr.BatchPlanner([], []).kept(report(A, plan=plan, histories=({'m': []}, {'m': []})))
    assert kept.histories is None
    assert kept.plan.reference.info == run.info
    assert kept.plan.reference.data.tags == {} and kept.plan.reference.data.params == {}
    assert kept.reference_status == 'RUNNING'
    assert rr.report_json(kept) == rr.report_json(report(A, plan=plan))


# --- the report lists the runs that did not come back equal ----------------


def batch(*statuses, dry_run=False):
    ids = [f'{i:032x}' for i in range(len(statuses))]
    return rr.BatchReport(
        tuple(
            report(i, s, reference_run_name=f'name-{n}')
            for n, (i, s) in enumerate(zip(ids, statuses, strict=True))
        ),
        dry_run=dry_run,
    ), ids


def table_ids(text: str) -> list[str]:
    return [line.split('|')[1].strip() for line in text.splitlines() if line.startswith('| 0')]


@pytest.mark.parametrize(
    ('statuses', 'listed', 'unlisted'),
    [
        pytest.param(
            ['equal', 'differ', 'equal', 'error'],
            [1, 3],
            'Not listed: 2 runs that came back equal (--output json lists every run)',
            id='mixed',
        ),
        pytest.param(
            ['equal'] * 3,
            [],
            'Not listed: 3 runs that came back equal (--output json lists every run)',
            id='all-equal',
        ),
        pytest.param(['failed', 'differ'], [0, 1], None, id='none-equal'),
    ],
)
def test_the_table_lists_only_the_runs_that_did_not_come_back_equal(statuses, listed, unlisted):
    b, ids = batch(*statuses)
    for text in (rr.format_batch_text(b), rr.format_batch_markdown(b)):
        assert table_ids(text) == [ids[i] for i in listed]
        assert (unlisted in text.splitlines()) if unlisted else 'Not listed' not in text
        assert ('| Reference run' in text) == bool(listed)
    markdown = rr.format_batch_markdown(b).splitlines()
    if unlisted and listed:  # a blank line ends the Markdown table before it
        assert markdown[markdown.index(unlisted) - 1] == ''
    assert [r['reference_run_id'] for r in rr.batch_json(b)['runs']] == ids  # JSON lists all


@pytest.mark.parametrize(
    'statuses',
    [
        pytest.param(['equal', 'differ', 'error', 'planned'], id='several'),
        pytest.param([], id='none'),
    ],
)
def test_the_json_of_a_batch_is_dumped_run_by_run_as_one_document(statuses):
    b, _ = batch(*statuses)
    b = rr.BatchReport(
        tuple(dataclasses.replace(r, message='line 1\nline "2"') for r in b.reports),
        skipped=({'run_id': C, 'reason': 'why'},),
    )
    assert rr.format_batch_json(b) == json.dumps(rr.batch_json(b), indent=2, allow_nan=False)
    assert json.loads(rr.format_batch_json(b))['summary']['total'] == len(statuses)


@pytest.mark.parametrize(
    'value',
    [
        pytest.param({'a': {'b': [1, 2.5, None, True, False]}, 'c': []}, id='nested'),
        pytest.param({'empty': {}, 'none': [], 'tuple': (1, ('x',))}, id='empty-and-tuples'),
        pytest.param(['é "q" \\ \n\t\x00 \u2028 \U0001f600'], id='escapes'),
        pytest.param([-0.0, 1e300, 1e-300, 0.1, 10**30, -7], id='numbers'),
        pytest.param({2: 'a', 2.5: 'b', True: 'c', None: 'd'}, id='keys-not-str'),
        pytest.param([type('S', (str,), {})('sub'), type('I', (int,), {})(3)], id='subclasses'),
        pytest.param('', id='a-bare-string'),
        pytest.param({}, id='an-empty-document'),
    ],
)
@pytest.mark.parametrize('newline', ['\n', '\n    '])
def test_indented_json_is_json_dumps_with_an_indent_of_two(value, newline):
    expected = json.dumps(value, indent=2, allow_nan=False).replace('\n', newline)
    assert rr.indented_json(value, newline) == expected


@pytest.mark.parametrize('value', [float('nan'), {'x': [float('inf')]}, {'x': object()}])
def test_indented_json_refuses_what_json_dumps_refuses(value):
    with pytest.raises((ValueError, TypeError)) as expected:
        json.dumps(value, indent=2, allow_nan=False)
    with pytest.raises(expected.type, match=re.escape(str(expected.value))):
        rr.indented_json(value)


# --- a dry run of an experiment plans from the search's own reading ---------


def project_runs(samples_repo: Path, name: str, n: int) -> list[str]:
    """n FINISHED project runs of the sklearn_regression sample, alpha 0.1 to n/10."""
    experiment_id = client().create_experiment(name)
    tags = {
        'mlflow.source.name': f'file://{samples_repo}#sklearn_regression',
        'mlflow.source.type': 'PROJECT',
        'mlflow.source.git.commit': git('rev-parse', 'HEAD', cwd=samples_repo),
        'mlflow.project.entryPoint': 'main',
    }
    return [tagged_run(tags, {'alpha': f'0.{i + 1}'}, experiment_id) for i in range(n)]


def test_a_dry_run_of_an_experiment_reads_its_runs_once(
    samples_repo, store, capsys, tmp_path, monkeypatch
):
    """The search's pages are the runs the plans read: no second search by
    run ID, no get_run (10,000 runs took twice a plain search that way)."""
    ids = project_runs(samples_repo, f'once-{tmp_path.name}', 3)
    with proxy_in_front_of(store) as proxy:
        monkeypatch.setenv('MLFLOW_TRACKING_URI', proxy.url)
        code, out, err = reproduce(
            capsys, '--from-experiment', f'once-{tmp_path.name}', '--dry-run', '--output', 'json'
        )
        requests = list(proxy.seen)
    doc = json.loads(out)
    assert code == doc['exit_code'] == 0, err
    passed = {r['reference_run_id']: r['params']['passed'] for r in doc['runs']}
    assert passed == {run_id: {'alpha': f'0.{i + 1}'} for i, run_id in enumerate(ids)}
    assert proxy.count('runs/search') == 1, requests  # the experiment's one page
    assert not [r for r in requests if 'runs/get' in r or 'experiments/search' in r], requests


def test_a_selection_spares_the_collector_what_lived_before_it(store):
    """What lives when a selection starts (MLflow's, SQLAlchemy's objects)
    lives as long as the tool: frozen, the collector's full passes over a
    big selection skip it (1.4 s of a 10,000-run dry run)."""
    import gc

    gc.unfreeze()
    try:
        chosen = rr.select_runs(client(), rr.Selection(run_ids=(A,)), False, store).chosen
        assert chosen == [Chosen(A)]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


# --- thousands of runs, against a real server --------------------------------


@pytest.fixture(scope='module')
def big_server(tmp_path_factory, samples_repo):
    """A real `mlflow server` over an experiment of 10,000 runs."""
    where = tmp_path_factory.mktemp('big')
    ids = fill_store(where / 'server.db', samples_repo, 'scale', 10_000)
    server = start_mlflow_server(where)
    yield server.url, ids
    stop(server.proc)


@pytest.mark.slow
def test_a_dry_run_of_ten_thousand_ids_reads_them_in_a_few_searches(
    big_server, capsys, tmp_path, monkeypatch
):
    url, ids = big_server
    runs_file = tmp_path / 'runs.txt'
    runs_file.write_text('\n'.join(ids) + '\n')
    with proxy_in_front_of(url) as proxy:
        monkeypatch.setenv('MLFLOW_TRACKING_URI', proxy.url)
        code, out, err = reproduce(
            capsys, '--runs-file', str(runs_file), '--dry-run', '--output', 'json'
        )
        requests = list(proxy.seen)
    doc = json.loads(out)
    assert code == doc['exit_code'] == 0, err
    assert doc['summary']['planned'] == doc['summary']['total'] == 10_000
    assert [r['reference_run_id'] for r in doc['runs']] == ids  # in the order given
    assert {r['status'] for r in doc['runs']} == {'planned'}
    assert doc['runs'][5]['params']['passed'] == {'alpha': '0.1'}
    # Not a request per run: a search per 500, and no get_run at all.
    assert not [r for r in requests if 'runs/get' in r]
    searches = [r for r in requests if 'runs/search' in r]
    assert len(searches) == 10_000 // rr.READ_BATCH
    assert len(requests) < 50, requests
    progress = [line for line in err.splitlines() if line.startswith('[')]
    assert f'[10000/10000] {ids[-1]} (scale-9999) planned in 0 s' in progress
    assert not any(line.startswith('Traceback') for line in err.splitlines())


@pytest.mark.slow
def test_an_experiment_of_five_thousand_runs_is_searched_and_planned(
    big_server, capsys, monkeypatch
):
    url, ids = big_server
    monkeypatch.setenv('MLFLOW_TRACKING_URI', url)
    code, out, err = reproduce(
        capsys, '--from-experiment', 'scale', '--max-runs', '5000', '--dry-run', '--quiet'
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == 'Dry run: nothing was run and no run was created.'
    assert lines[-1] == 'Planned: 5000 runs'
    planned = [line for line in lines if line.startswith('| ') and ' planned ' in line]
    assert len(planned) == 5000
    assert len({line.split('|')[1].strip() for line in planned}) == 5000
    assert {line.split('|')[1].strip() for line in planned} <= set(ids)

"""--bisect: the first commit that changed a run's metrics.  The search
itself in tables, without MLflow or git; then real bisections of a real
repository whose commits change a tiny project's metric."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
from helpers import (
    JSON_DOC,
    SCRIPT,
    TINY,
    add_commits,
    build_repo,
    client,
    experiment_runs,
    experiment_runs_or_empty,
    first_spans,
    git,
    mlflow_run,
    recorded_run,
    reproduce,
    section,
    start_mlflow_server,
    start_tool,
    stop,
    tables,
    wait_for,
)

from reproduce_run import (
    BAD,
    GOOD,
    NOT_REPRODUCED,
    SKIP,
    STATUS_EXIT_CODES,
    Bisections,
    BisectReport,
    CommitInfo,
    Finding,
    Report,
    Rules,
    commit_outcome,
    finding,
    lost_server,
    main,
    most_commits,
    next_commits,
    run_links,
    summary_line,
)

# --- the search: pure functions -----------------------------------------------


def _all(n: int, outcome: str, **others: str) -> dict[int, str]:
    return {i: others.get(f'c{i}', outcome) for i in range(n + 1)}


@pytest.mark.parametrize(
    ('n', 'outcomes', 'jobs', 'expected'),
    [
        pytest.param(12, {}, 1, [0], id='reference-commit-first'),
        pytest.param(12, {0: GOOD}, 1, [12], id='then-the-target'),
        pytest.param(12, {}, 2, [0, 12], id='two-jobs-probe-both-ends-at-once'),
        pytest.param(12, {}, 3, [0, 12, 6], id='three-jobs-also-cut-the-path'),
        pytest.param(12, {0: BAD}, 1, [], id='reference-does-not-reproduce-stop'),
        pytest.param(12, {0: SKIP}, 1, [], id='reference-cannot-run-stop'),
        pytest.param(12, {0: GOOD, 12: GOOD}, 1, [], id='nothing-changed-stop'),
        pytest.param(12, {0: GOOD, 12: BAD}, 1, [6], id='midpoint'),
        pytest.param(12, {0: GOOD, 12: BAD, 6: GOOD}, 1, [9], id='upper-half'),
        pytest.param(12, {0: GOOD, 12: BAD, 6: BAD}, 1, [3], id='lower-half'),
        pytest.param(12, {0: GOOD, 12: BAD, 6: SKIP}, 1, [5], id='skipped-midpoint-neighbour'),
        pytest.param(12, {0: GOOD, 12: BAD}, 3, [3, 6, 9], id='three-cuts-four-parts'),
        pytest.param(12, {0: GOOD, 12: BAD, 8: BAD, 7: GOOD}, 1, [], id='adjacent-done'),
        pytest.param(12, {0: GOOD, 12: BAD, 8: BAD, 6: GOOD, 7: SKIP}, 1, [], id='only-skips-left'),
        pytest.param(2, {0: GOOD, 2: BAD}, 3, [1], id='one-left-many-jobs'),
        pytest.param(1, {0: GOOD, 1: BAD}, 1, [], id='target-is-the-next-commit'),
        pytest.param(12, {0: GOOD, 12: SKIP}, 1, [6], id='target-cannot-run-search-anyway'),
    ],
)
def test_next_commits(n, outcomes, jobs, expected):
    assert next_commits(n, outcomes, jobs) == expected


@pytest.mark.parametrize(
    ('n', 'outcomes', 'expected'),
    [
        pytest.param(12, {0: GOOD, 12: GOOD}, Finding(None, ()), id='nothing-changed'),
        pytest.param(12, {0: BAD}, Finding(None, (), NOT_REPRODUCED), id='not-reproduced'),
        pytest.param(12, {0: GOOD, 12: BAD, 7: GOOD, 8: BAD}, Finding(8, (8,)), id='first-changed'),
        pytest.param(1, {0: GOOD, 1: BAD}, Finding(1, (1,)), id='the-target-itself'),
        pytest.param(
            12,
            {0: GOOD, 12: BAD, 6: GOOD, 7: SKIP, 8: BAD},
            Finding(None, (7, 8)),
            id='skip-leaves-a-range',
        ),
        pytest.param(
            12,
            {0: GOOD, 12: BAD, 6: GOOD, 8: BAD},
            Finding(None, (7, 8)),
            id='stopped-midway-untested-are-candidates',
        ),
        pytest.param(
            12,
            {0: GOOD, 12: BAD, 6: GOOD, 7: SKIP, 8: SKIP, 9: BAD},
            Finding(None, (7, 8, 9)),
            id='two-skips-three-candidates',
        ),
    ],
)
def test_finding(n, outcomes, expected):
    assert finding(n, outcomes) == expected


def simulate(n: int, truth: dict[int, str], jobs: int) -> tuple[Finding, int, int]:
    """Bisect a path whose commits say `truth`: (finding, probes, rounds)."""
    outcomes: dict[int, str] = {}
    probes = rounds = 0
    while chosen := next_commits(n, outcomes, jobs):
        assert not set(chosen) & set(outcomes), 'a commit is probed twice'
        assert len(chosen) <= max(jobs, 2 if jobs > 1 else 1) + (jobs > 2)
        outcomes.update({i: truth[i] for i in chosen})
        probes, rounds = probes + len(chosen), rounds + 1
    return finding(n, outcomes), probes, rounds


@pytest.mark.parametrize('n', [1, 2, 3, 5, 12, 31, 32, 64])
def test_search_finds_every_change_within_log2_n_plus_2_probes(n):
    for change in range(1, n + 1):
        truth = {i: GOOD if i < change else BAD for i in range(n + 1)}
        found, probes, _ = simulate(n, truth, 1)
        assert found == Finding(change, (change,))
        assert probes <= math.ceil(math.log2(n)) + 2


@pytest.mark.parametrize('jobs', [2, 3, 4])
@pytest.mark.parametrize('n', [5, 12, 32])
def test_more_jobs_reach_the_same_answer_in_fewer_rounds(n, jobs):
    for change in range(1, n + 1):
        truth = {i: GOOD if i < change else BAD for i in range(n + 1)}
        one, _, rounds_one = simulate(n, truth, 1)
        many, _, rounds_many = simulate(n, truth, jobs)
        assert many == one
        assert rounds_many <= rounds_one


@pytest.mark.parametrize('jobs', [1, 3])
def test_a_skip_next_to_the_change_gives_a_two_commit_range(jobs):
    truth = {**{i: GOOD for i in range(8)}, 7: SKIP, **{i: BAD for i in range(8, 13)}}
    found, _, _ = simulate(12, truth, jobs)
    assert found == Finding(None, (7, 8))


def _report(status: str, ref: float, new: float, params=('data',)) -> Report:
    histories = ({'score': [(0, ref, 0)]}, {'score': [(0, new, 0)]})
    plan = types.SimpleNamespace(logged_params=dict.fromkeys(params, ''))
    return Report(
        status=status,
        reference_run_id='r',
        plan=plan,
        histories=histories,
        reference_status='FINISHED',
    )


@pytest.mark.parametrize(
    ('reports', 'expected'),
    [
        pytest.param([_report('equal', 1, 1)], GOOD, id='equal'),
        pytest.param([_report('differ', 1, 2)], BAD, id='differ'),
        pytest.param([Report(status='failed', reference_run_id='r')], SKIP, id='fail'),
        pytest.param([Report(status='error', reference_run_id='r')], SKIP, id='error'),
        pytest.param([_report('equal', 1, 1, ('data', 'new'))], SKIP, id='params-changed'),
        pytest.param(
            [_report('differ', 1.0, x) for x in (0.99, 1.0, 1.01)], GOOD, id='repeat-within-range'
        ),
        pytest.param(
            [_report('differ', 1.0, x) for x in (1.98, 2.0, 2.02)], BAD, id='repeat-drifted'
        ),
        pytest.param(
            [
                _report('differ', 1.0, 1.01),
                Report(status='failed', reference_run_id='r'),
                _report('differ', 1.0, 0.99),
            ],
            GOOD,
            id='repeat-judges-those-that-ran',
        ),
    ],
)
def test_commit_outcome(reports, expected):
    assert commit_outcome(reports, ('data',), Rules()) == expected


# --- real bisections ----------------------------------------------------------


@pytest.fixture(scope='module')
def linear(tmp_path_factory, store):
    """A reference run, then 4 commits, of which the 3rd doubles the metric."""
    repo, first = build_repo(tmp_path_factory.mktemp('linear'), TINY)
    ref = mlflow_run(str(repo / 'tiny'), store)
    return repo, [first, *add_commits(repo, 4, change_at=3)], ref


def tiny_reference(repo: Path, commit: str, score: float = 1.0) -> str:
    """A run of the tiny project at `commit`, recorded without running it: for
    the tests whose point is the bisection, not how the reference was made."""
    return recorded_run(f'file://{repo}#tiny', commit, {'data': ''}, metrics={'score': score})


def bisect_runs(name: str):
    """(parent, probes) of the one bisection in experiment `name`."""
    runs = experiment_runs(name)
    [parent] = [r for r in runs if r.data.tags.get('reproduce.bisect') == 'true']
    probes = [r for r in runs if r.data.tags.get('mlflow.parentRunId') == parent.info.run_id]
    return parent, probes


@pytest.mark.slow
def test_bisect_finds_the_commit_that_changed_the_metric(linear, capsys, tmp_path):
    repo, commits, ref = linear
    name = f'bisect-{tmp_path.name}'
    code, out, err = reproduce(
        capsys, '--run_id', ref, '--bisect', '--experiment-name', name, '--output', 'json'
    )
    assert code == 1, err
    doc = json.loads(out)
    bisect = doc['bisect']
    assert doc['exit_code'] == 1
    assert bisect['first_changed_commit'] == commits[3]
    assert bisect['candidates'] == [commits[3]]
    assert (bisect['reference_commit'], bisect['target_commit']) == (commits[0], commits[4])
    assert bisect['reference_run_id'] == ref
    assert bisect['skipped'] == [] and bisect['reason'] is None
    probes = bisect['probes']
    assert len(probes) <= math.ceil(math.log2(4)) + 2
    assert set(probes[0]) == {
        'commit',
        'subject',
        'status',
        'equal',
        'metrics_equal',
        'changed_metrics',
        'changed_params',
        'reproduced_run_id',
        'prefix',
    }
    assert [p['commit'] for p in probes] == sorted((p['commit'] for p in probes), key=commits.index)
    by_commit = {p['commit']: p for p in probes}
    assert by_commit[commits[3]]['status'] == 'differ'
    assert by_commit[commits[3]]['subject'] == 'commit 3: the value doubles'
    assert by_commit[commits[2]]['equal'] is True
    # the single-run fields are the first changed commit's probe
    assert doc['reproduced_run_id'] == by_commit[commits[3]]['reproduced_run_id']
    assert [m['key'] for m in doc['metrics'] if not m['equal']] == ['score']
    assert doc['differences']['code'] == [
        '--bisect replaced the commit that the reference run recorded'  # no --version given
    ]
    # the reference commit first, then the target
    started = [line for line in err.splitlines() if line.endswith(' started')]
    assert f'at {commits[0][:12]} started' in started[0]
    assert f'at {commits[4][:12]} started' in started[1]
    assert [line.split(']')[0] for line in started] == [
        f'[probe {i} of at most 4' for i in range(1, len(started) + 1)
    ]
    # recorded in MLflow: the parent run, its tags and artifact, the nested probes
    parent, children = bisect_runs(name)
    assert parent.info.run_name == f'reproduce-bisect-{client().get_run(ref).info.run_name}'
    assert parent.info.run_id == bisect['run_id']
    assert parent.info.status == 'FINISHED'
    assert parent.data.tags['reproduce.first_changed_commit'] == commits[3]
    assert parent.data.tags['reproduce.reference_run_id'] == ref
    assert f'First changed commit: {commits[3]}' in parent.data.tags['mlflow.note.content']
    artifact = client().download_artifacts(parent.info.run_id, 'reproduce/bisect.json', tmp_path)
    assert json.loads(Path(artifact).read_text())['bisect'] == bisect
    assert sorted(c.info.run_id for c in children) == sorted(p['reproduced_run_id'] for p in probes)
    for child in children:
        commit = child.data.tags['reproduce.bisect.commit']
        assert child.data.tags['mlflow.source.git.commit'] == commit
        assert child.data.tags['reproduce.status'] == by_commit[commit]['status']
        # a probe that differs may have been stopped early (--fail-fast, the default)
        stopped = by_commit[commit]['prefix'] is not None
        assert child.info.status == ('KILLED' if stopped else 'FINISHED')
        assert not stopped or by_commit[commit]['status'] == 'differ'


def test_target_where_nothing_changed_exits_0_and_goes_to_junit_and_the_step_summary(
    linear, capsys, tmp_path, monkeypatch
):
    """The table says nothing changed; a testcase per probe, named with its
    commit; the finding in the job summary."""
    from junitparser import JUnitXml

    repo, commits, ref = linear
    junit, summary = tmp_path / 'junit.xml', tmp_path / 'summary.md'
    monkeypatch.setenv('GITHUB_STEP_SUMMARY', str(summary))
    code, out, err = reproduce(
        capsys,
        *('--run_id', ref, '--bisect', commits[2], '--experiment-name', tmp_path.name),
        *('--junit-xml', str(junit)),
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[-1] == 'First changed commit: none'
    assert 'Nothing between the reference commit and the target changed the metrics.' in lines
    rows = [line for line in lines if line.startswith('| ')]
    assert [c.strip() for c in rows[0].split('|')[1:-1]] == [
        'Commit',
        'Subject',
        'Metrics',
        'Changed metrics',
        'Changed params',
        'Reproduced run',
    ]
    assert [r.split('|')[1].strip() for r in rows[1:]] == [commits[0][:12], commits[2][:12]]
    assert [r.split('|')[3].strip() for r in rows[1:]] == ['unchanged', 'unchanged']
    [suite] = JUnitXml.fromfile(str(junit))
    names = [case.name for case in suite]
    assert [name.rsplit(' at ', 1)[1] for name in names] == [commits[0][:8], commits[2][:8]]
    assert all(case.is_passed for case in suite)
    text = summary.read_text()
    assert text.startswith(f'**Bisection of run {ref}**: equal')


@pytest.mark.slow
def test_dry_run_shows_the_plan_and_runs_nothing(linear, capsys, tmp_path):
    repo, commits, ref = linear
    name = f'dry-{tmp_path.name}'
    code, out, err = reproduce(
        capsys, '--run_id', ref, '--bisect', '--dry-run', '--experiment-name', name
    )
    assert code == 0, err
    assert out.splitlines()[1:] == [
        f'Would bisect:   4 commits from {commits[0][:12]} to {commits[4][:12]}, at most 4 '
        'probes if every commit runs',
        'Nothing was run (--dry-run).',
    ]
    code, out, err = reproduce(
        capsys, '--run_id', ref, '--bisect', '--dry-run', '--jobs', '3', '--output', 'json'
    )
    assert code == 0, err
    bisect = json.loads(out)['bisect']
    assert (bisect['commits'], bisect['most_probes'], bisect['dry_run']) == (4, 4, True)
    assert bisect['probes'] == [] and bisect['first_changed_commit'] is None
    assert experiment_runs_or_empty(name) == []


@pytest.mark.slow
def test_jobs_3_reach_the_same_commit(linear, capsys, tmp_path):
    repo, commits, ref = linear
    code, out, err = reproduce(
        capsys,
        '--run_id',
        ref,
        '--bisect',
        'main',
        '--jobs',
        '3',
        '--experiment-name',
        tmp_path.name,
        '--output',
        'markdown',
    )
    assert code == 1, err
    assert out.startswith(f'**Bisection of run {ref}**: differ')
    assert out.rstrip().endswith(f'First changed commit: {commits[3]}')


@pytest.mark.slow
def test_a_broken_commit_next_to_the_change_is_skipped(tmp_path, capsys):
    repo, first = build_repo(tmp_path, TINY)
    ref = tiny_reference(repo, first)
    commits = [first, *add_commits(repo, 2, change_at=2, broken_at=1)]
    code, out, err = reproduce(
        capsys, '--run_id', ref, '--bisect', '--experiment-name', tmp_path.name, '--output', 'json'
    )
    assert code == 1, err
    bisect = json.loads(out)['bisect']
    assert bisect['skipped'] == [commits[1]]
    assert bisect['candidates'] == [commits[1], commits[2]]
    assert bisect['first_changed_commit'] is None
    assert {p['commit']: p['status'] for p in bisect['probes']}[commits[1]] == 'failed'


@pytest.mark.slow
def test_a_recorded_branch_deleted_since_gives_way_to_the_default_branch(tmp_path, capsys):
    repo, first = build_repo(tmp_path, TINY)
    ref = tiny_reference(repo, first)
    client().set_tag(ref, 'mlflow.source.git.branch', 'master')  # deleted since
    commits = [first, *add_commits(repo, 2, change_at=2)]
    code, out, err = reproduce(
        capsys, '--run_id', ref, '--bisect', '--experiment-name', tmp_path.name, '--output', 'json'
    )
    assert code == 1, err
    bisect = json.loads(out)['bisect']
    assert (bisect['target_commit'], bisect['first_changed_commit']) == (commits[2], commits[2])
    [warning] = [line for line in err.splitlines() if 'warning' in line]
    assert warning == (
        f"reproduce_run: warning: the branch 'master' that run {ref} recorded is not in "
        f"{repo}: bisecting up to its default branch 'main'"
    )


@pytest.mark.slow
def test_a_reference_whose_data_changed_blames_no_commit(tmp_path, capsys):
    repo, first = build_repo(tmp_path, TINY)
    data = tmp_path / 'data.txt'
    data.write_text('0.5')
    ref = recorded_run(f'file://{repo}#tiny', first, {'data': str(data)}, metrics={'score': 1.5})
    add_commits(repo, 12, change_at=8)
    data.write_text('0.25')  # the world changed, not the code
    code, out, err = reproduce(
        capsys, '--run_id', ref, '--bisect', '--experiment-name', tmp_path.name
    )
    assert code == 1, err
    lines = out.splitlines()
    assert f'No commit is blamed: {NOT_REPRODUCED}.' in lines
    assert lines[-1] == 'First changed commit: none'
    rows = [line for line in lines if line.startswith('| ') and 'Commit' not in line]
    assert len([r for r in rows if r.split('|')[1].strip() == first[:12]]) == 1
    assert 'score' in out  # the reference probe's comparison
    parent, probes = bisect_runs(tmp_path.name)
    assert len(probes) <= 2
    assert parent.data.tags['reproduce.first_changed_commit'] == 'none'


@pytest.mark.slow
@pytest.mark.timeout(900)  # 3 repetitions of each probe, one after another
def test_repeat_3_bisects_a_nondeterministic_project(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('BISECT_TEST_COUNTER', str(tmp_path / 'counter'))
    repo, first = build_repo(tmp_path, TINY)
    # the reference's value is the noise's lowest (-1 %), as a first run of the project logs it
    ref = tiny_reference(repo, first, 0.99)
    commits = [first, *add_commits(repo, 2, change_at=2)]
    code, out, err = reproduce(
        capsys,
        '--run_id',
        ref,
        '--bisect',
        '--repeat',
        '3',
        '--experiment-name',
        tmp_path.name,
        '--output',
        'json',
    )
    assert code == 1, err
    bisect = json.loads(out)['bisect']
    assert bisect['first_changed_commit'] == commits[2]
    # every repetition differs from the reference (the noise), and yet the
    # reference commit counts as unchanged: its value lies within their range
    at_reference = [p for p in bisect['probes'] if p['commit'] == commits[0]]
    assert len(at_reference) == 3
    assert any(p['status'] == 'differ' for p in at_reference)


@pytest.mark.slow
def test_sigterm_mid_bisection_kills_the_parent_and_leaves_nothing_running(linear, tmp_path):
    repo, commits, ref = linear
    name = f'sigterm-{tmp_path.name}'
    proc = subprocess.Popen(
        (
            sys.executable,
            str(SCRIPT),
            '--run_id',
            ref,
            '--bisect',
            '--experiment-name',
            name,
            '--output',
            'json',
        ),
        env={**os.environ, 'BISECT_TEST_SLEEP': '60'},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:

        def target_probe_running():
            return any(
                r.data.tags.get('mlflow.source.git.commit') == commits[4]
                for r in experiment_runs_or_empty(name)
            )

        wait_for(target_probe_running, 90, 'the probe of the target to start')
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    doc = json.loads(out)
    assert proc.returncode == doc['exit_code'] == 143, err
    assert err.rstrip().endswith('reproduce_run.py: terminated')
    assert doc['bisect']['reason'] == 'terminated by a signal'
    parent, probes = bisect_runs(name)
    assert parent.info.status == 'KILLED'
    assert sorted(r.info.status for r in probes) == ['FINISHED', 'KILLED']
    assert not [r for r in experiment_runs(name) if r.info.status == 'RUNNING']


SCRIPT_RUN = """\
import pathlib
import mlflow

with mlflow.start_run():
    mlflow.log_metric('score', float(pathlib.Path(__file__).with_name('value.txt').read_text()))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)  # 45-90 s here, beside the other tests
def test_a_script_run_is_bisected(tmp_path, git_daemon, capsys):
    """A run made with `python tiny/fit.py`, its remote on a git daemon.
    Commit 1 logs a new param and changes no metric (a param is not
    evidence: it is shown, not blamed); commit 2 changes the metric."""
    from helpers import python_run

    url, base = git_daemon
    bare = base / f'{tmp_path.name}.git'
    git('init', '--quiet', '--bare', str(bare), cwd=base)
    repo, first = build_repo(tmp_path, {'fit.py': SCRIPT_RUN, 'value.txt': '1.0'})
    git('remote', 'add', 'origin', f'{url}/{bare.name}', cwd=repo)
    git('push', '--quiet', 'origin', 'main', cwd=repo)
    ref = python_run(repo, 'tiny/fit.py')
    fit = repo / 'tiny' / 'fit.py'
    fit.write_text(fit.read_text() + "    mlflow.log_param('patience', 5)\n")
    commits = [first, *add_commits(repo, 2, change_at=2)]
    git('push', '--quiet', 'origin', 'main', cwd=repo)
    code, out, err = reproduce(
        capsys,
        '--run_id',
        ref,
        '--bisect',
        'main',
        '--experiment-name',
        tmp_path.name,
        '--output',
        'json',
    )
    assert code == 1, err
    bisect = json.loads(out)['bisect']
    assert bisect['first_changed_commit'] == commits[2]
    assert bisect['target_commit'] == commits[2]
    assert [p['commit'] for p in bisect['probes']] == commits  # each commit once, in order
    assert [p['changed_params'] for p in bisect['probes']] == [[], ['patience'], ['patience']]
    assert [p['metrics_equal'] for p in bisect['probes']] == [True, True, False]


@pytest.mark.parametrize(
    ('argv', 'message'),
    [
        pytest.param(('--version', 'main'), '--bisect and --version exclude each other', id='ver'),
        pytest.param(
            ('--compare-to', 'b'), '--bisect and --compare-to exclude each other', id='cmp'
        ),
    ],
)
def test_bisect_excludes_options_that_name_another_run_or_commit(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(['--run_id', 'a', '--bisect', *argv])
    assert e.value.code == 2
    assert capsys.readouterr().err == f'reproduce_run: error: {message} (see --help)\n'


@pytest.mark.parametrize(
    ('target', 'message'),
    [
        pytest.param(
            'no-such-branch', "--bisect: commit 'no-such-branch' is not in ", id='unknown'
        ),
        pytest.param(0, 'does not come after the reference commit', id='the-reference-itself'),
    ],
)
def test_a_target_that_cannot_be_bisected_exits_2_with_one_line(linear, target, message, capsys):
    repo, commits, ref = linear
    target = commits[target] if isinstance(target, int) else target
    code, out, err = reproduce(capsys, '--run_id', ref, '--bisect', target)
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith('reproduce_run: error: ') and message in line


def _bisect(outcomes: dict[int, str], stopped: str | None = None) -> BisectReport:
    path = tuple(CommitInfo(f'{i:040x}', f'commit {i}') for i in range(13))
    failed = Report(status='failed', reference_run_id='r')
    return BisectReport(
        'r',
        path=path,
        probes=tuple((i, failed) for i in outcomes),
        outcomes=outcomes,
        finding=finding(12, outcomes),
        stopped=stopped,
    )


@pytest.mark.parametrize(
    ('outcomes', 'stopped', 'status', 'code'),
    [
        pytest.param({0: GOOD, 12: GOOD}, None, 'equal', 0, id='nothing-changed'),
        pytest.param({0: GOOD, 12: BAD, 7: GOOD, 8: BAD}, None, 'differ', 1, id='found'),
        pytest.param({0: GOOD, 12: BAD, 7: SKIP, 6: GOOD, 8: BAD}, None, 'differ', 1, id='range'),
        pytest.param({0: BAD}, None, 'differ', 1, id='reference-does-not-reproduce'),
        pytest.param({0: SKIP}, None, 'failed', 3, id='every-probe-failed'),
        pytest.param({0: SKIP, 12: SKIP, 6: SKIP}, None, 'failed', 3, id='every-probe-of-3-failed'),
        pytest.param({0: GOOD}, 'terminated', 'terminated', 143, id='sigterm'),
        pytest.param({0: GOOD}, 'interrupted', 'interrupted', 130, id='sigint'),
    ],
)
def test_exit_code_of_a_bisection(outcomes, stopped, status, code):
    bisect = _bisect(outcomes, stopped)
    assert (bisect.status, bisect.exit_code) == (status, code)


def _hex(i: int) -> str:
    return f'{i:040x}'


@pytest.mark.parametrize(
    ('outcomes', 'stopped', 'last_line', 'first_changed', 'candidates'),
    [
        pytest.param(
            {0: GOOD, 12: BAD, 7: GOOD, 8: BAD}, None, _hex(8), _hex(8), [_hex(8)], id='found'
        ),
        pytest.param({0: GOOD, 12: GOOD}, None, 'none', None, [], id='none'),
        pytest.param(
            {0: GOOD, 12: BAD, 7: SKIP, 6: GOOD, 8: BAD},
            None,
            f'one of {_hex(7)[:12]} {_hex(8)[:12]}',
            None,
            [_hex(7), _hex(8)],
            id='candidates',
        ),
        pytest.param({0: BAD}, None, 'none', None, [], id='reference-not-reproducible'),
        pytest.param(
            {0: GOOD, 12: BAD},
            'interrupted',
            'unknown (the bisection was interrupted)',
            None,
            [_hex(i) for i in range(1, 13)],
            id='stopped',
        ),
    ],
)
def test_every_ending_says_one_answer(outcomes, stopped, last_line, first_changed, candidates):
    """The closing line, the candidates line above it, the parent run's tag
    and JSON agree: never 'one of' above and 'none' below."""
    bisect = _bisect(outcomes, stopped)
    lines = bisect.text().splitlines()
    assert lines[-1] == f'First changed commit: {last_line}'
    assert bisect.markdown().splitlines()[-1] == lines[-1]
    listed = [line for line in lines if line.startswith('The first changed commit is one of')]
    assert bool(listed) == (len(candidates) > 1)
    doc = bisect.json()['bisect']
    assert (doc['first_changed_commit'], doc['candidates']) == (first_changed, candidates)
    assert bisect.first_changed_text() == (
        last_line
        if first_changed or not candidates or stopped
        else 'one of ' + ' '.join(candidates)
    )


def _probes_to_the_end(n: int, jobs: int, first_changed: int) -> list[int]:
    """How many commits each round had still to go, as most_commits saw it,
    and how many the search then probed: bounds first, the count last."""
    known: dict[int, str] = {}
    bounds, count = [], 0
    while chosen := next_commits(n, known, jobs):
        bounds.append(count + most_commits(n, known, jobs))
        count += len(chosen)
        known |= {i: BAD if 0 < first_changed <= i else GOOD for i in chosen}
    return [*bounds, count]


@pytest.mark.parametrize('jobs', [1, 2, 3, 4])
@pytest.mark.parametrize('n', [1, 2, 3, 7, 12, 33])
def test_the_most_probes_said_is_never_passed_and_is_reached(n, jobs):
    """probe i of at most N: N never falls short of the probes the search
    then takes, whichever commit changed (n + 1: none), and some commit
    takes exactly the first N."""
    runs = [_probes_to_the_end(n, jobs, t) for t in range(1, n + 2)]
    assert all(bound >= run[-1] for run in runs for bound in run[:-1])
    assert max(run[-1] for run in runs) == most_commits(n, {}, jobs)


# --- several references, each bisected on its own ----------------------------


_ERROR = Report(status='error', reference_run_id='gone', message='run gone not found')
_NOT_STARTED = Report(status='terminated', reference_run_id='s', message='not started')


@pytest.mark.parametrize(
    ('entries', 'status', 'code'),
    [
        pytest.param(({0: GOOD, 12: GOOD}, {0: GOOD, 12: GOOD}), 'equal', 0, id='all-equal'),
        pytest.param(
            ({0: GOOD, 12: BAD, 7: GOOD, 8: BAD}, {0: GOOD, 12: GOOD}), 'differ', 1, id='one-found'
        ),
        pytest.param(
            ({0: SKIP}, {0: GOOD, 12: BAD, 7: GOOD, 8: BAD}), 'failed', 3, id='failed-over-differ'
        ),
        pytest.param(({0: GOOD, 12: GOOD}, _ERROR), 'error', 2, id='an-error-entry'),
        pytest.param(({0: GOOD, 12: GOOD}, _NOT_STARTED), 'terminated', 143, id='signal-first'),
    ],
)
def test_the_exit_code_of_several_bisections_is_the_worst(entries, status, code):
    bisections = Bisections(tuple(e if isinstance(e, Report) else _bisect(e) for e in entries))
    assert (bisections.status, bisections.exit_code) == (status, code)


def test_several_bisections_in_table_markdown_and_junit():
    found = dataclasses.replace(_bisect({0: GOOD, 12: BAD, 7: GOOD, 8: BAD}), run_id='p1')
    calm = dataclasses.replace(_bisect({0: GOOD, 12: GOOD}), reference_run_id='calm', run_id='p2')
    bisections = Bisections((found, calm, _ERROR))
    text = bisections.render('table')
    assert text == '\n\n'.join(
        [
            found.render('table'),
            calm.render('table'),
            'Reference run:  gone (error: run gone not found)',
            f'First changed commit of r: {found.path[8].commit}\n'
            'First changed commit of calm: none\n'
            'First changed commit of gone: none',
        ]
    )
    markdown = bisections.render('markdown')
    assert markdown.startswith(found.render('markdown') + '\n\n')
    assert markdown.endswith(
        f'First changed commit of r: {found.path[8].commit}\n\n'
        'First changed commit of calm: none\n\nFirst changed commit of gone: none'
    )
    cases = bisections.junit_cases()  # each probe's testcase, then the error's
    assert [c.name for c in cases] == [
        *(c.name for c in found.junit_cases()),
        *(c.name for c in calm.junit_cases()),
        'gone',
    ]
    assert cases[-1].result == 'error' and cases[-1].message == 'run gone not found'
    line = summary_line(bisections, 'exp')
    assert 'bisections of 3 runs (first changed commits: r: ' in line
    assert line.endswith('worst: error (exit 2)')
    assert run_links(bisections, None)[:2] == ['- parent run: p1', '- parent run: p2']


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_each_reference_of_a_batch_is_bisected_on_its_own(tmp_path, capsys):
    """Two references: the change of one is found, nothing changed for the
    other; each has its own parent run, and the exit code is the worst."""
    repo, first = build_repo(tmp_path / 'found', TINY)
    ref = tiny_reference(repo, first)
    commits = [first, *add_commits(repo, 2, change_at=2)]
    calm_repo, calm_first = build_repo(tmp_path / 'calm', TINY)
    calm = tiny_reference(calm_repo, calm_first)
    calm_commits = [calm_first, *add_commits(calm_repo, 2, change_at=0)]
    name = f'bisect-{tmp_path.name}'
    code, out, err = reproduce(
        capsys, '--run_id', ref, calm, '--bisect', '--experiment-name', name, '--output', 'json'
    )
    assert code == 1, err
    doc = json.loads(out)
    documented = tables(section(JSON_DOC, 'The bisect document'))[1]
    assert first_spans(documented) == list(doc)
    assert list(doc) == ['bisections', 'skipped', 'own_reproductions', 'exit_code']
    assert doc['own_reproductions'] == 0
    assert doc['skipped'] == []
    assert doc['exit_code'] == 1
    found, unchanged = doc['bisections']
    assert (found['status'], found['exit_code']) == ('differ', 1)
    assert found['bisect']['reference_run_id'] == ref
    assert found['bisect']['first_changed_commit'] == commits[2]
    assert (unchanged['status'], unchanged['exit_code']) == ('equal', 0)
    assert unchanged['bisect']['reference_run_id'] == calm
    assert unchanged['bisect']['first_changed_commit'] is None
    assert unchanged['bisect']['target_commit'] == calm_commits[-1]
    assert [p['commit'] for p in unchanged['bisect']['probes']] == [
        calm_commits[0],
        calm_commits[-1],
    ]
    # each bisection's own parent run, its probes nested under it
    runs = experiment_runs(name)
    parents = {
        r.data.tags['reproduce.reference_run_id']: r
        for r in runs
        if r.data.tags.get('reproduce.bisect') == 'true'
    }
    assert set(parents) == {ref, calm}
    for bisection in (found, unchanged):
        parent = parents[bisection['bisect']['reference_run_id']]
        assert parent.info.run_id == bisection['bisect']['run_id']
        assert parent.info.status == 'FINISHED'
        assert parent.data.tags['reproduce.first_changed_commit'] == (
            bisection['bisect']['first_changed_commit'] or 'none'
        )
        nested = [
            r.info.run_id
            for r in runs
            if r.data.tags.get('mlflow.parentRunId') == parent.info.run_id
        ]
        assert sorted(nested) == sorted(
            p['reproduced_run_id'] for p in bisection['bisect']['probes']
        )
    assert client().get_run(calm).info.status == 'FINISHED'  # the references are only read


@pytest.mark.slow
def test_a_reference_that_cannot_be_resolved_is_an_error_entry(linear, tmp_path, capsys):
    """Chosen by --runs-file: the others are still bisected; the table ends
    with each reference's finding."""
    repo, commits, ref = linear
    runs_file = tmp_path / 'runs.txt'
    runs_file.write_text(f'no-such-run\n{ref}\n')
    code, out, err = reproduce(
        capsys,
        '--runs-file',
        str(runs_file),
        '--bisect',
        commits[2],
        '--experiment-name',
        tmp_path.name,
    )
    assert code == 2, err
    assert 'reproduce_run: error: ' in err and 'no-such-run' in err
    lines = out.splitlines()
    assert lines[-2:] == [
        'First changed commit of no-such-run: none',
        f'First changed commit of {ref}: none',
    ]
    assert lines[0].startswith('Reference run:  no-such-run (error: ')
    assert 'Nothing between the reference commit and the target changed the metrics.' in lines
    runs = experiment_runs(tmp_path.name)
    assert [
        r.data.tags['reproduce.reference_run_id']
        for r in runs
        if r.data.tags.get('reproduce.bisect')
    ] == [ref]


@pytest.mark.slow
def test_sigterm_stops_the_current_bisection_and_starts_no_further_one(linear, tmp_path):
    repo, commits, ref = linear
    calm_repo, calm_first = build_repo(tmp_path, TINY)
    calm = tiny_reference(calm_repo, calm_first)
    add_commits(calm_repo, 2, change_at=0)
    name = f'sigterm-{tmp_path.name}'
    argv = ('--run_id', ref, calm, '--bisect', '--experiment-name', name, '--output', 'json')
    proc = subprocess.Popen(
        (sys.executable, str(SCRIPT), *argv),
        env={**os.environ, 'BISECT_TEST_SLEEP': '60'},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:

        def target_probe_running():
            return any(
                r.data.tags.get('mlflow.source.git.commit') == commits[4]
                for r in experiment_runs_or_empty(name)
            )

        wait_for(target_probe_running, 90, 'the probe of the target to start')
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    doc = json.loads(out)
    assert proc.returncode == doc['exit_code'] == 143, err
    assert err.rstrip().endswith(': terminated')
    stopped, not_started = doc['bisections']
    assert stopped['bisect']['reason'] == 'terminated by a signal'
    assert (not_started['reference_run_id'], not_started['status']) == (calm, 'terminated')
    assert not_started['message'] == 'not started'
    runs = experiment_runs(name)
    parents = [r for r in runs if r.data.tags.get('reproduce.bisect') == 'true']
    assert [p.data.tags['reproduce.reference_run_id'] for p in parents] == [ref]
    assert parents[0].info.status == 'KILLED'
    assert not [r for r in runs if r.info.status == 'RUNNING']


def test_runs_of_an_experiment_not_bisected_are_listed_as_skipped(tmp_path, store, capsys):
    """--from-experiment --bisect: a run that cannot be bisected is listed
    with its reason, in every format, not left out without a word."""
    repo, first = build_repo(tmp_path, TINY)
    name = f'skips-{tmp_path.name}'
    mlflow_run(str(repo / 'tiny'), store, '--experiment-name', name)
    commits = [first, *add_commits(repo, 1, change_at=1)]
    c = client()
    no_source = c.create_run(c.get_experiment_by_name(name).experiment_id).info.run_id
    c.set_terminated(no_source)
    argv = ('--from-experiment', name, '--bisect', '--experiment-name', f'{name}-out')
    code, out, err = reproduce(capsys, *argv, '--output', 'json')
    assert code == 1, err
    doc = json.loads(out)
    [bisection] = doc['bisections']
    assert bisection['bisect']['first_changed_commit'] == commits[1]
    assert [s['run_id'] for s in doc['skipped']] == [no_source]
    assert doc['skipped'][0]['reason'].startswith('it was not launched as an MLflow Project')
    code, out, err = reproduce(capsys, *argv)
    assert code == 1, err
    assert out.splitlines()[-1].startswith('Skipped 1 run: it was not launched as an MLflow')
    junit = tmp_path / 'junit.xml'
    code, out, err = reproduce(capsys, *argv, '--output', 'markdown', '--junit-xml', str(junit))
    assert out.splitlines()[-1].startswith('- skipped 1 run: it was not launched as an MLflow')
    assert f'name="{no_source[:8]}"' in junit.read_text()
    c.delete_run(no_source)  # one run chosen, none skipped: the single bisect document
    code, out, err = reproduce(capsys, *argv, '--output', 'json')
    assert (code, list(json.loads(out))[:1]) == (1, ['reference_run_id']), err
    assert json.loads(out)['bisect']['first_changed_commit'] == commits[1]


REFUSED = (
    'API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/get failed with exception '
    "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url: /x "
    '(Caused by NewConnectionError("Failed to establish a new connection: [Errno 111] '
    'Connection refused"))'
)


@pytest.mark.parametrize(
    ('status', 'message', 'lost'),
    [
        pytest.param(
            'failed',
            f'the reproduced run r failed (exit status 1); its last error: {REFUSED}',
            True,
            id='the-projects-mlflow-call',
        ),
        pytest.param(
            'error',
            'cannot create the run: the tracking server does not answer (Connection refused)',
            True,
            id='the-tools-own-request',
        ),
        pytest.param('failed', 'its last error: this commit is broken', False, id='the-project'),
        pytest.param('error', 'the tracking server answered HTTP 500', False, id='it-answers'),
        pytest.param('equal', None, False, id='a-verdict'),
    ],
)
def test_a_probe_that_lost_the_tracking_server(status, message, lost):
    report = Report(status, STATUS_EXIT_CODES[status], 'r', message=message)
    assert lost_server([report]) is lost


@pytest.mark.slow
def test_a_server_that_dies_mid_bisection_is_named_not_the_reference(tmp_path, monkeypatch):
    """The tracking server stops while the reference commit's probe runs: the
    report says so, not that the reference cannot be reproduced."""
    server = start_mlflow_server(tmp_path / 'server')
    try:
        repo, _ = build_repo(tmp_path, TINY)
        [at] = add_commits(repo, 1, change_at=0)  # notes.txt: the probe below sleeps
        monkeypatch.setenv('MLFLOW_TRACKING_URI', server.url)
        ref = tiny_reference(repo, at)
        add_commits(repo, 2, change_at=2)
        name = f'dies-{tmp_path.name}'
        proc = start_tool(
            *('--run_id', ref, '--bisect', '--experiment-name', name, '--output', 'json'),
            env={
                'MLFLOW_TRACKING_URI': server.url,
                'BISECT_TEST_SLEEP': '4',
                'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '0',
                'REPRODUCE_RUN_CLOSE_TIMEOUT': '2',
            },
        )
        wait_for(
            lambda: len(experiment_runs_or_empty(name)) == 2,  # the parent, a probe
            60,
            'the probe of the reference commit to start',
        )
    finally:
        stop(server.proc)
    out, err = proc.communicate(timeout=120)
    doc = json.loads(out)
    assert proc.returncode == doc['exit_code'] == 3, err
    assert doc['bisect']['reason'] == 'the tracking server stopped answering'
    assert 'cannot be reproduced at its own commit' not in out + err

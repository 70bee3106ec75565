"""Verdicts before a training ends: --fail-fast, --steps N and --time-limit.
What is compared is pure and tested in tables; the end-to-end tests run a
real script that logs a metric step by step, reproduced against the session's
real `mlflow server`, and check what was stopped, what was judged, and what
MLflow holds."""

from __future__ import annotations

import json
import signal
import time

import pytest
from helpers import (
    client,
    clone_with_remote,
    commit_all,
    git,
    process_gone,
    python_run,
    reproduce,
    run_python,
    start_tool,
    wait_for,
)
from proxy import Rule, proxy_in_front_of

import reproduce_run
from reproduce_run import Point, Rules

# --- what is compared: pure ------------------------------------------------------


def history(*values: float, start: int = 0, t0: int = 1000) -> list[Point]:
    """One point a step from `start`, each a second after the last."""
    return [Point(start + i, v, t0 + 1000 * i) for i, v in enumerate(values)]


TEN = history(*range(10))


@pytest.mark.parametrize(
    ('reference', 'reproduced', 'upto', 'steps', 'equal', 'not_compared'),
    [
        pytest.param({'loss': TEN}, {'loss': TEN[:4]}, None, 3, True, (), id='equal-prefix'),
        pytest.param(
            {'loss': TEN},
            {'loss': [*TEN[:3], Point(3, 99.0, 4000)]},
            None,
            3,
            False,
            (),
            id='differs-at-the-last-step-reached',
        ),
        pytest.param(
            {'loss': TEN, 'final': [Point(0, 1.0, 99000)]},
            {'loss': TEN[:5]},
            None,
            4,
            True,
            ('final',),
            id='a-metric-not-reached-yet',
        ),
        pytest.param({'loss': TEN}, {'loss': TEN}, 6, 6, True, (), id='steps-cut-both'),
        pytest.param(
            {'loss': TEN},
            {'loss': [*TEN[:8], Point(8, 99.0, 9000)]},
            6,
            6,
            True,
            (),
            id='a-difference-after-n-is-not-judged',
        ),
        pytest.param(
            {'loss': TEN, 'final': [Point(0, 1.0, 99000)]},
            {'loss': TEN[:7]},
            6,
            6,
            True,
            ('final',),
            id='a-final-score-without-a-step-is-logged-after-n',
        ),
        pytest.param(
            {'loss': TEN, 'late': history(1.0, 2.0, start=8)},
            {'loss': TEN[:7]},
            6,
            6,
            True,
            ('late',),
            id='a-metric-whose-steps-are-all-after-n',
        ),
        pytest.param(
            {'loss': TEN},
            {'loss': TEN[:4], 'extra': history(1.0)},
            None,
            3,
            False,
            (),
            id='a-metric-only-the-reproduction-logs-differs',
        ),
        pytest.param(
            {'loss': TEN},
            {'loss': [TEN[5], TEN[0], TEN[1]]},
            None,
            1,
            True,
            (),
            id='a-step-logged-out-of-order-waits-for-those-before-it',
        ),
        pytest.param(
            {'loss': TEN, 'n_params': [Point(0, 1234.0, 500)]},
            {'n_params': [Point(0, 1234.0, 500)]},
            None,
            None,
            True,
            ('loss',),
            id='a-constant-without-steps-is-no-step-reached',
        ),
        pytest.param(
            {'loss': [Point(0, float(i), 1000 * i) for i in range(10)]},
            {'loss': [Point(0, float(i), 1000 * i) for i in range(4)]},
            None,
            None,
            True,
            (),
            id='values-without-a-step-compared-in-logging-order',
        ),
        pytest.param(
            {'loss': [Point(0, float(i), 1000 * i) for i in range(10)]},
            {'loss': [Point(0, 0.0, 0), Point(0, 9.0, 1000)]},
            None,
            None,
            False,
            (),
            id='values-without-a-step-differ-before-the-end',
        ),
        pytest.param({'loss': TEN}, {}, None, None, True, ('loss',), id='nothing-reached'),
    ],
)
def test_judge_prefix(reference, reproduced, upto, steps, equal, not_compared):
    verdict, prefix, _ = reproduce_run.judge_prefix(reference, reproduced, Rules(), upto, 'x')
    assert (prefix.steps, verdict.equal, prefix.not_compared) == (steps, equal, not_compared)
    assert prefix.reference_steps == max(p.step for h in reference.values() for p in h)


@pytest.mark.parametrize(
    ('reference', 'reproduced', 'found'),
    [
        pytest.param({'loss': TEN}, {'loss': TEN[:5]}, None, id='equal-so-far'),
        pytest.param(
            {'loss': TEN}, {'loss': [*TEN[:5], Point(5, -1.0, 6000)]}, 5, id='differs-at-5'
        ),
        pytest.param(
            {'loss': [Point(0, 1.0, 1), Point(0, 2.0, 2), *TEN[1:]]},
            {'loss': [Point(0, 1.0, 1)]},
            None,
            id='a-step-logged-in-part-is-not-a-difference-yet',
        ),
        pytest.param(
            {'loss': TEN}, {'loss': TEN[:3], 'new': history(5.0)}, 0, id='a-new-metric-differs'
        ),
        pytest.param({'loss': TEN}, {}, None, id='nothing-logged-yet'),
    ],
)
def test_first_divergence(reference, reproduced, found):
    metric = reproduce_run.first_divergence(reference, reproduced, Rules())
    assert (metric and metric.first_divergent_step) == found


@pytest.mark.parametrize(
    ('reference', 'reproduced', 'n', 'done'),
    [
        pytest.param({'loss': TEN}, {'loss': TEN[:6]}, 5, True, id='reached-n'),
        pytest.param({'loss': TEN}, {'loss': TEN[:5]}, 5, False, id='one-step-short'),
        pytest.param(
            {'loss': TEN, 'acc': TEN}, {'loss': TEN[:6]}, 5, False, id='every-metric-must-reach-n'
        ),
        pytest.param(
            {'loss': TEN, 'final': [Point(0, 1.0, 99000)]},
            {'loss': TEN[:6]},
            5,
            True,
            id='a-final-score-is-not-waited-for',
        ),
        pytest.param(
            {'loss': history(*range(3), start=0)}, {'loss': TEN[:3]}, 5, True, id='n-past-the-end'
        ),
        pytest.param(
            {'loss': TEN, 'final': [Point(0, 1.0, 99000)]},
            {'loss': TEN[:1]},
            0,
            True,
            id='steps-0-does-not-wait-for-a-final-score',
        ),
        pytest.param(
            {'loss': TEN, 'noise': TEN}, {'loss': TEN[:6]}, 5, True, id='an-ignored-metric'
        ),
    ],
)
def test_steps_done(reference, reproduced, n, done):
    rules = Rules(ignored=('noise',))
    assert reproduce_run.steps_done(reference, reproduced, n, rules) is done


@pytest.mark.parametrize(
    ('prefix', 'report_lines'),
    [
        pytest.param(
            reproduce_run.Prefix('--steps 100', 100, 19, 20, ('final',), killed=False),
            [
                "Compared:       as --steps 100 asks: equal up to step 19 of the reference's 19",
                'Not compared:   final (logged after step 100)',
            ],
            id='never-past-the-reference',
        ),
        pytest.param(
            reproduce_run.Prefix('--time-limit 15m', 4, 39, 5, ('acc',)),
            [
                'Stopped early:  by --time-limit 15m (run KILLED): equal up to step 4 of the '
                "reference's 39",
                'Not compared:   acc (not reached by the reproduction)',
            ],
            id='time-limit',
        ),
    ],
)
def test_prefix_lines(prefix, report_lines):
    report = reproduce_run.Report(
        'equal', 'r' * 32, verdict=reproduce_run.Verdict(()), prefix=prefix
    )
    assert reproduce_run.prefix_lines(report) == report_lines
    markdown = reproduce_run.format_markdown(report)
    assert f'- {report_lines[0].split(":")[0].lower()}: ' in markdown
    assert '  by' not in markdown and 'Not compared:   ' not in markdown


@pytest.mark.parametrize(
    ('seconds', 'text'),
    [(900, '15m'), (7200, '2h'), (90, '90s'), (86400, '1d'), (2.5, '2.5s'), (1209600, '2w')],
)
def test_duration_text(seconds, text):
    assert reproduce_run.duration_text(seconds) == text


@pytest.mark.parametrize(
    ('argv', 'message'),
    [
        (['--fail-fast', '--repeat', '2'], '--fail-fast and --repeat exclude each other'),
        (['--steps', '5', '--last-only'], '--steps and --last-only exclude each other'),
        (['--time-limit', '0s'], 'expected a duration above zero'),
        (['--time-limit', '15'], 'expected a duration such as 90m'),
        (['--steps', '-1'], '--steps'),
        (['--steps', '3', '--backend', 'kubernetes'], '--steps needs the local backend'),
    ],
)
def test_early_stops_that_cannot_work_are_refused(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        reproduce_run.main(['--run_id', '0' * 32, *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


# --- end to end: a real script logging step by step -----------------------------

# `loss` moves one step every STEP_SECONDS; from DIVERGE_AT (or the step in
# diverge.txt) on, it is off by 100.  `final` is logged at the end, without a
# step, as final scores are.  With WAIT_FIRST set, nothing is logged for that
# many seconds; with PID_FILE, the script writes its PID there.
STEPS = """\
import os, time
import mlflow

steps = int(os.environ.get('STEPS', '40'))
diverge = int(os.environ.get('DIVERGE_AT', '-1'))
if os.path.exists('diverge.txt'):  # a commit that changes the training
    diverge = int(open('diverge.txt').read())
pause = float(os.environ.get('STEP_SECONDS', '0.25'))
if os.environ.get('PID_FILE'):
    open(os.environ['PID_FILE'], 'w').write(str(os.getpid()))
time.sleep(float(os.environ.get('WAIT_FIRST', '0')))
with mlflow.start_run() as run:
    print(f'RUN_ID={run.info.run_id}', flush=True)
    mlflow.log_param('steps', steps)
    for step in range(steps):
        off = 100.0 if 0 <= diverge <= step else 0.0
        mlflow.log_metric('loss', 1.0 / (step + 1) + off, step=step)
        time.sleep(pause)
    mlflow.log_metric('final', 0.5)
"""


@pytest.fixture(scope='module')
def reference(tmp_path_factory, store) -> str:
    """A run of 40 steps of a quarter second: about 10 s."""
    where = tmp_path_factory.mktemp('early')
    git('init', '--quiet', '--bare', str(where / 'remote.git'), cwd=where)
    repo = where / 'repo'
    repo.mkdir()
    clone_with_remote(repo, {'steps.py': STEPS}, str(where / 'remote.git'))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('MLFLOW_TRACKING_URI', store)
        return python_run(repo, 'steps.py')


def early(capsys, monkeypatch, run_id: str, *argv: str, **variables: str):
    for k, v in variables.items():
        monkeypatch.setenv(k, v)
    started = time.monotonic()
    code, out, err = reproduce(capsys, '--run_id', run_id, *argv)
    return code, out, err, time.monotonic() - started


def reproduced_of(out: str) -> str:
    [line] = [line for line in out.splitlines() if line.startswith('Reproduced run:')]
    return line.split()[2]


@pytest.mark.slow
def test_fail_fast_stops_at_the_first_divergent_step(reference, capsys, monkeypatch):
    code, out, err, seconds = early(capsys, monkeypatch, reference, '--fail-fast', DIVERGE_AT='3')
    assert code == 1, err
    assert 'Stopped early:  by --fail-fast (run KILLED): loss differs at step 3' in out
    assert 'Runs equal: False' in out
    assert seconds < 10, 'the 10 s training was stopped early'
    run = client().get_run(reproduced_of(out))
    assert run.info.status == 'KILLED'
    assert run.data.tags['reproduce.status'] == 'differ'
    prefix = json.loads(run.data.tags['reproduce.prefix'])
    assert prefix['stopped_by'] == '--fail-fast'
    assert prefix['stopped_early'] is True
    assert 'final' in prefix['not_compared']
    assert (
        '- stopped early: by --fail-fast (run KILLED): loss differs at step 3'
        in (run.data.tags['mlflow.note.content'])
    )
    assert max(m.step for m in client().get_metric_history(run.info.run_id, 'loss')) < 39


@pytest.mark.slow
def test_steps_n_says_equal_up_to_n_though_it_differs_later(reference, capsys, monkeypatch):
    code, out, err, seconds = early(
        capsys, monkeypatch, reference, '--steps', '6', '--output', 'json', DIVERGE_AT='20'
    )
    assert code == 0, err
    report = json.loads(out)
    assert report['status'] == 'equal'
    assert report['prefix'] == {
        'stopped_by': '--steps 6',
        'stopped_early': True,
        'steps': 6,
        'reference_steps': 39,
        'compared_points': 7,
        'not_compared': ['final'],
    }
    assert seconds < 10
    run = client().get_run(report['reproduced_run_id'])
    assert run.info.status == 'KILLED'
    assert run.data.tags['reproduce.status'] == 'equal'


@pytest.mark.slow
def test_steps_n_with_a_difference_before_n_differs(reference, capsys, monkeypatch):
    code, out, err, _ = early(capsys, monkeypatch, reference, '--steps', '6', DIVERGE_AT='4')
    assert code == 1, err
    assert 'Stopped early:  by --steps 6 (run KILLED): loss differs at step 4' in out
    assert 'Not compared:   final (logged after step 6)' in out


@pytest.mark.slow
def test_time_limit_judges_what_both_reached(reference, capsys, monkeypatch):
    code, out, err, seconds = early(capsys, monkeypatch, reference, '--time-limit', '4s')
    assert code == 0, err
    [line] = [line for line in out.splitlines() if line.startswith('Stopped early:')]
    assert line.startswith('Stopped early:  by --time-limit 4s (run KILLED): equal up to step ')
    assert line.endswith("of the reference's 39")
    assert seconds < 10
    assert client().get_run(reproduced_of(out)).info.status == 'KILLED'


@pytest.mark.slow
def test_time_limit_with_nothing_to_compare_is_an_error(reference, capsys, monkeypatch):
    code, out, err, _ = early(capsys, monkeypatch, reference, '--time-limit', '2s', WAIT_FIRST='30')
    assert code == 2, err  # status error, as for a reproduction that cannot start
    assert 'nothing to compare within 2s: no metric was logged by then (run KILLED)' in err
    assert len(err.strip().splitlines()) == 1
    runs = client().search_runs(
        [client().get_run(reference).info.experiment_id],
        f"tags.`reproduce.reference_run_id` = '{reference}'",
        order_by=['attributes.start_time DESC'],
        max_results=1,
    )
    assert runs[0].info.status == 'KILLED'
    assert runs[0].data.tags['reproduce.status'] == 'error'


def running_reproductions(reference: str) -> list:
    return client().search_runs(
        [client().get_run(reference).info.experiment_id],
        f"tags.`reproduce.reference_run_id` = '{reference}' and attributes.status = 'RUNNING'",
    )


@pytest.mark.slow
def test_sigterm_while_watching_ends_the_project_and_closes_its_run(reference, store, tmp_path):
    pid_file = tmp_path / 'pid'
    env = {'MLFLOW_TRACKING_URI': store, 'STEP_SECONDS': '1', 'STEPS': '60'}
    env['PID_FILE'] = str(pid_file)
    with start_tool('--run_id', reference, '--fail-fast', '--steps', '50', env=env) as tool:
        try:
            wait_for(pid_file.exists, 120, 'the script to start')
            wait_for(lambda: running_reproductions(reference), 60, 'its run')
            [run] = running_reproductions(reference)
            wait_for(lambda: client().get_metric_history(run.info.run_id, 'loss'), 60, 'a point')
            tool.send_signal(signal.SIGTERM)
            out, err = tool.communicate(timeout=60)
        finally:
            tool.kill()
    assert tool.returncode == 143, err
    assert process_gone(int(pid_file.read_text()))
    assert client().get_run(run.info.run_id).info.status == 'KILLED'
    assert 'reproduce.prefix' not in client().get_run(run.info.run_id).data.tags


@pytest.mark.slow
def test_a_server_that_slows_down_while_watched_still_gets_a_verdict(
    reference, store, capsys, monkeypatch
):
    """Each metric-history read takes 3 s from the proxy: the watcher falls
    behind, the verdict does not (it reads the whole run at the end)."""
    with proxy_in_front_of(store) as proxy:
        proxy.add(Rule('metrics/get-history', delay=3.0))
        monkeypatch.setenv('MLFLOW_TRACKING_URI', proxy.url)
        code, out, err, _ = early(
            capsys, monkeypatch, reference, '--fail-fast', DIVERGE_AT='30', STEPS='40'
        )
        assert proxy.count('metrics/get-history') >= 2
    assert code == 1, err
    assert 'Stopped early:  by --fail-fast (run KILLED): loss differs at step 30' in out


@pytest.mark.slow
def test_bisect_probes_stop_early_by_default(tmp_path, capsys, monkeypatch):
    """Commit 2 makes `loss` diverge from step 3: its probe, and the next
    commit's, stop there (KILLED, the prefix recorded); the others run to
    their end; the answer is the same as without stopping early."""
    git('init', '--quiet', '--bare', str(tmp_path / 'remote.git'), cwd=tmp_path)
    repo = tmp_path / 'repo'
    repo.mkdir()
    clone_with_remote(repo, {'steps.py': STEPS}, str(tmp_path / 'remote.git'))
    monkeypatch.setenv('STEPS', '24')
    reference = python_run(repo, 'steps.py')
    commits = [git('rev-parse', 'HEAD', cwd=repo)]
    for name, text in (('notes.txt', 'a'), ('diverge.txt', '3'), ('notes.txt', 'b')):
        (repo / name).write_text(text)
        commits.append(commit_all(repo, f'{name}: {text}'))
    git('push', '--quiet', 'origin', 'main', cwd=repo)
    code, out, err = reproduce(capsys, '--run_id', reference, '--bisect', '--output', 'json')
    assert code == 1, err
    bisect = json.loads(out)['bisect']
    assert bisect['first_changed_commit'] == commits[2]
    probes = {p['commit']: p for p in bisect['probes']}
    for commit in commits:
        if commit not in probes:
            continue  # not probed: the search did not need it
        probe = probes[commit]
        run = client().get_run(probe['reproduced_run_id'])
        stopped = commit in commits[2:]
        assert run.info.status == ('KILLED' if stopped else 'FINISHED'), commit
        assert (probe['prefix'] is not None) is stopped
        if stopped:
            assert probe['prefix']['stopped_by'] == '--fail-fast'
            assert max(m.step for m in client().get_metric_history(run.info.run_id, 'loss')) < 23
    assert commits[2] in probes


@pytest.mark.slow
def test_explain_probes_stop_early_by_default(installed, tmp_path, capsys, monkeypatch):
    """The recorder kept the reference's PYTHONHASHSEED 1 and OMP_NUM_THREADS
    1; with OMP_NUM_THREADS 2, `loss` diverges from step 3.  The probe that
    undoes only PYTHONHASHSEED (tried first) differs, and stops there."""
    git('init', '--quiet', '--bare', str(tmp_path / 'remote.git'), cwd=tmp_path)
    repo = tmp_path / 'repo'
    repo.mkdir()
    train = STEPS.replace(
        "diverge = int(os.environ.get('DIVERGE_AT', '-1'))",
        "diverge = 3 if os.environ.get('OMP_NUM_THREADS') == '2' else -1",
    )
    clone_with_remote(repo, {'steps.py': train}, str(tmp_path / 'remote.git'))
    variables = {'STEPS': '16', 'PYTHONHASHSEED': '1', 'OMP_NUM_THREADS': '1'}
    proc = run_python(str(installed / 'python'), repo, 'steps.py', env=variables)
    [reference] = [line[7:] for line in proc.stdout.splitlines() if line.startswith('RUN_ID=')]
    assert 'reproduce.environment' in client().get_run(reference).data.tags
    for k, v in {'STEPS': '16', 'PYTHONHASHSEED': '2', 'OMP_NUM_THREADS': '2'}.items():
        monkeypatch.setenv(k, v)
    code, out, err = reproduce(capsys, '--run_id', reference, '--explain', '--output', 'json')
    assert code == 1, err
    environment = json.loads(out)['explanation']['environment']
    assert [c['name'] for c in environment['culprits']] == ['OMP_NUM_THREADS']
    statuses = {
        tuple(p['changes']): client().get_run(p['reproduced_run_id']) for p in environment['probes']
    }
    stopped = statuses[('PYTHONHASHSEED',)]
    assert stopped.info.status == 'KILLED'
    assert json.loads(stopped.data.tags['reproduce.prefix'])['stopped_by'] == '--fail-fast'
    assert statuses[('OMP_NUM_THREADS',)].info.status == 'FINISHED'

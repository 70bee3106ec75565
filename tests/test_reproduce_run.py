from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SCRIPT, git, mlflow_run

import reproduce_run
from reproduce_run import Tolerance, compare_histories, judge, main

NAN, INF = math.nan, math.inf
TIGHT = Tolerance(rtol=1e-9, atol=0.0)


def client():
    import mlflow

    return mlflow.MlflowClient()


# --- judging: pure functions --------------------------------------------------

@pytest.mark.parametrize(('reproduced', 'reference', 'tol', 'expected'), [
    pytest.param(1.0, 1.0, TIGHT, True, id='identical'),
    pytest.param(1.0 + 1e-12, 1.0, TIGHT, True, id='within-rtol'),
    pytest.param(1.0 + 1e-6, 1.0, TIGHT, False, id='beyond-rtol'),
    pytest.param(1.05, 1.0, Tolerance(rtol=0.1), True, id='loose-rtol'),
    pytest.param(1e-12, 0.0, TIGHT, False, id='zero-reference-needs-atol'),
    pytest.param(1e-12, 0.0, Tolerance(rtol=0, atol=1e-9), True, id='atol'),
    pytest.param(1.09, 1.0, Tolerance(rtol=0.05, atol=0.05), True, id='atol-plus-rtol'),
    pytest.param(NAN, NAN, TIGHT, True, id='nan-equals-nan'),
    pytest.param(NAN, 1.0, Tolerance(rtol=1e9), False, id='nan-vs-number'),
    pytest.param(1.0, NAN, Tolerance(rtol=1e9), False, id='number-vs-nan'),
    pytest.param(INF, INF, TIGHT, True, id='inf-equals-inf'),
    pytest.param(-INF, -INF, TIGHT, True, id='minus-inf-equals-minus-inf'),
    pytest.param(INF, -INF, Tolerance(rtol=1e9), False, id='inf-vs-minus-inf'),
    pytest.param(INF, 1e308, Tolerance(rtol=1e9), False, id='inf-vs-finite'),
])
def test_values_close(reproduced, reference, tol, expected):
    assert reproduce_run.values_close(reproduced, reference, tol) is expected


@pytest.mark.parametrize(('reference', 'reproduced', 'equal', 'first', 'compared'), [
    pytest.param([(0, 1.0)], [(0, 1.0)], True, None, 1, id='single-equal'),
    pytest.param([(0, 1.0)], [(0, 2.0)], False, 0, 1, id='single-differs'),
    pytest.param([(i, float(i)) for i in range(5)], [(i, float(i)) for i in range(5)],
                 True, None, 5, id='history-equal'),
    pytest.param([(i, float(i)) for i in range(5)],
                 [(0, 0.0), (1, 1.0), (2, 2.0), (3, 9.0), (4, 4.0)],
                 False, 3, 5, id='last-values-agree-step-3-differs'),
    pytest.param([(i, 1.0) for i in range(5)], [(i, 1.0) for i in range(3)],
                 False, 3, 3, id='reproduced-history-shorter'),
    pytest.param([(i, 1.0) for i in range(3)], [(i, 1.0) for i in range(4)],
                 False, 3, 3, id='reproduced-history-longer'),
    pytest.param([(0, 1.0), (2, 1.0)], [(0, 1.0), (1, 1.0)], False, 1, 2, id='steps-differ'),
    pytest.param([(0, 1.0), (0, 2.0)], [(0, 1.0), (0, 2.0)], True, None, 2,
                 id='several-values-at-one-step-in-logging-order'),
    pytest.param([(0, 1.0), (0, 2.0)], [(0, 2.0), (0, 1.0)], False, 0, 2,
                 id='several-values-at-one-step-swapped'),
    pytest.param([(1, 2.0), (0, 1.0)], [(0, 1.0), (1, 2.0)], True, None, 2,
                 id='sorted-by-step'),
    pytest.param([(0, NAN)], [(0, NAN)], True, None, 1, id='nan-history'),
    pytest.param([], [(0, 1.0)], False, 0, 0, id='missing-in-reference'),
    pytest.param([(0, 1.0)], [], False, 0, 0, id='missing-in-reproduced'),
    pytest.param([(None, 1.0)], [(None, 2.0)], False, None, 1, id='latest-only-differs'),
    pytest.param([(None, 1.0)], [(None, 1.0)], True, None, 1, id='latest-only-equal'),
])
def test_compare_histories(reference, reproduced, equal, first, compared):
    verdict = compare_histories('m', reference, reproduced, TIGHT)
    assert (verdict.equal, verdict.first_divergent_step, verdict.steps_compared) == \
        (equal, first, compared)


def test_judge_compares_every_metric_either_run_has():
    verdict = judge({'a': [(0, 1.0)], 'b': [(0, 2.0)]}, {'a': [(0, 1.0)], 'c': [(0, 3.0)]}, TIGHT)
    assert [(m.key, m.reference, m.reproduced, m.equal) for m in verdict.metrics] == [
        ('a', 1.0, 1.0, True), ('b', 2.0, None, False), ('c', None, 3.0, False),
    ]
    assert verdict.equal is False


def test_judge_of_equal_runs_is_equal():
    assert judge({'a': [(0, 1.0)]}, {'a': [(0, 1.0)]}, TIGHT).equal is True


@pytest.mark.parametrize(('logged', 'expected'), [
    pytest.param('0.5', '0.5', id='plain'),
    pytest.param("'a b'", 'a b', id='mlflow-quoted-space'),
    pytest.param("'x; touch /tmp/pwned'", 'x; touch /tmp/pwned', id='mlflow-quoted-command'),
    pytest.param("''\"'\"'a'\"'\"''", "'a'", id='value-with-its-own-quotes'),
    pytest.param("'a", "'a", id='unbalanced-kept'),
    pytest.param('a b', 'a b', id='unquoted-space-kept'),
    pytest.param("''", '', id='empty'),
])
def test_unquote_param(logged, expected):
    assert reproduce_run.unquote_param(logged) == expected


@pytest.mark.parametrize(('declared', 'passed', 'not_passed'), [
    pytest.param(('alpha',), {'alpha': '1'}, {'own': 'x', 'autolog_p': '2'},
                 id='only-declared-params-are-passed'),
    pytest.param(None, {'alpha': '1', 'own': 'x', 'autolog_p': '2'}, {},
                 id='script-entry-point-gets-all'),
    pytest.param(('alpha', 'beta'), {'alpha': '1'}, {'own': 'x', 'autolog_p': '2'},
                 id='declared-but-absent-is-not-invented'),
])
def test_select_params(declared, passed, not_passed):
    params = reproduce_run.select_params(declared, {'alpha': '1', 'own': 'x', 'autolog_p': '2'})
    assert (params.passed, params.not_passed) == (passed, not_passed)


@pytest.mark.parametrize(('uri', 'expected'), [
    pytest.param('https://github.com/o/r.git#python/sklearn',
                 ('https://github.com/o/r.git', 'python/sklearn'), id='https-subdir'),
    pytest.param('file:///tmp/repo', ('file:///tmp/repo', ''), id='file-no-subdir'),
    pytest.param('/tmp/repo#a/', ('/tmp/repo', 'a'), id='path-trailing-slash'),
])
def test_split_source_uri(uri, expected):
    assert reproduce_run.split_source_uri(uri) == expected


@pytest.mark.parametrize(('text', 'expected'), [
    pytest.param('https://user:tok@host/r.git', 'https://***@host/r.git', id='user-password'),
    pytest.param('https://tok@host/r.git#sub', 'https://***@host/r.git#sub', id='token'),
    pytest.param('fatal: https://u:p@h/r and ssh://git@h/r', 'fatal: https://***@h/r and ssh://***@h/r',
                 id='in-a-sentence'),
    pytest.param('git@github.com:o/r.git', 'git@github.com:o/r.git', id='scp-style-no-secret'),
    pytest.param('https://host/r.git', 'https://host/r.git', id='nothing-to-mask'),
])
def test_mask_credentials(text, expected):
    assert reproduce_run.mask_credentials(text) == expected


# --- command line -------------------------------------------------------------

@pytest.mark.parametrize(('argv', 'dest', 'value'), [
    pytest.param(['--run_id', 'abc'], 'run_id', 'abc', id='run_id'),
    pytest.param(['--run-id', 'abc'], 'run_id', 'abc', id='run-id'),
    pytest.param(['--run-id', 'abc', '--experiment_name', 'x'], 'experiment_name', 'x',
                 id='experiment_name'),
    pytest.param(['--run-id', 'abc', '--experiment-name', 'x'], 'experiment_name', 'x',
                 id='experiment-name'),
    pytest.param(['--run-id', 'abc'], 'experiment_name', 'Default', id='experiment-default'),
    pytest.param(['--run-id', 'abc', '--rel_tol', '0.1'], 'rtol', 0.1, id='rel_tol'),
    pytest.param(['--run-id', 'abc', '--rtol', '0.1'], 'rtol', 0.1, id='rtol'),
    pytest.param(['--run-id', 'abc'], 'rtol', 1e-9, id='rtol-default'),
    pytest.param(['--run-id', 'abc'], 'atol', 0.0, id='atol-default'),
    pytest.param(['--run-id', 'abc', '-e', 'train'], 'entry_point', 'train', id='e'),
    pytest.param(['--run-id', 'abc', '--entry-point', 'train'], 'entry_point', 'train',
                 id='entry-point'),
    pytest.param(['--run-id', 'abc', '--env-manager', 'uv'], 'env_manager', 'uv',
                 id='env-manager'),
    pytest.param(['--run-id', 'abc', '--last-only'], 'last_only', True, id='last-only'),
])
def test_parse_args(argv, dest, value):
    assert getattr(reproduce_run.parse_args(argv), dest) == value


@pytest.mark.parametrize(('argv', 'message'), [
    pytest.param(['--run_id', 'not a run'], "expected an MLflow run ID (letters, digits, _ and -), "
                 "got 'not a run'", id='malformed-run-id'),
    pytest.param(['--run_id', 'a', '--rtol', 'abc'], "expected a number, got 'abc'",
                 id='non-numeric-rtol'),
    pytest.param(['--run_id', 'a', '--atol', '-1'], "expected a number >= 0, got '-1'",
                 id='negative-atol'),
    pytest.param(['--run_id', 'a', '--rtol', 'nan'], "expected a number >= 0, got 'nan'",
                 id='nan-rtol'),
    pytest.param(['--run_id', 'a', '--env-manager', 'pip'], "invalid choice: 'pip'",
                 id='unknown-env-manager'),
    pytest.param([], 'the following arguments are required: --run_id/--run-id',
                 id='missing-run-id'),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert 'Traceback' not in err


def test_help_and_argument_errors_do_not_import_mlflow():
    code = (
        'import sys, reproduce_run\n'
        'for argv in (["--help"], ["--run_id", "bad id"]):\n'
        '    try:\n'
        '        reproduce_run.main(argv)\n'
        '    except SystemExit:\n'
        '        pass\n'
        'print("mlflow" in sys.modules)\n'
    )
    proc = subprocess.run((sys.executable, '-c', code), cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.strip().splitlines()[-1] == 'False'


# --- end to end ---------------------------------------------------------------

def reproduce(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def reproduced_run(out: str):
    run_id = next(line.split()[2] for line in out.splitlines()
                  if line.startswith('Reproduced run:'))
    return client().get_run(run_id)


def test_deterministic_run_is_reproduced(reference, capsys):
    run_id = reference('sklearn_regression')
    code, out, _ = reproduce(capsys, '--run_id', run_id)
    assert code == 0
    assert out.splitlines()[-1] == 'Runs equal: True'
    table = out[out.index('+-'):]
    assert table.splitlines()[1].split() == ['|', 'Metric', '|', 'Run1', '|', 'Run2', '|',
                                             'Diff', '|']
    assert [line.split()[1] for line in table.splitlines()[3:6]] == ['mae', 'r2', 'rmse']
    new = reproduced_run(out)
    ref = client().get_run(run_id)
    assert new.info.status == 'FINISHED'
    assert new.data.metrics == ref.data.metrics
    assert new.data.tags['mlflow.source.git.commit'] == ref.data.tags['mlflow.source.git.commit']
    assert new.data.tags['mlflow.source.name'] == ref.data.tags['mlflow.source.name']
    assert new.info.run_name == f'reproduce-{ref.info.run_name}'


def test_nondeterministic_run_differs(reference, capsys):
    code, out, _ = reproduce(capsys, '--run_id', reference('nondeterministic'))
    assert code == 1
    assert out.splitlines()[-1] == 'Runs equal: False'


def test_loose_tolerance_accepts_small_differences(reference, capsys):
    code, out, _ = reproduce(capsys, '--run_id', reference('nondeterministic'), '--rtol', '10')
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True')


def test_history_that_diverges_midway_is_not_equal(reference, capsys, monkeypatch):
    run_id = reference('history')
    monkeypatch.setenv('SAMPLE_PERTURB_STEP', '3')  # for the reproduction only
    code, out, _ = reproduce(capsys, '--run_id', run_id)
    assert code == 1
    loss_row = next(line for line in out.splitlines() if line.startswith('| loss '))
    assert 'differs from step 3' in loss_row
    new = reproduced_run(out)
    assert new.data.metrics['loss'] == client().get_run(run_id).data.metrics['loss']


def test_last_only_ignores_a_midway_divergence(reference, capsys, monkeypatch):
    run_id = reference('history')
    monkeypatch.setenv('SAMPLE_PERTURB_STEP', '3')
    code, out, _ = reproduce(capsys, '--run_id', run_id, '--last-only')
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True')


def test_extra_params_are_not_passed(reference, capsys):
    run_id = reference('own_params')
    assert set(client().get_run(run_id).data.params) > {'n_neighbors'}
    code, out, _ = reproduce(capsys, '--run_id', run_id)
    assert code == 0, out
    assert 'Params passed:  n_neighbors=5' in out
    assert 'not declared by the entry point' in out


def test_verbose_lists_the_params_not_passed(reference, capsys):
    run_id = reference('own_params')
    own = sorted(set(client().get_run(run_id).data.params) - {'n_neighbors'})
    code, out, _ = reproduce(capsys, '--run_id', run_id, '--verbose')
    line = next(line for line in out.splitlines() if line.startswith('Params not passed'))
    assert all(f'{key}=' in line for key in own)


def test_entry_point_other_than_main(reference, capsys):
    run_id = reference('entry_points', '-e', 'train_tree', '-P', 'max_depth=2')
    code, out, _ = reproduce(capsys, '--run_id', run_id)
    assert code == 0, out
    new = reproduced_run(out)
    assert new.data.tags['mlflow.project.entryPoint'] == 'train_tree'
    assert new.data.params['max_depth'] == '2'


def test_script_entry_point_gets_the_params_mlflow_logged(reference, capsys):
    run_id = reference('entry_points', '-e', 'score.py', '-P', 'threshold=0.3')
    code, out, _ = reproduce(capsys, '--run_id', run_id)
    assert code == 0, out
    assert 'Params passed:  threshold=0.3' in out


ECHO_PROJECT = {
    'MLproject': 'entry_points:\n  main:\n    parameters:\n      msg: string\n'
                 '    command: python echo.py --msg {msg}\n',
    'echo.py': 'import argparse, mlflow\n'
               'p = argparse.ArgumentParser()\n'
               'p.add_argument("--msg")\n'
               'mlflow.log_metric("msg_length", len(p.parse_args().msg))\n',
}


def add_project(repo: Path, name: str, files: dict[str, str]) -> Path:
    (repo / name).mkdir()
    for filename, text in files.items():
        (repo / name / filename).write_text(text)
    git('add', '--all', cwd=repo)
    git('commit', '--quiet', '-m', f'add {name}', cwd=repo)
    return repo / name


@pytest.mark.parametrize('msg', [
    pytest.param('two words', id='space'),
    pytest.param("it's", id='quote'),
    pytest.param('$(id) `id` ; echo x', id='shell-syntax'),
])
def test_param_values_reach_the_project_unchanged(own_repo, store, capsys, msg):
    project = add_project(own_repo, 'echo', ECHO_PROJECT)
    run_id = mlflow_run(str(project), store, '-P', f'msg={msg}')
    code, out, _ = reproduce(capsys, '--run_id', run_id)
    assert code == 0, out
    assert reproduced_run(out).data.metrics['msg_length'] == len(msg)


def test_project_output_goes_to_stderr_and_report_to_stdout(reference, capfd):
    main(['--run_id', reference('failing', '-P', 'fail_at=5', fails=True)])
    out, err = capfd.readouterr()
    assert 'sample failure' in err
    assert 'sample failure' not in out


def test_failed_reproduction_exits_3_and_marks_the_run_failed(reference, capsys):
    code, out, err = reproduce(capsys, '--run_id', reference('failing', '-P', 'fail_at=2', fails=True))
    assert code == 3
    assert out == ''
    assert err.startswith('reproduce_run: error: the reproduced run ')
    assert 'sample failure: giving up at step 2' in err
    assert 'Traceback' not in err
    run_id = err.split('the reproduced run ')[1].split()[0]
    assert client().get_run(run_id).info.status == 'FAILED'


def test_runs_the_recorded_commit_not_the_working_copy(own_repo, store, capsys):
    run_id = mlflow_run(str(own_repo / 'sklearn_regression'), store)
    script = own_repo / 'sklearn_regression' / 'train.py'
    script.write_text(script.read_text().replace('import', 'raise SystemExit(9)\nimport', 1))
    git('commit', '--quiet', '-am', 'break the sample', cwd=own_repo)
    code, out, _ = reproduce(capsys, '--run_id', run_id)
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True')


def repo_state(repo: Path) -> dict[str, str]:
    return {
        'branch': git('branch', '--show-current', cwd=repo),
        'head': git('rev-parse', 'HEAD', cwd=repo),
        'status': git('status', '--porcelain', '--untracked-files=all', cwd=repo),
        'stash': git('stash', 'list', cwd=repo),
        'remotes': git('remote', '-v', cwd=repo),
        'shallow': git('rev-parse', '--is-shallow-repository', cwd=repo),
        'diff': git('diff', cwd=repo),
        'refs': git('for-each-ref', cwd=repo),
        'config': (repo / '.git' / 'config').read_text(),
    }


def test_working_copy_is_untouched(own_repo, store, capsys):
    run_id = mlflow_run(str(own_repo / 'sklearn_regression'), store)
    git('commit', '--quiet', '--allow-empty', '-m', 'later work', cwd=own_repo)
    (own_repo / 'sklearn_regression' / 'MLproject').write_text('not: [valid')
    (own_repo / 'untracked.txt').write_text('mine')
    git('stash', 'push', '--quiet', '--include-untracked', cwd=own_repo)
    (own_repo / 'README.md').write_text('an uncommitted edit')
    before = repo_state(own_repo)
    code, _, _ = reproduce(capsys, '--run_id', run_id)
    assert code == 0
    assert repo_state(own_repo) == before


def test_remote_source_at_a_commit_that_is_no_longer_a_tip(git_daemon, store, tmp_path, capsys):
    url, base = git_daemon
    work = tmp_path / 'work'
    git('clone', '--quiet', f'{url}/samples.git', str(work), cwd=tmp_path)
    commit = git('rev-parse', 'HEAD', cwd=work)
    run_id = mlflow_run(f'{url}/samples.git#sklearn_regression', store, '--version', commit)
    git('-c', 'user.email=t@e', '-c', 'user.name=t', 'commit', '--quiet', '--allow-empty',
        '-m', 'newer', cwd=work)
    git('push', '--quiet', 'origin', 'HEAD:main', cwd=work)
    assert git('ls-remote', f'{url}/samples.git', cwd=work).split()[0] != commit
    code, out, _ = reproduce(capsys, '--run_id', run_id)
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True')
    assert f'Source:         {url}/samples.git#sklearn_regression @ {commit}' in out


def test_seed_form_with_uri_still_works(git_daemon, reference, capsys):
    url, _ = git_daemon
    code, out, _ = reproduce(capsys, '--uri', f'{url}/samples.git#sklearn_regression',
                             '--run_id', reference('sklearn_regression'))
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True')


def test_against_a_real_tracking_server(mlflow_server, samples_repo, capsys, monkeypatch):
    run_id = mlflow_run(str(samples_repo / 'sklearn_regression'), mlflow_server)
    monkeypatch.setenv('MLFLOW_TRACKING_URI', mlflow_server)
    code, out, _ = reproduce(capsys, '--run_id', run_id, '--experiment-name', 'reproductions')
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True')
    new = reproduced_run(out)
    assert client().get_experiment(new.info.experiment_id).name == 'reproductions'


def test_run_without_git_source_is_refused(capsys):
    c = client()
    run = c.create_run(c.get_experiment_by_name('Default').experiment_id)
    c.set_terminated(run.info.run_id)
    code, out, err = reproduce(capsys, '--run_id', run.info.run_id)
    assert code == 2
    assert out == ''
    assert err.count('\n') == 1
    assert 'mlflow.source.type' in err and '--uri' in err


def test_unknown_run_exits_2(capsys, store):
    code, out, err = reproduce(capsys, '--run_id', 'f' * 32)
    assert (code, out) == (2, '')
    assert err == f'reproduce_run: error: run {"f" * 32} not found at tracking URI {store}\n'


def test_script_runs_as_a_command(reference):
    proc = subprocess.run(
        (sys.executable, str(SCRIPT), '--run_id', reference('sklearn_regression')),
        capture_output=True, text=True, env={**os.environ}, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == 'Runs equal: True'

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, SCRIPT, free_port, git, mlflow_run, start_mlflow_server, stop

import reproduce_run
from reproduce_run import Rules, Tolerance, compare_histories, judge, main

NAN, INF = math.nan, math.inf
TIGHT = Tolerance(rtol=1e-9, atol=0.0)


def client():
    import mlflow

    return mlflow.MlflowClient()


# --- judging: pure functions --------------------------------------------------


@pytest.mark.parametrize(
    ('reproduced', 'reference', 'tol', 'expected'),
    [
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
    ],
)
def test_values_close(reproduced, reference, tol, expected):
    assert reproduce_run.values_close(reproduced, reference, tol) is expected


@pytest.mark.parametrize(
    ('reference', 'reproduced', 'equal', 'first', 'compared'),
    [
        pytest.param([(0, 1.0)], [(0, 1.0)], True, None, 1, id='single-equal'),
        pytest.param([(0, 1.0)], [(0, 2.0)], False, 0, 1, id='single-differs'),
        pytest.param(
            [(i, float(i)) for i in range(5)],
            [(i, float(i)) for i in range(5)],
            True,
            None,
            5,
            id='history-equal',
        ),
        pytest.param(
            [(i, float(i)) for i in range(5)],
            [(0, 0.0), (1, 1.0), (2, 2.0), (3, 9.0), (4, 4.0)],
            False,
            3,
            5,
            id='last-values-agree-step-3-differs',
        ),
        pytest.param(
            [(i, 1.0) for i in range(5)],
            [(i, 1.0) for i in range(3)],
            False,
            3,
            3,
            id='reproduced-history-shorter',
        ),
        pytest.param(
            [(i, 1.0) for i in range(3)],
            [(i, 1.0) for i in range(4)],
            False,
            3,
            3,
            id='reproduced-history-longer',
        ),
        pytest.param([(0, 1.0), (2, 1.0)], [(0, 1.0), (1, 1.0)], False, 1, 2, id='steps-differ'),
        pytest.param(
            [(0, 1.0), (0, 2.0)],
            [(0, 1.0), (0, 2.0)],
            True,
            None,
            2,
            id='several-values-at-one-step-in-logging-order',
        ),
        pytest.param(
            [(0, 1.0, 10), (0, 2.0, 11)],
            [(0, 2.0, 10), (0, 1.0, 11)],
            False,
            0,
            2,
            id='several-values-at-one-step-swapped',
        ),
        pytest.param(
            [(0, 1.0), (0, 2.0)],
            [(0, 2.0), (0, 1.0)],
            False,
            0,
            2,
            id='several-values-at-one-step-swapped-no-timestamps',
        ),
        # The store returns values tied at one step and timestamp sorted by value.
        pytest.param(
            [(0, 1.0, 10), (0, 2.0, 10)],
            [(0, 2.0, 10), (0, 1.0, 10)],
            True,
            None,
            2,
            id='tie-at-one-step-and-timestamp',
        ),
        pytest.param(
            [(0, 1.0, 10), (0, 2.0, 10)],
            [(0, 2.0, 10), (0, 1.0, 11)],
            True,
            None,
            2,
            id='tie-in-reference-logging-order-in-reproduction',
        ),
        pytest.param(
            [(0, 2.0, 10), (0, 1.0, 11)],
            [(0, 1.0, 20), (0, 2.0, 20)],
            True,
            None,
            2,
            id='tie-in-reproduction-only',
        ),
        pytest.param(
            [(0, 1.0, 10), (0, 2.0, 10)],
            [(0, 1.0, 10), (0, 3.0, 10)],
            False,
            0,
            2,
            id='tie-with-a-different-value',
        ),
        pytest.param(
            [(0, 5.0, 9), (0, 1.0, 10), (0, 2.0, 10), (1, 3.0, 12)],
            [(0, 5.0, 9), (0, 2.0, 10), (0, 1.0, 10), (1, 3.0, 13)],
            True,
            None,
            4,
            id='tie-between-ordered-points',
        ),
        pytest.param(
            [(0, 1.0, 10), (0, 2.0, 10), (1, 3.0, 12)],
            [(0, 2.0, 10), (0, 1.0, 10), (1, 4.0, 12)],
            False,
            1,
            3,
            id='tie-equal-later-step-differs',
        ),
        # Run1 logged {1, 2} then 3; Run2 logged 2 then {1, 3}: both can be 2, 1, 3.
        pytest.param(
            [(0, 1.0, 10), (0, 2.0, 10), (0, 3.0, 11)],
            [(0, 2.0, 20), (0, 1.0, 21), (0, 3.0, 21)],
            True,
            None,
            3,
            id='ties-overlapping-across-sides',
        ),
        pytest.param(
            [(0, 5.0, 9), (0, 1.0, 10), (0, 2.0, 10)],
            [(0, 1.0, 9), (0, 5.0, 10), (0, 2.0, 10)],
            False,
            0,
            3,
            id='ordered-point-before-a-tie-differs',
        ),
        pytest.param(
            [(0, NAN, 10), (0, 1.0, 10)],
            [(0, 1.0, 10), (0, NAN, 10)],
            True,
            None,
            2,
            id='tie-with-nan',
        ),
        pytest.param(
            [(0, 1.0, 10), (0, 1.0, 10)], [(0, 1.0, 10)], False, 0, 1, id='tie-missing-a-value'
        ),
        pytest.param(
            [(0, 1.0, 10), (0, 2.0, 20)],
            [(0, 2.0, 10), (0, 1.0, 20)],
            False,
            0,
            2,
            id='no-step-logged-kept-in-order',
        ),
        pytest.param(
            [(1, 2.0), (0, 1.0)], [(0, 1.0), (1, 2.0)], True, None, 2, id='sorted-by-step'
        ),
        pytest.param([(0, NAN)], [(0, NAN)], True, None, 1, id='nan-history'),
        pytest.param([], [(0, 1.0)], False, 0, 0, id='missing-in-reference'),
        pytest.param([(0, 1.0)], [], False, 0, 0, id='missing-in-reproduced'),
        pytest.param([(None, 1.0)], [(None, 2.0)], False, None, 1, id='latest-only-differs'),
        pytest.param([(None, 1.0)], [(None, 1.0)], True, None, 1, id='latest-only-equal'),
    ],
)
def test_compare_histories(reference, reproduced, equal, first, compared):
    verdict = compare_histories('m', reference, reproduced, TIGHT)
    assert (verdict.equal, verdict.first_divergent_step, verdict.steps_compared) == (
        equal,
        first,
        compared,
    )


def test_judge_compares_every_metric_either_run_has():
    verdict = judge(
        {'a': [(0, 1.0)], 'b': [(0, 2.0)]}, {'a': [(0, 1.0)], 'c': [(0, 3.0)]}, Rules(TIGHT)
    )
    assert [(m.key, m.reference, m.reproduced, m.equal) for m in verdict.metrics] == [
        ('a', 1.0, 1.0, True),
        ('b', 2.0, None, False),
        ('c', None, 3.0, False),
    ]
    assert verdict.equal is False


def test_judge_of_equal_runs_is_equal():
    assert judge({'a': [(0, 1.0)]}, {'a': [(0, 1.0)]}, Rules(TIGHT)).equal is True


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


@pytest.mark.parametrize(
    ('uri', 'expected'),
    [
        pytest.param(
            'https://github.com/o/r.git#python/sklearn',
            ('https://github.com/o/r.git', 'python/sklearn'),
            id='https-subdir',
        ),
        pytest.param('file:///tmp/repo', ('file:///tmp/repo', ''), id='file-no-subdir'),
        pytest.param('/tmp/repo#a/', ('/tmp/repo', 'a'), id='path-trailing-slash'),
    ],
)
def test_split_source_uri(uri, expected):
    assert reproduce_run.split_source_uri(uri) == expected


@pytest.mark.parametrize(
    ('text', 'expected'),
    [
        pytest.param('https://user:tok@host/r.git', 'https://***@host/r.git', id='user-password'),
        pytest.param('https://tok@host/r.git#sub', 'https://***@host/r.git#sub', id='token'),
        pytest.param(
            'fatal: https://u:p@h/r and ssh://git@h/r',
            'fatal: https://***@h/r and ssh://***@h/r',
            id='in-a-sentence',
        ),
        pytest.param('git@github.com:o/r.git', 'git@github.com:o/r.git', id='scp-style-no-secret'),
        pytest.param('https://host/r.git', 'https://host/r.git', id='nothing-to-mask'),
    ],
)
def test_mask_credentials(text, expected):
    assert reproduce_run.mask_credentials(text) == expected


# --- command line -------------------------------------------------------------


@pytest.mark.parametrize(
    ('argv', 'dest', 'value'),
    [
        pytest.param(['--run_id', 'abc'], 'run_id', ['abc'], id='run_id'),
        pytest.param(['--run-id', 'abc'], 'run_id', ['abc'], id='run-id'),
        pytest.param(
            ['--run-id', 'abc', '--experiment_name', 'x'],
            'experiment_name',
            'x',
            id='experiment_name',
        ),
        pytest.param(
            ['--run-id', 'abc', '--experiment-name', 'x'],
            'experiment_name',
            'x',
            id='experiment-name',
        ),
        pytest.param(['--run-id', 'abc'], 'experiment_name', None, id='experiment-default'),
        pytest.param(['--run-id', 'abc', '--rel_tol', '0.1'], 'rtol', 0.1, id='rel_tol'),
        pytest.param(['--run-id', 'abc', '--rtol', '0.1'], 'rtol', 0.1, id='rtol'),
        pytest.param(['--run-id', 'abc'], 'rtol', 1e-9, id='rtol-default'),
        pytest.param(['--run-id', 'abc'], 'atol', 0.0, id='atol-default'),
        pytest.param(['--run-id', 'abc', '-e', 'train'], 'entry_point', 'train', id='e'),
        pytest.param(
            ['--run-id', 'abc', '--entry-point', 'train'], 'entry_point', 'train', id='entry-point'
        ),
        pytest.param(
            ['--run-id', 'abc', '--env-manager', 'uv'], 'env_manager', 'uv', id='env-manager'
        ),
        pytest.param(['--run-id', 'abc', '--last-only'], 'last_only', True, id='last-only'),
    ],
)
def test_parse_args(argv, dest, value):
    assert getattr(reproduce_run.parse_args(argv), dest) == value


@pytest.mark.parametrize(
    ('argv', 'message'),
    [
        pytest.param(
            ['--run_id', 'not a run'],
            "expected an MLflow run ID (letters, digits, _ and -), got 'not a run'",
            id='malformed-run-id',
        ),
        pytest.param(
            ['--run_id', 'a', '--rtol', 'abc'],
            "expected a number, got 'abc'",
            id='non-numeric-rtol',
        ),
        pytest.param(
            ['--run_id', 'a', '--atol', '-1'],
            "expected a number >= 0, got '-1'",
            id='negative-atol',
        ),
        pytest.param(
            ['--run_id', 'a', '--rtol', 'nan'], "expected a number >= 0, got 'nan'", id='nan-rtol'
        ),
        pytest.param(
            ['--run_id', 'a', '--env-manager', 'pip'],
            "invalid choice: 'pip'",
            id='unknown-env-manager',
        ),
        pytest.param(
            [], 'the following arguments are required: --run_id/--run-id', id='missing-run-id'
        ),
        pytest.param(
            ['--run_id', 'a', '--tolerance', 'loss'],
            "expected KEY=RTOL[,ATOL], got 'loss'",
            id='tolerance-without-equals',
        ),
        pytest.param(
            ['--run_id', 'a', '--tolerance', 'loss=-1'],
            "expected a number >= 0, got '-1' in 'loss=-1'",
            id='negative-metric-tolerance',
        ),
        pytest.param(
            ['--run_id', 'a', '--tolerance', 'loss=0.1,x'],
            "expected a number, got 'x' in 'loss=0.1,x'",
            id='non-numeric-metric-atol',
        ),
        pytest.param(
            ['--run_id', 'a', '--tolerance', 'loss=1,2,3'],
            "expected KEY=RTOL[,ATOL], got 'loss=1,2,3'",
            id='tolerance-three-values',
        ),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ''
    [line] = err.splitlines()  # one line: no usage block, no traceback
    assert line.startswith('reproduce_run: error: ') and line.endswith(' (see --help)')
    assert message in line


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


def metric_table(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('| Metric')) - 1
    return lines[start:-1]


def param_table(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('| Param')) - 1
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith('+-')) + 1
    return lines[start:end]


def reproduced_run(out: str):
    run_id = next(
        line.split()[2] for line in out.splitlines() if line.startswith('Reproduced run:')
    )
    return client().get_run(run_id)


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
    own = set(client().get_run(run_id).data.params) - {'n_neighbors'}
    assert own
    code, out, _ = reproduce(capsys, '--run_id', run_id)
    assert code == 0, out
    assert [line.split() for line in param_table(out)[3:-1]] == [
        ['|', 'n_neighbors', '|', '5', '|', '5', '|']
    ]
    assert f'Params not passed: {len(own)} not declared by the entry point' in out


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
    code, out, _ = reproduce(capsys, '--run_id', run_id)
    assert code == 0, out
    new = reproduced_run(out)
    assert new.data.tags['mlflow.project.entryPoint'] == 'train_tree'
    assert new.data.params['max_depth'] == '2'


def test_script_entry_point_gets_the_params_mlflow_logged(reference, capsys):
    run_id = reference('entry_points', '-e', 'score.py', '-P', 'threshold=0.3')
    code, out, _ = reproduce(capsys, '--run_id', run_id)
    assert code == 0, out
    assert [line.split() for line in param_table(out)[3:-1]] == [
        ['|', 'threshold', '|', '0.3', '|', '0.3', '|']
    ]


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
    code, out, _ = reproduce(capsys, '--run_id', run_id)
    assert code == 0, out
    assert reproduced_run(out).data.metrics['msg_length'] == len(msg)


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
    assert out == ''
    last = err.splitlines()[-1]
    assert last.startswith('reproduce_run: error: the reproduced run ')
    assert last.endswith(
        'failed (exit status 1); its last error: sample failure: giving up at step 2'
    )
    assert 'Traceback' not in err
    run_id = last.split('the reproduced run ')[1].split()[0]
    assert client().get_run(run_id).info.status == 'FAILED'
    assert run_snapshot(ref_id) == before


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
    git(
        '-c',
        'user.email=t@e',
        '-c',
        'user.name=t',
        'commit',
        '--quiet',
        '--allow-empty',
        '-m',
        'newer',
        cwd=work,
    )
    git('push', '--quiet', 'origin', 'HEAD:main', cwd=work)
    assert git('ls-remote', f'{url}/samples.git', cwd=work).split()[0] != commit
    code, out, _ = reproduce(capsys, '--run_id', run_id)
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True')
    assert f'Source:         {url}/samples.git#sklearn_regression @ {commit}' in out


def test_seed_form_with_uri_still_works(git_daemon, reference, capsys):
    url, _ = git_daemon
    code, out, _ = reproduce(
        capsys,
        '--uri',
        f'{url}/samples.git#sklearn_regression',
        '--run_id',
        reference('sklearn_regression'),
    )
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


def test_relative_sqlite_store_reaches_the_project(reference, store, capsys, monkeypatch):
    run_id = reference('sklearn_regression')
    monkeypatch.chdir(Path(store[len('sqlite:///') :]).parent)
    monkeypatch.setenv('MLFLOW_TRACKING_URI', 'sqlite:///mlflow.db')
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True'), err
    assert os.environ['MLFLOW_TRACKING_URI'] == 'sqlite:///mlflow.db'


def test_script_runs_as_a_command(reference):
    proc = subprocess.run(
        (sys.executable, str(SCRIPT), '--run_id', reference('sklearn_regression')),
        capture_output=True,
        text=True,
        env={**os.environ},
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == 'Runs equal: True'


# --- verdicts for machines and people (output formats, MLflow records) --------


def all_run_ids() -> set[str]:
    c = client()
    return {
        r.info.run_id
        for r in c.search_runs(
            [e.experiment_id for e in c.search_experiments(view_type=3)], run_view_type=3
        )
    }


def run_snapshot(run_id: str) -> dict:
    """Everything a reproduction must not change about the reference run."""
    run = client().get_run(run_id)
    return {
        'info': run.info.to_proto().SerializeToString(),
        'params': run.data.params,
        'tags': run.data.tags,
        'metrics': {
            k: [(m.step, m.timestamp, m.value) for m in client().get_metric_history(run_id, k)]
            for k in run.data.metrics
        },
        'artifacts': [f.path for f in client().list_artifacts(run_id)],
    }


def logged_run(metrics: dict[str, list[float]], params: dict[str, str] | None = None) -> str:
    """A finished run with the given metric histories, logged directly."""
    c = client()
    run = c.create_run(c.get_experiment_by_name('Default').experiment_id)
    for key, values in metrics.items():
        for step, value in enumerate(values):
            c.log_metric(run.info.run_id, key, value, step=step)
    for key, value in (params or {}).items():
        c.log_param(run.info.run_id, key, value)
    c.set_terminated(run.info.run_id)
    return run.info.run_id


def test_json_output_is_one_document_with_every_field(reference, capsys):
    run_id = reference('sklearn_regression')
    code, out, err = reproduce(
        capsys, '--run_id', run_id, '--output', 'json', '--tolerance', 'r*=0.01'
    )
    doc = json.loads(out)
    assert code == doc['exit_code'] == 0
    assert (doc['reference_run_id'], doc['status'], doc['equal']) == (run_id, 'equal', True)
    ref = client().get_run(run_id)
    assert doc['source'] == {
        'uri': ref.data.tags['mlflow.source.name'],
        'version': ref.data.tags['mlflow.source.git.commit'],
        'entry_point': 'main',
        'env_manager': 'local',
        'script': None,
    }
    assert doc['params']['passed'] == {'alpha': '0.005', 'l1_ratio': '0.5'}
    assert doc['params']['not_passed'] == {}
    assert doc['tolerance'] == {
        'rtol': 1e-9,
        'atol': 0.0,
        'ignored': [],
        'overrides': [{'pattern': 'r*', 'rtol': 0.01, 'atol': 0.0}],
    }
    by_key = {m['key']: m for m in doc['metrics']}
    assert sorted(by_key) == ['mae', 'r2', 'rmse']
    assert by_key['mae'] == {
        'key': 'mae',
        'reference': ref.data.metrics['mae'],
        'reproduced': ref.data.metrics['mae'],
        'abs_diff': 0.0,
        'rel_diff': 0.0,
        'equal': True,
        'ignored': False,
        'rtol': 1e-9,
        'atol': 0.0,
        'steps_compared': 1,
        'first_divergent_step': None,
    }
    assert (by_key['r2']['rtol'], by_key['rmse']['rtol']) == (0.01, 0.01)
    assert client().get_run(doc['reproduced_run_id']).info.status == 'FINISHED'


def test_json_output_of_a_failed_reproduction(reference, capsys):
    code, out, _ = reproduce(
        capsys, '--run_id', reference('failing', fails=True), '--output', 'json'
    )
    doc = json.loads(out)
    assert (code, doc['exit_code'], doc['status'], doc['equal']) == (3, 3, 'failed', None)
    assert doc['reproduced_run_id'] and 'failed (exit status 1)' in doc['message']
    assert 'sample failure: giving up at step 2' in doc['output_tail']


def test_json_output_of_an_error(capsys):
    code, out, err = reproduce(capsys, '--run_id', 'e' * 32, '--output', 'json')
    doc = json.loads(out)
    assert (code, doc['exit_code'], doc['status']) == (2, 2, 'error')
    assert (doc['reproduced_run_id'], doc['equal'], doc['metrics']) == (None, None, [])
    assert doc['message'].startswith(f'run {"e" * 32} not found')
    assert err.startswith('reproduce_run: error: run ')


def test_json_writes_nan_as_a_string(capsys):
    ref = logged_run({'a': [math.nan], 'd': [1.0]})
    other = logged_run({'a': [math.nan], 'd': [math.nan]})
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'json')
    assert code == 1
    metrics = {m['key']: m for m in json.loads(out)['metrics']}
    assert (metrics['a']['reference'], metrics['a']['reproduced'], metrics['a']['equal']) == (
        'NaN',
        'NaN',
        True,
    )
    assert (metrics['d']['reproduced'], metrics['d']['abs_diff'], metrics['d']['equal']) == (
        'NaN',
        'NaN',
        False,
    )
    assert math.isnan(float(metrics['d']['reproduced']))


@pytest.mark.parametrize(
    ('reference', 'reproduced', 'fields'),
    [
        pytest.param(INF, INF, ('Infinity', 'Infinity', 0.0, 0.0, True), id='inf'),
        pytest.param(-INF, -INF, ('-Infinity', '-Infinity', 0.0, 0.0, True), id='minus-inf'),
        pytest.param(1.0, INF, (1.0, 'Infinity', 'Infinity', 'Infinity', False), id='to-inf'),
        pytest.param(0.0, 0.5, (0.0, 0.5, 0.5, 'Infinity', False), id='from-zero'),
        pytest.param(2.0, 1.0, (2.0, 1.0, 1.0, 0.5, False), id='finite'),
    ],
)
def test_json_numbers_are_parseable(reference, reproduced, fields):
    """SQL stores keep inf as the largest float, so this is tested without one."""
    verdict = judge({'m': [(0, reference)]}, {'m': [(0, reproduced)]}, Rules(TIGHT))
    report = reproduce_run.Report('differ', 1, 'a', 'b', verdict=verdict)
    metric = json.loads(reproduce_run.format_json(report))['metrics'][0]
    assert (
        tuple(metric[k] for k in ('reference', 'reproduced', 'abs_diff', 'rel_diff', 'equal'))
        == fields
    )


def test_markdown_output(capsys):
    ref, other = logged_run({'acc': [0.5]}), logged_run({'acc': [0.75]})
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'markdown')
    assert code == 1
    assert out.startswith(f'**Reproduction of run {ref}**: differ\n')
    assert '| Metric   |   Run1 |   Run2 |   Diff | Note    |\n' in out
    assert '|----------|--------|--------|--------|---------|\n' in out
    assert f'- compared run: `{other}`' in out
    assert '| acc      |    0.5 |   0.75 |   0.25 | differs |\n' in out
    assert out.endswith('\nRuns equal: False\n')


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
    }
    ref_experiment = client().get_run(run_id).info.experiment_id
    note = tags['mlflow.note.content']
    assert note.startswith(
        f'**Reproduction of run [{run_id}](#/experiments/{ref_experiment}/runs/{run_id})**: equal'
    )
    assert '| mae ' in note and note.endswith('Runs equal: True')
    path = client().download_artifacts(new.info.run_id, 'reproduce/comparison.json')
    assert json.loads(Path(path).read_text()) == doc
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
    png = Path(client().download_artifacts(new_id, 'reproduce/plots/loss.png')).read_bytes()
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


@pytest.mark.parametrize(
    ('rules', 'key', 'tolerance', 'ignored'),
    [
        pytest.param(Rules(TIGHT), 'loss', TIGHT, False, id='default'),
        pytest.param(
            Rules(TIGHT, (('val_*', Tolerance(0.1)),)),
            'val_loss',
            Tolerance(0.1),
            False,
            id='glob-override',
        ),
        pytest.param(
            Rules(TIGHT, (('val_*', Tolerance(0.1)),)), 'loss', TIGHT, False, id='glob-not-matching'
        ),
        pytest.param(
            Rules(TIGHT, (('*', Tolerance(0.1)), ('loss', Tolerance(0.2)))),
            'loss',
            Tolerance(0.2),
            False,
            id='last-match-wins',
        ),
        pytest.param(Rules(TIGHT, ignored=('*_time',)), 'training_time', TIGHT, True, id='ignored'),
    ],
)
def test_rules(rules, key, tolerance, ignored):
    assert (rules.tolerance_for(key), rules.is_ignored(key)) == (tolerance, ignored)


def test_rules_name_patterns_that_match_nothing():
    rules = Rules(TIGHT, (('val_*', Tolerance(0.1)), ('los', Tolerance(0.1))), ('*_time',))
    assert rules.unmatched(['loss', 'val_loss']) == ['los', '*_time']


def test_ignored_metric_is_listed_but_not_judged(capsys):
    ref = logged_run({'acc': [0.5], 'training_time': [10.0]})
    other = logged_run({'acc': [0.5], 'training_time': [12.0]})
    code, out, _ = reproduce(
        capsys, '--run_id', ref, '--compare-to', other, '--ignore-metric', '*_time'
    )
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True')
    row = next(line for line in out.splitlines() if line.startswith('| training_time'))
    assert row.split('|')[-2].strip() == 'ignored'


def test_glob_tolerance_applies_to_matching_metrics_only(capsys):
    ref = logged_run({'val_acc': [0.50], 'val_loss': [1.0], 'acc': [0.5]})
    other = logged_run({'val_acc': [0.51], 'val_loss': [1.01], 'acc': [0.51]})
    code, _, _ = reproduce(
        capsys, '--run_id', ref, '--compare-to', other, '--tolerance', 'val_*=0.05'
    )
    assert code == 1
    code, out, _ = reproduce(
        capsys,
        '--run_id',
        ref,
        '--compare-to',
        other,
        '--tolerance',
        'val_*=0.05',
        '--tolerance',
        'acc=0,0.02',
    )
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True')


def test_unknown_tolerance_key_warns(capsys):
    ref = logged_run({'acc': [0.5]})
    code, _, err = reproduce(
        capsys,
        '--run_id',
        ref,
        '--compare-to',
        ref,
        '--tolerance',
        'accuracy=0.1',
        '--ignore-metric',
        'nothing',
    )
    assert code == 0
    assert "reproduce_run: warning: 'accuracy' matches no metric of either run\n" in err
    assert "reproduce_run: warning: 'nothing' matches no metric of either run\n" in err


def test_compare_to_runs_nothing_and_makes_no_run(capsys):
    ref = logged_run({'acc': [0.5, 0.6]}, {'lr': '0.1'})
    other = logged_run({'acc': [0.5, 0.7]}, {'lr': '0.1'})
    before_runs, before_other = all_run_ids(), run_snapshot(other)
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other)
    assert code == 1
    assert 'differs from step 1' in out
    assert f'Compared run:   {other}' in out
    assert all_run_ids() == before_runs
    assert run_snapshot(other) == before_other


def test_a_reference_still_running_is_flagged(capsys):
    c = client()
    running = c.create_run(c.get_experiment_by_name('Default').experiment_id).info.run_id
    c.log_metric(running, 'acc', 0.5)
    code, _, err = reproduce(capsys, '--run_id', running, '--compare-to', running)
    assert code == 0
    assert (
        f'reproduce_run: warning: run {running} is still RUNNING: its metrics may be '
        f'incomplete\n' in err
    )


def test_compare_to_flags_params_that_differ(capsys):
    ref = logged_run({'acc': [0.5]}, {'lr': '0.1'})
    other = logged_run({'acc': [0.5]}, {'lr': '0.2'})
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other)
    assert code == 1
    assert [line.split() for line in param_table(out)[3:-1]] == [
        ['|', 'lr', '|', '0.1', '|', '0.2', '|', 'differs', '|']
    ]
    assert out.splitlines()[-1] == 'Runs equal: False'


def test_changed_project_defaults_are_flagged(own_repo, store, capsys):
    project = add_project(own_repo, 'echo', ECHO_PROJECT)
    run_id = mlflow_run(str(project), store, '-P', 'msg=hi')
    mlproject = project / 'MLproject'
    mlproject.write_text(
        mlproject.read_text().replace(
            '      msg: string\n', '      msg: string\n      extra: {type: string, default: x}\n'
        )
    )
    git('commit', '--quiet', '-am', 'a new declared param', cwd=own_repo)
    code, out, _ = reproduce(
        capsys, '--run_id', run_id, '--version', git('rev-parse', 'HEAD', cwd=own_repo)
    )
    assert code == 1
    assert [line.split() for line in param_table(out)[3:-1]] == [
        ['|', 'extra', '|', '-', '|', 'x', '|', 'differs', '|'],
        ['|', 'msg', '|', 'hi', '|', 'hi', '|', '|'],
    ]


def test_dry_run_makes_no_run_and_prints_the_plan(reference, capsys):
    run_id = reference('own_params')
    before = all_run_ids()
    code, out, _ = reproduce(capsys, '--run_id', run_id, '--dry-run')
    assert code == 0
    assert all_run_ids() == before
    ref = client().get_run(run_id)
    assert (
        f'Source:         {ref.data.tags["mlflow.source.name"]} @ '
        f'{ref.data.tags["mlflow.source.git.commit"]}' in out
    )
    assert 'Entry point:    main (env manager: local)' in out
    assert 'Params to pass: n_neighbors=5' in out
    assert 'Params not passed (not declared by the entry point): algorithm=' in out
    assert 'Experiment:     Default' in out


def test_dry_run_json_and_an_impossible_plan(reference, capsys):
    code, out, _ = reproduce(
        capsys, '--run_id', reference('sklearn_regression'), '--dry-run', '--output', 'json'
    )
    doc = json.loads(out)
    assert (code, doc['status'], doc['reproduced_run_id']) == (0, 'planned', None)
    assert doc['params']['passed'] == {'alpha': '0.005', 'l1_ratio': '0.5'}
    code, out, err = reproduce(
        capsys, '--run_id', reference('sklearn_regression'), '--dry-run', '--entry-point', 'nope'
    )
    assert (code, out) == (2, '')
    assert "Could not find nope among entry points ['main']" in err


# --- faults, bad input and hostile input ---------------------------------------


def recorded_run(
    source: str,
    commit: str,
    params: dict[str, str] | None = None,
    entry_point: str = 'main',
    metrics: dict[str, float] | None = None,
) -> str:
    """A run carrying what `mlflow run` records (source, commit, entry point,
    params quoted as MLflow quotes them), made without running anything: for
    runs that would be slow or harmful to make for real."""
    c = client()
    run = c.create_run(
        c.get_experiment_by_name('Default').experiment_id,
        tags={
            'mlflow.source.name': source,
            'mlflow.source.type': 'PROJECT',
            'mlflow.source.git.commit': commit,
            'mlflow.project.entryPoint': entry_point,
        },
    )
    for key, value in (params or {}).items():
        c.log_param(run.info.run_id, key, shlex.quote(value))
    for key, value in (metrics or {}).items():
        c.log_metric(run.info.run_id, key, value)
    c.set_terminated(run.info.run_id)
    return run.info.run_id


def reproductions_of(run_id: str) -> list:
    """The reproduced runs of a reference (not the parent runs of --repeat,
    which carry the reference's ID too)."""
    c = client()
    runs = c.search_runs(
        [e.experiment_id for e in c.search_experiments()],
        f"tags.`reproduce.reference_run_id` = '{run_id}'",
    )
    return [r for r in runs if 'reproduce.repeat' not in r.data.tags]


def process_gone(pid: int) -> bool:
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ('Z', 'X')  # a zombie has stopped running


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.2)


def start_tool(*argv: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        (sys.executable, str(SCRIPT), *argv),
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ('command', 'quoted'),
    [
        pytest.param("python a.py --msg '{msg}'", {'msg'}, id='single-quotes'),
        pytest.param('python a.py --msg "{msg}" {n}', {'msg'}, id='double-quotes'),
        pytest.param('python a.py --msg {msg}', set(), id='bare'),
        pytest.param("python a.py '{{msg}}' {n}", set(), id='literal-braces'),
        pytest.param("python a.py \\'{msg}", set(), id='escaped-quote'),
        pytest.param('python a.py "it\'s {msg}"', {'msg'}, id='apostrophe-inside-double-quotes'),
        pytest.param("python a.py '--x=1' {msg} '{n}'", {'n'}, id='after-a-closed-quote'),
    ],
)
def test_quoted_placeholders(command, quoted):
    contexts = reproduce_run.placeholder_contexts(command)
    assert {p.key for p in contexts if p.context} == quoted


@pytest.mark.parametrize(
    ('value', 'unsafe'),
    [
        pytest.param('hello', False, id='plain'),
        pytest.param('a-b_c.d/e:f=1,2', False, id='safe-punctuation'),
        pytest.param('', False, id='empty'),
        pytest.param('x; touch /tmp/pwned', True, id='semicolon'),
        pytest.param('$(id)', True, id='command-substitution'),
        pytest.param('two words', True, id='space'),
        pytest.param("it's", True, id='quote'),
    ],
)
def test_unsafe_params(value, unsafe):
    unsafe_keys = [
        p.key
        for p in reproduce_run.unsafe_params("python a.py '{msg}' {n}", {'msg': value, 'n': value})
    ]
    assert unsafe_keys == (['msg'] if unsafe else [])


def test_injection_through_a_quoted_placeholder_is_refused(samples_repo, capsys, tmp_path):
    pwned = tmp_path / 'pwned'
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(
        f'file://{samples_repo}#quoted_command', commit, {'msg': f'x; touch {pwned}'}
    )
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err.startswith("reproduce_run: error: entry point 'main' puts {msg} inside quotes")
    assert 'refusing to run it (--allow-unsafe-command runs it anyway)' in err
    assert err.count('\n') == 1
    assert reproductions_of(run_id) == []
    code, out, err = reproduce(capsys, '--run_id', run_id, '--dry-run')
    assert code == 2
    assert not pwned.exists()


def test_allow_unsafe_command_runs_it_with_a_warning(samples_repo, capsys, tmp_path):
    pwned = tmp_path / 'pwned'
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    # The shell ends the quotes at the value's own: the project gets --msg x.
    run_id = recorded_run(
        f'file://{samples_repo}#quoted_command',
        commit,
        {'msg': f'x; touch {pwned}'},
        metrics={'msg_length': 1.0},
    )
    code, out, err = reproduce(capsys, '--run_id', run_id, '--allow-unsafe-command')
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True'), err
    assert 'running it because of --allow-unsafe-command' in err
    assert pwned.exists()  # the danger the check guards against is real


@pytest.mark.parametrize(
    ('sig', 'code'),
    [
        pytest.param(signal.SIGINT, 130, id='SIGINT'),
        pytest.param(signal.SIGTERM, 143, id='SIGTERM'),
    ],
)
def test_signal_mid_run_ends_the_project_and_marks_the_run_killed(
    samples_repo, store, tmp_path, sig, code
):
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(f'file://{samples_repo}#slow', commit, {'seconds': '120'})
    before = run_snapshot(run_id)
    pid_file, tmp = tmp_path / 'pid', tmp_path / 'tmp'
    tmp.mkdir()
    tool = start_tool(
        '--run_id', run_id, env={'SAMPLE_PID_FILE': str(pid_file), 'TMPDIR': str(tmp)}
    )
    try:
        wait_for(pid_file.exists, 90, 'the project to start')
        wait_for(lambda: pid_file.read_text().strip(), 10, 'the PID')
        tool.send_signal(sig)
        out, err = tool.communicate(timeout=60)
    finally:
        tool.kill()
    assert tool.returncode == code, err
    assert process_gone(int(pid_file.read_text()))
    [new] = reproductions_of(run_id)
    assert new.info.status == 'KILLED'
    assert list(tmp.iterdir()) == []
    assert 'reproduce_run.py' not in err  # no traceback of ours
    assert run_snapshot(run_id) == before


def test_no_temporary_folder_survives(reference, tmp_path):
    for sample, args, code in (('sklearn_regression', (), 0), ('failing', ('-P', 'fail_at=2'), 3)):
        tmp = tmp_path / sample
        tmp.mkdir()
        run_id = reference(sample, *args, fails=code == 3)
        tool = start_tool('--run_id', run_id, env={'TMPDIR': str(tmp)})
        tool.communicate(timeout=240)
        assert tool.returncode == code
        assert list(tmp.iterdir()) == []


def test_unreachable_tracking_server_is_one_line(capsys, monkeypatch):
    uri = f'http://127.0.0.1:{free_port()}'
    monkeypatch.setenv('MLFLOW_TRACKING_URI', uri)
    code, out, err = reproduce(capsys, '--run_id', 'a' * 32)
    assert (code, out) == (2, '')
    assert err == (
        f'reproduce_run: error: cannot read run {"a" * 32} from {uri}: the tracking '
        f'server does not answer (Connection refused)\n'
    )


@contextlib.contextmanager
def hanging_up_server() -> Iterator[tuple[str, list[int]]]:
    """(URL, [connections so far]) of a port on 127.0.0.1 that accepts each
    connection and closes it at once, as a server failing every request would."""
    listener = socket.create_server(('127.0.0.1', 0))
    accepted = [0]

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener closed
            while True:
                connection = listener.accept()[0]
                accepted[0] += 1  # before the client can see the hang-up
                connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{listener.getsockname()[1]}', accepted
    finally:
        listener.close()


@pytest.mark.parametrize(
    ('user_retries', 'connections'),
    [
        # One probe of /health, then MLflow's first request and its retries (its
        # own default would make 1 + 8).
        pytest.param(None, 1 + 3, id='tool-default-2-retries'),
        pytest.param('0', 1 + 1, id='user-setting-wins'),
    ],
)
def test_retries_to_an_unanswering_server(capsys, monkeypatch, user_retries, connections):
    monkeypatch.setenv('MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR', '0')  # same count, no waiting
    if user_retries is not None:
        monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', user_retries)
    with hanging_up_server() as (uri, accepted):
        monkeypatch.setenv('MLFLOW_TRACKING_URI', uri)
        code, out, err = reproduce(capsys, '--run_id', 'a' * 32)
    assert (code, out) == (2, '')
    assert err.startswith(f'reproduce_run: error: cannot read run {"a" * 32} from {uri}: ')
    assert accepted == [connections]
    assert os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES') == user_retries


def test_tracking_server_stopping_mid_run(tmp_path, samples_repo, monkeypatch):
    server = start_mlflow_server(tmp_path / 'server')
    try:
        monkeypatch.setenv('MLFLOW_TRACKING_URI', server.url)
        commit = git('rev-parse', 'HEAD', cwd=samples_repo)
        run_id = recorded_run(f'file://{samples_repo}#slow', commit, {'seconds': '120'})
        pid_file = tmp_path / 'pid'
        tool = start_tool(
            '--run_id',
            run_id,
            '--output',
            'json',
            env={
                'SAMPLE_PID_FILE': str(pid_file),
                'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '0',
                'MLFLOW_HTTP_REQUEST_TIMEOUT': '5',
                'REPRODUCE_RUN_CLOSE_TIMEOUT': '3',
            },
        )
        try:
            wait_for(pid_file.exists, 90, 'the project to start')
            wait_for(lambda: pid_file.read_text().strip(), 10, 'the PID')
            stop(server.proc)
            out, err = tool.communicate(timeout=120)
        finally:
            tool.kill()
    finally:
        stop(server.proc)
    # The project cannot log without its server, so it fails: exit 3, its own
    # error quoted; the run cannot be closed, and the last line says how to.
    doc = json.loads(out)
    assert (tool.returncode, doc['status']) == (3, 'failed'), err
    new_id = doc['reproduced_run_id']
    assert err.splitlines()[-1].startswith(f'reproduce_run: error: run {new_id} is left RUNNING')
    assert 'reproduce_run.py' not in err
    assert process_gone(int(pid_file.read_text()))


def test_unreachable_git_remote_names_uri_and_commit(reference, capsys):
    run_id = reference('sklearn_regression')
    commit = client().get_run(run_id).data.tags['mlflow.source.git.commit']
    uri = f'git://127.0.0.1:{free_port()}/samples.git'
    code, out, err = reproduce(capsys, '--run_id', run_id, '--uri', f'{uri}#sklearn_regression')
    assert (code, out) == (2, '')
    assert err.startswith(
        f'reproduce_run: error: cannot fetch {uri}#sklearn_regression at {commit}: '
    )
    assert err.count('\n') == 1


def test_missing_local_source_suggests_the_recorded_remote(
    git_daemon, samples_repo, capsys, tmp_path
):
    url, _ = git_daemon
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(f'file://{tmp_path}/laptop/repo#sklearn_regression', commit)
    client().set_tag(run_id, 'mlflow.source.git.repoURL', f'{url}/samples.git')
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err.endswith(
        f"; the run also records its remote: try --uri '{url}/samples.git#sklearn_regression'\n"
    )


def test_credentials_in_a_failing_uri_are_masked(reference, capsys):
    run_id = reference('sklearn_regression')
    uri = f'https://user:s3cret@127.0.0.1:{free_port()}/samples.git'
    code, out, err = reproduce(capsys, '--run_id', run_id, '--uri', uri, '--output', 'json')
    assert code == 2
    assert 's3cret' not in out + err
    assert 'https://***@127.0.0.1' in json.loads(out)['message']


def run_of_a_commit_gone_from_the_remote(
    git_daemon: tuple[str, Path], samples_repo: Path, tmp_path: Path
) -> tuple[str, str, str]:
    """(run ID, commit, remote): a run recorded at a commit that a force push
    and a garbage collection then removed from the remote."""
    url, base = git_daemon
    bare = base / f'{tmp_path.name}.git'
    git('clone', '--quiet', '--bare', str(samples_repo), str(bare), cwd=tmp_path)
    work = tmp_path / 'work'
    git('clone', '--quiet', str(bare), str(work), cwd=tmp_path)
    git(
        '-c',
        'user.email=t@e',
        '-c',
        'user.name=t',
        'commit',
        '--quiet',
        '--allow-empty',
        '-m',
        'soon gone',
        cwd=work,
    )
    gone = git('rev-parse', 'HEAD', cwd=work)
    git('push', '--quiet', 'origin', 'HEAD:main', cwd=work)
    run_id = recorded_run(f'{url}/{bare.name}#sklearn_regression', gone)
    git('push', '--quiet', '--force', 'origin', 'HEAD~1:main', cwd=work)
    git('reflog', 'expire', '--expire=now', '--all', cwd=bare)
    git('gc', '--quiet', '--prune=now', cwd=bare)
    return run_id, gone, f'{url}/{bare.name}'


def test_commit_gone_from_the_remote(git_daemon, samples_repo, capsys, tmp_path):
    run_id, gone, remote = run_of_a_commit_gone_from_the_remote(git_daemon, samples_repo, tmp_path)
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err == (
        f'reproduce_run: error: commit {gone} is not available from '
        f'{remote} (history rewritten, or a typo?)\n'
    )


def test_credentials_are_masked_in_every_output_and_tag(
    git_daemon, samples_repo, reference, capsys, monkeypatch
):
    url, _ = git_daemon
    secret_base = 'https://user:s3cret@example.invalid/'
    # git rewrites the URL before connecting: the daemon serves it, offline.
    monkeypatch.setenv('GIT_CONFIG_COUNT', '1')
    monkeypatch.setenv('GIT_CONFIG_KEY_0', f'url.{url}/.insteadOf')
    monkeypatch.setenv('GIT_CONFIG_VALUE_0', secret_base)
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(
        f'{secret_base}samples.git#sklearn_regression',
        commit,
        {'alpha': '0.005', 'l1_ratio': '0.5'},
        metrics=client().get_run(reference('sklearn_regression')).data.metrics,
    )
    code, out, err = reproduce(capsys, '--run_id', run_id, '--output', 'json', '--verbose')
    assert code == 0, err
    doc = json.loads(out)
    new_id = doc['reproduced_run_id']
    recorded = Path(client().download_artifacts(new_id, 'reproduce/comparison.json')).read_text()
    tags = client().get_run(new_id).data.tags
    assert 's3cret' not in out + err + recorded + json.dumps(tags)
    assert doc['source']['uri'] == 'https://***@example.invalid/samples.git#sklearn_regression'
    assert tags['mlflow.source.name'] == doc['source']['uri']


def test_mlflow_failing_after_creating_the_run_marks_it_failed(reference, capsys):
    run_id = reference('sklearn_regression')
    code, out, err = reproduce(capsys, '--run_id', run_id, '--env-manager', 'conda')
    assert (code, out) == (2, '')
    assert 'cannot launch the project (run ' in err and 'marked FAILED' in err
    [new] = [r for r in reproductions_of(run_id) if r.data.tags['mlflow.project.env'] == 'conda']
    assert new.info.status == 'FAILED'


def test_deleted_run_is_refused(capsys):
    run_id = logged_run({'a': [1.0]})
    client().delete_run(run_id)
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err == (
        f'reproduce_run: error: run {run_id} is deleted; restore it with '
        f'`mlflow runs restore --run-id {run_id}` to reproduce it\n'
    )


def test_run_in_a_deleted_experiment_is_refused(capsys, tmp_path):
    c = client()
    experiment_id = c.create_experiment(f'doomed-{tmp_path.name}')
    run_id = c.create_run(experiment_id).info.run_id
    c.set_terminated(run_id)
    c.delete_experiment(experiment_id)
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert 'is in deleted experiment' in err and 'mlflow experiments restore' in err


def test_entry_point_missing_at_that_commit(samples_repo, capsys):
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(
        f'file://{samples_repo}#sklearn_regression', commit, entry_point='evaluate'
    )
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err.startswith(
        f'reproduce_run: error: the MLproject at commit {commit[:12]} cannot '
        f"be used: Could not find evaluate among entry points ['main']"
    )


def test_mlproject_that_does_not_parse(own_repo, capsys):
    (own_repo / 'sklearn_regression' / 'MLproject').write_text('entry_points: [main\n')
    git('commit', '--quiet', '-am', 'break the MLproject', cwd=own_repo)
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    run_id = recorded_run(f'file://{own_repo}#sklearn_regression', commit)
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err.startswith(
        f'reproduce_run: error: the MLproject at commit {commit[:12]} cannot be used: '
    )
    assert err.count('\n') == 1


def test_declared_param_without_default_missing_from_the_run(own_repo, capsys):
    add_project(own_repo, 'echo', ECHO_PROJECT)
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    run_id = recorded_run(f'file://{own_repo}#echo', commit, {'other': '1'})
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err == (
        "reproduce_run: error: entry point 'main' cannot run with the reference "
        "run's params: No value given for missing parameters: 'msg'\n"
    )
    assert reproductions_of(run_id) == []


# --- the README stays true to the code ----------------------------------------


def readme_table(heading: str) -> list[list[str]]:
    text = (ROOT / 'README.md').read_text()
    section = text.split(f'\n## {heading}\n', 1)[1].split('\n## ', 1)[0]
    rows = [line for line in section.splitlines() if line.startswith('|')][2:]
    return [[cell.strip() for cell in row.strip('|').split(' | ')] for row in rows]


def test_readme_lists_every_exit_code():
    documented = {int(row[0]) for row in readme_table('Exit codes')}
    assert documented == {
        value for name, value in vars(reproduce_run).items() if name.startswith('EXIT_')
    }

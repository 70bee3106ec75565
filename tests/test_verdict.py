"""The verdict: metric histories compared within tolerances (pure, in tables),
infinite tolerances, per-metric rules, --compare-to, values tied at one step
and one timestamp, and runs that differ or not end to end."""

from __future__ import annotations

import json

import pytest
from helpers import (
    ECHO_PROJECT,
    INF,
    NAN,
    TIGHT,
    add_project,
    all_run_ids,
    artifact_bytes,
    client,
    git,
    logged_run,
    mlflow_run,
    param_table,
    reproduce,
    reproduce_json,
    reproduced_run,
    run_snapshot,
)

import reproduce_run
from reproduce_run import Rules, Tolerance, compare_histories, judge


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


# --- infinite tolerances --------------------------------------------------------------


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
        ref,
        run.info.run_id,
        verdict=verdict,
        rules=reproduce_run.Rules(Tolerance(rtol=INF)),
    )
    reproduce_run.record_verdict(c, report, plots=False)
    assert capsys.readouterr().err == ''
    doc = json.loads(artifact_bytes(other, 'reproduce/comparison.json'))
    assert (doc['tolerance']['rtol'], doc['metrics'][0]['rtol'], doc['equal']) == (
        'Infinity',
        'Infinity',
        True,
    )
    assert c.get_run(other).data.tags['reproduce.rtol'] == 'inf'


# --- values tied at one step and one timestamp ----------------------------------------


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
    code, report, err = reproduce_json(capsys, '--run_id', ref, '--compare-to', other)
    assert (code, report['status'], err) == (0, 'equal', '')
    assert [(m['key'], m['equal']) for m in report['metrics']] == [('acc', True), ('loss', True)]


def test_values_at_one_step_in_another_order_still_differ(capsys):
    t = 1_700_000_000_000
    ref = batch_run([('loss', 2.0, t, 0), ('loss', 1.0, t + 1, 0)])
    other = batch_run([('loss', 1.0, t, 0), ('loss', 2.0, t + 1, 0)])
    code, report, _ = reproduce_json(capsys, '--run_id', ref, '--compare-to', other)
    assert (code, report['status']) == (1, 'differ')
    [loss] = report['metrics']
    assert (loss['equal'], loss['first_divergent_step']) == (False, 0)


# --- the tolerances every report states --------------------------------------------


ASKED = ('--rtol', '0.25', '--atol', '0.5', '--tolerance', 'loss=0.1', '--ignore-metric', 'lr*')


@pytest.mark.parametrize(
    'argv',
    [
        pytest.param(('--run_id', 'f' * 32), id='run-not-found'),
        pytest.param(('--run_id', 'f' * 32, 'e' * 32), id='batch-of-runs-not-found'),
        pytest.param(('--model', 'models:/no-such-model/1'), id='model-not-found'),
        pytest.param(('--run_id', 'f' * 32, '--compare-to', 'e' * 32), id='compare-to-not-found'),
    ],
)
def test_a_report_that_ends_before_its_verdict_states_the_tolerances_asked_for(argv, capsys):
    """An error before the verdict is still judged against the user's
    tolerances: its JSON must not say MLflow's defaults were asked for."""
    code, out, err = reproduce(capsys, *argv, *ASKED, '--output', 'json')
    assert code == 2, err
    doc = json.loads(out)
    reports = doc.get('runs', [doc])
    assert [r['status'] for r in reports] == ['error'] * len(reports)
    assert [r['tolerance'] for r in reports] == [
        {
            'rtol': 0.25,
            'atol': 0.5,
            'overrides': [{'pattern': 'loss', 'rtol': 0.1, 'atol': 0.0}],
            'ignored': ['lr*'],
        }
    ] * len(reports)

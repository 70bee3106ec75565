"""--repeat N: telling nondeterminism from drift.  The pure diagnosis in
tables, then the samples built for it, run for real with `mlflow run`."""

from __future__ import annotations

import json
import math
import shlex

import pytest
from helpers import (
    artifact_bytes,
    client,
    experiment_runs,
    mlflow_run,
    reproduce,
)

import reproduce_run
from reproduce_run import (
    DRIFTED,
    NONDETERMINISTIC,
    NONDETERMINISTIC_DRIFTED,
    REPRODUCIBLE,
    MetricDiagnosis,
    Rules,
    Tolerance,
    classify_metric,
    classify_run,
    diagnose,
    suggested_flags,
)

NAN, INF = math.nan, math.inf
TIGHT = Tolerance(rtol=1e-9, atol=0.0)
ND, ND_DRIFTED = NONDETERMINISTIC, NONDETERMINISTIC_DRIFTED


# --- the class of one metric ----------------------------------------------------


@pytest.mark.parametrize(
    ('reference', 'repetitions', 'tol', 'expected'),
    [
        # reproducible: every Ri equals R0 under the rule
        pytest.param(1.0, [1.0, 1.0, 1.0], TIGHT, REPRODUCIBLE, id='identical'),
        pytest.param(1.0, [1.0 + 1e-12, 1.0 - 1e-12], TIGHT, REPRODUCIBLE, id='within-rtol'),
        pytest.param(1.0, [1.05, 0.95], Tolerance(rtol=0.1), REPRODUCIBLE, id='within-loose-rtol'),
        pytest.param(
            0.0, [1e-12, -1e-12], Tolerance(0.0, 1e-9), REPRODUCIBLE, id='zero-within-atol'
        ),
        pytest.param(NAN, [NAN, NAN], TIGHT, REPRODUCIBLE, id='nan-always'),
        pytest.param(INF, [INF, INF], TIGHT, REPRODUCIBLE, id='inf-always'),
        pytest.param(-INF, [-INF, -INF], TIGHT, REPRODUCIBLE, id='minus-inf-always'),
        # drifted: the Ri agree among themselves, not with R0
        pytest.param(1.0, [2.0, 2.0, 2.0], TIGHT, DRIFTED, id='all-moved-together'),
        pytest.param(1.0, [1.5, 1.5 + 1e-12], TIGHT, DRIFTED, id='agree-within-rtol'),
        pytest.param(1.0, [1.01, 1.0], Tolerance(rtol=0.005), ND, id='1.01-vs-1-disagrees'),
        pytest.param(1.0, [NAN, NAN], TIGHT, DRIFTED, id='now-always-nan'),
        pytest.param(NAN, [1.0, 1.0], TIGHT, DRIFTED, id='nan-no-more'),
        pytest.param(1.0, [INF, INF], TIGHT, DRIFTED, id='now-always-inf'),
        pytest.param(INF, [-INF, -INF], TIGHT, DRIFTED, id='inf-flipped-sign'),
        pytest.param(0.0, [0.5, 0.5], TIGHT, DRIFTED, id='zero-reference'),
        pytest.param(1.0, [None, None], TIGHT, DRIFTED, id='no-longer-logged'),
        pytest.param(None, [1.0, 1.0], TIGHT, DRIFTED, id='newly-logged'),
        # nondeterministic: the Ri disagree, R0 within [min - w, max + w]
        pytest.param(10.0, [9.0, 11.0], TIGHT, ND, id='inside-the-range'),
        pytest.param(10.0, [10.5, 11.0], TIGHT, ND, id='below-min-within-w'),
        pytest.param(10.0, [11.0, 12.0], TIGHT, ND, id='on-the-widened-edge'),
        pytest.param(13.0, [11.0, 12.0], TIGHT, ND, id='on-the-upper-widened-edge'),
        pytest.param(11.0, [11.0, 12.0, 11.0], TIGHT, ND, id='equals-some-ri'),
        pytest.param(0.0, [-0.1, 0.2], TIGHT, ND, id='zero-inside'),
        pytest.param(1.0, [1.0, NAN], TIGHT, ND, id='sometimes-nan-r0-a-number'),
        pytest.param(NAN, [1.0, NAN], TIGHT, ND, id='sometimes-nan-r0-nan'),
        pytest.param(5.0, [1.0, INF], TIGHT, ND, id='one-inf-widens-to-everything'),
        pytest.param(5.0, [-INF, INF], TIGHT, ND, id='both-infinities'),
        pytest.param(1.0, [1.0, None], TIGHT, ND, id='logged-by-some-r0-a-number'),
        pytest.param(None, [1.0, None], TIGHT, ND, id='logged-by-some-r0-missing'),
        pytest.param(0.002, [-1.0, 0.001, 1.0], Tolerance(rtol=2.5), ND, id='signs-differ'),
        # nondeterministic, drifted: the Ri disagree, R0 outside the widened range
        pytest.param(9.9, [11.0, 12.0], TIGHT, ND_DRIFTED, id='below-the-widened-range'),
        pytest.param(13.1, [11.0, 12.0], TIGHT, ND_DRIFTED, id='above-the-widened-range'),
        pytest.param(NAN, [1.0, 2.0], TIGHT, ND_DRIFTED, id='r0-nan-ri-numbers'),
        pytest.param(INF, [1.0, 2.0], TIGHT, ND_DRIFTED, id='r0-inf-ri-finite'),
        pytest.param(5.0, [NAN, None], TIGHT, ND_DRIFTED, id='r0-number-ri-no-number'),
        pytest.param(None, [1.0, 2.0], TIGHT, ND_DRIFTED, id='r0-missing-ri-numbers'),
        pytest.param(9.0, [11.0, NAN, 12.0], TIGHT, ND_DRIFTED, id='nan-left-out-of-range'),
    ],
)
def test_classify_metric(reference, repetitions, tol, expected):
    assert classify_metric('m', reference, repetitions, tol).classification == expected


@pytest.mark.parametrize(
    ('values', 'tol', 'expected'),
    [
        pytest.param([1.0, 1.0], TIGHT, True, id='equal'),
        pytest.param([1.0, 1.0 + 1e-12, 1.0 - 1e-12], TIGHT, True, id='within-rtol'),
        pytest.param([1.0, 1.1], Tolerance(rtol=0.11), True, id='1.1-vs-1-within-0.11'),
        # 1.0 against 1.1 with rtol 0.095 holds one way (0.1 <= 0.1045), not the other.
        pytest.param([1.0, 1.1], Tolerance(rtol=0.095), False, id='asymmetric-pair'),
        pytest.param([-1.0, 0.001, 1.0], Tolerance(rtol=2.5), False, id='min-max-not-enough'),
        pytest.param([NAN, NAN], TIGHT, True, id='nan-nan'),
        pytest.param([NAN, 1.0], Tolerance(rtol=1e9), False, id='nan-number'),
        pytest.param([None, None], TIGHT, True, id='all-missing'),
        pytest.param([None, 1.0], Tolerance(rtol=1e9), False, id='missing-number'),
        pytest.param([0.0, 1e-12], Tolerance(0.0, 1e-9), True, id='atol'),
    ],
)
def test_repetitions_agree(values, tol, expected):
    assert reproduce_run.repetitions_agree(values, tol) is expected


@pytest.mark.parametrize(
    ('values', 'expected'),
    [
        pytest.param([11.0, 12.0], (10.0, 13.0), id='widened-by-its-width'),
        pytest.param([5.0, 5.0], (5.0, 5.0), id='zero-width'),
        pytest.param([1.0, NAN, 3.0, None], (-1.0, 5.0), id='nan-and-missing-left-out'),
        pytest.param([1.0, INF], (-INF, INF), id='infinite-width'),
        pytest.param([INF, INF], (INF, INF), id='all-inf'),
        pytest.param([NAN, None], None, id='no-number'),
    ],
)
def test_widened_range(values, expected):
    assert reproduce_run.widened_range(values) == expected


# --- statistics of the repetitions --------------------------------------------


@pytest.mark.parametrize(
    ('repetitions', 'minimum', 'maximum', 'mean', 'stdev'),
    [
        pytest.param([1.0, 2.0, 3.0], 1.0, 3.0, 2.0, 1.0, id='sample-stdev'),
        pytest.param([2.0, 2.0], 2.0, 2.0, 2.0, 0.0, id='constant'),
        pytest.param([1.0, NAN, 3.0], 1.0, 3.0, 2.0, math.sqrt(2), id='nan-left-out'),
        pytest.param([1.0, None, 3.0], 1.0, 3.0, 2.0, math.sqrt(2), id='missing-left-out'),
        pytest.param([4.0, None], 4.0, 4.0, 4.0, None, id='one-number-no-stdev'),
        pytest.param([NAN, None], None, None, None, None, id='no-number'),
        pytest.param([1.0, INF], 1.0, INF, INF, INF, id='inf'),
        pytest.param([INF, INF], INF, INF, INF, 0.0, id='all-inf'),
        pytest.param([-INF, INF], -INF, INF, NAN, INF, id='both-infinities'),
        pytest.param(
            [1.7976931348623157e308] * 2,
            1.7976931348623157e308,
            1.7976931348623157e308,
            1.7976931348623157e308,
            0.0,
            id='sql-store-inf',
        ),
        pytest.param(
            [1.7976931348623157e308, -1.7976931348623157e308],
            -1.7976931348623157e308,
            1.7976931348623157e308,
            0.0,
            INF,
            id='spread-overflows',
        ),
    ],
)
def test_statistics_of_the_repetitions(repetitions, minimum, maximum, mean, stdev):
    d = classify_metric('m', 1.0, repetitions, TIGHT)
    got = (d.minimum, d.maximum, d.mean, d.stdev)
    expected = (minimum, maximum, mean, stdev)
    for g, e in zip(got, expected, strict=True):
        assert (g is None and e is None) or g == pytest.approx(e, nan_ok=True)


# --- the suggested tolerance ---------------------------------------------------


@pytest.mark.parametrize(
    ('reference', 'repetitions', 'rtol', 'atol'),
    [
        pytest.param(100.0, [103.049], 0.031, None, id='0.03049-rounds-up-to-0.031'),
        pytest.param(100.0, [103.0], 0.03, None, id='exactly-0.03-stays'),
        pytest.param(1e7, [1e7 + 1.2], 1.2e-7, None, id='1.2e-7-stays'),
        pytest.param(10.0, [11.0, 9.0], 0.1, None, id='float-0.1-above-0.1-still-0.1'),
        # 1.01 - 1 is 0.010000000000000009 in floats: rtol 0.01 would not hold.
        pytest.param(1.0, [1.01], 0.011, None, id='as-the-verdict-computes'),
        pytest.param(1.0, [1.995], 1.0, None, id='0.995-rounds-up-across-a-decade'),
        pytest.param(-2.0, [-2.5, -1.75], 0.25, None, id='negative-reference'),
        pytest.param(100.0, [100.0, 103.049, 98.0], 0.031, None, id='largest-difference-counts'),
        pytest.param(1.0, [1.0, 1.0], 0.0, None, id='exact'),
        pytest.param(NAN, [NAN, NAN], 0.0, None, id='nan-equals-nan'),
        pytest.param(INF, [INF], 0.0, None, id='inf-equals-inf'),
        pytest.param(0.0, [0.0, 0.0], 0.0, None, id='zero-exact'),
        pytest.param(0.0, [0.0305, -0.01], None, 0.031, id='zero-reference-suggests-atol'),
        pytest.param(0.0, [2.0], None, 2.0, id='zero-reference-atol-exact'),
        pytest.param(1.0, [NAN], None, None, id='nan-vs-number'),
        pytest.param(NAN, [1.0], None, None, id='number-vs-nan'),
        pytest.param(1.0, [1.0, INF], None, None, id='inf-vs-number'),
        pytest.param(INF, [-INF], None, None, id='inf-vs-minus-inf'),
        pytest.param(1.0, [1.0, None], None, None, id='missing-in-a-repetition'),
        pytest.param(None, [1.0, 1.0], None, None, id='missing-in-the-reference'),
        pytest.param(
            1.7976931348623157e308, [-1.7976931348623157e308], None, None, id='difference-overflows'
        ),
    ],
)
def test_suggested_tolerance(reference, repetitions, rtol, atol):
    d = classify_metric('m', reference, repetitions, TIGHT)
    assert (d.suggested_rtol, d.suggested_atol) == (rtol, atol)


@pytest.mark.parametrize(
    ('reference', 'repetitions'),
    [
        pytest.param(100.0, [103.049, 97.2], id='two-sided'),
        pytest.param(0.3, [0.1 + 0.2, 0.29], id='float-noise'),
        pytest.param(1e7, [1e7 + 1.2], id='tiny'),
        pytest.param(0.0, [0.0305, -0.01], id='atol'),
        pytest.param(-7.25, [-7.3, -7.0], id='negative'),
    ],
)
def test_suggested_tolerance_holds_and_is_the_smallest(reference, repetitions):
    """Under the suggestion every Ri equals R0; one unit of its second
    significant digit less and some Ri does not."""
    d = classify_metric('m', reference, repetitions, TIGHT)
    rtol, atol = d.suggested_rtol or 0.0, d.suggested_atol or 0.0
    unit = 10 ** (math.floor(math.log10(rtol or atol)) - 1)
    less = Tolerance(rtol - unit, atol) if rtol else Tolerance(0.0, atol - unit)
    assert all(reproduce_run.values_close(v, reference, Tolerance(rtol, atol)) for v in repetitions)
    assert not all(reproduce_run.values_close(v, reference, less) for v in repetitions)


# --- a whole run: histories, rules, the worst class -------------------------------


def test_diagnose_takes_latest_values_and_every_key():
    reference = {'a': [(0, 5.0), (1, 1.0)], 'gone': [(0, 1.0)]}
    repetitions = [
        {'a': [(0, 5.0), (1, 1.0)], 'new': [(0, 2.0)]},
        {'a': [(1, 1.0), (0, 5.0)], 'new': [(0, 2.0)]},
    ]
    diagnoses = {d.key: d for d in diagnose(reference, repetitions, Rules())}
    assert {k: (d.reference, d.repetitions, d.classification) for k, d in diagnoses.items()} == {
        'a': (1.0, (1.0, 1.0), REPRODUCIBLE),
        'gone': (1.0, (None, None), DRIFTED),
        'new': (None, (2.0, 2.0), DRIFTED),
    }


@pytest.mark.parametrize(
    ('histories', 'expected'),
    [
        pytest.param([[(0, 1.0), (1, 2.0)]] * 3, None, id='all-equal'),
        pytest.param(
            [[(0, 1.0), (1, 2.0), (2, 3.0)], [(0, 1.0), (1, 2.5), (2, 3.0)]],
            1,
            id='midway-last-values-agree',
        ),
        pytest.param(
            [
                [(0, 1.0), (1, 2.0), (2, 3.0)],
                [(0, 1.0), (1, 2.0), (2, 3.0)],
                [(0, 1.0), (1, 2.0), (2, 4.0)],
            ],
            2,
            id='third-repetition-at-step-2',
        ),
        pytest.param([[(0, 1.0), (1, 2.0)], [(0, 1.0)]], 1, id='one-history-shorter'),
        pytest.param([[(0, 1.0), (1, 2.0)], []], 0, id='missing-in-one'),
        pytest.param([[(None, 1.0)], [(None, 2.0)]], None, id='latest-only-no-step'),
        pytest.param([[(0, 1.0)], [(0, 1.05)]], None, id='within-tolerance'),
    ],
)
def test_first_step_at_which_repetitions_disagree(histories, expected):
    tol = Tolerance(rtol=0.1)
    assert reproduce_run.first_disagreement('m', histories, tol) == expected


def test_rules_give_each_metric_its_tolerance_and_ignore_some():
    rules = Rules(
        default=TIGHT,
        overrides=(('loss*', Tolerance(rtol=0.2)), ('acc', Tolerance(0.0, 0.05))),
        ignored=('system/*',),
    )
    reference = {'loss': [(0, 1.0)], 'acc': [(0, 0.0)], 'system/cpu': [(0, 5.0)], 'f1': [(0, 1.0)]}
    repetitions = [
        {'loss': [(0, 1.1)], 'acc': [(0, 0.04)], 'system/cpu': [(0, 9.0)], 'f1': [(0, 1.0)]},
        {'loss': [(0, 0.9)], 'acc': [(0, -0.01)], 'system/cpu': [(0, 1.0)], 'f1': [(0, 1.0)]},
    ]
    diagnoses = {d.key: d for d in diagnose(reference, repetitions, rules)}
    assert diagnoses['loss'].tolerance == Tolerance(rtol=0.2)
    assert diagnoses['loss'].classification == REPRODUCIBLE
    assert diagnoses['acc'].classification == REPRODUCIBLE
    assert diagnoses['system/cpu'].classification == NONDETERMINISTIC
    assert diagnoses['system/cpu'].ignored
    assert not diagnoses['f1'].ignored
    assert classify_run(list(diagnoses.values())) == REPRODUCIBLE


def diagnosis(
    key: str,
    classification: str,
    rtol: float | None = 0.0,
    atol: float | None = None,
    ignored: bool = False,
) -> MetricDiagnosis:
    return MetricDiagnosis(
        key, 1.0, (1.0,), classification, 1.0, 1.0, 1.0, None, rtol, atol, ignored=ignored
    )


@pytest.mark.parametrize(
    ('classes', 'expected'),
    [
        pytest.param([], REPRODUCIBLE, id='no-metric'),
        pytest.param([REPRODUCIBLE, REPRODUCIBLE], REPRODUCIBLE, id='all-reproducible'),
        pytest.param([REPRODUCIBLE, ND], ND, id='nondeterministic'),
        pytest.param([ND, DRIFTED, REPRODUCIBLE], DRIFTED, id='drifted-beats-nondeterministic'),
        pytest.param([DRIFTED, ND_DRIFTED, ND], ND_DRIFTED, id='both-is-worst'),
    ],
)
def test_run_class_is_the_worst_metric_class(classes, expected):
    assert classify_run([diagnosis(f'm{i}', c) for i, c in enumerate(classes)]) == expected


def test_ignored_metrics_do_not_count_for_the_run_class():
    diagnoses = [diagnosis('a', REPRODUCIBLE), diagnosis('b', ND_DRIFTED, ignored=True)]
    assert classify_run(diagnoses) == REPRODUCIBLE


# --- ready-to-paste flags -------------------------------------------------------


@pytest.mark.parametrize(
    ('diagnoses', 'expected'),
    [
        pytest.param(
            [diagnosis('test_mae', ND, 0.031), diagnosis('test_r2', DRIFTED, 0.018)],
            "--tolerance 'test_mae=0.031' --tolerance 'test_r2=0.018'",
            id='issue-example',
        ),
        pytest.param([diagnosis('a', REPRODUCIBLE, 1e-12)], '', id='reproducible-needs-none'),
        pytest.param([diagnosis('a', ND, 0.5, ignored=True)], '', id='ignored-needs-none'),
        pytest.param([diagnosis('a', ND, None, 0.25)], "--tolerance 'a=0,0.25'", id='atol-form'),
        pytest.param(
            [diagnosis('a', ND, None, None), diagnosis('b', ND, 1.2e-7)],
            "--tolerance 'b=1.2e-07'",
            id='no-tolerance-can-help',
        ),
        pytest.param([diagnosis('val loss', ND, 0.5)], "--tolerance 'val loss=0.5'", id='space'),
        pytest.param([diagnosis("it's", ND, 0.5)], """--tolerance 'it'"'"'s=0.5'""", id='quote'),
        pytest.param(
            [diagnosis('acc[1]*', ND, 0.5)],
            "--tolerance 'acc[[]1][*]=0.5'",
            id='glob-characters-match-literally',
        ),
    ],
)
def test_suggested_flags(diagnoses, expected):
    assert suggested_flags(diagnoses) == expected


def test_suggested_flags_parse_back_into_the_rules_that_hold():
    """The flags, pasted on a command line, give tolerances that match each
    key exactly and make every repetition equal to the reference."""
    reference = {'acc[1]*': [(0, 0.5)], 'zero': [(0, 0.0)], 'acc[1]x': [(0, 0.5)]}
    repetitions = [
        {'acc[1]*': [(0, 0.52)], 'zero': [(0, 0.1)], 'acc[1]x': [(0, 0.5)]},
        {'acc[1]*': [(0, 0.49)], 'zero': [(0, -0.2)], 'acc[1]x': [(0, 0.5)]},
    ]
    diagnoses = diagnose(reference, repetitions, Rules())
    argv = ['--run_id', 'x', *shlex.split(suggested_flags(diagnoses))]
    rules = reproduce_run.rules_from(reproduce_run.parse_args(argv))
    assert rules.tolerance_for('acc[1]x') == reproduce_run.Rules().default
    assert classify_run(diagnose(reference, repetitions, rules)) == REPRODUCIBLE


# --- rendering ------------------------------------------------------------------


def mixed_diagnoses() -> tuple[MetricDiagnosis, ...]:
    reference = {
        'a': [(0, 1.0)],
        'b': [(0, 0.0)],
        'c': [(0, 5.0)],
        'sys': [(0, NAN)],
        'h': [(0, 1.0), (1, 2.0)],
    }
    repetitions = [
        {
            'a': [(0, 1.01)],
            'b': [(0, 0.1)],
            'c': [(0, 5.0)],
            'sys': [(0, 4.0)],
            'h': [(0, 1.0), (1, 2.0)],
        },
        {
            'a': [(0, 0.98)],
            'b': [(0, -0.2)],
            'c': [(0, 5.0)],
            'sys': [(0, INF)],
            'h': [(0, 1.0), (1, 2.5)],
        },
    ]
    return diagnose(reference, repetitions, Rules(ignored=('sys',)))


def test_diagnosis_table():
    border = (
        '+----------+--------+-------+--------+-------------+---------------------------'
        '+------------------+--------------------------------+'
    )
    assert reproduce_run.diagnosis_lines(mixed_diagnoses(), 'psql') == [
        '\n'.join(
            [
                border,
                (
                    '| Metric   |   Run1 |   min |    max |       stdev | class'
                    '                     | suggested rtol   | Note                           |'
                ),
                (
                    '|----------+--------+-------+--------+-------------+---------------------------'
                    '+------------------+--------------------------------|'
                ),
                (
                    '| a        |      1 |  0.98 |   1.01 |   0.0212132 | nondeterministic'
                    '          | 0.021            |                                |'
                ),
                (
                    '| b        |      0 | -0.2  |   0.1  |   0.212132  | nondeterministic'
                    '          | atol 0.2         |                                |'
                ),
                (
                    '| c        |      5 |  5    |   5    |   0         | reproducible'
                    '              | 0                |                                |'
                ),
                (
                    '| h        |      2 |  2    |   2.5  |   0.353553  | nondeterministic'
                    '          | 0.25             | repetitions differ from step 1 |'
                ),
                (
                    '| sys      |    nan |  4    | inf    | inf         | nondeterministic, drifted'
                    ' | -                | ignored                        |'
                ),
                border,
            ]
        ),
        'Tolerances under which every repetition equals the reference:',
        "--tolerance 'a=0.021' --tolerance 'b=0,0.2' --tolerance 'h=0.25'",
    ]


def test_diagnosis_markdown_puts_the_flags_in_a_code_block():
    lines = reproduce_run.diagnosis_lines(mixed_diagnoses(), 'github')
    assert lines[0].splitlines()[0].startswith('| Metric   |   Run1 |   min |')
    assert lines[0].splitlines()[1].startswith('|----------|--------|-------|')
    assert lines[1:] == [
        '',
        'Tolerances under which every repetition equals the reference:',
        '',
        '```',
        "--tolerance 'a=0.021' --tolerance 'b=0,0.2' --tolerance 'h=0.25'",
        '```',
    ]


def test_reproducible_diagnosis_has_no_note_column_and_no_flags():
    diagnoses = diagnose({'a': [(0, 1.0)]}, [{'a': [(0, 1.0)]}] * 2, Rules())
    lines = reproduce_run.diagnosis_lines(diagnoses, 'psql')
    assert len(lines) == 1
    assert lines[0].splitlines()[1].split('|')[1:-1] == [
        ' Metric   ',
        '   Run1 ',
        '   min ',
        '   max ',
        '   stdev ',
        ' class        ',
        '   suggested rtol ',
    ]


def test_repeat_json_entry():
    entry = reproduce_run.Repeat('ref', 'parent', ('r1', 'r2'), tuple(mixed_diagnoses())).json()
    text = json.dumps(entry, allow_nan=False)  # no bare NaN or Infinity
    assert json.loads(text) == {
        'reference_run_id': 'ref',
        'parent_run_id': 'parent',
        'n': 2,
        'reproduced_run_ids': ['r1', 'r2'],
        'classification': NONDETERMINISTIC,
        'metrics': [
            {
                'key': 'a',
                'reference': 1.0,
                'min': 0.98,
                'max': 1.01,
                'mean': 0.995,
                'stdev': pytest.approx(0.03 / math.sqrt(2)),
                'classification': ND,
                'suggested_rtol': 0.021,
                'suggested_atol': None,
                'ignored': False,
                'first_disagreeing_step': 0,
            },
            {
                'key': 'b',
                'reference': 0.0,
                'min': -0.2,
                'max': 0.1,
                'mean': -0.05,
                'stdev': pytest.approx(0.3 / math.sqrt(2)),
                'classification': ND,
                'suggested_rtol': None,
                'suggested_atol': 0.2,
                'ignored': False,
                'first_disagreeing_step': 0,
            },
            {
                'key': 'c',
                'reference': 5.0,
                'min': 5.0,
                'max': 5.0,
                'mean': 5.0,
                'stdev': 0.0,
                'classification': REPRODUCIBLE,
                'suggested_rtol': 0.0,
                'suggested_atol': None,
                'ignored': False,
                'first_disagreeing_step': None,
            },
            {
                'key': 'h',
                'reference': 2.0,
                'min': 2.0,
                'max': 2.5,
                'mean': 2.25,
                'stdev': pytest.approx(0.5 / math.sqrt(2)),
                'classification': ND,
                'suggested_rtol': 0.25,
                'suggested_atol': None,
                'ignored': False,
                'first_disagreeing_step': 1,
            },
            {
                'key': 'sys',
                'reference': 'NaN',
                'min': 4.0,
                'max': 'Infinity',
                'mean': 'Infinity',
                'stdev': 'Infinity',
                'classification': ND_DRIFTED,
                'suggested_rtol': None,
                'suggested_atol': None,
                'ignored': True,
                'first_disagreeing_step': 0,
            },
        ],
    }


# --- the samples built for --repeat, run for real ------------------------------------


def latest_values(run_id: str) -> dict[str, list[tuple[None, float]]]:
    return {k: [(None, v)] for k, v in client().get_run(run_id).data.metrics.items()}


# --- --repeat end to end: real reproductions, the parent runs in MLflow ----------------


def children_of(parent_run_id: str, experiment: str):
    return [
        r
        for r in experiment_runs(experiment)
        if r.data.tags.get('mlflow.parentRunId') == parent_run_id
    ]


def artifact_json(run_id: str, path: str) -> dict:
    return json.loads(artifact_bytes(run_id, path))


def summary_rows(out: str) -> list[list[str]]:
    """(reference, name, status, differing, reproduced, seconds) of the summary table."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('| Reference run '))
    end = next(i for i in range(start + 2, len(lines)) if lines[i].startswith('+-'))
    return [[cell.strip() for cell in line.split('|')[1:-1]] for line in lines[start + 2 : end]]


@pytest.mark.slow
def test_repeat_of_a_deterministic_run_is_reproducible(reference, capsys, tmp_path):
    ref = reference('sklearn_regression')
    name = f'repeat-{tmp_path.name}'
    code, out, err = reproduce(
        capsys, '--run_id', ref, '--repeat', '2', '--experiment-name', name, '--output', 'json'
    )
    doc = json.loads(out)
    assert code == doc['exit_code'] == 0, err
    entry = doc['repeat']
    assert doc['repeats'] == [entry]
    assert entry['classification'] == REPRODUCIBLE
    assert entry['reference_run_id'] == ref
    assert entry['n'] == len(entry['reproduced_run_ids']) == 2
    assert {m['key']: (m['classification'], m['suggested_rtol']) for m in entry['metrics']} == {
        'mae': (REPRODUCIBLE, 0.0),
        'r2': (REPRODUCIBLE, 0.0),
        'rmse': (REPRODUCIBLE, 0.0),
    }
    assert [r['status'] for r in doc['runs']] == ['equal'] * 2
    assert sorted(r['reproduced_run_id'] for r in doc['runs']) == sorted(
        entry['reproduced_run_ids']
    )

    parent = client().get_run(entry['parent_run_id'])
    assert doc['batch_run_id'] == parent.info.run_id  # one reference: no batch run above
    assert parent.info.run_name == f'reproduce-repeat-{client().get_run(ref).info.run_name}'
    assert parent.info.status == 'FINISHED'
    assert 'mlflow.parentRunId' not in parent.data.tags
    assert {
        k: parent.data.tags[k]
        for k in ('reproduce.reference_run_id', 'reproduce.classification', 'reproduce.repeat')
    } == {
        'reproduce.reference_run_id': ref,
        'reproduce.classification': REPRODUCIBLE,
        'reproduce.repeat': '2',
    }
    note = parent.data.tags['mlflow.note.content']
    assert (
        '\n'.join(
            reproduce_run.diagnosis_lines(
                reproduce_run.diagnose(
                    latest_values(ref),
                    [latest_values(r) for r in entry['reproduced_run_ids']],
                    Rules(),
                ),
                'github',
            )
        )
        in note
    )
    assert artifact_json(parent.info.run_id, 'reproduce/diagnosis.json') == entry

    repetitions = children_of(parent.info.run_id, name)
    assert sorted(r.info.run_id for r in repetitions) == sorted(entry['reproduced_run_ids'])
    for run in repetitions:
        assert run.info.status == 'FINISHED'
        assert run.data.tags['reproduce.reference_run_id'] == ref
        assert (run.data.tags['reproduce.status'], run.data.tags['reproduce.equal']) == (
            'equal',
            'true',
        )


def test_jitter_sample_and_its_repeat_are_nondeterministic_and_the_flags_hold(
    samples_repo, store, capsys, tmp_path, monkeypatch
):
    """The sample: with its counter hook, a reference and two repetitions
    take three different offsets, the repetitions disagree and R0 lies in
    their range.  The table report of --repeat: the diagnosis, the
    ready-to-paste flags, then the verdict line; pasted into --compare-to,
    the flags make every differing repetition equal to the reference."""
    monkeypatch.setenv('SAMPLE_JITTER_COUNTER', str(tmp_path / 'counter'))
    ref = mlflow_run(str(samples_repo / 'jitter'), store)
    name = f'jitter-{tmp_path.name}'
    code, out, err = reproduce(capsys, '--run_id', ref, '--repeat', '2', '--experiment-name', name)
    assert code == 1, err
    rows = summary_rows(out)
    assert len(rows) == 2
    reference, *repetitions = [latest_values(r) for r in (ref, *(row[4] for row in rows))]
    mae = sorted(h['test_mae'][0][1] for h in (reference, *repetitions))
    assert mae[0] < mae[1] < mae[2]
    assert mae[0] / mae[1] == pytest.approx(0.99) and mae[2] / mae[1] == pytest.approx(1.01)
    diagnoses = diagnose(reference, repetitions, Rules())
    assert [(d.key, d.classification) for d in diagnoses] == [
        ('test_mae', NONDETERMINISTIC),
        ('test_r2', NONDETERMINISTIC),
    ]
    rules = reproduce_run.rules_from(
        reproduce_run.parse_args(['--run_id', 'x', *shlex.split(suggested_flags(diagnoses))])
    )
    assert classify_run(diagnose(reference, repetitions, rules)) == REPRODUCIBLE

    lines = out.splitlines()
    assert f'Run {ref} against 2 repetitions: {NONDETERMINISTIC}' in lines
    header = lines.index(f'Run {ref} against 2 repetitions: {NONDETERMINISTIC}') + 2
    assert lines[header].split() == [
        '|',
        'Metric',
        '|',
        'Run1',
        '|',
        'min',
        '|',
        'max',
        '|',
        'stdev',
        '|',
        'class',
        '|',
        'suggested',
        'rtol',
        '|',
    ]
    assert [line.split('|')[6].strip() for line in lines[header + 2 : header + 4]] == [
        NONDETERMINISTIC,
        NONDETERMINISTIC,
    ]
    assert lines[-3] == 'Tolerances under which every repetition equals the reference:'
    flags = shlex.split(lines[-2])
    assert flags[::2] == ['--tolerance', '--tolerance']
    assert [f.split('=')[0] for f in flags[1::2]] == ['test_mae', 'test_r2']
    assert lines[-1] == 'Runs equal: False'

    differing = [row[4] for row in rows if row[2] == 'differ']
    assert differing  # the counter gives every run another offset
    for other in differing:
        assert reproduce(capsys, '--run_id', ref, '--compare-to', other)[0] == 1
        code, out, err = reproduce(capsys, '--run_id', ref, '--compare-to', other, *flags)
        assert code == 0, out + err
        assert out.splitlines()[-1] == 'Runs equal: True'
    [parent] = [r for r in experiment_runs(name) if r.info.run_name.startswith('reproduce-repeat-')]
    assert parent.data.tags['reproduce.classification'] == NONDETERMINISTIC


def test_drifting_data_sample_and_its_repeat_drift_when_its_data_changes(
    samples_repo, store, capsys, tmp_path
):
    """The sample's repetitions after its data changed agree among
    themselves, not with the reference; --repeat says so in Markdown."""
    data = tmp_path / 'data.csv'
    rows = (samples_repo / 'drifting_data' / 'data.csv').read_text().splitlines()
    data.write_text('\n'.join(rows) + '\n')
    ref = mlflow_run(str(samples_repo / 'drifting_data'), store, '-P', f'data={data}')
    data.write_text('\n'.join(rows[:-20]) + '\n')  # the data changed after the reference
    name = f'drift-{tmp_path.name}'
    code, out, err = reproduce(
        capsys, '--run_id', ref, '--repeat', '2', '--experiment-name', name, '--output', 'markdown'
    )
    assert code == 1, err
    assert f'**Run {ref} against 2 repetitions: {DRIFTED}**' in out
    [parent] = [r for r in experiment_runs(name) if r.info.run_name.startswith('reproduce-repeat-')]
    reference = latest_values(ref)
    repetitions = [latest_values(r.info.run_id) for r in children_of(parent.info.run_id, name)]
    assert len(repetitions) == 2 and repetitions[0] == repetitions[1]
    diagnoses = diagnose(reference, repetitions, Rules())
    assert {d.key: d.classification for d in diagnoses} == {
        'mae': DRIFTED,
        'n_rows': DRIFTED,
        'r2': DRIFTED,
    }
    assert classify_run(diagnoses) == DRIFTED
    # headed as a repetition, with the parent run the table report shows
    assert out.startswith(f'**Repetitions of run {ref}**: Reproduced 2 runs: ')
    assert f'\n- parent run: `{parent.info.run_id}`\n' in out
    run_name = client().get_run(ref).info.run_name
    assert f'[1/2] {ref} ({run_name}) started' in err.splitlines()
    ended = [f'[{k}/2] {ref} ({run_name}) differ in ' for k in (1, 2)]
    assert [any(line.startswith(e) for line in err.splitlines()) for e in ended] == [True, True]
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith('| Metric '))
    assert lines[header].split() == [
        '|',
        'Metric',
        '|',
        'Run1',
        '|',
        'min',
        '|',
        'max',
        '|',
        'stdev',
        '|',
        'class',
        '|',
        'suggested',
        'rtol',
        '|',
    ]
    assert lines[header + 1].startswith('|----------|')
    assert {
        line.split('|')[1].strip(): line.split('|')[6].strip()
        for line in lines[header + 2 : header + 5]
    } == {'mae': DRIFTED, 'n_rows': DRIFTED, 'r2': DRIFTED}
    assert out.endswith('\nRuns equal: False\n')
    assert parent.data.tags['reproduce.classification'] == DRIFTED
    assert parent.info.status == 'FINISHED'


@pytest.mark.slow
def test_repeat_of_two_references_nests_under_one_batch(reference, capsys, tmp_path):
    refs = [reference('sklearn_regression'), reference('history')]
    name = f'repeats-{tmp_path.name}'
    code, out, err = reproduce(
        capsys,
        '--run_id',
        *refs,
        '--repeat',
        '2',
        '--jobs',
        '2',
        '--experiment-name',
        name,
        '--output',
        'json',
    )
    doc = json.loads(out)
    assert code == doc['exit_code'] == 0, err
    assert 'repeat' not in doc
    assert [e['reference_run_id'] for e in doc['repeats']] == refs
    assert [(e['n'], e['classification']) for e in doc['repeats']] == [(2, REPRODUCIBLE)] * 2
    assert doc['summary']['total'] == doc['summary']['equal'] == 4

    batch = client().get_run(doc['batch_run_id'])
    assert batch.data.tags['reproduce.batch'] == 'true'
    assert batch.info.status == 'FINISHED'
    parents = children_of(batch.info.run_id, name)
    assert sorted(p.info.run_id for p in parents) == sorted(
        e['parent_run_id'] for e in doc['repeats']
    )
    for entry in doc['repeats']:
        parent = client().get_run(entry['parent_run_id'])
        assert parent.info.status == 'FINISHED'
        assert parent.data.tags['reproduce.reference_run_id'] == entry['reference_run_id']
        assert parent.data.tags['reproduce.repeat'] == '2'
        assert artifact_json(parent.info.run_id, 'reproduce/diagnosis.json') == entry
        repetitions = children_of(parent.info.run_id, name)
        assert sorted(r.info.run_id for r in repetitions) == sorted(entry['reproduced_run_ids'])
        assert all(r.info.status == 'FINISHED' for r in repetitions)
        assert all(
            r.data.tags['reproduce.reference_run_id'] == entry['reference_run_id']
            for r in repetitions
        )


def test_a_repeat_none_of_whose_repetitions_ran_is_classified_failed(reference, capsys, tmp_path):
    """The parent run always gets a description and a class."""
    ref = reference('failing', fails=True)
    name = f'repeat-failing-{tmp_path.name}'
    code, out, err = reproduce(
        capsys, '--run_id', ref, '--repeat', '2', '--experiment-name', name, '--output', 'json'
    )
    doc = json.loads(out)
    assert code == doc['exit_code'] == 3, err
    assert [r['status'] for r in doc['runs']] == ['failed', 'failed']
    parent = client().get_run(doc['batch_run_id'])
    assert parent.info.run_name.startswith('reproduce-repeat-')
    assert parent.info.status == 'FINISHED'
    assert parent.data.tags['reproduce.classification'] == 'failed'
    note = parent.data.tags['mlflow.note.content']
    assert note.startswith(f'**Repetitions of run {ref}** (2): failed\n')
    assert 'No repetition ran to the end:' in note
    for run in doc['runs']:
        assert f'- {run["reproduced_run_id"]}: failed: {run["message"]}' in note
    diagnosis = artifact_json(parent.info.run_id, 'reproduce/diagnosis.json')
    assert diagnosis == {
        'reference_run_id': ref,
        'parent_run_id': parent.info.run_id,
        'n': 0,
        'reproduced_run_ids': [],
        'classification': 'failed',
        'metrics': [],
    }

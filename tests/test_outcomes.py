"""Every kind of result (one run, a batch, --repeat, a bisection, several
bisections, --explain's) answers the same questions the same way: its status
and exit code, its text, JSON and Markdown, its JUnit testcases, its parent
runs and its lines for standard error.  Pure: the outcomes are built here."""

from __future__ import annotations

import dataclasses
import json

import pytest

import reproduce_run as rr

A, B, C, D = 'a' * 32, 'b' * 32, 'c' * 32, 'd' * 32
PATH = tuple(rr.CommitInfo(str(i) * 40, f'change {i}') for i in range(3))


def report(status: str, run_id: str = A, **fields) -> rr.Report:
    return rr.Report(status=status, reference_run_id=run_id, **fields)


def bisection(*probes: tuple[int, rr.Report], run_id: str | None = 'p1', **fields):
    return rr.BisectReport(A, None, PATH, probes, run_id=run_id, **fields)


EXPLAINED = dataclasses.replace(
    report('differ', C, reproduced_run_id='r3'),
    explanation=rr.Explanation(None, reason='no difference of the environment can be undone'),
)
FOUND = bisection(
    (0, report('equal')),
    (2, report('differ', reproduced_run_id='r2')),
    outcomes={0: rr.GOOD, 2: rr.BAD},
    finding=rr.Finding(2, (2,)),
)
STOPPED = bisection((0, report('terminated', message='stopped')), stopped='terminated', run_id=None)


@pytest.mark.parametrize(
    ('outcome', 'status', 'reports', 'cases', 'parents', 'stderr'),
    [
        pytest.param(report('equal', reproduced_run_id='r1'), 'equal', 1, 1, [], [], id='run'),
        pytest.param(
            report('failed', message='boom'), 'failed', 1, 1, [], ['error: boom'], id='run-failed'
        ),
        pytest.param(EXPLAINED, 'differ', 1, 1, [], [], id='explained'),
        pytest.param(
            rr.BatchReport(
                (report('equal'), report('differ', B), EXPLAINED),
                ({'run_id': D, 'reason': 'a notebook'},),
                batch_run_id='p1',
            ),
            'differ',
            3,
            4,
            ['p1'],
            [],
            id='batch',
        ),
        pytest.param(
            rr.BatchReport((report('equal'), report('interrupted', B, message='stopped'))),
            'interrupted',
            2,
            2,
            [],
            ['interrupted'],
            id='batch-interrupted',
        ),
        pytest.param(
            rr.BatchReport((report('equal'), report('differ')), batch_run_id='p1', repeat_of=A),
            'differ',
            2,
            1,
            ['p1'],
            [],
            id='repeat',
        ),
        pytest.param(FOUND, 'differ', 2, 2, ['p1'], [], id='bisection'),
        pytest.param(STOPPED, 'terminated', 1, 1, [], ['terminated'], id='bisection-stopped'),
        pytest.param(
            rr.Bisections((FOUND, report('error', C, message='run gone'), STOPPED)),
            'terminated',
            4,
            4,
            ['p1'],
            ['terminated'],
            id='bisections',
        ),
    ],
)
def test_every_kind_of_result_answers_the_same_questions(
    outcome, status, reports, cases, parents, stderr
):
    assert (outcome.status, outcome.exit_code) == (status, rr.STATUS_EXIT_CODES[status])
    assert len(outcome.reports) == reports
    assert json.loads(outcome.render('json')) == outcome.json()
    assert outcome.json()['exit_code'] == outcome.exit_code
    assert outcome.render('markdown') == outcome.markdown()
    assert outcome.render('table') == outcome.text()
    assert len(outcome.junit_cases()) == cases
    assert outcome.parent_run_ids() == parents
    assert rr.run_links(outcome, None)[: len(parents)] == [f'- parent run: {p}' for p in parents]
    assert outcome.stderr_lines() == [f'{rr.program_name()}: {line}' for line in stderr]
    summary = rr.summary_line(outcome, 'exp')
    assert f'{outcome.subject()} reproduced into ' in summary
    assert summary.endswith(f'; worst: {status} (exit {outcome.exit_code})')


def test_a_batch_that_could_not_start_says_so_on_standard_error_only():
    outcome = rr.BatchReport((), message='experiment nope not found')
    assert (outcome.status, outcome.exit_code) == ('error', rr.EXIT_CANNOT_START)
    assert outcome.render('table') is None and outcome.render('markdown') is None
    assert json.loads(outcome.render('json'))['message'] == 'experiment nope not found'
    assert outcome.stderr_lines() == [f'{rr.program_name()}: error: experiment nope not found']
    assert rr.summary_line(outcome, 'exp').endswith('could not start: experiment nope not found')
    assert outcome.markdown() == '**reproduce_run**: error\n\n> experiment nope not found'
    assert [c.result for c in outcome.junit_cases()] == ['error']

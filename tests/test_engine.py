"""The engine for groups of reproductions: what each planner plans
next from the results so far, and what its parent runs get, as pure tables
without MLflow.  The engine running the plans is held by the batch and repeat
tests, which run it against real MLflow and git."""

from __future__ import annotations

import dataclasses
import json

import pytest

import reproduce_run as rr
from reproduce_run import Chosen, Group, Probe, Report

A, B = 'a' * 32, 'b' * 32


def report(run_id, status='equal', reproduced=None, histories=None):
    return Report(
        status=status,
        reference_run_id=run_id,
        reproduced_run_id=reproduced,
        histories=histories,
    )


def drive(planner, outcome):
    """Ask the planner as the engine does: first with nothing, then after
    each result, until it plans nothing more; outcome(probe) is the report."""
    results, asked = [], 0
    pending = list(planner.next_probes([]))
    while pending:
        probe = pending.pop(0)
        results.append((probe, outcome(probe)))
        asked += 1
        pending += planner.next_probes(results)
    return results, asked


@pytest.mark.parametrize(
    ('chosen', 'probes'),
    [
        pytest.param([], [], id='nothing'),
        pytest.param([Chosen(A)], [Probe(A)], id='one'),
        pytest.param([Chosen(A), Chosen(B)], [Probe(A), Probe(B)], id='two-in-order'),
        pytest.param(
            [Chosen(A, 'models:/m/1 (version 1)'), Chosen(None, 'models:/x/1', 'not found')],
            [Probe(A, 'models:/m/1 (version 1)'), Probe(None, 'models:/x/1', 'not found')],
            id='models-and-an-unresolved-one',
        ),
    ],
)
def test_a_batch_plans_its_list_once(chosen, probes):
    planner = rr.BatchPlanner(chosen, [])
    assert planner.next_probes([]) == probes
    assert planner.next_probes([(p, report(p.run_id or p.label)) for p in probes]) == []
    assert planner.next_probes([]) == []  # asked again while waiting: nothing new


@pytest.mark.parametrize(
    ('chosen', 'n', 'probes'),
    [
        pytest.param([Chosen(A)], 3, [Probe(A, nested=True)] * 3, id='one-reference'),
        pytest.param(
            [Chosen(A), Chosen(B)],
            2,
            [Probe(A, nested=True)] * 2 + [Probe(B, nested=True)] * 2,
            id='two-references-each-n-times',
        ),
    ],
)
def test_a_repetition_plans_n_nested_copies(chosen, n, probes):
    planner = rr.RepeatPlanner(chosen, [], n, rr.Rules())
    results, _ = drive(planner, lambda p: report(p.run_id))
    assert [p for p, _ in results] == probes
    assert all(p.version is None and not p.environ for p in probes)


class Halving(rr.Planner):
    """A planner that decides from the results, as bisection will: it probes
    one version at a time and stops at the first that differs."""

    def __init__(self, versions):
        self.versions, self.next = list(versions), 0

    def next_probes(self, results):
        if results and (results[-1][1].status == 'differ' or self.next >= len(self.versions)):
            return []
        if len(results) < self.next:  # a probe is still running
            return []
        self.next += 1
        return [Probe(A, version=self.versions[self.next - 1])]


@pytest.mark.parametrize(
    ('differs_at', 'probed'),
    [
        pytest.param('v2', ['v1', 'v2'], id='stops-at-the-first-difference'),
        pytest.param(None, ['v1', 'v2', 'v3'], id='probes-all-when-none-differs'),
    ],
)
def test_a_planner_may_plan_from_the_results_so_far(differs_at, probed):
    planner = Halving(['v1', 'v2', 'v3'])
    results, _ = drive(
        planner, lambda p: report(A, 'differ' if p.version == differs_at else 'equal')
    )
    assert [p.version for p, _ in results] == probed


def test_a_probe_runs_with_its_own_version_and_environment():
    options = rr.Options(version='main')
    session = rr.Session(options, None, 'sqlite:///x', {'HOME': '/h'}, '/tmp', 't', rr.Stop())
    assert rr._probe_session(session, Probe(A)) is session
    probed = rr._probe_session(session, Probe(A, version='abc123', environ=(('SEED', '1'),)))
    assert probed.options.version == 'abc123'
    assert probed.user_environ == {'HOME': '/h', 'SEED': '1'}
    assert session.options.version == 'main' and session.user_environ == {'HOME': '/h'}
    assert probed.stop is session.stop and probed.shared is session.shared  # shared


@pytest.mark.parametrize(
    ('statuses', 'code', 'equal'),
    [
        pytest.param(['equal', 'equal'], 0, True, id='all-equal'),
        pytest.param(['equal', 'differ', 'failed'], 3, False, id='worst-wins'),
        pytest.param(['differ', 'terminated'], 143, False, id='a-signal-wins'),
        pytest.param([], 0, True, id='nothing'),
    ],
)
def test_a_group_folds_one_exit_code(statuses, code, equal):
    group = Group(tuple((Probe(A), report(A, s)) for s in statuses), None, {})
    batch = rr.BatchPlanner([], []).report(group)
    assert (batch.exit_code, batch.equal) == (code, equal)


def test_a_batch_records_its_counts_summary_and_json_on_its_parent():
    group = Group(((Probe(A), report(A, 'equal')), (Probe(B), report(B, 'failed'))), 'p1', {})
    planner = rr.BatchPlanner([Chosen(A), Chosen(B)], [{'run_id': 'c', 'reason': 'r'}])
    batch = planner.report(group)
    [record] = planner.records(batch, group)
    assert record.run_id == 'p1' and record.artifact == rr.SUMMARY_ARTIFACT
    assert record.metrics == {
        'runs_equal': 1,
        'runs_differ': 0,
        'runs_failed': 1,
        'runs_error': 0,
        'runs_stopped': 0,
        'runs_not_started': 0,
        'runs_total': 2,
    }
    assert json.loads(record.text) == rr.batch_json(batch)
    assert record.note == rr.format_batch_markdown(dataclasses.replace(batch, batch_run_id=None))
    assert planner.records(batch, Group(group.results, None, {})) == []  # a dry run


def history(*values):
    return {'loss': [rr.Point(i, i, v) for i, v in enumerate(values)]}


@pytest.mark.parametrize(
    ('references', 'own_parent', 'records'),
    [
        pytest.param([A], False, [('pa', rr.DIAGNOSIS_ARTIFACT)], id='one-reference-one-parent'),
        pytest.param(
            [A, B],
            True,
            [('pa', rr.DIAGNOSIS_ARTIFACT), ('pb', rr.DIAGNOSIS_ARTIFACT), ('top', 'summary.json')],
            id='two-references-nest-under-a-batch',
        ),
    ],
)
def test_a_repetition_records_a_diagnosis_on_each_reference_parent(references, own_parent, records):
    nested = {A: 'pa', B: 'pb'}
    nested = {r: nested[r] for r in references}
    results = tuple(
        (Probe(r, nested=True), report(r, reproduced=f'{r[0]}{k}', histories=(history(1.0),) * 2))
        for r in references
        for k in range(2)
    )
    group = Group(results, 'top' if own_parent else nested[A], nested)
    planner = rr.RepeatPlanner([Chosen(r) for r in references], [], 2, rr.Rules())
    batch = planner.report(group)
    assert [r.parent_run_id for r in batch.repeats] == list(nested.values())
    assert [r.reproduced_run_ids for r in batch.repeats][0] == ('a0', 'a1')
    got = planner.records(batch, group)
    assert [(r.run_id, r.artifact) for r in got] == records
    assert got[0].tags == {rr.TAG_CLASSIFICATION: 'reproducible'}


def test_a_reference_none_of_whose_repetitions_ran_gets_a_failed_record():
    failed = report(A, 'failed', reproduced='r1')
    group = Group(
        ((Probe(A, nested=True), failed), (Probe(A, nested=True), failed)), 'pa', {A: 'pa'}
    )
    planner = rr.RepeatPlanner([Chosen(A)], [], 2, rr.Rules())
    batch = planner.report(group)
    assert batch.repeats == () and batch.repeat_of == A
    [record] = planner.records(batch, group)
    assert (record.run_id, record.tags) == ('pa', {rr.TAG_CLASSIFICATION: 'failed'})
    assert record.note.startswith(f'**Repetitions of run {A}** (2): failed\n')
    assert json.loads(record.text)['classification'] == 'failed'

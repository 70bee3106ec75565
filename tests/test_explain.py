"""--explain: which environment difference changed the metrics.  The choice
of the next probe (delta debugging) is pure and tested in tables; the
end-to-end tests install real wheels, built here, from a local folder."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import git, make_repo, mlflow_run
from test_reproduce_run import add_project, client, reproduce, start_tool, wait_for

import reproduce_run
from reproduce_run import Candidate, Differences, ExplainStep, Explanation, explain_step

# --- choosing the next probe: pure ---------------------------------------------


def explain_with(items: list[str], culprits: set[str], failing: set[str] = frozenset()):
    """Run the search against an oracle: undoing a set restores equality when
    it holds every culprit; a probe undoing exactly `failing` fails (not equal)."""
    outcomes: dict[frozenset[str], bool] = {}
    probes = []
    while (step := explain_step(items, outcomes)).undo is not None:
        undone = frozenset(step.undo)
        assert undone not in outcomes, 'a set is never tried twice'
        probes.append(step.undo)
        outcomes[undone] = culprits <= undone and undone != failing
    return step, probes


@pytest.mark.parametrize(
    ('items', 'culprits', 'restores', 'found', 'max_probes'),
    [
        pytest.param(['a'], {'a'}, True, ('a',), 1, id='one-difference-one-culprit'),
        pytest.param(['a', 'b'], {'b'}, True, ('b',), 3, id='two-differences-second-culprit'),
        pytest.param(
            list('abcdefgh'), {'f'}, True, ('f',), 1 + 2 * math.ceil(math.log2(8)), id='8-one'
        ),
        pytest.param(list('abcdefgh'), {'a', 'h'}, True, ('a', 'h'), 20, id='8-two-apart'),
        pytest.param(list('abcdefgh'), {'c', 'd'}, True, ('c', 'd'), 20, id='8-two-together'),
        pytest.param(list('abcd'), {'a', 'b', 'c', 'd'}, True, tuple('abcd'), 20, id='all-needed'),
        pytest.param(list('abc'), {'z'}, False, (), 1, id='environment-does-not-explain'),
    ],
)
def test_explain_step_finds_a_smallest_culprit_set(items, culprits, restores, found, max_probes):
    step, probes = explain_with(items, culprits)
    assert probes[0] == tuple(items), 'first, everything is undone'
    assert (step.restores, step.culprits) == (restores, found)
    assert len(probes) <= max_probes


@pytest.mark.parametrize(
    ('items', 'outcomes', 'step'),
    [
        pytest.param([], {}, ExplainStep(), id='nothing-to-undo'),
        pytest.param(['a', 'b'], {}, ExplainStep(undo=('a', 'b')), id='undo-everything-first'),
        pytest.param(
            ['a', 'b'], {frozenset('ab'): False}, ExplainStep(restores=False), id='still-differs'
        ),
        pytest.param(
            ['a', 'b'], {frozenset('ab'): True}, ExplainStep(undo=('a',)), id='then-halves'
        ),
        pytest.param(
            ['a', 'b'],
            {frozenset('ab'): True, frozenset('a'): False},
            ExplainStep(undo=('b',)),
            id='then-the-other-half',
        ),
        pytest.param(
            ['a', 'b'],
            {frozenset('ab'): True, frozenset('a'): False, frozenset('b'): False},
            ExplainStep(restores=True, culprits=('a', 'b')),
            id='both-needed',
        ),
    ],
)
def test_explain_step(items, outcomes, step):
    assert explain_step(items, outcomes) == step


def test_a_failed_probe_counts_as_not_equal():
    step, probes = explain_with(['a', 'b'], {'a'}, failing=frozenset('a'))
    assert (step.restores, step.culprits) == (True, ('a', 'b'))


NUMKIT = Candidate('package', 'numkit', '1.0', '1.1')
PADKIT = Candidate('package', 'padkit', '1.0', '2.0')
SEED = Candidate('variable', 'PYTHONHASHSEED', '1', '2')


@pytest.mark.parametrize(
    ('explanation', 'lines'),
    [
        pytest.param(
            Explanation(True, (NUMKIT, SEED), (PADKIT,), ({},) * 5),
            [
                "Explained: with the reference's numkit 1.0 and PYTHONHASHSEED 1 the runs are "
                'equal; padkit 2.0 does not matter (5 probes)'
            ],
            id='the-issue-example',
        ),
        pytest.param(
            Explanation(
                False,
                probes=({},),
                not_tried=({'name': 'Python version', 'reason': 'why'},),
            ),
            [
                'Explained: the environment does not explain it: with every difference undone '
                'the runs still differ (1 probe)',
                '- not tried: Python version: why',
            ],
            id='not-explained',
        ),
        pytest.param(
            Explanation(None, reason='unknown'),
            ['Explained: nothing tried: unknown'],
            id='nothing-tried',
        ),
        pytest.param(None, [], id='not-asked'),
    ],
)
def test_explanation_lines(explanation, lines):
    assert reproduce_run.explanation_lines(explanation) == lines


def test_candidates_and_what_cannot_be_undone():
    differences = Differences(
        environment=(
            {'kind': 'python', 'name': 'version', 'reference': '3.10', 'reproduced': '3.11'},
            {'kind': 'platform', 'name': 'cpu_count', 'reference': 4, 'reproduced': 8},
            {'kind': 'package', 'name': 'numkit', 'reference': '1.0', 'reproduced': '1.1'},
            {'kind': 'package', 'name': 'newkit', 'reference': None, 'reproduced': '1.0'},
            {'kind': 'env', 'name': 'PYTHONHASHSEED', 'reference': None, 'reproduced': '2'},
        ),
        datasets=({'name': 'd', 'context': None, 'change': 'digest'},),
        environment_unknown=None,
    )
    candidates, not_tried = reproduce_run.explanation_candidates(differences)
    assert candidates == [NUMKIT, Candidate('variable', 'PYTHONHASHSEED', None, '2')]
    assert [t['name'] for t in not_tried] == [
        'Python version',
        'platform cpu_count',
        'package newkit',
        'dataset d',
    ]

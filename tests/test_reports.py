"""The reports: JSON and Markdown output, numbers that JSON cannot hold,
and a report that cannot be written."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import SCRIPT, client
from helpers import (
    INF,
    TIGHT,
    logged_run,
    reproduce,
)

import reproduce_run
from reproduce_run import Rules, judge


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


@pytest.mark.parametrize(
    'how',
    [
        pytest.param('closed', id='closed-standard-output'),
        pytest.param('broken-pipe', id='reader-gone'),
    ],
)
def test_a_report_that_cannot_be_written_is_a_warning_not_a_traceback(reference, how):
    run_id = reference('sklearn_regression')
    argv = (sys.executable, str(SCRIPT), '--run_id', run_id, '--dry-run')
    if how == 'closed':
        proc = subprocess.run(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: os.close(1),
        )
    else:
        read, write = os.pipe()
        os.close(read)  # nobody will read the report
        proc = subprocess.run(
            argv, stdout=write, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
        )
        os.close(write)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(
        'reproduce_run.py: warning: the report could not be written to standard output: '
    )
    assert 'Traceback' not in proc.stderr

"""An environment compared without a difference is reported as compared, with
its source, in JSON, Markdown and the run description (issue 21, defect 7):
a comparison that found nothing is not an environment left unknown."""

from __future__ import annotations

import json

import pytest
from helpers import (
    client,
    logged_run,
    mlflow_run,
    reproduce,
    run_with_environment,
)

import reproduce_run
from reproduce_run import Differences

SAME_FROM_ARTIFACT = (
    "- environment: no difference from the reference run's (from its reproduce/environment.json)"
)
SAME_FROM_MODEL = (
    "- environment: no difference from the reference run's (from its logged model's "
    'files, which name only some packages)'
)


@pytest.mark.parametrize(
    ('differences', 'source', 'compared'),
    [
        pytest.param(None, 'unknown', False, id='not-looked-at'),
        pytest.param(Differences(), 'unknown', False, id='unknown'),
        pytest.param(
            Differences(environment_source='logged_model', environment_unknown=None),
            'logged_model',
            True,
            id='compared-nothing-differs',
        ),
        pytest.param(
            Differences(
                environment=({'kind': 'env', 'name': 'X', 'reference': '0', 'reproduced': '1'},),
                environment_source='reproduction',
                environment_unknown=None,
            ),
            'reproduction',
            True,
            id='compared-something-differs',
        ),
    ],
)
def test_differences_json_says_whether_the_environment_was_compared(differences, source, compared):
    found = reproduce_run.differences_json(differences)
    assert (found['environment_source'], found['environment_compared']) == (source, compared)


def test_compared_environment_without_a_difference_in_json_and_markdown(tmp_path, capsys):
    ref = run_with_environment(tmp_path, PYTHONHASHSEED='0')
    other = run_with_environment(tmp_path, PYTHONHASHSEED='0')
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'json')
    assert code == 0
    differences = json.loads(out)['differences']
    assert (
        differences['environment'],
        differences['environment_source'],
        differences['environment_compared'],
    ) == ([], 'reproduction', True)
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'markdown')
    assert code == 0
    assert SAME_FROM_ARTIFACT in out.splitlines()
    assert 'Other differences' not in out
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other)
    assert 'environment' not in out  # the table stays as it was: nothing to say


def test_unknown_environment_is_not_said_to_have_no_difference(capsys):
    ref, other = logged_run({'acc': [0.5]}), logged_run({'acc': [0.5]})
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'markdown')
    assert code == 0
    assert 'no difference' not in out
    assert "- environment: not compared, the reference run's environment is unknown" in out


@pytest.mark.slow
def test_reproduction_with_the_same_environment_reports_it_everywhere(samples_repo, store, capsys):
    """The dataset_input sample logs a model that pins what trained it; the
    reproduction runs in this very interpreter, on the same data: nothing
    differs, and every format says the environment was compared."""
    experiment = 'why-json-same-environment'  # its own: one dataset source per experiment
    ref = mlflow_run(str(samples_repo / 'dataset_input'), store, '--experiment-name', experiment)
    code, out, err = reproduce(
        capsys, '--run_id', ref, '--experiment-name', experiment, '--output', 'json'
    )
    assert code == 0, err
    report = json.loads(out)
    assert report['differences'] == {
        'environment': [],
        'datasets': [],
        'code': [],
        'models': [],
        'environment_source': 'logged_model',
        'environment_compared': True,
    }
    note = client().get_run(report['reproduced_run_id']).data.tags['mlflow.note.content']
    assert SAME_FROM_MODEL in note.splitlines()
    assert note.splitlines()[-1] == 'Runs equal: True'

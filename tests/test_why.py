"""Why the runs differ: environment, data, code and logged models beside the
verdict, and an environment compared without a difference said to be
compared.  Pure comparisons in tables; the rest with real runs."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import (
    client,
    clone_with_remote,
    dataset_input,
    git,
    logged_run,
    mlflow_run,
    python_run,
    reproduce,
    run_with_environment,
)

import reproduce_run
from reproduce_run import Differences, Rules, Tolerance

TIGHT = Rules(Tolerance(rtol=1e-9, atol=0.0))
FULL = {
    'python': {'version': '3.11.7', 'implementation': 'CPython', 'executable': '/usr/bin/python'},
    'platform': {'system': 'Linux', 'release': '6.1', 'machine': 'x86_64'},
    'cpu_count': 2,
    'packages': {'numpy': '1.26.4', 'scikit-learn': '1.9.1'},
    'env': {'PYTHONHASHSEED': None, 'OMP_NUM_THREADS': '1'},
    'gpu': None,
}


def changed(base: dict, **changes) -> dict:
    return {**base, **changes}


# --- the environment: pure comparisons -------------------------------------------


@pytest.mark.parametrize(
    ('reference', 'reproduced', 'only_names', 'expected'),
    [
        pytest.param(FULL, FULL, None, [], id='same'),
        pytest.param(
            FULL,
            changed(FULL, python={**FULL['python'], 'version': '3.12.1'}),
            None,
            [('python', 'version', '3.11.7', '3.12.1')],
            id='python-version',
        ),
        pytest.param(
            FULL,
            changed(FULL, python={**FULL['python'], 'executable': '/venv/bin/python'}),
            None,
            [],
            id='the-same-python-in-another-virtualenv',
        ),
        pytest.param(
            FULL,
            changed(
                FULL, python={**FULL['python'], 'version': '3.12.1', 'executable': '/v/python'}
            ),
            None,
            [('python', 'version', '3.11.7', '3.12.1')],
            id='another-minor-version-elsewhere',
        ),
        pytest.param(
            FULL,
            changed(FULL, platform={**FULL['platform'], 'machine': 'arm64'}),
            None,
            [('platform', 'machine', 'x86_64', 'arm64')],
            id='platform-machine',
        ),
        pytest.param(
            FULL,
            changed(FULL, cpu_count=8),
            None,
            [('platform', 'cpu_count', 2, 8)],
            id='cpu-count',
        ),
        pytest.param(
            FULL,
            changed(FULL, packages={'numpy': '2.0.0', 'scikit-learn': '1.9.1'}),
            None,
            [('package', 'numpy', '1.26.4', '2.0.0')],
            id='package-version',
        ),
        pytest.param(
            FULL,
            changed(FULL, packages={**FULL['packages'], 'torch': '2.3.0'}),
            None,
            [('package', 'torch', None, '2.3.0')],
            id='package-only-reproduced',
        ),
        pytest.param(
            FULL,
            changed(FULL, packages={'numpy': '1.26.4'}),
            None,
            [('package', 'scikit-learn', '1.9.1', None)],
            id='package-only-reference',
        ),
        pytest.param(
            changed(FULL, packages={'Scikit_Learn': '1.9.1', 'NumPy': '1.26.4'}),
            FULL,
            None,
            [],
            id='names-normalized-pep-503',
        ),
        pytest.param(
            {'python': {'version': '3.11.7'}, 'packages': {'scikit-learn': '0.0.1'}},
            FULL,
            ['scikit-learn'],
            [('package', 'scikit-learn', '0.0.1', '1.9.1')],
            id='model-requirements-compare-only-what-they-name',
        ),
        pytest.param(
            {'python': {'version': '3.10.0'}, 'packages': {}},
            FULL,
            [],
            [('python', 'version', '3.10.0', '3.11.7')],
            id='fields-one-side-lacks-are-not-compared',
        ),
        pytest.param(
            FULL,
            changed(FULL, env={'PYTHONHASHSEED': '0', 'OMP_NUM_THREADS': '1'}),
            None,
            [('env', 'PYTHONHASHSEED', None, '0')],
            id='env-variable-set',
        ),
        pytest.param(
            FULL,
            changed(FULL, env={'PYTHONHASHSEED': None, 'OMP_NUM_THREADS': '4'}),
            None,
            [('env', 'OMP_NUM_THREADS', '1', '4')],
            id='env-variable-changed',
        ),
        pytest.param(
            FULL,
            changed(FULL, gpu=[{'name': 'A100', 'driver_version': '550'}]),
            None,
            [('platform', 'gpu', None, [{'name': 'A100', 'driver_version': '550'}])],
            id='gpu-appeared',
        ),
    ],
)
def test_environment_differences(reference, reproduced, only_names, expected):
    found = reproduce_run.environment_differences(reference, reproduced, only_names)
    assert [(d['kind'], d['name'], d['reference'], d['reproduced']) for d in found] == expected


@pytest.mark.parametrize(
    ('text', 'pins'),
    [
        pytest.param(
            'mlflow==3.17.2\nscikit-learn==0.0.1\n',
            {'mlflow': '3.17.2', 'scikit-learn': '0.0.1'},
            id='pins',
        ),
        pytest.param(
            'Scikit_Learn==1.0 ; python_version > "3"\n# comment\n',
            {'scikit-learn': '1.0'},
            id='normalized-marker-comment',
        ),
        pytest.param(
            '-r other.txt\ncloudpickle\nnumpy>=1.2\n--index-url x\n',
            {},
            id='options-unpinned-and-ranges-pin-nothing',
        ),
        pytest.param('uvicorn[standard]==0.30.1\n', {'uvicorn': '0.30.1'}, id='extras'),
    ],
)
def test_parse_requirements(text, pins):
    assert reproduce_run.parse_requirements(text) == pins


@pytest.mark.parametrize(
    ('files', 'expected'),
    [
        pytest.param(
            {
                'requirements.txt': 'mlflow==3.17.2\n',
                'python_env.yaml': 'python: 3.11.7\ndependencies:\n- -r requirements.txt\n',
            },
            {'packages': {'mlflow': '3.17.2'}, 'python': {'version': '3.11.7'}},
            id='requirements-and-python-env',
        ),
        pytest.param(
            {
                'conda.yaml': 'dependencies:\n- python=3.10.4\n- pip<=23\n'
                '- pip:\n  - numpy==1.26.4\n'
            },
            {'packages': {'numpy': '1.26.4'}, 'python': {'version': '3.10.4'}},
            id='conda-only',
        ),
        pytest.param(
            {
                'requirements.txt': 'numpy==2.0\n',
                'conda.yaml': 'dependencies:\n- pip:\n  - numpy==1.0\n',
            },
            {'packages': {'numpy': '2.0'}},
            id='requirements-win-over-conda',
        ),
        pytest.param({'conda.yaml': ': not yaml ['}, None, id='broken-yaml-is-no-environment'),
        pytest.param({}, None, id='no-files'),
    ],
)
def test_environment_from_model_files(files, expected):
    assert reproduce_run.environment_from_model_files(files) == expected


# --- datasets, code and models: pure comparisons ----------------------------------


@pytest.mark.parametrize(
    ('reference', 'reproduced', 'expected'),
    [
        pytest.param([('train', 'aa')], [('train', 'aa')], [], id='same'),
        pytest.param(
            [('train', 'aa')],
            [('train', 'bb')],
            [('train', 'training', 'digest', 'aa', 'bb')],
            id='digest',
        ),
        pytest.param(
            [('train', 'aa', 'x.csv')],
            [('train', 'aa', 'y.csv')],
            [('train', 'training', 'source', 'x.csv', 'y.csv')],
            id='source',
        ),
        pytest.param(
            [('train', 'aa', 'x', 's1')],
            [('train', 'bb', 'x', 's2')],
            [
                ('train', 'training', 'digest', 'aa', 'bb'),
                ('train', 'training', 'schema', 's1', 's2'),
            ],
            id='digest-and-schema',
        ),
        pytest.param(
            [('train', 'aa'), ('val', 'cc')],
            [('train', 'aa')],
            [('val', 'training', 'only_reference', 'cc', None)],
            id='only-reference',
        ),
        pytest.param(
            [],
            [('train', 'aa')],
            [('train', 'training', 'only_reproduced', None, 'aa')],
            id='only-reproduced',
        ),
        pytest.param(
            [('train', 'aa', 'x', 's1', 'training')],
            [('train', 'aa', 'x', 's1', 'eval')],
            [
                ('train', 'eval', 'only_reproduced', None, 'aa'),
                ('train', 'training', 'only_reference', 'aa', None),
            ],
            id='matched-by-context-too',
        ),
        pytest.param(
            [('train', 'aa', 'x', 's1', None)],
            [('train', 'aa', 'x', 's1', None)],
            [],
            id='no-context',
        ),
    ],
)
def test_dataset_differences(reference, reproduced, expected):
    found = reproduce_run.dataset_differences(
        [dataset_input(*d) for d in reference], [dataset_input(*d) for d in reproduced]
    )
    assert [
        (d['name'], d['context'], d['change'], d['reference'], d['reproduced']) for d in found
    ] == expected


def code_source(**tags: str) -> str:
    """A dataset source made in code, as MLflow 3 writes it (CodeDatasetSource):
    the run context's tags where the data was made."""
    context = {'mlflow.user': 'alice', 'mlflow.source.name': 'train.py'}
    return json.dumps({'tags': {**context, 'mlflow.source.type': 'LOCAL', **tags}})


GIT_TAGS = {
    'mlflow.source.git.commit': 'a' * 40,
    'mlflow.source.git.branch': 'main',
    'mlflow.source.git.repoURL': 'https://example.com/team/repo.git',
}


@pytest.mark.parametrize(
    ('reference', 'reproduced', 'expected'),
    [
        pytest.param(
            ('code', code_source(**GIT_TAGS)),
            ('code', code_source(**{'mlflow.source.git.commit': 'a' * 40})),
            [],
            id='a-private-checkout-has-no-branch-nor-remote',
        ),
        pytest.param(
            ('code', code_source(**GIT_TAGS)),
            ('code', code_source(**{'mlflow.source.git.commit': 'b' * 40})),
            [],
            id='another-commit-is-said-by-the-code-not-the-data',
        ),
        pytest.param(
            ('code', code_source(**{'reproduce.argv': '["--a"]', 'mlflow.user': 'alice'})),
            ('code', code_source(**{'reproduce.environment': '{}', 'mlflow.user': 'cron'})),
            [],
            id='the-user-and-the-recorder-tags',
        ),
        pytest.param(
            ('code', code_source(**{'mlflow.source.name': '/home/alice/repo/src/pkg/train.py'})),
            ('code', code_source(**{'mlflow.source.name': '/tmp/checkout/src/pkg/train.py'})),
            [],
            id='python-m-records-the-absolute-path-of-its-folder',
        ),
        pytest.param(
            ('code', code_source()),
            ('code', code_source(**{'mlflow.source.type': 'NOTEBOOK', 'notebook.id': '7'})),
            [('tags.mlflow.source.type', 'LOCAL', 'NOTEBOOK'), ('tags.notebook.id', None, '7')],
            id='made-elsewhere',
        ),
        pytest.param(
            ('local', '{"uri": "data/a.csv"}'),
            ('local', '{"uri": "data/b.csv"}'),
            [('uri', 'data/a.csv', 'data/b.csv')],
            id='another-file',
        ),
        pytest.param(
            ('http', '{"url": "https://x/d.csv"}'),
            ('http', '{"url": "https://x/d.csv", "headers": {"v": "2"}}'),
            [('headers.v', None, '2')],
            id='a-field-on-one-side-only',
        ),
        pytest.param(
            ('code', code_source()),
            ('local', '{"uri": "d.csv"}'),
            [('source_type', 'code', 'local')],
            id='another-kind-of-source-is-one-field',
        ),
        pytest.param(
            ('local', 'x.csv'), ('local', 'y.csv'), [(None, 'x.csv', 'y.csv')], id='no-json'
        ),
        pytest.param(('local', '[1]'), ('local', '[1]'), [], id='same-json-that-is-no-object'),
    ],
)
def test_source_differences(reference, reproduced, expected):
    a, b = (
        dataset_input('d', 'aa', source, source_type=kind).dataset
        for kind, source in (reference, reproduced)
    )
    assert reproduce_run.source_differences(a, b) == expected


def source_change(field, reference, reproduced) -> dict:
    return {
        'name': 'train',
        'context': 'training',
        'change': 'source',
        'field': field,
        'reference': reference,
        'reproduced': reproduced,
    }


@pytest.mark.parametrize(
    ('change', 'line'),
    [
        pytest.param(
            source_change('uri', 'data/a.csv', 'data/b.csv'),
            'dataset `train` (training) comes from another source (uri: data/a.csv -> data/b.csv)',
            id='one-field',
        ),
        pytest.param(
            source_change('headers.v', None, '2'),
            'dataset `train` (training) comes from another source (headers.v: - -> 2)',
            id='on-one-side-only',
        ),
        pytest.param(
            source_change('uri', 's3://b/' + 'x' * 100, 's3://b/y'),
            f'dataset `train` (training) comes from another source (uri: s3://b/{"x" * 52}… -> '
            's3://b/y)',
            id='a-long-value-is-cut',
        ),
        pytest.param(
            source_change(None, 'x.csv', 'y.csv'),
            'dataset `train` (training) comes from another source: x.csv -> y.csv',
            id='no-json',
        ),
    ],
)
def test_a_source_difference_is_one_short_line(change, line):
    assert reproduce_run.differences_lines(Differences(datasets=(change,)))[-1] == f'  - {line}'


@pytest.mark.parametrize(
    ('tags', 'uri', 'version', 'expected'),
    [
        pytest.param({}, False, None, [], id='clean'),
        pytest.param({'mlflow.source.git.dirty': 'false'}, False, None, [], id='recorded-clean'),
        pytest.param(
            {'mlflow.source.git.dirty': 'true', 'mlflow.source.git.commit': 'a' * 40},
            False,
            None,
            [
                (
                    'the reference run was trained from uncommitted edits on top of commit '
                    'aaaaaaaaaaaa; no commit holds that code'
                )
            ],
            id='dirty',
        ),
        pytest.param(
            {},
            True,
            None,
            ['--uri replaced the source that the reference run recorded'],
            id='uri-overridden',
        ),
        pytest.param(
            {},
            False,
            '--version',
            ['--version replaced the commit that the reference run recorded'],
            id='version-overridden',
        ),
        pytest.param(
            {},
            False,
            '--bisect',
            ['--bisect replaced the commit that the reference run recorded'],
            id='a-bisection-probe',
        ),
    ],
)
def test_code_notes(tags, uri, version, expected):
    assert reproduce_run.code_notes(tags, uri, version) == expected


@pytest.mark.parametrize(
    ('reference', 'reproduced', 'expected'),
    [
        pytest.param({'m': {'acc': [(0, 0.5)]}}, {'m': {'acc': [(0, 0.5)]}}, [], id='same'),
        pytest.param(
            {'m': {'acc': [(0, 0.5)]}},
            {'m': {'acc': [(0, 0.6)]}},
            [('m', 'acc', 0.5, 0.6)],
            id='differs',
        ),
        pytest.param({'m': {'acc': [(0, 0.5)]}}, {}, [], id='only-one-run-logged-models'),
        pytest.param(
            {'m': {'acc': [(0, 0.5)]}},
            {'n': {'acc': [(0, 0.5)]}},
            [('m', 'acc', 0.5, None), ('n', 'acc', None, 0.5)],
            id='models-by-name',
        ),
    ],
)
def test_compare_model_metrics(reference, reproduced, expected):
    found = reproduce_run.compare_model_metrics(reference, reproduced, TIGHT)
    assert [(model, m.key, m.reference, m.reproduced) for model, m in found] == expected


def test_nothing_to_say_prints_no_section():
    nothing = Differences(environment_source='reproduction', environment_unknown=None)
    assert reproduce_run.differences_lines(nothing) == []
    assert reproduce_run.differences_lines(None) == []


def test_json_always_has_the_differences():
    verdict = reproduce_run.judge({'m': [(0, 1.0)]}, {'m': [(0, 1.0)]}, TIGHT)
    report = reproduce_run.Report('equal', 'a', 'b', verdict=verdict)
    assert json.loads(report.json_text())['differences'] == {
        'environment': [],
        'datasets': [],
        'code': [],
        'models': [],
        'environment_source': 'unknown',
        'environment_compared': False,
    }


# --- capturing and recording the environment --------------------------------------


def test_capture_environment_describes_this_interpreter(tmp_path):
    env = {**os.environ, 'PYTHONHASHSEED': '7'}
    env.pop('OMP_NUM_THREADS', None)
    found = reproduce_run.capture_environment(None, env, str(tmp_path))
    assert found['python'] == {
        'version': platform.python_version(),
        'implementation': platform.python_implementation(),
        'executable': sys.executable,
    }
    assert found['platform']['system'] == platform.system()
    assert found['cpu_count'] == os.cpu_count()
    assert found['packages']['scikit-learn'] == importlib.metadata.version('scikit-learn')
    assert found['env']['PYTHONHASHSEED'] == '7'
    assert found['env']['OMP_NUM_THREADS'] is None
    assert set(found['env']) == set(reproduce_run.RESULT_VARIABLES)
    assert found['gpu'] is None or isinstance(found['gpu'], list)


def test_capture_environment_runs_in_the_activated_environment(tmp_path):
    """A built environment (here a real venv, activated as MLflow activates
    one) is described, not the tool's interpreter."""
    venv = tmp_path / 'venv'
    subprocess.run((sys.executable, '-m', 'venv', '--without-pip', str(venv)), check=True)
    found = reproduce_run.capture_environment(
        f'source {venv}/bin/activate && echo activated', os.environ, str(tmp_path)
    )
    assert found['python']['executable'] == str(venv / 'bin' / 'python')
    assert 'mlflow' not in found['packages']
    assert 'scikit-learn' not in found['packages']


def test_capture_failure_warns_and_gives_none(tmp_path, capsys):
    found = reproduce_run.capture_environment('false', os.environ, str(tmp_path))
    assert found is None
    assert capsys.readouterr().err.startswith(
        "reproduce_run: warning: cannot capture the project's environment: "
    )


def test_record_environment_writes_the_artifact(tmp_path):
    run_id = run_with_environment(tmp_path, PYTHONHASHSEED='3')
    found, source = reproduce_run.run_environment(client(), client().get_run(run_id))
    assert source == 'reproduction'
    assert found['env']['PYTHONHASHSEED'] == '3'
    assert found['packages']['mlflow'] == importlib.metadata.version('mlflow')


# --- --compare-to with real runs --------------------------------------------------


def test_compare_to_reports_a_changed_hash_seed(tmp_path, capsys):
    ref = run_with_environment(tmp_path, PYTHONHASHSEED='0')
    other = run_with_environment(tmp_path, PYTHONHASHSEED='1')
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other)
    assert code == 0  # they inform; the verdict stays about metrics
    lines = out.splitlines()
    assert lines[-4:] == [
        'Other differences:',
        "- environment (the reference run's from its reproduce/environment.json):",
        '  - PYTHONHASHSEED: 0 -> 1',
        'Runs equal: True',
    ]
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'json')
    differences = json.loads(out)['differences']
    assert differences['environment'] == [
        {'kind': 'env', 'name': 'PYTHONHASHSEED', 'reference': '0', 'reproduced': '1'}
    ]
    assert differences['environment_source'] == 'reproduction'


def test_same_environment_prints_nothing_more(tmp_path, capsys):
    ref = run_with_environment(tmp_path, PYTHONHASHSEED='0')
    other = run_with_environment(tmp_path, PYTHONHASHSEED='0')
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other)
    assert code == 0
    assert 'Other differences' not in out
    assert out.splitlines()[-2].startswith('+---')


def test_unknown_reference_environment_is_said(capsys):
    ref, other = logged_run({'acc': [0.5]}), logged_run({'acc': [0.5]})
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other)
    assert code == 0
    assert out.splitlines()[-3:] == [
        'Other differences:',
        (
            "- environment: not compared, the reference run's environment is unknown (no "
            'reproduce/environment.json, not recorded, no logged model)'
        ),
        'Runs equal: True',
    ]


def log_sklearn_model(**log_model_args) -> tuple[str, str]:
    """(run ID, model ID) of a finished run that logged a small sklearn model."""
    import mlflow
    from sklearn.linear_model import LinearRegression

    with mlflow.start_run() as run:
        model = LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0])
        info = mlflow.sklearn.log_model(model, name='model', **log_model_args)
    return run.info.run_id, info.model_id


def test_logged_model_pins_are_compared_with_installed_versions(tmp_path, capsys):
    ref, _ = log_sklearn_model(pip_requirements=['scikit-learn==0.0.1'])
    other = run_with_environment(tmp_path)
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'json')
    differences = json.loads(out)['differences']
    assert code == 1  # the reference logged no metric 'acc'
    assert differences['environment_source'] == 'logged_model'
    # mlflow is pinned too, at the installed version; nothing the model does
    # not name (numpy, ...) is listed.
    assert differences['environment'] == [
        {
            'kind': 'package',
            'name': 'scikit-learn',
            'reference': '0.0.1',
            'reproduced': importlib.metadata.version('scikit-learn'),
        }
    ]
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other)
    assert (
        f'  - package scikit-learn: 0.0.1 -> {importlib.metadata.version("scikit-learn")}'
    ) in out.splitlines()


def test_model_metrics_from_a_later_evaluation_are_compared(capsys):
    ref, ref_model = log_sklearn_model(pip_requirements=[])  # not inferred: 8 s each
    other, other_model = log_sklearn_model(pip_requirements=[])
    evaluation = logged_run({})
    client().log_metric(evaluation, 'holdout_mae', 0.25, model_id=ref_model)
    client().log_metric(evaluation, 'holdout_mae', 0.5, model_id=other_model)
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'json')
    models = json.loads(out)['differences']['models']
    assert [
        (m['model'], m['key'], m['reference'], m['reproduced'], m['equal']) for m in models
    ] == [('model', 'holdout_mae', 0.25, 0.5, False)]
    assert code == 0
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other)
    assert '  - model `model` metric holdout_mae: 0.25 -> 0.5' in out.splitlines()


def test_dirty_reference_is_said(capsys):
    ref, other = logged_run({'acc': [0.5]}), logged_run({'acc': [0.5]})
    client().set_tag(ref, 'mlflow.source.git.dirty', 'true')
    client().set_tag(ref, 'mlflow.source.git.commit', 'b' * 40)
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'markdown')
    assert code == 0
    assert (
        '  - the reference run was trained from uncommitted edits on top of commit '
        'bbbbbbbbbbbb; no commit holds that code'
    ) in out.splitlines()
    assert '  - the runs ran different commits: bbbbbbbbbbbb -> no recorded commit' in out


@pytest.fixture(scope='module')
def dataset_runs(samples_repo, store, tmp_path_factory) -> tuple[str, str]:
    """Two `mlflow run`s of the dataset_input sample, the data file edited
    between them (its first row)."""
    data = tmp_path_factory.mktemp('data') / 'train.csv'
    data.write_text((samples_repo / 'dataset_input' / 'data.csv').read_text())
    project = str(samples_repo / 'dataset_input')
    first = mlflow_run(project, store, '-P', f'data={data}')
    lines = data.read_text().splitlines()
    lines[1] = '0.05' + lines[1][1:]
    data.write_text('\n'.join(lines) + '\n')
    return first, mlflow_run(project, store, '-P', f'data={data}')


def test_changed_dataset_is_reported_in_every_format(dataset_runs, capsys):
    ref, other = dataset_runs
    digests = [client().get_run(r).inputs.dataset_inputs[0].dataset.digest for r in dataset_runs]
    line = (
        f'  - dataset `train` (training) changed at its source (digest {digests[0]} -> '
        f'{digests[1]})'
    )
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other)
    assert code == 1
    assert out.splitlines()[-4:] == ['Other differences:', '- data:', line, 'Runs equal: False']
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'json')
    differences = json.loads(out)['differences']
    assert differences['datasets'] == [
        {
            'name': 'train',
            'context': 'training',
            'change': 'digest',
            'field': None,
            'reference': digests[0],
            'reproduced': digests[1],
        }
    ]
    # Both models pin what trained them, in one interpreter: no package differs.
    assert (differences['environment'], differences['environment_source']) == ([], 'logged_model')
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'markdown')
    assert f'**Other differences:**\n\n- data:\n{line}\n\nRuns equal: False\n' in out


def test_differences_go_into_the_run_description(dataset_runs):
    """record_verdict writes the Markdown, with its section, as the description."""
    c = client()
    ref, other = (c.get_run(r) for r in dataset_runs)
    verdict = reproduce_run.judge({}, {}, TIGHT)
    reproduced = logged_run({})
    report = reproduce_run.Report(
        'equal',
        ref.info.run_id,
        reproduced,
        verdict=verdict,
        differences=reproduce_run.differences_between(c, ref, other, TIGHT),
    )
    reproduce_run.record_verdict(c, report, plots=False)
    note = c.get_run(reproduced).data.tags['mlflow.note.content']
    assert '**Other differences:**' in note
    assert '  - dataset `train` (training) changed at its source (digest ' in note


def test_sample_reads_its_data_from_the_default_file(samples_repo, store):
    # Its own experiment: MLflow keeps one source per dataset digest and
    # experiment, and the other tests log this very data from another file.
    run_id = mlflow_run(
        str(samples_repo / 'dataset_input'), store, '--experiment-name', 'dataset-sample'
    )
    run = client().get_run(run_id)
    (dataset_input,) = run.inputs.dataset_inputs
    assert (dataset_input.dataset.name, json.loads(dataset_input.dataset.source)) == (
        'train',
        {'uri': 'data.csv'},
    )
    environment, source = reproduce_run.run_environment(client(), run)
    assert source == 'logged_model'
    assert environment['packages']['scikit-learn'] == importlib.metadata.version('scikit-learn')


def test_environment_sources_through_a_tracking_server(mlflow_server, monkeypatch, tmp_path):
    """Artifacts and model files are downloaded through the server
    (mlflow-artifacts: URIs), not read from a local folder."""
    monkeypatch.setenv('MLFLOW_TRACKING_URI', mlflow_server)
    c = client()
    with_env = run_with_environment(tmp_path, OMP_NUM_THREADS='2')
    with_model, _ = log_sklearn_model(pip_requirements=['scikit-learn==0.0.1'])
    assert reproduce_run.run_environment(c, c.get_run(with_env))[0]['env']['OMP_NUM_THREADS'] == '2'
    environment, source = reproduce_run.run_environment(c, c.get_run(with_model))
    assert (source, environment['packages']['scikit-learn']) == ('logged_model', '0.0.1')


# --- real reproductions -------------------------------------------------------------


def commit_project(repo: Path, name: str, files: dict[str, str]) -> Path:
    """A small project committed into a test's own copy of the samples."""
    project = repo / name
    project.mkdir()
    for file_name, text in files.items():
        (project / file_name).write_text(text)
    git('add', '--all', cwd=repo)
    git('commit', '--quiet', '-m', f'add {name}', cwd=repo)
    return project


def bare_project(repo: Path) -> Path:
    """A project that needs no package at all, and ends at once; its
    python_env.yaml asks for this Python and installs nothing."""
    return commit_project(
        repo,
        'bare',
        {
            'MLproject': 'name: bare\npython_env: python_env.yaml\nentry_points:\n  main:\n'
            '    command: "python -c \'print(42)\'"\n',
            'python_env.yaml': f'python: "{platform.python_version()}"\n'
            'build_dependencies: []\ndependencies: []\n',
        },
    )


def recorded_environment(run_id: str) -> dict:
    """The reproduced run's reproduce/environment.json, as written."""
    with tempfile.TemporaryDirectory() as folder:
        path = client().download_artifacts(run_id, 'reproduce/environment.json', folder)
        return json.loads(Path(path).read_text())


def test_a_project_that_ends_first_leaves_the_capture_alone(own_repo, store, capsys):
    """The capture carries the reproduction's process marker; a project that ends
    before it must not take it down as a process left behind."""
    ref = mlflow_run(str(bare_project(own_repo)), store)
    code, out, err = reproduce(capsys, '--run_id', ref, '--output', 'json')
    assert code == 0, err
    assert 'left' not in err and 'cannot capture' not in err
    environment = recorded_environment(json.loads(out)['reproduced_run_id'])
    assert environment['python']['executable'] == sys.executable


@dataclasses.dataclass(frozen=True)
class Reproduction:
    code: int
    out: str
    err: str
    run_id: str  # of the reproduced run


def run_tool(*argv: str) -> Reproduction:
    """main() in this process, its output kept (capsys is for one test only)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = reproduce_run.main(argv)
    found = re.search(r'[Rr]eproduced[ _]run(?:_id)?\W{1,4}([0-9a-f]{32})', out.getvalue())
    assert found, (out.getvalue(), err.getvalue())
    return Reproduction(code, out.getvalue(), err.getvalue(), found.group(1))


EXPERIMENT = 'why-reproductions'  # its own: MLflow keeps one source per digest and experiment
HASH_SEEDS = {'table': '0', 'json': '1', 'markdown': '2'}  # PYTHONHASHSEED of each reproduction


@pytest.fixture(scope='module')
def data_reproductions(samples_repo, store, tmp_path_factory) -> tuple[str, dict]:
    """The reference: the dataset_input sample trained on a CSV file whose
    rows are then reversed (a new digest, the same fit).  Reproduced once per
    output format, each with its own PYTHONHASHSEED in the tool's environment."""
    where = tmp_path_factory.mktemp('data-reproductions')
    data = where / 'train.csv'
    header, *rows = (samples_repo / 'dataset_input' / 'data.csv').read_text().splitlines()
    data.write_text('\n'.join([header, *rows]) + '\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('MLFLOW_TRACKING_URI', store)
        mp.chdir(where)
        ref = mlflow_run(
            str(samples_repo / 'dataset_input'),
            store,
            '--experiment-name',
            EXPERIMENT,
            '-P',
            f'data={data}',
        )
        data.write_text('\n'.join([header, *reversed(rows)]) + '\n')
        made = {}
        for output, seed in HASH_SEEDS.items():
            mp.setenv('PYTHONHASHSEED', seed)
            made[output] = run_tool(
                '--run_id', ref, '--experiment-name', EXPERIMENT, '--output', output
            )
    return ref, made


def changed_dataset_line(ref: str, reproduced: str) -> str:
    digests = [
        client().get_run(r).inputs.dataset_inputs[0].dataset.digest for r in (ref, reproduced)
    ]
    assert digests[0] != digests[1]
    return (
        f'  - dataset `train` (training) changed at its source (digest {digests[0]} -> '
        f'{digests[1]})'
    )


def test_reproduction_names_the_changed_dataset_in_the_table(data_reproductions):
    ref, made = data_reproductions
    r = made['table']
    assert r.out.splitlines()[-4:] == [
        'Other differences:',
        '- data:',
        changed_dataset_line(ref, r.run_id),
        'Runs equal: True',
    ]


def test_reproduction_names_the_changed_dataset_in_json(data_reproductions):
    ref, made = data_reproductions
    r = made['json']
    digests = [
        client().get_run(run_id).inputs.dataset_inputs[0].dataset.digest
        for run_id in (ref, r.run_id)
    ]
    assert json.loads(r.out)['differences']['datasets'] == [
        {
            'name': 'train',
            'context': 'training',
            'change': 'digest',
            'field': None,
            'reference': digests[0],
            'reproduced': digests[1],
        }
    ]


def test_reproduction_names_the_changed_dataset_in_markdown(data_reproductions):
    ref, made = data_reproductions
    r = made['markdown']
    line = changed_dataset_line(ref, r.run_id)
    assert r.out.endswith(f'**Other differences:**\n\n- data:\n{line}\n\nRuns equal: True\n')


@pytest.mark.parametrize('output', HASH_SEEDS)
def test_reproduced_run_description_names_the_changed_dataset(data_reproductions, output):
    ref, made = data_reproductions
    note = client().get_run(made[output].run_id).data.tags['mlflow.note.content']
    line = changed_dataset_line(ref, made[output].run_id)
    assert f'**Other differences:**\n\n- data:\n{line}\n\nRuns equal: True' in note


def test_a_changed_dataset_leaves_the_verdict_to_the_metrics(data_reproductions):
    """Reversed rows: another digest, reported; the same fit, so equal."""
    _, made = data_reproductions
    assert [r.code for r in made.values()] == [0, 0, 0]
    report = json.loads(made['json'].out)
    assert (report['status'], report['equal']) == ('equal', True)
    assert report['differences']['datasets']
    assert [m['key'] for m in report['metrics'] if m['equal']] == ['mae', 'r2']


MAKES_DATA = """\
import mlflow
import numpy as np

with mlflow.start_run():
    numbers = mlflow.data.from_numpy(np.arange(6.0), name='numbers')  # a source made in code
    mlflow.log_input(numbers, context='training')
    mlflow.log_metric('total', float(np.arange(6.0).sum()))
"""


def test_a_dataset_made_in_code_is_no_difference_from_a_private_checkout(
    tmp_path, git_daemon, capsys
):
    """The data's source holds the git tags where it was made: the reference's
    clone has a branch and a remote, the tool's private checkout neither.  In
    another experiment, MLflow keeps the reproduction's own source."""
    url, base = git_daemon
    git('init', '--quiet', '--bare', str(base / 'makes-data.git'), cwd=base)
    repo = clone_with_remote(tmp_path / 'repo', {'made.py': MAKES_DATA}, f'{url}/makes-data.git')
    ref = python_run(repo, 'made.py')
    code, out, err = reproduce(
        capsys, '--run_id', ref, '--experiment_name', 'data-made-in-code', '--output', 'json'
    )
    assert code == 0, err
    report = json.loads(out)
    assert report['differences']['datasets'] == []
    sources = [
        json.loads(client().get_run(r).inputs.dataset_inputs[0].dataset.source)['tags']
        for r in (ref, report['reproduced_run_id'])
    ]
    assert sources[0]['mlflow.source.git.branch'] == 'main'
    assert 'mlflow.source.git.branch' not in sources[1]
    assert sources[0]['mlflow.source.git.repoURL'] != sources[1].get('mlflow.source.git.repoURL')
    code, out, err = reproduce(capsys, '--run_id', ref, '--experiment_name', 'data-made-in-code')
    assert code == 0, err
    assert '- data:' not in out and 'another source' not in out


def test_pins_equal_to_the_installed_versions_report_nothing(data_reproductions):
    """The sample's model pins what trained it, in this very interpreter."""
    _, made = data_reproductions
    differences = json.loads(made['json'].out)['differences']
    assert (
        differences['environment'],
        differences['environment_source'],
        differences['environment_compared'],
    ) == ([], 'logged_model', True)
    assert '- environment' not in made['table'].out


@pytest.mark.parametrize('output', HASH_SEEDS)
def test_every_reproduction_records_the_tools_environment(data_reproductions, output):
    """Env manager local: the tool's interpreter ran the project."""
    environment = recorded_environment(data_reproductions[1][output].run_id)
    assert set(environment) == {'python', 'platform', 'cpu_count', 'packages', 'env', 'gpu'}
    assert set(environment['python']) == {'version', 'implementation', 'executable'}
    assert set(environment['platform']) == {'system', 'release', 'machine'}
    assert os.path.dirname(environment['python']['executable']) == os.path.dirname(sys.executable)
    assert environment['packages']['mlflow'] == importlib.metadata.version('mlflow')
    assert environment['env']['PYTHONHASHSEED'] == HASH_SEEDS[output]
    assert environment['gpu'] is None or isinstance(environment['gpu'], list)


def test_reproductions_with_other_hash_seeds_are_told_apart(data_reproductions, capsys):
    """The second reproduction compared with the first, as tonight's check
    with last night's: the reference's environment is its own record."""
    _, made = data_reproductions
    first, second = made['table'].run_id, made['json'].run_id
    code, out, _ = reproduce(capsys, '--run_id', first, '--compare-to', second, '--output', 'json')
    assert code == 0
    differences = json.loads(out)['differences']
    assert differences['environment_source'] == 'reproduction'
    assert differences['environment'] == [
        {'kind': 'env', 'name': 'PYTHONHASHSEED', 'reference': '0', 'reproduced': '1'}
    ]
    assert differences['datasets'] == []
    code, out, _ = reproduce(capsys, '--run_id', first, '--compare-to', second)
    assert out.splitlines()[-4:] == [
        'Other differences:',
        "- environment (the reference run's from its reproduce/environment.json):",
        '  - PYTHONHASHSEED: 0 -> 1',
        'Runs equal: True',
    ]


PINNED_MODEL = """\
import mlflow
import mlflow.sklearn
from sklearn.linear_model import LinearRegression

model = LinearRegression().fit([[0.0], [1.0]], [0.0, 2.0])
mlflow.log_metric('coef', float(model.coef_[0]))
mlflow.sklearn.log_model(model, name='model', pip_requirements=['scikit-learn==0.0.1'])
"""


def test_reproduction_reports_a_model_pin_that_differs(own_repo, store, capsys):
    project = commit_project(
        own_repo,
        'pinned_model',
        {
            'MLproject': 'name: pinned_model\nentry_points:\n  main:\n'
            '    command: python train.py\n',
            'train.py': PINNED_MODEL,
        },
    )
    ref = mlflow_run(str(project), store)
    code, out, err = reproduce(capsys, '--run_id', ref, '--output', 'json')
    assert code == 0, err  # the metric is the same: the pin only informs
    differences = json.loads(out)['differences']
    assert differences['environment_source'] == 'logged_model'
    assert differences['environment'] == [
        {
            'kind': 'package',
            'name': 'scikit-learn',
            'reference': '0.0.1',
            'reproduced': importlib.metadata.version('scikit-learn'),
        }
    ]


@pytest.mark.slow
def test_virtualenv_records_the_projects_environment(
    own_repo, store, capsys, tmp_path, monkeypatch
):
    """MLflow builds the project's virtualenv (pyenv's Python, `python -m
    venv`, nothing to install: offline); that interpreter is described."""
    envs = tmp_path / 'envs'
    monkeypatch.setenv('MLFLOW_ENV_ROOT', str(envs))
    ref = mlflow_run(str(bare_project(own_repo)), store)
    code, out, err = reproduce(
        capsys, '--run_id', ref, '--env-manager', 'virtualenv', '--output', 'json'
    )
    assert code == 0, err
    assert json.loads(out)['source']['env_manager'] == 'virtualenv'
    environment = recorded_environment(json.loads(out)['reproduced_run_id'])
    assert Path(environment['python']['executable']).parent.parent.parent == envs
    assert environment['python']['version'] == platform.python_version()
    assert 'pip' in environment['packages']
    assert 'mlflow' not in environment['packages']
    assert 'scikit-learn' not in environment['packages']


def test_a_failed_reproduction_records_its_environment_too(reference, capsys):
    """The environment that ran a failing project is one place to look for why."""
    code, out, _ = reproduce(
        capsys, '--run_id', reference('failing', fails=True), '--output', 'json'
    )
    assert code == 3
    report = json.loads(out)
    assert report['status'] == 'failed'
    environment = recorded_environment(report['reproduced_run_id'])
    assert environment['packages']['mlflow'] == importlib.metadata.version('mlflow')


# --- an environment compared without a difference is said to be compared --------------
# A comparison that found nothing is not an environment left unknown: JSON,
# Markdown and the run description say which of the two it was.

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

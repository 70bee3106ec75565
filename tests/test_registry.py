"""A reproduction adds no model version to the shared registry, unless asked:
the project registers into a scratch registry that is discarded."""

from __future__ import annotations

import json
import os

import pytest
from helpers import (
    add_project,
    client,
    git,
    recorded_run,
    reproduce,
    start_tool,
)

import reproduce_run
from reproduce_run import (
    Registration,
    Registrations,
)


def versions(name: str) -> list[tuple[str, str]]:
    """(version, run ID) of every version of a model in the shared registry."""
    found = client().search_model_versions(f"name = '{name}'")
    return sorted((str(v.version), v.run_id) for v in found)


def logged_model_tags(run_id: str) -> list[dict[str, str]]:
    c = client()
    experiment_id = c.get_run(run_id).info.experiment_id
    models = c.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert models, f'run {run_id} logged no model'
    return [m.tags for m in models]


# --- pure: what the reports say -----------------------------------------------

DISCARDED = Registration('m', '1', 'r1', discarded=True)
SHARED = Registration('m', '7', 'r1', discarded=False)


@pytest.mark.parametrize(
    ('registrations', 'lines'),
    [
        pytest.param(Registrations(), [], id='nothing-registered'),
        pytest.param(Registrations(kept=True), [], id='kept-but-nothing-registered'),
        pytest.param(
            Registrations(versions=(DISCARDED, Registration('n', '2', 'r1', True))),
            ['Model registrations discarded: m v1, n v2 (--keep-registrations keeps them)'],
            id='discarded',
        ),
        pytest.param(
            Registrations(kept=True, versions=(SHARED,)),
            ['Model registrations kept: m v7'],
            id='kept',
        ),
        pytest.param(
            Registrations(versions=(DISCARDED, SHARED)),
            [
                'Model registrations discarded: m v1 (--keep-registrations keeps them)',
                'Model registrations made in the shared registry: m v7',
            ],
            id='one-bypassed-the-scratch-registry',
        ),
    ],
)
def test_registration_lines(registrations, lines):
    assert reproduce_run.registration_lines(registrations) == lines


@pytest.mark.parametrize(
    ('source', 'model_id'),
    [
        pytest.param('models:/m-8dc4cb5c', 'm-8dc4cb5c', id='logged-model'),
        pytest.param('models:/name/3', None, id='registered-model'),
        pytest.param('runs:/abc/model', None, id='run-artifact'),
        pytest.param(None, None, id='no-source'),
    ],
)
def test_model_id_of_a_version_source(source, model_id):
    assert reproduce_run._model_id(source) == model_id


@pytest.mark.parametrize(
    ('keep', 'user_registry', 'expected'),
    [
        pytest.param(False, None, 'scratch', id='scratch'),
        pytest.param(False, 'http://shared:5000', 'scratch', id='scratch-overrides-the-user'),
        pytest.param(True, None, None, id='kept-default-registry'),
        pytest.param(True, 'http://shared:5000', 'http://shared:5000', id='kept-user-registry'),
        pytest.param(True, 'sqlite:///reg.db', 'sqlite:///{cwd}/reg.db', id='kept-made-absolute'),
    ],
)
def test_project_registry_environ(keep, user_registry, expected, monkeypatch, tmp_path):
    if user_registry:
        monkeypatch.setenv('MLFLOW_REGISTRY_URI', user_registry)
    else:
        monkeypatch.delenv('MLFLOW_REGISTRY_URI', raising=False)
    if expected == 'scratch':
        expected = f'sqlite:///{tmp_path}/scratch/registry.db'
    elif expected:
        expected = expected.format(cwd=tmp_path)  # conftest makes tmp_path the cwd
    environ = reproduce_run.project_registry_environ(str(tmp_path / 'scratch'), keep, os.environ)
    assert environ == {'MLFLOW_REGISTRY_URI': expected}


def test_json_always_has_registrations(capsys, store):
    code, out, _ = reproduce(capsys, '--run_id', 'nosuchrun', '--output', 'json')
    assert (code, json.loads(out)['registrations']) == (2, {'kept': False, 'versions': []})


# --- end to end: real projects, real registries --------------------------------


def test_registrations_do_not_reach_a_tracking_server_and_no_scratch_registry_survives(
    reference, store, mlflow_server, tmp_path
):
    """The tool runs as a process of its own, so that whatever it leaves in
    TMPDIR, even at exit, is seen."""
    assert store == mlflow_server  # the shared registry is a tracking server's
    run_id = reference('registers_model', '-P', 'model_name=isolated')
    before = versions('isolated')
    assert before == [('1', run_id)]  # the reference itself did register
    tmp = tmp_path / 'tmp'
    tmp.mkdir()
    tool = start_tool('--run_id', run_id, '--output', 'json', env={'TMPDIR': str(tmp)})
    out, err = tool.communicate(timeout=400)
    doc = json.loads(out)
    new = doc['reproduced_run_id']
    assert (tool.returncode, doc['status']) == (0, 'equal'), err
    assert 'warning' not in err
    assert versions('isolated') == before
    # There was a scratch registry: it held the registration.
    assert doc['registrations'] == {
        'kept': False,
        'versions': [{'name': 'isolated', 'version': '1', 'run_id': new, 'discarded': True}],
    }
    assert list(tmp.iterdir()) == []
    note = client().get_run(new).data.tags['mlflow.note.content']
    assert (
        '- model registrations discarded: isolated v1 (--keep-registrations keeps them)'
        in note.splitlines()
    )
    # The logged model stays in the tracking store, without a link to a version
    # that does not exist.
    assert all('mlflow.modelVersions' not in tags for tags in logged_model_tags(new))


def test_a_registry_the_user_names_is_not_touched_either(reference, capsys, monkeypatch, tmp_path):
    run_id = reference('registers_model', '-P', 'model_name=kept')
    monkeypatch.setenv('MLFLOW_REGISTRY_URI', f'sqlite:///{tmp_path / "shared-registry.db"}')
    # The reference registered its model in the registry the user names.
    client().create_registered_model('kept')
    client().create_model_version('kept', f'runs:/{run_id}/model', run_id)
    before = versions('kept')
    assert before == [('1', run_id)]
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True'), err
    assert versions('kept') == before
    assert (
        'Model registrations discarded: kept v1 (--keep-registrations keeps them)'
        in out.splitlines()
    )


def test_keep_registrations_lets_them_through(reference, capsys):
    run_id = reference('registers_model', '-P', 'model_name=kept')
    before = versions('kept')
    code, out, err = reproduce(
        capsys, '--run_id', run_id, '--keep-registrations', '--output', 'json'
    )
    doc = json.loads(out)
    new = doc['reproduced_run_id']
    assert code == 0, err
    assert versions('kept') == before + [('2', new)]
    assert doc['registrations'] == {
        'kept': True,
        'versions': [{'name': 'kept', 'version': '2', 'run_id': new, 'discarded': False}],
    }
    # (MLflow writes it twice through a server, once with the version as a string)
    [recorded] = [json.loads(tags['mlflow.modelVersions']) for tags in logged_model_tags(new)]
    assert {(v['name'], str(v['version'])) for v in recorded} == {('kept', '2')}


SELF_NAMED_REGISTRY = {
    'MLproject': 'name: own_registry\nentry_points:\n  main:\n    command: "python train.py"\n',
    'train.py': (
        'import mlflow, mlflow.sklearn\n'
        'from sklearn.dummy import DummyRegressor\n'
        '# The code names its registry itself: no environment variable redirects it.\n'
        'mlflow.set_registry_uri(mlflow.get_tracking_uri())\n'
        "mlflow.log_metric('m', 1.0)\n"
        "mlflow.sklearn.log_model(DummyRegressor().fit([[0]], [0]), name='model',\n"
        "                         registered_model_name='self-named', pip_requirements=[])\n"
    ),
}


def test_a_project_that_names_its_registry_is_reported(own_repo, capsys):
    add_project(own_repo, 'own_registry', SELF_NAMED_REGISTRY)
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    run_id = recorded_run(f'file://{own_repo}#own_registry', commit, metrics={'m': 1.0})
    # What the project's run registered, as it registered it.
    client().create_registered_model('self-named')
    client().create_model_version('self-named', f'runs:/{run_id}/model', run_id)
    code, out, err = reproduce(capsys, '--run_id', run_id, '--output', 'json')
    doc = json.loads(out)
    new = doc['reproduced_run_id']
    assert code == 0, err
    assert versions('self-named') == [('1', run_id), ('2', new)]
    assert doc['registrations'] == {
        'kept': False,
        'versions': [{'name': 'self-named', 'version': '2', 'run_id': new, 'discarded': False}],
    }
    assert (
        f'reproduce_run: warning: run {new} registered self-named v2 in the shared model '
        f'registry although the project was given a scratch one'
    ) in err

"""Resolving what the user named into what runs (issue 21): a run ID prefix,
a source MLflow recorded garbled or on another host, and an environment
manager whose program is missing, each found before any run is created."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCRIPT, git, mlflow_run
from test_reproduce_run import (
    add_project,
    all_run_ids,
    client,
    logged_run,
    recorded_run,
    reproduce,
)

import reproduce_run


def runs_sharing_a_prefix(db: Path, prefix: str, n: int) -> list[str]:
    """n finished runs whose IDs start with prefix.  MLflow picks random IDs,
    and two sharing 8 hex digits take some 77,000 runs to happen on their own;
    so real runs are made, then their IDs rewritten in every table of the store."""
    made = [logged_run({'acc': [0.5]}) for _ in range(n)]
    wanted = [prefix + f'{i:x}'.ljust(32 - len(prefix), '0') for i in range(n)]
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = [c[1] for c in con.execute(f'PRAGMA table_info({table})')]
            for column in {'run_uuid', 'run_id'} & set(columns):
                for old, new in zip(made, wanted, strict=True):
                    con.execute(f'UPDATE {table} SET {column} = ? WHERE {column} = ?', (new, old))
    assert {client().get_run(run_id).info.run_id for run_id in wanted} == set(wanted)
    return wanted


@pytest.fixture
def own_store(tmp_path, monkeypatch, capsys) -> Path:
    """A store of this test's own, for runs whose IDs it rewrites."""
    monkeypatch.setenv('MLFLOW_TRACKING_URI', f'sqlite:///{tmp_path / "own.db"}')
    client().search_experiments()  # made now: MLflow may log that it makes it
    capsys.readouterr()
    return tmp_path / 'own.db'


# --- run ID prefixes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ('given', 'searched'),
    [
        pytest.param('0123abcd', True, id='8-hex-digits'),
        pytest.param('0123ABCD', True, id='upper-case'),
        pytest.param('0123abcd' * 3 + '0123abc', True, id='31-hex-digits'),
        pytest.param('0123abcd' * 4, False, id='full-id'),
        pytest.param('0123abc', False, id='7-digits-too-short'),
        pytest.param('0123abcg', False, id='not-hex'),
        pytest.param('my-run-0123abcd', False, id='another-store-id'),
    ],
)
def test_which_ids_are_prefixes(given, searched):
    assert bool(reproduce_run._RUN_ID_PREFIX_RE.match(given)) is searched


def test_a_unique_prefix_names_the_run(reference, capsys):
    run_id = reference('sklearn_regression')
    code, out, err = reproduce(capsys, '--run_id', run_id[:8], '--dry-run')
    assert code == 0, err
    assert out.splitlines()[0] == f'Reference run:  {run_id}'


def test_compare_to_takes_prefixes_on_both_sides(capsys):
    ref = logged_run({'acc': [0.5, 0.6]})
    other = logged_run({'acc': [0.5, 0.7]})
    code, out, _ = reproduce(capsys, '--run_id', ref[:10], '--compare-to', other[:8].upper())
    assert code == 1
    assert f'Reference run:  {ref}' in out
    assert f'Compared run:   {other}' in out


def test_an_ambiguous_prefix_names_its_runs(own_store, capsys):
    runs = runs_sharing_a_prefix(own_store, '5a5a5a5a', 2)
    code, out, err = reproduce(capsys, '--run_id', '5a5a5a5a')
    assert (code, out) == (2, '')
    assert err == (
        f'reproduce_run: error: run ID prefix 5a5a5a5a is ambiguous: it starts '
        f'{runs[0]}, {runs[1]}; give more digits\n'
    )
    # One digit more, and it is unique.
    code, out, err = reproduce(capsys, '--run_id', runs[1][:9], '--compare-to', runs[0])
    assert (code, out.splitlines()[0]) == (0, f'Reference run:  {runs[1]}'), err


def test_an_ambiguous_prefix_names_a_few_of_many(own_store, capsys):
    runs = runs_sharing_a_prefix(own_store, '6b6b6b6b', 5)
    code, _, err = reproduce(capsys, '--run_id', '6b6b6b6b')
    assert code == 2
    head, named, tail = re.fullmatch(
        r'(reproduce_run: error: run ID prefix 6b6b6b6b is ambiguous: it starts )(.*)'
        r'( and more; give more digits\n)',
        err,
    ).groups()
    assert len(named.split(', ')) == 3 and set(named.split(', ')) < set(runs)


def test_a_prefix_of_no_run_is_not_found(store, capsys):
    before = all_run_ids()
    code, out, err = reproduce(capsys, '--run_id', 'fedcba98', '--output', 'json')
    assert code == 2
    message = f'no run ID starts with fedcba98 at tracking URI {store}'
    assert err == f'reproduce_run: error: {message}\n'
    report = json.loads(out)
    assert (report['status'], report['reference_run_id'], report['message']) == (
        'error',
        'fedcba98',
        message,
    )
    assert all_run_ids() == before


def test_a_prefix_finds_deleted_runs_and_says_so(capsys):
    run_id = logged_run({'acc': [0.5]})
    client().delete_run(run_id)
    code, _, err = reproduce(capsys, '--run_id', run_id[:12])
    assert code == 2
    assert err.startswith(f'reproduce_run: error: run {run_id} is deleted; restore it')


def test_a_batch_resolves_each_prefix_and_fails_only_the_unknown_one(reference, tmp_path, capsys):
    run_id = reference('sklearn_regression')
    runs_file = tmp_path / 'runs.txt'
    runs_file.write_text(f'{run_id[:8]}  # the regression\nfedcba98\n{run_id}\n')
    code, out, err = reproduce(
        capsys, '--runs-file', str(runs_file), '--dry-run', '--output', 'json'
    )
    assert code == 2, err
    reports = json.loads(out)['runs']
    # The prefix and the full ID are the same run: reproduced once.
    assert [(r['reference_run_id'], r['status'], r['model']) for r in reports] == [
        (run_id, 'planned', None),
        ('fedcba98', 'error', None),
    ]
    assert reports[1]['message'].startswith('no run ID starts with fedcba98 at tracking URI')


# --- sources: garbled by MLflow, or a clone that is not here -----------------------


@pytest.fixture
def clone(git_daemon, tmp_path) -> tuple[Path, str]:
    """A clone of the samples from the git daemon: its origin is that remote."""
    url = f'{git_daemon[0]}/samples.git'
    git('clone', '--quiet', url, str(tmp_path / 'clone'), cwd=tmp_path)
    return tmp_path / 'clone', url


def run_from_elsewhere(uri: str, store: str, where: Path, monkeypatch) -> str:
    """`mlflow run URI` from another current folder than the repository."""
    where.mkdir()
    monkeypatch.chdir(where)
    return mlflow_run(uri, store)


@pytest.mark.parametrize(
    ('name', 'expected'),
    [
        pytest.param(
            '/home/me/file:/srv/repo#sub/dir', 'file:///srv/repo#sub/dir', id='garbled-subdir'
        ),
        pytest.param('/home/me/file:/srv/repo', 'file:///srv/repo', id='garbled'),
        pytest.param('/srv/repo/project', '/srv/repo/project', id='a-path'),
        pytest.param('file:///srv/repo#sub', 'file:///srv/repo#sub', id='a-file-uri'),
        pytest.param('https://host/repo.git#sub', 'https://host/repo.git#sub', id='remote'),
    ],
)
def test_ungarbled_source(name, expected):
    assert reproduce_run.ungarbled_source(name) == expected


@pytest.mark.slow
def test_a_run_of_a_file_uri_with_a_subdir_is_reproduced(
    clone, store, tmp_path, monkeypatch, capsys
):
    repo, _ = clone
    elsewhere = tmp_path / 'elsewhere'
    run_id = run_from_elsewhere(f'file://{repo}#sklearn_regression', store, elsewhere, monkeypatch)
    name = client().get_run(run_id).data.tags['mlflow.source.name']
    assert name == f'{elsewhere}/file:{repo}#sklearn_regression'  # as MLflow records it
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True'), err
    assert f'Source:         file://{repo}#sklearn_regression @ ' in out
    assert 'warning' not in err


def test_a_clone_that_is_gone_gives_way_to_the_recorded_remote(
    clone, store, tmp_path, monkeypatch, capsys
):
    repo, url = clone
    run_id = run_from_elsewhere(
        f'file://{repo}#sklearn_regression', store, tmp_path / 'elsewhere', monkeypatch
    )
    assert client().get_run(run_id).data.tags['mlflow.source.git.repoURL'] == url
    shutil.rmtree(repo)
    code, out, err = reproduce(capsys, '--run_id', run_id, '--dry-run')
    assert code == 0, err
    assert err == (
        f'reproduce_run: warning: {repo} is not a git repository here: using the remote the '
        f'run records, {url} (folder sklearn_regression)\n'
    )
    assert f'Source:         {url}#sklearn_regression @ ' in out


def test_a_folder_of_a_clone_that_is_gone_is_found_in_the_remote(
    clone, store, tmp_path, monkeypatch, capsys
):
    """`mlflow run /clone/sklearn_regression` records file:// of the clone's
    top and #sklearn_regression: the folder holds in the remote too."""
    repo, url = clone
    run_id = run_from_elsewhere(
        str(repo / 'sklearn_regression'), store, tmp_path / 'elsewhere', monkeypatch
    )
    name = client().get_run(run_id).data.tags['mlflow.source.name']
    assert name == f'file://{repo}#sklearn_regression'
    shutil.rmtree(repo)
    code, out, err = reproduce(capsys, '--run_id', run_id, '--dry-run')
    assert code == 0, err
    assert err == (
        f'reproduce_run: warning: {repo} is not a git repository here: using the remote the '
        f'run records, {url} (folder sklearn_regression)\n'
    )
    assert f'Source:         {url}#sklearn_regression @ ' in out


def test_uri_still_overrides_a_recorded_source_that_is_gone(
    clone, store, tmp_path, monkeypatch, capsys, samples_repo
):
    repo, _ = clone
    run_id = run_from_elsewhere(
        f'file://{repo}#sklearn_regression', store, tmp_path / 'elsewhere', monkeypatch
    )
    shutil.rmtree(repo)
    uri = f'file://{samples_repo}#sklearn_regression'
    code, out, err = reproduce(capsys, '--run_id', run_id, '--uri', uri, '--dry-run')
    assert (code, err) == (0, '')
    assert f'Source:         {uri} @ ' in out


def test_a_clone_without_the_commit_suggests_the_recorded_remote(
    git_daemon, samples_repo, own_repo, capsys
):
    """A clone that is here but lacks the commit is not replaced: the error
    suggests the remote."""
    url, _ = git_daemon
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    git('commit', '--quiet', '--amend', '-m', 'another commit', cwd=own_repo)
    git('reflog', 'expire', '--expire=now', '--all', cwd=own_repo)
    git('gc', '--quiet', '--prune=now', cwd=own_repo)
    run_id = recorded_run(f'file://{own_repo}#sklearn_regression', commit)
    client().set_tag(run_id, 'mlflow.source.git.repoURL', f'{url}/samples.git')
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err.endswith(
        f"; the run also records its remote: try --uri '{url}/samples.git#sklearn_regression'\n"
    )


# --- environment managers whose program is missing ---------------------------------


@pytest.fixture
def path_without_managers(tmp_path, monkeypatch) -> None:
    """PATH holds git and python, and no uv or conda."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for program in ('git', 'python'):
        found = shutil.which(program) or sys.executable
        os.symlink(found, bin_dir / program)
    monkeypatch.setenv('PATH', str(bin_dir))
    for variable in ('MLFLOW_CONDA_HOME', 'CONDA_EXE'):
        monkeypatch.delenv(variable, raising=False)


UV_MISSING = 'uv is not on the PATH (install it, or use --env-manager virtualenv)'
CONDA_MISSING = 'conda is not on the PATH (install it, or use --env-manager virtualenv)'
CONDA_PROJECT = {
    'MLproject': 'conda_env: conda.yaml\nentry_points:\n  main:\n    command: python -V\n',
    'conda.yaml': 'name: tiny\ndependencies:\n  - python=3.11\n',
}


def conda_run(repo: Path) -> str:
    """A run recorded as `mlflow run --env-manager conda` of a conda project."""
    add_project(repo, 'tiny', CONDA_PROJECT)
    run_id = recorded_run(f'file://{repo}#tiny', git('rev-parse', 'HEAD', cwd=repo))
    client().set_tag(run_id, 'mlflow.project.env', 'conda')
    return run_id


def regression_run(samples_repo: Path) -> str:
    """A run as `mlflow run` records it for the sklearn_regression sample."""
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    return recorded_run(f'file://{samples_repo}#sklearn_regression', commit)


def test_uv_missing_is_said_before_any_run(samples_repo, path_without_managers, capsys):
    run_id = regression_run(samples_repo)
    before = all_run_ids()
    code, out, err = reproduce(capsys, '--run_id', run_id, '--env-manager', 'uv')
    assert (code, out, err) == (2, '', f'reproduce_run: error: {UV_MISSING}\n')
    assert all_run_ids() == before


def test_uv_missing_starts_no_batch(samples_repo, path_without_managers, capsys):
    run_id = regression_run(samples_repo)
    before = all_run_ids()
    code, out, err = reproduce(
        capsys, '--run_id', run_id, '--repeat', '2', '--env-manager', 'uv', '--output', 'json'
    )
    assert code == 2
    assert err == f'reproduce_run: error: {UV_MISSING}\n'
    assert json.loads(out)['message'] == UV_MISSING
    assert all_run_ids() == before


def test_the_recorded_env_manager_is_checked_too(samples_repo, path_without_managers, capsys):
    run_id = regression_run(samples_repo)
    client().set_tag(run_id, 'mlflow.project.env', 'uv')  # as `mlflow run --env-manager uv`
    before = all_run_ids()
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out, err) == (2, '', f'reproduce_run: error: {UV_MISSING}\n')
    assert all_run_ids() == before


def test_conda_missing_is_said_before_any_run(own_repo, path_without_managers, capsys):
    run_id = conda_run(own_repo)
    before = all_run_ids()
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out, err) == (2, '', f'reproduce_run: error: {CONDA_MISSING}\n')
    assert all_run_ids() == before


def test_conda_home_without_conda_is_named(
    own_repo, path_without_managers, tmp_path, monkeypatch, capsys
):
    run_id = conda_run(own_repo)
    monkeypatch.setenv('MLFLOW_CONDA_HOME', str(tmp_path / 'conda'))
    code, _, err = reproduce(capsys, '--run_id', run_id, '--env-manager', 'conda')
    assert code == 2
    assert err == (
        f'reproduce_run: error: conda is not at {tmp_path / "conda" / "bin" / "conda"} '
        '(install it, or use --env-manager virtualenv)\n'
    )


def test_pyenv_missing_for_a_new_virtualenv_is_said_before_any_run(
    samples_repo, path_without_managers, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv('MLFLOW_ENV_ROOT', str(tmp_path / 'envs'))  # no environment made yet
    run_id = regression_run(samples_repo)
    before = all_run_ids()
    code, out, err = reproduce(capsys, '--run_id', run_id, '--env-manager', 'virtualenv')
    message = reproduce_run.PYENV_MISSING
    assert (code, out, err) == (2, '', f'reproduce_run: error: {message}\n')
    assert message.startswith('pyenv is not on the PATH (')
    assert all_run_ids() == before


def test_an_environment_mlflow_made_already_needs_no_pyenv(
    samples_repo, path_without_managers, tmp_path, monkeypatch, capsys
):
    """MLflow reuses the folder of an environment it made, and calls pyenv
    only to make a new one."""
    from mlflow.projects import _project_spec

    monkeypatch.setenv('MLFLOW_ENV_ROOT', str(tmp_path / 'envs'))
    project_dir = str(samples_repo / 'sklearn_regression')
    _, env_dir = reproduce_run._virtualenv_of(_project_spec.load_project(project_dir), project_dir)
    env_dir.mkdir(parents=True)
    run_id = regression_run(samples_repo)
    code, out, err = reproduce(
        capsys, '--run_id', run_id, '--env-manager', 'virtualenv', '--dry-run'
    )
    assert (code, err) == (0, ''), err
    assert 'Entry point:    main (env manager: virtualenv)' in out


def test_missing_program_names_only_what_is_missing(path_without_managers):
    assert reproduce_run.missing_program('uv') == UV_MISSING
    assert reproduce_run.missing_program('local') is None


# --- the name the tool was called by ------------------------------------------------


@pytest.mark.parametrize(
    ('argv0', 'name'),
    [
        pytest.param('/venv/bin/reproduce-run', 'reproduce-run', id='installed-command'),
        pytest.param('/src/reproduce_run.py', 'reproduce_run.py', id='script'),
        pytest.param('reproduce_run.py', 'reproduce_run.py', id='script-here'),
        pytest.param('/venv/bin/pytest', 'reproduce_run', id='called-from-other-code'),
        pytest.param('', 'reproduce_run', id='no-name'),
    ],
)
def test_program_name(argv0, name, monkeypatch):
    monkeypatch.setattr(sys, 'argv', [argv0])
    assert reproduce_run.program_name() == name


def test_usage_and_errors_use_the_name_called_by(monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', ['/venv/bin/reproduce-run'])
    with pytest.raises(SystemExit) as exit_:
        reproduce_run.main(['--help'])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith('usage: reproduce-run [-h] ')
    code, out, err = reproduce(capsys, '--run_id', 'fedcba98')
    assert (code, out) == (2, '')
    assert err.startswith('reproduce-run: error: no run ID starts with fedcba98 at ')


def test_the_script_names_itself(tmp_path):
    proc = subprocess.run(
        (sys.executable, str(SCRIPT), '--run_id', 'a b'),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert (proc.returncode, proc.stdout) == (2, '')
    assert proc.stderr == (
        'reproduce_run.py: error: argument --run_id/--run-id: expected an MLflow run ID '
        "(letters, digits, _ and -), got 'a b' (see --help)\n"
    )

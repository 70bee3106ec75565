"""Resolving what the user named into what runs: a run ID prefix,
a source MLflow recorded garbled or on another host, and an environment
manager whose program is missing, each found before any run is created.
Then fetching the source at the recorded commit without touching the working
copy, and the runs that cannot be reproduced (no git source, deleted, an
MLproject or entry point that does not fit).  A tracking store that is not
there is said so, and never created."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    ECHO_PROJECT,
    SCRIPT,
    add_project,
    all_run_ids,
    client,
    conda_run,
    free_port,
    git,
    logged_run,
    mlflow_run,
    recorded_run,
    reproduce,
    reproductions_of,
    run_of_a_commit_gone_from_the_remote,
    runs_sharing_a_prefix,
)

import reproduce_run

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


UV_MISSING = 'uv is not on the PATH (install it, or use --env-manager virtualenv)'
CONDA_MISSING = 'conda is not on the PATH (install it, or use --env-manager virtualenv)'


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


# --- fetching the source at the recorded commit; runs that cannot be reproduced ---


@pytest.mark.parametrize(
    ('uri', 'expected'),
    [
        pytest.param(
            'https://github.com/o/r.git#python/sklearn',
            ('https://github.com/o/r.git', 'python/sklearn'),
            id='https-subdir',
        ),
        pytest.param('file:///tmp/repo', ('file:///tmp/repo', ''), id='file-no-subdir'),
        pytest.param('/tmp/repo#a/', ('/tmp/repo', 'a'), id='path-trailing-slash'),
    ],
)
def test_split_source_uri(uri, expected):
    assert reproduce_run.split_source_uri(uri) == expected


def test_runs_the_recorded_commit_not_the_working_copy(own_repo, store, capsys):
    run_id = mlflow_run(str(own_repo / 'sklearn_regression'), store)
    script = own_repo / 'sklearn_regression' / 'train.py'
    script.write_text(script.read_text().replace('import', 'raise SystemExit(9)\nimport', 1))
    git('commit', '--quiet', '-am', 'break the sample', cwd=own_repo)
    code, out, _ = reproduce(capsys, '--run_id', run_id)
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True')


def repo_state(repo: Path) -> dict[str, str]:
    return {
        'branch': git('branch', '--show-current', cwd=repo),
        'head': git('rev-parse', 'HEAD', cwd=repo),
        'status': git('status', '--porcelain', '--untracked-files=all', cwd=repo),
        'stash': git('stash', 'list', cwd=repo),
        'remotes': git('remote', '-v', cwd=repo),
        'shallow': git('rev-parse', '--is-shallow-repository', cwd=repo),
        'diff': git('diff', cwd=repo),
        'refs': git('for-each-ref', cwd=repo),
        'config': (repo / '.git' / 'config').read_text(),
    }


def test_working_copy_is_untouched(own_repo, store, capsys):
    run_id = mlflow_run(str(own_repo / 'sklearn_regression'), store)
    git('commit', '--quiet', '--allow-empty', '-m', 'later work', cwd=own_repo)
    (own_repo / 'sklearn_regression' / 'MLproject').write_text('not: [valid')
    (own_repo / 'untracked.txt').write_text('mine')
    git('stash', 'push', '--quiet', '--include-untracked', cwd=own_repo)
    (own_repo / 'README.md').write_text('an uncommitted edit')
    before = repo_state(own_repo)
    code, _, _ = reproduce(capsys, '--run_id', run_id)
    assert code == 0
    assert repo_state(own_repo) == before


def test_remote_source_at_a_commit_that_is_no_longer_a_tip(git_daemon, store, tmp_path, capsys):
    url, base = git_daemon
    work = tmp_path / 'work'
    git('clone', '--quiet', f'{url}/samples.git', str(work), cwd=tmp_path)
    commit = git('rev-parse', 'HEAD', cwd=work)
    run_id = mlflow_run(f'{url}/samples.git#sklearn_regression', store, '--version', commit)
    git(
        '-c',
        'user.email=t@e',
        '-c',
        'user.name=t',
        'commit',
        '--quiet',
        '--allow-empty',
        '-m',
        'newer',
        cwd=work,
    )
    git('push', '--quiet', 'origin', 'HEAD:main', cwd=work)
    assert git('ls-remote', f'{url}/samples.git', cwd=work).split()[0] != commit
    code, out, _ = reproduce(capsys, '--run_id', run_id)
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True')
    assert f'Source:         {url}/samples.git#sklearn_regression @ {commit}' in out


def test_seed_form_with_uri_still_works(git_daemon, reference, capsys):
    url, _ = git_daemon
    code, out, _ = reproduce(
        capsys,
        '--uri',
        f'{url}/samples.git#sklearn_regression',
        '--run_id',
        reference('sklearn_regression'),
    )
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True')


def test_run_without_git_source_is_refused(capsys):
    c = client()
    run = c.create_run(c.get_experiment_by_name('Default').experiment_id)
    c.set_terminated(run.info.run_id)
    code, out, err = reproduce(capsys, '--run_id', run.info.run_id)
    assert code == 2
    assert out == ''
    assert err.count('\n') == 1
    assert 'mlflow.source.type' in err and '--uri' in err


def test_unknown_run_exits_2(capsys, store):
    code, out, err = reproduce(capsys, '--run_id', 'f' * 32)
    assert (code, out) == (2, '')
    assert err == f'reproduce_run: error: run {"f" * 32} not found at tracking URI {store}\n'


def test_a_7_digit_prefix_is_told_that_a_prefix_needs_8(reference, store, capsys):
    """git's short hash has 7 digits: too short to be taken as a prefix."""
    run_id = reference('sklearn_regression')
    code, out, err = reproduce(capsys, '--run_id', run_id[:7])
    assert (code, out) == (2, '')
    assert err == (
        f'reproduce_run: error: run {run_id[:7]} not found at tracking URI {store} '
        '(a run ID prefix needs 8 or more hex digits)\n'
    )


def test_unreachable_git_remote_names_uri_and_commit(reference, capsys):
    run_id = reference('sklearn_regression')
    commit = client().get_run(run_id).data.tags['mlflow.source.git.commit']
    uri = f'git://127.0.0.1:{free_port()}/samples.git'
    code, out, err = reproduce(capsys, '--run_id', run_id, '--uri', f'{uri}#sklearn_regression')
    assert (code, out) == (2, '')
    assert err.startswith(
        f'reproduce_run: error: cannot fetch {uri}#sklearn_regression at {commit}: '
    )
    assert err.count('\n') == 1


def test_commit_gone_from_the_remote(git_daemon, samples_repo, capsys, tmp_path):
    run_id, gone, remote = run_of_a_commit_gone_from_the_remote(git_daemon, samples_repo, tmp_path)
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err == (
        f'reproduce_run: error: commit {gone} is not available from '
        f'{remote} (history rewritten, or a typo?)\n'
    )


def test_deleted_run_is_refused(capsys):
    run_id = logged_run({'a': [1.0]})
    client().delete_run(run_id)
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err == (
        f'reproduce_run: error: run {run_id} is deleted; restore it with '
        f'`mlflow runs restore --run-id {run_id}` to reproduce it\n'
    )


def test_run_in_a_deleted_experiment_is_refused(capsys, tmp_path):
    c = client()
    experiment_id = c.create_experiment(f'doomed-{tmp_path.name}')
    run_id = c.create_run(experiment_id).info.run_id
    c.set_terminated(run_id)
    c.delete_experiment(experiment_id)
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert 'is in deleted experiment' in err and 'mlflow experiments restore' in err


def test_entry_point_missing_at_that_commit(samples_repo, capsys):
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(
        f'file://{samples_repo}#sklearn_regression', commit, entry_point='evaluate'
    )
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err.startswith(
        f'reproduce_run: error: the MLproject at commit {commit[:12]} cannot '
        f"be used: Could not find evaluate among entry points ['main']"
    )


def test_mlproject_that_does_not_parse(own_repo, capsys):
    (own_repo / 'sklearn_regression' / 'MLproject').write_text('entry_points: [main\n')
    git('commit', '--quiet', '-am', 'break the MLproject', cwd=own_repo)
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    run_id = recorded_run(f'file://{own_repo}#sklearn_regression', commit)
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err.startswith(
        f'reproduce_run: error: the MLproject at commit {commit[:12]} cannot be used: '
    )
    assert err.count('\n') == 1


def test_declared_param_without_default_missing_from_the_run(own_repo, capsys):
    add_project(own_repo, 'echo', ECHO_PROJECT)
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    run_id = recorded_run(f'file://{own_repo}#echo', commit, {'other': '1'})
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err == (
        "reproduce_run: error: entry point 'main' cannot run with the reference "
        "run's params: No value given for missing parameters: 'msg'\n"
    )
    assert reproductions_of(run_id) == []


# --- no tracking store is ever created by the tool ------------------------------------


def run_tool(cwd: Path, uri: str | None, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != 'MLFLOW_TRACKING_URI'}
    if uri is not None:
        env['MLFLOW_TRACKING_URI'] = uri
    return subprocess.run(
        (sys.executable, str(SCRIPT), '--run_id', 'a' * 32, *argv),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_no_store_is_created_without_tracking_uri(tmp_path):
    folder = tmp_path / 'empty'
    folder.mkdir()
    proc = run_tool(folder, None)
    assert (proc.returncode, proc.stdout) == (2, '')
    assert proc.stderr == (
        f'reproduce_run.py: error: no tracking store found: MLFLOW_TRACKING_URI is not set and '
        f'the current folder {folder} has no mlflow.db (nor mlruns); set MLFLOW_TRACKING_URI '
        f'to the store that holds the run (for example sqlite:////path/to/mlflow.db or '
        f'http://host:5000)\n'
    )
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    ('uri', 'missing'),
    [
        pytest.param('sqlite:///missing.db', 'missing.db', id='relative-sqlite'),
        pytest.param('sqlite:///{tmp}/missing.db', '{tmp}/missing.db', id='absolute-sqlite'),
        pytest.param('file://{tmp}/mlruns', '{tmp}/mlruns', id='file-uri'),
        pytest.param('mlruns', 'mlruns', id='plain-path'),
    ],
)
def test_no_store_is_created_for_a_missing_local_store(uri, missing, tmp_path):
    folder = tmp_path / 'empty'
    folder.mkdir()
    uri, missing = uri.format(tmp=folder), missing.format(tmp=folder)
    proc = run_tool(folder, uri, '--output', 'json')
    assert proc.returncode == 2
    assert proc.stderr == (
        f'reproduce_run.py: error: no tracking store found: MLFLOW_TRACKING_URI is {uri}, but '
        f'{folder / missing} does not exist; set MLFLOW_TRACKING_URI to the store that holds '
        f'the run (for example sqlite:////path/to/mlflow.db or http://host:5000)\n'
    )
    assert json.loads(proc.stdout)['status'] == 'error'
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    ('uri', 'make', 'ok'),
    [
        pytest.param(None, (), False, id='unset-empty-folder'),
        pytest.param(None, ('mlflow.db',), True, id='unset-mlflow-db'),
        pytest.param(None, ('mlruns/0/meta.yaml',), True, id='unset-mlruns-with-experiment'),
        pytest.param(None, ('mlruns/.trash/x',), False, id='unset-mlruns-without-experiment'),
        pytest.param('sqlite:///here.db', ('here.db',), True, id='sqlite-present'),
        pytest.param('sqlite:///here.db', (), False, id='sqlite-missing'),
        pytest.param('sqlite:///here%20db.db', ('here db.db',), True, id='sqlite-quoted'),
        pytest.param('sqlite://', (), True, id='sqlite-in-memory'),
        pytest.param('file:///{tmp}/store', ('store/x',), True, id='file-uri-present'),
        pytest.param('store', (), False, id='plain-path-missing'),
        pytest.param('http://127.0.0.1:5000', (), True, id='server-is-not-checked-here'),
        pytest.param('postgresql://u:p@db/mlflow', (), True, id='database-server'),
        pytest.param('databricks', (), True, id='databricks-workspace'),
    ],
)
def test_check_tracking_store(uri, make, ok, tmp_path, monkeypatch):
    folder = tmp_path / 'here'
    folder.mkdir()
    monkeypatch.chdir(folder)
    for name in make:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text('')
    uri = uri and uri.format(tmp=folder)
    if ok:
        reproduce_run.check_tracking_store(uri)
    else:
        with pytest.raises(reproduce_run.ReproduceError, match='no tracking store found'):
            reproduce_run.check_tracking_store(uri)

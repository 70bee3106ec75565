"""A commit value that git would read as an option never reaches git.

The recorded commit, --version, a --bisect target and the recorded branch come
from the tracking store or the command line.  `--upload-pack=CMD` makes
`git fetch` run CMD through the shell on a local or file:// source; such a
value is refused with exit 2 and one line before any git process starts, and
every git call that takes such a value ends its options first anyway."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import (
    client,
    git,
    recorded_run,
    reproduce,
    tagged_run,
)

import reproduce_run
from reproduce_run import ReproduceError, Source, commit_refusal

PAYLOADS = {
    'upload-pack': '--upload-pack=touch {marker};false',
    'ssh-command': '--config=core.sshCommand=touch {marker}',
}
TRANSPORTS = ('path', 'file', 'git', 'mirror')


@pytest.mark.parametrize(
    ('value', 'refused'),
    [
        ('0e0c9fb', False),  # git's short hash
        ('0e0c9fbd1f2a3b4c5d6e7f8091a2b3c4d5e6f708', False),
        ('main', False),
        ('release/1.2', False),
        ('v1.0.0-rc1', False),
        ('feature-x', False),
        ('', True),
        ('-', True),
        ('--upload-pack=touch /tmp/x;false', True),
        ('--config=core.sshCommand=touch /tmp/x', True),
        ('-oProxyCommand=x', True),
        ('a b', True),
        ('a\nb', True),
        ('a\x00b', True),
        ('a\x1b[31m', True),
        ('a..b', True),
        ('a~1', True),
        ('a^', True),
        ('a:b', True),
        ('a?', True),
        ('a*', True),
        ('a[b', True),
        ('a\\b', True),
        ('a@{1}', True),
        ('@', True),
        ('.hidden', True),
        ('a/.hidden', True),
        ('a.lock', True),
        ('a.lock/b', True),
        ('/a', True),
        ('a/', True),
        ('a//b', True),
        ('a.', True),
        ('a\x7f', True),
        ('abcdef1\n', True),  # '$' would take the newline
        ('0e0c9fbd1f2a3b4c5d6e7f8091a2b3c4d5e6f708\n', True),
    ],
)
def test_commit_value_is_a_commit_id_or_a_ref_name_not_starting_with_a_dash(value, refused):
    assert (commit_refusal(value) is not None) is refused
    if value and not value.startswith('-') and '\x00' not in value:  # git's own rule agrees
        check = subprocess.run(
            ('git', 'check-ref-format', '--allow-onelevel', value), capture_output=True
        )
        assert (check.returncode != 0) is refused


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / 'MARKER'


@pytest.fixture
def git_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `git` first on PATH that notes each call, then runs the real git."""
    real = subprocess.run(('which', 'git'), capture_output=True, text=True).stdout.strip()
    folder, log = tmp_path / 'bin', tmp_path / 'git-calls'
    folder.mkdir()
    (folder / 'git').write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {real} "$@"\n')
    (folder / 'git').chmod(0o755)
    monkeypatch.setenv('PATH', f'{folder}{os.pathsep}{os.environ["PATH"]}')
    return log


def source_uri(transport: str, samples_repo: Path, git_daemon: tuple[str, Path]) -> str:
    """The samples over a path, file://, git:// (the daemon's bare clone, also
    a path on this host: a mirror)."""
    return {
        'path': str(samples_repo),
        'file': f'file://{samples_repo}',
        'git': f'{git_daemon[0]}/samples.git',
        'mirror': str(git_daemon[1] / 'samples.git'),
    }[transport]


def script_run(uri: str, commit: str, branch: str | None = None) -> str:
    """A script run as MLflow records it (no `mlflow run`), from `uri`."""
    tags = {
        'mlflow.source.name': 'tiny/train.py',
        'mlflow.source.type': 'LOCAL',
        'mlflow.source.git.commit': commit,
        'mlflow.source.git.repoURL': uri,
    }
    if branch is not None:
        tags['mlflow.source.git.branch'] = branch
    return tagged_run(tags)


def assert_refused(code: int, out: str, err: str, marker: Path, calls: Path) -> None:
    assert code == 2, (out, err)
    assert 'is refused' in err
    assert 'Traceback' not in err
    assert not marker.exists()
    assert not calls.exists(), calls.read_text()  # no git process started


@pytest.mark.parametrize('transport', TRANSPORTS)
@pytest.mark.parametrize('payload', PAYLOADS)
@pytest.mark.parametrize('dry_run', [True, False], ids=['dry-run', 'run'])
def test_a_recorded_commit_that_is_an_option_is_refused_before_git(
    transport, payload, dry_run, samples_repo, git_daemon, marker, git_calls, capsys
):
    value = PAYLOADS[payload].format(marker=marker)
    uri = source_uri(transport, samples_repo, git_daemon)
    run_id = recorded_run(uri, value)
    code, out, err = reproduce(capsys, '--run_id', run_id, *(['--dry-run'] * dry_run))
    assert_refused(code, out, err, marker, git_calls)
    assert len(err.strip().splitlines()) == 1
    assert f'run {run_id} cannot be reproduced: its recorded commit' in err
    assert not client().search_runs(
        [client().get_run(run_id).info.experiment_id],
        f"tags.reproduce.reference_run_id = '{run_id}'",
    )


@pytest.mark.parametrize('transport', TRANSPORTS)
@pytest.mark.parametrize('payload', PAYLOADS)
def test_a_batch_skips_a_run_whose_recorded_commit_is_an_option(
    transport, payload, samples_repo, git_daemon, marker, git_calls, capsys, tmp_path
):
    value = PAYLOADS[payload].format(marker=marker)
    uri = source_uri(transport, samples_repo, git_daemon)
    experiment = f'injection-{transport}-{payload}'
    experiment_id = client().create_experiment(
        experiment, artifact_location=str(tmp_path / 'artifacts')
    )
    run_id = tagged_run(
        {
            'mlflow.source.name': uri,
            'mlflow.source.type': 'PROJECT',
            'mlflow.source.git.commit': value,
            'mlflow.project.entryPoint': 'main',
        },
        experiment_id=experiment_id,
    )
    code, out, err = reproduce(
        capsys, '--from-experiment', experiment, '--dry-run', '--output', 'json'
    )
    assert not marker.exists()
    assert not git_calls.exists()
    assert code == 0, err  # nothing left to reproduce is not an error
    document = json.loads(out)
    assert [s['run_id'] for s in document['skipped']] == [run_id]
    assert 'is refused: it starts with "-"' in document['skipped'][0]['reason']


@pytest.mark.parametrize('payload', PAYLOADS)
@pytest.mark.parametrize(
    ('place', 'dry_run'),
    [('--version', True), ('--version', False), ('--bisect', False)],
)
def test_an_option_given_as_a_commit_on_the_command_line_is_refused(
    payload, place, dry_run, samples_repo, marker, git_calls, capsys
):
    run_id = recorded_run(str(samples_repo), git('rev-parse', 'HEAD', cwd=samples_repo))
    git_calls.unlink()  # the test's own call
    value = PAYLOADS[payload].format(marker=marker)
    with pytest.raises(SystemExit) as exit_:
        reproduce(capsys, '--run_id', run_id, f'{place}={value}', *(['--dry-run'] * dry_run))
    _, err = capsys.readouterr()
    assert_refused(exit_.value.code, '', err, marker, git_calls)
    assert f'argument {place}: ' in err


@pytest.mark.parametrize('transport', TRANSPORTS)
@pytest.mark.parametrize('payload', PAYLOADS)
def test_a_recorded_branch_that_is_an_option_is_refused_before_bisecting(
    transport, payload, samples_repo, git_daemon, marker, git_calls, capsys
):
    uri = source_uri(transport, samples_repo, git_daemon)
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    git_calls.unlink()  # the test's own call
    run_id = script_run(uri, commit, branch=PAYLOADS[payload].format(marker=marker))
    code, out, err = reproduce(capsys, '--run_id', run_id, '--bisect')
    assert_refused(code, out, err, marker, git_calls)
    assert 'the recorded branch' in err


@pytest.mark.parametrize('transport', TRANSPORTS)
@pytest.mark.parametrize('payload', PAYLOADS)
def test_the_script_run_with_a_recorded_commit_that_is_an_option_is_refused(
    transport, payload, samples_repo, git_daemon, marker, git_calls, capsys
):
    uri = source_uri(transport, samples_repo, git_daemon)
    run_id = script_run(uri, PAYLOADS[payload].format(marker=marker))
    code, out, err = reproduce(capsys, '--run_id', run_id, '--dry-run')
    assert_refused(code, out, err, marker, git_calls)


# Below the check: git itself never takes the value for an option, should a
# value ever get past it.


def fetch_checkout(source: Source, dest: Path) -> None:
    with pytest.raises(ReproduceError):
        reproduce_run.fetch_source(source, str(dest))


def fetch_bisection_history(source: Source, dest: Path) -> None:
    private = reproduce_run.fetch_history(source, str(dest))
    assert reproduce_run._commit_in(private.repo, [source.version]) is None


@pytest.mark.parametrize('fetch', [fetch_checkout, fetch_bisection_history])
@pytest.mark.parametrize('transport', TRANSPORTS)
@pytest.mark.parametrize('payload', PAYLOADS)
def test_git_fetch_takes_a_commit_that_looks_like_an_option_as_a_ref(
    fetch, transport, payload, samples_repo, git_daemon, marker, tmp_path
):
    uri = source_uri(transport, samples_repo, git_daemon)
    fetch(Source(uri, '', PAYLOADS[payload].format(marker=marker)), tmp_path / 'git')
    assert not marker.exists()


# The environment the tool was started in: git never acts on the user's
# repository, and never through a transport that runs a command.


def repository_state(repo: Path) -> tuple[str, str, str]:
    return (
        git('symbolic-ref', 'HEAD', cwd=repo),
        git('rev-parse', 'HEAD', cwd=repo),
        git('status', '--porcelain', '--ignored', cwd=repo),
    )


def test_an_inherited_git_dir_leaves_the_users_repository_alone(
    own_repo, samples_repo, capsys, monkeypatch
):
    """As in a git hook, which runs with GIT_DIR and GIT_WORK_TREE set."""
    git('checkout', '--quiet', '-b', 'mywork', cwd=own_repo)
    before = repository_state(own_repo)
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(f'file://{samples_repo}#sklearn_regression', commit)
    monkeypatch.setenv('GIT_DIR', str(own_repo / '.git'))
    monkeypatch.setenv('GIT_WORK_TREE', str(own_repo))
    monkeypatch.setenv('GIT_INDEX_FILE', str(own_repo / '.git' / 'index'))
    code, out, err = reproduce(capsys, '--run_id', run_id, '--dry-run')
    assert code == 0, err
    monkeypatch.delenv('GIT_DIR')
    monkeypatch.delenv('GIT_WORK_TREE')
    monkeypatch.delenv('GIT_INDEX_FILE')
    assert repository_state(own_repo) == before


def test_a_source_on_the_ext_transport_runs_no_command(marker, capsys, monkeypatch):
    """Even where the environment allows ext:: (git forbids it by default)."""
    monkeypatch.setenv('GIT_CONFIG_COUNT', '1')
    monkeypatch.setenv('GIT_CONFIG_KEY_0', 'protocol.ext.allow')
    monkeypatch.setenv('GIT_CONFIG_VALUE_0', 'always')
    run_id = recorded_run(f'ext::sh -c touch% {marker} x://y', 'a' * 40)
    code, out, err = reproduce(capsys, '--run_id', run_id, '--dry-run')
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()

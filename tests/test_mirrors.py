"""Bare repositories, as mirrors are kept on shared disks: a
reference that recorded one, and --uri naming one, over a path and over
file://, with #subdir, and at a commit that only the mirror still holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import (
    QUIET,
    add_project,
    client,
    git,
    recorded_run,
    reproduce,
    reproductions_of,
)


def mirror_of(repo: Path, where: Path) -> Path:
    git('clone', '--quiet', '--mirror', str(repo), str(where), cwd=repo.parent)
    return where


def mirror_state(mirror: Path) -> dict[str, str]:
    """What a read-only fetch must leave as it was."""
    return {
        'refs': git('for-each-ref', cwd=mirror),
        'config': (mirror / 'config').read_text(),
        'files': '\n'.join(sorted(str(p.relative_to(mirror)) for p in mirror.rglob('*'))),
        'shallow': git('rev-parse', '--is-shallow-repository', cwd=mirror),
    }


def spelled(mirror: Path, form: str) -> str:
    return f'file://{mirror}' if form == 'file' else str(mirror)


FORMS = [pytest.param('path', id='path'), pytest.param('file', id='file-url')]


@pytest.mark.parametrize('form', FORMS)
def test_a_reference_that_recorded_a_bare_mirror_is_reproduced(own_repo, tmp_path, capsys, form):
    add_project(own_repo, 'quiet', QUIET)
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    mirror = mirror_of(own_repo, tmp_path / 'project.git')
    run_id = recorded_run(f'{spelled(mirror, form)}#quiet', commit)
    before = mirror_state(mirror)
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert code == 0, err
    assert out.splitlines()[-1] == 'Runs equal: True'
    assert f'{spelled(mirror, form)}#quiet @ {commit}' in out
    [new] = reproductions_of(run_id)
    assert new.data.tags['mlflow.source.git.commit'] == commit
    assert mirror_state(mirror) == before


@pytest.mark.parametrize('form', FORMS)
def test_uri_names_a_mirror_holding_a_commit_found_nowhere_else(own_repo, tmp_path, capsys, form):
    # The commit is pushed to the mirror from a clone that is then removed,
    # and a later push makes it no longer a tip: only the mirror's history has it.
    mirror = mirror_of(own_repo, tmp_path / 'project.git')
    work = tmp_path / 'work'
    git('clone', '--quiet', str(mirror), str(work), cwd=tmp_path)
    git('config', 'user.email', 'tests@example.invalid', cwd=work)
    git('config', 'user.name', 'tests', cwd=work)
    add_project(work, 'quiet', QUIET)
    commit = git('rev-parse', 'HEAD', cwd=work)
    git('commit', '--quiet', '--allow-empty', '-m', 'later', cwd=work)
    git('push', '--quiet', 'origin', 'HEAD:main', cwd=work)
    run_id = recorded_run(f'file://{own_repo}#quiet', commit)  # the repository it ran from
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert code == 2
    assert f'commit {commit} is not available from file://{own_repo}' in err
    before = mirror_state(mirror)
    code, out, err = reproduce(
        capsys, '--run_id', run_id, '--uri', f'{spelled(mirror, form)}#quiet'
    )
    assert code == 0, err
    assert out.splitlines()[-1] == 'Runs equal: True'
    assert f'{spelled(mirror, form)}#quiet @ {commit}' in out
    assert mirror_state(mirror) == before
    assert client().get_run(run_id).info.status == 'FINISHED'  # the reference is only read


def test_a_missing_folder_of_a_bare_mirror_is_named(own_repo, tmp_path, capsys):
    mirror = mirror_of(own_repo, tmp_path / 'project.git')
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    run_id = recorded_run(f'{mirror}#no_such_folder', commit)
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err == (
        f"reproduce_run: error: folder 'no_such_folder' does not exist at commit "
        f'{commit[:12]} of {mirror}\n'
    )

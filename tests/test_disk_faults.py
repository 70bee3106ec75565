"""A full disk under the tool (issue 19, defect rows 1 and 2): a real small
file system (tmpfs) mounted as TMPDIR, filled by the checkout or by the
project's output; the tool says so in one line and exits 2."""

from __future__ import annotations

import contextlib
import json
import os
import random
import string
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import git
from test_faults import tool
from test_reproduce_run import add_project, client, recorded_run, reproductions_of


@pytest.fixture
def small_tmpdir(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system of its own, to be filled: tmpfs, mounted by the test
    (the tests run as root here; without the right to mount they fail)."""
    where = tmp_path / 'small-tmpdir'
    where.mkdir()
    subprocess.run(('mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(where)), check=True)
    try:
        yield where
    finally:
        subprocess.run(('umount', '--lazy', str(where)), check=False)


QUIET = {
    'MLproject': 'entry_points:\n  main:\n    command: python quiet.py\n',
    'quiet.py': 'print("quiet project done")\n',
}


def with_data(repo: Path, name: str, data: str) -> str:
    """A run of a quiet project that carries a data file; the run also records
    a remote (which the message must not suggest: the remote is not the trouble)."""
    add_project(repo, name, {**QUIET, 'data.txt': data})
    commit = git('rev-parse', 'HEAD', cwd=repo)
    run_id = recorded_run(f'file://{repo}#{name}', commit)
    client().set_tag(run_id, 'mlflow.source.git.repoURL', 'https://git.example.invalid/p.git')
    return run_id


def incompressible(size: int) -> str:
    rng = random.Random(19)
    return ''.join(rng.choices(string.ascii_letters + string.digits, k=size))


def compressible(size: int) -> str:
    return ('a line of text that compresses well\n' * (size // 36 + 1))[:size]


@pytest.mark.parametrize(
    ('data', 'git_says'),
    [
        pytest.param(incompressible(3_000_000), 'git fetch: fatal: ', id='during-fetch'),
        pytest.param(compressible(3_000_000), 'git checkout: fatal: ', id='during-checkout'),
    ],
)
def test_a_full_tmpdir_is_named_with_gits_own_error(own_repo, small_tmpdir, store, data, git_says):
    run_id = with_data(own_repo, 'data', data)
    proc = tool('--run_id', run_id, env={'TMPDIR': str(small_tmpdir), 'MLFLOW_TRACKING_URI': store})
    out, err = proc.communicate(timeout=300)
    assert (proc.returncode, out) == (2, ''), err
    [line] = err.splitlines()
    assert line.startswith(
        f'reproduce_run: error: no space left on device in TMPDIR={small_tmpdir}: {git_says}'
    )
    assert 'try --uri' not in err and 'CalledProcessError' not in err
    assert reproductions_of(run_id) == []
    assert os.listdir(small_tmpdir) == []  # nothing of the tool's is left there


def test_a_full_tmpdir_in_a_batch_gives_one_line_per_run_without_errno_lists(
    own_repo, small_tmpdir, store
):
    # The checkout fits once, its copy for each reproduction does not.
    first = with_data(own_repo, 'data', compressible(600_000))
    second = recorded_run(f'file://{own_repo}#data', git('rev-parse', 'HEAD', cwd=own_repo))
    proc = tool(
        '--run_id',
        first,
        second,
        '--output',
        'json',
        env={'TMPDIR': str(small_tmpdir), 'MLFLOW_TRACKING_URI': store},
    )
    out, err = proc.communicate(timeout=300)
    doc = json.loads(out)
    assert proc.returncode == 2, err
    assert [r['status'] for r in doc['runs']] == ['error', 'error']
    for entry in doc['runs']:
        assert entry['message'].startswith(
            f'no space left on device in TMPDIR={small_tmpdir}: copying the checkout of '
            f'file://{own_repo}#data'
        )
    assert '[Errno' not in out and "[('" not in out + err
    assert 'try --uri' not in out + err
    with contextlib.suppress(FileNotFoundError):
        assert os.listdir(small_tmpdir) == []

"""A full disk under the tool: a real small
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
from helpers import (
    add_project,
    client,
    git,
    recorded_run,
    reproductions_of,
    start_tool,
)


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
    proc = start_tool(
        '--run_id', run_id, env={'TMPDIR': str(small_tmpdir), 'MLFLOW_TRACKING_URI': store}
    )
    out, err = proc.communicate(timeout=300)
    assert (proc.returncode, out) == (2, ''), err
    [line] = err.splitlines()
    assert line.startswith(
        f'reproduce_run.py: error: no space left on device in TMPDIR={small_tmpdir}: {git_says}'
    )
    assert 'try --uri' not in err and 'CalledProcessError' not in err
    assert reproductions_of(run_id) == []
    assert os.listdir(small_tmpdir) == []  # nothing of the tool's is left there


def test_a_full_tmpdir_in_a_batch_gives_one_line_per_run_without_errno_lists(
    own_repo, small_tmpdir, store
):
    # The checkout fits once, its copy for each reproduction does not.
    first = with_data(own_repo, 'data', compressible(400_000))
    second = recorded_run(f'file://{own_repo}#data', git('rev-parse', 'HEAD', cwd=own_repo))
    proc = start_tool(
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


CHATTY = {
    'MLproject': 'entry_points:\n  main:\n    parameters:\n'
    '      fail: {type: string, default: "no"}\n'
    '    command: python chatty.py {fail}\n',
    'chatty.py': (
        'import sys\n'
        'for i in range(30000):\n'
        '    print(f"line {i:06d} " + "x" * 90)\n'
        'if sys.argv[1] == "yes":\n'
        '    raise SystemExit("the project gives up on its own")\n'
    ),
}


@pytest.mark.parametrize(
    ('fail', 'code', 'status', 'run_status'),
    [
        pytest.param('no', 2, 'error', 'FINISHED', id='project-succeeds'),
        pytest.param('yes', 3, 'failed', 'FAILED', id='project-fails-on-its-own'),
    ],
)
def test_an_output_log_that_cannot_be_written_is_the_tools_failure_not_the_projects(
    own_repo, small_tmpdir, store, fail, code, status, run_status
):
    add_project(own_repo, 'chatty', CHATTY)
    run_id = recorded_run(
        f'file://{own_repo}#chatty', git('rev-parse', 'HEAD', cwd=own_repo), {'fail': fail}
    )
    proc = start_tool(
        '--run_id',
        run_id,
        '--output',
        'json',
        env={'TMPDIR': str(small_tmpdir), 'MLFLOW_TRACKING_URI': store},
    )
    out, err = proc.communicate(timeout=300)
    doc = json.loads(out)
    [new] = reproductions_of(run_id)
    assert (proc.returncode, doc['status']) == (code, status), err[-2000:]
    assert doc['reproduced_run_id'] == new.info.run_id
    # The pipe was drained to its end: the project printed every line and
    # ended on its own terms (FINISHED: exit status 0).
    assert new.info.status == run_status
    assert 'line 029999 ' in err
    assert 'Traceback' not in err and 'Broken pipe' not in err
    lost = (
        "the project's output from line {} on is missing from its output.log: no space "
        f'left on device in TMPDIR={small_tmpdir} ({30001 if fail == "yes" else 30000} lines '
        'in all)'
    )
    message = doc['message']
    first_missing = int(message.split('output from line ')[1].split()[0])
    assert 1 < first_missing < 30000
    assert message.endswith(lost.format(first_missing))
    if fail == 'yes':
        assert 'its last error: the project gives up on its own;' in message
    else:
        assert message.startswith(f'the reproduced run {new.info.run_id} ran to its end, but ')
    assert err.splitlines()[-1] == f'reproduce_run.py: error: {message}'
    assert client().get_run(new.info.run_id).data.tags['reproduce.status'] == status


@pytest.mark.parametrize(
    ('stderr', 'ours'),
    [
        pytest.param(
            'fatal: unable to write loose object file: No space left on device\n'
            'fatal: unpack-objects failed',
            True,
            id='fetch',
        ),
        pytest.param(
            "fatal: sha1 file '/t/.git/index.lock' write error. Out of diskspace",
            True,
            id='checkout',
        ),
        pytest.param('error: Disk quota exceeded', True, id='quota'),
        pytest.param(
            'remote: fatal: No space left on device\nfatal: early EOF', False, id='remote-disk'
        ),
        pytest.param('fatal: repository not found', False, id='other-failure'),
    ],
)
def test_a_full_disk_is_told_from_gits_own_lines_not_the_remotes(stderr, ours):
    from reproduce_run import _NO_SPACE_RE

    assert bool(_NO_SPACE_RE.search(stderr)) == ours

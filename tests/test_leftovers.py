"""What the start-up clean-up closed is said by the group that follows it:
a batch's and a bisection's JSON, table and parent run (its summary artifact
and description) list the leftovers; and a bisection killed with `kill -9`
is cleaned by the next invocation.

Real parts only, as in test_crash: the tool runs as a process, the dead
tool's runs are real runs of a real store, its projects real processes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import mlflow_run
from test_batch import batch_runs
from test_bisect import MLPROJECT, add_commits, build_repo
from test_crash import (  # noqa: F401 (tracking: a fixture, sqlite then a real server)
    HOST,
    assert_cleaned,
    experiment,
    kill_tool_mid_run,
    run_tool,
    running_run,
    start_time,
    tool_env,
    tracking,
)
from test_reproduce_run import client

from reproduce_run import TOOL_DIED


def dead_owner() -> str:
    """The reproduce.owner of a tool that ran on this host and is gone."""
    proc = subprocess.Popen(('sleep', '300'))
    owner = f'{HOST}:{proc.pid}:{start_time(proc.pid)}'
    proc.kill()
    proc.wait()
    return owner


def artifact(run_id: str, path: str, where: Path) -> dict:
    return json.loads(Path(client().download_artifacts(run_id, path, str(where))).read_text())


def test_a_batch_parent_run_lists_the_leftovers_closed_before_it(reference, tmp_path):
    name, experiment_id = experiment()
    owner = dead_owner()
    left = running_run(experiment_id, owner)
    fast = [reference('slow', '-P', 'seconds=1'), reference('slow', '-P', 'seconds=2')]

    result = run_tool(
        '--run_id',
        *fast,
        '--experiment-name',
        name,
        '--output',
        'json',
        env=tool_env(tmp_path / 'tmp'),
    )

    assert result.returncode == 0, result.stderr
    closed = client().get_run(left)
    assert (closed.info.status, closed.data.tags['reproduce.status']) == ('KILLED', 'killed')
    expected = [
        {
            'kind': 'run',
            'name': left,
            'owner': owner,
            'message': f'closed run {left} of {owner} as KILLED: {TOOL_DIED}',
        }
    ]
    assert json.loads(result.stdout)['leftovers'] == expected
    parent, children = batch_runs(name)
    assert len(children) == 2
    assert artifact(parent.info.run_id, 'reproduce/summary.json', tmp_path)['leftovers'] == expected
    description = parent.data.tags['mlflow.note.content']
    assert f'- Leftover of a dead tool: closed run {left} of {owner} as KILLED' in description


TRAIN = """\
import os, pathlib, time
import mlflow

if pathlib.Path('notes.txt').exists():  # every commit after the reference's
    mlflow.log_metric('tick', 1)
    time.sleep(float(os.environ.get('LEFTOVERS_TEST_SLEEP', '0')))
mlflow.log_metric('score', float(pathlib.Path('value.txt').read_text()))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_9_during_a_bisection_is_cleaned_by_the_next_invocation(
    tracking,  # noqa: F811
    tmp_path,
):
    repo, first = build_repo(
        tmp_path, {'MLproject': MLPROJECT, 'train.py': TRAIN, 'value.txt': '1'}
    )
    commits = [first, *add_commits(repo, 3, change_at=2)]
    ref = mlflow_run(str(repo / 'tiny'), tracking)
    name, experiment_id = experiment()
    tmp_dir = tmp_path / 'tmp'
    argv = ['--run_id', ref, '--bisect', '--experiment-name', name]
    # The reference commit's probe ends at once; the target's ticks, then sleeps.
    pid, start, projects, runs = kill_tool_mid_run(
        argv, tool_env(tmp_dir, LEFTOVERS_TEST_SLEEP='300'), experiment_id, 1
    )
    owner = f'{HOST}:{pid}:{start}'
    left = [r for r in runs if r.info.status == 'RUNNING']
    [parent] = [r for r in left if r.data.tags.get('reproduce.bisect') == 'true']
    [probe] = [r for r in left if r is not parent]
    assert probe.data.tags['mlflow.source.git.commit'] == commits[3]
    assert probe.data.tags['mlflow.parentRunId'] == parent.info.run_id
    assert {r.data.tags['reproduce.owner'] for r in runs} == {owner}
    assert projects and len(list(tmp_dir.glob(f'reproduce_run-{pid}-{start}-*'))) == 1

    result = run_tool(*argv, '--output', 'json', env=tool_env(tmp_dir))

    assert result.returncode == 1, result.stderr  # the commit at change_at differs
    assert_cleaned(result, pid, start, projects, left, tmp_dir)
    doc = json.loads(result.stdout)
    assert doc['bisect']['first_changed_commit'] == commits[2]
    leftovers = doc['leftovers']
    assert sorted(item['kind'] for item in leftovers) == ['folder', 'processes', 'run', 'run']
    assert {item['name'] for item in leftovers if item['kind'] == 'run'} == {
        parent.info.run_id,
        probe.info.run_id,
    }
    assert {item['owner'] for item in leftovers} == {owner}
    # the new bisection's parent run records them too
    new_parent = max(
        (r for r in client().search_runs([experiment_id]) if r.data.tags.get('reproduce.bisect')),
        key=lambda r: r.info.start_time,
    )
    assert new_parent.info.run_id == doc['bisect']['run_id'] != parent.info.run_id
    assert artifact(new_parent.info.run_id, 'reproduce/bisect.json', tmp_path)['leftovers'] == (
        leftovers
    )
    description = new_parent.data.tags['mlflow.note.content']
    assert f'- Leftover of a dead tool: closed run {probe.info.run_id} of {owner}' in description
    # and the table, without --output json
    again = run_tool(*argv, env=tool_env(tmp_dir))
    assert again.returncode == 1, again.stderr
    assert 'Leftover of a dead tool' not in again.stdout  # nothing was left this time

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
    experiment,
    run_tool,
    running_run,
    runs_of,
    start_time,
    start_tool,
    tagged_processes,
    ticking,
    tool_env,
    tracking,
)
from test_reproduce_run import client, process_gone, wait_for

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

mlflow.log_metric('tick', 1)
if pathlib.Path('notes.txt').exists():  # every commit after the reference's
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
    ref = mlflow_run(str(repo / 'tiny'), tracking)  # at the first commit
    commits = [first, *add_commits(repo, 3, change_at=2)]
    name, experiment_id = experiment()
    tmp_dir = tmp_path / 'tmp'
    argv = ['--run_id', ref, '--bisect', '--experiment-name', name]
    # The reference commit's probe ends at once; the target's ticks, then sleeps.
    proc = start_tool(*argv, env=tool_env(tmp_dir, LEFTOVERS_TEST_SLEEP='300'))
    try:
        wait_for(
            lambda: any(
                ticking(r) and r.data.tags.get('mlflow.source.git.commit') == commits[3]
                for r in runs_of(experiment_id)
            ),
            180,
            'the probe of the target to tick',
        )
        pid, start = proc.pid, start_time(proc.pid)
        projects = tagged_processes(pid)
    finally:
        proc.kill()  # SIGKILL: the tool cleans nothing up
        proc.wait()
    runs = runs_of(experiment_id)
    owner = f'{HOST}:{pid}:{start}'
    left = [r for r in runs if r.info.status == 'RUNNING']
    [parent] = [r for r in left if r.data.tags.get('reproduce.bisect') == 'true']
    [probe] = [r for r in left if r is not parent]
    assert probe.data.tags['mlflow.source.git.commit'] == commits[3]
    assert probe.data.tags['mlflow.parentRunId'] == parent.info.run_id
    assert {r.data.tags['reproduce.owner'] for r in runs} == {owner}
    assert projects and len(list(tmp_dir.glob(f'reproduce_run-{pid}-{start}-*'))) == 1

    result = run_tool(*argv, env=tool_env(tmp_dir))

    assert result.returncode == 1, result.stderr  # the commit at change_at differs
    for run in left:
        after = client().get_run(run.info.run_id)
        assert (after.info.status, after.data.tags['reproduce.status']) == ('KILLED', 'killed')
        assert after.data.tags['mlflow.note.content'].endswith(TOOL_DIED)
        assert f'closed run {run.info.run_id} of {owner} as KILLED: {TOOL_DIED}' in result.stderr
    # Any invocation on this host ends a dead tool's projects, and on a shared
    # machine another one may come first: this test asks only that they are gone.
    wait_for(lambda: all(process_gone(p) for p in projects), 30, 'the projects to end')
    assert tagged_processes(pid) == []
    assert list(tmp_dir.glob(f'reproduce_run-{pid}-*')) == []
    assert f'removed the temporary folder {tmp_dir}/reproduce_run-{pid}-' in result.stderr
    # the new bisection's table, its parent run's bisect.json and description list them
    table = [x for x in result.stdout.splitlines() if x.startswith('Leftover of a dead tool: ')]
    assert f'Leftover of a dead tool: closed run {probe.info.run_id} of {owner} as KILLED: ' in (
        '\n'.join(table)
    )
    assert result.stdout.splitlines()[-1] == f'First changed commit: {commits[2]}'
    [new_parent] = [
        r
        for r in client().search_runs([experiment_id])
        if r.data.tags.get('reproduce.bisect') and r.info.run_id != parent.info.run_id
    ]
    doc = artifact(new_parent.info.run_id, 'reproduce/bisect.json', tmp_path)
    assert doc['bisect']['first_changed_commit'] == commits[2]
    leftovers = doc['leftovers']
    assert len(table) == len(leftovers)
    assert {'folder', 'run'} <= {item['kind'] for item in leftovers}
    assert {item['name'] for item in leftovers if item['kind'] == 'run'} == {
        parent.info.run_id,
        probe.info.run_id,
    }
    assert {item['owner'] for item in leftovers} == {owner}
    description = new_parent.data.tags['mlflow.note.content']
    assert f'- Leftover of a dead tool: closed run {probe.info.run_id} of {owner}' in description

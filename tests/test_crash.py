"""Crash recovery: what a tool killed with SIGKILL (or by the OOM killer, or a
reboot) leaves behind is cleaned by the next invocation on the same host.

Real parts only: the tool runs as a process and is killed with `kill -9`, the
projects are the `slow` sample, the stores are sqlite and a real `mlflow
server`.  Every invocation here gets a TMPDIR and an experiment of its own,
so that it sees only the leftovers its test made."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import SCRIPT, STORES, client, git, mlflow_run
from helpers import (
    MLPROJECT,
    add_commits,
    batch_runs,
    build_repo,
    process_gone,
    recorded_run,
    wait_for,
)

import reproduce_run
from reproduce_run import TOOL_DIED, main

HOST = socket.gethostname()


def start_time(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat."""
    return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[19]


def experiment() -> tuple[str, str]:
    """(name, ID) of a new experiment, so that a test sees only its own runs."""
    name = f'crash-{uuid.uuid4().hex[:8]}'
    return name, client().create_experiment(name)


def tool_env(tmp_dir: Path, **extra: str) -> dict[str, str]:
    tmp_dir.mkdir(exist_ok=True)
    return {**os.environ, 'TMPDIR': str(tmp_dir), **extra}


def start_tool(*argv: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        (sys.executable, str(SCRIPT), *argv),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )


def run_tool(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        (sys.executable, str(SCRIPT), *argv),
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def runs_of(experiment_id: str) -> list:
    return client().search_runs([experiment_id], max_results=100)


def tagged_processes(tool_pid: int) -> list[int]:
    """Live processes whose REPRODUCE_RUN_PROCESS_TAG names the tool of this PID."""
    needle = re.compile(rb'REPRODUCE_RUN_PROCESS_TAG=%d-\d+-[0-9a-f]{8}(\.\d+)?$' % tool_pid)
    found = []
    for entry in os.scandir('/proc'):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(f'/proc/{entry.name}/environ').read_bytes()
        except OSError:
            continue
        if any(needle.match(v) for v in environ.split(b'\0')) and not process_gone(int(entry.name)):
            found.append(int(entry.name))
    return found


def slow_reference(samples_repo: Path, seconds: int = 300) -> str:
    """A reference of the `slow` sample whose reproduction runs for minutes,
    recorded without running it."""
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    return recorded_run(f'file://{samples_repo}#slow', commit, {'seconds': str(seconds)})


def ticking(run) -> bool:
    return run.info.status == 'RUNNING' and 'tick' in run.data.metrics


@pytest.fixture(params=['sqlite', 'server'])
def tracking(request, monkeypatch) -> str:
    """The session's sqlite store, or the session's real `mlflow server`."""
    uri = request.getfixturevalue(STORES[request.param])
    monkeypatch.setenv('MLFLOW_TRACKING_URI', uri)
    return uri


def kill_tool_mid_run(argv: list[str], env: dict[str, str], experiment_id: str, runs: int):
    """Start the tool, wait until `runs` reproductions tick, kill -9 it.
    Returns (tool PID, its start time, its project processes, its runs)."""
    proc = start_tool(*argv, env=env)
    try:
        wait_for(
            lambda: sum(ticking(r) for r in runs_of(experiment_id)) == runs,
            180,
            f'{runs} ticking reproductions',
        )
        pid, start = proc.pid, start_time(proc.pid)
        projects = tagged_processes(pid)
    finally:
        proc.kill()  # SIGKILL: the tool cleans nothing up
        proc.wait()
    return pid, start, projects, runs_of(experiment_id)


def assert_cleaned(result, pid, start, projects, runs, tmp_dir: Path) -> None:
    """The next invocation closed every run, ended every project process and
    removed the folder of the dead tool, and said so."""
    owner = f'{HOST}:{pid}:{start}'
    for run in runs:
        after = client().get_run(run.info.run_id)
        assert after.info.status == 'KILLED'
        assert after.data.tags['reproduce.status'] == 'killed'
        assert after.data.tags['mlflow.note.content'].endswith(TOOL_DIED)
        assert (
            f'reproduce_run: closed run {run.info.run_id} of {owner} as KILLED: ' in result.stderr
        )
    wait_for(lambda: all(process_gone(p) for p in projects), 30, 'the projects to end')
    assert tagged_processes(pid) == []
    assert f'of the dead reproducing tool {owner} (REPRODUCE_RUN_PROCESS_TAG={pid}-' in (
        result.stderr
    )
    assert list(tmp_dir.glob(f'reproduce_run-{pid}-*')) == []
    assert f'reproduce_run: removed the temporary folder {tmp_dir}/reproduce_run-{pid}-' in (
        result.stderr
    )


def fast_reference(samples_repo: Path, tracking_uri: str) -> str:
    return mlflow_run(str(samples_repo / 'slow'), tracking_uri, '-P', 'seconds=1')


@pytest.mark.slow
def test_kill_9_during_a_single_run_is_cleaned_by_the_next_invocation(
    samples_repo, tracking, tmp_path
):
    name, experiment_id = experiment()
    tmp_dir = tmp_path / 'tmp'
    env = tool_env(tmp_dir)
    reference = slow_reference(samples_repo)
    pid, start, projects, runs = kill_tool_mid_run(
        ['--run_id', reference, '--experiment-name', name], env, experiment_id, 1
    )
    # What the kill left: a ticking project, its run RUNNING, the folder.
    [run] = runs
    assert run.info.status == 'RUNNING'
    assert run.data.tags['reproduce.owner'] == f'{HOST}:{pid}:{start}'
    assert projects and not any(process_gone(p) for p in projects)
    assert len(list(tmp_dir.glob(f'reproduce_run-{pid}-{start}-*'))) == 1

    result = run_tool(
        '--run_id',
        fast_reference(samples_repo, tracking),
        '--experiment-name',
        name,
        '--output',
        'json',
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert_cleaned(result, pid, start, projects, runs, tmp_dir)
    leftovers = json.loads(result.stdout)['leftovers']
    assert sorted(item['kind'] for item in leftovers) == ['folder', 'processes', 'run']
    assert {item['owner'] for item in leftovers} == {f'{HOST}:{pid}:{start}'}


@pytest.mark.slow
def test_kill_9_during_a_batch_is_cleaned_by_the_next_invocation(samples_repo, tracking, tmp_path):
    name, experiment_id = experiment()
    tmp_dir = tmp_path / 'tmp'
    env = tool_env(tmp_dir)
    references = [slow_reference(samples_repo, 300), slow_reference(samples_repo, 301)]
    pid, start, projects, runs = kill_tool_mid_run(
        ['--run_id', *references, '--experiment-name', name, '--jobs', '2'],
        env,
        experiment_id,
        2,
    )
    # Two reproductions and their batch parent, each owned by the dead tool.
    assert len(runs) == 3
    assert {r.data.tags['reproduce.owner'] for r in runs} == {f'{HOST}:{pid}:{start}'}
    assert [r for r in runs if r.data.tags.get('reproduce.batch') == 'true']
    assert len({os.getpgid(p) for p in projects}) == 2  # two projects, each its own group

    result = run_tool(
        '--run_id',
        fast_reference(samples_repo, tracking),
        fast_reference(samples_repo, tracking),
        '--experiment-name',
        name,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert_cleaned(result, pid, start, projects, runs, tmp_dir)
    summary = [
        line
        for line in result.stdout.splitlines()
        if line.startswith('Leftover of a dead tool: ') and f'{HOST}:{pid}:{start}' in line
    ]
    assert len(summary) == 5  # 3 runs, the processes of the tool, its folder


def running_run(experiment_id: str, owner: str | None, started_ago: float = 0.0) -> str:
    """A RUNNING run as a tool makes it, started `started_ago` seconds ago."""
    tags = {'reproduce.owner': owner} if owner else {}
    start = int((time.time() - started_ago) * 1000)
    return client().create_run(experiment_id, start_time=start, tags=tags).info.run_id


def sleeper(env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(('sleep', '300'), env=env, start_new_session=True)


def test_a_reused_pid_counts_as_dead_and_a_live_tool_or_another_host_is_untouched(
    reference, tmp_path
):
    name, experiment_id = experiment()
    tmp_dir = tmp_path / 'tmp'
    env = tool_env(tmp_dir)
    unrelated = sleeper()  # holds the PID a dead tool once had
    me, my_start = os.getpid(), start_time(os.getpid())
    reused = f'{unrelated.pid}-{int(start_time(unrelated.pid)) + 1}'
    alive = f'{me}-{my_start}'
    # A project's TMPDIR lies in its tool's temporary folder, under the TMPDIR they share.
    orphan = sleeper(
        {
            **os.environ,
            'REPRODUCE_RUN_PROCESS_TAG': f'{reused}-deadbeef.0',
            'TMPDIR': str(tmp_dir / f'reproduce_run-{reused}-abcd1234' / 'tmp'),
        }
    )
    child = sleeper(
        {
            **os.environ,
            'REPRODUCE_RUN_PROCESS_TAG': f'{alive}-deadbeef.0',
            'TMPDIR': str(tmp_dir / f'reproduce_run-{alive}-abcd1234' / 'tmp'),
        }
    )
    try:
        dead_run = running_run(experiment_id, f'{HOST}:{reused.replace("-", ":")}')
        live_run = running_run(experiment_id, f'{HOST}:{me}:{my_start}')
        other_host = running_run(experiment_id, f'elsewhere.example:{reused.replace("-", ":")}')
        dead_folder = tmp_dir / f'reproduce_run-{reused}-abcd1234'
        live_folder = tmp_dir / f'reproduce_run-{alive}-abcd1234'
        for folder in (dead_folder, live_folder):
            (folder / 'src').mkdir(parents=True)

        result = run_tool(
            '--run_id', reference('slow', '-P', 'seconds=1'), '--experiment-name', name, env=env
        )

        assert result.returncode == 0, result.stderr
        closed = client().get_run(dead_run)
        assert (closed.info.status, closed.data.tags['reproduce.status']) == ('KILLED', 'killed')
        assert closed.data.tags['mlflow.note.content'] == TOOL_DIED
        wait_for(lambda: process_gone(orphan.pid), 30, 'the orphan to end')
        assert not dead_folder.exists()
        for run_id in (live_run, other_host):
            untouched = client().get_run(run_id)
            assert untouched.info.status == 'RUNNING'
            assert 'reproduce.status' not in untouched.data.tags
        assert not process_gone(child.pid) and not process_gone(unrelated.pid)
        assert live_folder.exists()
        owner = f'{HOST}:{reused.replace("-", ":")}'
        assert [line for line in result.stderr.splitlines() if owner in line] == [
            f'reproduce_run: ended 1 process of the dead reproducing tool {owner} '
            f'(REPRODUCE_RUN_PROCESS_TAG={reused}-deadbeef)',
            f'reproduce_run: closed run {dead_run} of {owner} as KILLED: {TOOL_DIED}',
            f'reproduce_run: removed the temporary folder {dead_folder} of the dead '
            f'reproducing tool {owner}',
        ]
        assert live_run not in result.stderr and other_host not in result.stderr
    finally:
        for proc in (unrelated, orphan, child):
            proc.kill()
            proc.wait()


def test_reap_after_closes_old_reproductions_of_any_host(reference, tmp_path):
    name, experiment_id = experiment()
    two_hours = 2 * 3600
    old_elsewhere = running_run(experiment_id, 'elsewhere.example:1:1', two_hours)
    old_here_alive = running_run(
        experiment_id, f'{HOST}:{os.getpid()}:{start_time(os.getpid())}', two_hours
    )
    young_elsewhere = running_run(experiment_id, 'elsewhere.example:1:1')
    not_a_reproduction = running_run(experiment_id, None, two_hours)

    result = run_tool(
        '--run_id',
        reference('slow', '-P', 'seconds=1'),
        '--experiment-name',
        name,
        '--reap-after',
        '1h',
        '--output',
        'json',
        env=tool_env(tmp_path / 'tmp'),
    )

    assert result.returncode == 0, result.stderr
    for run_id in (old_elsewhere, old_here_alive):
        closed = client().get_run(run_id)
        assert (closed.info.status, closed.data.tags['reproduce.status']) == ('KILLED', 'killed')
        assert closed.data.tags['mlflow.note.content'].startswith(
            'RUNNING longer than --reap-after (3600 s)'
        )
    for run_id in (young_elsewhere, not_a_reproduction):
        assert client().get_run(run_id).info.status == 'RUNNING'
    leftovers = json.loads(result.stdout)['leftovers']
    assert sorted(item['name'] for item in leftovers) == sorted([old_elsewhere, old_here_alive])
    assert all(item['kind'] == 'run' for item in leftovers)


def test_a_dry_run_or_a_comparison_cleans_nothing(reference, tmp_path):
    name, experiment_id = experiment()
    dead_run = running_run(experiment_id, 'elsewhere.example:1:1', 7200)
    for extra in (['--dry-run'], ['--compare-to', reference('slow', '-P', 'seconds=1')]):
        result = run_tool(
            '--run_id',
            reference('slow', '-P', 'seconds=1'),
            '--experiment-name',
            name,
            '--reap-after',
            '1h',
            *extra,
            env=tool_env(tmp_path / 'tmp'),
        )
        assert result.returncode == 0, result.stderr
        assert 'closed run' not in result.stderr
    assert client().get_run(dead_run).info.status == 'RUNNING'


@pytest.mark.parametrize('value', ['6', 'soon', '1.h', '1y'])
def test_a_bad_reap_after_is_an_argument_error(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(['--run_id', 'a', '--reap-after', value])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ''
    assert err == (
        'reproduce_run: error: argument --reap-after: expected a duration such as 90m, '
        f'36h or 7d, got {value!r} (see --help)\n'
    )


@pytest.mark.parametrize(
    ('owner', 'counts_as_dead'),
    [
        pytest.param(lambda: f'{os.getpid()}:{start_time(os.getpid())}', False, id='this-process'),
        pytest.param(
            lambda: f'{os.getpid()}:{int(start_time(os.getpid())) + 1}', True, id='pid-reused'
        ),
        pytest.param(lambda: f'{2**22 + 1}:1', True, id='no-such-pid'),
    ],
)
def test_tool_alive(owner, counts_as_dead):
    pid, start = owner().split(':')
    assert reproduce_run.tool_alive(int(pid), start) is not counts_as_dead


def test_every_run_the_tool_makes_names_its_owner(reference, capsys):
    """Reproductions and the parent run of --repeat (a batch's: see the batch
    test above) carry reproduce.owner: this process, which runs main()."""
    name, experiment_id = experiment()
    code = main(
        [
            '--run_id',
            reference('slow', '-P', 'seconds=1'),
            '--repeat',
            '2',
            '--experiment-name',
            name,
        ]
    )
    assert code == 0, capsys.readouterr().err
    runs = runs_of(experiment_id)
    assert len(runs) == 3  # the parent and two repetitions
    assert [r for r in runs if r.data.tags.get('reproduce.repeat') == '2']
    assert {r.data.tags['reproduce.owner'] for r in runs} == {
        f'{HOST}:{os.getpid()}:{start_time(os.getpid())}'
    }


# --- leftovers in the reports of groups, and a bisection killed -------------------


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

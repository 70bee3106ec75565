"""Crash recovery: what a tool killed with SIGKILL (or by the OOM killer, or a
reboot) leaves behind is cleaned by the next invocation on the same host.

Real parts only: the tool runs as a process and is killed with `kill -9`, the
projects are the `slow` sample, the stores are sqlite and a real `mlflow
server`.  Every invocation here gets a TMPDIR of its own; the `kill -9` tests
give neither invocation --experiment-name (their runs go to Default, and a
script run's to its reference's experiment), as the README's usage does."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    MLPROJECT,
    SCRIPT,
    add_commits,
    batch_runs,
    build_repo,
    client,
    git,
    process_gone,
    python_run,
    recorded_run,
    reproductions_of,
    start_tool,
    wait_for,
)
from proxy import Rule, proxy_in_front_of

import reproduce_run
from reproduce_run import TOOL_DIED, TOOL_GONE, main

HOST = socket.gethostname()
NAMESPACE = reproduce_run.tool_namespace()  # boot:pidns, the same for this test's children


def owner_of(pid: int, start: str | int) -> str:
    """The reproduce.owner of a tool of this host, boot and PID namespace."""
    return f'{HOST}:{pid}:{start}:{NAMESPACE}'


def folder_prefix(pid: int, start: str | int) -> str:
    """The beginning of that tool's temporary folder's name."""
    boot, pidns = NAMESPACE.split(':')
    return f'reproduce_run-{pid}-{start}-{pidns}-{boot[:8]}-'


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


def run_tool(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        (sys.executable, str(SCRIPT), *argv),
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def runs_of(experiment_id: str, pid: int | None = None) -> list:
    """The runs of an experiment (those of the tool of this PID)."""
    mine = f"tags.`reproduce.owner` LIKE '{HOST}:{pid}:%'" if pid else ''
    return client().search_runs([experiment_id], mine, max_results=100)


def default_id() -> str:
    return client().get_experiment_by_name('Default').experiment_id


def marked_processes(tool_pid: int) -> list[int]:
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


TICK = """\
import os, time
import mlflow

with mlflow.start_run():
    mlflow.log_metric('tick', 1)
    time.sleep(float(os.environ.get('LEFTOVERS_TEST_SLEEP', '0')))
"""

TRAIN = """\
import os, pathlib, time
import mlflow

mlflow.log_metric('tick', 1)
if pathlib.Path('notes.txt').exists():  # every commit after the reference's
    time.sleep(float(os.environ.get('LEFTOVERS_TEST_SLEEP', '0')))
mlflow.log_metric('score', float(pathlib.Path('value.txt').read_text()))
"""


@dataclasses.dataclass
class Victim:
    """A tool started to be killed once `ready` holds for its runs."""

    proc: subprocess.Popen
    experiment_id: str
    ready: Callable[[list], bool]
    what: str

    def wait(self) -> None:
        """Until `ready` holds for its runs; the tool must not end meanwhile."""
        wait_for(self._ready, 180, self.what)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f'the tool ended before {self.what}: {self.proc.communicate()}')
        return self.ready(runs_of(self.experiment_id, self.proc.pid))


@dataclasses.dataclass
class Killed:
    """What a tool killed with SIGKILL left: the processes of its projects
    (seen before the kill) and its runs (read after it)."""

    pid: int
    start: str
    projects: list[int]
    runs: list

    @property
    def owner(self) -> str:
        return owner_of(self.pid, self.start)

    @property
    def left(self) -> list:
        return [r for r in self.runs if r.info.status == 'RUNNING']


def ticks(count: int, commit: str | None = None) -> Callable[[list], bool]:
    """`count` of the runs tick (those made at `commit`)."""

    def ready(runs: list) -> bool:
        at = [r for r in runs if commit in (None, r.data.tags.get('mlflow.source.git.commit'))]
        return sum(map(ticking, at)) == count

    return ready


def kill_9(proc: subprocess.Popen, experiment_id: str) -> Killed:
    """SIGKILL to a tool: it cleans nothing up."""
    pid, start = proc.pid, start_time(proc.pid)
    projects = marked_processes(pid)
    with proc:  # closes its pipes once it is gone
        proc.kill()
    return Killed(pid, start, projects, runs_of(experiment_id, pid))


def kill_9_all(victims: dict[str, Victim]) -> dict[str, Killed]:
    """Each victim killed once the projects of all of them tick: every one
    has looked for leftovers by then, and none is left to clean up after
    another before the next invocation.  All of them killed whatever happens."""
    try:
        for victim in victims.values():
            victim.wait()
        return {name: kill_9(victim.proc, victim.experiment_id) for name, victim in victims.items()}
    finally:
        for victim in victims.values():
            with victim.proc:
                victim.proc.kill()


def script_victim(where: Path, env: dict[str, str]) -> tuple[Victim, str]:
    """A tool reproducing a script run that ticks, then sleeps; and its reference.
    The script run's experiment is one of its own: its reproduction goes there."""
    repo, _ = build_repo(where, {'tick.py': TICK})
    name, experiment_id = experiment()
    reference = python_run(repo / 'tiny', 'tick.py', env={'MLFLOW_EXPERIMENT_NAME': name})
    proc = start_tool('--run_id', reference, '--uri', str(repo), env=env)  # no remote recorded
    return Victim(proc, experiment_id, ticks(1), 'the script run to tick'), reference


def bisection_victim(where: Path, env: dict[str, str]) -> tuple[Victim, str, str]:
    """A tool bisecting from a reference at the first of two commits (the
    second doubles the metric): the reference commit's probe ends at once,
    the target's ticks, then sleeps.  Its reference run and the target."""
    repo, first = build_repo(where, {'MLproject': MLPROJECT, 'train.py': TRAIN, 'value.txt': '1'})
    metrics = {'tick': 1, 'score': 1}
    reference = recorded_run(f'file://{repo}#tiny', first, {'data': ''}, metrics=metrics)
    [target] = add_commits(repo, 1, change_at=1)
    proc = start_tool('--run_id', reference, '--bisect', env=env)
    victim = Victim(proc, default_id(), ticks(1, target), 'the probe of the target to tick')
    return victim, reference, target


def assert_left_running(
    killed: dict[str, Killed], tmp_dir: Path, script_reference: str, target: str
) -> None:
    """What the kills left: runs RUNNING, owned by their dead tool; projects
    running; one temporary folder each."""
    for dead in killed.values():
        assert dead.left and {r.data.tags['reproduce.owner'] for r in dead.runs} == {dead.owner}
        assert dead.projects and not any(process_gone(p) for p in dead.projects)
        assert len(list(tmp_dir.glob(f'{folder_prefix(dead.pid, dead.start)}*'))) == 1
    assert len(killed['single'].left) == len(killed['single'].runs) == 1
    script = killed['script']
    assert [r.data.tags['reproduce.reference_run_id'] for r in script.left] == [script_reference]
    # Two reproductions and their batch parent; two projects, each its own group.
    batch = killed['batch']
    assert len(batch.left) == len(batch.runs) == 3
    assert [r for r in batch.runs if r.data.tags.get('reproduce.batch') == 'true']
    assert len({os.getpgid(p) for p in batch.projects}) == 2
    # The bisection's parent and the target's probe (the reference commit's has ended).
    bisection = killed['bisection']
    [parent] = [r for r in bisection.left if r.data.tags.get('reproduce.bisect') == 'true']
    [probe] = [r for r in bisection.left if r is not parent]
    assert probe.data.tags['mlflow.source.git.commit'] == target
    assert probe.data.tags['mlflow.parentRunId'] == parent.info.run_id


def assert_cleaned(result, dead: Killed, tmp_dir: Path) -> None:
    """The next invocation closed every run the dead tool left RUNNING,
    ended every process of its projects and removed its folder, and said so."""
    for run in dead.left:
        after = client().get_run(run.info.run_id)
        assert (after.info.status, after.data.tags['reproduce.status']) == ('KILLED', 'killed')
        assert after.data.tags['mlflow.note.content'].endswith(TOOL_DIED)
        assert (
            f'reproduce_run: closed run {run.info.run_id} of {dead.owner} as KILLED: {TOOL_DIED}'
            in result.stderr
        )
    wait_for(lambda: all(process_gone(p) for p in dead.projects), 30, 'the projects to end')
    assert marked_processes(dead.pid) == []
    assert (
        f'of the dead reproducing tool {dead.owner} (REPRODUCE_RUN_PROCESS_TAG={dead.pid}-'
        in result.stderr
    )
    assert list(tmp_dir.glob(f'reproduce_run-{dead.pid}-*')) == []
    assert f'reproduce_run: removed the temporary folder {tmp_dir}/reproduce_run-{dead.pid}-' in (
        result.stderr
    )


def new_bisection(reference: str, old: list):
    """The parent run of the bisection of `reference` that is not among `old`."""
    old_ids = {r.info.run_id for r in old}
    found = client().search_runs(
        [default_id()], f"tags.`reproduce.reference_run_id` = '{reference}'"
    )
    [parent] = [
        r for r in found if r.data.tags.get('reproduce.bisect') and r.info.run_id not in old_ids
    ]
    return parent


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_9_of_a_single_run_script_run_batch_and_bisection_is_cleaned_by_the_next_invocation(
    samples_repo, tmp_path
):
    """Four tools share a TMPDIR and are killed mid-run, none given
    --experiment-name; the next invocation there, a bisection writing to
    Default, cleans up after each of them: the script run's reproduction is
    in its reference's experiment, and still found.  The bisection's table,
    its parent run's bisect.json and its description list what it did."""
    tmp_dir = tmp_path / 'tmp'
    env = tool_env(tmp_dir, LEFTOVERS_TEST_SLEEP='300')  # the sleep of the script and the probe
    default = default_id()
    # The bisection first: its probe of the target starts once the reference commit's has ended.
    bisection, reference, target = bisection_victim(tmp_path / 'bisection', env)
    single = start_tool('--run_id', slow_reference(samples_repo), env=env)
    batch = start_tool(
        *('--run_id', slow_reference(samples_repo, 300), slow_reference(samples_repo, 301)),
        *('--jobs', '2'),
        env=env,
    )
    script, script_reference = script_victim(tmp_path / 'script', env)
    killed = kill_9_all(
        {
            'single': Victim(single, default, ticks(1), 'the single run to tick'),
            'script': script,
            'batch': Victim(batch, default, ticks(2), 'two ticking reproductions'),
            'bisection': bisection,
        }
    )
    assert_left_running(killed, tmp_dir, script_reference, target)

    result = run_tool('--run_id', reference, '--bisect', env=tool_env(tmp_dir))

    assert result.returncode == 1, result.stderr  # the target differs
    for dead in killed.values():
        assert_cleaned(result, dead, tmp_dir)
    assert result.stdout.splitlines()[-1] == f'First changed commit: {target}'
    parent = new_bisection(reference, killed['bisection'].runs)
    doc = artifact(parent.info.run_id, 'reproduce/bisect.json', tmp_path)
    assert doc['bisect']['first_changed_commit'] == target
    table = [x for x in result.stdout.splitlines() if x.startswith('Leftover of a dead tool: ')]
    assert len(table) == len(doc['leftovers'])
    description = parent.data.tags['mlflow.note.content']
    for dead in killed.values():
        theirs = [item for item in doc['leftovers'] if item['owner'] == dead.owner]
        assert sorted(item['kind'] for item in theirs) == [
            'folder',
            'processes',
            *['run'] * len(dead.left),
        ]
        assert {item['name'] for item in theirs if item['kind'] == 'run'} == {
            r.info.run_id for r in dead.left
        }
        assert len([line for line in table if dead.owner in line]) == len(theirs)
        for run in dead.left:
            closed = f'closed run {run.info.run_id} of {dead.owner} as KILLED: '
            assert f'Leftover of a dead tool: {closed}' in '\n'.join(table)
            assert f'- Leftover of a dead tool: {closed}' in description


def clean_only(name: str, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    """An invocation that cleans what dead tools left, then reproduces
    nothing: a batch of an empty experiment, its parent run in `name`'s,
    which the search for leftover runs looks at first."""
    empty, _ = experiment()
    return run_tool('--from-experiment', empty, '--experiment-name', name, *argv, env=env)


@pytest.mark.slow
def test_kill_9_of_a_single_run_and_a_batch_in_an_sqlite_store_is_cleaned_by_the_next_invocation(
    samples_repo, sqlite_store, tmp_path, monkeypatch
):
    """The same in the session's sqlite store, whose connections the tools
    share, for the kinds of tool that write there at once: a single run and a
    batch of two (the other kinds are the server's test above)."""
    monkeypatch.setenv('MLFLOW_TRACKING_URI', sqlite_store)
    tmp_dir = tmp_path / 'tmp'
    env = tool_env(tmp_dir, LEFTOVERS_TEST_SLEEP='300')
    default = default_id()
    single = start_tool('--run_id', slow_reference(samples_repo), env=env)
    batch = start_tool(
        *('--run_id', slow_reference(samples_repo, 300), slow_reference(samples_repo, 301)),
        *('--jobs', '2'),
        env=env,
    )
    killed = kill_9_all(
        {
            'single': Victim(single, default, ticks(1), 'the single run to tick'),
            'batch': Victim(batch, default, ticks(2), 'two ticking reproductions'),
        }
    )
    assert [len(dead.left) for dead in killed.values()] == [1, 3]

    result = clean_only('Default', tool_env(tmp_dir))

    assert result.returncode == 0, result.stderr
    for dead in killed.values():
        assert_cleaned(result, dead, tmp_dir)


def running_run(experiment_id: str, owner: str | None, started_ago: float = 0.0) -> str:
    """A RUNNING run as a tool makes it, started `started_ago` seconds ago."""
    tags = {'reproduce.owner': owner} if owner else {}
    start = int((time.time() - started_ago) * 1000)
    return client().create_run(experiment_id, start_time=start, tags=tags).info.run_id


def sleeper(env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(('sleep', '300'), env=env, start_new_session=True)


def test_a_reused_pid_counts_as_dead_and_a_live_tool_another_host_or_an_old_owner_is_untouched(
    tmp_path,
):
    """The previous version's owners (host:pid:start) and folders
    (reproduce_run-<pid>-<start>-<random>) do not say their PID namespace:
    they are left alone, as those of another container would be."""
    name, experiment_id = experiment()
    tmp_dir = tmp_path / 'tmp'
    env = tool_env(tmp_dir)
    unrelated = sleeper()  # holds the PID a dead tool once had
    me, my_start = os.getpid(), start_time(os.getpid())
    pid, start = unrelated.pid, int(start_time(unrelated.pid)) + 1
    reused = f'{pid}-{start}'
    dead_folder = tmp_dir / f'{folder_prefix(pid, start)}abcd1234'
    live_folder = tmp_dir / f'{folder_prefix(me, my_start)}abcd1234'
    old_folder = tmp_dir / f'reproduce_run-{reused}-abcd1234'
    # A project's TMPDIR lies in its tool's temporary folder, under the TMPDIR they share.
    orphan = sleeper(
        {
            **os.environ,
            'REPRODUCE_RUN_PROCESS_TAG': f'{reused}-deadbeef.0',
            'TMPDIR': str(dead_folder / 'tmp'),
        }
    )
    child = sleeper(
        {
            **os.environ,
            'REPRODUCE_RUN_PROCESS_TAG': f'{me}-{my_start}-deadbeef.0',
            'TMPDIR': str(live_folder / 'tmp'),
        }
    )
    try:
        owner = owner_of(pid, start)
        dead_run = running_run(experiment_id, owner)
        untouched = [
            running_run(experiment_id, owner_of(me, my_start)),
            running_run(experiment_id, owner.replace(HOST, 'elsewhere.example', 1)),
            running_run(experiment_id, f'{HOST}:{pid}:{start}'),  # the previous version's
            running_run(experiment_id, f'{HOST}:{pid}:{start}:{NAMESPACE}1'),  # another PID ns
        ]
        for folder in (dead_folder, live_folder, old_folder):
            (folder / 'src').mkdir(parents=True)

        result = clean_only(name, env)

        assert result.returncode == 0, result.stderr
        closed = client().get_run(dead_run)
        assert (closed.info.status, closed.data.tags['reproduce.status']) == ('KILLED', 'killed')
        assert closed.data.tags['mlflow.note.content'] == TOOL_DIED
        wait_for(lambda: process_gone(orphan.pid), 30, 'the orphan to end')
        assert not dead_folder.exists()
        for run_id in untouched:
            run = client().get_run(run_id)
            assert run.info.status == 'RUNNING'
            assert 'reproduce.status' not in run.data.tags
            assert run_id not in result.stderr
        assert not process_gone(child.pid) and not process_gone(unrelated.pid)
        assert live_folder.exists() and old_folder.exists()
        assert [line for line in result.stderr.splitlines() if owner in line] == [
            f'reproduce_run: ended 1 process of the dead reproducing tool {owner} '
            f'(REPRODUCE_RUN_PROCESS_TAG={reused}-deadbeef)',
            f'reproduce_run: closed run {dead_run} of {owner} as KILLED: {TOOL_DIED}',
            f'reproduce_run: removed the temporary folder {dead_folder} of the dead '
            f'reproducing tool {owner}',
        ]
    finally:
        for proc in (unrelated, orphan, child):
            proc.kill()
            proc.wait()


def test_a_dead_tools_run_is_left_while_its_project_runs_outside_this_tmpdir(tmp_path):
    """Its project's TMPDIR is not under this tool's: the project is not
    ended, and its run, still logged to, stays RUNNING until it ends."""
    name, experiment_id = experiment()
    owner = dead_owner()
    pid, start = owner.split(':')[1:3]
    project = sleeper(
        {
            **os.environ,
            'REPRODUCE_RUN_PROCESS_TAG': f'{pid}-{start}-deadbeef.0',
            'TMPDIR': str(tmp_path / 'elsewhere' / f'{folder_prefix(pid, start)}abcd1234' / 'tmp'),
        }
    )
    try:
        left = running_run(experiment_id, owner)

        result = clean_only(name, tool_env(tmp_path / 'tmp'))

        assert result.returncode == 0, result.stderr
        assert client().get_run(left).info.status == 'RUNNING'
        assert not process_gone(project.pid)
        assert [line for line in result.stderr.splitlines() if left in line] == [
            f'reproduce_run.py: warning: run {left} of the dead reproducing tool {owner} is left '
            "RUNNING: 1 process of its project still runs, with a TMPDIR outside this tool's; "
            'it is closed once they end'
        ]
    finally:
        project.kill()
        project.wait()
    result = clean_only(name, tool_env(tmp_path / 'tmp'))
    assert result.returncode == 0, result.stderr
    closed = client().get_run(left)
    assert (closed.info.status, closed.data.tags['mlflow.note.content']) == ('KILLED', TOOL_GONE)
    assert f'reproduce_run: closed run {left} of {owner} as KILLED: {TOOL_GONE}' in result.stderr


def test_reap_after_closes_old_reproductions_of_any_host_in_any_experiment(tmp_path):
    """The runs are in an experiment of their own; the invocation writes to Default."""
    _, experiment_id = experiment()
    two_hours = 2 * 3600
    old_elsewhere = running_run(experiment_id, 'elsewhere.example:1:1', two_hours)
    old_here_alive = running_run(
        experiment_id, owner_of(os.getpid(), start_time(os.getpid())), two_hours
    )
    young_elsewhere = running_run(experiment_id, 'elsewhere.example:1:1')
    not_a_reproduction = running_run(experiment_id, None, two_hours)

    result = clean_only(
        'Default', tool_env(tmp_path / 'tmp'), '--reap-after', '1h', '--output', 'json'
    )

    assert result.returncode == 0, result.stderr
    for run_id, why in ((old_elsewhere, 'is presumed dead'), (old_here_alive, 'still runs here')):
        closed = client().get_run(run_id)
        assert (closed.info.status, closed.data.tags['reproduce.status']) == ('KILLED', 'killed')
        assert closed.data.tags['mlflow.note.content'] == (
            f'RUNNING longer than --reap-after (3600 s): its reproducing tool {why}'
        )
    for run_id in (young_elsewhere, not_a_reproduction):
        assert client().get_run(run_id).info.status == 'RUNNING'
    leftovers = {item['name']: item['kind'] for item in json.loads(result.stdout)['leftovers']}
    assert leftovers[old_elsewhere] == leftovers[old_here_alive] == 'run'
    assert young_elsewhere not in leftovers and not_a_reproduction not in leftovers


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
        owner_of(os.getpid(), start_time(os.getpid()))
    }


def test_a_failed_search_for_leftover_runs_is_one_warning(mlflow_server, reference, tmp_path):
    fast = reference('slow', '-P', 'seconds=1')
    with proxy_in_front_of(mlflow_server) as proxy:
        proxy.add(Rule('runs/search', status=500))
        result = run_tool(
            '--run_id', fast, env=tool_env(tmp_path / 'tmp', MLFLOW_TRACKING_URI=proxy.url)
        )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if 'left RUNNING by a dead' in line]
    assert warnings == [
        'reproduce_run.py: warning: could not look for runs left RUNNING by a dead tool: '
        'the tracking server answered HTTP 500'
    ]


def test_past_the_experiment_limit_the_destinations_are_searched_first(own_store, monkeypatch):
    """The newest LEFTOVER_EXPERIMENT_LIMIT experiments, and when there are
    more, --experiment-name's and the reference's first."""
    monkeypatch.setattr(reproduce_run, 'LEFTOVER_EXPERIMENT_LIMIT', 3)
    c = client()
    made = []
    for k in range(6):
        time.sleep(0.01)  # creation times in that order
        made.append(c.create_experiment(f'e{k}'))
    oldest, old, *newest = made
    reference = c.create_run(old).info.run_id
    session = types.SimpleNamespace(client=c, options=reproduce_run.Options(experiment_name='e0'))
    looked_at = reproduce_run.leftover_experiment_ids(session, [reference])
    assert looked_at == [oldest, old, newest[-1]]
    monkeypatch.setattr(reproduce_run, 'LEFTOVER_EXPERIMENT_LIMIT', 10)
    assert sorted(reproduce_run.leftover_experiment_ids(session, [reference])) == sorted(
        ['0', oldest, old, *newest]
    )


def test_a_run_left_open_by_a_tool_that_exited_is_not_said_to_have_died(
    mlflow_server, reference, tmp_path
):
    """The tool exited (its folder removed) while the server failed to close
    its run: the next invocation closes it, saying only what is known."""
    fast = reference('slow', '-P', 'seconds=1')
    env = tool_env(tmp_path / 'tmp', REPRODUCE_RUN_CLOSE_TIMEOUT='1')
    with proxy_in_front_of(mlflow_server) as proxy:
        proxy.add(Rule('runs/update', status=503))
        failing = {'MLFLOW_TRACKING_URI': proxy.url, 'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '0'}
        first = run_tool('--run_id', fast, env={**env, **failing})
    assert 'is left RUNNING' in first.stderr.splitlines()[-1]
    [left] = [r for r in reproductions_of(fast) if r.info.status == 'RUNNING']
    assert list((tmp_path / 'tmp').iterdir()) == []

    result = clean_only('Default', env)  # the reference's experiment, and so its reproduction's

    assert result.returncode == 0, result.stderr
    closed = client().get_run(left.info.run_id)
    assert closed.info.status == 'KILLED'
    assert closed.data.tags['mlflow.note.content'].endswith(f'\n\n{TOOL_GONE}')
    owner = left.data.tags['reproduce.owner']
    assert f'closed run {left.info.run_id} of {owner} as KILLED: {TOOL_GONE}' in result.stderr


def unshare_refused() -> str | None:
    """Why a PID namespace of its own cannot be made here, or None."""
    if shutil.which('unshare') is None:
        return 'no unshare command on this machine'
    probe = ('unshare', '--pid', '--fork', '--mount-proc', 'true')
    done = subprocess.run(probe, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode:
        return f'`{" ".join(probe)}` is refused here: {done.stderr.strip()}'
    return None


def in_another_namespace(pids: list[int]) -> list[int]:
    return [p for p in pids if reproduce_run.pid_namespace(p) != reproduce_run.pid_namespace()]


@pytest.mark.slow
def test_a_tool_of_another_pid_namespace_is_never_judged_dead(samples_repo, tmp_path):
    """Two containers of one host share its name: the tool in one, PID 1
    there, is neither ended nor cleaned up by the other, alive or dead;
    only --reap-after closes its run."""
    why = unshare_refused()
    if why:
        pytest.skip(why)
    tmp_dir = tmp_path / 'tmp'
    env = tool_env(tmp_dir)
    slow = slow_reference(samples_repo)
    argv = ('--run_id', slow)
    inner = subprocess.Popen(
        ('unshare', '--pid', '--fork', '--mount-proc', sys.executable, str(SCRIPT), *argv),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: [r for r in reproductions_of(slow) if ticking(r)], 180, 'a tick')
        [run] = reproductions_of(slow)
        host, pid, _, namespace = run.data.tags['reproduce.owner'].split(':', 3)
        assert (host, pid) == (HOST, '1') and namespace != NAMESPACE
        projects = in_another_namespace(marked_processes(1))
        [folder] = tmp_dir.glob('reproduce_run-1-*')

        result = clean_only('Default', env)  # the reference's experiment, and so its reproduction's

        assert result.returncode == 0, result.stderr
        assert client().get_run(run.info.run_id).info.status == 'RUNNING'
        assert projects and not any(process_gone(p) for p in projects)
        assert folder.exists()
        assert 'dead reproducing tool' not in result.stderr and run.info.run_id not in result.stderr
    finally:
        os.killpg(inner.pid, signal.SIGKILL)  # its PID 1 gone, the namespace's processes go
        inner.wait()
    wait_for(lambda: all(process_gone(p) for p in projects), 30, 'the namespace to end')

    result = clean_only('Default', env)
    assert result.returncode == 0, result.stderr
    assert client().get_run(run.info.run_id).info.status == 'RUNNING'
    assert folder.exists()

    result = clean_only('Default', env, '--reap-after', '1s')
    assert result.returncode == 0, result.stderr
    closed = client().get_run(run.info.run_id)
    assert closed.info.status == 'KILLED'
    assert closed.data.tags['mlflow.note.content'].startswith(
        'RUNNING longer than --reap-after (1 s)'
    )


# --- leftovers in the reports of groups, and a bisection killed -------------------


def dead_owner() -> str:
    """The reproduce.owner of a tool that ran on this host and is gone."""
    proc = subprocess.Popen(('sleep', '300'))
    owner = owner_of(proc.pid, start_time(proc.pid))
    proc.kill()
    proc.wait()
    return owner


@pytest.mark.parametrize(
    ('owner', 'gone'),
    [
        pytest.param(lambda: owner_of(os.getpid(), start_time(os.getpid())), False, id='alive'),
        pytest.param(dead_owner, True, id='dead'),
        pytest.param(lambda: dead_owner().replace(HOST, 'elsewhere.example', 1), False, id='host'),
        pytest.param(lambda: dead_owner() + '1', False, id='another-pid-namespace'),
        pytest.param(
            lambda: dead_owner().replace(NAMESPACE, f'{"10"[NAMESPACE[0] == "1"]}{NAMESPACE[1:]}'),
            False,
            id='another-boot',
        ),
        pytest.param(lambda: dead_owner().rsplit(':', 2)[0], False, id='previous-version'),
        pytest.param(
            lambda: dead_owner().replace(NAMESPACE, 'unknown:0'), False, id='namespace-unknown'
        ),
        pytest.param(lambda: '', False, id='none'),
    ],
)
def test_tool_gone(owner, gone):
    """Only a tool of this host, boot and PID namespace is judged dead."""
    assert (reproduce_run._tool_here_alive(owner()) is False) is gone


def artifact(run_id: str, path: str, where: Path) -> dict:
    return json.loads(Path(client().download_artifacts(run_id, path, str(where))).read_text())


def test_a_batch_parent_run_lists_the_leftovers_closed_before_it(reference, tmp_path):
    name, experiment_id = experiment()
    owner = dead_owner()
    left = running_run(experiment_id, owner)
    fast = [reference('slow', '-P', 'seconds=1'), reference('history')]  # made by other tests too

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
            'message': f'closed run {left} of {owner} as KILLED: {TOOL_GONE}',
        }
    ]
    assert closed.data.tags['mlflow.note.content'] == TOOL_GONE  # no folder of it was left

    def theirs(leftovers: list[dict]) -> list[dict]:
        return [item for item in leftovers if item['owner'] == owner]

    assert theirs(json.loads(result.stdout)['leftovers']) == expected
    parent, children = batch_runs(name)
    assert len(children) == 2
    summary = artifact(parent.info.run_id, 'reproduce/summary.json', tmp_path)
    assert theirs(summary['leftovers']) == expected
    description = parent.data.tags['mlflow.note.content']
    assert f'- Leftover of a dead tool: closed run {left} of {owner} as KILLED' in description

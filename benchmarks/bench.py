#!/usr/bin/env python3
"""Side-by-side benchmarks of reproduce_run.py, for a noisy shared machine.

    python benchmarks/bench.py [--rounds 5] [--fast-rounds 7] [--metrics 300] [--steps 20]
                               [--judge-rounds 3] [--judge-metrics 10] [--judge-steps 50000]
                               [--batch-rounds 2] [--batch-seconds 6] [--breakdown-rounds 3]
                               [--skip-startup] [--skip-overhead] [--skip-breakdown]
                               [--skip-histories] [--skip-compare-to] [--skip-judging]
                               [--bisect-rounds 1] [--bisect-seconds 3]
                               [--selection-rounds 1]
                               [--skip-batch] [--skip-leftovers] [--skip-bisect]
                               [--skip-explain] [--skip-selection] [--skip-server]

Every comparison runs its alternatives interleaved (A B A B ...) after one
untimed warm-up of each, and reports medians and the ratio of the medians:
on a machine whose speed drifts, ratios measured side by side in one run are
what we report, not absolute seconds from different runs.

1. Start-up: `reproduce_run.py --help` and an argument error against
   `python -c "import mlflow"` (and a bare interpreter, for scale).
2. Overhead: `python -m mlflow run <sample> --env-manager local` against
   `reproduce_run.py --run_id <reference>` on the sklearn_regression sample,
   in a private git repository and sqlite store.
3. Breakdown: the same two, each phase timed inside the process (imports,
   store, git, run creation, the project, histories, verdict, interpreter
   exit), as a table of milliseconds.
4. History reading: reproduce_run.read_histories (concurrent) against a plain
   sequential loop of MlflowClient.get_metric_history, on an sqlite store and
   on a real `mlflow server` on 127.0.0.1.
5. --compare-to against a `python -c` that reads both runs and every history.
6. Judging: reproduce_run.judge on two equal runs of a million points in all
   against reading them (a get_metric_history loop; over HTTP also the tool's
   concurrent read), and the tool's peak memory for that --compare-to.
7. Batch: four reproductions of the `slow` sample with --jobs 2 against
   --jobs 1, and the tool process's peak memory in each.
8. Leftovers: the start-up check for what dead tools left
   (reproduce_run.close_leftovers) on a store of 1,000 experiments (as many
   as it looks at) and 10,000 reproductions against an empty store, on sqlite
   and on a real `mlflow server`.
9. Bisect: --bisect over 32 commits, one of which changes the metric, with
   --jobs 3 against --jobs 1; the probes each made.
10. --explain: 8 packages differ between the reference's environment and the
    reproduction's, one of them moves the metric: the probes it takes and
    the wall time.
11. Selection: `--runs-file` of 10,000 run IDs `--dry-run` against a plain
    get_run loop (over 1,000 of them, times 10), on a real `mlflow server`;
    the tool's peak memory at 100 and at 10,000 selected runs.  Then
    `--from-experiment` and `--runs-file` of the same 10,000 runs `--dry-run`
    against a plain paged search_runs of them, on the server and on a copy
    of its sqlite store, with the peak memory of each.

Everything runs in temporary folders that are removed at the end; every
process started here is stopped by its ID.  Progress goes to standard error,
the Markdown tables of results to standard output.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

# The tests' helpers (tests/helpers.py), and the tool they import.
sys.path[:0] = [str(Path(__file__).resolve().parent.parent / d) for d in ('', 'tests')]
from helpers import (  # noqa: E402
    RUN_ID_LOG_RE,
    SCRIPT,
    TINY,
    add_commits,
    build_repo,
    build_wheel,
    fill_store,
    git,
    make_repo,
    pip_target,
    start_mlflow_server,
    stop,
)

import reproduce_run  # noqa: E402

SAMPLE = 'sklearn_regression'

PROCESS_TIMEOUT = 600.0  # seconds for one timed command
LOG_BATCH_LIMIT = 1000  # MLflow's maximum number of metrics in one log_batch


class BenchError(Exception):
    """A measurement could not be made: one line for the user."""


def progress(message: str) -> None:
    print(f'bench: {message}', file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Results.


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Times of a baseline A and a candidate B, taken in the same rounds."""

    section: str
    baseline: str
    candidate: str
    a: tuple[float, ...]
    b: tuple[float, ...]

    @property
    def a_median(self) -> float:
        return statistics.median(self.a)

    @property
    def b_median(self) -> float:
        return statistics.median(self.b)

    @property
    def ratio(self) -> float:
        """B/A of the medians."""
        return self.b_median / self.a_median

    @property
    def round_ratios(self) -> list[float]:
        """B/A within each round, where A and B ran next to each other."""
        return [b / a for a, b in zip(self.a, self.b, strict=True)]


def markdown_table(rows: Sequence[Comparison]) -> str:
    headers = [
        'section',
        'A (baseline)',
        'B (candidate)',
        'rounds',
        'A median s',
        'B median s',
        'B/A',
        'B/A per round (min-max)',
        'B-A s',
    ]
    body = []
    for c in rows:
        ratios = c.round_ratios
        body.append(
            [
                c.section,
                c.baseline,
                c.candidate,
                str(len(c.a)),
                f'{c.a_median:.3f}',
                f'{c.b_median:.3f}',
                f'{c.ratio:.3f}',
                f'{min(ratios):.3f}-{max(ratios):.3f}',
                f'{c.b_median - c.a_median:+.3f}',
            ]
        )
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '|'.join(' --- ' for _ in headers) + '|']
    lines += ['| ' + ' | '.join(row) + ' |' for row in body]
    return '\n'.join(lines)


def interleave(
    alternatives: Sequence[Callable[[], float]],
    rounds: int,
    warmup: bool = True,
) -> list[list[float]]:
    """Run the alternatives A B C A B C ..., each returning its own time;
    one untimed round first (caches, .pyc files, lazily created tables)."""
    if warmup:
        for alternative in alternatives:
            alternative()
    times: list[list[float]] = [[] for _ in alternatives]
    for r in range(rounds):
        for i, alternative in enumerate(alternatives):
            times[i].append(alternative())
        progress(f'  round {r + 1}/{rounds}: ' + ', '.join(f'{t[-1]:.3f}s' for t in times))
    return times


# ---------------------------------------------------------------------------
# Processes: each started in its own session, so that it and whatever it
# starts can be stopped together by its process ID.


def run_timed(
    cmd: Sequence[str],
    env: Mapping[str, str],
    cwd: Path | str,
    expect: int = 0,
    expect_stderr: str | None = None,
) -> tuple[float, str]:
    """(wall time in seconds, standard error) of one command, which must end
    with the expected exit status."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=PROCESS_TIMEOUT)
    except BaseException:
        stop(proc)
        raise
    elapsed = time.perf_counter() - start
    if proc.returncode != expect or (expect_stderr and expect_stderr not in err):
        raise BenchError(
            f'{" ".join(cmd)} exited with {proc.returncode} (expected {expect}):\n'
            f'{(out + err)[-3000:]}',
        )
    return elapsed, err


def base_env(tracking_uri: str | None = None) -> dict[str, str]:
    """This Python first on PATH, so that a project's `python` is this one and
    not a version manager's shim: reproduce_run.py does the same for the
    project it launches, and `mlflow run` must get the same treatment."""
    env = dict(os.environ)
    env['PATH'] = os.pathsep.join((os.path.dirname(sys.executable), env.get('PATH', '')))
    env.pop('MLFLOW_TRACKING_URI', None)
    if tracking_uri:
        env['MLFLOW_TRACKING_URI'] = tracking_uri
    return env


# ---------------------------------------------------------------------------
# 1. Start-up.

_IMPORTS_MLFLOW_CHECK = """
import runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
except SystemExit:
    pass
sys.__stdout__.flush()
imported = any(m == 'mlflow' or m.startswith('mlflow.') for m in sys.modules)
print('\\nIMPORTED_MLFLOW=' + str(imported))
"""


def imports_mlflow(args: Sequence[str], env: Mapping[str, str], cwd: Path) -> bool:
    """Whether reproduce_run.py imports mlflow when run with these arguments."""
    proc = subprocess.run(
        (sys.executable, '-c', _IMPORTS_MLFLOW_CHECK, str(SCRIPT), *args),
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=PROCESS_TIMEOUT,
    )
    match = re.search(r'IMPORTED_MLFLOW=(True|False)', proc.stdout)
    if not match:
        raise BenchError(f'cannot tell what {args} imports:\n{proc.stderr[-2000:]}')
    return match.group(1) == 'True'


def bench_startup(rounds: int, notes: list[str]) -> list[Comparison]:
    progress(f'start-up: {rounds} rounds of import mlflow / --help / bad id / bare python')
    with tempfile.TemporaryDirectory(prefix='bench-startup-') as tmp:
        cwd = Path(tmp)
        env = base_env()
        py = sys.executable
        commands: list[tuple[Sequence[str], int, str | None]] = [
            ((py, '-c', 'import mlflow'), 0, None),
            ((py, str(SCRIPT), '--help'), 0, None),
            ((py, str(SCRIPT), '--run_id', 'bad id'), 2, 'expected an MLflow run ID'),
            ((py, '-c', 'pass'), 0, None),
        ]
        alternatives = [
            (lambda c=c, e=e, s=s: run_timed(c, env, cwd, expect=e, expect_stderr=s)[0])
            for c, e, s in commands
        ]
        mlflow_t, help_t, bad_t, bare_t = interleave(alternatives, rounds)
        for label, args in (('--help', ['--help']), ('an argument error', ['--run_id', 'bad id'])):
            imported = imports_mlflow(args, env, cwd)
            notes.append(
                f'reproduce_run.py {"imports" if imported else "does not import"} '
                f'mlflow for {label}'
            )
    return [
        Comparison(
            'start-up',
            'python -c "import mlflow"',
            'reproduce_run.py --help',
            tuple(mlflow_t),
            tuple(help_t),
        ),
        Comparison(
            'start-up',
            'python -c "import mlflow"',
            "reproduce_run.py --run_id 'bad id'",
            tuple(mlflow_t),
            tuple(bad_t),
        ),
        Comparison(
            'start-up',
            'python -c "import mlflow"',
            'python -c pass (for scale)',
            tuple(mlflow_t),
            tuple(bare_t),
        ),
    ]


# The recorder's cost at start_run(), measured in one training process: the
# provider registered as MLflow registers the entry point's class, turned on and
# off by REPRODUCE_RUN_RECORD in turn, its once-per-process environment cache
# cleared before each run (each run pays for everything, as a process's first does).
_RECORDER_HARNESS = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import mlflow
import reproduce_run
from mlflow.tracking.context.registry import _run_context_provider_registry

_run_context_provider_registry.register(reproduce_run.RunRecorder)
mlflow.set_experiment('recorder')


def one(on):
    os.environ['REPRODUCE_RUN_RECORD'] = '1' if on else '0'
    reproduce_run.recorded_environment.cache_clear()
    started = time.perf_counter()
    mlflow.start_run()
    mlflow.end_run()
    return time.perf_counter() - started


one(True), one(False)  # tables and caches
times = [(one(False), one(True)) for _ in range(int(sys.argv[2]))]
print(json.dumps(times))
"""


def bench_recorder(rounds: int, notes: list[str]) -> list[Comparison]:
    progress(f'recorder: {rounds} start_run() + end_run() with the recorder off, then on')
    with tempfile.TemporaryDirectory(prefix='bench-recorder-') as tmp:
        repo, _ = build_repo(Path(tmp), {'train.py': _RECORDER_HARNESS})
        env = base_env(f'sqlite:///{Path(tmp) / "mlflow.db"}')
        proc = subprocess.run(
            (sys.executable, 'train.py', str(SCRIPT.parent), str(rounds)),
            cwd=repo / 'tiny',
            env=env,
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT,
        )
        if proc.returncode:
            raise BenchError(f'the recorder harness failed: {proc.stderr.strip()[-300:]}')
        off, on = zip(*json.loads(proc.stdout.splitlines()[-1]), strict=True)
    notes.append(
        'recorder: one git process (status) and the package folders read, per run; '
        'a clean work tree of one file, against sqlite'
    )
    return [Comparison('recorder', 'start_run() + end_run()', 'the same, recorder on', off, on)]


# ---------------------------------------------------------------------------
# 2. Overhead of the tool against plain `mlflow run`.


def make_reference(mlflow_run: Sequence[str], env: Mapping[str, str], cwd: Path) -> str:
    """Run a sample with `mlflow run` and return its run ID."""
    _, err = run_timed(mlflow_run, {**env, 'MLFLOW_LOGGING_LEVEL': 'INFO'}, cwd)
    match = RUN_ID_LOG_RE.search(err)
    if not match:
        raise BenchError(f'no run ID in the output of mlflow run:\n{err[-2000:]}')
    return match.group(1)


def bench_overhead(rounds: int, notes: list[str]) -> list[Comparison]:
    progress(f'overhead: {rounds} rounds of mlflow run / reproduce_run.py on {SAMPLE}')
    with tempfile.TemporaryDirectory(prefix='bench-overhead-') as tmp:
        repo = make_repo(Path(tmp) / 'repo')
        store = Path(tmp) / 'store'
        store.mkdir()
        uri = f'sqlite:///{store / "mlflow.db"}'
        env = base_env(uri)
        project = str(repo / SAMPLE)
        mlflow_run = (sys.executable, '-m', 'mlflow', 'run', project, '--env-manager', 'local')

        # The reference run (also the warm-up of `mlflow run`; creates the store).
        reference = make_reference(mlflow_run, env, store)
        progress(f'  reference run {reference}')
        tool = (sys.executable, str(SCRIPT), '--run_id', reference)
        run_timed(tool, env, store)  # warm-up: must find the runs equal (exit 0)
        plain_t, tool_t = interleave(
            [lambda: run_timed(mlflow_run, env, store)[0], lambda: run_timed(tool, env, store)[0]],
            rounds,
            warmup=False,
        )
    comparison = Comparison(
        'overhead',
        f'mlflow run {SAMPLE}',
        'reproduce_run.py --run_id <ref>',
        tuple(plain_t),
        tuple(tool_t),
    )
    notes.append(
        f'overhead of reproduce_run.py over plain `mlflow run`: '
        f'{comparison.b_median - comparison.a_median:+.2f} s per reproduction '
        f'(medians {comparison.b_median:.2f} s vs {comparison.a_median:.2f} s)'
    )
    return [comparison]


# ---------------------------------------------------------------------------
# 3. Where the time of one reproduction goes, against a bare `mlflow run`.

# Runs reproduce_run.py or `mlflow run` in this interpreter with a timer around
# each phase, and writes {phase: seconds} as JSON.  Wrapping costs a few
# microseconds a call: the phases are what the tool does, not what it would
# do under a profiler (cProfile sees only the main thread, and the reproduction
# runs in a worker thread).
_BREAKDOWN_HARNESS = """
import importlib.util, json, sys, threading, time
T0, STARTED = time.perf_counter(), time.time()
out, which, sys.argv = sys.argv[1], sys.argv[2], sys.argv[3:]
phases = {}
lock = threading.Lock()

def add(name, seconds):
    with lock:
        phases[name] = phases.get(name, 0.0) + seconds

def timed(name, fn, main_thread_only=False):
    def wrapper(*args, **kwargs):
        if main_thread_only and threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            add(name, time.perf_counter() - start)
    return wrapper

start = time.perf_counter()
import mlflow
add('import mlflow', time.perf_counter() - start)
code = 0
if which == 'tool':
    spec = importlib.util.spec_from_file_location('reproduce_run', sys.argv[0])
    m = importlib.util.module_from_spec(spec)
    sys.modules['reproduce_run'] = m
    start = time.perf_counter()
    spec.loader.exec_module(m)
    add('import reproduce_run', time.perf_counter() - start)
    mlflow.MlflowClient = timed('store open', mlflow.MlflowClient, main_thread_only=True)
    for name in ('read_reference', 'checkout', 'make_plan', 'check_command',
                 'create_reproduced_run', 'log_reproduced_params', 'run_project',
                 'start_project', 'registrations_of',
                 'judge_reproduction', 'read_histories', 'judge', 'record_verdict',
                 'reproduce_one', 'invoke', 'render', 'main'):
        setattr(m, name, timed(name, getattr(m, name)))
    m.Job.wait = timed('project', m.Job.wait)
    code = m.main(sys.argv[1:])
else:
    from mlflow.projects import submitted_run
    import mlflow.projects
    submitted_run.LocalSubmittedRun.wait = timed('project', submitted_run.LocalSubmittedRun.wait)
    mlflow.projects.run = timed('mlflow.projects.run', mlflow.projects.run)
    start = time.perf_counter()
    from mlflow.cli import cli
    add('import mlflow.cli', time.perf_counter() - start)
    try:
        timed('main', cli.main)(args=sys.argv, prog_name='mlflow')
    except SystemExit as e:
        code = e.code or 0
add('in process', time.perf_counter() - T0)
phases['started at'], phases['ended at'] = STARTED, time.time()
with open(out, 'w') as f:
    json.dump(phases, f)
sys.exit(code)
"""

# (row label, how it is computed from the phases of the tool).  Exclusive
# times: a parent's row holds only what its named children do not.
_TOOL_ROWS: tuple[tuple[str, Callable[[Mapping[str, float]], float]], ...] = (
    ('import mlflow', lambda p: p['import mlflow']),
    ('import reproduce_run (its own imports)', lambda p: p['import reproduce_run']),
    ('store open (MlflowClient(): sqlalchemy, alembic, engine)', lambda p: p['store open']),
    ('read the reference run', lambda p: p['read_reference']),
    ('git fetch of the commit', lambda p: p['checkout']),
    ('plan (MLproject, params, command check)', lambda p: p['make_plan'] + p['check_command']),
    (
        'create run + params + tags',
        lambda p: p['create_reproduced_run'] + p['log_reproduced_params'],
    ),
    ('start the project (command built, bash started)', lambda p: p['start_project']),
    (
        'close run, end leftover processes',
        lambda p: p['run_project'] - p['start_project'] - p['project'],
    ),
    ('registrations (scratch registry read)', lambda p: p['registrations_of']),
    ('history reads (+ get_run)', lambda p: p['judge_reproduction'] - p['judge']),
    ('judge', lambda p: p['judge']),
    ('record verdict (tags, artifacts)', lambda p: p['record_verdict']),
    (
        'rest of reproduce_one (temp folders, report)',
        lambda p: (
            p['reproduce_one']
            - sum(
                p[k]
                for k in (
                    'read_reference',
                    'checkout',
                    'make_plan',
                    'check_command',
                    'create_reproduced_run',
                    'log_reproduced_params',
                    'run_project',
                    'registrations_of',
                    'judge_reproduction',
                    'record_verdict',
                )
            )
        ),
    ),
    (
        'rest of invoke (thread, checks, cleanup)',
        lambda p: p['invoke'] - p['store open'] - p['reproduce_one'],
    ),
    ('render + rest of main', lambda p: p['main'] - p['invoke']),
)


@dataclasses.dataclass(frozen=True)
class Breakdown:
    rows: list[tuple[str, float | None, float]]  # label, mlflow run s, tool s; medians
    rounds: int


def run_phases(
    args: Sequence[str], which: str, env: Mapping[str, str], cwd: Path
) -> dict[str, float]:
    """Phases of one run under the harness, plus the whole process's wall time."""
    with tempfile.NamedTemporaryFile('r', prefix='phases-', dir=cwd) as out:
        cmd = (sys.executable, '-c', _BREAKDOWN_HARNESS, out.name, which, *args)
        before = time.time()
        wall, _ = run_timed(cmd, env, cwd)
        after = time.time()
        phases = json.loads(out.read())
    phases['whole process'] = wall
    phases['interpreter start'] = phases['started at'] - before
    # Mostly the interpreter's final garbage collections, after main returned.
    phases['interpreter exit'] = after - phases['ended at']
    return phases


def _median_of(
    rounds: Sequence[Mapping[str, float]], value: Callable[[Mapping[str, float]], float]
) -> float:
    return statistics.median(value(p) for p in rounds)


def bench_breakdown(rounds: int, notes: list[str]) -> Breakdown:
    progress(f'breakdown: {rounds} rounds of mlflow run / reproduce_run.py, phases timed')
    with tempfile.TemporaryDirectory(prefix='bench-breakdown-') as tmp:
        repo = make_repo(Path(tmp) / 'repo')
        store = Path(tmp) / 'store'
        store.mkdir()
        env = base_env(f'sqlite:///{store / "mlflow.db"}')
        project = str(repo / SAMPLE)
        reference = make_reference(
            (sys.executable, '-m', 'mlflow', 'run', project, '--env-manager', 'local'), env, store
        )
        plain: list[dict[str, float]] = []
        tool: list[dict[str, float]] = []

        def plain_round() -> float:
            plain.append(
                run_phases(('run', project, '--env-manager', 'local'), 'mlflow', env, store)
            )
            return plain[-1]['whole process']

        def tool_round() -> float:
            tool.append(run_phases((str(SCRIPT), '--run_id', reference), 'tool', env, store))
            return tool[-1]['whole process']

        interleave([plain_round, tool_round], rounds)
    plain, tool = plain[1:], tool[1:]  # not the warm-up

    def both(label: str, value: Callable[[Mapping[str, float]], float]) -> tuple[str, float, float]:
        return label, _median_of(plain, value), _median_of(tool, value)

    def outside_project(p: Mapping[str, float]) -> float:
        return p['whole process'] - p['project']

    rows: list[tuple[str, float | None, float]] = [
        both('whole process (wall)', lambda p: p['whole process']),
        both('the project itself (bash + training)', lambda p: p['project']),
        both('everything but the project', outside_project),
        both('interpreter start', lambda p: p['interpreter start']),
        both('interpreter exit (final garbage collections)', lambda p: p['interpreter exit']),
        both('import mlflow', lambda p: p['import mlflow']),
    ]
    rows += [(label, None, _median_of(tool, value)) for label, value in _TOOL_ROWS[1:]]
    rows.append(
        (
            'mlflow run: CLI import + store + run + its bookkeeping',
            _median_of(plain, lambda p: p['in process'] - p['import mlflow'] - p['project']),
            0.0,
        )
    )
    notes.append(
        f'breakdown: outside the project, the tool costs '
        f'{1000 * _median_of(tool, outside_project):.0f} ms and `mlflow run` '
        f'{1000 * _median_of(plain, outside_project):.0f} ms'
    )
    return Breakdown(rows, len(tool))


def breakdown_table(breakdown: Breakdown) -> str:
    header = f'| cost (median of {breakdown.rounds} rounds) | mlflow run ms | reproduce_run.py ms |'
    lines = [header, '| --- | --- | --- |']
    for label, plain, tool in breakdown.rows:
        shown = '' if plain is None else f'{1000 * plain:.0f}'
        lines.append(f'| {label} | {shown} | {1000 * tool:.0f} |')
    return '\n'.join(lines)


# ---------------------------------------------------------------------------
# 4. Reading metric histories.


def make_runs(client: Any, metrics: int, steps: int, equal: bool = False) -> list[str]:
    """Two runs with `metrics` metrics of `steps` steps each, logged in batches
    of one metric at a time (the fastest way into an sqlite store); equal runs
    make the judge walk every point, differing ones stop it at the first."""
    from mlflow.entities import Metric

    experiment_id = client.create_experiment(f'bench-{time.time_ns()}')
    run_ids = []
    for n in range(2):
        run_id = client.create_run(experiment_id, run_name=f'bench-{n}').info.run_id
        now = int(time.time() * 1000)
        offset = 0 if equal else n
        points = [
            Metric(f'metric_{m:04d}', float(m * steps + s + offset), now + s, s)
            for m in range(metrics)
            for s in range(steps)
        ]
        for i in range(0, len(points), LOG_BATCH_LIMIT):
            client.log_batch(run_id, metrics=points[i : i + LOG_BATCH_LIMIT])
        client.set_terminated(run_id)
        run_ids.append(run_id)
    return run_ids


def sequential_histories(client: Any, runs: Sequence[Any]) -> list[dict[str, list[Any]]]:
    """The plain way: one get_metric_history after another, same result shape
    (and the same sorting) as read_histories."""
    result = []
    for run in runs:
        histories = {}
        for key in run.data.metrics:
            history = sorted(
                client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp)
            )
            histories[key] = [(m.step, m.value, m.timestamp) for m in history]
        result.append(histories)
    return result


def bench_histories(
    label: str,
    tracking_uri: str,
    rounds: int,
    metrics: int,
    steps: int,
    module: ModuleType,
    notes: list[str],
) -> Comparison:
    from mlflow import MlflowClient

    progress(f'histories ({label}): logging 2 runs x {metrics} metrics x {steps} steps')
    client = MlflowClient(tracking_uri=tracking_uri)
    # The client prints links to new runs on standard output: keep it for the table.
    with contextlib.redirect_stdout(sys.stderr):
        run_ids = make_runs(client, metrics, steps)
    runs = tuple(client.get_run(run_id) for run_id in run_ids)
    if any(len(run.data.metrics) != metrics for run in runs):
        raise BenchError(f'{label}: the runs do not have {metrics} metrics each')

    expected = sequential_histories(client, runs)
    if [len(h) for h in expected[0].values()] != [steps] * metrics:
        raise BenchError(f'{label}: the histories do not have {steps} steps each')
    if module.read_histories(client, runs, last_only=False) != expected:
        raise BenchError(f'{label}: read_histories and the sequential loop disagree')

    def timed(read: Callable[[], object]) -> float:
        start = time.perf_counter()
        read()
        return time.perf_counter() - start

    progress(f'histories ({label}): {rounds} rounds of sequential / read_histories')
    sequential_t, concurrent_t = interleave(
        [
            lambda: timed(lambda: sequential_histories(client, runs)),
            lambda: timed(lambda: module.read_histories(client, runs, last_only=False)),
        ],
        rounds,
    )
    comparison = Comparison(
        f'histories, {label}',
        f'sequential get_metric_history ({2 * metrics} calls)',
        'read_histories (threads only over HTTP)',
        tuple(sequential_t),
        tuple(concurrent_t),
    )
    notes.append(
        f'histories, {label}: {1000 * comparison.a_median / (2 * metrics):.1f} ms '
        f'per get_metric_history call in turn, '
        f'{1000 * comparison.b_median / (2 * metrics):.1f} ms per metric '
        f'with read_histories'
    )
    return comparison


@contextlib.contextmanager
def mlflow_server(where: Path) -> Iterator[str]:
    """The tests' tracking server on 127.0.0.1 (its own sqlite store, under
    their watchdog), with two workers; stopped by its process ID (and group)
    whatever happens."""
    try:
        server = start_mlflow_server(where, workers=2)
    except AssertionError as e:
        raise BenchError(f'mlflow server did not start:\n{e}') from None
    try:
        progress(f'  mlflow server (PID {server.proc.pid}) ready at {server.url}')
        yield server.url
    finally:
        stop(server.proc)


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    """An sqlite store puts the artifacts of new experiments under ./mlruns."""
    saved = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(saved)


def quiet_mlflow() -> None:
    """Import mlflow in this process with its logger quietened: it would say
    on standard error how it creates each store's tables."""
    import logging

    import mlflow  # noqa: F401  (configures its logger, which is then quietened)

    logging.getLogger('mlflow').setLevel(logging.WARNING)
    logging.getLogger('alembic').setLevel(logging.WARNING)


def bench_all_histories(
    rounds: int,
    metrics: int,
    steps: int,
    server: bool,
    notes: list[str],
) -> list[Comparison]:
    quiet_mlflow()
    module = reproduce_run
    results = []
    with tempfile.TemporaryDirectory(prefix='bench-histories-') as tmp:
        store = Path(tmp) / 'sqlite'
        store.mkdir()
        with chdir(store):
            results.append(
                bench_histories(
                    'sqlite',
                    f'sqlite:///{store / "mlflow.db"}',
                    rounds,
                    metrics,
                    steps,
                    module,
                    notes,
                )
            )
        if server:
            where = Path(tmp) / 'server'
            where.mkdir()
            with chdir(where), mlflow_server(where) as url:
                results.append(
                    bench_histories(
                        'mlflow server --workers 2',
                        url,
                        rounds,
                        metrics,
                        steps,
                        module,
                        notes,
                    )
                )
    return results


# ---------------------------------------------------------------------------
# Peak memory of the tool's own process.

# Runs reproduce_run.py in this interpreter and writes the process's own peak
# resident set (KiB) to a file: the projects it starts are other processes, and
# do not count.  VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a
# child of this (large) benchmark process would report the benchmark's peak.
_MAXRSS_WRAPPER = """
import re, runpy, sys
out, sys.argv = sys.argv[1], sys.argv[2:]
code = 0
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
with open(out, 'w') as f:
    f.write(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))
sys.exit(code)
"""


@dataclasses.dataclass(frozen=True)
class Memory:
    """Peak resident memory of the tool's process, in MiB, one per round."""

    section: str
    what: str
    peaks: tuple[float, ...]


def memory_table(rows: Sequence[Memory]) -> str:
    lines = [
        '| section | tool process | runs | peak RSS MiB, median | max |',
        '| --- | --- | --- | --- | --- |',
    ]
    lines += [
        f'| {m.section} | {m.what} | {len(m.peaks)} | '
        f'{statistics.median(m.peaks):.0f} | {max(m.peaks):.0f} |'
        for m in rows
    ]
    return '\n'.join(lines)


def run_tool(
    args: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    expect: int = 0,
) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of the tool's own process) of one
    reproduce_run.py invocation."""
    with tempfile.NamedTemporaryFile('r', prefix='maxrss-', dir=cwd) as out:
        cmd = (sys.executable, '-c', _MAXRSS_WRAPPER, out.name, str(SCRIPT), *args)
        elapsed, _ = run_timed(cmd, env, cwd, expect=expect)
        return elapsed, int(out.read()) / 1024


def timed_call(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------
# 5. --compare-to against reading the two runs with a plain script.


def plain_compare_script(run_ids: Sequence[str], keys: Sequence[str]) -> str:
    """What --compare-to costs at the least: import mlflow, read both runs
    and every history, nothing else."""
    return (
        'import mlflow; c = mlflow.MlflowClient(); '
        + ''.join(f'c.get_run({r!r}); ' for r in run_ids)
        + f'[c.get_metric_history(r, k) for r in {tuple(run_ids)!r} '
        f'for k in {tuple(keys)!r}]'
    )


def bench_compare_to(
    rounds: int, metrics: int, steps: int, notes: list[str], memory: list[Memory]
) -> list[Comparison]:
    from mlflow import MlflowClient

    quiet_mlflow()
    progress(f'compare-to: 2 runs x {metrics} metrics x {steps} steps, {rounds} rounds')
    with tempfile.TemporaryDirectory(prefix='bench-compare-') as tmp:
        store = Path(tmp)
        uri = f'sqlite:///{store / "mlflow.db"}'
        with chdir(store), contextlib.redirect_stdout(sys.stderr):
            run_ids = make_runs(MlflowClient(tracking_uri=uri), metrics, steps)
        env = base_env(uri)
        keys = [f'metric_{m:04d}' for m in range(metrics)]
        plain = (sys.executable, '-c', plain_compare_script(run_ids, keys))
        tool = ('--run_id', run_ids[0], '--compare-to', run_ids[1])
        peaks: list[float] = []

        def tool_round() -> float:
            elapsed, peak = run_tool(tool, env, store, expect=1)  # the runs differ
            peaks.append(peak)
            return elapsed

        plain_t, tool_t = interleave([lambda: run_timed(plain, env, store)[0], tool_round], rounds)
    memory.append(
        Memory('compare-to', f'--compare-to, {metrics} metrics x {steps} steps', tuple(peaks[1:]))
    )  # not the warm-up
    comparison = Comparison(
        'compare-to',
        'python -c "get_run x2 + get_metric_history loop"',
        'reproduce_run.py --run_id R --compare-to S',
        tuple(plain_t),
        tuple(tool_t),
    )
    notes.append(
        f'compare-to: {comparison.ratio:.2f}x the plain read of both runs '
        f'(goal <= 1.1), {comparison.b_median - comparison.a_median:+.2f} s'
    )
    return [comparison]


# ---------------------------------------------------------------------------
# 6. Judging a million points against reading them.


def bench_judging_on(
    label: str,
    tracking_uri: str,
    run_ids: Sequence[str],
    rounds: int,
    module: ModuleType,
    cwd: Path,
    notes: list[str],
    memory: list[Memory],
) -> list[Comparison]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    runs = tuple(client.get_run(run_id) for run_id in run_ids)
    # The tool's own read: threads over HTTP, in turn on sqlite.
    ref, new = module.read_histories(client, runs, last_only=False)
    points = sum(len(h) for run in (ref, new) for h in run.values())
    rules = module.Rules()
    if not module.judge(ref, new, rules).equal:
        raise BenchError(f'judging, {label}: the equal runs were judged different')
    calls = sum(len(run.data.metrics) for run in runs)

    def judge_once() -> float:
        return timed_call(lambda: module.judge(ref, new, rules))

    progress(
        f'judging ({label}): {rounds} rounds of loop / read_histories / judge on {points:,} points'
    )
    loop_t, read_t, judge_t = interleave(
        [
            lambda: timed_call(lambda: sequential_histories(client, runs)),
            lambda: timed_call(lambda: module.read_histories(client, runs, last_only=False)),
            judge_once,
        ],
        rounds,
    )
    elapsed, peak = run_tool(
        ('--run_id', run_ids[0], '--compare-to', run_ids[1]), base_env(tracking_uri), cwd
    )
    memory.append(Memory(f'judging, {label}', f'--compare-to, {points:,} points', (peak,)))
    notes.append(
        f'judging, {label}: reproduce_run.py --compare-to on {points:,} points took '
        f'{elapsed:.1f} s with a peak RSS of {peak:.0f} MiB'
    )
    rows = [
        Comparison(
            f'judging, {label}',
            f'get_metric_history loop ({calls} calls, {points:,} points)',
            'reproduce_run.judge on them',
            tuple(loop_t),
            tuple(judge_t),
        )
    ]
    if module._is_http(tracking_uri):  # the tool's own test of a remote store
        rows.append(
            Comparison(
                f'judging, {label}',
                'reproduce_run.read_histories (concurrent over HTTP)',
                'reproduce_run.judge on them',
                tuple(read_t),
                tuple(judge_t),
            )
        )
    return rows


def bench_judging(
    rounds: int, metrics: int, steps: int, server: bool, notes: list[str], memory: list[Memory]
) -> list[Comparison]:
    """Log the two runs once into sqlite; the server serves a copy of that
    store, so a million points are logged once, not twice."""
    from mlflow import MlflowClient

    quiet_mlflow()
    module = reproduce_run
    results = []
    with tempfile.TemporaryDirectory(prefix='bench-judging-') as tmp:
        store = Path(tmp) / 'sqlite'
        store.mkdir()
        uri = f'sqlite:///{store / "mlflow.db"}'
        progress(
            f'judging: logging 2 equal runs x {metrics} metrics x {steps} steps '
            f'({2 * metrics * steps:,} points) with log_batch'
        )
        started = time.perf_counter()
        with chdir(store), contextlib.redirect_stdout(sys.stderr):
            run_ids = make_runs(MlflowClient(tracking_uri=uri), metrics, steps, equal=True)
        progress(f'  logged in {time.perf_counter() - started:.0f} s')
        with chdir(store):
            results += bench_judging_on(
                'sqlite', uri, run_ids, rounds, module, store, notes, memory
            )
        if server:
            where = Path(tmp) / 'server'
            where.mkdir()
            shutil.copyfile(store / 'mlflow.db', where / 'server.db')
            with chdir(where), mlflow_server(where) as url:
                results += bench_judging_on(
                    'mlflow server --workers 2', url, run_ids, rounds, module, where, notes, memory
                )
    return results


# ---------------------------------------------------------------------------
# 7. A batch: --jobs 2 against --jobs 1.

BATCH_SAMPLE = 'slow'
BATCH_RUNS = 4


def bench_batch(
    rounds: int, seconds: float, notes: list[str], memory: list[Memory]
) -> list[Comparison]:
    progress(f'batch: {BATCH_RUNS} reference runs of {BATCH_SAMPLE} -P seconds={seconds:g}')
    with tempfile.TemporaryDirectory(prefix='bench-batch-') as tmp:
        repo = make_repo(Path(tmp) / 'repo')
        store = Path(tmp) / 'store'
        store.mkdir()
        env = base_env(f'sqlite:///{store / "mlflow.db"}')
        mlflow_run = (
            sys.executable,
            '-m',
            'mlflow',
            'run',
            str(repo / BATCH_SAMPLE),
            '--env-manager',
            'local',
            '-P',
            f'seconds={seconds:g}',
        )
        references = [make_reference(mlflow_run, env, store) for _ in range(BATCH_RUNS)]
        peaks: dict[int, list[float]] = {1: [], 2: []}

        def batch(jobs: int) -> float:
            elapsed, peak = run_tool(('--run_id', *references, '--jobs', str(jobs)), env, store)
            peaks[jobs].append(peak)
            return elapsed

        progress(f'batch: {rounds} rounds of --jobs 1 / --jobs 2')
        one_t, two_t = interleave([lambda: batch(1), lambda: batch(2)], rounds)
    for jobs in (1, 2):
        memory.append(
            Memory('batch', f'--run_id x{BATCH_RUNS} --jobs {jobs}', tuple(peaks[jobs][1:]))
        )  # not the warm-up
    comparison = Comparison(
        'batch',
        f'reproduce_run.py --run_id x{BATCH_RUNS} --jobs 1 ({BATCH_SAMPLE}, {seconds:g} s each)',
        '... --jobs 2',
        tuple(one_t),
        tuple(two_t),
    )
    notes.append(
        f'batch: --jobs 2 takes {comparison.ratio:.2f}x the wall time of --jobs 1 '
        f'(goal <= 0.6); {comparison.a_median / BATCH_RUNS:.1f} s per run with '
        f'--jobs 1'
    )
    return [comparison]


# ---------------------------------------------------------------------------
# 8. The start-up check for a dead tool's leftovers.

LEFTOVER_RUNS = 10_000
LEFTOVER_LIVE = 10  # RUNNING runs of a live tool: found by the search, left alone
LEFTOVER_EXPERIMENTS = 1_000  # reproduce_run.LEFTOVER_EXPERIMENT_LIMIT: all are searched


def copy_run(db: Path, template: str, copies: int, status: str) -> None:
    """`copies` runs just like the template (its tags too), in one sqlite
    transaction: creating 10,000 runs through MLflow one by one takes minutes."""
    import sqlite3
    import uuid

    with contextlib.closing(sqlite3.connect(db)) as con, con:
        columns = [row[1] for row in con.execute('PRAGMA table_info(runs)')]
        chosen = ', '.join('?' if c in ('run_uuid', 'status') else c for c in columns)
        for _ in range(copies):
            run_id = uuid.uuid4().hex
            con.execute(
                f'INSERT INTO runs ({", ".join(columns)}) SELECT {chosen} FROM runs '
                'WHERE run_uuid = ?',
                (run_id, status, template),
            )
            con.execute(
                'INSERT INTO tags (key, value, run_uuid) SELECT key, value, ? FROM tags '
                'WHERE run_uuid = ?',
                (run_id, template),
            )


def make_leftover_store(db: Path, module: ModuleType) -> None:
    """A store of LEFTOVER_EXPERIMENTS experiments (as many as the check looks
    at), one of which holds LEFTOVER_RUNS finished reproductions of this
    host, LEFTOVER_LIVE of them RUNNING under a live tool (this process),
    each with a reproduction's tags."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f'sqlite:///{db}')
    busy = client.create_experiment('leftovers-busy')
    for k in range(LEFTOVER_EXPERIMENTS - 2):  # with Default
        client.create_experiment(f'leftovers-{k}')
    tags = {
        'mlflow.source.name': 'file:///srv/project#sub',
        'mlflow.source.type': 'PROJECT',
        'mlflow.source.git.commit': '0' * 40,
        'mlflow.project.entryPoint': 'main',
        'mlflow.project.env': 'local',
        'mlflow.project.backend': 'local',
        'mlflow.user': 'bench',
        'reproduce.reference_run_id': '0' * 32,
        'reproduce.owner': module.tool_owner(),
    }
    template = client.create_run(busy, tags=tags).info.run_id
    copy_run(db, template, LEFTOVER_RUNS - LEFTOVER_LIVE - 1, 'FINISHED')
    copy_run(db, template, LEFTOVER_LIVE, 'RUNNING')
    client.set_terminated(template)


def leftovers_check(uri: str, label: str, module: ModuleType, tmp: str) -> Callable[[], float]:
    """One start-up check against the store at uri, timed."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)  # the tool's, made before the check

    def check() -> float:
        session = module.Session(module.Options(), client, uri, {}, tmp, 'bench', module.Stop())
        start = time.perf_counter()
        cleaned = module.close_leftovers(session)
        elapsed = time.perf_counter() - start
        if any(item['kind'] == 'run' for item in cleaned):
            raise BenchError(f'leftovers ({label}): the check closed a run of a live tool')
        return elapsed

    return check


def bench_leftovers_on(
    label: str, uris: tuple[str, str], rounds: int, module: ModuleType, tmp: str
) -> Comparison:
    """uris: (an empty store, the busy one)."""
    progress(f'leftovers ({label}): {rounds} rounds of an empty / a busy store')
    checks = [leftovers_check(uri, label, module, tmp) for uri in uris]
    empty_t, busy_t = interleave(checks, rounds)
    return Comparison(
        f'leftovers, {label}',
        'close_leftovers, empty store',
        f'... {LEFTOVER_EXPERIMENTS:,} experiments, {LEFTOVER_RUNS:,} reproductions '
        f'({LEFTOVER_LIVE} RUNNING, alive)',
        tuple(empty_t),
        tuple(busy_t),
    )


def bench_leftovers(rounds: int, server: bool, notes: list[str]) -> list[Comparison]:
    from mlflow import MlflowClient

    quiet_mlflow()
    module = reproduce_run
    results = []
    with tempfile.TemporaryDirectory(prefix='bench-leftovers-') as tmp:
        empty, busy = Path(tmp, 'empty'), Path(tmp, 'busy')
        progress(
            f'leftovers: a store of {LEFTOVER_EXPERIMENTS:,} experiments and '
            f'{LEFTOVER_RUNS:,} reproductions'
        )
        for where in (empty, busy):
            where.mkdir()
        with chdir(busy), contextlib.redirect_stdout(sys.stderr):
            make_leftover_store(busy / 'server.db', module)
            MlflowClient(tracking_uri=f'sqlite:///{empty / "server.db"}').search_experiments()
        with chdir(tmp):
            uris = tuple(f'sqlite:///{where / "server.db"}' for where in (empty, busy))
            results.append(bench_leftovers_on('sqlite', uris, rounds, module, tmp))
            if server:
                with mlflow_server(empty) as empty_url, mlflow_server(busy) as busy_url:
                    results.append(
                        bench_leftovers_on(
                            'mlflow server --workers 2', (empty_url, busy_url), rounds, module, tmp
                        )
                    )
    for c in results:
        notes.append(
            f'{c.section}: the start-up check takes {1000 * c.b_median:.0f} ms on a store of '
            f'{LEFTOVER_EXPERIMENTS:,} experiments and {LEFTOVER_RUNS:,} reproductions, '
            f'{1000 * c.a_median:.0f} ms on an empty one'
        )
    return results


# 9. Bisect: 32 commits, one of which changes the metric; --jobs 1 against --jobs 3.

BISECT_COMMITS = 32
BISECT_CHANGE = 21  # the commit that doubles the metric


def bench_bisect(rounds: int, seconds: float, notes: list[str]) -> list[Comparison]:
    progress(f'bisect: {BISECT_COMMITS} commits, training {seconds:g} s each')
    with tempfile.TemporaryDirectory(prefix='bench-bisect-') as tmp:
        repo, _ = build_repo(Path(tmp), TINY)  # the tests' tiny project
        store = Path(tmp) / 'store'
        store.mkdir()
        # Its training sleeps that long at every commit after the first one.
        env = {**base_env(f'sqlite:///{store / "mlflow.db"}'), 'BISECT_TEST_SLEEP': str(seconds)}
        project = repo / 'tiny'
        mlflow_run = (sys.executable, '-m', 'mlflow', 'run', str(project), '--env-manager', 'local')
        reference = make_reference(mlflow_run, env, store)
        add_commits(repo, BISECT_COMMITS, BISECT_CHANGE)
        probes: dict[int, list[int]] = {1: [], 3: []}

        def bisect(jobs: int) -> float:
            cmd = (sys.executable, str(SCRIPT), '--run_id', reference, '--bisect')
            start = time.perf_counter()
            proc = subprocess.run(
                (*cmd, '--jobs', str(jobs), '--output', 'json', '--quiet'),
                env=env,
                cwd=store,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=PROCESS_TIMEOUT,
            )
            elapsed = time.perf_counter() - start
            if proc.returncode != 1:
                raise BenchError(f'--bisect exited with {proc.returncode}:\n{proc.stderr[-3000:]}')
            probes[jobs].append(len(json.loads(proc.stdout)['bisect']['probes']))
            return elapsed

        progress(f'bisect: {rounds} rounds of --jobs 1 / --jobs 3')
        one_t, three_t = interleave([lambda: bisect(1), lambda: bisect(3)], rounds, warmup=False)
    comparison = Comparison(
        'bisect',
        f'reproduce_run.py --bisect --jobs 1 ({BISECT_COMMITS} commits, one change)',
        '... --jobs 3',
        tuple(one_t),
        tuple(three_t),
    )
    notes.append(
        f'bisect: --jobs 3 takes {comparison.ratio:.2f}x the wall time of --jobs 1 '
        f'(goal <= 0.6); probes: {probes[1][0]} with --jobs 1, {probes[3][0]} with --jobs 3'
    )
    return [comparison]


# Stopping early (--fail-fast, --steps, --time-limit): a script that logs a
# metric each second for EARLY_STEPS seconds; DIVERGE_AT, or the step in
# diverge.txt at a commit, makes it differ from that step on.

EARLY_STEPS = 60
EARLY_COMMITS = 16
EARLY_SCRIPT = """\
import os, time
import mlflow

diverge = int(os.environ.get('DIVERGE_AT', '-1'))
if os.path.exists('diverge.txt'):
    diverge = int(open('diverge.txt').read())
with mlflow.start_run():
    for step in range(int(os.environ.get('STEPS', '60'))):
        off = 100.0 if 0 <= diverge <= step else 0.0
        mlflow.log_metric('loss', 1.0 / (step + 1) + off, step=step)
        time.sleep(1.0)
"""


def early_world(tmp: Path, env: Mapping[str, str]) -> tuple[Path, str]:
    """A repository whose remote is a bare one beside it, and a reference run
    of its script made as a person makes one: `python steps.py`."""
    git('init', '--quiet', '--bare', str(tmp / 'remote.git'), cwd=tmp)
    repo = tmp / 'repo'
    repo.mkdir()
    (repo / 'steps.py').write_text(EARLY_SCRIPT)
    git('init', '--quiet', '--initial-branch', 'main', cwd=repo)
    git('config', 'user.email', 'bench@example.invalid', cwd=repo)
    git('config', 'user.name', 'bench', cwd=repo)
    git('add', '--all', cwd=repo)
    git('commit', '--quiet', '-m', 'steps', cwd=repo)
    git('remote', 'add', 'origin', str(tmp / 'remote.git'), cwd=repo)
    git('push', '--quiet', 'origin', 'main', cwd=repo)
    proc = subprocess.run(
        (sys.executable, 'steps.py'),
        env={**env, 'STEPS': str(EARLY_STEPS)},
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    if proc.returncode:
        raise BenchError(f'the reference run failed:\n{proc.stderr[-2000:]}')
    import mlflow

    client = mlflow.MlflowClient(env['MLFLOW_TRACKING_URI'])
    [run] = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        order_by=['attributes.start_time DESC'],
        max_results=1,
    )
    return repo, run.info.run_id


def early_commits(repo: Path) -> None:
    """EARLY_COMMITS commits; the one in the middle makes `loss` diverge from step 3."""
    for k in range(1, EARLY_COMMITS + 1):
        (repo / 'notes.txt').write_text(f'note {k}\n')
        if k == EARLY_COMMITS // 2:
            (repo / 'diverge.txt').write_text('3')
        git('add', '--all', cwd=repo)
        git('commit', '--quiet', '-m', f'commit {k}', cwd=repo)
    git('push', '--quiet', 'origin', 'main', cwd=repo)


def bench_early(rounds: int, notes: list[str]) -> list[Comparison]:
    progress(f'early verdicts: a script logging a metric each second for {EARLY_STEPS} s')
    with tempfile.TemporaryDirectory(prefix='bench-early-') as tmp:
        env = {**base_env(f'sqlite:///{Path(tmp) / "mlflow.db"}'), 'STEPS': str(EARLY_STEPS)}
        repo, reference = early_world(Path(tmp), env)

        def tool(*args: str, expect: int = 0, **variables: str) -> Callable[[], float]:
            cmd = (sys.executable, str(SCRIPT), '--run_id', reference, '--quiet', *args)
            return lambda: run_timed(cmd, {**env, **variables}, tmp, expect)[0]

        pairs = [
            (
                'a reproduction that diverges at step 6',
                tool(expect=1, DIVERGE_AT='6'),
                '... with --fail-fast',
                tool('--fail-fast', expect=1, DIVERGE_AT='6'),
                0.3,
            ),
            ('a full reproduction', tool(), '... with --steps 6', tool('--steps', '6'), 0.3),
            (
                'a full reproduction (equal)',
                tool(),
                '... with --fail-fast',
                tool('--fail-fast'),
                1.05,
            ),
        ]
        results = []
        for a_name, a, b_name, b, goal in pairs:
            progress(f'early: {rounds} rounds of {a_name} / {b_name}')
            a_t, b_t = interleave([a, b], rounds, warmup=False)
            results.append(Comparison('early', a_name, b_name, tuple(a_t), tuple(b_t)))
            notes.append(
                f'early: {b_name} takes {results[-1].ratio:.2f}x {a_name} (goal <= {goal})'
            )
        early_commits(repo)
        progress(f'early: {rounds} rounds of --bisect over {EARLY_COMMITS} commits')
        bisect = ('--bisect', 'main')
        a_t, b_t = interleave(
            [tool(*bisect, '--no-fail-fast', expect=1), tool(*bisect, expect=1)], rounds, False
        )
    results.append(
        Comparison(
            'early',
            f'--bisect --no-fail-fast ({EARLY_COMMITS} commits, one diverges from step 3)',
            '--bisect (its probes fail fast)',
            tuple(a_t),
            tuple(b_t),
        )
    )
    notes.append(f'early: --bisect with early stops takes {results[-1].ratio:.2f}x (goal <= 0.6)')
    return results


# 10. --explain: 8 packages differ, one of them moves the metric.

EXPLAIN_PACKAGES = 8
EXPLAIN_CULPRIT = 5  # benchpkg5 changes the metric; the others change nothing


def explain_world(tmp: Path) -> tuple[Path, dict[str, str], dict[str, str]]:
    """Wheels of benchpkg0..7 at 1.0 and 2.0 in a find-links folder, a project
    that logs benchpkg5.VALUE, and the environments of the reference (1.0) and
    of the reproduction (2.0), each a --target folder on PYTHONPATH."""
    wheels = tmp / 'wheels'
    wheels.mkdir()
    names = [f'benchpkg{i}' for i in range(EXPLAIN_PACKAGES)]
    by_version: dict[str, list[Path]] = {'1.0': [], '2.0': []}
    for version, value in (('1.0', 1.0), ('2.0', 2.0)):
        for i, name in enumerate(names):
            code = f'VALUE = {value if i == EXPLAIN_CULPRIT else 1.0}\n'
            by_version[version].append(build_wheel(wheels, name, version, code))
    repo = tmp / 'repo'
    repo.mkdir()
    (repo / 'MLproject').write_text(
        'name: explain\nentry_points:\n  main:\n    command: "python train.py"\n'
    )
    (repo / 'train.py').write_text(
        f'import mlflow\nimport {", ".join(names)}\n'
        f'mlflow.log_metric("value", {names[EXPLAIN_CULPRIT]}.VALUE)\n'
    )
    git('init', '--quiet', cwd=repo)
    git('config', 'user.email', 'bench@example.invalid', cwd=repo)
    git('config', 'user.name', 'bench', cwd=repo)
    git('add', '--all', cwd=repo)
    git('commit', '--quiet', '-m', 'explain', cwd=repo)
    pip = {'PIP_NO_INDEX': '1', 'PIP_FIND_LINKS': str(wheels)}
    old = {**pip, 'PYTHONPATH': str(pip_target(tmp / 'old', by_version['1.0'], PROCESS_TIMEOUT))}
    new = {**pip, 'PYTHONPATH': str(pip_target(tmp / 'new', by_version['2.0'], PROCESS_TIMEOUT))}
    return repo, old, new


def run_json(args: Sequence[str], env: Mapping[str, str], cwd: Path, expect: int) -> Any:
    """(wall seconds, JSON report) of one reproduce_run.py --output json."""
    start = time.perf_counter()
    proc = subprocess.run(
        (sys.executable, str(SCRIPT), *args, '--output', 'json', '--quiet'),
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=PROCESS_TIMEOUT,
    )
    if proc.returncode != expect:
        raise BenchError(f'reproduce_run.py exited with {proc.returncode}: {proc.stderr[-2000:]}')
    return time.perf_counter() - start, json.loads(proc.stdout)


def bench_explain(notes: list[str]) -> list[Comparison]:
    """Probes and wall time of one --explain (pip installs the layers)."""
    progress(f'explain: {EXPLAIN_PACKAGES} differing packages, one culprit')
    with tempfile.TemporaryDirectory(prefix='bench-explain-') as tmp:
        store = Path(tmp) / 'store'
        store.mkdir()
        env = base_env(f'sqlite:///{store / "mlflow.db"}')
        repo, old, new = explain_world(Path(tmp))
        mlflow_run = (sys.executable, '-m', 'mlflow', 'run', str(repo), '--env-manager', 'local')
        base = make_reference(mlflow_run, {**env, **old}, store)
        # The reference: a reproduction in the old environment records its environment.json.
        _, recorded = run_json(('--run_id', base), {**env, **old}, store, expect=0)
        reference = recorded['reproduced_run_id']
        one, _ = run_json(('--run_id', reference), {**env, **new}, store, expect=1)
        seconds, report = run_json(
            ('--run_id', reference, '--explain'), {**env, **new}, store, expect=1
        )
        explained = report['explanation']['environment']
        culprits = ', '.join(c['name'] for c in explained['culprits']) or 'none'
        notes.append(
            f'explain: {EXPLAIN_PACKAGES} differing packages, culprit found: {culprits}; '
            f'{len(explained["probes"])} probes; {seconds:.0f} s in all, '
            f'against {one:.0f} s for the reproduction alone'
        )
    return []


# ---------------------------------------------------------------------------
# 11. Big selections: a --dry-run over 10,000 run IDs against a server, and
# the tool's peak memory at 100 and at 10,000 selected runs.

SELECTION_RUNS = 10_000
SMALL_SELECTION = 100
LOOP_SAMPLE = 1_000  # IDs the get_run loop reads, scaled to SELECTION_RUNS: a loop over all
# 10,000 outlasts PROCESS_TIMEOUT on a busy machine, and costs the same per run


_GET_RUN_LOOP = """
import sys, mlflow
c = mlflow.MlflowClient()
for run_id in open(sys.argv[1]).read().split():
    c.get_run(run_id)
"""

# The plain way to read the runs of an experiment: a paged search_runs, with
# the page size and order the tool uses; a file, so that run_tool's wrapper
# also gives its peak memory.
_PAGED_SEARCH = """
import sys, mlflow
c = mlflow.MlflowClient()
experiment_id = c.get_experiment_by_name(sys.argv[1]).experiment_id
token, n = None, 0
while True:
    page = c.search_runs([experiment_id], '', order_by=['attributes.start_time DESC'],
                         max_results=1000, page_token=token)
    n += len(page)
    token = page.token
    if not token:
        break
assert n == int(sys.argv[2]), n
"""


def bench_selection_against_search(
    label: str, uri: str, runs_file: Path, rounds: int, notes: list[str], memory: list[Memory]
) -> list[Comparison]:
    """--from-experiment and --runs-file of SELECTION_RUNS runs, --dry-run,
    against a plain paged search_runs of the same runs, interleaved."""
    env, cwd = base_env(uri), runs_file.parent
    script = cwd / 'paged_search.py'
    script.write_text(_PAGED_SEARCH)
    peaks: dict[str, list[float]] = {'search': [], 'experiment': [], 'file': []}
    dry = ('--dry-run', '--quiet', '--output', 'json')
    argv = {
        'experiment': ('--from-experiment', 'selection', '--max-runs', str(SELECTION_RUNS), *dry),
        'file': ('--runs-file', str(runs_file), *dry),
    }

    def plain() -> float:
        cmd = (sys.executable, '-c', _MAXRSS_WRAPPER, str(cwd / 'peak-search'), str(script))
        elapsed, _ = run_timed((*cmd, 'selection', str(SELECTION_RUNS)), env, cwd)
        peaks['search'].append(int((cwd / 'peak-search').read_text()) / 1024)
        return elapsed

    def tool(kind: str) -> float:
        elapsed, peak = run_tool(argv[kind], env, cwd)
        peaks[kind].append(peak)
        return elapsed

    progress(f'selection ({label}): {rounds} rounds of search / --from-experiment / --runs-file')
    search_t, experiment_t, file_t = interleave(
        [plain, lambda: tool('experiment'), lambda: tool('file')], rounds
    )
    plain_label = f'a paged search_runs of the {SELECTION_RUNS:,} runs ({label})'
    results = [
        Comparison(f'selection, {label}', plain_label, what, tuple(search_t), tuple(t))
        for what, t in (
            ('--from-experiment --dry-run', experiment_t),
            (f'--runs-file ({SELECTION_RUNS:,} IDs) --dry-run', file_t),
        )
    ]
    for kind, what in (('search', 'the paged search'), ('experiment', '--from-experiment')):
        memory.append(Memory(f'selection, {label}', what, tuple(peaks[kind][1:])))
    for c, kind in zip(results, ('experiment', 'file'), strict=True):
        notes.append(
            f'{c.section}: {c.candidate} takes {c.b_median:.1f} s, {c.ratio:.2f}x a paged '
            f'search_runs of the same runs ({c.a_median:.1f} s; goal <= 1.2 and under 30 s); '
            f'peak RSS {statistics.median(peaks[kind][1:]):.0f} MiB against '
            f'{statistics.median(peaks["search"][1:]):.0f} MiB (goal < 300)'
        )
    return results


def bench_selection(rounds: int, notes: list[str], memory: list[Memory]) -> list[Comparison]:
    quiet_mlflow()
    progress(f'selection: an experiment of {SELECTION_RUNS:,} runs behind a server')
    with tempfile.TemporaryDirectory(prefix='bench-selection-') as tmp:
        repo = make_repo(Path(tmp) / 'repo')
        where = Path(tmp) / 'server'
        where.mkdir()
        ids = fill_store(where / 'server.db', repo, 'selection', SELECTION_RUNS)
        files = {}
        for n in (SMALL_SELECTION, LOOP_SAMPLE, SELECTION_RUNS):
            files[n] = Path(tmp) / f'runs-{n}.txt'
            files[n].write_text('\n'.join(ids[:n]) + '\n')
        with mlflow_server(where) as url:
            env = base_env(url)
            peaks: dict[int, list[float]] = {SMALL_SELECTION: [], SELECTION_RUNS: []}

            def tool(n: int) -> float:
                elapsed, peak = run_tool(
                    ('--runs-file', str(files[n]), '--dry-run', '--quiet', '--output', 'json'),
                    env,
                    Path(tmp),
                )
                peaks[n].append(peak)
                return elapsed

            def get_run_loop() -> float:
                cmd = (sys.executable, '-c', _GET_RUN_LOOP, str(files[LOOP_SAMPLE]))
                return run_timed(cmd, env, tmp)[0] * SELECTION_RUNS / LOOP_SAMPLE

            progress(f'selection: {rounds} rounds of a get_run loop / --dry-run, 10,000 IDs')
            loop_t, tool_t = interleave([get_run_loop, lambda: tool(SELECTION_RUNS)], rounds, False)
            progress(f'selection: {rounds} rounds of --dry-run over {SMALL_SELECTION} IDs')
            for _ in range(rounds):
                tool(SMALL_SELECTION)
            against_search = bench_selection_against_search(
                'mlflow server --workers 2', url, files[SELECTION_RUNS], rounds, notes, memory
            )
        sqlite_db = Path(tmp) / 'sqlite' / 'mlflow.db'
        sqlite_db.parent.mkdir()
        shutil.copyfile(where / 'server.db', sqlite_db)
        with chdir(sqlite_db.parent):
            against_search += bench_selection_against_search(
                'sqlite', f'sqlite:///{sqlite_db}', files[SELECTION_RUNS], rounds, notes, memory
            )
    for n in (SMALL_SELECTION, SELECTION_RUNS):
        memory.append(Memory('selection', f'--runs-file of {n:,} IDs --dry-run', tuple(peaks[n])))
    comparison = Comparison(
        'selection',
        f'a get_run loop over {LOOP_SAMPLE:,} IDs x {SELECTION_RUNS // LOOP_SAMPLE} '
        f'(mlflow server --workers 2)',
        f'reproduce_run.py --runs-file ({SELECTION_RUNS:,} IDs) --dry-run',
        tuple(loop_t),
        tuple(tool_t),
    )
    small, big = (statistics.median(peaks[n]) for n in (SMALL_SELECTION, SELECTION_RUNS))
    notes.append(
        f'selection: a --dry-run over {SELECTION_RUNS:,} IDs takes {comparison.b_median:.1f} s, '
        f'{comparison.ratio:.3f}x a get_run loop (goal <= 0.1 and under 30 s); peak RSS '
        f'{small:.0f} MiB at {SMALL_SELECTION} runs and {big:.0f} MiB at {SELECTION_RUNS:,}, '
        f'{big / small:.2f}x (goal < 1.5)'
    )
    return [comparison, *against_search]


# ---------------------------------------------------------------------------
# Command line.


def _positive(s: str) -> int:
    try:
        value = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a whole number, got {s!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a number >= 1, got {s!r}')
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='bench',
        description=__doc__.split('\n\n')[0] if __doc__ else None,
    )
    parser.add_argument(
        '--rounds',
        type=_positive,
        default=5,
        help='rounds of the slow comparison, mlflow run against '
        'reproduce_run.py (default: %(default)s)',
    )
    parser.add_argument(
        '--fast-rounds',
        type=_positive,
        default=7,
        help='rounds of the quick comparisons: start-up, history '
        'reading, --compare-to (default: %(default)s)',
    )
    parser.add_argument(
        '--metrics',
        type=_positive,
        default=300,
        help='metrics per run for history reading and --compare-to (default: %(default)s)',
    )
    parser.add_argument(
        '--steps',
        type=_positive,
        default=20,
        help='steps per metric for history reading and --compare-to (default: %(default)s)',
    )
    parser.add_argument(
        '--judge-rounds',
        type=_positive,
        default=3,
        help='rounds of reading and judging the large runs (default: %(default)s)',
    )
    parser.add_argument(
        '--judge-metrics',
        type=_positive,
        default=10,
        help='metrics per large run (default: %(default)s)',
    )
    parser.add_argument(
        '--judge-steps',
        type=_positive,
        default=50_000,
        help='steps per metric of a large run (default: %(default)s)',
    )
    parser.add_argument(
        '--batch-rounds',
        type=_positive,
        default=2,
        help='rounds of --jobs 1 against --jobs 2 (default: %(default)s)',
    )
    parser.add_argument(
        '--batch-seconds',
        type=float,
        default=6.0,
        help='training time of each run of the batch (default: %(default)s)',
    )
    parser.add_argument(
        '--breakdown-rounds',
        type=_positive,
        default=3,
        help='rounds of the timed phases of one reproduction (default: %(default)s)',
    )
    parser.add_argument(
        '--bisect-rounds',
        type=_positive,
        default=1,
        help='rounds of --bisect --jobs 1 against --jobs 3 (default: %(default)s)',
    )
    parser.add_argument(
        '--bisect-seconds',
        type=float,
        default=3.0,
        help='training time of each probe of the bisection (default: %(default)s)',
    )
    parser.add_argument('--skip-bisect', action='store_true', help='skip the bisection')
    parser.add_argument('--skip-startup', action='store_true', help='skip start-up')
    parser.add_argument(
        '--skip-overhead', action='store_true', help='skip mlflow run against reproduce_run.py'
    )
    parser.add_argument('--skip-histories', action='store_true', help='skip history reading')
    parser.add_argument('--skip-compare-to', action='store_true', help='skip --compare-to')
    parser.add_argument('--skip-judging', action='store_true', help='skip judging the large runs')
    parser.add_argument('--skip-batch', action='store_true', help='skip the batch')
    parser.add_argument(
        '--selection-rounds',
        type=_positive,
        default=1,
        help='rounds of the 10,000-run dry runs against a get_run loop and a paged search '
        '(default: %(default)s)',
    )
    parser.add_argument(
        '--skip-selection', action='store_true', help='skip the 10,000-run selection'
    )
    parser.add_argument('--skip-explain', action='store_true', help='skip --explain')
    parser.add_argument(
        '--early-rounds',
        type=_positive,
        default=1,
        help='rounds of each early-verdict comparison, a minute or more (default: %(default)s)',
    )
    parser.add_argument(
        '--skip-early', action='store_true', help='skip --fail-fast, --steps and early bisection'
    )
    parser.add_argument(
        '--recorder-rounds',
        type=_positive,
        default=200,
        help='start_run() pairs with the recorder off and on (default: %(default)s)',
    )
    parser.add_argument('--skip-recorder', action='store_true', help="skip the recorder's cost")
    parser.add_argument(
        '--skip-leftovers', action='store_true', help="skip the check for dead tools' leftovers"
    )
    parser.add_argument(
        '--skip-breakdown', action='store_true', help='skip the phases of one reproduction'
    )
    parser.add_argument(
        '--skip-server', action='store_true', help='sqlite only: start no mlflow server'
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    results: list[Comparison] = []
    notes: list[str] = []
    memory: list[Memory] = []
    server = not args.skip_server
    failed = 0
    breakdowns: list[Breakdown] = []
    sections: list[tuple[bool, Callable[[], object]]] = [
        (args.skip_startup, lambda: results.extend(bench_startup(args.fast_rounds, notes))),
        (args.skip_overhead, lambda: results.extend(bench_overhead(args.rounds, notes))),
        (args.skip_recorder, lambda: results.extend(bench_recorder(args.recorder_rounds, notes))),
        (
            args.skip_breakdown,
            lambda: breakdowns.append(bench_breakdown(args.breakdown_rounds, notes)),
        ),
        (
            args.skip_histories,
            lambda: results.extend(
                bench_all_histories(
                    args.fast_rounds, args.metrics, args.steps, server=server, notes=notes
                )
            ),
        ),
        (
            args.skip_compare_to,
            lambda: results.extend(
                bench_compare_to(args.fast_rounds, args.metrics, args.steps, notes, memory)
            ),
        ),
        (
            args.skip_judging,
            lambda: results.extend(
                bench_judging(
                    args.judge_rounds, args.judge_metrics, args.judge_steps, server, notes, memory
                )
            ),
        ),
        (
            args.skip_batch,
            lambda: results.extend(
                bench_batch(args.batch_rounds, args.batch_seconds, notes, memory)
            ),
        ),
        (
            args.skip_leftovers,
            lambda: results.extend(bench_leftovers(args.fast_rounds, server, notes)),
        ),
        (
            args.skip_bisect,
            lambda: results.extend(bench_bisect(args.bisect_rounds, args.bisect_seconds, notes)),
        ),
        (args.skip_explain, lambda: results.extend(bench_explain(notes))),
        (args.skip_early, lambda: results.extend(bench_early(args.early_rounds, notes))),
        (
            args.skip_selection or args.skip_server,  # it needs a server
            lambda: results.extend(bench_selection(args.selection_rounds, notes, memory)),
        ),
    ]
    try:
        for skipped, section in sections:
            if skipped:
                continue
            try:
                section()
            except BenchError as e:  # the other sections still measure
                print(f'bench: error: {e}', file=sys.stderr)
                failed += 1
    except KeyboardInterrupt:
        print('bench: interrupted', file=sys.stderr)
        return 130
    print(
        f'\nreproduce_run benchmarks: Python {sys.version.split()[0]}, '
        f'{os.cpu_count()} CPUs, {time.perf_counter() - started:.0f} s in all; '
        f'history runs: 2 x {args.metrics} metrics x {args.steps} steps; '
        f'judged runs: 2 x {args.judge_metrics} metrics x {args.judge_steps} steps\n'
    )
    if results:
        print(markdown_table(results))
    if memory:
        print()
        print(memory_table(memory))
    for breakdown in breakdowns:
        print()
        print(breakdown_table(breakdown))
    if notes:
        print()
        for note in notes:
            print(f'- {note}')
    return 1 if failed else 0


if __name__ == '__main__':
    raise SystemExit(main())

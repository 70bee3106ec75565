"""Plain helpers the test modules (and conftest.py's fixtures, and
benchmarks/bench.py) share: git repositories from the samples, reference runs
with the `mlflow run` CLI or without running anything, services under the
watchdog and their stop, run the tool in-process, read what MLflow recorded,
wait for processes.  Fixtures live in conftest.py."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import site
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

import reproduce_run
from reproduce_run import Tolerance, main

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / 'MLproject_samples'
SCRIPT = ROOT / 'reproduce_run.py'
STORES = {'sqlite': 'sqlite_store', 'server': 'mlflow_server'}  # a store's kind: its fixture
WATCHDOG = Path(__file__).resolve().parent / 'watchdog.py'
RUN_ID_LOG_RE = re.compile(r"=== Run \(ID '(\w+)'\) (succeeded|failed) ===")


def git(*args: str, cwd: Path | str) -> str:
    return subprocess.run(
        ('git', *args),
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def make_repo(path: Path) -> Path:
    """A git repository holding a copy of MLproject_samples, one commit."""
    shutil.copytree(SAMPLES, path, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    git('init', '--quiet', '--initial-branch', 'main', cwd=path)
    git('config', 'user.email', 'tests@example.invalid', cwd=path)
    git('config', 'user.name', 'tests', cwd=path)
    git('config', 'commit.gpgsign', 'false', cwd=path)
    git('add', '--all', cwd=path)
    git('commit', '--quiet', '-m', 'samples', cwd=path)
    return path


@contextlib.contextmanager
def _project_output_kept_out() -> Iterator[io.BytesIO]:
    """The project's output (which `mlflow run` leaves on the descriptors 1
    and 2 it inherits) goes to a file, not to what the test captures; it is
    handed back at the end, for a failure's message."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved, kept = (os.dup(1), os.dup(2)), io.BytesIO()
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield kept
            finally:
                sink.seek(0)
                kept.write(sink.read())
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def mlflow_run(uri: str, tracking_uri: str, *args: str, fails: bool = False) -> str:
    """Make a reference run the way a user does, with the `mlflow run` CLI:
    its own command, called in this process (the same code, without a second
    interpreter importing MLflow again, which costs some 2 s of CPU a run);
    fails=True expects the project to fail (a FAILED run can be reproduced too)."""
    import logging

    from mlflow.cli import cli

    logger = logging.getLogger('mlflow')
    level, status, err = logger.level, 0, io.StringIO()
    logger.setLevel(logging.INFO)
    try:
        with (
            pytest.MonkeyPatch.context() as mp,
            _project_output_kept_out() as output,
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(err),
            tempfile.TemporaryDirectory() as storage,  # else MLflow leaves a folder in TMPDIR
        ):
            mp.setenv('MLFLOW_TRACKING_URI', tracking_uri)
            mp.setattr(tempfile, 'tempdir', storage)  # where MLflow clones a git URI
            argv = ['run', uri, '--env-manager', 'local', '--storage-dir', storage, *args]
            cli.main(argv, 'mlflow', standalone_mode=False)
    except SystemExit as e:
        status = e.code
    finally:
        logger.setLevel(level)
    match = RUN_ID_LOG_RE.search(err.getvalue())
    project = output.getvalue().decode(errors='replace')
    assert match and (status != 0) == fails, err.getvalue()[-3000:] + project[-3000:]
    return match.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start_service(argv: tuple[str, ...], **popen_args) -> subprocess.Popen:
    """Start a long-running process for the tests, in its own session, under a
    watchdog that kills it and everything it started once this process is
    gone; stop it with stop()."""
    return subprocess.Popen(
        (sys.executable, str(WATCHDOG), *argv), start_new_session=True, **popen_args
    )


def stop(proc: subprocess.Popen) -> None:
    """Stop a service we started, by its process ID (and its group)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def forget_databases_in(folder: Path) -> None:
    """Close and forget the engines MLflow keeps, for the life of the process,
    on databases in `folder`, and the stores built on them.  A passing test's
    folder is removed, and pytest may give the same path to a later test of a
    similar name: a kept engine would still write to the removed file ("attempt
    to write a readonly database")."""
    stale = False
    for module in (
        'mlflow.store.tracking.sqlalchemy_store',
        'mlflow.store.model_registry.sqlalchemy_store',
    ):
        engines = getattr(sys.modules.get(module), 'SqlAlchemyStore', None)
        for uri in [u for u in getattr(engines, '_engine_map', {}) if f'{folder}/' in u]:
            engines._engine_map.pop(uri).dispose()
            stale = True
    if stale:
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        for registry in (
            tracking_utils._tracking_store_registry,
            registry_utils._model_registry_store_registry,
        ):
            if registry is not None:
                type(registry)._get_store_with_resolved_uri.cache_clear()


def references_in(samples_repo: Path, uri: str) -> Callable[..., str]:
    """make('sklearn_regression', '-P', 'alpha=0.3') -> run ID in the store at
    uri, made once."""
    made: dict[tuple[str, ...], str] = {}

    def make(sample: str, *args: str, fails: bool = False) -> str:
        key = (sample, *args)
        if key not in made:
            made[key] = mlflow_run(str(samples_repo / sample), uri, *args, fails=fails)
        return made[key]

    return make


@dataclasses.dataclass(frozen=True)
class Server:
    url: str
    proc: subprocess.Popen


def start_mlflow_server(where: Path, workers: int = 1) -> Server:
    """A real tracking server on 127.0.0.1 with its own sqlite store; stop it
    with stop(server.proc).  It serves through gunicorn, MLflow's other
    server: some 4 ms of CPU a request against 13-16 ms through uvicorn, and
    each reproduction sends dozens.  Its job runner is off: the tool submits
    no jobs, and the runner's seven huey consumers each import MLflow (some
    19 s of CPU a server) and leave a folder in /dev/shm behind."""
    where.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = where / 'server.log'
    with open(log, 'w') as log_file:
        proc = start_service(
            (
                sys.executable,
                '-m',
                'mlflow',
                'server',
                '--host',
                '127.0.0.1',
                '--port',
                str(port),
                '--backend-store-uri',
                f'sqlite:///{where / "server.db"}',
                '--artifacts-destination',
                str(where / 'artifacts'),
                '--workers',
                str(workers),
                '--gunicorn-opts=--log-level warning',
            ),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            cwd=where,
            env={**os.environ, 'MLFLOW_SERVER_ENABLE_JOB_EXECUTION': 'false'},
        )
    url = f'http://127.0.0.1:{port}'
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f'{url}/health', timeout=2)
            return Server(url, proc)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise AssertionError(log.read_text()[-3000:]) from None
            time.sleep(0.5)


def client():
    import mlflow

    return mlflow.MlflowClient()


NAN, INF = math.nan, math.inf
TIGHT = Tolerance(rtol=1e-9, atol=0.0)
_CODE_SPAN_RE = re.compile(r'`([^`]+)`')  # a Markdown code span
JSON_DOC = ROOT / 'docs' / 'json.md'


def reproduce(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def reproduce_json(capsys, *argv: str) -> tuple[int, dict, str]:
    """reproduce() with --output json: (exit code, the report, stderr)."""
    code, out, err = reproduce(capsys, *argv, '--output', 'json')
    return code, json.loads(out), err


def param_table(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('| Param')) - 1
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith('+-')) + 1
    return lines[start:end]


def reproduced_run(out: str):
    run_id = next(
        line.split()[2] for line in out.splitlines() if line.startswith('Reproduced run:')
    )
    return client().get_run(run_id)


ECHO_PROJECT = {
    'MLproject': 'entry_points:\n  main:\n    parameters:\n      msg: string\n'
    '    command: python echo.py --msg {msg}\n',
    'echo.py': 'import argparse, mlflow\n'
    'p = argparse.ArgumentParser()\n'
    'p.add_argument("--msg")\n'
    'mlflow.log_metric("msg_length", len(p.parse_args().msg))\n',
}


# Values anyone who can write to the tracking store can put in a param, a run
# name or an experiment name, each aimed at a Markdown table, HTML or a terminal.
HOSTILE_VALUES = {
    'pipe': 'a|b',
    'newline': 'one\nRuns equal: True',
    'img': '<img src=x onerror=alert(1)>',
    'details': '<details><summary>open me',
    'entity': 'a &amp; b',
    'ansi': '\x1b[31mred\x1b[0m',
    'carriage-return': 'shown\rhidden',
    'nul': 'nul\x00byte',
    'image': '![i](http://127.0.0.1:9/x.png)',
    'link': '[c](javascript:alert(1))',
    'backslash-pipe': 'a\\|b',
}
_CONTROL_RE = re.compile('[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]')  # newline apart
_UNESCAPED_PIPE_RE = re.compile(r'(?<!\\)(?:\\\\)*\|')  # after no backslash, or \\, \\\\
# A link or an image to a hostile value's address that Markdown would make.
_HOSTILE_LINK_RE = re.compile(r'(?<!\\)(?:\\\\)*\]\((?:javascript:|http://127\.0\.0\.1:9/)')


def assert_terminal_safe(text: str) -> None:
    """Nothing in text acts on a terminal: each control character of a value
    is a visible escape, and only the report's own newlines are left."""
    assert not _CONTROL_RE.search(text), repr(text)
    assert '\\x1b[31mred' in text  # shown, not dropped


def assert_markdown_safe(text: str) -> None:
    """Each Markdown table keeps its shape (every row as many cells as its
    header), and no value brings HTML, a link or an image of its own."""
    assert not _CONTROL_RE.search(text), repr(text)
    for block in re.findall(r'(?:^\|.*\n?)+', text, re.MULTILINE):
        rows = block.splitlines()
        assert {len(_UNESCAPED_PIPE_RE.findall(row)) for row in rows} == {
            len(_UNESCAPED_PIPE_RE.findall(rows[0]))
        }, block
    assert '<img' not in text and '<details' not in text
    assert '&lt;img src=x onerror=alert(1)&gt;' in text
    assert 'a &amp;amp; b' in text  # the entity a value holds is shown as written
    assert not _HOSTILE_LINK_RE.search(text), text
    assert '!\\[i\\](http://127.0.0.1:9/x.png)' in text  # shown as written
    assert 'one\\nRuns equal: True' in text  # a value's newline forges no line


# The hostile values in one string: for a field that holds one value (no NUL,
# which some of the store's fields refuse).
HOSTILE = '|'.join(v for k, v in HOSTILE_VALUES.items() if k != 'nul')


def log_environment(run_id: str, environment: dict, folder: Path) -> None:
    """reproduce/environment.json on the run, logged as an artifact."""
    (folder / 'reproduce').mkdir(parents=True)
    (folder / 'reproduce' / 'environment.json').write_text(json.dumps(environment))
    client().log_artifacts(run_id, str(folder))


def assert_no_forged_line(text: str) -> None:
    """A value's newline forged no line: none starts with what follows it
    in HOSTILE_VALUES (a verdict line of its own is 'Runs equal: True' alone)."""
    assert not re.search('^Runs equal: True.', text, re.MULTILINE | re.IGNORECASE), text


def add_project(repo: Path, name: str, files: dict[str, str]) -> Path:
    (repo / name).mkdir()
    for filename, text in files.items():
        (repo / name / filename).write_text(text)
    git('add', '--all', cwd=repo)
    git('commit', '--quiet', '-m', f'add {name}', cwd=repo)
    return repo / name


def all_run_ids() -> set[str]:
    c = client()
    return {
        r.info.run_id
        for r in c.search_runs(
            [e.experiment_id for e in c.search_experiments(view_type=3)], run_view_type=3
        )
    }


def run_snapshot(run_id: str) -> dict:
    """Everything a reproduction must not change about the reference run."""
    run = client().get_run(run_id)
    return {
        'info': run.info.to_proto().SerializeToString(),
        'params': run.data.params,
        'tags': run.data.tags,
        'metrics': {
            k: [(m.step, m.timestamp, m.value) for m in client().get_metric_history(run_id, k)]
            for k in run.data.metrics
        },
        'artifacts': [f.path for f in client().list_artifacts(run_id)],
    }


def logged_run(metrics: dict[str, list[float]], params: dict[str, str] | None = None) -> str:
    """A finished run with the given metric histories, logged directly."""
    return tagged_run({}, params, metrics=metrics)


def recorded_run(
    source: str,
    commit: str,
    params: dict[str, str] | None = None,
    entry_point: str = 'main',
    metrics: dict[str, float] | None = None,
) -> str:
    """A run carrying what `mlflow run` records (source, commit, entry point,
    params quoted as MLflow quotes them), made without running anything: for
    runs that would be slow or harmful to make for real."""
    c = client()
    run = c.create_run(
        c.get_experiment_by_name('Default').experiment_id,
        tags={
            'mlflow.source.name': source,
            'mlflow.source.type': 'PROJECT',
            'mlflow.source.git.commit': commit,
            'mlflow.project.entryPoint': entry_point,
        },
    )
    for key, value in (params or {}).items():
        c.log_param(run.info.run_id, key, shlex.quote(value))
    for key, value in (metrics or {}).items():
        c.log_metric(run.info.run_id, key, value)
    c.set_terminated(run.info.run_id)
    return run.info.run_id


def tagged_run(
    tags: dict[str, str],
    params: dict[str, str] | None = None,
    experiment_id: str | None = None,
    metrics: dict[str, list[float]] | None = None,
) -> str:
    """A finished run carrying these tags, params and metric histories (in
    Default unless told), made without running anything."""
    c = client()
    experiment_id = experiment_id or c.get_experiment_by_name('Default').experiment_id
    run = c.create_run(experiment_id, tags=tags)
    for key, values in (metrics or {}).items():
        for step, value in enumerate(values):
            c.log_metric(run.info.run_id, key, value, step=step)
    for key, value in (params or {}).items():
        c.log_param(run.info.run_id, key, value)
    c.set_terminated(run.info.run_id)
    return run.info.run_id


def dataset_input(
    name: str,
    digest: str,
    source: str = '{"uri": "d.csv"}',
    schema: str = 's1',
    context: str | None = 'training',
    source_type: str = 'local',
):
    """An MLflow dataset input, as run.inputs.dataset_inputs holds it."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    tags = [InputTag('mlflow.data.context', context)] if context else []
    return DatasetInput(Dataset(name, digest, source_type, source, schema), tags)


def artifact_bytes(run_id: str, path: str) -> bytes:
    """An artifact of a run, read from a download removed at once: without a
    destination, MLflow downloads into a new folder in TMPDIR and leaves it."""
    with tempfile.TemporaryDirectory() as folder:
        return Path(client().download_artifacts(run_id, path, folder)).read_bytes()


def reproductions_of(run_id: str) -> list:
    """The reproduced runs of a reference (not the parent runs of --repeat,
    which carry the reference's ID too)."""
    c = client()
    runs = c.search_runs(
        [e.experiment_id for e in c.search_experiments()],
        f"tags.`reproduce.reference_run_id` = '{run_id}'",
    )
    return [r for r in runs if 'reproduce.repeat' not in r.data.tags]


def process_gone(pid: int) -> bool:
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ('Z', 'X')  # a zombie has stopped running


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.2)


def start_tool(*argv: str, env: dict[str, str]) -> subprocess.Popen:
    """The tool as a process of its own, `env` over this one's environment;
    its standard output and error are pipes (`with proc:` closes them)."""
    return subprocess.Popen(
        (sys.executable, str(SCRIPT), *argv),
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def run_of_a_commit_gone_from_the_remote(
    git_daemon: tuple[str, Path], samples_repo: Path, tmp_path: Path
) -> tuple[str, str, str]:
    """(run ID, commit, remote): a run recorded at a commit that a force push
    and a garbage collection then removed from the remote."""
    url, base = git_daemon
    bare = base / f'{tmp_path.name}.git'
    git('clone', '--quiet', '--bare', str(samples_repo), str(bare), cwd=tmp_path)
    work = tmp_path / 'work'
    git('clone', '--quiet', str(bare), str(work), cwd=tmp_path)
    git(
        '-c',
        'user.email=t@e',
        '-c',
        'user.name=t',
        'commit',
        '--quiet',
        '--allow-empty',
        '-m',
        'soon gone',
        cwd=work,
    )
    gone = git('rev-parse', 'HEAD', cwd=work)
    git('push', '--quiet', 'origin', 'HEAD:main', cwd=work)
    run_id = recorded_run(f'{url}/{bare.name}#sklearn_regression', gone)
    git('push', '--quiet', '--force', 'origin', 'HEAD~1:main', cwd=work)
    git('reflog', 'expire', '--expire=now', '--all', cwd=bare)
    git('gc', '--quiet', '--prune=now', cwd=bare)
    return run_id, gone, f'{url}/{bare.name}'


QUIET = {  # no MLflow call at all: only the tool talks to the server
    'MLproject': 'entry_points:\n  main:\n    command: python quiet.py\n',
    'quiet.py': 'print("quiet project done")\n',
}


def make_venv(
    where: Path, *requirements: str, over_this_one: bool = False, by_uv: bool = False
) -> Path:
    """A new virtual environment with `requirements` installed by pip; returns
    its bin folder.  over_this_one: it also sees the packages this interpreter
    sees, through a .pth file (--system-site-packages would show the base
    interpreter's packages instead, not this virtual environment's).  by_uv:
    made and filled by uv (pip in it too), the same packages in seconds of CPU
    where pip takes a minute and a half."""
    bin_dir = where / 'bin'
    if by_uv:
        uv = uv_binary()
        venv = (uv, 'venv', '--quiet', '--seed', '--python', sys.executable, str(where))
        subprocess.run(venv, check=True, capture_output=True, stdin=subprocess.DEVNULL)
        install = (uv, 'pip', 'install', '--quiet', '--python', str(bin_dir / 'python'))
        proc = subprocess.run(
            (*install, *requirements), capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return bin_dir
    subprocess.run((sys.executable, '-m', 'venv', str(where)), check=True, capture_output=True)
    if over_this_one:
        [site_packages] = where.glob('lib/python*/site-packages')
        (site_packages / '_over_this_one.pth').write_text(
            ''.join(f'import site; site.addsitedir({p!r})\n' for p in site.getsitepackages())
        )
    proc = subprocess.run(
        (str(bin_dir / 'python'), '-m', 'pip', 'install', '--quiet', *requirements),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return bin_dir


def uv_binary() -> str:
    """uv's executable, as the uv package of requirements-dev.txt installs it."""
    import uv

    return uv.find_uv_bin()


def experiment_runs(name: str):
    c = client()
    experiment = c.get_experiment_by_name(name)
    return c.search_runs([experiment.experiment_id], run_view_type=3)


def run_with_environment(tmp_path: Path, **variables: str) -> str:
    """A finished run whose reproduce/environment.json is the real capture of
    this interpreter with the given variables."""
    run_id = logged_run({'acc': [0.5]})
    env = {**os.environ, **variables}
    captured = reproduce_run.capture_environment(None, env, str(tmp_path))
    reproduce_run.record_environment(client(), run_id, captured)
    return run_id


def runs_sharing_a_prefix(db: Path, prefix: str, n: int) -> list[str]:
    """n finished runs whose IDs start with prefix.  MLflow picks random IDs,
    and two sharing 8 hex digits take some 77,000 runs to happen on their own;
    so real runs are made, then their IDs rewritten in every table of the store."""
    made = [logged_run({'acc': [0.5]}) for _ in range(n)]
    wanted = [prefix + f'{i:x}'.ljust(32 - len(prefix), '0') for i in range(n)]
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = [c[1] for c in con.execute(f'PRAGMA table_info({table})')]
            for column in {'run_uuid', 'run_id'} & set(columns):
                for old, new in zip(made, wanted, strict=True):
                    con.execute(f'UPDATE {table} SET {column} = ? WHERE {column} = ?', (new, old))
    assert {client().get_run(run_id).info.run_id for run_id in wanted} == set(wanted)
    return wanted


CONDA_PROJECT = {
    'MLproject': 'conda_env: conda.yaml\nentry_points:\n  main:\n    command: python -V\n',
    'conda.yaml': 'name: tiny\ndependencies:\n  - python=3.11\n',
}


def conda_run(repo: Path) -> str:
    """A run recorded as `mlflow run --env-manager conda` of a conda project."""
    add_project(repo, 'tiny', CONDA_PROJECT)
    run_id = recorded_run(f'file://{repo}#tiny', git('rev-parse', 'HEAD', cwd=repo))
    client().set_tag(run_id, 'mlflow.project.env', 'conda')
    return run_id


def experiment_runs_or_empty(name: str):
    c = client()
    return experiment_runs(name) if c.get_experiment_by_name(name) else []


def run_python(
    python: str, cwd: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python argv...` in cwd, as a person runs a script; it must succeed."""
    proc = subprocess.run(
        (python, *argv),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def python_run(cwd: Path, *argv: str, env: dict[str, str] | None = None) -> str:
    """Run `python argv...` in cwd as a person does; the ID of the run it made."""
    c = client()
    started = int(time.time() * 1000)  # the same clock as the run's start_time
    run_python(sys.executable, cwd, *argv, env=env)
    finished = int(time.time() * 1000) + 1
    experiments = [e.experiment_id for e in c.search_experiments()]
    runs = [
        r
        for r in c.search_runs(
            experiments,
            f'attributes.start_time >= {started} and attributes.start_time <= {finished} '
            "and tags.`mlflow.source.type` = 'LOCAL'",
        )
        # started while this process ran, by the script typed: another test may run
        # the same script at about the same time
        if 'reproduce.reference_run_id' not in r.data.tags
        and r.data.tags.get('mlflow.source.name') == argv[0]
    ]
    assert len(runs) == 1, runs
    return runs[0].info.run_id


def section(path: Path, heading: str) -> str:
    """The text under `## heading`, up to the next `## ` heading."""
    return path.read_text().split(f'\n## {heading}\n', 1)[1].split('\n## ', 1)[0]


def tables(text: str) -> list[list[list[str]]]:
    """Each Markdown table in text: its rows (header and rule left out) as cells."""
    found, rows = [], []
    for line in [*text.splitlines(), '']:
        if line.startswith('|'):
            rows.append([cell.strip() for cell in line.strip().strip('|').split(' | ')])
        elif rows:
            found.append(rows[2:])
            rows = []
    return found


def first_spans(rows: list[list[str]]) -> list[str]:
    """The code span that each row's first cell names (a field, a status)."""
    return [_CODE_SPAN_RE.fullmatch(row[0]).group(1) for row in rows]


def batch_runs(name: str):
    """(parent, children) of the one batch in experiment `name`."""
    runs = experiment_runs(name)
    [parent] = [r for r in runs if r.data.tags.get('reproduce.batch') == 'true']
    children = [r for r in runs if r.data.tags.get('mlflow.parentRunId') == parent.info.run_id]
    return parent, children


# A tiny project whose metric a commit can change or break: the bisection tests.

MLPROJECT = """\
name: tiny
entry_points:
  main:
    parameters:
      data: {type: string, default: ''}
    command: "python train.py --data {data}"
"""

TRAIN = """\
import argparse, fcntl, os, pathlib, time
import mlflow

p = argparse.ArgumentParser()
p.add_argument('--data', default='')
args = p.parse_args()
if pathlib.Path('BROKEN').exists():
    raise SystemExit('this commit is broken')
if pathlib.Path('notes.txt').exists():
    time.sleep(float(os.environ.get('BISECT_TEST_SLEEP', '0')))
value = float(pathlib.Path('value.txt').read_text())
if args.data:
    value += float(pathlib.Path(args.data).read_text())
counter = os.environ.get('BISECT_TEST_COUNTER')
if counter:  # noise of +-1 %: consecutive runs take -1, 0, +1 in turn
    with open(counter, 'a+') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        count = int(f.read() or 0)
        f.seek(0)
        f.truncate()
        f.write(str(count + 1))
    value *= 1 + 0.01 * (count % 3 - 1)
mlflow.log_metric('score', value)
"""


def clone_with_remote(repo: Path, files: dict[str, str], remote: str) -> Path:
    """A new repository at repo holding files in one commit on main, pushed to
    the bare repository `remote` (its origin), which must exist."""
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git('init', '--quiet', '--initial-branch', 'main', cwd=repo)
    git('config', 'user.email', 'tests@example.invalid', cwd=repo)
    git('config', 'user.name', 'tests', cwd=repo)
    commit_all(repo, 'files')
    git('remote', 'add', 'origin', remote, cwd=repo)
    git('push', '--quiet', 'origin', 'main', cwd=repo)
    return repo


def commit_all(repo: Path, message: str) -> str:
    git('add', '--all', cwd=repo)
    git('commit', '--quiet', '-m', message, cwd=repo)
    return git('rev-parse', 'HEAD', cwd=repo)


def build_repo(where: Path, files: dict[str, str]) -> tuple[Path, str]:
    repo = where / 'repo'
    (repo / 'tiny').mkdir(parents=True)
    git('init', '--quiet', '--initial-branch', 'main', cwd=repo)
    git('config', 'user.email', 'tests@example.invalid', cwd=repo)
    git('config', 'user.name', 'tests', cwd=repo)
    git('config', 'commit.gpgsign', 'false', cwd=repo)
    for name, text in files.items():
        (repo / 'tiny' / name).write_text(text)
    return repo, commit_all(repo, 'tiny project')


def add_commits(repo: Path, n: int, change_at: int, broken_at: int | None = None) -> list[str]:
    """n commits; the one at change_at doubles the metric, broken_at fails."""
    commits = []
    for k in range(1, n + 1):
        tiny = repo / 'tiny'
        with open(tiny / 'notes.txt', 'a') as f:
            f.write(f'note {k}\n')
        subject = f'commit {k}'
        if k == change_at:
            (tiny / 'value.txt').write_text('2.0')
            subject += ': the value doubles'
        if k == broken_at:
            (tiny / 'BROKEN').write_text('')
            subject += ': breaks the project'
        elif (tiny / 'BROKEN').exists():
            (tiny / 'BROKEN').unlink()
        commits.append(commit_all(repo, subject))
    return commits


TINY = {'MLproject': MLPROJECT, 'train.py': TRAIN, 'value.txt': '1.0'}


# --- wheels and stores made directly, for tests and the benchmark ---------------


def build_wheel(
    folder: Path, name: str, version: str, code: str, requires: Sequence[str] = ()
) -> Path:
    """A pure-Python wheel written as pip writes one: the module, METADATA
    (with a Requires-Dist line for each of `requires`), WHEEL and a RECORD
    with every file's hash."""
    dist_info = f'{name}-{version}.dist-info'
    declared = ''.join(f'Requires-Dist: {r}\n' for r in requires)
    files = {
        f'{name}/__init__.py': code,
        f'{dist_info}/METADATA': (
            f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{declared}'
        ),
        f'{dist_info}/WHEEL': (
            'Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n'
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=')
        record.append(f'{path},sha256={digest.decode()},{len(text.encode())}')
    files[f'{dist_info}/RECORD'] = '\n'.join([*record, f'{dist_info}/RECORD,,']) + '\n'
    wheel = folder / f'{name}-{version}-py3-none-any.whl'
    with zipfile.ZipFile(wheel, 'w') as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


def pip_target(folder: Path, wheels: list[Path], timeout: float | None = None) -> Path:
    """The wheels installed by pip into folder (a --target, for PYTHONPATH)."""
    subprocess.run(
        (sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index', '--quiet')
        + ('--no-user', '--disable-pip-version-check', '--target', str(folder), *map(str, wheels)),
        check=True,
        capture_output=True,
        timeout=timeout,
    )
    return folder


def fill_store(db: Path, samples_repo: Path, name: str, n: int) -> list[str]:
    """An experiment `name` of n FINISHED runs of the sample sklearn_regression,
    as `mlflow run` records them: one made by MLflow, the others copied from it
    in the sqlite store directly, each with its own ID and the name name-i (a
    few seconds, where MLflow takes minutes).  MLflow's messages go to
    standard error: the benchmark's standard output is its report."""
    import uuid

    import mlflow

    c = mlflow.MlflowClient(f'sqlite:///{db}')
    with contextlib.redirect_stdout(sys.stderr):
        run = c.create_run(
            c.create_experiment(name),
            tags={
                'mlflow.source.name': f'file://{samples_repo}#sklearn_regression',
                'mlflow.source.type': 'PROJECT',
                'mlflow.source.git.commit': git('rev-parse', 'HEAD', cwd=samples_repo),
                'mlflow.project.entryPoint': 'main',
            },
        )
        c.log_param(run.info.run_id, 'alpha', '0.1')
        c.set_terminated(run.info.run_id)
    template = run.info.run_id
    ids = [template] + [uuid.uuid4().hex for _ in range(n - 1)]
    con = sqlite3.connect(db)
    with con:
        for table in ('runs', 'tags', 'params'):
            columns = [row[1] for row in con.execute(f'PRAGMA table_info({table})')]
            renamed = {'run_uuid': '?', **({'name': '?'} if table == 'runs' else {})}
            values = ', '.join(renamed.get(c, c) for c in columns)
            con.executemany(
                f'INSERT INTO {table} ({", ".join(columns)}) '
                f'SELECT {values} FROM {table} WHERE run_uuid = ?',
                [
                    (new, f'{name}-{i}', template) if table == 'runs' else (new, template)
                    for i, new in enumerate(ids[1:], 1)
                ],
            )
    con.close()
    return ids

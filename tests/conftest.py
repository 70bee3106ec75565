"""Real parts for the end-to-end tests: git repositories made from the
samples, an `mlflow server` on 127.0.0.1 as the tracking store (an sqlite
store for what is particular to sqlite), reference runs made with the
`mlflow run` CLI, a `git daemon`, and the backend plugin in
tests/backend_plugin.  The expensive ones are built once per test process
(session scope), stopped by process ID and their folders removed.  Every
service runs under tests/watchdog.py, so it dies with the test process even
when that is killed with SIGKILL."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / 'MLproject_samples'
SCRIPT = ROOT / 'reproduce_run.py'
WATCHDOG = Path(__file__).resolve().parent / 'watchdog.py'

_BUILD_LEFTOVERS = shutil.ignore_patterns('build', '*.egg-info', '__pycache__')
_RUN_ID_LOG_RE = re.compile(r"=== Run \(ID '(\w+)'\) (succeeded|failed) ===")


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
            argv = ['run', uri, '--env-manager', 'local', '--storage-dir', storage, *args]
            cli.main(argv, 'mlflow', standalone_mode=False)
    except SystemExit as e:
        status = e.code
    finally:
        logger.setLevel(level)
    match = _RUN_ID_LOG_RE.search(err.getvalue())
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


@pytest.fixture(scope='session', autouse=True)
def backend_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tests/backend_plugin (entry point group mlflow.project_backend), installed
    by pip into a throwaway folder that goes on sys.path and on the PYTHONPATH
    of every process the tests start: the tests need no install step of their
    own.  pip builds from a copy, since a build writes into its source folder."""
    where = tmp_path_factory.mktemp('backend_plugin')
    source = where / 'source'
    shutil.copytree(ROOT / 'tests' / 'backend_plugin', source, ignore=_BUILD_LEFTOVERS)
    target = where / 'site'
    proc = subprocess.run(
        (
            sys.executable,
            '-m',
            'pip',
            'install',
            '--quiet',
            '--no-deps',
            '--no-user',  # a user install's PIP_USER=1 refuses --target
            '--target',
            target,
            source,
        ),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(target))
        patch.setenv(
            'PYTHONPATH', os.pathsep.join(filter(None, (str(target), os.environ.get('PYTHONPATH'))))
        )
        yield target
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope='session')
def samples_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Shared by many tests: never modify it (use `own_repo` for that)."""
    where = tmp_path_factory.mktemp('samples')
    yield make_repo(where / 'repo')
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def own_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / 'repo')


@pytest.fixture(scope='session')
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An sqlite store whose artifacts live beside it."""
    where = tmp_path_factory.mktemp('store')
    uri = f'sqlite:///{where / "mlflow.db"}'
    subprocess.run(
        (sys.executable, '-c', 'import mlflow; mlflow.MlflowClient().search_experiments()'),
        env={**os.environ, 'MLFLOW_TRACKING_URI': uri},
        cwd=where,
        check=True,
        capture_output=True,
    )
    yield uri
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope='session')
def store(mlflow_server: str) -> str:
    """The tests' tracking store: the session's `mlflow server`.  A project
    process costs some 0.9 s of CPU less against it than against sqlite
    (MLflow's sqlite store imports alembic and checks the schema in every
    process); tests of what is particular to sqlite ask for `sqlite_store`."""
    return mlflow_server


STORES = {'sqlite': 'sqlite_store', 'server': 'mlflow_server'}  # kind: fixture


@pytest.fixture(autouse=True)
def _tracking_uri(store: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv('MLFLOW_TRACKING_URI', store)
    # The tool says this for itself; the tests' own client would print "View
    # run" lines into the output they read.
    monkeypatch.setenv('MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT', 'true')
    # MLflow puts artifacts under ./mlruns of whoever creates an experiment.
    monkeypatch.chdir(tmp_path)
    yield
    forget_databases_in(tmp_path)


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


@pytest.fixture(scope='session')
def reference(samples_repo: Path, store: str) -> Callable[..., str]:
    """reference('sklearn_regression', '-P', 'alpha=0.3') -> run ID, made once."""
    return references_in(samples_repo, store)


@pytest.fixture(scope='session')
def sqlite_reference(samples_repo: Path, sqlite_store: str) -> Callable[..., str]:
    """The same, in the sqlite store (set MLFLOW_TRACKING_URI to it to use them)."""
    return references_in(samples_repo, sqlite_store)


@pytest.fixture(scope='session')
def git_daemon(
    tmp_path_factory: pytest.TempPathFactory,
    samples_repo: Path,
) -> Iterator[tuple[str, Path]]:
    """(git://127.0.0.1:PORT, base path) serving a bare clone of the samples."""
    base = tmp_path_factory.mktemp('daemon')
    git('clone', '--quiet', '--bare', str(samples_repo), str(base / 'samples.git'), cwd=base)
    port = free_port()
    proc = start_service(
        (
            'git',
            'daemon',
            '--reuseaddr',
            '--export-all',
            f'--base-path={base}',
            '--listen=127.0.0.1',
            f'--port={port}',
            '--enable=receive-pack',
            str(base),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f'git://127.0.0.1:{port}'
    deadline = time.monotonic() + 20
    while (
        subprocess.run(('git', 'ls-remote', f'{url}/samples.git'), capture_output=True).returncode
        != 0
    ):
        assert time.monotonic() < deadline, 'git daemon did not start'
        time.sleep(0.2)
    yield url, base
    stop(proc)
    shutil.rmtree(base, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class Server:
    url: str
    proc: subprocess.Popen


def start_mlflow_server(where: Path) -> Server:
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
                '1',
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


@pytest.fixture(scope='session')
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    where = tmp_path_factory.mktemp('server')
    server = start_mlflow_server(where)
    yield server.url
    stop(server.proc)
    shutil.rmtree(where, ignore_errors=True)


def client():
    import mlflow

    return mlflow.MlflowClient()


@pytest.fixture
def own_store(tmp_path, monkeypatch, capsys) -> Path:
    """A store of this test's own, for runs whose IDs it rewrites."""
    monkeypatch.setenv('MLFLOW_TRACKING_URI', f'sqlite:///{tmp_path / "own.db"}')
    client().search_experiments()  # made now: MLflow may log that it makes it
    capsys.readouterr()
    return tmp_path / 'own.db'


@pytest.fixture
def path_without_managers(tmp_path, monkeypatch) -> None:
    """PATH holds git and python, and no uv or conda."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for program in ('git', 'python'):
        found = shutil.which(program) or sys.executable
        os.symlink(found, bin_dir / program)
    monkeypatch.setenv('PATH', str(bin_dir))
    for variable in ('MLFLOW_CONDA_HOME', 'CONDA_EXE'):
        monkeypatch.delenv(variable, raising=False)

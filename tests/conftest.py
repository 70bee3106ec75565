"""Real parts for the end-to-end tests: git repositories made from the
samples, an `mlflow server` on 127.0.0.1 as the tracking store (an sqlite
store for what is particular to sqlite), reference runs made with the
`mlflow run` CLI, a `git daemon`, and the backend plugin in
tests/backend_plugin.  The expensive ones are built once per test process
(session scope), stopped by process ID and their folders removed.  Every
service runs under tests/watchdog.py, so it dies with the test process even
when that is killed with SIGKILL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    client,
    forget_databases_in,
    free_port,
    git,
    make_repo,
    make_venv,
    references_in,
    start_mlflow_server,
    start_service,
    stop,
)

_BUILD_LEFTOVERS = shutil.ignore_patterns('build', '*.egg-info', '__pycache__')


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """test_floor.py first: its environment waits on the package registry when
    uv's cache is cold, and its reference run is the floor's first import of
    MLflow (bytecode compiled then); started last, it ran alone at the end of
    the suite, started first, the other tests run beside it."""
    items.sort(key=lambda item: item.path.name != 'test_floor.py')


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


@pytest.fixture(scope='session')
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin folder of a virtual environment where `pip install .` ran, over
    this one (test_install.py, and the recorder's tests: the package registers
    it).  Built from a copy of the checkout as it is now, without a virtual
    environment in it nor what a build leaves: setuptools writes build/ and
    *.egg-info into the folder it builds from."""
    where = tmp_path_factory.mktemp('install')
    ignore = shutil.ignore_patterns('.git', '.venv', 'build', '*.egg-info', '__pycache__', 'mlruns')
    checkout = shutil.copytree(ROOT, where / 'checkout', ignore=ignore)
    yield make_venv(where / 'venv', str(checkout), over_this_one=True)
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


@pytest.fixture(scope='session')
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    where = tmp_path_factory.mktemp('server')
    server = start_mlflow_server(where)
    yield server.url
    stop(server.proc)
    shutil.rmtree(where, ignore_errors=True)


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

"""The oldest MLflow that requirements.txt allows is a tested MLflow: a smoke
subset (a reproduction, an error, --compare-to) runs with it, in its own
virtual environment.  That environment holds everything the floor needs and
nothing of the test environment's: requirements.txt with the floor mlflow
pinned, and scikit-learn for the sample project.  The reference run is made
with the floor too, in its own store, because an older MLflow refuses a store
a newer one migrated."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT, RUN_ID_LOG_RE, SCRIPT, make_venv
from packaging.version import Version

# Installing MLflow into a new environment (by uv: seconds) and its reference run.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def mlflow_floor() -> str:
    """The version in requirements.txt's `mlflow>=X` line."""
    text = (ROOT / 'requirements.txt').read_text()
    match = re.search(r'^mlflow>=([\w.]+)', text, re.MULTILINE)
    assert match, 'requirements.txt has no mlflow>= floor'
    return match.group(1)


@pytest.fixture(scope='module')
def floor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """(the floor environment's python, the environment variables naming its store)."""
    where = tmp_path_factory.mktemp('floor')
    bin_dir = make_venv(
        where / 'venv',
        '-r',
        str(ROOT / 'requirements.txt'),
        f'mlflow=={mlflow_floor()}',
        'scikit-learn',
        by_uv=True,
    )
    # As in an activated environment: `mlflow run` starts the project's `python`
    # from PATH, which must be the floor's too.
    env = {
        **os.environ,
        'MLFLOW_TRACKING_URI': f'sqlite:///{where / "floor.db"}',
        'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
    }
    python = bin_dir / 'python'
    yield python, env
    shutil.rmtree(where, ignore_errors=True)


def floor_run(
    floor: tuple[Path, dict[str, str]], *argv: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    python, env = floor
    return subprocess.run(
        (str(python), *argv),
        capture_output=True,
        cwd=cwd,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope='module')
def floor_reference(floor, samples_repo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A run made by the floor's `mlflow run`, in a folder of its own: the
    experiment it makes keeps its artifacts under that folder's ./mlruns, and
    MLflow's storage folder (else one left in TMPDIR) is there too."""
    python, env = floor
    where = tmp_path_factory.mktemp('floor_reference')
    proc = subprocess.run(
        (
            str(python),
            '-m',
            'mlflow',
            'run',
            str(samples_repo / 'sklearn_regression'),
            '--env-manager',
            'local',
            '--storage-dir',
            str(where / 'storage'),
        ),
        capture_output=True,
        cwd=where,
        text=True,
        env={**env, 'MLFLOW_LOGGING_LEVEL': 'INFO'},
        stdin=subprocess.DEVNULL,
    )
    match = RUN_ID_LOG_RE.search(proc.stderr)
    assert proc.returncode == 0 and match and match[2] == 'succeeded', proc.stderr[-3000:]
    yield match.group(1)
    shutil.rmtree(where, ignore_errors=True)


def test_the_floor_environment_has_the_floor_mlflow(floor, tmp_path):
    proc = floor_run(floor, '-c', 'import mlflow; print(mlflow.__version__)', cwd=tmp_path)
    assert Version(proc.stdout.strip()) == Version(mlflow_floor())


def test_floor_reproduces_a_run(floor, floor_reference, tmp_path):
    proc = floor_run(floor, str(SCRIPT), '--run_id', floor_reference, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == 'Runs equal: True'


def test_floor_default_store_and_an_unknown_run(floor, tmp_path):
    """With no MLFLOW_TRACKING_URI the store is ./mlflow.db, as the README says
    (the tool refuses to make one, so MLflow of the floor makes it first)."""
    python, env = floor
    env = {k: v for k, v in env.items() if k != 'MLFLOW_TRACKING_URI'}
    floor_run(
        (python, env),
        '-c',
        'import mlflow; mlflow.MlflowClient().search_experiments()',
        cwd=tmp_path,
    )
    proc = floor_run((python, env), str(SCRIPT), '--run_id', 'f' * 32, cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, '')
    assert re.fullmatch(
        f'reproduce_run.py: error: run {"f" * 32} not found at tracking URI '
        f'sqlite:///({re.escape(str(tmp_path))}/)?mlflow.db\n',
        proc.stderr,
    ), proc.stderr[-3000:]
    assert (tmp_path / 'mlflow.db').is_file()


def test_floor_compare_to(floor, floor_reference, tmp_path):
    proc = floor_run(
        floor,
        str(SCRIPT),
        '--run_id',
        floor_reference,
        '--compare-to',
        floor_reference,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'Compared run:   {floor_reference}' in proc.stdout
    assert proc.stdout.splitlines()[-1] == 'Runs equal: True'

"""`pip install .` gives a `reproduce-run` command that behaves as
`python reproduce_run.py`.  The package is installed into a new virtual
environment that sees the test environment's packages (a .pth file), so
mlflow and the numerical packages are the very ones that made the reference
run, and the numbers can be equal; pip still checks that the declared
dependencies are satisfied.  The build backend comes from the package index."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import ROOT

import reproduce_run

pytestmark = pytest.mark.slow


def run_command(bin_dir: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        (str(bin_dir / 'reproduce-run'), *argv),
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, 'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}'},
        stdin=subprocess.DEVNULL,
    )


def test_the_command_runs_the_installed_module(installed, tmp_path):
    proc = subprocess.run(
        (str(installed / 'python'), '-c', 'import reproduce_run; print(reproduce_run.__file__)'),
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert Path(proc.stdout.strip()).is_relative_to(installed.parent)


def test_installed_help_is_the_scripts_help(installed, tmp_path):
    proc = run_command(installed, '--help', cwd=tmp_path)
    script = subprocess.run(
        (sys.executable, str(ROOT / 'reproduce_run.py'), '--help'),
        capture_output=True,
        text=True,
    )
    assert (proc.returncode, proc.stderr) == (0, '')
    # Each names itself as it was called; the rest is the same.
    assert proc.stdout.startswith('usage: reproduce-run ')
    assert script.stdout.startswith('usage: reproduce_run.py ')
    assert proc.stdout.split('\n\n', 1)[1] == script.stdout.split('\n\n', 1)[1]


def test_installed_tool_version(installed, tmp_path):
    proc = run_command(installed, '--tool-version', cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0,
        f'reproduce_run {reproduce_run.__version__}\n',
        '',
    )


def test_installed_command_errors_start_with_its_name(installed, tmp_path):
    proc = run_command(installed, '--run_id', 'a b', cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, '')
    assert proc.stderr == (
        'reproduce-run: error: argument --run_id/--run-id: expected an MLflow run ID '
        "(letters, digits, _ and -), got 'a b' (see --help)\n"
    )


def test_installed_command_reproduces_a_run(
    installed: Path, reference: Callable[..., str], tmp_path: Path
) -> None:
    run_id = reference('sklearn_regression')  # made with the same mlflow and numpy
    proc = run_command(installed, '--run_id', run_id, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0] == f'Reference run:  {run_id}'
    assert proc.stdout.splitlines()[-1] == 'Runs equal: True'

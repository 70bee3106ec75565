"""Run a sample MLflow Project through the real ``mlflow run`` CLI; print the new run's ID.

Usage::

    python MLproject_samples/make_reference.py SAMPLE [-e ENTRY] [-P key=value ...]
        [--experiment-name NAME]

SAMPLE is a folder name under ``MLproject_samples/`` (or a path to any project
folder). The project runs exactly as a user would run it, with
``python -m mlflow run <abs dir> --env-manager local ...``; a sample without an
MLproject file (``script_run``) is a plain script, run as a person does from
the top of the repository, ``python MLproject_samples/script_run/train.py
--key value ...``, one ``--key value`` per ``-P``. Either runs
against whatever
tracking URI MLflow's usual settings give (``MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` in the current folder). Everything MLflow and the
project print goes to stderr; stdout gets only the run ID, so that
``RUN_ID=$(python MLproject_samples/make_reference.py sklearn_regression)``
works. On failure: a one-line message on stderr and a non-zero exit status.

The run ID is read from MLflow's own log line ``=== Running command '...' in
run with ID '<id>' ===``, written before the project starts, so it names this
very run even when other runs share the store; it is then checked in the
tracking store (a finished project run, started after the launch). Should the
line be missing, the single project run started since the launch is taken, if
there is exactly one; for a script, the single script run (source type LOCAL)
started since the launch.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent
SCRIPT = 'train.py'  # what a sample without an MLproject file runs
RUNNING_LINE = re.compile(r"=== Running command .* in run with ID '([^']+)' === ?$")
PROG = 'make_reference'


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('sample', metavar='SAMPLE', help='sample folder name, or a project path')
    parser.add_argument('-e', '--entry-point', default='main', metavar='ENTRY')
    parser.add_argument(
        '-P',
        '--param',
        action='append',
        default=[],
        metavar='key=value',
        help='project parameter, passed on to `mlflow run -P` (repeatable)',
    )
    parser.add_argument('--experiment-name', metavar='NAME')
    args = parser.parse_args(argv)
    for param in args.param:
        if '=' not in param or param.startswith('='):
            parser.error(f'-P expects key=value, got {param!r}')
    return args


def resolve_sample(sample: str) -> Path:
    """The sample's absolute folder: a name under MLproject_samples/, else a path."""
    for candidate in (SAMPLES_DIR / sample, Path(sample)):
        if (candidate / 'MLproject').is_file() or (candidate / SCRIPT).is_file():
            return candidate.resolve()
    raise FileNotFoundError(f'no MLproject (nor {SCRIPT}) found for sample {sample!r}')


def repository_top(folder: Path) -> Path:
    """The top of the git repository that holds folder; folder itself outside one."""
    try:
        proc = subprocess.run(
            ('git', 'rev-parse', '--show-toplevel'),
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return folder
    return Path(proc.stdout.strip())


def run_mlflow(command: list[str], cwd: Path | None = None) -> tuple[int, list[str]]:
    """Run ``command``; its stdout and stderr go to our stderr. Returns (status, stderr lines)."""
    env = dict(os.environ, MLFLOW_CONFIGURE_LOGGING='true', MLFLOW_LOGGING_LEVEL='INFO')
    sys.stderr.flush()
    lines: list[str] = []
    with subprocess.Popen(
        command,
        stdout=sys.stderr,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        errors='replace',
        cwd=cwd,
    ) as proc:
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                sys.stderr.write(line)
                lines.append(line.rstrip('\n'))
        except KeyboardInterrupt:
            proc.wait()  # the child got the same SIGINT; let it cancel its run
            raise
    return proc.returncode, lines


def find_run_id(lines: list[str], launched_ms: int, source_type: str = 'PROJECT') -> str:
    """The ID of the run this launch created, checked against the tracking store."""
    from mlflow import MlflowClient
    from mlflow.entities import RunStatus

    client = MlflowClient()
    logged = next((m.group(1) for line in lines if (m := RUNNING_LINE.search(line))), None)
    if logged is not None:
        run = client.get_run(logged)
    else:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(
            experiment_ids,
            filter_string=f'attributes.start_time >= {launched_ms} '
            f"and tags.`mlflow.source.type` = '{source_type}'",
        )
        if len(runs) != 1:
            raise LookupError(f'cannot tell the new run apart ({len(runs)} candidates)')
        run = runs[0]
    if run.info.status != RunStatus.to_string(RunStatus.FINISHED):
        raise LookupError(f'run {run.info.run_id} has status {run.info.status}')
    if run.info.start_time < launched_ms:
        raise LookupError(f'run {run.info.run_id} started before this launch')
    return str(run.info.run_id)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        project_dir = resolve_sample(args.sample)
    except FileNotFoundError as exc:
        print(f'{PROG}: {exc}', file=sys.stderr)
        return 2
    script = not (project_dir / 'MLproject').is_file()
    top = repository_top(project_dir)
    if script:  # run as a person does, from the top of the repository
        command = [sys.executable, str((project_dir / SCRIPT).relative_to(top))]
        for param in args.param:
            key, _, value = param.partition('=')
            command += [f'--{key}', value]
        if args.experiment_name:
            os.environ['MLFLOW_EXPERIMENT_NAME'] = args.experiment_name
    else:
        command = [
            sys.executable,
            '-m',
            'mlflow',
            'run',
            str(project_dir),
            '--env-manager',
            'local',
        ]
        command += ['-e', args.entry_point]
        for param in args.param:
            command += ['-P', param]
        if args.experiment_name:
            command += ['--experiment-name', args.experiment_name]

    launched_ms = int(time.time() * 1000) - 1000  # a second of slack for clock granularity
    try:
        # `mlflow run` makes a folder for downloaded path parameters, in
        # --storage-dir, else in TMPDIR, and leaves it there.
        with tempfile.TemporaryDirectory(prefix='make_reference-') as storage:
            storage_args = [] if script else ['--storage-dir', storage]
            status, lines = run_mlflow(command + storage_args, cwd=top if script else None)
    except KeyboardInterrupt:
        print(f'{PROG}: interrupted', file=sys.stderr)
        return 130
    if status != 0:
        print(
            f'{PROG}: `mlflow run` of {args.sample!r} failed (exit status {status})',
            file=sys.stderr,
        )
        return status if status > 0 else 1
    try:
        run_id = find_run_id([] if script else lines, launched_ms, 'LOCAL' if script else 'PROJECT')
    except Exception as exc:  # any store or lookup error ends in the same one-line report
        print(f'{PROG}: run succeeded but its ID was not found: {exc}', file=sys.stderr)
        return 1
    print(run_id)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())

"""An MLflow project backend plugin whose "cluster" is this machine.

MLflow finds it through the `mlflow.project_backend` entry point and calls
`TestBackend().run(...)`.  Like a real scheduler plugin, it creates the MLflow
run itself (MLflow only passes a pre-created run to the local backend), runs
the job in a working folder of its own, and returns at once with a
`SubmittedRun` to wait on, poll or cancel.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import ExecutionException
from mlflow.projects.backend.abstract_backend import AbstractBackend
from mlflow.projects.submitted_run import SubmittedRun
from mlflow.projects.utils import (
    PROJECT_ENV_MANAGER,
    fetch_and_validate_project,
    get_entry_point_command,
    get_or_create_run,
    load_project,
)

NAME = 'reproduce-test-backend'
TAG_QUEUE = 'reproduce_test_backend.queue'
TAG_JOB_DIR = 'reproduce_test_backend.job_dir'
DEFAULT_GRACE_SECONDS = 10.0


class JobSubmittedRun(SubmittedRun):
    """A job started by TestBackend: a process group led by `bash -c`."""

    def __init__(
        self,
        run_id: str,
        proc: subprocess.Popen[bytes],
        tracking_uri: str,
        job_dir: str,
        keep_job_dir: bool,
        grace_seconds: float,
    ) -> None:
        super().__init__()
        self._run_id = run_id
        self._proc = proc
        self._client = MlflowClient(tracking_uri)
        self._job_dir = job_dir
        self._keep_job_dir = keep_job_dir
        self._grace_seconds = grace_seconds
        self._lock = threading.Lock()
        self._cancelled = False

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def pid(self) -> int:
        return self._proc.pid

    def wait(self) -> bool:
        returncode = self._proc.wait()
        self._finish()
        return returncode == 0

    def get_status(self) -> str:
        if self._proc.poll() is None:
            return RunStatus.to_string(RunStatus.RUNNING)
        return self._finish()

    def cancel(self) -> None:
        """End the job's whole process group (SIGTERM, then SIGKILL after the
        grace period), wait for it, and mark the run KILLED."""
        self._cancelled = True
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)
            try:
                self._proc.wait(self._grace_seconds)
                break
            except subprocess.TimeoutExpired:
                continue
        self._proc.wait()
        self._finish()

    def _status(self) -> str:
        if self._cancelled:
            return 'KILLED'
        return 'FINISHED' if self._proc.returncode == 0 else 'FAILED'

    def _finish(self) -> str:
        """Once the job has ended: record its outcome on the MLflow run, and
        remove a temporary job folder.  A job that failed or was cancelled
        is FAILED or KILLED even if its code ended the run as FINISHED
        (MLflow's fluent API does so at exit, whatever the exit status)."""
        status = self._status()
        with self._lock:
            current = self._client.get_run(self._run_id).info.status
            unfinished = current in ('RUNNING', 'SCHEDULED')
            if current != status and (status != 'FINISHED' or unfinished):
                self._client.set_terminated(self._run_id, status)
            if not self._keep_job_dir:
                shutil.rmtree(self._job_dir, ignore_errors=True)
        return status


class TestBackend(AbstractBackend):
    __test__ = False  # not a pytest test class

    def run(
        self,
        project_uri: str,
        entry_point: str,
        params: dict[str, Any],
        version: str | None,
        backend_config: dict[str, Any],
        tracking_uri: str,
        experiment_id: str,
    ) -> JobSubmittedRun:
        if backend_config.get('fail_submit'):
            raise ExecutionException(f'{NAME}: the scheduler rejected the job (fail_submit)')
        env_manager = backend_config.get(PROJECT_ENV_MANAGER)
        if env_manager not in (None, 'local'):
            raise ExecutionException(
                f'{NAME} runs jobs in the submitting Python environment; env manager '
                f'{env_manager!r} is not supported'
            )
        source_dir = fetch_and_validate_project(project_uri, version, entry_point, params)
        job_dir, keep = _job_dir(backend_config.get('workdir'))
        project_dir = os.path.join(job_dir, 'project')
        shutil.copytree(source_dir, project_dir)
        project = load_project(project_dir)
        # MLflow's own helper, as its Databricks and Kubernetes backends use:
        # tags for source, commit and entry point, and the params it logs.
        run = get_or_create_run(
            None, project_uri, experiment_id, project_dir, version, entry_point, params
        )
        run_id = run.info.run_id
        client = MlflowClient(tracking_uri)
        client.set_tag(run_id, TAG_JOB_DIR, job_dir)
        if 'queue' in backend_config:
            client.set_tag(run_id, TAG_QUEUE, str(backend_config['queue']))
        if 'submit_seconds' in backend_config:
            _prepare(run_id, float(backend_config['submit_seconds']))
        command = ' && '.join(
            get_entry_point_command(project, entry_point, params, os.path.join(job_dir, 'storage'))
        )
        proc = _start_job(command, project_dir, run_id, tracking_uri, experiment_id)
        grace = float(backend_config.get('grace_seconds', DEFAULT_GRACE_SECONDS))
        return JobSubmittedRun(run_id, proc, tracking_uri, job_dir, keep, grace)


def _prepare(run_id: str, seconds: float) -> None:
    """What a scheduler does before the job starts (a docker build, say):
    it takes `seconds` and prints a line about the run in the submitting
    process, on its standard output and error."""
    print(f'{NAME}: preparing the job of run {run_id}', flush=True)
    time.sleep(seconds)
    print(f'{NAME}: the job of run {run_id} is ready', file=sys.stderr, flush=True)


def _job_dir(workdir: str | None) -> tuple[str, bool]:
    """(a new job folder, whether to keep it after the job)."""
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        return tempfile.mkdtemp(prefix='job-', dir=workdir), True
    return tempfile.mkdtemp(prefix='reproduce-test-backend-job-'), False


def _start_job(
    command: str, cwd: str, run_id: str, tracking_uri: str, experiment_id: str
) -> subprocess.Popen[bytes]:
    """The job leads its own session, so that cancel() reaches every process
    it starts; it logs into the run through MLflow's environment variables."""
    env = {
        **os.environ,
        'MLFLOW_RUN_ID': run_id,
        'MLFLOW_TRACKING_URI': tracking_uri,
        'MLFLOW_EXPERIMENT_ID': str(experiment_id),
    }
    return subprocess.Popen(
        ('bash', '-c', command), cwd=cwd, env=env, stdin=subprocess.DEVNULL, start_new_session=True
    )

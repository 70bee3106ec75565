#!/usr/bin/env python3
"""Reproduce an MLflow run: re-execute its MLflow Project at the recorded git
commit with the recorded parameters, then compare the new run's metrics with
the old run's and give a verdict.

    python reproduce_run.py --run_id d1b4b10969174863a2bad1342f6746ce

The pipeline: resolve the reference run, fetch the source at its commit into a
temporary folder, launch the reproduction with mlflow.projects.run(), judge the
metric histories, report.  mlflow is imported lazily: --help and argument
errors answer without paying for its import.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import fnmatch
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

# Exit codes: the contract with cron jobs and CI.
EXIT_EQUAL = 0
EXIT_DIFFER = 1
EXIT_CANNOT_START = 2
EXIT_RUN_FAILED = 3
EXIT_INTERRUPTED = 130  # SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # SIGTERM

DEFAULT_RTOL = 1e-9
DEFAULT_ATOL = 0.0
ENV_MANAGERS = ('local', 'virtualenv', 'uv', 'conda')
DEFAULT_ENTRY_POINT = 'main'
RUN_NAME_PREFIX = 'reproduce-'
OUTPUT_TAIL_LINES = 20  # of the project's output, kept for the report
STOP_GRACE_SECONDS = 10.0  # between SIGTERM and SIGKILL to the project
HISTORY_WORKERS = 8  # concurrent metric-history requests to a remote server

# Retry settings for the tool's own requests, so that an unreachable tracking
# server fails in seconds instead of MLflow's minutes.  The user's own
# environment wins, and the project's process always gets the user's settings.
TOOL_HTTP_DEFAULTS = {
    'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '2',
    'MLFLOW_HTTP_REQUEST_TIMEOUT': '20',
}

# Tags MLflow reads and writes for projects.
TAG_SOURCE_NAME = 'mlflow.source.name'
TAG_SOURCE_TYPE = 'mlflow.source.type'
TAG_GIT_COMMIT = 'mlflow.source.git.commit'
TAG_GIT_REPO_URL = 'mlflow.source.git.repoURL'
TAG_ENTRY_POINT = 'mlflow.project.entryPoint'
TAG_PROJECT_ENV = 'mlflow.project.env'
TAG_USER = 'mlflow.user'
TAG_PROJECT_BACKEND = 'mlflow.project.backend'
# Tags this tool writes on the reproduced run (never on the reference run).
TAG_REFERENCE_RUN_ID = 'reproduce.reference_run_id'
TAG_EQUAL = 'reproduce.equal'  # 'true' or 'false'
TAG_STATUS = 'reproduce.status'  # equal, differ or failed
TAG_RTOL = 'reproduce.rtol'
TAG_ATOL = 'reproduce.atol'
TAG_NOTE = 'mlflow.note.content'  # the run description the MLflow UI shows
ARTIFACT_DIR = 'reproduce'  # comparison.json and plots/ go here
COMPARISON_ARTIFACT = 'comparison.json'
STATUSES = ('planned', 'equal', 'differ', 'failed', 'error')
UNFINISHED_STATUSES = ('RUNNING', 'SCHEDULED')  # MLflow run statuses not yet closed

# Execution backends: MLflow's own, then plugins registered under its entry point group.
DEFAULT_BACKEND = 'local'
BUILTIN_BACKENDS = ('local', 'kubernetes', 'databricks')
BACKEND_ENTRY_POINT_GROUP = 'mlflow.project_backend'
KUBERNETES_REQUIRED_KEYS = ('kube-job-template-path', 'repository-uri')  # as MLflow checks
KUBERNETES_PACKAGES = ('kubernetes', 'docker')  # mlflow.projects.kubernetes imports both
MASKED = '***'

_RUN_ID_RE = re.compile(r'^[a-zA-Z0-9][\w\-]{0,255}$')  # MLflow's own rule
_URL_CREDENTIALS_RE = re.compile(r'(?P<scheme>[a-zA-Z][\w+.-]*://)[^/@\s]+@')
_MLFLOW_LOG_LINE_RE = re.compile(r'^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d [A-Z]+ mlflow[\w.]*: ')
_SECRET_KEY_RE = re.compile(r'token|secret|password|key', re.IGNORECASE)  # config keys to mask


class ReproduceError(Exception):
    """An expected failure: one line for the user and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_CANNOT_START) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Terminated(BaseException):
    """Raised in the main thread on SIGTERM, like KeyboardInterrupt on SIGINT."""


# ---------------------------------------------------------------------------
# Judging: pure functions, histories in, verdict out.

Point = tuple[int | None, float]  # (step, value); step None: latest value only


@dataclasses.dataclass(frozen=True)
class Tolerance:
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL


@dataclasses.dataclass(frozen=True)
class Rules:
    """How each metric is judged: a tolerance, overridden per key glob (the
    last matching --tolerance wins), or left out of the verdict."""
    default: Tolerance = Tolerance()
    overrides: tuple[tuple[str, Tolerance], ...] = ()
    ignored: tuple[str, ...] = ()

    def tolerance_for(self, key: str) -> Tolerance:
        for pattern, tol in reversed(self.overrides):
            if fnmatch.fnmatchcase(key, pattern):
                return tol
        return self.default

    def is_ignored(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.ignored)

    def unmatched(self, keys: Sequence[str]) -> list[str]:
        """Patterns that match no metric: most likely a typo."""
        patterns = [p for p, _ in self.overrides] + list(self.ignored)
        return [p for p in patterns if not any(fnmatch.fnmatchcase(k, p) for k in keys)]


@dataclasses.dataclass(frozen=True)
class MetricVerdict:
    key: str
    reference: float | None  # latest value, None when the run lacks it
    reproduced: float | None
    equal: bool
    steps_compared: int  # points present in both histories
    first_divergent_step: int | None
    points: int = 1  # length of the longer history
    tolerance: Tolerance = Tolerance()
    ignored: bool = False  # listed, but not part of the verdict


@dataclasses.dataclass(frozen=True)
class ParamVerdict:
    key: str
    reference: str | None
    reproduced: str | None

    @property
    def equal(self) -> bool:
        return self.reference == self.reproduced


@dataclasses.dataclass(frozen=True)
class Verdict:
    metrics: tuple[MetricVerdict, ...]
    params: tuple[ParamVerdict, ...] = ()

    @property
    def equal(self) -> bool:
        return (all(m.equal for m in self.metrics if not m.ignored)
                and all(p.equal for p in self.params))


def values_close(reproduced: float, reference: float, tol: Tolerance) -> bool:
    """|a - b| <= atol + rtol * |b|, where NaN equals NaN and inf equals inf."""
    if math.isnan(reproduced) or math.isnan(reference):
        return math.isnan(reproduced) and math.isnan(reference)
    if math.isinf(reproduced) or math.isinf(reference):
        return reproduced == reference
    return abs(reproduced - reference) <= tol.atol + tol.rtol * abs(reference)


def value_diff(reproduced: float | None, reference: float | None) -> float | None:
    """reproduced - reference, 0 for two equal non-finite values."""
    if reproduced is None or reference is None:
        return None
    if values_close(reproduced, reference, Tolerance(0.0, 0.0)):
        return 0.0
    return reproduced - reference


def compare_histories(
        key: str,
        reference: Sequence[Point],
        reproduced: Sequence[Point],
        tol: Tolerance,
) -> MetricVerdict:
    """Compare two histories point by point, in step order.

    Several values logged at one step are compared in the order they were
    logged.  A point missing on one side is a divergence at its step.
    """
    ref = sorted(reference, key=lambda p: p[0] or 0)  # stable: keeps logging order
    new = sorted(reproduced, key=lambda p: p[0] or 0)
    divergence = _first_divergence(ref, new, tol)
    return MetricVerdict(
        key=key,
        reference=ref[-1][1] if ref else None,
        reproduced=new[-1][1] if new else None,
        equal=bool(ref) and bool(new) and divergence is None,
        steps_compared=min(len(ref), len(new)),
        # None for latest values only, whose step is not known.
        first_divergent_step=divergence[0] if divergence else None,
        points=max(len(ref), len(new)),
        tolerance=tol,
    )


def _first_divergence(
        ref: Sequence[Point], new: Sequence[Point], tol: Tolerance,
) -> tuple[int | None] | None:
    """(step,) of the first point that differs, None when none does."""
    for (ref_step, ref_value), (new_step, new_value) in zip(ref, new):
        if ref_step != new_step:
            return (min(ref_step, new_step),)
        if not values_close(new_value, ref_value, tol):
            return (ref_step,)
    if len(ref) != len(new):
        longer = ref if len(ref) > len(new) else new
        return (longer[min(len(ref), len(new))][0],)
    return None


def judge(
        reference: Mapping[str, Sequence[Point]],
        reproduced: Mapping[str, Sequence[Point]],
        rules: Rules,
        params: Sequence[ParamVerdict] = (),
) -> Verdict:
    """Every metric that either run has, each compared as a whole history."""
    metrics = []
    for key in sorted(set(reference) | set(reproduced)):
        verdict = compare_histories(
            key, reference.get(key, ()), reproduced.get(key, ()), rules.tolerance_for(key),
        )
        metrics.append(dataclasses.replace(verdict, ignored=rules.is_ignored(key)))
    return Verdict(tuple(metrics), tuple(params))


def compare_params(
        reference: Mapping[str, str], reproduced: Mapping[str, str], keys: Sequence[str],
) -> list[ParamVerdict]:
    return [ParamVerdict(k, reference.get(k), reproduced.get(k)) for k in sorted(keys)]


# ---------------------------------------------------------------------------
# Resolving the reference run into a plan.

@dataclasses.dataclass(frozen=True)
class Source:
    repo: str  # git URL or local path, as recorded (may hold credentials)
    subdir: str  # project folder inside the repo, '' for its root
    version: str

    @property
    def uri(self) -> str:
        return f'{self.repo}#{self.subdir}' if self.subdir else self.repo


@dataclasses.dataclass(frozen=True)
class Params:
    passed: dict[str, str]
    not_passed: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Backend:
    """Where the project runs: an MLflow execution backend and its config
    (the dict `mlflow run -c` passes; it may hold credentials)."""
    name: str = DEFAULT_BACKEND
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the launch needs, resolved before anything runs."""
    reference: Run
    source: Source  # its version is the full commit hash
    project_dir: str  # the project folder inside our private checkout
    entry_point: str
    env_manager: str
    experiment_name: str
    params: Params
    logged_params: dict[str, str]  # what MLflow would log for this launch
    command: str  # the entry point's command template
    backend: Backend = Backend()
    reference_backend: str | None = None  # the reference run's mlflow.project.backend tag

    @property
    def declared(self) -> tuple[str, ...]:
        """The params the entry point declares (for a script: those passed)."""
        return tuple(self.logged_params)


def mask_credentials(text: str) -> str:
    """Hide the user:password part of every URL in text."""
    return _URL_CREDENTIALS_RE.sub(r'\g<scheme>***@', text)


def warn(message: str) -> None:
    print(f'reproduce_run: warning: {mask_credentials(message)}', file=sys.stderr)


def split_source_uri(uri: str) -> tuple[str, str]:
    """'repo#sub/dir' -> ('repo', 'sub/dir'), the way MLflow writes sources."""
    repo, _, subdir = uri.partition('#')
    return repo, subdir.strip('/')


def unquote_param(value: str) -> str:
    """Undo the shell quoting MLflow applies to the param values it logs.

    MLflow 3 logs a declared param as shlex.quote(value), so 'a b' is logged
    with its quotes; passing that back would add a second layer.  A logged value
    is unquoted only when quoting the result gives it back exactly.
    """
    try:
        tokens = shlex.split(value)
    except ValueError:
        return value
    if len(tokens) == 1 and shlex.quote(tokens[0]) == value:
        return tokens[0]
    return value


def _unquoted(params: Mapping[str, str]) -> dict[str, str]:
    return {k: unquote_param(v) for k, v in params.items()}


def resolve_source(run: Run, uri: str | None, version: str | None) -> Source:
    tags = run.data.tags
    if uri is None:
        if tags.get(TAG_SOURCE_TYPE) != 'PROJECT' or not tags.get(TAG_SOURCE_NAME):
            raise ReproduceError(
                f'run {run.info.run_id} was not launched as an MLflow Project '
                f'(tag {TAG_SOURCE_TYPE} is {tags.get(TAG_SOURCE_TYPE)!r}, not '
                f"'PROJECT'), so its source is unknown; pass --uri with the "
                f'project\'s git URI',
            )
        uri = tags[TAG_SOURCE_NAME]
    version = version or tags.get(TAG_GIT_COMMIT)
    if not version:
        raise ReproduceError(
            f'run {run.info.run_id} has no tag {TAG_GIT_COMMIT}, so the commit '
            f'it ran is unknown; pass --version with the commit',
        )
    repo, subdir = split_source_uri(uri)
    return Source(repo=repo, subdir=subdir, version=version)


def select_params(
        declared: Sequence[str] | None,
        reference_params: Mapping[str, str],
) -> Params:
    """Only what the entry point declares; None means a script entry point,
    which MLflow ran with every param it was given."""
    values = _unquoted(reference_params)
    if declared is None:
        return Params(passed=values, not_passed={})
    return Params(
        passed={k: v for k, v in values.items() if k in declared},
        not_passed={k: v for k, v in values.items() if k not in declared},
    )


def quoted_placeholders(command: str) -> set[str]:
    """Names of the {placeholders} that stand inside quotes in a command.

    MLflow shell-quotes each value it puts in place of a placeholder, but an
    author's quotes around the placeholder ('{msg}' or "{msg}") end that
    quoting: a value such as `x; touch /tmp/pwned` then runs as a command.
    """
    found, quote, i = set(), '', 0
    while i < len(command):
        c = command[i]
        if c == '\\' and quote != "'":
            i += 2
            continue
        if c in '\'"' and (not quote or quote == c):
            quote = '' if quote else c
        elif c == '{' and command.startswith('{{', i):
            i += 1  # a literal brace in str.format
        elif c == '{' and (m := re.match(r'\{(\w+)\}', command[i:])):
            if quote:
                found.add(m.group(1))
        i += 1
    return found


def unsafe_params(command: str, passed: Mapping[str, str]) -> list[str]:
    """Params whose value would escape the author's quotes: it needs quoting
    (shell metacharacters, spaces, quotes) and its placeholder is quoted."""
    quoted = quoted_placeholders(command)
    return sorted(k for k, v in passed.items() if k in quoted and v and shlex.quote(v) != v)


# ---------------------------------------------------------------------------
# Execution backends: where the project runs, checked before anything runs.

def _json_type(value: object) -> str:
    names = {dict: 'object', list: 'array', str: 'string', bool: 'boolean', type(None): 'null'}
    return names.get(type(value), 'number')


def parse_backend_config(text: str) -> dict[str, Any]:
    """--backend-config: a path ending in .json (MLflow reads no other file)
    or an inline JSON object.  An inline value is never echoed: it may hold
    a token."""
    if text.endswith('.json'):
        where = f'file {text!r}'
        try:
            with open(text) as f:
                value = json.load(f)
        except OSError as e:
            raise ReproduceError(f'cannot read --backend-config {where}: {e.strerror}') from None
        except ValueError as e:
            raise ReproduceError(f'--backend-config {where} is not valid JSON: {e}') from None
    else:
        where = 'value'
        try:
            value = json.loads(text)
        except ValueError as e:
            raise ReproduceError(
                f'--backend-config is neither a path ending in .json nor an inline JSON '
                f'object ({e})',
            ) from None
    if not isinstance(value, dict):
        raise ReproduceError(
            f'--backend-config {where} holds a JSON {_json_type(value)}, not an object')
    return value


def available_backends() -> list[str]:
    """MLflow's backends, then the plugins installed in this environment
    (read from package metadata: no mlflow import)."""
    from importlib.metadata import entry_points

    plugins = {ep.name for ep in entry_points(group=BACKEND_ENTRY_POINT_GROUP)}
    return [*BUILTIN_BACKENDS, *sorted(plugins - set(BUILTIN_BACKENDS))]


def mask_config(value: Any) -> Any:
    """A backend config fit to print: the values of keys that name a token,
    secret, password or key are hidden, and so are credentials in URLs."""
    if isinstance(value, Mapping):
        return {k: MASKED if _SECRET_KEY_RE.search(str(k)) else mask_config(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [mask_config(v) for v in value]
    if isinstance(value, str):
        return mask_credentials(value)
    return value


def validate_backend(name: str, config: Mapping[str, Any], project_dir: str | None = None,
                     where: str = 'the project') -> None:
    """What MLflow would refuse only after creating the run (or never, for a
    missing package), refused first; project_dir None checks the name and
    config alone."""
    available = available_backends()
    if name not in available:
        raise ReproduceError(f'unknown backend {name!r}; available: {", ".join(available)}')
    if name == 'kubernetes':
        check_kubernetes_config(config)
    elif name == 'databricks':
        check_databricks_config(config)
    if project_dir is not None:
        check_backend_project(name, project_dir, where)


def check_kubernetes_config(config: Mapping[str, Any]) -> None:
    missing = [k for k in KUBERNETES_REQUIRED_KEYS if not config.get(k)]
    if missing:
        raise ReproduceError(
            f'the kubernetes backend needs {", ".join(map(repr, missing))} in --backend-config '
            f'(required: {", ".join(KUBERNETES_REQUIRED_KEYS)})')
    _check_job_template(str(config['kube-job-template-path']))
    import importlib.util

    for package in KUBERNETES_PACKAGES:
        if importlib.util.find_spec(package) is None:
            raise ReproduceError(
                f'the kubernetes backend needs the Python package {package!r}, which is not '
                f'installed (pip install {package})')


def _check_job_template(path: str) -> None:
    """MLflow fills in spec.template.spec.containers[0] of the template."""
    import yaml

    try:
        with open(path) as f:
            template = yaml.safe_load(f)
    except OSError as e:
        raise ReproduceError(f'cannot read kube-job-template-path {path!r}: {e.strerror}') from None
    except yaml.YAMLError as e:
        raise ReproduceError(
            f'kube-job-template-path {path!r} is not valid YAML: {_last_line(str(e))}') from None
    try:
        containers = template['spec']['template']['spec']['containers']
        ok = isinstance(containers, list) and isinstance(containers[0], dict)
    except (TypeError, KeyError, IndexError):
        ok = False
    if not ok:
        raise ReproduceError(
            f'kube-job-template-path {path!r} is not a Kubernetes Job template with a '
            f'container at spec.template.spec.containers[0]')


def check_databricks_config(config: Mapping[str, Any]) -> None:
    """MLflow's own checks before a Databricks run (a new-cluster spec, a
    tracking URI the cluster can reach), then the workspace credentials that
    MLflow would only look for when submitting."""
    import logging

    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.projects.databricks import before_run_validations
    from mlflow.utils.databricks_utils import get_databricks_host_creds

    tracking_uri = mlflow.get_tracking_uri()
    try:
        before_run_validations(tracking_uri, dict(config) or None)
    except MlflowException as e:
        raise ReproduceError(f'cannot run on databricks: {_last_line(e.message)}') from None
    # MLflow logs a warning for each credential source it tries; one error line says it.
    quiet = logging.getLogger('mlflow.utils.databricks_utils')
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        get_databricks_host_creds(tracking_uri)
    except Exception:
        raise ReproduceError(
            f'cannot run on databricks: no Databricks workspace is configured for tracking URI '
            f'{mask_credentials(tracking_uri)!r} (set DATABRICKS_HOST and DATABRICKS_TOKEN, '
            f'or a profile in ~/.databrickscfg)',
        ) from None
    finally:
        quiet.setLevel(level)


def check_backend_project(name: str, project_dir: str, where: str) -> None:
    from mlflow.projects import _project_spec

    docker_env = _project_spec.load_project(project_dir).docker_env
    if name == 'kubernetes' and not docker_env:
        raise ReproduceError(
            f'the kubernetes backend runs docker_env projects only (it builds the job\'s image '
            f'from docker_env), and the MLproject of {where} has no docker_env')
    if name == 'databricks' and docker_env:
        raise ReproduceError(
            f'the databricks backend does not run docker_env projects, and the MLproject of '
            f'{where} has one')


def backend_from_args(args: argparse.Namespace) -> Backend:
    """The backend and its config, checked before the reference run is even
    read: config errors first, then the backend's name and needs."""
    config = parse_backend_config(args.backend_config) if args.backend_config else {}
    validate_backend(args.backend, config)
    return Backend(args.backend, config)


def validate_backend_project(plan: Plan) -> None:
    """The checks that need the project at its commit (docker_env)."""
    where = f'{mask_credentials(plan.source.uri)} at {plan.source.version[:12]}'
    if plan.backend.name in ('kubernetes', 'databricks'):
        check_backend_project(plan.backend.name, plan.project_dir, where)


def refuse_unwired_backend(plan: Plan) -> None:
    """Until the launch goes through SubmittedRun, only local runs: never
    run locally what the user asked to run elsewhere."""
    if plan.backend.name != DEFAULT_BACKEND:
        raise ReproduceError(
            f'launching on backend {plan.backend.name!r} is not implemented yet; --dry-run '
            f'shows the plan')


def warn_about_reference_backend(plan: Plan) -> None:
    if plan.reference_backend and plan.reference_backend != plan.backend.name:
        warn(f'run {plan.reference.info.run_id} ran on backend {plan.reference_backend!r} '
             f'(tag {TAG_PROJECT_BACKEND}) and this reproduction runs on '
             f'{plan.backend.name!r}; pass --backend {plan.reference_backend} (with its '
             f'--backend-config) to reproduce it there')


# ---------------------------------------------------------------------------
# Fetching the source: a private checkout, never the user's repository.

def _git(*args: str, cwd: str | None = None) -> str:
    env = {**os.environ, 'GIT_TERMINAL_PROMPT': '0'}
    proc = subprocess.run(
        ('git', *args), cwd=cwd, env=env, capture_output=True, text=True,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode:
        raise subprocess.CalledProcessError(
            proc.returncode, args, proc.stdout, proc.stderr,
        )
    return proc.stdout.strip()


def _local_repo(repo: str) -> str | None:
    """The folder a local path or file:// URL names, None for a remote."""
    path = repo[len('file://'):] if repo.startswith('file://') else repo
    if '://' in path or re.match(r'^[\w.-]+@[\w.-]+:', path):
        return None
    return os.path.abspath(path)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ''


def fetch_source(source: Source, dest: str) -> tuple[str, str]:
    """Check the commit out into dest; return (project folder, full commit).

    A local repository is only read (git fetch runs upload-pack on it), so its
    branch, HEAD, remotes, stash and uncommitted edits stay as they were.
    """
    where = f'{mask_credentials(source.uri)} at {source.version}'
    repo, subdir = source.repo, source.subdir
    if (local := _local_repo(source.repo)) is not None:
        # MLflow may record a folder inside a repository: fetch from its top.
        try:
            repo = _git('rev-parse', '--show-toplevel', cwd=local)
        except (subprocess.CalledProcessError, OSError):
            raise ReproduceError(f'cannot fetch {where}: {local} is not a git repository') from None
        subdir = os.path.normpath(os.path.join(os.path.relpath(local, repo), subdir))
        subdir = '' if subdir == '.' else subdir
    _git('init', '--quiet', dest)
    try:  # a full hash, a branch or a tag: one commit, no history
        _git('fetch', '--quiet', '--depth', '1', repo, source.version, cwd=dest)
        wanted = 'FETCH_HEAD'
    except subprocess.CalledProcessError:
        # A short hash, or a server that refuses fetching by hash: take every
        # ref and look the version up among their history.
        try:
            _git('fetch', '--quiet', repo, '+refs/*:refs/fetched/*', cwd=dest)
        except subprocess.CalledProcessError as e:
            raise ReproduceError(
                f'cannot fetch {where}: {mask_credentials(_last_line(e.stderr))}',
            ) from None
        wanted = source.version
    try:
        commit = _git('rev-parse', '--verify', '--quiet', f'{wanted}^{{commit}}', cwd=dest)
    except subprocess.CalledProcessError:
        raise ReproduceError(
            f'commit {source.version} is not available from '
            f'{mask_credentials(source.repo)} (history rewritten, or a typo?)',
        ) from None
    _git('-c', 'advice.detachedHead=false', 'checkout', '--quiet', commit, cwd=dest)
    if os.path.exists(os.path.join(dest, '.gitmodules')):
        try:
            _git('submodule', 'update', '--init', '--recursive', '--quiet', cwd=dest)
        except subprocess.CalledProcessError as e:
            raise ReproduceError(
                f'cannot fetch the submodules of {where}: '
                f'{mask_credentials(_last_line(e.stderr))}',
            ) from None
    project_dir = os.path.join(dest, subdir)
    if not os.path.isdir(project_dir):
        raise ReproduceError(
            f'folder {subdir!r} does not exist at commit {commit[:12]} '
            f'of {mask_credentials(source.repo)}',
        )
    return project_dir, commit


# ---------------------------------------------------------------------------
# Talking to MLflow: reading the reference run, launching the reproduction.

_CONNECTION_FAILURE_RE = re.compile(r'\[Errno -?\d+\] ([^"\')]+)|(Read timed out)')


def _mlflow_error(context: str, e: Exception, code: int = EXIT_CANNOT_START) -> ReproduceError:
    """One line from an MLflow failure; a connection failure in few words."""
    detail = _last_line(str(e)) or type(e).__name__
    if 'Max retries exceeded' in detail or 'API request to' in detail:
        match = _CONNECTION_FAILURE_RE.search(detail)
        reason = next(g for g in match.groups() if g) if match else 'no answer'
        detail = f'the tracking server does not answer ({reason.strip()})'
    return ReproduceError(mask_credentials(f'{context}: {detail}'), code)


def read_reference(client: MlflowClient, run_id: str, tracking_uri: str) -> Run:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
        experiment = client.get_experiment(run.info.experiment_id)
    except MlflowException as e:
        if e.error_code == 'RESOURCE_DOES_NOT_EXIST':
            raise ReproduceError(
                f'run {run_id} not found at tracking URI {mask_credentials(tracking_uri)}',
            ) from None
        raise _mlflow_error(f'cannot read run {run_id} from {tracking_uri}', e) from None
    if run.info.status in UNFINISHED_STATUSES:
        warn(f'run {run_id} is still {run.info.status}: its metrics may be incomplete')
    # Deleting an experiment deletes its runs: name the cause.
    if experiment.lifecycle_stage == 'deleted':
        raise ReproduceError(
            f'run {run_id} is in deleted experiment {experiment.name!r}; restore '
            f'it with `mlflow experiments restore --experiment-id '
            f'{experiment.experiment_id}` to reproduce the run',
        )
    if run.info.lifecycle_stage == 'deleted':
        raise ReproduceError(
            f'run {run_id} is deleted; restore it with `mlflow runs restore '
            f'--run-id {run_id}` to reproduce it',
        )
    return run


def load_entry_point(project_dir: str, name: str, commit: str) -> tuple[Any, bool]:
    """MLflow's entry point object, and whether the MLproject declares it
    (rather than it being a script file that MLflow runs with every param)."""
    from mlflow.projects import _project_spec

    try:
        project = _project_spec.load_project(project_dir)
        return project.get_entry_point(name), name in (project._entry_points or {})
    except Exception as e:  # yaml's errors, or a structure MLflow trips over
        raise ReproduceError(
            f'the MLproject at commit {commit[:12]} cannot be used: {_last_line(str(e))}',
        ) from None


def params_to_log(entry_point: Any, params: Params) -> dict[str, str]:
    """The params MLflow itself would log for this launch (declared ones with
    their defaults filled in, quoted as MLflow quotes them); fails before
    anything runs when a declared param has neither a value nor a default."""
    from mlflow.exceptions import MlflowException

    try:
        declared, extra = entry_point.compute_parameters(params.passed, storage_dir=None)
    except MlflowException as e:
        raise ReproduceError(
            f'entry point {entry_point.name!r} cannot run with the reference '
            f'run\'s params: {_last_line(str(e))}',
        ) from None
    return {**declared, **extra}


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name)
    if experiment.lifecycle_stage == 'deleted':
        raise ReproduceError(
            f'experiment {name!r} is deleted; restore it or choose another '
            f'with --experiment-name',
        )
    return experiment.experiment_id


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return 'unknown'


def reproduced_run_tags(plan: Plan) -> dict[str, str]:
    """What a reproduced run carries: the original source and commit (never
    our temporary checkout), with credentials masked."""
    return {
        TAG_SOURCE_NAME: mask_credentials(plan.source.uri),
        TAG_SOURCE_TYPE: 'PROJECT',
        TAG_GIT_COMMIT: plan.source.version,
        TAG_GIT_REPO_URL: mask_credentials(plan.source.repo),
        TAG_ENTRY_POINT: plan.entry_point,
        TAG_PROJECT_ENV: plan.env_manager,
        TAG_USER: _user(),
        TAG_REFERENCE_RUN_ID: plan.reference.info.run_id,
    }


def reproduced_run_name(plan: Plan) -> str:
    return RUN_NAME_PREFIX + (plan.reference.info.run_name or plan.reference.info.run_id)


def fixup_backend_run(client: MlflowClient, run_id: str, plan: Plan) -> None:
    """Make a run that a non-local backend created look like a local
    reproduction.  MLflow hands a pre-created run to the local backend only;
    the others create their own, named at random and pointing at our
    temporary checkout.  MLflow's mlflow.project.backend tag stays."""
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    try:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in reproduced_run_tags(plan).items()])
        client.update_run(run_id, name=reproduced_run_name(plan))
    except MlflowException as e:
        raise _mlflow_error(f'cannot record the source and name of run {run_id}', e) from None


def create_reproduced_run(client: MlflowClient, plan: Plan) -> Run:
    """The run that the project will log into, made by us so that its ID is
    known from the start and it can always be closed."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    try:
        run = client.create_run(
            _experiment_id(client, plan.experiment_name),
            tags=reproduced_run_tags(plan),
            run_name=reproduced_run_name(plan),
        )
    except MlflowException as e:
        raise _mlflow_error('cannot create the reproduced run', e) from None
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, v) for k, v in plan.logged_params.items()])
    except Exception as e:
        close_run(client, run_id, 'FAILED')
        raise _mlflow_error(f'cannot log the params of run {run_id} (marked FAILED)', e) from None
    return run


class _OutputTee:
    """A pipe for the project's stdout and stderr.  A thread copies what
    arrives to our standard error and keeps the last lines for the report."""

    def __init__(self) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
        read_fd, self.write_fd = os.pipe()
        self._out = os.fdopen(os.dup(2), 'wb', buffering=0)
        self._thread = threading.Thread(target=self._copy, args=(read_fd,), daemon=True)
        self._thread.start()

    def _copy(self, read_fd: int) -> None:
        pending = b''
        with os.fdopen(read_fd, 'rb', buffering=0) as pipe:
            while chunk := pipe.read(65536):
                self._out.write(chunk)
                *lines, pending = (pending + chunk).split(b'\n')
                self.tail.extend(line.decode(errors='replace').rstrip() for line in lines)
        if pending:
            self.tail.append(pending.decode(errors='replace').rstrip())

    def close_writer(self) -> None:
        """Our copy of the write end: once closed, the pipe ends with the project."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def close(self) -> None:
        self.close_writer()
        # A daemon the project left behind may hold the pipe open: don't wait on it.
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._out.close()


@contextlib.contextmanager
def _environ(changes: Mapping[str, str | None]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in changes}

    def apply(values: Mapping[str, str | None]) -> None:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    apply(changes)
    try:
        yield
    finally:
        apply(saved)


@contextlib.contextmanager
def _stdio_into(fd: int) -> Iterator[None]:
    """Point file descriptors 1 and 2 at fd, so that the processes MLflow
    starts inherit it: the report alone goes to standard output."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for target, copy in enumerate(saved, start=1):
            os.dup2(copy, target)
            os.close(copy)


def _project_environ(
        user_environ: Mapping[str, str | None], tmp_dir: str, verbose: bool,
) -> dict[str, str | None]:
    """What the project's processes inherit: the user's own HTTP settings,
    this Python first on PATH (for `mlflow run` and, with env-manager local,
    for the project), and a temporary folder that we remove afterwards."""
    path = os.pathsep.join((os.path.dirname(sys.executable), os.environ.get('PATH', '')))
    changes = {**user_environ, 'PATH': path, 'TMPDIR': tmp_dir}
    if not verbose and 'MLFLOW_LOGGING_LEVEL' not in os.environ:
        changes['MLFLOW_LOGGING_LEVEL'] = 'WARNING'
    return changes


def _raise_terminated(signum: int, frame: object) -> NoReturn:
    raise _Terminated()


@contextlib.contextmanager
def _signal_handlers(handlers: Mapping[signal.Signals, Any]) -> Iterator[None]:
    """Install handlers for the duration, then restore the previous ones
    (signal handlers can only be set from the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# SIGTERM becomes an exception, so that cleanup code runs as for Ctrl-C.
_SIGTERM_RAISES = {signal.SIGTERM: _raise_terminated}
# While cleaning up after an interrupt: a second Ctrl-C must not stop the
# cleanup halfway and leave the run RUNNING.
_SIGNALS_IGNORED = {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN}


def stop_process_group(proc: subprocess.Popen[Any]) -> None:
    """End the project's whole process group: SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(STOP_GRACE_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue


def close_run(client: MlflowClient, run_id: str, status: str) -> None:
    """Never leave the reproduced run RUNNING; best effort when the server is gone."""
    try:
        if client.get_run(run_id).info.status in UNFINISHED_STATUSES:
            client.set_terminated(run_id, status)
    except Exception as e:  # the tracking server itself may be the failure
        print(
            f'reproduce_run: warning: could not mark run {run_id} {status}: '
            f'{mask_credentials(_last_line(str(e)))}',
            file=sys.stderr,
        )


@dataclasses.dataclass(frozen=True)
class Launch:
    returncode: int
    output_tail: tuple[str, ...]


def run_project(
        client: MlflowClient,
        plan: Plan,
        run: Run,
        tmp_dir: str,
        user_environ: Mapping[str, str | None],
        verbose: bool,
) -> Launch:
    """Launch with mlflow.projects.run() into the run made for it, and wait.

    synchronous=False makes MLflow start `mlflow run` as the leader of its own
    process group, which is what lets us end the project and every process it
    started, whatever signal reaches us.
    """
    import mlflow.projects

    run_id = run.info.run_id
    child_tmp = os.path.join(tmp_dir, 'tmp')
    tee = _OutputTee()
    proc = None
    try:
        os.makedirs(child_tmp)
        environ = _project_environ(user_environ, child_tmp, verbose)
        with _environ(environ), _stdio_into(tee.write_fd):
            submitted = mlflow.projects.run(
                uri=plan.project_dir,
                entry_point=plan.entry_point,
                parameters=plan.params.passed,
                experiment_id=run.info.experiment_id,
                env_manager=plan.env_manager,
                storage_dir=os.path.join(tmp_dir, 'storage'),
                synchronous=False,
                run_id=run_id,
                backend='local',
            )
        proc = submitted.command_proc
        tee.close_writer()
        returncode = proc.wait()
    except (KeyboardInterrupt, _Terminated):
        with _signal_handlers(_SIGNALS_IGNORED):
            if proc is not None:
                stop_process_group(proc)
            close_run(client, run_id, 'KILLED')
        raise
    except Exception as e:
        with _signal_handlers(_SIGNALS_IGNORED):
            if proc is not None:
                stop_process_group(proc)
            close_run(client, run_id, 'FAILED')
        raise _mlflow_error(f'cannot launch the project (run {run_id} marked FAILED)', e) from None
    finally:
        tee.close()
    if returncode != 0:
        close_run(client, run_id, 'FAILED')
    return Launch(returncode=returncode, output_tail=tuple(tee.tail))


def read_histories(
        client: MlflowClient, runs: Sequence[Run], last_only: bool,
) -> list[dict[str, list[Point]]]:
    """Each run's metric histories, one request per metric (MlflowClient
    pages long histories), overlapped when the store is remote."""
    if last_only:  # the latest values are already in the run; their step is not
        return [{k: [(None, v)] for k, v in run.data.metrics.items()} for run in runs]
    from concurrent.futures import ThreadPoolExecutor

    wanted = [(run.info.run_id, key) for run in runs for key in run.data.metrics]

    def fetch(run_key: tuple[str, str]) -> list[Any]:
        return client.get_metric_history(*run_key)

    # Over HTTP each request waits on the network: overlap them.  A local
    # store is CPU-bound, and threads only add contention (see benchmarks/).
    if _is_http(client.tracking_uri):
        with ThreadPoolExecutor(max_workers=HISTORY_WORKERS) as pool:
            fetched = list(pool.map(fetch, wanted))
    else:
        fetched = [fetch(run_key) for run_key in wanted]
    by_run: dict[str, dict[str, list[Point]]] = {r.info.run_id: {} for r in runs}
    for (run_id, key), history in zip(wanted, fetched, strict=True):
        history = sorted(history, key=lambda m: (m.step, m.timestamp))
        by_run[run_id][key] = [(m.step, m.value) for m in history]
    return [by_run[run.info.run_id] for run in runs]


def _is_http(uri: str) -> bool:
    return uri.startswith(('http://', 'https://', 'databricks'))


def project_output(tail: Sequence[str]) -> list[str]:
    """The project's own lines, without MLflow's log lines around them."""
    return [line for line in tail if line.strip() and not _MLFLOW_LOG_LINE_RE.match(line)]


# ---------------------------------------------------------------------------
# Reporting: a Report is rendered as text, JSON or Markdown, and recorded on
# the reproduced run.

@dataclasses.dataclass(frozen=True)
class Report:
    status: str  # one of STATUSES
    exit_code: int
    reference_run_id: str
    reproduced_run_id: str | None = None
    plan: Plan | None = None  # None when comparing two existing runs
    verdict: Verdict | None = None
    rules: Rules = Rules()
    message: str | None = None
    output_tail: tuple[str, ...] = ()

    @property
    def equal(self) -> bool | None:
        return self.verdict.equal if self.status in ('equal', 'differ') and self.verdict else None


def _json_float(x: float | None) -> float | str | None:
    """JSON has no NaN or infinity: they are written as the strings
    "NaN", "Infinity" and "-Infinity", which float() reads back."""
    if x is None or math.isfinite(x):
        return x
    return 'NaN' if math.isnan(x) else ('Infinity' if x > 0 else '-Infinity')


def _relative_diff(m: MetricVerdict) -> float | None:
    diff = value_diff(m.reproduced, m.reference)
    if diff is None or diff == 0:
        return diff
    return abs(diff) / abs(m.reference) if m.reference else math.inf


def _metric_json(m: MetricVerdict) -> dict[str, Any]:
    diff = value_diff(m.reproduced, m.reference)
    return {
        'key': m.key,
        'reference': _json_float(m.reference),
        'reproduced': _json_float(m.reproduced),
        'abs_diff': _json_float(None if diff is None else abs(diff)),
        'rel_diff': _json_float(_relative_diff(m)),
        'equal': m.equal,
        'ignored': m.ignored,
        'rtol': m.tolerance.rtol,
        'atol': m.tolerance.atol,
        'steps_compared': m.steps_compared,
        'first_divergent_step': m.first_divergent_step,
    }


def report_json(report: Report) -> dict[str, Any]:
    plan, verdict = report.plan, report.verdict
    return {
        'reference_run_id': report.reference_run_id,
        'reproduced_run_id': report.reproduced_run_id,
        'equal': report.equal,
        'status': report.status,
        'exit_code': report.exit_code,
        'message': report.message,
        'source': plan and {
            'uri': mask_credentials(plan.source.uri),
            'version': plan.source.version,
            'entry_point': plan.entry_point,
            'env_manager': plan.env_manager,
        },
        'backend': plan and backend_json(plan),
        'params': {
            'passed': plan.params.passed if plan else None,
            'not_passed': plan.params.not_passed if plan else None,
            'compared': [
                {'key': p.key, 'reference': p.reference, 'reproduced': p.reproduced,
                 'equal': p.equal}
                for p in (verdict.params if verdict else ())
            ],
        },
        'tolerance': {
            'rtol': report.rules.default.rtol,
            'atol': report.rules.default.atol,
            'overrides': [{'pattern': pattern, 'rtol': tol.rtol, 'atol': tol.atol}
                          for pattern, tol in report.rules.overrides],
            'ignored': list(report.rules.ignored),
        },
        'metrics': [_metric_json(m) for m in (verdict.metrics if verdict else ())],
        'output_tail': list(report.output_tail),
    }


def format_json(report: Report) -> str:
    return json.dumps(report_json(report), indent=2, allow_nan=False)


def _note(m: MetricVerdict) -> str:
    if m.ignored:
        return 'ignored'
    if m.equal or m.reference is None or m.reproduced is None:
        return ''
    if m.points > 1 and m.first_divergent_step is not None:
        return f'differs from step {m.first_divergent_step}'
    return 'differs'


def _metric_rows(verdict: Verdict) -> tuple[list[str], list[list[Any]]]:
    rows = [
        [m.key, m.reference, m.reproduced, value_diff(m.reproduced, m.reference), _note(m)]
        for m in verdict.metrics
    ]
    headers = ['Metric', 'Run1', 'Run2', 'Diff', 'Note']
    if not any(row[-1] for row in rows):
        return headers[:-1], [row[:-1] for row in rows]
    return headers, rows


def _param_rows(verdict: Verdict) -> tuple[list[str], list[list[Any]]]:
    rows = [[p.key, p.reference, p.reproduced, '' if p.equal else 'differs']
            for p in verdict.params]
    headers = ['Param', 'Run1', 'Run2', 'Note']
    if not any(row[-1] for row in rows):
        return headers[:-1], [row[:-1] for row in rows]
    return headers, rows


def _table(rows: tuple[list[str], list[list[Any]]], tablefmt: str) -> str:
    from tabulate import tabulate

    headers, body = rows
    # disable_numparse keeps param values as the strings they are.
    numparse = headers[0] == 'Metric'
    return tabulate(body, headers=headers, tablefmt=tablefmt, missingval='-',
                    disable_numparse=not numparse)


def _plan_lines(plan: Plan, show_backend: bool = False) -> list[str]:
    lines = [
        f'Source:         {mask_credentials(plan.source.uri)} @ {plan.source.version}',
        f'Entry point:    {plan.entry_point} (env manager: {plan.env_manager})',
    ]
    if show_backend or _backend_noteworthy(plan):
        lines.append(f'Backend:        {_backend_text(plan)}')
    return lines


def _backend_noteworthy(plan: Plan) -> bool:
    """Not the default, or not where the reference ran."""
    return plan.backend.name != DEFAULT_BACKEND or (
        plan.reference_backend not in (None, plan.backend.name))


def _backend_text(plan: Plan) -> str:
    """'kubernetes {"repository-uri": ...} (the reference ran on local)', masked."""
    text = plan.backend.name
    if plan.backend.config:
        text += ' ' + json.dumps(mask_config(plan.backend.config))
    if plan.reference_backend not in (None, plan.backend.name):
        text += f' (the reference ran on {plan.reference_backend})'
    return text


def backend_json(plan: Plan) -> dict[str, Any]:
    return {
        'name': plan.backend.name,
        'config': mask_config(plan.backend.config),
        'reference_backend': plan.reference_backend,
    }


def _not_passed_lines(plan: Plan, verbose: bool) -> list[str]:
    not_passed = plan.params.not_passed
    if not not_passed:
        return []
    if verbose:
        return [f'Params not passed (not declared by the entry point): {_listed(not_passed)}']
    return [f'Params not passed: {len(not_passed)} not declared by the entry point '
            f'(--verbose lists them)']


def _listed(params: Mapping[str, str]) -> str:
    return ', '.join(f'{k}={v}' for k, v in sorted(params.items())) or '(none)'


def _dry_run_lines(plan: Plan) -> list[str]:
    return [
        f'Params to pass: {_listed(plan.params.passed)}',
        f'Params not passed (not declared by the entry point): {_listed(plan.params.not_passed)}',
        f'Experiment:     {plan.experiment_name}',
        'Dry run: nothing was run and no run was created.',
    ]


def format_text(report: Report, verbose: bool = False) -> str:
    lines = [f'Reference run:  {report.reference_run_id}']
    if report.reproduced_run_id:
        label = 'Reproduced run:' if report.plan else 'Compared run:  '
        lines.append(f'{label} {report.reproduced_run_id}')
    if report.plan:
        lines += _plan_lines(report.plan, show_backend=report.status == 'planned')
    if report.verdict and report.verdict.params:
        lines.append(_table(_param_rows(report.verdict), 'psql'))
    if report.plan and report.status == 'planned':
        lines += _dry_run_lines(report.plan)
    elif report.plan:
        lines += _not_passed_lines(report.plan, verbose)
    if report.verdict:
        lines.append(_table(_metric_rows(report.verdict), 'psql'))
        lines.append(f'Runs equal: {report.verdict.equal}')
    return '\n'.join(lines)


def format_markdown(report: Report, reference_link: str | None = None) -> str:
    """GitHub-flavoured: a pull request comment, a chat message, a run description."""
    reference = report.reference_run_id
    if reference_link:
        reference = f'[{reference}]({reference_link})'
    lines = [f'**Reproduction of run {reference}**: {report.status}', '']
    if report.reproduced_run_id:
        label = 'reproduced run' if report.plan else 'compared run'
        lines += [f'- {label}: `{report.reproduced_run_id}`']
    if report.plan:
        plan = report.plan
        lines += [
            f'- source: `{mask_credentials(plan.source.uri)}` at `{plan.source.version}`',
            f'- entry point: `{plan.entry_point}`, env manager `{plan.env_manager}`',
        ]
        if _backend_noteworthy(plan):
            lines.append(f'- backend: `{_backend_text(plan)}`')
    if report.message:
        lines += ['', f'> {report.message}']
    if report.verdict:
        if report.verdict.params:
            lines += ['', _table(_param_rows(report.verdict), 'github')]
        lines += ['', _table(_metric_rows(report.verdict), 'github')]
    if report.equal is not None:
        lines += ['', f'Runs equal: {report.equal}']
    return '\n'.join(lines)


def render(report: Report, output: str, verbose: bool) -> str | None:
    """What goes to standard output; None for nothing."""
    if output == 'json':
        return format_json(report)
    if output == 'markdown':
        return format_markdown(report)
    if report.status in ('failed', 'error'):
        return None
    return format_text(report, verbose)


# ---------------------------------------------------------------------------
# Recording the verdict on the reproduced run.

def _plot_name(key: str) -> str:
    return re.sub(r'[^\w.-]', '_', key) + '.png'


def make_plots(
        verdict: Verdict,
        reference: Mapping[str, Sequence[Point]],
        reproduced: Mapping[str, Sequence[Point]],
        folder: str,
) -> list[str]:
    """A PNG for each differing metric that has a history to look at."""
    wanted = [m for m in verdict.metrics
              if not m.equal and not m.ignored and m.points > 1]
    if not wanted:
        return []
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    paths = []
    for m in wanted:
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, history, style in (('reference (Run1)', reference.get(m.key, ()), '-'),
                                      ('reproduced (Run2)', reproduced.get(m.key, ()), '--')):
            points = sorted(history, key=lambda p: p[0] or 0)
            ax.plot([p[0] for p in points], [p[1] for p in points], style, marker='.', label=label)
        if m.first_divergent_step is not None:
            ax.axvline(m.first_divergent_step, color='red', linewidth=1,
                       label=f'first divergence (step {m.first_divergent_step})')
        ax.set(title=m.key, xlabel='step', ylabel=m.key)
        ax.legend()
        path = os.path.join(folder, _plot_name(m.key))
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def _run_link(client: MlflowClient, run_id: str) -> str:
    """A link the MLflow UI resolves, relative to the page showing it."""
    experiment_id = client.get_run(run_id).info.experiment_id
    return f'#/experiments/{experiment_id}/runs/{run_id}'


def record_verdict(
        client: MlflowClient,
        report: Report,
        histories: tuple[Mapping[str, Sequence[Point]], Mapping[str, Sequence[Point]]] | None,
        plots: bool,
) -> None:
    """Tags, description and artifacts on the reproduced run, where people
    look in the MLflow UI.  The reference run is never written to."""
    from mlflow.entities import RunTag

    run_id = report.reproduced_run_id
    assert run_id is not None and run_id != report.reference_run_id
    try:
        tags = {
            TAG_REFERENCE_RUN_ID: report.reference_run_id,
            TAG_EQUAL: 'true' if report.equal else 'false',
            TAG_STATUS: report.status,
            TAG_RTOL: repr(report.rules.default.rtol),
            TAG_ATOL: repr(report.rules.default.atol),
            TAG_NOTE: format_markdown(report, _run_link(client, report.reference_run_id)),
        }
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        with tempfile.TemporaryDirectory(prefix='reproduce_run-') as folder:
            path = os.path.join(folder, COMPARISON_ARTIFACT)
            with open(path, 'w') as f:
                f.write(format_json(report))
            client.log_artifact(run_id, path, ARTIFACT_DIR)
            if plots and report.verdict and histories:
                plot_dir = os.path.join(folder, 'plots')
                os.mkdir(plot_dir)
                if make_plots(report.verdict, *histories, plot_dir):
                    client.log_artifacts(run_id, plot_dir, f'{ARTIFACT_DIR}/plots')
    except Exception as e:  # the verdict stands; say that it is not recorded
        warn(f'could not record the verdict on run {run_id}: {_last_line(str(e))}')


# ---------------------------------------------------------------------------
# The pipeline.

def make_plan(
        args: argparse.Namespace, reference: Run, source: Source, project_dir: str,
        backend: Backend = Backend(),
) -> Plan:
    tags = reference.data.tags
    entry_point = args.entry_point or tags.get(TAG_ENTRY_POINT) or DEFAULT_ENTRY_POINT
    spec, declared = load_entry_point(project_dir, entry_point, source.version)
    params = select_params(tuple(spec.parameters) if declared else None, reference.data.params)
    return Plan(
        reference=reference,
        source=source,
        project_dir=project_dir,
        entry_point=entry_point,
        env_manager=args.env_manager or _recorded_env_manager(tags),
        experiment_name=args.experiment_name,
        params=params,
        logged_params=params_to_log(spec, params),
        command=spec.command,
        backend=backend,
        reference_backend=tags.get(TAG_PROJECT_BACKEND),
    )


def check_command(plan: Plan, allow_unsafe: bool) -> None:
    """Refuse to let a param value run as shell code."""
    unsafe = unsafe_params(plan.command, plan.params.passed)
    if not unsafe:
        return
    key = unsafe[0]
    value = plan.params.passed[key]
    shown = value if len(value) <= 60 else value[:57] + '...'
    why = (f'entry point {plan.entry_point!r} puts {{{key}}} inside quotes in its command '
           f'{plan.command!r}, which undoes MLflow\'s quoting, and the value of {key!r} '
           f'({shown!r}) contains shell metacharacters')
    if not allow_unsafe:
        raise ReproduceError(f'{why}: refusing to run it (--allow-unsafe-command runs it anyway)')
    warn(f'{why}: running it because of --allow-unsafe-command')


def _recorded_env_manager(tags: Mapping[str, str]) -> str:
    """MLflow records no tag for local; docker projects ignore the manager."""
    recorded = tags.get(TAG_PROJECT_ENV)
    return recorded if recorded in ENV_MANAGERS else 'local'


def _configure_logging(verbose: bool) -> None:
    import logging

    if 'MLFLOW_LOGGING_LEVEL' not in os.environ:  # the user's setting wins
        logging.getLogger('mlflow').setLevel(logging.INFO if verbose else logging.WARNING)


def rules_from(args: argparse.Namespace) -> Rules:
    return Rules(
        default=Tolerance(rtol=args.rtol, atol=args.atol),
        overrides=tuple(args.tolerance),
        ignored=tuple(args.ignore_metric),
    )


def judge_runs(
        client: MlflowClient, rules: Rules, last_only: bool, reference: Run, other: Run,
        param_keys: Sequence[str],
) -> tuple[Verdict, tuple[dict[str, list[Point]], dict[str, list[Point]]]]:
    from mlflow.exceptions import MlflowException

    for pattern in rules.unmatched(sorted({*reference.data.metrics, *other.data.metrics})):
        warn(f'{pattern!r} matches no metric of either run')
    try:
        reference_histories, other_histories = read_histories(
            client, (reference, other), last_only,
        )
    except MlflowException as e:
        raise _mlflow_error('cannot read the metric histories', e) from None
    params = compare_params(
        _unquoted(reference.data.params), _unquoted(other.data.params), param_keys,
    )
    verdict = judge(reference_histories, other_histories, rules, params)
    return verdict, (reference_histories, other_histories)


def _verdict_report(verdict: Verdict, **fields: Any) -> Report:
    status, code = ('equal', EXIT_EQUAL) if verdict.equal else ('differ', EXIT_DIFFER)
    return Report(status=status, exit_code=code, verdict=verdict, **fields)


def compare_to(
        client: MlflowClient, args: argparse.Namespace, rules: Rules, reference: Run,
        tracking_uri: str,
) -> Report:
    """Judge two existing runs; nothing runs and nothing is written."""
    other = read_reference(client, args.compare_to, tracking_uri)
    keys = sorted({*reference.data.params, *other.data.params})
    verdict, _ = judge_runs(client, rules, args.last_only, reference, other, keys)
    return _verdict_report(
        verdict, reference_run_id=reference.info.run_id,
        reproduced_run_id=other.info.run_id, rules=rules,
    )


def _remote_hint(reference: Run, source: Source, uri: str | None) -> str:
    """A run made from a local clone also records its remote: on another host
    (a cron host, say) that remote is where the commit can be found."""
    remote = reference.data.tags.get(TAG_GIT_REPO_URL)
    if uri or not remote or _local_repo(source.repo) is None or remote == source.repo:
        return ''
    suggested = f'{remote}#{source.subdir}' if source.subdir else remote
    suggested = shlex.quote(mask_credentials(suggested))
    return f'; the run also records its remote: try --uri {suggested}'


def absolute_tracking_uri(uri: str | None) -> str | None:
    """A relative sqlite or plain-path store made absolute: the project runs
    in another folder, where `sqlite:///mlflow.db` names another file."""
    if uri and uri.startswith('sqlite:///') and not uri.startswith('sqlite:////'):
        return 'sqlite:///' + os.path.abspath(uri[len('sqlite:///'):])
    if uri and not re.match(r'^[a-zA-Z][\w+.-]*:', uri) and not uri.startswith('databricks'):
        return os.path.abspath(uri)
    return uri


def reproduce(args: argparse.Namespace) -> Report:
    user_environ = {k: os.environ.get(k) for k in TOOL_HTTP_DEFAULTS}
    tool_environ = {k: user_environ[k] or v for k, v in TOOL_HTTP_DEFAULTS.items()}
    tool_environ['MLFLOW_TRACKING_URI'] = absolute_tracking_uri(
        os.environ.get('MLFLOW_TRACKING_URI'))
    rules = rules_from(args)
    with _environ(tool_environ):
        import mlflow

        _configure_logging(args.verbose)
        backend = backend_from_args(args)
        client = mlflow.MlflowClient()
        tracking_uri = mlflow.get_tracking_uri()
        reference = read_reference(client, args.run_id, tracking_uri)
        if args.compare_to:
            return compare_to(client, args, rules, reference, tracking_uri)
        source = resolve_source(reference, args.uri, args.version)
        tmp_dir = tempfile.mkdtemp(prefix='reproduce_run-')
        try:
            try:
                project_dir, commit = fetch_source(source, os.path.join(tmp_dir, 'src'))
            except ReproduceError as e:
                raise ReproduceError(str(e) + _remote_hint(reference, source, args.uri)) from None
            source = dataclasses.replace(source, version=commit)
            plan = make_plan(args, reference, source, project_dir, backend)
            check_command(plan, args.allow_unsafe_command)
            validate_backend_project(plan)
            warn_about_reference_backend(plan)
            if args.dry_run:
                return Report(status='planned', exit_code=EXIT_EQUAL,
                              reference_run_id=args.run_id, plan=plan, rules=rules)
            refuse_unwired_backend(plan)  # TODO(lead): gone once the launch uses SubmittedRun
            run = create_reproduced_run(client, plan)
            run_id = run.info.run_id
            if args.verbose:
                ref = reference.info
                print(f'reproduce_run: reproducing run {ref.run_id} ({ref.run_name}, '
                      f'{ref.status}) as run {run_id} in experiment {plan.experiment_name!r}: '
                      f'entry point {plan.entry_point!r} of {mask_credentials(source.uri)} at '
                      f'{commit} with env manager {plan.env_manager}', file=sys.stderr)
            launch = run_project(client, plan, run, tmp_dir, user_environ, args.verbose)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        fields = dict(reference_run_id=args.run_id, reproduced_run_id=run_id, plan=plan,
                      rules=rules, output_tail=launch.output_tail)
        if launch.returncode != 0:
            output = project_output(launch.output_tail)
            last = f'; its last output line: {output[-1]}' if output else ''
            report = Report(
                status='failed', exit_code=EXIT_RUN_FAILED,
                message=f'the reproduced run {run_id} failed (exit status '
                        f'{launch.returncode}){last}',
                **fields,
            )
            record_verdict(client, report, None, plots=False)
            return report
        try:
            reproduced = client.get_run(run_id)
        except mlflow.exceptions.MlflowException as e:
            raise _mlflow_error(f'cannot read the reproduced run {run_id} back', e) from None
        verdict, histories = judge_runs(
            client, rules, args.last_only, reference, reproduced, plan.declared,
        )
        report = _verdict_report(verdict, **fields)
        record_verdict(client, report, histories, plots=not args.no_plots)
        return report


# ---------------------------------------------------------------------------
# Command line.

def _run_id(s: str) -> str:
    if not _RUN_ID_RE.match(s):
        raise argparse.ArgumentTypeError(
            f'expected an MLflow run ID (letters, digits, _ and -), got {s!r}',
        )
    return s


def _tolerance(s: str) -> float:
    try:
        value = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number, got {s!r}') from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f'expected a number >= 0, got {s!r}')
    return value


def _metric_tolerance(s: str) -> tuple[str, Tolerance]:
    """KEY=RTOL[,ATOL], KEY a glob."""
    key, sep, values = s.partition('=')
    parts = values.split(',')
    if not sep or not key or not 1 <= len(parts) <= 2:
        raise argparse.ArgumentTypeError(f'expected KEY=RTOL[,ATOL], got {s!r}')
    try:
        rtol, atol = _tolerance(parts[0]), _tolerance(parts[1]) if len(parts) == 2 else DEFAULT_ATOL
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f'{e} in {s!r}') from None
    return key, Tolerance(rtol=rtol, atol=atol)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='reproduce_run',
        description='Re-execute the MLflow Project of a past run at its exact '
                    'commit with its parameters, and compare the metrics.',
        epilog='exit codes: 0 runs equal, 1 runs differ, 2 could not start, '
               '3 the reproduced run failed, 130 interrupted, 143 terminated',
    )
    parser.add_argument('--run_id', '--run-id', dest='run_id', required=True, type=_run_id,
                        help='the reference run to reproduce')
    parser.add_argument('--uri', help="project URI, overriding the run's recorded source "
                                      '(a git URL or path, with #subdir)')
    parser.add_argument('--experiment_name', '--experiment-name', dest='experiment_name',
                        default='Default',
                        help='experiment that receives the reproduced run (default: %(default)s)')
    parser.add_argument('--version', help="commit to run (default: the run's recorded commit)")
    parser.add_argument('--entry-point', '-e', dest='entry_point',
                        help=f"entry point (default: the run's, else {DEFAULT_ENTRY_POINT})")
    parser.add_argument('--env-manager', dest='env_manager', choices=ENV_MANAGERS,
                        help="environment manager (default: the run's recorded one, else local)")
    parser.add_argument('--backend', '-b', default=DEFAULT_BACKEND, metavar='NAME',
                        help='MLflow execution backend: local, kubernetes, databricks or an '
                             'installed backend plugin (default: %(default)s)')
    parser.add_argument('--backend-config', '-c', dest='backend_config', metavar='FILE_OR_JSON',
                        help='backend config, as for `mlflow run -c`: a path ending in .json '
                             'or an inline JSON object')
    judging = parser.add_argument_group('judging')
    judging.add_argument('--rtol', '--rel_tol', dest='rtol', type=_tolerance,
                         default=DEFAULT_RTOL, help='relative tolerance (default: %(default)s)')
    judging.add_argument('--atol', type=_tolerance, default=DEFAULT_ATOL,
                         help='absolute tolerance (default: %(default)s)')
    judging.add_argument('--tolerance', action='append', default=[], type=_metric_tolerance,
                         metavar='KEY=RTOL[,ATOL]',
                         help='tolerance for the metrics matching the glob KEY; repeatable, '
                              'the last match wins')
    judging.add_argument('--ignore-metric', action='append', default=[], metavar='PATTERN',
                         help='leave metrics matching the glob out of the verdict (still '
                              'listed); repeatable')
    judging.add_argument('--last-only', action='store_true',
                         help="compare only each metric's latest value, not its history")
    judging.add_argument('--compare-to', type=_run_id, metavar='RUN_ID',
                         help='compare the reference with this existing run; run nothing')
    out = parser.add_argument_group('output')
    out.add_argument('--output', choices=('table', 'json', 'markdown'), default='table',
                     help='report format on standard output (default: %(default)s)')
    out.add_argument('--no-plots', action='store_true',
                     help='do not attach plots of differing histories to the reproduced run')
    out.add_argument('--dry-run', action='store_true',
                     help='resolve and print the plan; create no run, run nothing')
    out.add_argument('--allow-unsafe-command', action='store_true',
                     help='run even when a param value with shell metacharacters would '
                          'land inside quotes in the command (it may run as shell code)')
    out.add_argument('--verbose', action='store_true',
                     help="show run details, MLflow's log lines and tracebacks")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with _signal_handlers(_SIGTERM_RAISES):
            report = reproduce(args)
    except KeyboardInterrupt:
        print('reproduce_run: interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        print('reproduce_run: terminated', file=sys.stderr)
        return EXIT_TERMINATED
    except Exception as e:
        if args.verbose:
            import traceback
            traceback.print_exc()
        if isinstance(e, ReproduceError):
            message, code = str(e), e.exit_code
        else:  # a failure we did not foresee: still one line
            message = (f'unexpected {type(e).__name__}: {_last_line(str(e))} '
                       f'(--verbose shows the traceback)')
            code = EXIT_CANNOT_START
        report = Report(status='error', exit_code=code, reference_run_id=args.run_id,
                        message=mask_credentials(message), rules=rules_from(args))
    if report.message:
        print(f'reproduce_run: error: {report.message}', file=sys.stderr)
    text = render(report, args.output, args.verbose)
    if text is not None:
        print(text)
    return report.exit_code


if __name__ == '__main__':
    raise SystemExit(main())

#!/usr/bin/env python3
"""Reproduce an MLflow run: re-execute its MLflow Project at the recorded git
commit with the recorded parameters, then compare the new run's metrics with
the old run's and give a verdict.

    python reproduce_run.py --run_id d1b4b10969174863a2bad1342f6746ce

The pipeline: resolve the reference run, fetch the source at its commit into a
temporary folder, launch the reproduction (the entry point's command, or
`python <script> <args>` for a run made without `mlflow run`), judge the
metric histories, report.  mlflow is imported lazily: --help and argument
errors answer without paying for its import.

The file reads from the general to the particular, ending with main(): a
top-level name uses only names of its own section or of an earlier one
(tests/test_architecture.py holds that, with its few exceptions), so each
section can be read knowing only what is above it.  The sections, each opened
by a `# ----` banner:

  1. Helpers used everywhere: masking, warnings, shown values, plurals.
  2. Core types: verdicts, plans, findings, settings, the stop flag.
  3. Judging: pure; histories in, verdict out.
  4. Diagnosing repetitions: pure; --repeat's classes and tolerances.
  5. Resolving the reference run into a plan: pure.
  6. Param values in the entry point's command: the shell's grammar.
  7. Talking to MLflow: errors, run IDs, the store, metric histories.
  8. Fetching the source: a private checkout, and the project in it.
  9. Execution backends: checked before anything runs.
 10. Script runs: the script, its working folder and its arguments.
 11. Why the runs differ: environment, data, code and models.
 12. Recording runs as they start: the run context provider.
 13. Model registrations: the scratch registry.
 14. Stopping: a signal sets one flag; processes ended, runs closed.
 15. Crash recovery: what a tool that died left behind.
 16. Run creation: the reproduced run, before the project starts.
 17. Launching: the project's processes, locally or on a backend.
 18. Reporting: the Outcome protocol; text, JSON, Markdown, JUnit.
 19. Recording the verdict on the reproduced run.
 20. The pipeline: one reference run in, one report out.
 21. Groups of reproductions: the engine the modes run on.
 22. Batch: choosing the reference runs.
 23. Repeat: each run N times, and the diagnosis.
 24. Bisect: the first commit that changed the metrics.
 25. Explain: probes that undo the differences.
 26. CI and on-call: JUnit XML, the job summary, webhooks.
 27. One invocation: settings, the tracking server, the mode.
 28. Command line: the parser and main().
"""

from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import dataclasses
import decimal
import errno
import fnmatch
import functools
import hashlib
import itertools
import json
import math
import os
import posixpath
import re
import select
import shlex
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, TextIO, TypeVar

if TYPE_CHECKING:
    import http.client
    import urllib.request

    from mlflow import MlflowClient
    from mlflow.entities import Run

__version__ = '0.7.0'
_T = TypeVar('_T')

# Exit codes: the contract with cron jobs and CI.
EXIT_EQUAL = 0
EXIT_DIFFER = 1
EXIT_CANNOT_START = 2
EXIT_RUN_FAILED = 3
EXIT_INTERRUPTED = 130  # SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # SIGTERM

# Every status a reproduction can end in, and its exit code: the one table.
# Worst first: a group exits with the code of its worst status (worst_status).
STATUS_EXIT_CODES = {
    'terminated': EXIT_TERMINATED,
    'interrupted': EXIT_INTERRUPTED,
    'error': EXIT_CANNOT_START,
    'failed': EXIT_RUN_FAILED,
    'differ': EXIT_DIFFER,
    'equal': EXIT_EQUAL,
    'planned': EXIT_EQUAL,  # --dry-run: it can be reproduced
}
SIGNAL_STATUSES = ('interrupted', 'terminated')  # a signal stopped it
JUDGED_STATUSES = ('equal', 'differ')  # its metrics were compared
COUNTED_STATUSES = ('equal', 'differ', 'failed', 'error')  # a batch's counts, in this order
NOT_STARTED = 'not started'  # the message of a reproduction a signal kept from starting

DEFAULT_RTOL = 1e-9
DEFAULT_ATOL = 0.0
ENV_MANAGERS = ('local', 'virtualenv', 'uv', 'conda')
DEFAULT_ENTRY_POINT = 'main'
RUN_NAME_PREFIX = 'reproduce-'
OUTPUT_TAIL_LINES = 20  # of the project's output, kept for the report
OUTPUT_LINE_CHARS = 500  # longer lines are cut in the kept tail
STOP_GRACE_SECONDS = 10.0  # between SIGTERM and SIGKILL to the project
CLOSE_RETRY_SECONDS = 60.0  # how long a run's closing is retried (REPRODUCE_RUN_CLOSE_TIMEOUT)
PROBE_TIMEOUT_SECONDS = 10.0  # a tracking server that does not answer within this is down
BACKEND_POLL_SECONDS = 2.0  # how often a job on a backend is asked for its status
HISTORY_WORKERS = 8  # concurrent metric-history requests to a remote server
SQLITE_JOBS = 8  # reproductions at once on an sqlite store (its connection pool holds 15)
DEFAULT_MAX_RUNS = 10  # runs a search selects
MAX_JOBS = 1000  # --jobs: reproductions at once, each a thread and its processes
RUNS_FILE_MAX_BYTES = 16 * 2**20  # --runs-file: about 500,000 run IDs
DEFAULT_ORDER_BY = 'attributes.start_time DESC'
REPEATABLE: dict[str, Any] = {'action': 'append', 'default': []}  # an option, once per value
SEARCH_PAGE = 1000  # runs or experiments per search request (MLflow's default page)
READ_BATCH = 500  # reference runs of a batch read in one search, by run ID
READ_WINDOW = 16  # a batch's probes planned ahead of its results, at the least

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
TAG_BACKEND = 'mlflow.project.backend'
TAG_PARENT_RUN_ID = 'mlflow.parentRunId'
TAG_ARGV = 'reproduce.argv'  # a script's arguments, a JSON list: replayed, and recorded
# Tags the recorder (RunRecorder) writes when a run starts in a training environment.
TAG_COMMAND = 'reproduce.command'  # the interpreter's arguments (sys.orig_argv[1:]), JSON
TAG_WORKDIR = 'reproduce.workdir'  # the working folder, relative to the work tree's top
TAG_ENVIRONMENT = 'reproduce.environment'  # packages, Python, platform, variables: JSON
TAG_SCRIPT = 'reproduce.script'  # the script's (or -m module's) file, relative to the top
TAG_CHANGES = 'reproduce.changes'  # uncommitted changes: JSON (files, sha256, parts)
# ...and their payload, a base64 .tar.gz, in tags reproduce.changes.1, .2, ...
CHANGES_DIFF = 'changes.diff'  # the tracked changes, in that archive (untracked files: files/)
RECORD_CHANGES_LIMIT = 1_000_000  # characters of uncommitted changes, in 125 tags at most
CHANGES_UNPACKED_LIMIT = 64 * 2**20  # bytes the archive of the changes may unpack to
CHANGES_MAX_MEMBERS = 1001  # the diff and the untracked files the recorder reads at most
SECRET_NOT_RECORDED = '<secret: not recorded>'  # in place of a secret's value
# Tags this tool writes on the reproduced run (never on the reference run).
TAG_REFERENCE_RUN_ID = 'reproduce.reference_run_id'
TAG_EQUAL = 'reproduce.equal'  # 'true' or 'false'
TAG_STATUS = 'reproduce.status'  # a key of STATUS_EXIT_CODES; 'killed': close_leftovers
TAG_PREFIX = 'reproduce.prefix'  # JSON: what a reproduction stopped early compared
TAG_BATCH = 'reproduce.batch'  # 'true' on the parent run of a batch
TAG_REPEAT = 'reproduce.repeat'  # N, on the parent run of N repetitions
TAG_CLASSIFICATION = 'reproduce.classification'  # what N repetitions say, on that parent
TAG_OWNER = 'reproduce.owner'  # host:pid:start:boot:pidns of the tool that made the run
TAG_EXPLAIN_CHANGES = 'reproduce.explain.changes'  # JSON {name: reference value}, on a probe
TAG_RTOL = 'reproduce.rtol'
TAG_ATOL = 'reproduce.atol'
TAG_NOTE = 'mlflow.note.content'  # the run description the MLflow UI shows
TAG_VALUE_LIMIT = 8000  # characters MLflow keeps in a tag value
ARTIFACT_DIR = 'reproduce'  # comparison.json and plots/ go here
COMPARISON_ARTIFACT = 'comparison.json'
OUTPUT_ARTIFACT = 'output.log'  # what the project printed
SUMMARY_ARTIFACT = 'summary.json'  # a batch's JSON document, on its parent run
DIAGNOSIS_ARTIFACT = 'diagnosis.json'  # what --repeat's repetitions say, on their parent
SHORT_CELL = 60  # characters of a table cell in a shortened run description
PLOT_NAME_CHARS = 100  # of the metric key kept in a plot's file name
UNFINISHED_STATUSES = ('RUNNING', 'SCHEDULED')  # MLflow run statuses not yet closed
FAILED_STATUSES = ('FAILED', 'KILLED')  # closed, but not FINISHED
TMP_PREFIX = 'reproduce_run-'  # + pid-start-pidns-boot-: the tool's folders (tool_tmp_prefix)
LEFTOVER_SEARCH_LIMIT = 1000  # runs one start-up search for a dead tool's leftovers reads
LEFTOVER_EXPERIMENT_LIMIT = 1000  # experiments that search looks at, the destinations first
# Why a run left RUNNING by a tool of this host, boot and PID namespace is closed:
TOOL_DIED = 'the reproducing tool died without cleaning up (SIGKILL or the OOM killer)'
TOOL_GONE = 'the reproducing tool no longer runs and did not close it'

# Execution backends: MLflow's own, then plugins registered under its entry point group.
DEFAULT_BACKEND = 'local'
BUILTIN_BACKENDS = ('local', 'kubernetes', 'databricks')
BACKEND_ENTRY_POINT_GROUP = 'mlflow.project_backend'
KUBERNETES_REQUIRED_KEYS = ('kube-job-template-path', 'repository-uri')  # as MLflow checks
KUBERNETES_PACKAGES = ('kubernetes', 'docker')  # mlflow.projects.kubernetes imports both
MASKED = '***'
# A script's `--help`, which finds the options it accepts, runs at most this
# long: a script that ignores --help trains meanwhile, and is then ended.
HELP_TIMEOUT_SECONDS = 15.0
HELP_AT_RUN_TIME = '--help, asked at run time (--dry-run runs nothing)'  # arguments_from
NO_PARSER = 'no argument parser'  # arguments_from: nothing to ask --help, nothing passed
HELP_GAVE_NONE = '--help, which '  # arguments_from: '--help, which failed (exit status 2)'
# A script that imports none of these modules (nor names one of these classes), in
# its own source or a module of the checkout it imports, is not run with --help.
ARGUMENT_PARSERS = (
    *('argparse', 'click', 'typer', 'fire', 'absl', 'docopt', 'hydra'),
    *('configargparse', 'jsonargparse', 'simple_parsing', 'tyro'),
)
ARGUMENT_PARSER_CLASSES = ('HfArgumentParser', 'LightningCLI')  # transformers', lightning's
NONE_VALUE = 'None'  # how MLflow logs a param whose value is Python's None
SCRIPT_ENVIRONMENT_FILES = ('python_env.yaml', 'conda.yaml')  # MLflow builds environments from

_RUN_ID_RE = re.compile(r'^[a-zA-Z0-9][\w\-]{0,255}\Z')  # MLflow's own rule
# A shortened run ID, as progress lines print them; a full one has 32 digits.
_RUN_ID_PREFIX_RE = re.compile(r'^[0-9a-fA-F]{8,31}$')
PREFIX_MATCHES_SHOWN = 3  # runs an ambiguous prefix error names
# The userinfo of a URL runs to the last @ before the path: a password may
# hold an unencoded @.
# (A scheme starts where no scheme character stands before it: each position
# of a long word is not tried again, which took time quadratic in its length.)
_URL_CREDENTIALS_RE = re.compile(r'(?<![\w+.-])(?P<scheme>[a-zA-Z][\w+.-]*://)[^/\s]+@')
_MLFLOW_LOG_LINE_RE = re.compile(r'^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d [A-Z]+ mlflow[\w.]*: ')
# MLflow's own chatter when a run ends ("View run ... at: <tracking URI>").
_MLFLOW_CHATTER_RE = re.compile(r'^(\U0001f3c3|\U0001f9ea) View (run|experiment)')
# The exception line that ends a Python traceback: "ValueError: ...".
_EXCEPTION_LINE_RE = re.compile(r'^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b')
# The process marker: every process a reproduction starts carries this
# variable, so that it can be found and ended even after it left the process
# group (Linux /proc).  Its value is the tool's <pid>-<start>-<random>, with
# .N for reproduction N.  It is no MLflow tag, whatever its name says; the name
# stays, since the README documents it and earlier versions' processes carry it.
PROCESS_MARKER = 'REPRODUCE_RUN_PROCESS_TAG'
_SECRET_KEY_RE = re.compile(r'token|secret|password|key', re.IGNORECASE)  # config keys to mask
NOTIFY_ENV = 'REPRODUCE_RUN_NOTIFY_URL'  # a --notify webhook URL: a secret
# MLflow's credentials for the tracking server (and the webhook): their values are
# masked wherever they appear (a project may print them), unless too short to tell.
SECRET_VARIABLES = ('MLFLOW_TRACKING_PASSWORD', 'MLFLOW_TRACKING_TOKEN', NOTIFY_ENV)
SECRET_MIN_CHARS = 4


class ReproduceError(Exception):
    """An expected failure: one line for the user, and exit code 2 (EXIT_CANNOT_START)."""


class CannotGuess(ReproduceError):
    """What the run recorded leaves a choice that only the user can make (which
    of several scripts it ran; --experiment_name for a script that chooses its
    own experiment): exit 2 for a run named, and a batch's search skips the
    run with this reason."""


# ---------------------------------------------------------------------------
# Helpers used everywhere: credentials masked, warnings, a value from the
# tracking store shown on a terminal or in Markdown, lists and plurals, the last
# line of an error, MLflow's paged searches, /proc and this tool's identity.


def mask_credentials(text: str) -> str:
    """Hide the user:password part of every URL in text, and the values of
    MLflow's password and token variables."""
    text = _URL_CREDENTIALS_RE.sub(r'\g<scheme>***@', text)
    for name in SECRET_VARIABLES:
        secret = os.environ.get(name, '')
        if len(secret) >= SECRET_MIN_CHARS:
            text = text.replace(secret, MASKED)
    return text


def program_name() -> str:
    """The name the tool was called by, for its usage line and messages:
    reproduce-run (the installed command) or reproduce_run.py (the script);
    reproduce_run when other code calls main()."""
    called = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ''
    return called if called in ('reproduce-run', 'reproduce_run.py') else 'reproduce_run'


# What a terminal acts on rather than shows (C0 and C1 controls with ESC, NUL,
# CR and newline; the Unicode line separators; the bidirectional overrides):
# values from the tracking store are shown with these as escapes such as \x1b.
_UNSHOWABLE_RE = re.compile('[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]')


def shown(text: str) -> str:
    """text on one line, safe for a terminal: control characters, ANSI escapes,
    NUL and newlines become the escapes of the unicode_escape codec ('\\x1b', '\\n')."""
    return _UNSHOWABLE_RE.sub(lambda m: m.group().encode('unicode_escape').decode(), text)


# What a value could make markup of in Markdown: a table cell's end, a link
# or an image ([..](..), ![..](..)), a code span; \ first, so that a value's
# own backslash cannot undo the escape that follows it.
_MARKDOWN_ESCAPED_RE = re.compile(r'([\\|\[\]`])')


def markdown_escaped(text: str) -> str:
    """text as one Markdown table cell (or inline text): no newline to end
    the row, no | to split it, no link, image or code span (\\ | [ ] `
    backslash-escaped), no HTML (& < > as entities)."""
    text = shown(_MARKDOWN_ESCAPED_RE.sub(r'\\\1', text))
    return text.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')


def markdown_code(text: str) -> str:
    """text as one Markdown code span, on one line: fenced by more backticks
    than it holds, so that no backtick of its own can end the span."""
    text = shown(text)
    fence = '`' * (max(map(len, re.findall('`+', text)), default=0) + 1)
    pad = ' ' if text.startswith('`') or text.endswith('`') else ''
    return f'{fence}{pad}{text}{pad}{fence}'


_WARNED_ABOUT = threading.local()  # what a reproduction's thread works on: warn() says it


def warn(message: str) -> None:
    about = getattr(_WARNED_ABOUT, 'label', '')
    print(f'{program_name()}: {about}warning: {shown(mask_credentials(message))}', file=sys.stderr)


@contextlib.contextmanager
def warnings_about(label: str) -> Iterator[None]:
    """warn() names label ('[3/12] 8f2e1a2b') in this thread while the block
    runs: in a batch, each warning says which reproduction it is about."""
    _WARNED_ABOUT.label = f'{label}: '
    try:
        yield
    finally:
        _WARNED_ABOUT.label = ''


def read_regular_file(path: str, what: str, hint: str = '') -> str:
    """The text of a regular file, at most RUNS_FILE_MAX_BYTES and one more
    byte; a FIFO or a device is refused (opened without blocking: a FIFO
    without a writer would wait forever, /dev/zero never ends)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, encoding='utf-8') as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ReproduceError(f'{what} is not a regular file (a FIFO or a device?){hint}')
        return f.read(RUNS_FILE_MAX_BYTES + 1)


# SQLAlchemy ends its errors with the statement, its parameters and a link to
# its docs ("(Background on this error at: https://sqlalche.me/...)").
_SQLALCHEMY_TAIL_RE = re.compile(r'^(\[SQL: |\(Background on this error at: )')


def _last_line(text: str) -> str:
    """The line of an error message that says what went wrong: the last one,
    or for SQLAlchemy's errors the one before the statement and the link."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    tail = next((i for i, line in enumerate(lines) if _SQLALCHEMY_TAIL_RE.match(line)), None)
    if tail is not None:
        lines = lines[:tail] or [line for line in lines if not line.startswith('(Background')]
    return lines[-1] if lines else ''


def pages(search: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
    """The pages of a paged MLflow search, search(*args, **kwargs): each
    asked for with the token of the page before."""
    page = search(*args, **kwargs)
    yield page
    while page.token:
        page = search(*args, **kwargs, page_token=page.token)
        yield page


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return 'unknown'


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command's name (field 3, the
    state, comes first); None when the process is gone or not ours to read."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as f:
            return f.read().rsplit(b')', 1)[1].decode().split()
    except (OSError, IndexError):
        return None


def process_identity(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a process from /proc/<pid>/stat (fields 3 and
    22; the start time is in clock ticks since boot): with the PID it names
    one process, even once the PID is reused.  None when there is none."""
    fields = proc_stat(pid)
    return (fields[0], fields[19]) if fields and len(fields) > 19 else None


def _tool_identity() -> str:
    """pid:start of this process ('0' for the start without /proc)."""
    found = process_identity(os.getpid())
    return f'{os.getpid()}:{found[1] if found else 0}'


def pid_namespace(pid: int | str = 'self') -> str | None:
    """The inode of a process's PID namespace (/proc/<pid>/ns/pid reads
    'pid:[4026531836]'), or None where it cannot be read."""
    try:
        return os.readlink(f'/proc/{pid}/ns/pid').partition('[')[2].rstrip(']') or None
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def tool_namespace() -> str:
    """boot:pidns: the boot of the machine (/proc/sys/kernel/random/boot_id)
    and the PID namespace this tool's PIDs mean something in; 'unknown:0'
    where /proc does not say, which no other tool is taken to share."""
    boot = ''
    with contextlib.suppress(OSError), open('/proc/sys/kernel/random/boot_id') as f:
        boot = f.read().strip()
    pidns = pid_namespace()
    return f'{boot}:{pidns}' if re.fullmatch(r'[\w-]+', boot) and pidns else 'unknown:0'


def tool_owner(identity: str | None = None) -> str:
    """The `reproduce.owner` of every run the tool makes (of this process, or
    of the tool of `identity`, pid:start, in this one's PID namespace):
    host:pid:start:boot:pidns."""
    return f'{socket.gethostname()}:{identity or _tool_identity()}:{tool_namespace()}'


def tool_tmp_prefix() -> str:
    """reproduce_run-<pid>-<start>-<pidns>-<boot, 8 digits>-: a dead tool's
    folders can be told apart, and so can those of another PID namespace or boot."""
    boot, pidns = tool_namespace().split(':')
    return f'{TMP_PREFIX}{_tool_identity().replace(":", "-")}-{pidns}-{boot[:8]}-'


@contextlib.contextmanager
def _environ(changes: Mapping[str, str | None]) -> Iterator[None]:
    """The settings of the tool's own MLflow calls, which MLflow reads from
    os.environ.  Process-wide: only while no reproduction runs (a child
    process gets its environment as an argument, never from here)."""
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


def listing(items: Sequence[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    return ' and '.join(filter(None, (', '.join(items[:-1]), items[-1]))) if items else ''


def plural(n: int, one: str, many: str | None = None) -> str:
    """The word for n things: `one` for one, else `many` (one + 's' by default)."""
    return one if n == 1 else many or one + 's'


def counted(n: int, one: str, many: str | None = None) -> str:
    """'1 run', '3 runs'."""
    return f'{n} {plural(n, one, many)}'


def duration_text(seconds: float) -> str:
    """900 -> '15m', 7200 -> '2h', 90 -> '90s': the largest unit that fits exactly."""
    for unit, size in (('w', 604800), ('d', 86400), ('h', 3600), ('m', 60)):
        if seconds >= size and seconds % size == 0:
            return f'{int(seconds // size)}{unit}'
    return f'{seconds:g}s'


def _json_float(x: float | None) -> float | str | None:
    """JSON has no NaN or infinity: they are written as the strings json.dumps
    gives them, "NaN", "Infinity" and "-Infinity", which float() reads back."""
    return x if x is None or math.isfinite(x) else json.dumps(x)


def _truncated(value: Any, limit: int) -> Any:
    if not isinstance(value, str) or len(value) <= limit:
        return value
    return value[: limit - 1] + '…'


def write_atomically(path: str, data: bytes) -> None:
    """A temporary file beside path, then a rename: a reader sees the old file
    or the whole new one, never half of one."""
    folder, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f'.{base}.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would have made it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------
# Core types: what judging decides, the plan of one reproduction and what
# it found besides the verdict (differences, registrations, an explanation),
# the settings of an invocation and what its reproductions share (the stop
# flag, the runs left open), the statuses' rank.


class Point(NamedTuple):
    """One logged value.  A plain (step, value) tuple works as well."""

    step: int | None  # None: the latest value only (--last-only), step unknown
    value: float
    timestamp: int | None = None  # milliseconds; None: unknown, ties with nothing


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
        matching = (t for p, t in reversed(self.overrides) if fnmatch.fnmatchcase(key, p))
        return next(matching, self.default)

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
        return not self.differing and all(p.equal for p in self.params)

    @property
    def differing(self) -> list[MetricVerdict]:
        """The metrics that differ and count (not ignored), in key order."""
        return [m for m in self.metrics if not (m.equal or m.ignored)]


@dataclasses.dataclass(frozen=True)
class Prefix:
    """What a reproduction stopped early compared: each metric's points up
    to a step, those both runs reached."""

    stopped_by: str  # '--fail-fast', '--steps 6' or '--time-limit 15m'
    steps: int | None  # compared up to this step (the least of the metrics'); None: nothing
    reference_steps: int | None  # the reference's last step
    compared_points: int  # the reference's points compared
    not_compared: tuple[str, ...]  # metrics the reproduction had not reached
    killed: bool = True  # stopped before its end (else --steps N of a run that ended)

    def text(self) -> str:
        """'up to step 6 of the reference's 59' (never past the reference's last)."""
        steps = self.steps
        if steps is not None and self.reference_steps is not None:
            steps = min(steps, self.reference_steps)
        return f"up to step {steps} of the reference's {self.reference_steps}"

    def why_not_compared(self) -> str:
        if self.stopped_by.startswith('--steps'):
            return f'logged after step {self.steps}'
        return 'not reached by the reproduction'

    def json(self) -> dict[str, Any]:
        return {
            'stopped_by': self.stopped_by,
            'stopped_early': self.killed,
            'steps': self.steps,
            'reference_steps': self.reference_steps,
            'compared_points': self.compared_points,
            'not_compared': list(self.not_compared),
        }


@dataclasses.dataclass(frozen=True)
class Changes:
    """The uncommitted changes a run was trained from, as the recorder kept
    them (TAG_CHANGES): applied to the checkout of its commit."""

    files: tuple[str, ...]  # the first of them, when they are many
    count: int
    sha256: str
    # name -> (data, mode): CHANGES_DIFF and files/...; None: too large to record
    members: Mapping[str, tuple[bytes, int]] | None
    not_recorded: Mapping[str, str]  # untracked files left out, and why

    def text(self) -> str:
        """'uncommitted changes (3 files)', or why they are not there."""
        said = f'uncommitted changes ({counted(self.count, "file")}'
        if self.members is None:
            return said + ', too large to record: not applied)'
        if self.not_recorded:
            said += f'; not recorded: {", ".join(sorted(self.not_recorded))}'
        return said + ')'


@dataclasses.dataclass(frozen=True)
class Source:
    repo: str  # git URL or local path, as recorded (may hold credentials)
    subdir: str  # project folder inside the repo, '' for its root
    version: str
    changes: Changes | None = None  # applied on top of version

    @property
    def uri(self) -> str:
        return f'{self.repo}#{self.subdir}' if self.subdir else self.repo


@dataclasses.dataclass(frozen=True)
class Params:
    passed: dict[str, str]
    not_passed: dict[str, str]
    # why a param is not passed, when not for the plan's one reason (_not_passed_reason)
    why: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Backend:
    """Where the project runs: an MLflow execution backend and its config
    (the dict `mlflow run -c` passes; it may hold credentials)."""

    name: str = DEFAULT_BACKEND
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Script:
    """A run made with `python path ...` rather than `mlflow run`: what to
    run and how.  Paths are relative to the project folder of the checkout."""

    path: str
    workdir: str  # where the recorded path names the script ('' for the top)
    recorded: str  # the mlflow.source.name the reproduced run records
    env_dir: str | None = None  # the folder of its environment file; None: env manager local
    argv: tuple[str, ...] = ()
    # '--script-args', f'the tag {TAG_ARGV}', '--help', 'no params' (none to pass),
    # NO_PARSER (the script imports none), HELP_AT_RUN_TIME (a dry run's --help),
    # or HELP_GAVE_NONE and why ('--help, which did not end within 15 s')
    arguments_from: str = '--help'
    interpreter_options: tuple[str, ...] = ()  # recorded before the script: -O, -X dev
    module: str | None = None  # run as `python -m module` from the working folder

    @property
    def launch(self) -> tuple[str, ...]:
        """The interpreter and what it runs, before the script's arguments."""
        target = (
            ('-m', self.module)
            if self.module
            else (posixpath.relpath(self.path, self.workdir or '.'),)
        )
        return ('python', *self.interpreter_options, *target)

    @property
    def command(self) -> tuple[str, ...]:
        """What runs in the working folder, as a person would type it."""
        return (*self.launch, *self.argv)


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
    script: Script | None = None  # a script run, not an MLflow Project run


class Stopped(Exception):
    """Raised inside a reproduction once SIGINT or SIGTERM has arrived."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status  # 'interrupted' or 'terminated'


class Stop:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None

    def __call__(self, signum: int, frame: object) -> None:  # the signal handler
        if self.signum is None:
            self.signum = signum
            # os.write: print() may not be re-entered from a signal handler.
            doing = 'stopping the projects and closing their runs'
            os.write(2, f'{program_name()}: {self.status}: {doing}\n'.encode())
        self.event.set()

    @property
    def status(self) -> str:
        return 'terminated' if self.signum == signal.SIGTERM else 'interrupted'

    def check(self) -> None:
        if self.event.is_set():
            raise Stopped(self.status)


class LeftOpen(NamedTuple):
    """A run that could not be closed, for the last line of standard error."""

    run_id: str
    status: str  # the status it should have been given
    tracking_uri: str
    why: str  # what the tracking server did


@dataclasses.dataclass(frozen=True)
class Differences:
    environment: tuple[dict[str, Any], ...] = ()
    datasets: tuple[dict[str, Any], ...] = ()
    code: tuple[str, ...] = ()
    models: tuple[tuple[str, MetricVerdict], ...] = ()  # (model name, its metric)
    environment_source: str = 'unknown'  # of the reference's environment
    # Why the environments were not compared, None when they were.
    environment_unknown: str | None = "the reference run's environment is unknown"

    def differ(self) -> bool:
        """Whether anything differs, or the environments could not be compared.
        (Not __bool__: a comparison that found nothing is still a comparison.)"""
        return any(
            (self.environment, self.datasets, self.code, self.models, self.environment_unknown)
        )


@dataclasses.dataclass(frozen=True)
class Registration:
    """A model version that the reproduced run registered."""

    name: str
    version: str
    run_id: str | None
    discarded: bool  # made in the scratch registry, and gone with it
    model_id: str | None = None  # the logged model it was made from


@dataclasses.dataclass(frozen=True)
class Registrations:
    kept: bool = False  # --keep-registrations: the project used the shared registry
    versions: tuple[Registration, ...] = ()

    @property
    def discarded(self) -> tuple[Registration, ...]:
        return tuple(r for r in self.versions if r.discarded)

    @property
    def shared(self) -> tuple[Registration, ...]:
        return tuple(r for r in self.versions if not r.discarded)


def from_namespace(cls: type[_T], args: argparse.Namespace, **given: Any) -> _T:
    """Settings (a dataclass) from the command line: a field takes the option
    of its name unless `given` gives it; a field no option names keeps its default."""
    named = {f.name for f in dataclasses.fields(cls)} & vars(args).keys()
    return cls(**{name: getattr(args, name) for name in named - given.keys()}, **given)


def rules_from(args: argparse.Namespace) -> Rules:
    return Rules(
        default=Tolerance(rtol=args.rtol, atol=args.atol),
        overrides=tuple(args.tolerance),
        ignored=tuple(args.ignore_metric),
    )


@dataclasses.dataclass(frozen=True)
class Options:
    """How to reproduce and judge, built once from the command line and the
    same for every reproduction of an invocation."""

    uri: str | None = None
    version: str | None = None
    version_by: str = '--version'  # what chose `version`: the option, or --bisect's probe
    experiment_name: str | None = None  # None: Default, or a script run's own experiment
    entry_point: str | None = None
    env_manager: str | None = None
    rules: Rules = Rules()
    last_only: bool = False
    plots: bool = True
    dry_run: bool = False
    allow_unsafe_command: bool = False
    verbose: bool = False
    quiet: bool = False
    jobs: int = 1
    keep_registrations: bool = False
    backend: str = DEFAULT_BACKEND
    backend_config: str | None = None  # a .json path or inline JSON, parsed when used
    script_args: str | None = None  # a script run's arguments, a template of {param}s
    reap_after: float | None = None  # seconds: close any reproduction RUNNING longer
    explain: bool = False
    fail_fast: bool | None = None  # None: on for --bisect's and --explain's probes only
    steps: int | None = None  # stop once every point up to this step is logged
    time_limit: float | None = None  # seconds: stop then, and judge what both reached

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        return from_namespace(cls, args, rules=rules_from(args), plots=not args.no_plots)


@dataclasses.dataclass
class _CachedHelp:
    """What a script's --help printed, and why it is no help (None: it ended
    well), asked once."""

    text: str = ''
    failure: str | None = None
    asked: bool = False
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


@dataclasses.dataclass
class Shared:
    """What the reproductions of one invocation add to as they go, each part
    under its lock: the sources fetched once, the layers --explain installed,
    the runs that could not be closed, each script's --help and the names of
    the experiments read (under the sources' lock).  One object per
    invocation, on purpose held by every copy of its Session."""

    sources: dict[tuple[str, ...], _CachedSource] = dataclasses.field(default_factory=dict)
    helps: dict[tuple[str, ...], _CachedHelp] = dataclasses.field(default_factory=dict)
    sources_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    layers: dict[str, str] = dataclasses.field(default_factory=dict)  # pkg==ver -> its folder
    layers_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    left_open: list[LeftOpen] = dataclasses.field(default_factory=list)  # appended to only
    experiments: dict[str, str] = dataclasses.field(default_factory=dict)  # ID -> name, as read


@dataclasses.dataclass(frozen=True)
class Session:
    """The settings the reproductions of one invocation share: the options,
    the MLflow client, the user's environment as it was, a temporary folder,
    the process marker, the stop flag.  Frozen: a group or a probe runs with
    a copy (dataclasses.replace), which holds the same client, stop flag and
    `shared`, the one thing that changes as reproductions run."""

    options: Options
    client: MlflowClient
    tracking_uri: str
    user_environ: Mapping[str, str]
    tmp_root: str
    marker: str  # PROCESS_MARKER value of the tool; a reproduction's is marker.N
    stop: Stop
    batch: bool = False
    backend: Backend = Backend()
    leftovers: tuple[dict[str, str], ...] = ()  # what close_leftovers cleaned: a group records it
    shared: Shared = dataclasses.field(default_factory=Shared)


@dataclasses.dataclass
class _CachedSource:
    root: str | None = None
    project_dir: str = ''
    commit: str = ''
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    origin: Source | None = None  # fetched from instead: a private copy already fetched


def worst_status(statuses: Iterable[str]) -> str:
    """The status whose exit code a group exits with: the first of
    STATUS_EXIT_CODES among statuses (a signal, then error, failed, differ,
    equal, planned); equal of none."""
    found = set(statuses)
    return next((s for s in STATUS_EXIT_CODES if s in found), 'equal')


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A difference a probe can undo: a package or a recorded variable."""

    kind: str  # 'package' or 'variable'
    name: str
    reference: str | None  # None: unset (a variable)
    reproduced: str | None

    @property
    def key(self) -> str:
        return self.name if self.kind == 'variable' else f'package {self.name}'


@dataclasses.dataclass(frozen=True)
class Explanation:
    restores_equality: bool | None
    culprits: tuple[Candidate, ...] = ()
    innocent: tuple[Candidate, ...] = ()  # undone, and they do not matter
    probes: tuple[dict[str, Any], ...] = ()
    not_tried: tuple[dict[str, str], ...] = ()
    reason: str | None = None  # why no answer: nothing tried, a signal, every probe failed
    # culprit key -> the packages undone with it, which it needs in order to load
    requires: Mapping[str, tuple[Candidate, ...]] = dataclasses.field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {
            'restores_equality': self.restores_equality,
            'culprits': [self._culprit_json(c) for c in self.culprits],
            'probes': list(self.probes),
            'not_tried': list(self.not_tried),
            'reason': self.reason,
        }

    def _culprit_json(self, c: Candidate) -> dict[str, Any]:
        needed = self.requires.get(c.key, ())
        requires = [
            {'name': n.name, 'reference': n.reference, 'reproduced': n.reproduced} for n in needed
        ]
        return {**dataclasses.asdict(c), 'requires': requires}


# ---------------------------------------------------------------------------
# Judging: pure functions, histories in, verdict out.


_EXACT = Tolerance(rtol=0.0, atol=0.0)


def values_close(reproduced: float, reference: float, tol: Tolerance) -> bool:
    """|a - b| <= atol + rtol * |b|, where NaN equals NaN and inf equals inf.

    An infinite tolerance ("ignore the magnitude") accepts any two finite
    values; computed, it would give inf * 0 = NaN for a zero reference.
    """
    if math.isnan(reproduced) or math.isnan(reference):
        return math.isnan(reproduced) and math.isnan(reference)
    if math.isinf(reproduced) or math.isinf(reference):
        return reproduced == reference
    if math.isinf(tol.rtol) or math.isinf(tol.atol):
        return True
    return abs(reproduced - reference) <= tol.atol + tol.rtol * abs(reference)


def value_diff(reproduced: float | None, reference: float | None) -> float | None:
    """reproduced - reference, 0 for two equal non-finite values."""
    if reproduced is None or reference is None:
        return None
    if values_close(reproduced, reference, _EXACT):
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
    logged, except values that share one step and one timestamp on either
    side: the store returns such a tie in an order of its own (by value), so
    they are compared as the multiset they are.  A point missing on one side
    is a divergence at its step.
    """
    ref, new = _settle_ties(_in_logging_order(reference), _in_logging_order(reproduced))
    divergence = _first_divergence(ref, new, tol)
    return MetricVerdict(
        key=key,
        reference=ref[-1].value if ref else None,
        reproduced=new[-1].value if new else None,
        equal=bool(ref) and bool(new) and divergence is None,
        steps_compared=min(len(ref), len(new)),
        # None for latest values only, whose step is not known.
        first_divergent_step=divergence[0] if divergence else None,
        points=max(len(ref), len(new)),
        tolerance=tol,
    )


def _in_logging_order(points: Sequence[tuple[Any, ...]]) -> list[Point]:
    """By step, then timestamp; stable, so points without a timestamp keep
    the order they were given in."""
    return sorted((Point(*p) for p in points), key=lambda p: (p.step or 0, p.timestamp or 0))


def _tied(a: Point, b: Point) -> bool:
    """Logged at one step within one millisecond: their order is unknown."""
    return a.step == b.step and a.timestamp is not None and a.timestamp == b.timestamp


def _by_value(p: Point) -> tuple[int, bool, float]:
    return (p.step or 0, math.isnan(p.value), p.value)  # NaN last, so NaN meets NaN


def _settle_ties(ref: list[Point], new: list[Point]) -> tuple[list[Point], list[Point]]:
    """Both histories, each stretch that holds a tie sorted by value in place,
    so that comparing point by point compares those stretches as multisets.
    The compared prefix is cut into stretches only where neither side has a
    tie: a tie on either side stays within one stretch."""
    n, start = min(len(ref), len(new)), 0
    for i in range(1, n + 1):
        if i < n and (_tied(ref[i - 1], ref[i]) or _tied(new[i - 1], new[i])):
            continue
        if i - start > 1:
            ref[start:i] = sorted(ref[start:i], key=_by_value)
            new[start:i] = sorted(new[start:i], key=_by_value)
        start = i
    return ref, new


def _first_divergence(
    ref: Sequence[Point],
    new: Sequence[Point],
    tol: Tolerance,
) -> tuple[int | None] | None:
    """(step,) of the first point that differs, None when none does."""
    for a, b in itertools.zip_longest(ref, new):
        if a is None or b is None:  # a point missing on one side
            return ((a or b).step,)
        if a.step != b.step:
            return (min(a.step, b.step),)
        if not values_close(b.value, a.value, tol):
            return (a.step,)
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
        tol = rules.tolerance_for(key)
        verdict = compare_histories(key, reference.get(key, ()), reproduced.get(key, ()), tol)
        metrics.append(dataclasses.replace(verdict, ignored=rules.is_ignored(key)))
    return Verdict(tuple(metrics), tuple(params))


def _at_most(points: Sequence[Point], step: int) -> list[Point]:
    return [p for p in points if (p.step or 0) <= step]


def _by_step(points: Sequence[Point]) -> dict[int, list[Point]]:
    """A history's points by step, each step's in logging order."""
    steps: dict[int, list[Point]] = {}
    for p in _in_logging_order(points):
        steps.setdefault(p.step or 0, []).append(p)
    return steps


def common_prefix(
    reference: Sequence[Point], reproduced: Sequence[Point]
) -> tuple[list[Point], list[Point], int | None]:
    """What of a metric the reproduction has logged so far can be judged,
    step by step: every step where it has as many values as the reference
    (or more: a difference), then, at the first step where it has fewer, its
    first ones and the reference's first as many (the rest may still come),
    and nothing later, whatever it has logged out of order.  Also the last
    step logged in full, None: none."""
    ref, new = _by_step(reference), _by_step(reproduced)
    ref_cut: list[Point] = []
    new_cut: list[Point] = []
    reached = None
    for step in sorted({*ref, *new}):
        a, b = ref.get(step, []), new.get(step, [])
        ref_cut += a[: len(b)]
        new_cut += b
        if len(b) < len(a):
            break
        ref_cut += a[len(b) :]
        reached = step
    return ref_cut, new_cut, reached


def late_metrics(reference: Mapping[str, Sequence[Point]], n: int) -> set[str]:
    """The metrics the reference logged only after step n: every step of
    theirs is above n, or, logged without a step (at step 0: a final score),
    every value of theirs came after the first point of a step above n."""
    after = [
        p.timestamp
        for history in reference.values()
        for p in history
        if (p.step or 0) > n and p.timestamp is not None
    ]
    cutoff = min(after) if after else None

    def final(history: Sequence[Point]) -> bool:
        return cutoff is not None and all(
            not p.step and p.timestamp is not None and p.timestamp > cutoff for p in history
        )

    return {key for key, history in reference.items() if not _at_most(history, n) or final(history)}


def _stepped(history: Sequence[Point]) -> bool:
    return any(p.step for p in history)


def prefix_histories(
    reference: Mapping[str, Sequence[Point]],
    reproduced: Mapping[str, Sequence[Point]],
    upto: int | None,
) -> tuple[dict[str, list[Point]], dict[str, list[Point]], int | None, tuple[str, ...]]:
    """Both runs' histories cut to what can be judged before the end: each
    metric up to step `upto`, or with None its common_prefix.  Also the step
    every compared metric with steps reached (None: none), and the metrics
    left out: the reference logged them only after `upto`, or the
    reproduction has not reached them."""
    ref, new, reached, later = {}, {}, {}, []
    late = late_metrics(reference, upto) if upto is not None else set()
    any_stepped = any(map(_stepped, reference.values()))
    for key in sorted({*reference, *reproduced}):
        a, b = reference.get(key, ()), reproduced.get(key, ())
        if upto is None:
            cut_a, cut_b, step = common_prefix(a, b)
        else:
            cut_a, cut_b, step = _at_most(a, upto), _at_most(b, upto), upto
        if key in late or not (cut_a or cut_b):
            later.append(key)
            continue
        ref[key], new[key] = cut_a, cut_b
        if step is not None and (_stepped(a) or not any_stepped):
            reached[key] = step
    return ref, new, min(reached.values(), default=None), tuple(later)


def judge_prefix(
    reference: Mapping[str, Sequence[Point]],
    reproduced: Mapping[str, Sequence[Point]],
    rules: Rules,
    upto: int | None,
    stopped_by: str,
    params: Sequence[ParamVerdict] = (),
    killed: bool = True,
) -> tuple[Verdict, Prefix, tuple[dict[str, list[Point]], dict[str, list[Point]]]]:
    """The verdict on what both runs reached, what it covers, and the
    histories it judged."""
    ref, new, reached, later = prefix_histories(reference, reproduced, upto)
    steps = [p.step or 0 for points in reference.values() for p in points]
    last = max(steps) if steps else None
    compared = sum(len(points) for points in ref.values())
    prefix = Prefix(stopped_by, reached, last, compared, later, killed)
    return judge(ref, new, rules, params), prefix, (ref, new)


def first_divergence(
    reference: Mapping[str, Sequence[Point]],
    reproduced: Mapping[str, Sequence[Point]],
    rules: Rules,
) -> MetricVerdict | None:
    """For --fail-fast: the first metric that already differs, on what the
    reproduction has logged so far that can be judged."""
    verdict, _, _ = judge_prefix(reference, reproduced, rules, None, '--fail-fast')
    return next(iter(verdict.differing), None)


def steps_done(
    reference: Mapping[str, Sequence[Point]],
    reproduced: Mapping[str, Sequence[Point]],
    n: int,
    rules: Rules = Rules(),
) -> bool:
    """For --steps N: has the reproduction logged, up to step N, every point
    the reference logged there (or gone past N)?  Ignored metrics and those
    the reference logged only later are not waited for."""
    late = late_metrics(reference, n)
    for key, points in reference.items():
        if key in late or rules.is_ignored(key):
            continue
        logged = reproduced.get(key, ())
        if len(_at_most(logged, n)) < len(_at_most(points, n)) and not any(
            (p.step or 0) > n for p in logged
        ):
            return False
    return True


def _metric_json(m: MetricVerdict) -> dict[str, Any]:
    diff = value_diff(m.reproduced, m.reference)
    # None and 0 stay as they are; any other difference from a zero reference is infinite.
    relative = diff if not diff else (abs(diff) / abs(m.reference) if m.reference else math.inf)
    return {
        'key': m.key,
        'reference': _json_float(m.reference),
        'reproduced': _json_float(m.reproduced),
        'abs_diff': _json_float(None if diff is None else abs(diff)),
        'rel_diff': _json_float(relative),
        'equal': m.equal,
        'ignored': m.ignored,
        'rtol': _json_float(m.tolerance.rtol),
        'atol': _json_float(m.tolerance.atol),
        'steps_compared': m.steps_compared,
        'first_divergent_step': m.first_divergent_step,
    }


# ---------------------------------------------------------------------------
# Diagnosing repetitions: pure.  R0 is a metric's latest value in the
# reference run, R1..RN its latest values in N reproductions of it.  One
# reproduction cannot tell a nondeterministic training from a world that
# changed since the reference run (data, environment); several can.


REPRODUCIBLE = 'reproducible'
NONDETERMINISTIC = 'nondeterministic'
DRIFTED = 'drifted'
NONDETERMINISTIC_DRIFTED = 'nondeterministic, drifted'
CLASSES = (REPRODUCIBLE, NONDETERMINISTIC, DRIFTED, NONDETERMINISTIC_DRIFTED)  # best to worst


@dataclasses.dataclass(frozen=True)
class MetricDiagnosis:
    key: str
    reference: float | None  # R0; None when the reference run lacks the metric
    repetitions: tuple[float | None, ...]  # R1..RN; None where a repetition lacks it
    classification: str  # one of CLASSES
    # Statistics of the Ri that are numbers (neither missing nor NaN).
    minimum: float | None
    maximum: float | None
    mean: float | None
    stdev: float | None  # sample standard deviation (N - 1); None below two numbers
    # The smallest tolerance under which every Ri equals R0 (see suggest_tolerance).
    suggested_rtol: float | None
    suggested_atol: float | None
    tolerance: Tolerance = Tolerance()  # the rule the classification used
    ignored: bool = False  # listed, but not part of the run's classification
    first_disagreeing_step: int | None = None  # of the repetitions among themselves
    points: int = 1  # length of the longest history


def _same(value: float | None, reference: float | None, tol: Tolerance) -> bool:
    """values_close, where a missing value equals only a missing value."""
    if value is None or reference is None:
        return value is None and reference is None
    return values_close(value, reference, tol)


def repetitions_agree(values: Sequence[float | None], tol: Tolerance) -> bool:
    """Every Ri equals every Rj, each one taken in turn as the reference of the
    tolerance rule.  Under rtol the rule is not symmetric, and comparing only
    min with max would let through values of both signs, such as -1, 0.001, 1
    with rtol 2.5."""
    return all(_same(a, b, tol) for a, b in itertools.permutations(values, 2))


def _numbers(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def widened_range(values: Sequence[float | None]) -> tuple[float, float] | None:
    """[min - w, max + w] with w = max - min, over the Ri that are numbers;
    None when none is.  An infinite Ri makes w infinite, unless all are it."""
    numbers = _numbers(values)
    if not numbers:
        return None
    lo, hi = min(numbers), max(numbers)
    width = 0.0 if lo == hi else hi - lo  # inf - inf would be NaN
    return lo - width, hi + width


def _within(reference: float | None, values: Sequence[float | None]) -> bool:
    """R0 lies within the widened range of the Ri (compared as plain numbers).
    A missing R0 lies within it when some Ri is missing too, a NaN R0 when
    some Ri is NaN: an outcome the repetitions themselves showed."""
    if reference is None or math.isnan(reference):
        return any(_same(v, reference, _EXACT) for v in values)
    bounds = widened_range(values)
    return bounds is not None and bounds[0] <= reference <= bounds[1]


def classify(reference: float | None, values: Sequence[float | None], tol: Tolerance) -> str:
    if all(_same(v, reference, tol) for v in values):
        return REPRODUCIBLE
    if repetitions_agree(values, tol):
        return DRIFTED  # deterministic, and something besides chance changed
    return NONDETERMINISTIC if _within(reference, values) else NONDETERMINISTIC_DRIFTED


def _stdev(numbers: Sequence[float]) -> float | None:
    if len(numbers) < 2:
        return None
    if all(v == numbers[0] for v in numbers):
        return 0.0
    if any(math.isinf(v) for v in numbers):
        return math.inf
    try:
        return statistics.stdev(numbers)
    except OverflowError:  # the spread of values near +-1.8e308
        return math.inf


def _round_up(x: float, holds: Callable[[float], bool]) -> float:
    """The smallest number with two significant digits that `holds` accepts,
    searched upwards from x rounded down.  `holds` runs the verdict's own float
    arithmetic, so the answer is what --tolerance will accept: 0.1 for 11
    against 10, though the float 1 / 10 is a little above 0.1."""
    rounded = decimal.Decimal(x)  # exact: the float's own decimal expansion
    unit = decimal.Decimal(1).scaleb(rounded.adjusted() - 1)
    rounded = rounded.quantize(unit, rounding=decimal.ROUND_FLOOR)
    while not holds(float(rounded)):
        rounded += unit
        unit = decimal.Decimal(1).scaleb(rounded.adjusted() - 1)  # 0.99 + 0.01 = 1.0
    return float(rounded)


def suggest_tolerance(
    reference: float | None,
    values: Sequence[float | None],
) -> tuple[float | None, float | None]:
    """(rtol, atol): the smallest relative tolerance, on its own (atol 0) and
    rounded up to two significant digits, under which every Ri equals R0.

    (0.0, None) when every Ri equals R0 exactly (NaN equals NaN).  (None, atol)
    when R0 is 0, where no relative tolerance can help: atol is the largest
    |Ri - R0|, rounded up the same way.  (None, None) when no tolerance can
    help: a value missing on one side, or NaN or an infinity against anything
    but itself.
    """
    if reference is None or any(v is None for v in values):
        return None, None
    if all(values_close(v, reference, _EXACT) for v in values):
        return 0.0, None
    if not all(math.isfinite(v) for v in (reference, *values)):
        return None, None
    largest = max(abs(v - reference) for v in values)
    if not math.isfinite(largest):
        return None, None  # the difference of two values near +-1.8e308

    def holds(tol: Tolerance) -> bool:
        return all(values_close(v, reference, tol) for v in values)

    if reference == 0:
        return None, _round_up(largest, lambda a: holds(Tolerance(rtol=0.0, atol=a)))
    rtol = largest / abs(reference)
    if not math.isfinite(rtol):
        return None, None
    return _round_up(rtol, lambda r: holds(Tolerance(rtol=r, atol=0.0))), None


def classify_metric(
    key: str,
    reference: float | None,
    repetitions: Sequence[float | None],
    tol: Tolerance,
) -> MetricDiagnosis:
    """The class of one metric, by its latest values, under the verdict's rule."""
    numbers = _numbers(repetitions)
    rtol, atol = suggest_tolerance(reference, repetitions)
    return MetricDiagnosis(
        key=key,
        reference=reference,
        repetitions=tuple(repetitions),
        classification=classify(reference, repetitions, tol),
        minimum=min(numbers, default=None),
        maximum=max(numbers, default=None),
        # statistics.mean sums exactly (no overflow near 1.8e308); an infinity
        # among the numbers gives that infinity, both infinities give NaN.
        mean=statistics.mean(numbers) if numbers else None,
        stdev=_stdev(numbers),
        suggested_rtol=rtol,
        suggested_atol=atol,
        tolerance=tol,
    )


def first_disagreement(
    key: str,
    histories: Sequence[Sequence[Point]],
    tol: Tolerance,
) -> int | None:
    """The first step at which some two repetitions' histories differ, each
    taken in turn as the reference; None when none do, or when the steps are
    not known (latest values only)."""
    steps = (
        compare_histories(key, a, b, tol).first_divergent_step
        for a, b in itertools.permutations(histories, 2)
    )
    return min((s for s in steps if s is not None), default=None)


def _latest(history: Sequence[Point]) -> float | None:
    """The value compare_histories calls latest: the last logged at the last step."""
    # max() keeps the first of equal steps; reversed, that is the last logged.
    return max(reversed(history), key=lambda p: p[0] or 0)[1] if history else None


def diagnose(
    reference: Mapping[str, Sequence[Point]],
    repetitions: Sequence[Mapping[str, Sequence[Point]]],
    rules: Rules,
) -> tuple[MetricDiagnosis, ...]:
    """Every metric that the reference or any repetition has, in key order."""
    keys = sorted({*reference, *(k for histories in repetitions for k in histories)})
    diagnoses = []
    for key in keys:
        tol = rules.tolerance_for(key)
        histories = [h.get(key, ()) for h in repetitions]
        latest = [_latest(h) for h in histories]
        diagnosis = classify_metric(key, _latest(reference.get(key, ())), latest, tol)
        diagnoses.append(
            dataclasses.replace(
                diagnosis,
                ignored=rules.is_ignored(key),
                first_disagreeing_step=first_disagreement(key, histories, tol),
                points=max(len(h) for h in (reference.get(key, ()), *histories)),
            )
        )
    return tuple(diagnoses)


def classify_run(diagnoses: Sequence[MetricDiagnosis]) -> str:
    """The worst class among the metrics not ignored; reproducible for none."""
    ranks = [CLASSES.index(d.classification) for d in diagnoses if not d.ignored]
    return CLASSES[max(ranks, default=0)]


def suggested_flags(diagnoses: Sequence[MetricDiagnosis]) -> str:
    """--tolerance flags under which every repetition would have equalled the
    reference, for the metrics not reproducible; '' when there are none.
    KEY=0,ATOL where R0 is 0; no flag where no tolerance can help."""
    flags = []
    for d in diagnoses:
        if d.ignored or d.classification == REPRODUCIBLE:
            continue
        if d.suggested_rtol is not None:
            value = f'{d.suggested_rtol:g}'
        elif d.suggested_atol is not None:
            value = f'0,{d.suggested_atol:g}'
        else:
            continue
        pattern = re.sub(r'([*?\[])', r'[\1]', d.key)  # a glob that matches only this key
        word = f'{pattern}={value}'
        quoted = shlex.quote(word)  # always in quotes, as a user would type it
        flags.append('--tolerance ' + (quoted if quoted != word else f"'{word}'"))
    return ' '.join(flags)


FAILED_CLASS = 'failed'  # a reference run none of whose repetitions ran to the end


# ---------------------------------------------------------------------------
# Resolving the reference run into a plan: pure, from the run as read.


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
    if shlex.quote(value) == value:  # a bare word, as most values are: nothing to undo
        return value
    with contextlib.suppress(ValueError):  # not shell words: nothing MLflow quoted
        tokens = shlex.split(value)
        if len(tokens) == 1 and shlex.quote(tokens[0]) == value:
            return tokens[0]
    return value


def _unquoted(params: Mapping[str, str]) -> dict[str, str]:
    return {k: unquote_param(v) for k, v in params.items()}


# A commit value comes from the tracking store or the command line, and git
# reads a value that starts with '-' as an option (--upload-pack=CMD runs CMD).
_COMMIT_ID_RE = re.compile(r'[0-9a-fA-F]{7,40}')  # fullmatch: '$' takes a final newline
# What `git check-ref-format --allow-onelevel` refuses (git help check-ref-format):
# control characters, space, ~ ^ : ? * [ \\, '..', '@{', '//', a component that
# starts with '.' or ends with '.lock', a name that starts or ends with '/' or
# ends with '.', and '@' alone.
_BAD_REF_RE = re.compile(r'[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|(^|/)\.|\.lock(/|$)|^/|/$|\.$|^@$')


def commit_refusal(value: str) -> str | None:
    """ "'<value>' is refused: <why>" (the value escaped), said before git sees
    the value; None when it is a commit ID (7-40 hex digits) or a ref name that
    does not start with '-'."""
    if _COMMIT_ID_RE.fullmatch(value):
        return None
    if not value:
        problem = 'it is empty'
    elif value.startswith('-'):
        problem = 'it starts with "-", which git would read as an option'
    elif _BAD_REF_RE.search(value):
        problem = 'it is neither a commit ID (7 to 40 hex digits) nor a valid ref name'
    else:
        return None
    return f'{value!r} is refused: {problem}'


def refuse_commit_value(value: str, what: str) -> str:
    """The value, or a ReproduceError that names it and says why."""
    if refusal := commit_refusal(value):
        raise ReproduceError(f'{what} {refusal}')
    return value


def is_script_run(run: Run) -> bool:
    """Made with `python script.py ...` (or anything but `mlflow run`)."""
    return run.data.tags.get(TAG_SOURCE_TYPE) != 'PROJECT'


def not_reproducible(run: Run, uri_given: bool, version_given: bool = False) -> str | None:
    """Why a run cannot be reproduced from what it recorded, None when it can."""
    tags = run.data.tags
    source_type = tags.get(TAG_SOURCE_TYPE)
    if source_type == 'NOTEBOOK':
        return f'it is a notebook run (tag {TAG_SOURCE_TYPE} is NOTEBOOK): no script to run'
    source_tag = TAG_SOURCE_NAME if source_type == 'PROJECT' else TAG_GIT_REPO_URL
    if not uri_given and not tags.get(source_tag):
        return (
            f'it was not launched as an MLflow Project (tag {TAG_SOURCE_TYPE} is '
            f'{source_type!r}) and recorded no remote (tag {TAG_GIT_REPO_URL}): pass --uri '
            f'with the git URL of its code'
        )
    if not version_given and not tags.get(TAG_GIT_COMMIT):
        return f'it recorded no commit (tag {TAG_GIT_COMMIT}): pass --version with the commit'
    if not version_given and (refusal := commit_refusal(tags[TAG_GIT_COMMIT])):
        return f'its recorded commit {refusal}'
    return None


# `mlflow run file:///repo#sub` records os.path.abspath of its URI:
# '<the current folder>/file:/repo#sub'.
_GARBLED_FILE_URI_RE = re.compile(r'^/.*?/file:(?P<path>/[^#]*)(?P<subdir>#.*)?$')


def ungarbled_source(name: str) -> str:
    """The file:// URI behind a source name MLflow garbled, else the name."""
    match = _GARBLED_FILE_URI_RE.match(name)
    if not match or os.path.isdir(name.partition('#')[0]):
        return name
    return f'file://{match["path"]}{match["subdir"] or ""}'


def resolve_source(run: Run, uri: str | None, version: str | None) -> Source:
    tags = run.data.tags
    if reason := not_reproducible(run, uri is not None, version is not None):
        raise ReproduceError(f'run {run.info.run_id} cannot be reproduced: {reason}')
    if uri is None:
        script = is_script_run(run)
        uri = tags[TAG_GIT_REPO_URL] if script else ungarbled_source(tags[TAG_SOURCE_NAME])
    at_recorded = version in (None, tags.get(TAG_GIT_COMMIT))
    version = refuse_commit_value(version, 'commit') if version else tags[TAG_GIT_COMMIT]
    repo, subdir = split_source_uri(uri)
    changes = recorded_changes(tags) if at_recorded else None
    return Source(repo=repo, subdir=subdir, version=version, changes=changes)


def _change_path(name: str) -> str | None:
    """An untracked file's path in the archive of the changes (files/PATH),
    None when it is not one a work tree can hold: absolute, .., .git."""
    path = name.removeprefix('files/')
    parts = path.split('/')
    if path == name or posixpath.normpath(path) != path or path.startswith('/'):
        return None
    return None if any(p in ('', '.', '..') or p.lower() == '.git' for p in parts) else path


def _gunzipped(archive: bytes) -> bytes:
    """The archive uncompressed, refused beyond CHANGES_UNPACKED_LIMIT
    bytes: a small tag must not unpack into gigabytes."""
    import zlib

    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = inflate.decompress(archive, CHANGES_UNPACKED_LIMIT + 1)
    if len(data) > CHANGES_UNPACKED_LIMIT or not inflate.eof:
        raise ValueError(f'it unpacks to more than {CHANGES_UNPACKED_LIMIT} bytes, or is cut')
    return data


def _changes_members(archive: bytes) -> dict[str, tuple[bytes, int]]:
    """name -> (data, mode) of the archive of the changes; only CHANGES_DIFF
    and regular files under files/, at most CHANGES_MAX_MEMBERS of them."""
    import io
    import tarfile
    import zlib

    found: dict[str, tuple[bytes, int]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(_gunzipped(archive)), mode='r:') as tar:
            for member in tar:
                fits = member.name == CHANGES_DIFF or _change_path(member.name) is not None
                if not (member.isfile() and fits) or len(found) >= CHANGES_MAX_MEMBERS:
                    raise ValueError(
                        f'{_truncated(member.name, 80)!r} is not a file of the changes'
                    )
                found[member.name] = (tar.extractfile(member).read(), member.mode)  # type: ignore[union-attr]
    except (tarfile.TarError, ValueError, OSError, EOFError, zlib.error) as e:
        raise ReproduceError(
            f'the uncommitted changes recorded with the run cannot be read: '
            f'{_truncated(_last_line(str(e)), 200)}'
        ) from None
    return found


def _diff_paths(diff: bytes) -> list[str]:
    """The files a `git diff` changes, from its `diff --git a/X b/X` lines
    (a quoted name as git quotes it)."""
    paths = []
    for line in diff.decode('utf-8', 'replace').splitlines():
        if line.startswith('diff --git '):
            rest = line[len('diff --git ') :]
            quoted = rest.endswith('"') and ' "b/' in rest
            path = rest.rpartition(' "b/' if quoted else ' b/')[2]
            paths.append(path[:-1] if quoted else path)
    return paths


def recorded_changes(tags: Mapping[str, str]) -> Changes | None:
    """The uncommitted changes the recorder kept in TAG_CHANGES and the
    numbered tags after it, checked against their sha256."""
    import base64
    import binascii

    if TAG_CHANGES not in tags:
        return None
    broken = f"the tags {TAG_CHANGES}* of the reference run are not the recorder's"
    try:
        about = json.loads(tags[TAG_CHANGES])
        count = min(int(about['parts']), RECORD_CHANGES_LIMIT // TAG_VALUE_LIMIT + 1)
        parts = [tags[f'{TAG_CHANGES}.{i}'] for i in range(1, count + 1)]
        archive = base64.b64decode(''.join(parts), validate=True) if parts else None
        files, left = [str(f) for f in about['files']], dict(about['not_recorded'])
        changes = Changes(tuple(files), int(about['count']), str(about['sha256']), None, left)
    except (ValueError, KeyError, TypeError, binascii.Error, OverflowError, RecursionError) as e:
        raise ReproduceError(f'{broken}: {_truncated(_last_line(str(e)), 200)}') from None
    if archive is None:
        return changes
    if hashlib.sha256(archive).hexdigest() != changes.sha256:
        raise ReproduceError(f'{broken}: their sha256 does not match')
    # What is applied is what the archive holds, whatever the tag says of it:
    # read once here, and applied from what was read.
    members = _changes_members(archive)
    diff = members.get(CHANGES_DIFF, (b'', 0))[0]
    files = [*_diff_paths(diff), *(str(_change_path(n)) for n in members if n != CHANGES_DIFF)]
    return dataclasses.replace(
        changes, files=tuple(sorted(files)), count=len(files), members=members
    )


def select_params(
    declared: Sequence[str] | None,
    reference_params: Mapping[str, str],
) -> Params:
    """Only what the entry point declares; None means a script entry point,
    which MLflow ran with every param it was given."""
    values = _unquoted(reference_params)
    passed = {k: v for k, v in values.items() if declared is None or k in declared}
    return Params(passed=passed, not_passed={k: v for k, v in values.items() if k not in passed})


# ---------------------------------------------------------------------------
# Param values in the entry point's command: where each placeholder lands in
# the shell's grammar.  MLflow replaces {p} with shlex.quote(value) and runs the
# result with `bash -c`.  That quoting keeps the value one word, as data, only
# where a bare word stands; everywhere else it can end a quote, a
# here-document or a script early.


_MARK = 0xF0000  # placeholders become private-use characters while scanning
_REPARSING_COMMANDS = frozenset({'eval', 'trap', 'let'})  # they run an argument as code
_SHELLS = frozenset({'sh', 'bash', 'dash', 'zsh', 'ksh', 'mksh'})
_RESERVED_WORDS = frozenset(
    ('!', '{', '}', 'if', 'then', 'else', 'elif', 'fi', 'do', 'done', 'while', 'until', 'time')
    + ('exec', 'command', 'builtin')  # builtins that run the next word as the command
)
_ASSIGNMENT_RE = re.compile(r'^[A-Za-z_]\w*(\[[^]]*\])?\+?=')


@dataclasses.dataclass(frozen=True)
class Placeholder:
    text: str  # as written in the command, e.g. '{msg}' or '{msg!r}'
    key: str  # the param it takes its value from
    context: str | None  # where it lands; None: a bare word, where quoting holds


@dataclasses.dataclass
class _Scan:
    text: str
    count: int  # of placeholders, numbered from 0
    contexts: dict[int, str | None]
    heredocs: list[tuple[str, bool]]  # pending (delimiter, strip leading tabs)

    def placeholder(self, i: int) -> int | None:
        n = ord(self.text[i]) - _MARK if i < len(self.text) else -1
        return n if 0 <= n < self.count else None

    def mark(self, i: int, context: str | None) -> None:
        n = self.placeholder(i)
        if n is not None:
            self.contexts.setdefault(n, context)

    def mark_span(self, start: int, end: int, context: str) -> None:
        for i in range(start, end):
            self.mark(i, context)


class _Command:
    """The words of the simple command being read, to know what it runs."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self.word = ''
        self.in_test = False  # inside [[ ... ]], where operands can be arithmetic

    def end_word(self) -> None:
        word, self.word = self.word.replace('\\', '').replace('"', '').replace("'", ''), ''
        if word == '[[' and not self.words:
            self.in_test = True
        elif word == ']]' and self.in_test:
            self.in_test = False
        elif word and (self.words or not (word in _RESERVED_WORDS or _ASSIGNMENT_RE.match(word))):
            self.words.append(word)

    def end(self) -> None:
        self.end_word()
        self.words, self.in_test = [], False

    def reparses(self) -> str | None:
        """Why an argument of this command is run as code, if it is."""
        if self.in_test:
            return 'inside [[ ... ]]'
        if not self.words:
            return None
        name = os.path.basename(self.words[0])
        if name in _REPARSING_COMMANDS:
            return f'in an argument of {name}'
        if name in _SHELLS and any(re.match(r'^-\w*c', w) for w in self.words[1:]):
            return f'in a {name} -c script'
        return None


def _find(text: str, chars: str, i: int, escapes: bool) -> int:
    """Index of the first of chars at or after i (len(text) if none)."""
    while i < len(text) and text[i] not in chars:
        i += 2 if escapes and text[i] == '\\' else 1
    return min(i, len(text))


def _scan_to(sc: _Scan, i: int, closer: str, escapes: bool, context: str) -> int:
    """A region whose end the shell finds without parsing what is inside
    ('...', $'...', backticks): every placeholder in it gets the context."""
    end = _find(sc.text, closer, i, escapes)
    sc.mark_span(i, end, context)
    return end + 1


def _scan_heredocs(sc: _Scan, i: int, poison: str | None) -> int:
    """The bodies of the here-documents begun on the line that just ended."""
    text = sc.text
    while sc.heredocs:
        delimiter, strip_tabs = sc.heredocs.pop(0)
        while i < len(text):
            end = _find(text, '\n', i, escapes=False)
            line = text[i:end]
            if (line.lstrip('\t') if strip_tabs else line) == delimiter:
                i = end + 1
                break
            # The value can end the body early with a line holding the
            # delimiter, and an unquoted delimiter's body expands $(...).
            sc.mark_span(i, end, poison or 'inside a here-document')
            i = end + 1
    return i


def _scan_heredoc_start(sc: _Scan, i: int, poison: str | None) -> int:
    """After `<<`: read the delimiter word and queue its body."""
    text = sc.text
    strip_tabs = i < len(text) and text[i] == '-'
    i += strip_tabs
    while i < len(text) and text[i] in ' \t':
        i += 1
    start = i
    while i < len(text) and text[i] not in ' \t\n;&|()<>':
        if text[i] in '\'"':
            i = _find(text, text[i], i + 1, text[i] == '"')
        i += 1
    sc.mark_span(start, i, poison or 'in a here-document delimiter')
    delimiter = re.sub(r'[\'"\\]', '', text[start:i])
    sc.heredocs.append((delimiter, strip_tabs))
    return i


def _scan_double(sc: _Scan, i: int, poison: str | None, context: str) -> int:
    """Inside "...": placeholders are not bare, but $(...) nests a command."""
    text = sc.text
    while i < len(text) and text[i] != '"':
        if text[i] == '\\':
            sc.mark(i + 1, poison or context)
            i += 2
        elif text[i] == '`':
            i = _scan_to(sc, i + 1, '`', True, poison or 'inside backticks')
        elif text[i] == '$' and text[i + 1 : i + 2] not in ('"', "'"):
            i = _scan_dollar(sc, i, poison, _Command())
        else:
            sc.mark(i, poison or context)
            i += 1
    return i + 1


def _scan_dollar(sc: _Scan, i: int, poison: str | None, command: _Command) -> int:
    """At a `$`: a quote, an expansion or a substitution starts, or nothing."""
    text, nxt = sc.text, sc.text[i + 1 : i + 2]
    if text.startswith('$((', i):
        return _scan_commands(sc, i + 2, ')', poison or 'inside an arithmetic expression')
    if nxt == '(':
        return _scan_commands(sc, i + 2, ')', poison or command.reparses())
    if nxt == '{':
        return _scan_commands(sc, i + 2, '}', poison or 'inside a ${...} expansion')
    if nxt == "'":
        return _scan_to(sc, i + 2, "'", True, poison or "inside $'...' quotes")
    if nxt == '"':
        return _scan_double(sc, i + 2, poison, 'inside $"..." quotes')
    # `${p}` in an MLproject is `$` before the value: `$'...'` quoting.
    sc.mark(i + 1, poison or 'right after a $')
    command.word += '$'
    return i + 1


def _scan_commands(sc: _Scan, i: int, closer: str, poison: str | None) -> int:
    """Shell commands up to an unmatched closer (')' or '}'), or the end.

    A bare placeholder here is one word, unless the command re-reads its
    arguments as code; poison names an enclosing context that is never safe.
    """
    text, command, depth = sc.text, _Command(), 0
    while i < len(text):
        if text[i] == closer and depth == 0:
            command.end()
            return i + 1
        if sc.placeholder(i) is not None:
            sc.mark(i, poison or command.reparses())
            command.word += text[i]
            i += 1
            continue
        quoted = _scan_quoting(sc, i, poison, command)
        if quoted is not None:
            i = quoted
        else:
            i, depth = _scan_structure(sc, i, closer, poison, command, depth)
    command.end()
    return i


def _scan_quoting(sc: _Scan, i: int, poison: str | None, command: _Command) -> int | None:
    """A backslash, quotes, backticks or a $ expansion at i: where it ends,
    None when text[i] starts none of them."""
    text, c = sc.text, sc.text[i]
    if c == '\\':
        if text[i + 1 : i + 2] != '\n':  # a line continuation is nothing
            sc.mark(i + 1, poison or command.reparses() or 'right after a backslash')
            command.word += text[i : i + 2]
        return i + 2
    if c == "'":
        end = _scan_to(sc, i + 1, "'", False, poison or 'inside quotes')
        command.word += text[i:end]
        return end
    if c == '"':
        end = _scan_double(sc, i + 1, poison or command.reparses(), 'inside quotes')
        command.word += text[i:end]
        return end
    if c == '`':
        command.word += 'x'
        return _scan_to(sc, i + 1, '`', True, poison or 'inside backticks')
    if c == '$':
        end = _scan_dollar(sc, i, poison, command)
        if end > i + 1:
            command.word += 'x'
        return end
    return None


def _scan_structure(
    sc: _Scan, i: int, closer: str, poison: str | None, command: _Command, depth: int
) -> tuple[int, int]:
    """Comments, line ends, blanks, here-documents, arithmetic, subshells and
    operators at i, or a plain character: (where it ends, the new depth)."""
    text, c = sc.text, sc.text[i]
    if c == '#' and not command.word and closer != '}':
        end = _find(text, '\n', i, escapes=False)
        sc.mark_span(i, end, poison or 'inside a comment')
        return end, depth
    if c == '\n':
        command.end()
        return _scan_heredocs(sc, i + 1, poison), depth
    if c in ' \t' or text.startswith('<<<', i):  # a here-string's word is an ordinary word
        command.end_word()
        return i + (3 if c == '<' else 1), depth
    if text.startswith('<<', i):
        command.end_word()
        return _scan_heredoc_start(sc, i + 2, poison), depth
    if text.startswith('((', i) and not command.word:
        return _scan_commands(sc, i + 1, ')', poison or 'inside an arithmetic expression'), depth
    if c == '(' and i > 0 and text[i - 1] in '<>':  # process substitution
        return _scan_commands(sc, i + 1, ')', poison), depth
    if c in '()':  # a subshell, a function definition
        command.end()
        return i + 1, depth + (1 if c == '(' else -1)
    if c in '{}' and closer == '}':  # braces nested in ${...}
        command.word += c
        return i + 1, depth + (1 if c == '{' else -1)
    if c in ';&|<>':
        command.end() if c in ';&|' else command.end_word()
        return i + 1, depth
    command.word += c
    return i + 1, depth


@functools.lru_cache(maxsize=64)
def placeholder_contexts(command: str) -> tuple[Placeholder, ...]:
    """Every {placeholder} of an entry point's command, found as str.format
    finds them, with the shell context its quoted value lands in.  Cached: a
    batch's runs of one entry point share its command."""
    import string

    try:
        fields = list(string.Formatter().parse(command))
    except ValueError:  # MLflow's own command.format() fails before any shell runs
        return ()
    shell, found = '', []
    for literal, field, spec, conversion in fields:
        shell += literal
        if field is None:
            continue
        key = re.split(r'[.\[]', field, maxsplit=1)[0]
        conversion_text = f'!{conversion}' if conversion else ''
        text = '{' + field + conversion_text + (f':{spec}' if spec else '') + '}'
        found.append((text, key, _format_context(field, key, spec, conversion)))
        shell += chr(_MARK + len(found) - 1)
    if any(ord(c) >= _MARK for c in command):
        return tuple(
            Placeholder(t, k, 'in a command holding private-use characters') for t, k, _ in found
        )
    sc = _Scan(text=shell, count=len(found), contexts={}, heredocs=[])
    _scan_commands(sc, 0, '', None)
    return tuple(
        Placeholder(t, k, why or sc.contexts.get(n, 'where the shell never reads it'))
        for n, (t, k, why) in enumerate(found)
    )


def _format_context(field: str, key: str, spec: str, conversion: str | None) -> str | None:
    """str.format itself can cut or re-quote MLflow's quoted value."""
    if conversion and conversion != 's':  # !s of a str is the str itself
        return f'through the conversion !{conversion}'
    if spec:
        return f'through the format spec :{spec}'
    if field != key:
        return 'through an index or attribute'
    return None


def unsafe_params(command: str | None, passed: Mapping[str, str]) -> list[Placeholder]:
    """The placeholders whose value would not stay one word of data: the value
    needs quoting (shell metacharacters, spaces, quotes) and its placeholder
    stands anywhere but in a bare word."""
    return [
        p
        for p in placeholder_contexts(command or '')
        if p.context and (value := passed.get(p.key)) and shlex.quote(value) != value
    ]


# ---------------------------------------------------------------------------
# Talking to MLflow: errors, run IDs, reading the reference run and the
# metric histories.


_CONNECTION_FAILURE_RE = re.compile(r'\[Errno -?\d+\] ([^"\')]+)|(Read timed out)')


# MLflow retries an error status, then raises this without the answer's body.
_ERROR_STATUS_RE = re.compile(r'too many (\d{3}) error responses')


def error_status(e: Exception) -> int | None:
    """The error status the tracking server answered: MLflow's retries used up
    on it ('too many 500 error responses'), or MLflow's own error made from a
    5xx answer (MLflow 3.18 no longer retries a write the server may have done)."""
    if status := _ERROR_STATUS_RE.search(str(e)):
        return int(status.group(1))
    code = e.get_http_status_code() if hasattr(e, 'json') else 0  # a RestException
    return code if isinstance(code, int) and code >= 500 else None


def server_failure(e: Exception) -> str:
    """What went wrong in an MLflow request, in few words: the status the
    tracking server answered, or that it does not answer and why."""
    detail = _last_line(str(e)) or type(e).__name__
    if status := error_status(e):
        return f'the tracking server answered HTTP {status}'
    if 'Max retries exceeded' in detail or 'API request to' in detail:
        match = _CONNECTION_FAILURE_RE.search(detail)
        reason = next(g for g in match.groups() if g) if match else 'no answer'
        return f'the tracking server does not answer ({reason.strip()})'
    return detail


def unexpected_failure(type_name: str, detail: str) -> str:
    """The one line for an exception the tool did not foresee."""
    return f'unexpected {type_name}: {_last_line(detail)} (--verbose shows the traceback)'


def _mlflow_error(context: str, e: Exception) -> ReproduceError:
    """One line from an MLflow failure; a connection failure in few words."""
    return ReproduceError(mask_credentials(f'{context}: {server_failure(e)}'))


def last_attempt(client: MlflowClient, endpoint: str, body: Mapping[str, Any]) -> str | None:
    """One more try of a request MLflow gave up on after error statuses, made
    without MLflow's retries, which drop the answer: None when it succeeds,
    else the status and the first line of what the tracking server answered."""
    from mlflow.utils.rest_utils import http_request

    try:
        answer = http_request(
            client._tracking_client.store.get_host_creds(),
            f'/api/2.0/mlflow/{endpoint}',
            'POST',
            max_retries=0,
            raise_on_status=False,
            json=body,
        )
    except Exception as e:
        return server_failure(e)
    if answer.status_code == 200:
        return None
    first = next((line.strip() for line in answer.text.splitlines() if line.strip()), '')
    return f'the tracking server answered HTTP {answer.status_code}: {first[:OUTPUT_LINE_CHARS]}'


def experiment_name_of(session: Session, experiment_id: str) -> str:
    """An experiment's name, read once per invocation."""
    with session.shared.sources_lock:
        name = session.shared.experiments.get(experiment_id)
    if name is None:
        name = session.client.get_experiment(experiment_id).name
        with session.shared.sources_lock:
            session.shared.experiments[experiment_id] = name
    return name


def all_experiment_ids(client: MlflowClient, deleted: bool = False) -> list[str]:
    """Every active experiment the tool can see, and the deleted ones too if asked."""
    from mlflow.entities import ViewType

    view = ViewType.ALL if deleted else ViewType.ACTIVE_ONLY
    found = pages(client.search_experiments, view_type=view, max_results=SEARCH_PAGE)
    return [e.experiment_id for e in itertools.chain.from_iterable(found)]


def resolve_run_id(client: MlflowClient, run_id: str, tracking_uri: str) -> str:
    """A run ID as given; a prefix of 8 to 31 hex digits becomes the one run
    ID it starts, found by one search over every experiment."""
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    if not _RUN_ID_PREFIX_RE.match(run_id):
        return run_id
    try:
        every = all_experiment_ids(client, deleted=True)
        found = every and client.search_runs(
            every,
            f"attributes.run_id LIKE '{run_id.lower()}%'",
            run_view_type=ViewType.ALL,
            max_results=PREFIX_MATCHES_SHOWN + 1,
        )
    except MlflowException as e:
        raise _mlflow_error(f'cannot look up the run ID starting with {run_id}', e) from None
    if not found:
        raise ReproduceError(
            f'no run ID starts with {run_id} at tracking URI {mask_credentials(tracking_uri)}'
        )
    exact = [r for r in found if r.info.run_id == run_id]  # a short ID of another store
    if len(found) > 1 and not exact:
        matches = ', '.join(sorted(r.info.run_id for r in found[:PREFIX_MATCHES_SHOWN]))
        more = ' and more' if len(found) > PREFIX_MATCHES_SHOWN else ''
        raise ReproduceError(
            f'run ID prefix {run_id} is ambiguous: it starts {matches}{more}; give more digits'
        )
    return (exact or found)[0].info.run_id


def read_reference(
    client: MlflowClient, run_id: str, tracking_uri: str, found: Run | None = None
) -> Run:
    """The reference run; `found` is the run as a batch's search already read
    it, an active run of an active experiment."""
    from mlflow.exceptions import MlflowException

    try:
        run = found or client.get_run(run_id)
        experiment = None if found else client.get_experiment(run.info.experiment_id)
    except MlflowException as e:
        if e.error_code == 'RESOURCE_DOES_NOT_EXIST':
            short = re.fullmatch(r'[0-9a-fA-F]{1,7}', run_id) is not None
            hint = ' (a run ID prefix needs 8 or more hex digits)' if short else ''
            raise ReproduceError(
                f'run {run_id} not found at tracking URI {mask_credentials(tracking_uri)}{hint}',
            ) from None
        raise _mlflow_error(f'cannot read run {run_id} from {tracking_uri}', e) from None
    if run.info.status in (*UNFINISHED_STATUSES, *FAILED_STATUSES):
        state = 'is still' if run.info.status in UNFINISHED_STATUSES else 'ended'
        warn(f'run {run_id} {state} {run.info.status}: its metrics may be incomplete')
    # Deleting an experiment deletes its runs: name the cause.
    if experiment is not None and experiment.lifecycle_stage == 'deleted':
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
            f"run's params: {_last_line(str(e))}",
        ) from None
    return {**declared, **extra}


def read_histories(
    client: MlflowClient,
    runs: Sequence[Run],
    last_only: bool,
) -> list[dict[str, list[Point]]]:
    """Each run's metric histories, one request per metric (MlflowClient
    pages long histories), overlapped when the store is remote."""
    if last_only:  # the latest values are already in the run; their step is not
        return [{k: [Point(None, v)] for k, v in run.data.metrics.items()} for run in runs]
    from concurrent.futures import ThreadPoolExecutor

    run_ids = [run.info.run_id for run in runs for _ in run.data.metrics]
    keys = [key for run in runs for key in run.data.metrics]
    # Over HTTP each request waits on the network: overlap them.  A local
    # store is CPU-bound, and threads only add contention (see benchmarks/).
    if _is_http(client.tracking_uri):
        with ThreadPoolExecutor(max_workers=HISTORY_WORKERS) as pool:
            fetched = list(pool.map(client.get_metric_history, run_ids, keys))
    else:
        fetched = list(map(client.get_metric_history, run_ids, keys))
    by_run: dict[str, dict[str, list[Point]]] = {r.info.run_id: {} for r in runs}
    for run_id, key, history in zip(run_ids, keys, fetched, strict=True):
        by_run[run_id][key] = history_points(history)
    return [by_run[run.info.run_id] for run in runs]


def history_points(history: Iterable[Any]) -> list[Point]:
    """MLflow's Metric objects of one history as points, by step, then time."""
    ordered = sorted(history, key=lambda m: (m.step, m.timestamp))
    return [Point(m.step, m.value, m.timestamp) for m in ordered]


def _is_http(uri: str) -> bool:
    return uri.startswith(('http://', 'https://', 'databricks'))


_PACKED_PREFIX = 'zlib+base64:'


def packed(value: Any) -> str:
    """value as compact JSON for a tag; compressed when longer than a tag takes."""
    import base64
    import zlib

    text = json.dumps(value, separators=(',', ':'))
    if len(text) <= TAG_VALUE_LIMIT:
        return text
    return _PACKED_PREFIX + base64.b64encode(zlib.compress(text.encode(), 9)).decode()


def unpacked(tag: str) -> Any:
    """The value packed() wrote; ValueError for anything else."""
    import base64
    import binascii
    import zlib

    if tag.startswith(_PACKED_PREFIX):
        try:
            tag = zlib.decompress(base64.b64decode(tag[len(_PACKED_PREFIX) :])).decode()
        except (binascii.Error, zlib.error, UnicodeDecodeError) as e:
            raise ValueError(f'not packed by the recorder: {e}') from None
    return json.loads(tag)


def fit_tag(value: str) -> str:
    """A tag value MLflow accepts whole: long ones are cut, marked with …."""
    return _truncated(value, TAG_VALUE_LIMIT)


def tool_request_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings of the tool's own MLflow requests: the user's retry
    settings, else TOOL_HTTP_DEFAULTS, and no "View run" line on stdout."""
    settings = {k: environ.get(k) or v for k, v in TOOL_HTTP_DEFAULTS.items()}
    return {**settings, 'MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT': 'true'}


def _configure_logging(verbose: bool) -> None:
    import logging

    if 'MLFLOW_LOGGING_LEVEL' not in os.environ:  # the user's setting wins
        level = logging.INFO if verbose else logging.WARNING
        logging.getLogger('mlflow').setLevel(level)
        # Older MLflow (3.9) lets alembic log ~60 INFO lines when it creates a store.
        logging.getLogger('alembic').setLevel(level)


def _has_mlruns_data(folder: str) -> bool:
    """What makes MLflow 3 default to ./mlruns rather than sqlite:///mlflow.db
    (mlflow/tracking/_tracking_service/utils.py: _has_existing_mlruns_data)."""
    mlruns = os.path.join(folder, 'mlruns')
    with contextlib.suppress(OSError):
        return any(
            entry.is_dir()
            and entry.name.isdigit()
            and os.path.lexists(os.path.join(entry.path, 'meta.yaml'))
            for entry in os.scandir(mlruns)
        )
    return False


def _local_store_path(uri: str) -> str | None:
    """The file or folder a local tracking URI names; None for a server or a
    database that is not a local file."""
    from urllib.parse import unquote, urlparse

    if uri.startswith('sqlite:///'):
        path = unquote(uri[len('sqlite:///') :].partition('?')[0])
        return None if path in ('', ':memory:') else path
    if uri.startswith('file:'):
        return unquote(urlparse(uri).path)
    if not re.match(r'^[a-zA-Z][\w+.-]*:', uri) and not uri.startswith('databricks'):
        return uri  # a plain path: a file store ('databricks' alone is a workspace)
    return None


def check_tracking_store(uri: str | None) -> None:
    """Refuse to start without a tracking store: MLflow would make an empty one
    (a 1 MB mlflow.db in the current folder), then not find the run in it."""
    how = (
        'set MLFLOW_TRACKING_URI to the store that holds the run (for example '
        'sqlite:////path/to/mlflow.db or http://host:5000)'
    )
    if not uri:
        if os.path.exists('mlflow.db') or _has_mlruns_data(os.curdir):
            return
        raise ReproduceError(
            f'no tracking store found: MLFLOW_TRACKING_URI is not set and the current folder '
            f'{os.getcwd()} has no mlflow.db (nor mlruns); {how}',
        )
    path = _local_store_path(uri)
    if path is not None and not os.path.exists(path):
        raise ReproduceError(
            f'no tracking store found: MLFLOW_TRACKING_URI is {mask_credentials(uri)}, but '
            f'{os.path.abspath(path)} does not exist; {how}',
        )


def absolute_tracking_uri(uri: str | None) -> str | None:
    """A relative sqlite or plain-path store made absolute: the project runs
    in another folder, where `sqlite:///mlflow.db` names another file."""
    if uri and uri.startswith('sqlite:///') and not uri.startswith('sqlite:////'):
        return 'sqlite:///' + os.path.abspath(uri[len('sqlite:///') :])
    if uri and _local_store_path(uri) == uri:  # a plain path: a file store
        return os.path.abspath(uri)
    return uri


# ---------------------------------------------------------------------------
# Fetching the source: a private checkout, never the user's repository, and
# the project read from it (its MLproject, a script inside it).


# How git and the OS say that a write failed for want of space (ENOSPC,
# EDQUOT); not in a line from the remote ('remote: '), whose disk is not ours.
_NO_SPACE_RE = re.compile(
    r'^(?!remote:).*(No space left on device|Out of diskspace|Disk quota exceeded)',
    re.IGNORECASE | re.MULTILINE,
)


def no_space(detail: str) -> ReproduceError:
    """The tool's temporary folder is full: the cause first, then the detail."""
    return ReproduceError(f'no space left on device in TMPDIR={tempfile.gettempdir()}: {detail}')


# What `git rev-parse --local-env-vars` lists, less the user's config settings:
# inherited (from a git hook, say), they point git at the user's repository.
GIT_LOCATION_VARIABLES = (
    'GIT_ALTERNATE_OBJECT_DIRECTORIES',
    'GIT_CONFIG',
    'GIT_OBJECT_DIRECTORY',
    'GIT_DIR',
    'GIT_WORK_TREE',
    'GIT_IMPLICIT_WORK_TREE',
    'GIT_GRAFT_FILE',
    'GIT_INDEX_FILE',
    'GIT_NO_REPLACE_OBJECTS',
    'GIT_REPLACE_REF_BASE',
    'GIT_PREFIX',
    'GIT_INTERNAL_SUPER_PREFIX',
    'GIT_SHALLOW_FILE',
    'GIT_COMMON_DIR',
    'GIT_NAMESPACE',
)


def without_git_location(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k not in GIT_LOCATION_VARIABLES}


def _git(*args: str, cwd: str | None = None) -> str:
    """git in cwd, never in a repository the environment names, and never
    through the ext:: transport (a remote URL that runs a command)."""
    env = {**without_git_location(os.environ), 'GIT_TERMINAL_PROMPT': '0'}
    proc = subprocess.run(
        ('git', '-c', 'protocol.ext.allow=never', *args),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode and _NO_SPACE_RE.search(proc.stderr):
        command = next(a for a in args if not a.startswith('-') and '=' not in a)
        raise no_space(f'git {command}: {_last_line(proc.stderr)}')
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, args, proc.stdout, proc.stderr)
    return proc.stdout.strip()


def _local_repo(repo: str) -> str | None:
    """The folder a local path or file:// URL names, None for a remote."""
    if repo.startswith('file://'):
        # file://[user[:password]@]host/path: only this host's paths are local.
        authority, _, path = repo[len('file://') :].partition('/')
        host = authority.rpartition('@')[2].partition(':')[0]
        return os.path.abspath('/' + path) if host in ('', 'localhost') else None
    if '://' in repo or re.match(r'^[\w.-]+@[\w.-]+:', repo):
        return None
    return os.path.abspath(repo)


def _repository_top(local: str) -> tuple[str, str]:
    """The top of the local repository holding folder `local`, and the
    folder's path inside it.  A bare repository (a mirror) has no work tree:
    it is its own top, and git fetches from it like from any other."""
    if _git('rev-parse', '--is-bare-repository', cwd=local) == 'true':
        return _git('rev-parse', '--absolute-git-dir', cwd=local), ''
    top = _git('rev-parse', '--show-toplevel', cwd=local)
    return top, os.path.relpath(local, top)


def fetch_location(source: Source, where: str) -> tuple[str, str]:
    """The repository to fetch from and the project folder inside it."""
    repo, subdir = source.repo, source.subdir
    if (local := _local_repo(source.repo)) is not None:
        # MLflow may record a folder inside a repository: fetch from its top.
        try:
            repo, inside = _repository_top(local)
        except (subprocess.CalledProcessError, OSError):
            raise ReproduceError(f'cannot fetch {where}: {local} is not a git repository') from None
        subdir = os.path.normpath(os.path.join(inside, subdir))
        subdir = '' if subdir == '.' else subdir
    return repo, subdir


def _git_step(failure: str, *args: str, cwd: str | None = None) -> str:
    """_git, its failure said in one line: `failure`, then git's last line, masked."""
    try:
        return _git(*args, cwd=cwd)
    except subprocess.CalledProcessError as e:
        raise ReproduceError(f'{failure}: {mask_credentials(_last_line(e.stderr))}') from None


def fetch_source(source: Source, dest: str) -> tuple[str, str]:
    """Check the commit out into dest; return (project folder, full commit).

    A local repository is only read (git fetch runs upload-pack on it), so its
    branch, HEAD, remotes, stash and uncommitted edits stay as they were.
    """
    where = f'{mask_credentials(source.uri)} at {source.version}'
    repo, subdir = fetch_location(source, where)
    _git_step('cannot make a git folder', 'init', '--quiet', dest)
    try:  # a full hash, a branch or a tag: one commit, no history
        _git('fetch', '--quiet', '--depth', '1', '--', repo, source.version, cwd=dest)
        wanted = 'FETCH_HEAD'
    except subprocess.CalledProcessError:
        # A short hash, or a server that refuses fetching by hash: take every
        # ref and look the version up among their history.
        fetch_all = ('fetch', '--quiet', '--', repo, '+refs/*:refs/fetched/*')
        _git_step(f'cannot fetch {where}', *fetch_all, cwd=dest)
        wanted = source.version
    try:
        commit = _git(
            'rev-parse', '--verify', '--quiet', '--end-of-options', f'{wanted}^{{commit}}', cwd=dest
        )
    except subprocess.CalledProcessError:
        raise ReproduceError(
            f'commit {source.version} is not available from '
            f'{mask_credentials(source.repo)} (history rewritten, or a typo?)',
        ) from None
    # commit is rev-parse's answer, all hex; checkout has no --end-of-options
    # before git 2.43, and the trailing '--' says it names no path.
    check_out = ('-c', 'advice.detachedHead=false', 'checkout', '--quiet', commit, '--')
    _git_step(f'cannot check out {where}', *check_out, cwd=dest)
    if os.path.exists(os.path.join(dest, '.gitmodules')):
        submodules = ('submodule', 'update', '--init', '--recursive', '--quiet')
        _git_step(f'cannot fetch the submodules of {where}', *submodules, cwd=dest)
    if source.changes is not None:
        apply_changes(source.changes, dest, commit)
    project_dir = os.path.join(dest, subdir)
    if not os.path.isdir(project_dir):
        raise ReproduceError(
            f'folder {subdir!r} does not exist at commit {commit[:12]} '
            f'of {mask_credentials(source.repo)}',
        )
    refuse_outside(project_dir, dest, f'folder {subdir!r} at commit {commit[:12]}')
    return project_dir, commit


def _inside(path: str, root: str) -> bool:
    root = os.path.realpath(root)
    return os.path.commonpath([path, root]) == root


def refuse_outside(path: str, root: str, what: str) -> None:
    """A file of the commit that is a symlink out of the checkout would make
    the project read or run a file of this host instead."""
    if not _inside(os.path.realpath(path), root):
        raise ReproduceError(
            f'{what} is a symlink to {os.path.realpath(path)}, outside the checkout: '
            f'refusing to use a file of this host',
        )


def _write_untracked(top: str, path: str, data: bytes, mode: int, at: str) -> None:
    """An untracked file of the changes, written into our checkout: never
    through a symlink of the commit, never over a file of the commit."""
    full, shown_path = os.path.join(top, path), repr(_truncated(path, 80))
    folder = os.path.realpath(os.path.dirname(full))
    if not _inside(folder, top) or _inside(folder, os.path.join(top, '.git')):
        raise ReproduceError(f'the recorded untracked file {shown_path} is beyond a symlink {at}')
    try:
        os.makedirs(os.path.dirname(full), exist_ok=True)
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 & mode)
    except FileExistsError:
        raise ReproduceError(
            f'the recorded untracked file {shown_path} is a tracked file {at}: '
            'the changes do not apply'
        ) from None
    except OSError as e:
        raise ReproduceError(
            f'the recorded untracked file {shown_path} cannot be written {at}: {e.strerror}'
        ) from None
    with os.fdopen(fd, 'wb') as f:
        f.write(data)


def apply_changes(changes: Changes, top: str, commit: str) -> None:
    """The recorded uncommitted changes, applied to our checkout (never to
    the user's repository): `git apply`, then the untracked files written."""
    if changes.members is None:  # too large to record: said in the report
        return
    members, at = dict(changes.members), f'at commit {commit[:12]}'
    diff = members.pop(CHANGES_DIFF, (b'', 0))[0]
    if diff:
        patch = top + '.diff'  # beside the checkout, in our temporary folder
        with open(patch, 'wb') as f:
            f.write(diff)
        failure = f'the uncommitted changes recorded with the run do not apply {at}'
        _git_step(failure, 'apply', '--binary', '--whitespace=nowarn', patch, cwd=top)
        os.remove(patch)
    for name, (data, mode) in sorted(members.items()):
        _write_untracked(top, name.removeprefix('files/'), data, mode, at)


def warn_about_changes(run_id: str, changes: Changes | None) -> None:
    """Recorded uncommitted changes that the reproduction runs without."""
    if changes is None:
        return
    if changes.members is None:
        warn(
            f'run {run_id} was trained from uncommitted changes too large to record '
            f'({counted(changes.count, "file")}): the reproduction runs its commit without them'
        )
    elif left := changes.not_recorded:
        listed = ', '.join(f'{path} ({why})' for path, why in sorted(left.items()))
        warn(f'run {run_id} was trained with files the recorder left out: {listed}')


def _checkout_root(project_dir: str) -> str:
    """The top of our checkout, above any submodule the project lives in."""
    root = _git('rev-parse', '--show-toplevel', cwd=project_dir)
    while above := _git('rev-parse', '--show-superproject-working-tree', cwd=root):
        root = above
    return root


def check_script(project_dir: str, root: str, name: str, commit: str) -> None:
    """A script entry point must be a file of the checked-out commit, not a
    path on this host: MLflow runs `python <name>` in the project folder."""
    path = os.path.normpath(os.path.join(os.path.realpath(project_dir), name))
    what = f'script entry point {name!r}'
    if not _inside(path, root):
        raise ReproduceError(
            f'{what} is outside the checkout of commit {commit[:12]}: refusing to run '
            f'a file of this host',
        )
    refuse_outside(path, root, f'{what} at commit {commit[:12]}')
    if not os.path.isfile(path):
        raise ReproduceError(f'{what} does not exist at commit {commit[:12]}')


@functools.lru_cache(maxsize=64)
def load_entry_point(project_dir: str, name: str, commit: str) -> tuple[Any, bool]:
    """MLflow's entry point object, and whether the MLproject declares it
    (rather than it being a script file that MLflow runs with every param).
    The MLproject, its environment file and a script must be files of the commit.
    Cached: a batch's dry run plans every run of a source from one folder."""
    from mlflow.projects import _project_spec

    root, at = _checkout_root(project_dir), f'at commit {commit[:12]}'
    if (mlproject := _project_spec._find_mlproject(project_dir)) is not None:
        refuse_outside(mlproject, root, f'the MLproject {at}')
    try:
        project = _project_spec.load_project(project_dir)
        spec, declared = project.get_entry_point(name), name in (project._entry_points or {})
    except Exception as e:  # yaml's errors, or a structure MLflow trips over
        raise ReproduceError(
            f'the MLproject {at} cannot be used: {_last_line(str(e))}',
        ) from None
    if project.env_config_path:
        refuse_outside(project.env_config_path, root, f'the environment file of the MLproject {at}')
    if not declared:
        check_script(project_dir, root, name, commit)
    return spec, declared


def reachable_source(reference: Run, source: Source, uri: str | None) -> Source:
    """A recorded local source that is no git repository here (the run was
    made on another host, or the clone is gone) gives way to the remote the
    run records, said on standard error.  MLflow records a folder inside a
    repository as its top and #subdir, so the subdir holds in the remote."""
    remote = reference.data.tags.get(TAG_GIT_REPO_URL)
    local = _local_repo(source.repo)
    if uri or not remote or local is None or remote == source.repo:
        return source
    try:
        _git('rev-parse', '--show-toplevel', cwd=local)
        return source  # a git repository here
    except (subprocess.CalledProcessError, OSError):
        warn(
            f'{local} is not a git repository here: using the remote the run records, '
            f'{remote}' + (f' (folder {source.subdir})' if source.subdir else '')
        )
        return dataclasses.replace(source, repo=remote)


def _remote_hint(reference: Run, source: Source, uri: str | None) -> str:
    """A run made from a local clone also records its remote: on another host
    (a cron host, say) that remote is where the commit can be found."""
    remote = reference.data.tags.get(TAG_GIT_REPO_URL)
    if uri or not remote or _local_repo(source.repo) is None or remote == source.repo:
        return ''
    suggested = f'{remote}#{source.subdir}' if source.subdir else remote
    suggested = shlex.quote(mask_credentials(suggested))
    return f'; the run also records its remote: try --uri {suggested}'


def checkout(session: Session, source: Source, dest: str) -> tuple[str, str]:
    """The project folder at the commit, private to one reproduction.  In a
    batch, each source and commit is fetched once; every reproduction of it
    then gets its own copy, so that projects never share a working folder
    (a dry run, which runs nothing, reads the fetched one)."""
    if not session.batch:
        return fetch_source(source, dest)
    with session.shared.sources_lock:
        key = (source.uri, source.version) + ((source.changes.sha256,) if source.changes else ())
        cached = session.shared.sources.setdefault(key, _CachedSource())
    with cached.lock:  # the first reproduction of a source fetches it
        if cached.root is None:
            root = os.path.join(tempfile.mkdtemp(prefix='source-', dir=session.tmp_root), 'src')
            cached.project_dir, cached.commit = fetch_source(cached.origin or source, root)
            cached.root = root
    if session.options.dry_run:  # nothing runs in it: the plan reads the shared copy
        return cached.project_dir, cached.commit
    try:
        shutil.copytree(cached.root, dest, symlinks=True)
    except OSError as e:  # shutil.Error lists (source, destination, reason) per file
        reason = e.args[0][0][2] if isinstance(e, shutil.Error) else (e.strerror or str(e))
        if _NO_SPACE_RE.search(reason):
            raise no_space(f'copying the checkout of {mask_credentials(source.uri)}') from None
        raise ReproduceError(
            f'cannot copy the checkout of {mask_credentials(source.uri)}: {reason}'
        ) from None
    return os.path.join(dest, os.path.relpath(cached.project_dir, cached.root)), cached.commit


# ---------------------------------------------------------------------------
# Execution backends: where the project runs, checked before anything runs.


def parse_backend_config(text: str) -> dict[str, Any]:
    """--backend-config: a path ending in .json (MLflow reads no other file)
    or an inline JSON object.  An inline value is never echoed: it may hold
    a token."""
    in_file = text.endswith('.json')
    where = f'file {text!r}' if in_file else 'value'
    try:
        value = json.loads(
            read_regular_file(text, f'--backend-config {where}') if in_file else text
        )
    except OSError as e:
        raise ReproduceError(f'cannot read --backend-config {where}: {e.strerror}') from None
    except RecursionError:  # json's parser recurses once per level of nesting
        raise ReproduceError('--backend-config nests JSON too deeply to be read') from None
    except ValueError as e:
        if in_file:
            raise ReproduceError(f'--backend-config {where} is not valid JSON: {e}') from None
        raise ReproduceError(
            f'--backend-config is neither a path ending in .json nor an inline JSON object ({e})',
        ) from None
    if not isinstance(value, dict):
        names = {list: 'array', str: 'string', bool: 'boolean', type(None): 'null'}
        kind = names.get(type(value), 'number')
        raise ReproduceError(f'--backend-config {where} holds a JSON {kind}, not an object')
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
        return {
            k: MASKED if _SECRET_KEY_RE.search(str(k)) else mask_config(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_config(v) for v in value]
    if isinstance(value, str):
        return mask_credentials(value)
    return value


def check_kubernetes_config(config: Mapping[str, Any]) -> None:
    if missing := [k for k in KUBERNETES_REQUIRED_KEYS if not config.get(k)]:
        raise ReproduceError(
            f'the kubernetes backend needs {", ".join(map(repr, missing))} in --backend-config '
            f'(required: {", ".join(KUBERNETES_REQUIRED_KEYS)})'
        )
    _check_job_template(str(config['kube-job-template-path']))
    import importlib.util

    for package in KUBERNETES_PACKAGES:
        if importlib.util.find_spec(package) is None:
            raise ReproduceError(
                f'the kubernetes backend needs the Python package {package!r}, which is not '
                f'installed (pip install {package})'
            )


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
            f'kube-job-template-path {path!r} is not valid YAML: {_last_line(str(e))}'
        ) from None
    with contextlib.suppress(TypeError, KeyError, IndexError):
        containers = template['spec']['template']['spec']['containers']
        if isinstance(containers, list) and isinstance(containers[0], dict):
            return
    raise ReproduceError(
        f'kube-job-template-path {path!r} is not a Kubernetes Job template with a '
        f'container at spec.template.spec.containers[0]'
    )


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


def validate_backend_project(plan: Plan) -> None:
    """The checks that need the project at its commit (docker_env)."""
    name = plan.backend.name
    if name not in ('kubernetes', 'databricks'):
        return
    from mlflow.projects import _project_spec

    docker_env = _project_spec.load_project(plan.project_dir).docker_env
    where = f'{mask_credentials(plan.source.uri)} at {plan.source.version[:12]}'
    if name == 'kubernetes' and not docker_env:
        raise ReproduceError(
            f"the kubernetes backend runs docker_env projects only (it builds the job's image "
            f'from docker_env), and the MLproject of {where} has no docker_env'
        )
    if name == 'databricks' and docker_env:
        raise ReproduceError(
            f'the databricks backend does not run docker_env projects, and the MLproject of '
            f'{where} has one'
        )


def backend_from_options(options: Options) -> Backend:
    """The backend and its config, checked before the reference run is even
    read: config errors first, then the backend's name and needs (what MLflow
    would refuse only after creating the run, or never, for a missing package)."""
    config = parse_backend_config(options.backend_config) if options.backend_config else {}
    name, available = options.backend, available_backends()
    if name not in available:
        raise ReproduceError(f'unknown backend {name!r}; available: {", ".join(available)}')
    if name == 'kubernetes':
        check_kubernetes_config(config)
    elif name == 'databricks':
        check_databricks_config(config)
    return Backend(name, config)


def warn_about_reference_backend(plan: Plan) -> None:
    if plan.reference_backend and plan.reference_backend != plan.backend.name:
        warn(
            f'run {plan.reference.info.run_id} ran on backend {plan.reference_backend!r} '
            f'(tag {TAG_BACKEND}) and this reproduction runs on '
            f'{plan.backend.name!r}; pass --backend {plan.reference_backend} (with its '
            f'--backend-config) to reproduce it there'
        )


# ---------------------------------------------------------------------------
# Script runs: a run made with `python src/train.py ...`.  MLflow recorded
# sys.argv[0] as typed (mlflow.source.name) and the commit, not the command
# line: find the script in the checkout and the arguments to give it.


def script_candidates(recorded: str, files: Sequence[str]) -> list[str]:
    """The files the recorded sys.argv[0] may name: the path relative to the
    top when it is a file there, and with it every file it names when typed in
    a subfolder ('train.py' and 'src/train.py': the folder is not recorded);
    else the files that end with the longest trailing part of it
    ('/home/alice/repo/src/train.py', 'train.py' typed in src/)."""
    path = posixpath.normpath(recorded)
    if not posixpath.isabs(recorded) and path in files:
        return [path, *sorted(f for f in files if f.endswith('/' + path))]
    parts = [p for p in path.split('/') if p not in ('', '.', '..')]
    for k in range(len(parts), 0, -1):
        if found := sorted(f for f in files if f.split('/')[-k:] == parts[-k:]):
            return found
    return []


def working_folder(recorded: str, path: str) -> str:
    """The folder in which the recorded relative path names the script, so
    that the script finds the files beside it as it did; the top for an
    absolute path, whose folder on the user's machine is unknown."""
    typed = posixpath.normpath(recorded)
    if posixpath.isabs(recorded) or typed.startswith('..') or path == typed:
        return ''
    return path[: -len(typed) - 1] if path.endswith('/' + typed) else ''


def _path_in_repository(path: str | None, tag: str) -> str | None:
    """A recorded path relative to the top ('' for the top), refused when
    it leads outside the repository."""
    if path is None:
        return None
    path = posixpath.normpath(path)
    if posixpath.isabs(path) or path.split('/')[0] == '..':
        raise ReproduceError(f'the tag {tag} {path!r} is outside the repository')
    return '' if path == '.' else path


def resolve_script(
    project_dir: str,
    recorded: str,
    override: str | None,
    commit: str,
    workdir: str | None,
    script: str | None = None,
) -> Script:
    """The script at the commit: -e PATH, else the one the recorder saw
    (script, in workdir), else the recorded sys.argv[0] in workdir, else
    found by its name."""
    at = f'at commit {commit[:12]}'
    workdir = _path_in_repository(workdir, TAG_WORKDIR)
    if override:
        path = posixpath.normpath(override)
    elif (script := _path_in_repository(script, TAG_SCRIPT)) and workdir is not None:
        path = script
    elif workdir is not None and not posixpath.isabs(recorded):
        path = posixpath.normpath(posixpath.join(workdir, recorded))
    else:
        # The files of the commit under the project folder, relative to it.
        listed = _git('ls-files', '-z', '--recurse-submodules', cwd=project_dir)
        candidates = script_candidates(recorded, [f for f in listed.split('\0') if f])
        if not candidates:
            raise ReproduceError(
                f'the recorded script {recorded!r} ({TAG_SOURCE_NAME}) is not a file {at}; '
                f'pass -e PATH (relative to the repository root) if it moved',
            )
        if len(candidates) > 1:
            raise CannotGuess(ambiguous_script(recorded, candidates, at))
        path = candidates[0]
    check_script(project_dir, _checkout_root(project_dir), path, commit)
    if workdir is None or override:
        workdir = working_folder(recorded, path)
    # The reproduced run records the path as typed in its working folder.
    return Script(path, workdir, posixpath.relpath(path, workdir or '.') if override else recorded)


def ambiguous_script(recorded: str, candidates: Sequence[str], at: str) -> str:
    """Why the recorded script cannot be chosen, naming every candidate."""
    why = (
        ' (one at the top, the others where it may have been typed: the run did not record '
        'its working folder)'
        if candidates[0] == posixpath.normpath(recorded)
        else ''
    )
    return (
        f'the recorded script {recorded!r} matches {len(candidates)} files {at}: '
        f'{", ".join(candidates)}{why}; pass -e PATH to choose one'
    )


def package_module(project_dir: str, path: str) -> tuple[str, str] | None:
    """A script inside a package (an __init__.py beside it): the folder above
    its top package (the first one up without an __init__.py, at most the
    project folder) and its dotted module name from there; None otherwise."""
    folder, name = posixpath.split(path)
    parts = [name.removesuffix('.py')]
    while folder and os.path.isfile(os.path.join(project_dir, folder, '__init__.py')):
        folder, package = posixpath.split(folder)
        parts.insert(0, package)
    importable = name.endswith('.py') and all(p.isidentifier() for p in parts)
    return (folder, '.'.join(parts)) if len(parts) > 1 and importable else None


def as_package_module(project_dir: str, script: Script) -> Script:
    """A script in a package runs as `python -m package.module` from the folder
    above its top package, so that `from . import x` and `import package.x`
    find the checkout's code; the reproduced run records the script's path
    from that folder."""
    found = package_module(project_dir, script.path)
    if found is None:
        return script
    root, module = found
    recorded = posixpath.relpath(script.path, root or '.')
    return dataclasses.replace(script, workdir=root, module=module, recorded=recorded)


def environment_folder(project_dir: str, script: Script, env_manager: str, commit: str) -> str:
    """Where the environment file of a script run is: beside the script, else at
    the top.  MLflow builds virtualenv, uv and conda environments from one."""
    for folder in dict.fromkeys((posixpath.dirname(script.path), '')):
        for name in SCRIPT_ENVIRONMENT_FILES:
            path = os.path.join(project_dir, folder, name)
            if os.path.isfile(path):
                refuse_outside(path, project_dir, f'{name} at commit {commit[:12]}')
                return folder
    beside = posixpath.dirname(script.path)
    where = f'in {beside}/ or at the repository root' if beside else 'at the repository root'
    raise ReproduceError(
        f'--env-manager {env_manager} builds the environment from python_env.yaml or '
        f'conda.yaml, and commit {commit[:12]} has neither {where}; use --env-manager local',
    )


# In --script-args: {{ or }} (a brace), {name} (all between the braces: MLflow's
# param names hold dots, / and -, as in {model.alpha} or {train/lr}), or a lone brace.
_PLACEHOLDER_RE = re.compile(r'\{\{|\}\}|\{([^{}]+)\}|[{}]')


def template_arguments(template: str, params: Mapping[str, str]) -> tuple[list[str], set[str]]:
    """--script-args: split like a shell line, then each {param} replaced by
    the reference's value inside its own argument; and the params it names."""
    try:
        words = shlex.split(template)
    except ValueError as e:
        raise ReproduceError(f'--script-args {template!r} cannot be used: {e}') from None
    tokens = [m.group(0) for word in words for m in _PLACEHOLDER_RE.finditer(word)]
    if lone := next((t for t in tokens if t in ('{', '}')), None):
        raise ReproduceError(
            f'--script-args {template!r} cannot be used: a {lone!r} that is no part of a '
            f'{{param}} (a brace itself is written {lone * 2})',
        )
    named = {t[1:-1] for t in tokens if t not in ('{{', '}}')}
    if unknown := sorted(named - set(params)):
        raise ReproduceError(unknown_placeholder(unknown[0], params))
    return [_PLACEHOLDER_RE.sub(lambda m: _filled(m.group(0), params), w) for w in words], named


def _filled(token: str, params: Mapping[str, str]) -> str:
    return token[0] if token in ('{{', '}}') else params[token[1:-1]]


def unknown_placeholder(name: str, params: Mapping[str, str]) -> str:
    """A --script-args placeholder that is no param: the closest params, else
    the first ten."""
    import difflib

    if close := difflib.get_close_matches(name, list(params), n=3):
        hint = 'the closest: ' + ', '.join(f'{{{c}}}' for c in close)
    else:
        names = sorted(params)
        hint = f'its params: {", ".join(names[:10])}{", …" if len(names) > 10 else ""}'
    return (
        f'--script-args names {{{name}}}, which is not a param of the reference run '
        f'({hint if params else "it has no params"})'
    )


def recorded_arguments(value: str, tag: str = TAG_ARGV) -> list[str]:
    """The tag reproduce.argv (json.dumps(sys.argv[1:])), or reproduce.command."""
    try:
        argv = json.loads(value)
    except ValueError:
        argv = None
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ReproduceError(
            f'the tag {tag} of the reference run is not a JSON list of strings: '
            f'{_truncated(value, 60)!r}',
        )
    return argv


class RecordedLaunch(NamedTuple):
    """What the recorded command line ran, before the script's arguments."""

    interpreter_options: tuple[str, ...]  # -O, -X dev, -W ignore
    module: str | None  # python -m module
    typed: str | None  # python path/to/script.py, as typed


def _interpreter_option(args: Sequence[str], i: int) -> list[str]:
    """The interpreter option at args[i] with its value, if it is one a
    replay may pass (-X pycache_prefix=/somewhere would write on this host)."""
    arg = args[i]
    if _FLAG_OPTIONS_RE.fullmatch(arg):
        return [arg]
    if arg[:2] not in ('-X', '-W'):
        raise ValueError(arg)
    option = [arg] if len(arg) > 2 else [arg, *args[i + 1 : i + 2]]
    value = ''.join(option)[2:]
    if not value or (arg[:2] == '-X' and value.partition('=')[0] not in REPLAYED_X_OPTIONS):
        raise ValueError(' '.join(option))
    if arg[:2] == '-W' and '.' in (value.split(':') + ['', ''])[2]:  # a category is imported
        raise ValueError(' '.join(option))
    return option


def recorded_launch(command: Sequence[str]) -> RecordedLaunch:
    """The tag reproduce.command read: interpreter options, then -m module or
    the script.  A command it cannot replay (-c code, stdin, an option that
    names a host path) is a one-line error."""
    options: list[str] = []
    i = 0
    try:
        while i < len(command) and command[i].startswith('-') and command[i] != '-m':
            option = _interpreter_option(command, i)
            options, i = options + option, i + len(option)
    except ValueError as e:
        raise ReproduceError(
            f'the recorded command line ({TAG_COMMAND}) cannot be replayed: interpreter '
            f'option {_truncated(str(e), 40)!r}; pass -e PATH to run the script alone'
        ) from None
    if command[i : i + 1] == ['-m'] and _MODULE_RE.fullmatch(''.join(command[i + 1 : i + 2])):
        return RecordedLaunch(tuple(options), command[i + 1], None)
    if i < len(command) and command[i] != '-m':
        return RecordedLaunch(tuple(options), None, command[i])
    raise ReproduceError(
        f'the recorded command line ({TAG_COMMAND}) names no script nor module: '
        f'{shown(_truncated(shlex.join(command), 60))}; pass -e PATH'
    )


def refuse_unrecorded_secrets(argv: Sequence[str]) -> None:
    """The recorder keeps no secret: a run started with one cannot replay it."""
    for before, arg in zip(['', *argv], argv, strict=False):
        if SECRET_NOT_RECORDED in arg:
            name = arg.partition('=')[0] if '=' in arg else before or arg
            raise ReproduceError(
                f'the run was started with a secret ({shown(_truncated(name, 60))}), which '
                f'was not recorded: pass the arguments with --script-args',
            )


# Interpreter options a replay passes: flags, -W filters, and -X options
# that change how code runs, not where anything is read from or written to.
_FLAG_OPTIONS_RE = re.compile(r'-[bBdEIOPqsSuRv]+')
REPLAYED_X_OPTIONS = frozenset(
    {'dev', 'utf8', 'faulthandler', 'tracemalloc', 'importtime', 'warn_default_encoding'}
    | {'int_max_str_digits', 'no_debug_ranges', 'frozen_modules', 'cpu_count', 'gil'}
)
_MODULE_RE = re.compile(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*')


@functools.lru_cache(maxsize=64)
def imports_argument_parser(project_dir: str, commit: str, script: Script) -> bool:
    """Whether the script, or a module of the checkout that it imports (and so
    on), imports an argument parser (ARGUMENT_PARSERS) or names one of
    ARGUMENT_PARSER_CLASSES; True when a file cannot be read or parsed, so
    that its --help is asked.  Imports resolve as the interpreter will: from
    the script's folder, or from the package root of a `python -m` script.
    Cached: a batch plans each script once."""
    base = script.workdir if script.module else posixpath.dirname(script.path)
    todo, seen = [script.path], set()
    while todo:
        if (path := todo.pop()) in seen:
            continue
        seen.add(path)
        names = imported_names(os.path.join(project_dir, path), _package_of(path, base))
        if names is None or any(map(_is_parser, names)):
            return True
        todo += [f for name in names for f in local_modules(project_dir, base, name)]
    return False


def _package_of(path: str, base: str) -> list[str]:
    """The dotted package of a file under base, as its parts ([] at base)."""
    folder = posixpath.relpath(posixpath.dirname(path) or '.', base or '.')
    return [] if folder == '.' or folder.startswith('..') else folder.split('/')


def _is_parser(name: str) -> bool:
    parts = name.split('.')
    return parts[0] in ARGUMENT_PARSERS or parts[-1] in ARGUMENT_PARSER_CLASSES


def imported_names(file: str, package: Sequence[str]) -> set[str] | None:
    """The dotted names a Python file imports (`from a import b`: a and a.b,
    a relative import resolved in `package`), and any parser class it reads
    as an attribute (`transformers.HfArgumentParser`); None when it cannot be
    read or parsed."""
    try:
        with open(file, 'rb') as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):  # ValueError: a NUL byte
        return None
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            up = list(package[: len(package) + 1 - node.level]) if node.level else []
            module = '.'.join([*up, *filter(None, [node.module])])
            names.update(filter(None, [module]))
            names.update('.'.join(filter(None, [module, a.name])) for a in node.names)
        elif isinstance(node, ast.Attribute) and node.attr in ARGUMENT_PARSER_CLASSES:
            names.add(node.attr)
    return names


def local_modules(project_dir: str, base: str, name: str) -> list[str]:
    """The files of the checkout that importing the dotted name from base
    runs: each package's __init__.py on the way, and the module itself; none
    that is a symlink out of the project folder."""
    parts, found = name.split('.'), []
    for k in range(1, len(parts) + 1):
        stem = posixpath.join(base, *parts[:k])
        for path in (f'{stem}/__init__.py', f'{stem}.py'):
            full = os.path.join(project_dir, path)
            if os.path.isfile(full) and _inside(os.path.realpath(full), project_dir):
                found.append(path)
    return found


_HELP_OPTION_RE = re.compile(
    r'(?<![\w-])(--[A-Za-z0-9][\w-]*)(?:([ =])([A-Z][A-Z0-9_-]*|\{|<|\[))?'
)


def help_options(text: str) -> dict[str, bool]:
    """The long options a --help text shows, and whether each takes a value
    (`--alpha ALPHA`, `--alpha=<x>`, `--mode {a,b}`) or is a flag."""
    options: dict[str, bool] = {}
    for match in _HELP_OPTION_RE.finditer(text):
        option, takes_value = match.group(1), match.group(3) is not None
        options[option] = options.get(option, False) or takes_value
    options.pop('--help', None)
    return options


NONE_NOT_PASSED = "valued None, Python's None as MLflow logs it"  # a reason, in Params.why


def arguments_from_help(
    options: Mapping[str, bool], params: Mapping[str, str]
) -> tuple[list[str], Params]:
    """`--k v` for each param k whose option --k (or --k with _ as -) the help
    shows; a flag is passed alone when its value is true, and when false as
    its --no-k form if the help shows one (else by leaving it off).  A param
    valued None is not passed: the script keeps its default."""
    argv: list[str] = []
    passed, not_passed, why = {}, {}, {}
    for key, value in sorted(params.items()):
        option = next((o for o in (f'--{key}', f'--{key.replace("_", "-")}') if o in options), None)
        negative = option and f'--no-{option[2:]}'
        if value == NONE_VALUE:
            not_passed[key], why[key] = value, NONE_NOT_PASSED
            continue
        if option is not None and options[option]:
            argv += [option, value]
        elif option is not None and value.lower() in ('true', '1'):
            argv.append(option)
        elif option is not None and value.lower() in ('false', '0'):
            argv += [negative] if negative in options else []
        else:
            not_passed[key] = value
            continue
        passed[key] = value
    return argv, Params(passed, not_passed, why)


def arguments_source(project_dir: str, commit: str, script: Script, params: Params) -> str:
    """Where a script's arguments come from when nothing recorded them (its
    arguments_from): nothing when no param is to be passed or the script
    imports no argument parser, else its --help."""
    if not (params.not_passed.keys() - params.why.keys()):
        return 'no params'
    return '--help' if imports_argument_parser(project_dir, commit, script) else NO_PARSER


def recorded_script(
    options: Options, tags: Mapping[str, str], project_dir: str, commit: str
) -> Script:
    """The script of a run, run as the recorder saw it start (its interpreter
    options, -m module, working folder), unless -e names another."""
    recorded, workdir = tags.get(TAG_SOURCE_NAME, ''), tags.get(TAG_WORKDIR)
    if TAG_COMMAND not in tags or options.entry_point or workdir is None:
        return resolve_script(project_dir, recorded, options.entry_point, commit, workdir)
    launch = recorded_launch(recorded_arguments(tags[TAG_COMMAND], TAG_COMMAND))
    path = tags.get(TAG_SCRIPT)
    if path is None and launch.typed is not None and not posixpath.isabs(launch.typed):
        path = posixpath.join(workdir, launch.typed)
    if launch.module is not None:
        path = module_file(project_dir, workdir, launch.module, path, commit)
    script = resolve_script(project_dir, recorded, None, commit, workdir, path)
    return dataclasses.replace(
        script, interpreter_options=launch.interpreter_options, module=launch.module
    )


def module_file(
    project_dir: str, workdir: str, module: str, script: str | None, commit: str
) -> str:
    """The file of the checkout that `python -m module` runs from workdir,
    which must be the recorded script: a module of this host (`-m timeit`,
    `-m pip`) is never run in its place."""
    stem = posixpath.normpath(posixpath.join(workdir, *module.split('.')))
    for path in (f'{stem}.py', f'{stem}/__main__.py'):
        if os.path.isfile(os.path.join(project_dir, path)) and script in (None, path):
            return path
    raise ReproduceError(
        f'the recorded command runs module {module!r}, which is not '
        f'{"the recorded script " + repr(script) if script else "a file of the repository"} '
        f'in {workdir or "its top"} at commit {commit[:12]}: pass -e PATH to run a script'
    )


def plan_script(
    options: Options, reference: Run, source: Source, project_dir: str, backend: Backend
) -> Plan:
    """A script run's plan; its arguments from --script-args or the tag
    reproduce.argv, else none when the script imports no argument parser or no
    param is to be passed, else found later by running the script with --help.
    Without the recorder's command, a script in a package runs with -m."""
    if backend.name != DEFAULT_BACKEND:
        raise ReproduceError(
            f'a script run (not an MLflow Project) runs on the local backend only, '
            f'not on {backend.name!r}',
        )
    tags, params = reference.data.tags, dict(reference.data.params)
    script = recorded_script(options, tags, project_dir, source.version)
    if options.entry_point or TAG_COMMAND not in tags:  # no recorded command says how
        script = as_package_module(project_dir, script)
    env_manager = options.env_manager or 'local'
    if env_manager != 'local':
        folder = environment_folder(project_dir, script, env_manager, source.version)
        script = dataclasses.replace(script, env_dir=folder)
    used: Container[str] = ()  # the params passed; --help finds them later
    if options.script_args is not None:
        argv, used = template_arguments(options.script_args, params)
        script = dataclasses.replace(script, argv=tuple(argv), arguments_from='--script-args')
    elif TAG_ARGV in tags:
        argv = recorded_arguments(tags[TAG_ARGV])
        refuse_unrecorded_secrets(argv)
        used = params
        script = dataclasses.replace(script, argv=tuple(argv), arguments_from=f'the tag {TAG_ARGV}')
    passed = {k: v for k, v in params.items() if k in used}
    chosen = Params(passed, {k: v for k, v in params.items() if k not in passed})
    if script.arguments_from == '--help':  # nothing recorded them: what can be known now
        chosen = arguments_from_help({}, params)[1]
        arguments_from = arguments_source(project_dir, source.version, script, chosen)
        script = dataclasses.replace(script, arguments_from=arguments_from)
    return Plan(
        reference=reference,
        source=source,
        project_dir=project_dir,
        entry_point=script.path,
        env_manager=env_manager,
        experiment_name=options.experiment_name or '',
        params=chosen,
        logged_params={},  # the script logs its own
        command=shlex.join(script.command),
        backend=backend,
        reference_backend=tags.get(TAG_BACKEND),
        script=script,
    )


# What makes a script log into an experiment of its own choosing, whatever
# experiment the run it is given is in: MLflow refuses its start_run() then.
_OWN_EXPERIMENT_RE = re.compile(r'\bset_experiment\s*\(|\bMLFLOW_EXPERIMENT_NAME\b')
EXCERPT_CHARS = 80  # of a line of code an error quotes


def experiment_choice(source: str) -> str | None:
    """The first line of a script's source (comment lines apart) that
    chooses its own experiment, `line N: <code>`: a call to set_experiment()
    or the variable MLFLOW_EXPERIMENT_NAME; None when no line does.  Only
    the script's own source: an imported module's choice shows only when
    MLflow refuses it (experiment_mismatch_hint)."""
    for number, line in enumerate(source.splitlines(), 1):
        code = line.strip()
        if not code.startswith('#') and _OWN_EXPERIMENT_RE.search(code):
            cut = code if len(code) <= EXCERPT_CHARS else code[: EXCERPT_CHARS - 3] + '...'
            return f'line {number}: {cut}'
    return None


def check_script_experiment(plan: Plan, own_experiment: Callable[[], str]) -> None:
    """Refuse, before anything runs, a script that chooses its own experiment
    when --experiment_name names another than the reference run's
    (`own_experiment()`, read only then): MLflow refuses it only once the
    script ran in full.  A batch's search skips such a run (CannotGuess)."""
    assert plan.script is not None
    try:
        with open(os.path.join(plan.project_dir, plan.script.path), 'rb') as f:
            choice = experiment_choice(f.read().decode('utf-8', 'replace'))
    except OSError:
        return
    if choice is None or (own := own_experiment()) == plan.experiment_name:
        return
    raise CannotGuess(
        f'the script {plan.script.path} chooses its own experiment ({choice}), so it cannot '
        f'log into experiment {plan.experiment_name!r} (--experiment_name): drop '
        f"--experiment_name to reproduce it in the reference run's experiment {own!r}"
    )


# ---------------------------------------------------------------------------
# Why the runs differ: environment, data, code and models.  These inform the
# report; they never change the verdict, which stays about metrics and params.


ENVIRONMENT_ARTIFACT = 'environment.json'  # under ARTIFACT_DIR
TAG_GIT_DIRTY = 'mlflow.source.git.dirty'
TAG_DATASET_CONTEXT = 'mlflow.data.context'  # an input tag, not a run tag
MODEL_ENVIRONMENT_FILES = ('requirements.txt', 'python_env.yaml', 'conda.yaml')
CAPTURE_TIMEOUT_SECONDS = 120.0  # a cold conda environment imports slowly
# The variables that change results, recorded and compared; a probe of
# --explain sets no other (a reference's environment.json is a file anyone
# who can write to the store can upload: BASH_ENV or LD_PRELOAD would run code).
RESULT_VARIABLES = (
    'PYTHONHASHSEED',
    'CUDA_VISIBLE_DEVICES',
    'CUBLAS_WORKSPACE_CONFIG',
    'OMP_NUM_THREADS',
    'MKL_NUM_THREADS',
    'OPENBLAS_NUM_THREADS',
    'TF_DETERMINISTIC_OPS',
    'TF_CUDNN_DETERMINISTIC',
)
# What pip is asked to install for a probe: a PEP 508 name and a plain version
# (PEP 440's characters), never a URL, a path or an option.
_PACKAGE_NAME_RE = re.compile(r'[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?')
_PACKAGE_VERSION_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9.+!_-]*')

# Printed by the interpreter that runs the project, so that it describes that
# interpreter (the project's virtualenv, not the tool's).  Self-contained:
# the standard library only.  The JSON is its last line of output, because an
# activation command may print before it.
ENVIRONMENT_CAPTURE = r"""
import email.parser, importlib.metadata, json, os, platform, re, subprocess, sys

VARIABLES = __RESULT_VARIABLES__


def gpus():
    try:
        proc = subprocess.run(
            ['nvidia-smi', '--query-gpu=name,driver_version', '--format=csv,noheader'],
            capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode:
        return None
    lines = [line.rpartition(',') for line in proc.stdout.splitlines() if line.strip()]
    return [{'name': name.strip(), 'driver_version': driver.strip()} for name, _, driver in lines]


def packages():
    found = {}
    for dist in importlib.metadata.distributions():
        # As dist.metadata reads it, headers only: a third faster than parsing
        # each long description too.
        text = dist.read_text('METADATA') or dist.read_text('PKG-INFO') or dist.read_text('')
        headers = email.parser.HeaderParser().parsestr(text or '')
        if name := headers['Name']:  # PEP 503 normalized; the first on sys.path wins, as for import
            found.setdefault(re.sub(r'[-_.]+', '-', name).lower(), headers['Version'])
    return dict(sorted(found.items()))


print(json.dumps({
    'python': {'version': platform.python_version(),
               'implementation': platform.python_implementation(),
               'executable': sys.executable},
    'platform': {'system': platform.system(), 'release': platform.release(),
                 'machine': platform.machine()},
    'cpu_count': os.cpu_count(),
    'packages': packages(),
    'env': {name: os.environ.get(name) for name in VARIABLES},
    'gpu': gpus(),
}))
""".replace('__RESULT_VARIABLES__', repr(RESULT_VARIABLES))

_REQUIREMENT_PIN_RE = re.compile(
    r'^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*===?\s*(?P<version>[^\s;,]+)\s*$'
)
_CONDA_PYTHON_RE = re.compile(r'^python\s*=+\s*(?P<version>[\d.]+)')


def normalize_package(name: str) -> str:
    """PEP 503: 'Scikit_Learn' and 'scikit-learn' are one distribution."""
    return re.sub(r'[-_.]+', '-', name).lower()


def capture_environment(
    python_prefix_command: str | None,
    env: Mapping[str, str],
    cwd: str,
) -> dict[str, Any] | None:
    """The environment of the interpreter that runs the project: the tool's
    own (None) or the one a prefix such as `source venv/bin/activate` selects.
    env is the whole environment the project gets.  None, with a warning,
    when it cannot be captured: the verdict does not depend on it."""
    if python_prefix_command is None:
        argv = [sys.executable, '-c', ENVIRONMENT_CAPTURE]
    else:
        script = f'{python_prefix_command} && python -c {shlex.quote(ENVIRONMENT_CAPTURE)}'
        argv = ['bash', '-c', script]
    try:
        proc = subprocess.run(
            argv,
            env=dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=CAPTURE_TIMEOUT_SECONDS,
        )
        if proc.returncode:
            raise ValueError(_last_line(proc.stderr) or f'exit status {proc.returncode}')
        return json.loads(_last_line(proc.stdout))
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        warn(f"cannot capture the project's environment: {_last_line(str(e))}")
        return None


def captured_environment(future: Any, stop: Stop) -> dict[str, Any] | None:
    """The result of capture_environment once its process has ended.  Waited
    for before the sweep for marked processes, which would end it, and count
    it as left behind by the project, when the project ends first."""
    while not future.done():
        stop.check()
        stop.event.wait(0.2)
    return future.result()


def record_environment(client: MlflowClient, run_id: str, env_dict: Mapping[str, Any]) -> None:
    """reproduce/environment.json on the reproduced run: the reference of a
    later comparison.  Best effort, like the verdict's other records."""
    try:
        client.log_dict(run_id, dict(env_dict), f'{ARTIFACT_DIR}/{ENVIRONMENT_ARTIFACT}')
    except Exception as e:
        warn(f'could not record the environment on run {run_id}: {_last_line(str(e))}')


def parse_requirements(text: str) -> dict[str, str]:
    """The pinned `name==version` lines of a requirements file, names
    normalized; options, unpinned names and ranges pin nothing."""
    pins = {}
    for line in text.splitlines():
        line = line.split('#', 1)[0].split(';', 1)[0].strip()
        if match := _REQUIREMENT_PIN_RE.match(line):
            pins[normalize_package(match['name'])] = match['version']
    return pins


def environment_from_model_files(files: Mapping[str, str]) -> dict[str, Any] | None:
    """An environment-like dict from the files MLflow stores with a model
    (file name -> text): its pinned packages and Python version."""
    import yaml

    packages = parse_requirements(files.get('requirements.txt', ''))
    python = None
    with contextlib.suppress(yaml.YAMLError, AttributeError, TypeError):
        python_env = yaml.safe_load(files.get('python_env.yaml', '')) or {}
        python = python_env.get('python')
        pins = [d for d in python_env.get('dependencies') or () if isinstance(d, str)]
        packages = {**parse_requirements('\n'.join(pins)), **packages}
    with contextlib.suppress(yaml.YAMLError, AttributeError, TypeError):
        for dep in (yaml.safe_load(files.get('conda.yaml', '')) or {}).get('dependencies') or ():
            if isinstance(dep, dict):
                packages = {**parse_requirements('\n'.join(dep.get('pip') or ())), **packages}
            elif isinstance(dep, str) and (match := _CONDA_PYTHON_RE.match(dep)):
                python = python or match['version']
    if not packages and not python:
        return None
    found: dict[str, Any] = {'packages': dict(sorted(packages.items()))}
    if python:
        found['python'] = {'version': str(python)}
    return found


def environment_differences(
    reference: Mapping[str, Any],
    reproduced: Mapping[str, Any],
    only_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """What differs between two environments, field by field.  A field one
    side does not know (a model's files say nothing of the OS) is not
    compared; only_names limits packages to those a model's files name."""
    found = []
    for kind in ('python', 'platform'):
        ref, new = reference.get(kind) or {}, reproduced.get(kind) or {}
        # The interpreter's path is where it lives, not what it is: the same
        # version and implementation in another virtualenv is no difference.
        found += _env_differences(kind, ref, new, sorted(set(ref) & set(new) - {'executable'}))
    known = [name for name in ('cpu_count', 'gpu') if name in reference and name in reproduced]
    found += _env_differences('platform', reference, reproduced, known)
    if 'packages' in reference and 'packages' in reproduced:
        ref, new = (
            {normalize_package(k): v for k, v in (side['packages'] or {}).items()}
            for side in (reference, reproduced)
        )
        names = set(ref) | set(new) if only_names is None else map(normalize_package, only_names)
        names = set(names) - {'reproduce-run'}  # the recorder: it adds tags, nothing else
        found += _env_differences('package', ref, new, sorted(names))
    if 'env' in reference and 'env' in reproduced:
        ref, new = reference['env'] or {}, reproduced['env'] or {}
        # RESULT_VARIABLES and no other name, whatever the file holds
        found += _env_differences('env', ref, new, RESULT_VARIABLES)
    return found


def _env_differences(
    kind: str, reference: Mapping[str, Any], reproduced: Mapping[str, Any], names: Iterable[str]
) -> list[dict[str, Any]]:
    return [
        {'kind': kind, 'name': n, 'reference': reference.get(n), 'reproduced': reproduced.get(n)}
        for n in names
        if reference.get(n) != reproduced.get(n)
    ]


def dataset_differences(
    ref_inputs: Sequence[Any],
    new_inputs: Sequence[Any],
) -> list[dict[str, Any]]:
    """MLflow dataset inputs (run.inputs.dataset_inputs) matched by dataset
    name and context: a changed digest, source (each field that differs) or
    schema, or a dataset that only one run used."""
    ref, new = _datasets_by_key(ref_inputs), _datasets_by_key(new_inputs)
    found = []
    for name, context in sorted(set(ref) | set(new), key=lambda k: (k[0], k[1] or '')):
        a, b = ref.get((name, context)), new.get((name, context))
        if a is None or b is None:  # the change, and each side's digest
            only = 'only_reproduced' if a is None else 'only_reference'
            changes = [(only, None, a and a.digest, b and b.digest)]
        else:
            changes = [
                *([('digest', None, a.digest, b.digest)] if a.digest != b.digest else []),
                *(('source', *field) for field in source_differences(a, b)),
                *([('schema', None, a.schema, b.schema)] if a.schema != b.schema else []),
            ]
        found += [
            {
                'name': name,
                'context': context,
                'change': c,
                'field': f,
                'reference': x,
                'reproduced': y,
            }
            for c, f, x, y in changes
        ]
    return found


# What a dataset source made in code (MLflow's CodeDatasetSource holds the run
# context's tags) says of where, by whom and how the code ran, not of the
# data: the git tags (a private checkout has no branch nor remote), the path
# the script was started by (`python -m` records its absolute path, which
# names the checkout's folder), the user and the recorder's tags.  Left out
# of the comparison of sources.
RUN_CONTEXT_TAGS = ('mlflow.source.git.', TAG_SOURCE_NAME, TAG_USER, 'reproduce.')  # prefixes


def source_differences(a: Any, b: Any) -> list[tuple[str | None, Any, Any]]:
    """The fields in which two datasets' sources differ, the run context left
    out: (field, reference, reproduced) each; the field is None for a source
    that is no JSON object, compared whole."""
    if a.source_type != b.source_type:
        return [('source_type', a.source_type, b.source_type)]
    ref, new = source_fields(a.source), source_fields(b.source)
    if ref is None or new is None:
        return [] if a.source == b.source else [(None, a.source, b.source)]
    return [
        (f, ref.get(f), new.get(f))
        for f in sorted(ref.keys() | new.keys())
        if ref.get(f) != new.get(f)
    ]


def source_fields(source: str) -> dict[str, Any] | None:
    """A dataset source's JSON object flattened ('tags.mlflow.source.name'),
    without the run context's tags; None when it is no JSON object."""
    try:
        value = json.loads(source)
    except (TypeError, ValueError):
        return None
    return _flattened(value) if isinstance(value, dict) else None


def _flattened(value: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, item in value.items():
        if str(key).startswith(RUN_CONTEXT_TAGS):
            continue
        if isinstance(item, dict) and item:
            fields |= _flattened(item, f'{prefix}{key}.')
        else:
            fields[f'{prefix}{key}'] = item
    return fields


def _datasets_by_key(inputs: Sequence[Any]) -> dict[tuple[str, str | None], Any]:
    by_key = {}
    for dataset_input in inputs or ():
        tags = {t.key: t.value for t in dataset_input.tags or ()}
        by_key[(dataset_input.dataset.name, tags.get(TAG_DATASET_CONTEXT))] = dataset_input.dataset
    return by_key


def _changes_about(tags: Mapping[str, str]) -> dict[str, Any]:
    """What TAG_CHANGES says of a run's uncommitted changes; {} for none."""
    try:
        about = json.loads(tags.get(TAG_CHANGES, '{}'))
    except ValueError:
        return {}
    return about if isinstance(about, dict) else {}


def code_notes(
    tags: Mapping[str, str],
    uri_overridden: bool,
    version_overridden: str | None,
    label: str = 'the reference run',
) -> list[str]:
    """What code trained a run (given its tags), where its commit does not say;
    version_overridden: the option whose commit ran instead of the recorded one."""
    notes = []
    kept = _changes_about(tags).get('too_large') is False and not version_overridden
    if tags.get(TAG_GIT_DIRTY, '').lower() == 'true' and not kept:
        commit = tags.get(TAG_GIT_COMMIT, '')
        why = (
            'they were too large to record' if TAG_CHANGES in tags else 'no commit holds that code'
        )
        notes.append(
            f'{label} was trained from uncommitted edits on top of commit {commit[:12]}; {why}'
        )
    if uri_overridden:
        notes.append(f'--uri replaced the source that {label} recorded')
    if version_overridden:
        notes.append(f'{version_overridden} replaced the commit that {label} recorded')
    return notes


def commit_notes(reference: Mapping[str, str], other: Mapping[str, str]) -> list[str]:
    """For two existing runs (their tags): did they run the same code?"""
    commits = [tags.get(TAG_GIT_COMMIT) for tags in (reference, other)]
    if commits[0] == commits[1]:
        changes = [_changes_about(tags).get('sha256') for tags in (reference, other)]
        return ['the runs ran different uncommitted changes'] if changes[0] != changes[1] else []
    labels = [c[:12] if c else 'no recorded commit' for c in commits]
    return [f'the runs ran different commits: {labels[0]} -> {labels[1]}']


def compare_model_metrics(
    reference: Mapping[str, Mapping[str, Sequence[Point]]],
    reproduced: Mapping[str, Mapping[str, Sequence[Point]]],
    rules: Rules,
) -> list[tuple[str, MetricVerdict]]:
    """Model name -> metric histories, for each run: the metrics that differ,
    judged like run metrics.  Only when both runs logged models."""
    if not reference or not reproduced:
        return []
    found = []
    for model in sorted(set(reference) | set(reproduced)):
        verdict = judge(reference.get(model, {}), reproduced.get(model, {}), rules)
        found += [(model, m) for m in verdict.metrics if not m.equal and not m.ignored]
    return found


def _logged_models(client: MlflowClient, run: Run) -> list[Any]:
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    return sorted(models, key=lambda m: (m.creation_timestamp or 0, m.model_id))


def model_metric_histories(client: MlflowClient, run: Run) -> dict[str, dict[str, list[Point]]]:
    """The metrics MLflow keeps on the models a run logged, by model name.
    Those the run itself logged are already in the metric table: only the
    ones other runs logged on its models (a later evaluation) are kept."""
    found: dict[str, dict[str, list[Point]]] = {}
    for model in _logged_models(client, run):
        for metric in model.metrics or ():
            if metric.run_id == run.info.run_id:
                continue
            key = f'{metric.key} ({metric.dataset_name})' if metric.dataset_name else metric.key
            found.setdefault(model.name, {}).setdefault(key, []).append((metric.step, metric.value))
    return found


def _read_environment_artifact(client: MlflowClient, run: Run) -> dict[str, Any] | None:
    path = f'{ARTIFACT_DIR}/{ENVIRONMENT_ARTIFACT}'
    if path not in {f.path for f in client.list_artifacts(run.info.run_id, ARTIFACT_DIR)}:
        return None
    with tempfile.TemporaryDirectory(prefix=tool_tmp_prefix()) as folder:
        local = client.download_artifacts(run.info.run_id, path, folder)
        with open(local) as f:
            return json.load(f)


def _read_model_environment(client: MlflowClient, run: Run) -> dict[str, Any] | None:
    """The pins of every model the run logged; the first model wins a conflict."""
    import mlflow.artifacts

    merged: dict[str, Any] | None = None
    for model in _logged_models(client, run):
        stored = {f.path for f in client.list_logged_model_artifacts(model.model_id)}
        files = {}
        with tempfile.TemporaryDirectory(prefix=tool_tmp_prefix()) as folder:
            for name in stored.intersection(MODEL_ENVIRONMENT_FILES):
                path = mlflow.artifacts.download_artifacts(
                    artifact_uri=f'{model.artifact_location.rstrip("/")}/{name}', dst_path=folder
                )
                with open(path) as f:
                    files[name] = f.read()
        if (found := environment_from_model_files(files)) and merged is None:
            merged = found
        elif found:
            merged = {**found, **merged, 'packages': {**found['packages'], **merged['packages']}}
    return merged


def _read_recorded_environment(client: MlflowClient, run: Run) -> dict[str, Any] | None:
    tag = run.data.tags.get(TAG_ENVIRONMENT)
    return None if tag is None else unpacked(tag)


def run_environment(client: MlflowClient, run: Run) -> tuple[dict[str, Any] | None, str]:
    """A run's environment from the best source it has, and which: its own
    reproduce/environment.json, else what the recorder recorded when it
    started, else the files of a model it logged."""
    label = f'run {run.info.run_id}'
    for source, read in (
        ('reproduction', _read_environment_artifact),
        ('recorded', _read_recorded_environment),
        ('logged_model', _read_model_environment),
    ):
        try:
            found = read(client, run)
        except Exception as e:  # unreadable: say so, and try the next source
            warn(f'cannot read the environment of {label} ({source}): {_last_line(str(e))}')
            continue
        if found is not None:
            return found, source
    return None, 'unknown'


def _compared_names(
    reference: tuple[dict[str, Any] | None, str],
    other: tuple[dict[str, Any] | None, str],
) -> list[str] | None:
    """The packages both sides know, or None for all: a model's files name
    some packages, and only these are known on that side."""
    named = [
        {normalize_package(n) for n in environment.get('packages') or {}}
        for environment, source in (reference, other)
        if environment is not None and source == 'logged_model'
    ]
    return sorted(set.intersection(*named)) if named else None


def differences_between(
    client: MlflowClient,
    reference: Run,
    other: Run,
    rules: Rules,
    other_environment: tuple[dict[str, Any] | None, str] | None = None,
    uri_overridden: bool = False,
    version_overridden: str | None = None,
    compared_runs: bool = False,
) -> Differences:
    """Everything besides metrics that differs between two runs.
    other_environment: (dict, source) already in hand, such as the one just
    captured for a reproduction; else the other run's best source is read.
    compared_runs: two existing runs (--compare-to), not a reproduction."""
    ref_env = run_environment(client, reference)
    new_env = other_environment or run_environment(client, other)
    environment, unknown = [], None
    if ref_env[0] is None:
        unknown = (
            "the reference run's environment is unknown (no "
            f'{ARTIFACT_DIR}/{ENVIRONMENT_ARTIFACT}, not recorded, no logged model)'
        )
    elif new_env[0] is None:
        label = 'compared' if compared_runs else 'reproduced'
        unknown = f"the {label} run's environment is unknown"
    else:
        environment = environment_differences(
            ref_env[0], new_env[0], _compared_names(ref_env, new_env)
        )
    code = code_notes(reference.data.tags, uri_overridden, version_overridden)
    if compared_runs:
        code += code_notes(other.data.tags, False, None, 'the compared run')
        code += commit_notes(reference.data.tags, other.data.tags)
    return Differences(
        environment=tuple(environment),
        datasets=tuple(dataset_differences(_dataset_inputs(reference), _dataset_inputs(other))),
        code=tuple(code),
        models=tuple(_model_differences(client, reference, other, rules)),
        environment_source=ref_env[1],
        environment_unknown=unknown,
    )


def _dataset_inputs(run: Run) -> Sequence[Any]:
    return run.inputs.dataset_inputs if run.inputs else ()


def _model_differences(
    client: MlflowClient,
    reference: Run,
    other: Run,
    rules: Rules,
) -> list[tuple[str, MetricVerdict]]:
    try:
        return compare_model_metrics(
            model_metric_histories(client, reference), model_metric_histories(client, other), rules
        )
    except Exception as e:  # informative only: the verdict stands without it
        warn(f'cannot compare the metrics of the logged models: {_last_line(str(e))}')
        return []


def differences_json(differences: Differences | None) -> dict[str, Any]:
    d = Differences() if differences is None else differences
    return {
        'environment': list(d.environment),
        'datasets': list(d.datasets),
        'code': list(d.code),
        'models': [{'model': name, **_metric_json(m)} for name, m in d.models],
        'environment_source': d.environment_source,
        'environment_compared': d.environment_unknown is None,
    }


def _shown(value: Any, missing: str) -> str:
    if value is None:
        return missing
    return value if isinstance(value, str) else json.dumps(value)


_SOURCE_LABELS = {
    'reproduction': f'its {ARTIFACT_DIR}/{ENVIRONMENT_ARTIFACT}',
    'recorded': f'the tag {TAG_ENVIRONMENT}, recorded when it started',
    'logged_model': "its logged model's files, which name only some packages",
}


# How a line of a report shows a value from the tracking store: `shown` in
# text, `markdown_escaped` in Markdown (the document's renderer chooses).
Escape = Callable[[str], str]


def _quoted(text: str, escaped: Escape) -> str:
    """A name between backticks (a code span in Markdown) when it shows as
    itself; else escaped, with no span to hold what a value could make of it."""
    name = escaped(text)
    return f'`{name}`' if name == text else name


def _both_sides(item: Mapping[str, Any], missing: str, escaped: Escape) -> tuple[str, str]:
    """The reference's value and the reproduction's, as a line shows them."""
    return escaped(_shown(item['reference'], missing)), escaped(_shown(item['reproduced'], missing))


def _environment_line(item: Mapping[str, Any], escaped: Escape = shown) -> str:
    kind, name = item['kind'], escaped(item['name'])
    missing = {'package': 'not installed', 'env': 'unset'}.get(kind, 'unknown')
    ref, new = _both_sides(item, missing, escaped)
    label = {'package': 'package ', 'env': '', 'python': 'Python '}.get(kind, 'platform ')
    return f'{label}{name}: {ref} -> {new}'


SOURCE_VALUE_LIMIT = 60  # characters of a source's field shown in a line; JSON has all


def _dataset_line(item: Mapping[str, Any], escaped: Escape = shown) -> str:
    context = f' ({escaped(item["context"])})' if item['context'] else ''
    where = f'dataset {_quoted(item["name"], escaped)}{context}'
    ref, new = (
        escaped(_truncated(_shown(item[side], '-'), SOURCE_VALUE_LIMIT))
        for side in ('reference', 'reproduced')
    )
    field = item.get('field')
    said = {
        'digest': f'changed at its source (digest {ref} -> {new})',
        'source': f'comes from another source ({escaped(field)}: {ref} -> {new})'
        if field
        else f'comes from another source: {ref} -> {new}',
        'schema': 'changed its schema',
        'only_reference': 'is an input of the reference run only',
        'only_reproduced': 'is an input of the reproduced run only',
    }
    return f'{where} {said[item["change"]]}'


def _model_line(model: str, m: MetricVerdict, escaped: Escape = shown) -> str:
    ref, new = (_shown(v, '-') if v is None else f'{v:g}' for v in (m.reference, m.reproduced))
    step = (
        f', from step {m.first_divergent_step}'
        if m.points > 1 and m.first_divergent_step is not None
        else ''
    )
    return f'model {_quoted(model, escaped)} metric {escaped(m.key)}: {ref} -> {new}{step}'


def environment_same_lines(differences: Differences | None) -> list[str]:
    """What the Markdown report says of an environment compared without a
    difference, which the section below leaves out."""
    if differences is None or differences.environment_unknown or differences.environment:
        return []
    label = _SOURCE_LABELS.get(differences.environment_source, '')
    return [f"- environment: no difference from the reference run's (from {label})"]


def differences_lines(differences: Differences | None, escaped: Escape = shown) -> list[str]:
    """The "Other differences" section, the same in text and Markdown (with
    values from the store escaped by `escaped`); empty when there is nothing to say."""
    if differences is None or not differences.differ():
        return []
    lines = ['Other differences:']
    if differences.environment_unknown:
        lines.append(f'- environment: not compared, {escaped(differences.environment_unknown)}')
    elif differences.environment:
        label = _SOURCE_LABELS.get(differences.environment_source, '')
        lines.append(f"- environment (the reference run's from {label}):")
        lines += [f'  - {_environment_line(item, escaped)}' for item in differences.environment]
    for title, items in (
        ('data', [_dataset_line(i, escaped) for i in differences.datasets]),
        # a code note quotes commits from the store: escaped, its arrows kept
        ('code', [' -> '.join(map(escaped, n.split(' -> '))) for n in differences.code]),
        ('models', [_model_line(*m, escaped) for m in differences.models]),
    ):
        if items:
            lines.append(f'- {title}:')
            lines += [f'  - {item}' for item in items]
    return lines


# ---------------------------------------------------------------------------
# Recording runs as they start: a run context provider (entry point group
# mlflow.run_context_provider, registered by pyproject.toml) that MLflow calls
# in the training process at each start_run(), for what it does not record.


RECORD_SWITCH = 'REPRODUCE_RUN_RECORD'  # '0' turns the recorder off
RECORD_GIT_TIMEOUT_SECONDS = 2.0  # for each git process
RECORD_CHANGES_READ_LIMIT = 16 * 2**20  # bytes of changes read; beyond, only their digest
RECORD_CHANGES_MAX_FILES = 1000  # untracked files read; beyond, only their names
# The default tracking store in the working folder: never recorded into a run.
_MLFLOW_STORE_RE = re.compile(r'(^|/)(mlflow\.db(-journal|-wal)?|mlruns|mlartifacts)(/|$)')
# Untracked files that are not recorded, as likely to hold a secret (so are
# those whose name says it, like _names_a_secret: secrets.yaml, api_key.txt).
_SECRET_FILE_RE = re.compile(
    r'\.env(rc|[._-].*)?|env\.local|.*\.(env|pem|key|p12|pfx|jks|kdbx|keystore|tfvars|tfstate)'
    r'|.*\.tfstate\..*'
    r'|\.(netrc|pgpass|git-credentials|databrickscfg|pypirc|npmrc|my\.cnf|boto|s3cfg|htpasswd)'
    r'|\.(aws|docker|kube|ssh|gnupg)|kubeconfig|o?auth\.json|private|service[-_]account.*'
    r'|id_(rsa|dsa|ecdsa|ed25519).*',
    re.IGNORECASE,
)
# A name that says it holds a secret: --api-token, -password, DB_PASSWORD,
# db.api_key, hfToken, PGPASSWORD.  Its parts (split at - _ . and camelCase)
# are compared: a part that is one of these words, or one of them after a
# listed prefix, or that ends in a word no other name ends in.
_SECRET_PART_RE = re.compile(
    r'(api|access|auth|private|client|secret)?'
    r'(key|token|secret|password|passwd|pwd|pass|pw|passphrase|credentials?)s?'
    r'|\w*(token|password|passwd|secret|passphrase|credentials?)',
    re.IGNORECASE,
)
_NAME_PART_RE = re.compile(r'[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])')
# key=value, key: value, "key": "value" inside an argument (an override, a
# query string, JSON, code): the value of a secret key is not recorded.
_KEY_VALUE_RE = re.compile(
    r'(?<![\w.])(?P<key>[A-Za-z_][\w.-]*)(?P<sep>["\']?\s*(?:=|:(?!//))\s*["\']?)(?P<value>[^"\'\s,;&}]+)'
)
# A URL's credentials up to its last @ (a password may hold / or @), and
# user:password@host without a scheme.
_RECORDED_URL_CREDENTIALS_RE = re.compile(
    r'(?<![\w+.-])(?P<scheme>[a-zA-Z][\w+.-]*://)\S*@|(?<![\w/:])[\w.%+-]+:[^\s@/]+@(?=[\w.-])'
)


def _names_a_secret(name: str) -> bool:
    parts = [p for word in re.split(r'[-_.]+', name) for p in _NAME_PART_RE.findall(word)]
    return any(_SECRET_PART_RE.fullmatch(p) for p in [*parts, name.strip('-+_.')])


def _without_secret_values(arg: str) -> str:
    def masked(m: re.Match[str]) -> str:
        if not _names_a_secret(m['key']):
            return m[0]
        return f'{m["key"]}{m["sep"]}{SECRET_NOT_RECORDED}'

    arg = _KEY_VALUE_RE.sub(masked, arg)
    return _RECORDED_URL_CREDENTIALS_RE.sub(
        lambda m: f'{m["scheme"] or ""}{SECRET_NOT_RECORDED}@', arg
    )


def without_secrets(argv: Sequence[str]) -> list[str]:
    """argv with the value of every option, override or key that names a
    secret, and the credentials of every URL, replaced by SECRET_NOT_RECORDED.
    The value after a secret option is masked whatever it looks like."""
    return [
        SECRET_NOT_RECORDED
        if re.fullmatch(r'--?[A-Za-z][\w.-]+', option) and _names_a_secret(option)
        else _without_secret_values(arg)
        for option, arg in zip(['', *argv], argv, strict=False)
    ]


def typed_arguments(command: Sequence[str], script: str) -> list[str] | None:
    """The script's arguments as they were typed: what follows the script,
    the -m module or the -c code in the interpreter's command line (the
    script may have changed sys.argv since).  None when it is not there."""
    for i, arg in enumerate(command):
        if arg in ('-m', '-c'):
            return list(command[i + 2 :])
        if arg in (script, '-'):
            return list(command[i + 1 :])
    return None


def _installed_packages() -> dict[str, str]:
    """name -> version of every distribution on sys.path, the first of a name
    winning, as for import: read from the *.dist-info and *.egg-info folder
    names alone (no metadata file is opened, which would cost the run ~50 ms)."""
    found: dict[str, str] = {}
    for folder in sys.path:
        try:
            entries = sorted(os.listdir(folder or '.'))
        except OSError:
            continue
        for entry in entries:
            stem, dot, kind = entry.rpartition('.')
            if dot and kind in ('dist-info', 'egg-info') and '-' in stem:
                name, version = stem.split('-')[:2]
                found.setdefault(normalize_package(name), version)
    return dict(sorted(found.items()))


@functools.lru_cache(maxsize=1)
def recorded_environment() -> str:
    """What reproduce/environment.json holds for a reproduced run, compactly,
    but the GPUs (nvidia-smi would slow every run down): one per process."""
    import platform

    return packed(
        {
            'python': {
                'version': platform.python_version(),
                'implementation': platform.python_implementation(),
                'executable': sys.executable,
            },
            'platform': {
                'system': platform.system(),
                'release': platform.release(),
                'machine': platform.machine(),
            },
            'cpu_count': os.cpu_count(),
            'packages': _installed_packages(),
            'env': {name: os.environ.get(name) for name in RESULT_VARIABLES},
        }
    )


def _work_tree_top(folder: str) -> str | None:
    """The nearest folder at or above folder that holds .git (a folder, or a
    file in a linked work tree or submodule), as git finds it."""
    folder = os.path.abspath(folder)
    while not os.path.exists(os.path.join(folder, '.git')):
        if (parent := os.path.dirname(folder)) == folder:
            return None
        folder = parent
    return folder


def _git_status(folder: str) -> subprocess.Popen[str]:
    """`git status` of the work tree that holds folder, started (the recorder
    does the rest of its work while it runs).  Read only: no lock taken,
    nothing written."""
    status = ('status', '--porcelain=v2', '-z', '--branch', '--untracked-files=all')
    return _start_recorder_git(status, folder, text=True, errors='surrogateescape')


def _start_recorder_git(args: Sequence[str], folder: str, **text: Any) -> subprocess.Popen[Any]:
    """A git process of the recorder's, in a session of its own (_git_answer
    ends a git wrapper's children with it); its output as bytes, or as
    `text` says."""
    return subprocess.Popen(
        ('git', *args),
        cwd=folder,
        env={**os.environ, 'GIT_OPTIONAL_LOCKS': '0', 'GIT_TERMINAL_PROMPT': '0'},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        **text,
    )


class WorkTree(NamedTuple):
    """What `git status` says differs from HEAD: paths relative to the top."""

    changed: list[str]  # tracked files
    untracked: list[str]  # neither tracked nor ignored
    submodules: list[str]  # changed submodules

    @property
    def dirty(self) -> bool:
        return bool(self.changed or self.untracked or self.submodules)


def _status_entries(out: str) -> WorkTree:
    """`git status --porcelain=v2 -z` read: a renamed entry (2) is followed
    by its old path, which is skipped."""
    tree = WorkTree([], [], [])
    entries = iter(out.split('\0'))
    for entry in entries:
        kind = entry[:1]
        if kind == '?':
            tree.untracked.append(entry[2:])
        elif kind in ('1', '2', 'u'):
            fields = entry.split(' ', {'1': 8, '2': 9, 'u': 10}[kind])
            (tree.submodules if fields[2].startswith('S') else tree.changed).append(fields[-1])
            if kind == '2':
                next(entries, None)
    return tree


def _git_answer(proc: subprocess.Popen[Any]) -> Any:
    """What a recorder's git process printed; CalledProcessError when it
    failed, TimeoutExpired after RECORD_GIT_TIMEOUT_SECONDS, when its
    process group (a git wrapper's children too) is ended."""
    try:
        out, _ = proc.communicate(timeout=RECORD_GIT_TIMEOUT_SECONDS)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, out)
    return out


def _work_tree(status: subprocess.Popen[str]) -> WorkTree | None:
    """What _git_status found; None before the first commit."""
    out = _git_answer(status)
    return None if '# branch.oid (initial)' in out.split('\0') else _status_entries(out)


def _git_diff(top: str) -> bytes:
    """The tracked changes against HEAD, as `git apply` takes them back
    (whatever the user's diff settings say)."""
    args = ('diff', '--binary', '--no-color', '--no-ext-diff', '--no-textconv', '--no-renames')
    prefixes = ('--src-prefix=a/', '--dst-prefix=b/', '--ignore-submodules=all', 'HEAD', '--')
    return _git_answer(_start_recorder_git((*args, *prefixes), top))


def _secret_file(path: str) -> bool:
    """An untracked file the recorder keeps out: it, or a folder it is in,
    may hold a secret (.git-credentials, .secrets, keys/prod.txt)."""
    for part in path.split('/'):
        stem = part.lstrip('.').partition('.')[0]
        if _SECRET_FILE_RE.fullmatch(part) or (stem and _names_a_secret(stem)):
            return True
    return False


def _why_left_out(top: str, path: str) -> str | None:
    """Why an untracked file is not recorded; None: it is."""
    full = os.path.join(top, path)
    if _secret_file(path):
        return 'it may hold a secret'
    if _MLFLOW_STORE_RE.search(path):
        return "MLflow's own store"
    if os.path.islink(full) or not os.path.isfile(full):
        return 'not a regular file'
    return None if os.access(full, os.R_OK) else 'not readable'


def _left_out(top: str, tree: WorkTree) -> dict[str, str]:
    """The changed paths that are not recorded, and why."""
    left = {path: 'a submodule' for path in tree.submodules}
    for path in tree.untracked:
        if (why := _why_left_out(top, path)) is not None:
            left[path] = why
    return left


def _changes_archive(top: str, diff: bytes, untracked: Sequence[str]) -> bytes:
    """A .tar.gz, the same for the same changes: CHANGES_DIFF, and each
    untracked file under files/."""
    import gzip
    import io
    import tarfile

    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode='wb', mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode='w', format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, path in [(CHANGES_DIFF, None)] + [(f'files/{p}', p) for p in untracked]:
            data = diff
            if path is not None:
                with open(os.path.join(top, path), 'rb') as f:
                    data = f.read()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            executable = path is not None and os.access(os.path.join(top, path), os.X_OK)
            info.mode = 0o755 if executable else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def changes_tags(top: str, tree: WorkTree) -> dict[str, str]:
    """The uncommitted changes of the work tree at top, as tags: TAG_CHANGES
    says what they are (the files, their sha256, whether they fit), and the
    numbered tags after it hold them, base64, up to RECORD_CHANGES_LIMIT."""
    import base64

    if len(tree.untracked) > RECORD_CHANGES_MAX_FILES:  # not even looked at, one by one
        return _too_many_tags(tree)
    diff, left = _git_diff(top), _left_out(top, tree)
    untracked = [p for p in tree.untracked if p not in left]
    size = len(diff) + sum(os.path.getsize(os.path.join(top, p)) for p in untracked)
    payload = None
    if size <= RECORD_CHANGES_READ_LIMIT:
        payload = _changes_archive(top, diff, untracked)
        encoded = base64.b64encode(payload).decode()
        digest = hashlib.sha256(payload).hexdigest()
    else:  # not read: the diff, and the untracked files by name and size
        listing = ''.join(f'{p}\0{os.path.getsize(os.path.join(top, p))}\0' for p in untracked)
        digest = hashlib.sha256(diff + os.fsencode(listing)).hexdigest()
    if payload is None or len(encoded) > RECORD_CHANGES_LIMIT:
        encoded = ''
    parts = [encoded[i : i + TAG_VALUE_LIMIT] for i in range(0, len(encoded), TAG_VALUE_LIMIT)]
    files = sorted({*tree.changed, *untracked})
    about = {'count': len(files), 'sha256': digest, 'parts': len(parts), 'too_large': not parts}
    tags = {TAG_CHANGES: _fitted_about(about, files, left)}
    return tags | {f'{TAG_CHANGES}.{i}': part for i, part in enumerate(parts, 1)}


def _fitted_about(about: dict[str, Any], files: list[str], left: dict[str, str]) -> str:
    """TAG_CHANGES within a tag: the first files and left-out files, when
    they are many ('count' and 'not_recorded_count' say how many)."""
    about = {**about, 'not_recorded_count': len(left)}
    while (
        len(text := json.dumps({**about, 'files': files, 'not_recorded': left})) > TAG_VALUE_LIMIT
    ):
        if len(files) >= len(left):
            files = files[: len(files) // 2]
        else:
            left = dict(list(left.items())[: len(left) // 2])
    return text


def _too_many_tags(tree: WorkTree) -> dict[str, str]:
    """TAG_CHANGES for a work tree with more untracked files than the
    recorder reads: their names, and the tracked files, by digest."""
    names = sorted({*tree.changed, *tree.untracked})
    digest = hashlib.sha256(os.fsencode('\0'.join(names))).hexdigest()
    about = {'count': len(names), 'sha256': digest, 'parts': 0, 'too_large': True}
    return {TAG_CHANGES: _fitted_about(about, names, {})}


def _script_in_tree(script: str, top: str) -> str | None:
    """The script's path relative to the top (its folder's symlinks resolved,
    not its own name's), None outside the work tree."""
    if not os.path.isfile(script):
        return None
    folder = os.path.realpath(os.path.dirname(os.path.abspath(script)))
    path = os.path.relpath(os.path.join(folder, os.path.basename(script)), top)
    return None if path.split(os.sep)[0] == os.pardir else path.replace(os.sep, '/')


def _where_tags(top: str, script: str, tree: WorkTree) -> dict[str, str]:
    """The working folder, the script and MLflow's dirty flag, for a run
    started in the work tree at top."""
    tags = {TAG_GIT_DIRTY: str(tree.dirty).lower()}
    workdir = os.path.relpath(os.path.realpath(os.getcwd()), top)
    if workdir != os.pardir and not workdir.startswith(os.pardir + os.sep):
        tags[TAG_WORKDIR] = workdir.replace(os.sep, '/')
    if (path := _script_in_tree(script, top)) is not None:
        tags[TAG_SCRIPT] = path
    return tags


def recorded_tags() -> dict[str, str]:
    """The tags RunRecorder sets on a run that starts in this process: one
    git process, which runs while the rest is gathered (and two more when
    the work tree has changes).  What could not be recorded is said in one
    warning line."""
    script = sys.argv[0] if sys.argv else ''
    top = _work_tree_top(
        os.path.dirname(os.path.realpath(script)) if os.path.isfile(script) else os.getcwd()
    )
    problems: list[str] = []
    try:
        status = _git_status(top) if top is not None else None
    except OSError as e:  # no git
        status = None
        problems.append(f'no working folder: git: {_last_line(str(e))}')
    command = list(getattr(sys, 'orig_argv', [sys.executable, *sys.argv]))[1:]
    arguments = typed_arguments(command, script)
    tags = {
        TAG_COMMAND: json.dumps(without_secrets(command), ensure_ascii=False),
        TAG_ARGV: json.dumps(
            without_secrets(sys.argv[1:] if arguments is None else arguments), ensure_ascii=False
        ),
        TAG_ENVIRONMENT: recorded_environment(),
    }
    try:
        tree = _work_tree(status) if status is not None else None
    except (OSError, subprocess.SubprocessError) as e:  # too slow
        tree = None
        problems.append(f'no working folder: git: {_last_line(str(e))}')
    if top is not None and tree is not None:
        tags |= _where_tags(top, script, tree)
        try:
            tags |= changes_tags(top, tree) if tree.dirty else {}
        except (OSError, subprocess.SubprocessError) as e:
            problems.append(f'no uncommitted changes: {_last_line(str(e))}')
    for name in [k for k, v in tags.items() if len(v) > TAG_VALUE_LIMIT]:
        problems.append(f'no {name}: longer than the {TAG_VALUE_LIMIT} characters of a tag')
        del tags[name]
    if problems:
        warn(f'the run starts without part of its record: {"; ".join(problems)}')
    return tags


class RunRecorder:
    """MLflow's RunContextProvider, by its two methods (a subclass would
    import MLflow here): the command line, the working folder, whether the
    work tree was clean, and the environment of every run start_run()
    creates.  Never in the way: whatever fails costs one warning line, and
    the run starts."""

    def in_context(self) -> bool:
        return os.environ.get(RECORD_SWITCH, '1') != '0'

    def tags(self) -> dict[str, str]:
        try:
            return recorded_tags()
        except Exception as e:  # git missing or too slow, a folder gone: the run starts
            warn(f'{RECORD_SWITCH}: the run starts without its record: {_last_line(str(e))}')
            return {}


# ---------------------------------------------------------------------------
# Model registrations: by default the project registers its models into a
# scratch registry in our temporary folder, so that a reproduction adds no
# version to the shared registry (nor fires its webhooks and deployments).


REGISTRY_URI_ENV = 'MLFLOW_REGISTRY_URI'
SCRATCH_REGISTRY_FILE = 'registry.db'
TAG_MODEL_VERSIONS = 'mlflow.modelVersions'  # on a logged model: versions made from it


def scratch_registry(tmp_dir: str) -> str:
    """The URI of a registry that lives and dies with tmp_dir.  MLflow creates
    the file only when the project registers something."""
    return 'sqlite:///' + os.path.join(os.path.abspath(tmp_dir), SCRATCH_REGISTRY_FILE)


def project_registry_environ(
    tmp_dir: str,
    keep: bool,
    environ: Mapping[str, str],
) -> dict[str, str | None]:
    """The registry the project's processes see: the scratch one, whatever the
    user's environment names; with --keep-registrations the user's own, made
    absolute like the tracking URI, since the project runs in another folder."""
    if keep:
        return {REGISTRY_URI_ENV: absolute_tracking_uri(environ.get(REGISTRY_URI_ENV))}
    return {REGISTRY_URI_ENV: scratch_registry(tmp_dir)}


def _model_id(source: str | None) -> str | None:
    """'models:/m-abc' -> 'm-abc': the logged model a version was made from."""
    if source and source.startswith('models:/m-') and '/' not in source[len('models:/') :]:
        return source[len('models:/') :]
    return None


def discarded_registrations(scratch_uri: str) -> list[Registration]:
    """The versions the project registered in the scratch registry.  Reads
    nothing when it registered none (opening a new store would create it)."""
    if not os.path.exists(scratch_uri[len('sqlite:///') :]):
        return []
    from mlflow import MlflowClient

    return _registrations(MlflowClient(registry_uri=scratch_uri).search_model_versions(), True)


def _registrations(versions: Iterable[Any], discarded: bool) -> list[Registration]:
    """MLflow's model versions, by name and version number."""
    found = (
        Registration(v.name, str(v.version), v.run_id, discarded, _model_id(v.source))
        for v in versions
    )
    return sorted(found, key=lambda r: (r.name, int(r.version)))


def untag_discarded(client: MlflowClient, discarded: Sequence[Registration]) -> None:
    """MLflow lists the versions made from a logged model in its tag
    mlflow.modelVersions, in the tracking store: drop the discarded ones, so
    that the UI does not link to versions that do not exist (or are others)."""
    gone = {(r.model_id, r.name, r.version) for r in discarded}
    for model_id in sorted({r.model_id for r in discarded if r.model_id}):
        listed = json.loads(client.get_logged_model(model_id).tags.get(TAG_MODEL_VERSIONS, '[]'))
        left = [v for v in listed if (model_id, v.get('name'), str(v.get('version'))) not in gone]
        if left:
            client.set_logged_model_tags(model_id, {TAG_MODEL_VERSIONS: json.dumps(left)})
        else:
            client.delete_logged_model_tag(model_id, TAG_MODEL_VERSIONS)


def registrations_of(
    client: MlflowClient,
    run_id: str,
    scratch_uri: str,
    keep: bool,
) -> Registrations:
    """What the reproduced run registered, read before the scratch registry
    is removed with the temporary folder."""
    found: list[Registration] = []
    try:
        if not keep:
            found += discarded_registrations(scratch_uri)
            untag_discarded(client, found)
    except Exception as e:  # the verdict stands without this list
        warn(f'could not read the scratch model registry: {_last_line(str(e))}')
    try:
        # The run's versions in the shared registry: those kept by --keep-registrations,
        # or made by a project that names its registry itself (mlflow.set_registry_uri),
        # which no environment variable can redirect.
        shared = _registrations(client.search_model_versions(f"run_id = '{run_id}'"), False)
    except Exception as e:  # a registry that cannot search by run, for one
        warn(f'could not search the model registry for run {run_id}: {_last_line(str(e))}')
        shared = []
    if shared and not keep:
        warn(
            f'run {run_id} registered {_versions_listed(shared)} in the shared model '
            f'registry although the project was given a scratch one (its code names '
            f'its registry itself)'
        )
    return Registrations(kept=keep, versions=tuple(found + shared))


def _versions_listed(versions: Sequence[Registration], escaped: Escape = shown) -> str:
    return ', '.join(f'{escaped(r.name)} v{escaped(str(r.version))}' for r in versions)


def registration_lines(registrations: Registrations, escaped: Escape = shown) -> list[str]:
    """For the reports: nothing when the run registered nothing."""
    lines = []
    if registrations.discarded:
        lines.append(
            f'Model registrations discarded: {_versions_listed(registrations.discarded, escaped)}'
            f' (--keep-registrations keeps them)'
        )
    if registrations.shared:
        what = 'kept' if registrations.kept else 'made in the shared registry'
        listed = _versions_listed(registrations.shared, escaped)
        lines.append(f'Model registrations {what}: {listed}')
    return lines


# ---------------------------------------------------------------------------
# Stopping: a signal sets one flag.  Every reproduction checks it where it
# waits, ends its project's processes and closes its run.


@contextlib.contextmanager
def _signal_handlers(handlers: Mapping[signal.Signals, Any]) -> Iterator[None]:
    """Install handlers for the duration, then restore the previous ones; none
    from another thread (signal handlers can only be set from the main thread)."""
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items() if main}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _process_table() -> list[tuple[int, str, int, bytes]]:
    """(pid, state, process group, environment) of every process we may see."""
    table = []
    for entry in os.scandir('/proc'):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        fields = proc_stat(entry.name)
        try:
            with open(f'/proc/{entry.name}/environ', 'rb') as f:
                environ = f.read()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if fields:
            table.append((int(entry.name), fields[0], int(fields[2]), environ))
    return table


def live_processes(pgid: int | None, marker: str) -> list[int]:
    """The processes of a reproduction that still run: those in its process
    group, and those whose environment carries its marker (a daemon that left the
    group with setsid still does).  A marker ending in '.' matches every marker
    under it.  Without /proc, only the group is known."""
    if not os.path.isdir('/proc'):
        if not pgid:
            return []
        try:
            os.killpg(pgid, 0)  # is anyone left in the group?
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    needle = f'{PROCESS_MARKER}={marker}'.encode()

    def marked(environ: bytes) -> bool:
        return any(
            v == needle or (needle.endswith(b'.') and v.startswith(needle))
            for v in environ.split(b'\0')
        )

    return [
        pid
        for pid, state, group, environ in _process_table()
        if state not in ('Z', 'X') and (group == pgid or marked(environ))
    ]


def end_processes(pgid: int | None, marker: str, reap: Callable[[], object] = lambda: None) -> int:
    """SIGTERM to every process of a reproduction, SIGKILL to those still
    alive after the grace period; returns how many there were."""
    found = 0
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        reap()
        pids = live_processes(pgid, marker)
        if not pids:
            return found
        found = max(found, len(pids))
        if pgid:  # the whole group, also where only its leader's PID is known
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            reap()
            if not live_processes(pgid, marker):
                return found
            time.sleep(0.1)
    return found


def _close_timeout() -> float:
    try:
        return float(os.environ.get('REPRODUCE_RUN_CLOSE_TIMEOUT', CLOSE_RETRY_SECONDS))
    except ValueError:
        return CLOSE_RETRY_SECONDS


def close_run(client: MlflowClient, run_id: str, status: str, left_open: list[LeftOpen]) -> bool:
    """Mark the run ended, retrying for a bounded time while the tracking
    server does not answer; if it never does, remember the run for the last
    line of standard error.  Never raises."""
    deadline = time.monotonic() + _close_timeout()
    delay = 1.0
    while True:
        try:
            client.set_terminated(run_id, status)
            return True
        except Exception as e:  # the tracking server itself may be the failure
            if time.monotonic() + delay > deadline:
                warn(f'could not mark run {run_id} {status}: {server_failure(e)}')
                left_open.append(LeftOpen(run_id, status, client.tracking_uri, server_failure(e)))
                return False
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


def left_running_line(left_open: Sequence[LeftOpen]) -> str:
    """The last line of standard error when runs could not be closed: which
    ones, why, and the exact command that closes them."""
    runs = listing([left.run_id for left in left_open])
    whys = mask_credentials('; '.join(dict.fromkeys(left.why for left in left_open)))
    closes = '; '.join(f"c.set_terminated('{left.run_id}', '{left.status}')" for left in left_open)
    uri = shlex.quote(mask_credentials(left_open[0].tracking_uri))
    n = len(left_open)
    noun, verb, them = plural(n, 'run'), plural(n, 'is', 'are'), plural(n, 'it', 'them')
    return (
        f'{program_name()}: error: {noun} {runs} {verb} left RUNNING: {whys} (retried for '
        f'{_close_timeout():.0f} s); close {them} with: MLFLOW_TRACKING_URI={uri} '
        f'python -c "import mlflow; c = mlflow.MlflowClient(); {closes}"'
    )


# ---------------------------------------------------------------------------
# Crash recovery: a tool killed with SIGKILL, by the OOM killer or a reboot
# cleans nothing up; the next invocation on its host ends its processes, closes
# its runs and removes its folder.


def tool_alive(pid: int, start: str) -> bool:
    """Whether the tool of this PID and start time still runs.  Without /proc
    this cannot be known, and it counts as alive: nothing of it is touched."""
    if not os.path.isdir('/proc'):
        return True
    found = process_identity(pid)
    return found is not None and found[0] not in ('Z', 'X') and found[1] == start


# tool_owner(): host:pid:start:boot:pidns.  The previous version wrote host:pid:start,
# which this does not match: such an owner does not say its PID namespace, so its tool
# may run in another container of this host, and it counts as alive (_tool_here_alive); its
# runs are closed only by --reap-after.
_OWNER_RE = re.compile(r'(?P<host>.+):(?P<pid>\d+):(?P<start>\d+):(?P<namespace>[\w-]+:\d+)')
_PROCESS_MARKER_RE = re.compile(r'(?P<base>(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]{8})(\.\d+)?')
# tool_tmp_prefix(); a folder of the previous version (reproduce_run-<pid>-<start>-<random>)
# does not say its PID namespace either, and is left alone.
_TMP_OWNER_RE = re.compile(
    re.escape(TMP_PREFIX) + r'(?P<pid>\d+)-(?P<start>\d+)-(?P<pidns>\d+)-(?P<boot>[0-9a-f]{8})-'
)


def close_leftovers(session: Session, run_ids: Sequence[str] = ()) -> tuple[dict[str, str], ...]:
    """Before an invocation creates runs: what tools of this host, boot and
    PID namespace left when they died without cleaning up (SIGKILL, the OOM
    killer).  Their project processes are ended and their temporary folders
    removed (those under this tool's TMPDIR), their runs still RUNNING closed
    as KILLED once no process of their project runs (with --reap-after, also
    any reproduction RUNNING longer than that, whatever its host).  `run_ids`:
    the references, whose experiments are searched too.  One line on
    standard error for each; never raises."""
    if session.options.dry_run:
        return ()
    marked = dead_tools_processes()
    processes = end_dead_tools_processes(marked)
    folders = remove_dead_tools_folders()
    crashed = {item['owner'] for item in (*processes, *folders)}
    running = collections.Counter(owner for _, owner, shared in marked if not shared)
    found = [*processes, *close_leftover_runs(session, run_ids, crashed, running), *folders]
    if not session.options.quiet:
        for item in found:
            print(f'reproduce_run: {shown(item["message"])}', file=sys.stderr, flush=True)
    return tuple(found)


def _leftover(kind: str, name: str, owner: str, message: str) -> dict[str, str]:
    return {'kind': kind, 'name': name, 'owner': owner, 'message': mask_credentials(message)}


def dead_tools_processes() -> list[tuple[str, str, bool]]:
    """(marker base, owner, whether its TMPDIR lies in a reproduce_run-… folder of this
    tool's TMPDIR) of each process of this PID namespace whose
    REPRODUCE_RUN_PROCESS_TAG names a tool that is gone.  A process of
    another namespace is never one: its tool's PID means nothing here."""
    mine = pid_namespace()
    if not os.path.isdir('/proc') or mine is None:
        return []
    ours = os.path.join(tempfile.gettempdir(), TMP_PREFIX).encode()
    found = []
    for pid, state, _, environ in _process_table():
        variables = dict(v.partition(b'=')[::2] for v in environ.split(b'\0'))
        match = _PROCESS_MARKER_RE.fullmatch(
            variables.get(PROCESS_MARKER.encode(), b'').decode('ascii', 'replace')
        )
        if (
            match
            and state not in ('Z', 'X')
            and pid_namespace(pid) == mine
            and not tool_alive(int(match['pid']), match['start'])
        ):
            owner = tool_owner(f'{match["pid"]}:{match["start"]}')
            found.append((match['base'], owner, variables.get(b'TMPDIR', b'').startswith(ours)))
    return found


def end_dead_tools_processes(marked: Sequence[tuple[str, str, bool]]) -> list[dict[str, str]]:
    """The processes of dead tools that shared this one's temporary folder,
    ended as a signal to that tool would have ended them."""
    found = []
    for base, owner in sorted({(base, owner) for base, owner, shared in marked if shared}):
        count = end_processes(None, base) + end_processes(None, base + '.')
        if count:
            message = (
                f'ended {counted(count, "process", "processes")} of the dead reproducing '
                f'tool {owner} ({PROCESS_MARKER}={base})'
            )
            found.append(_leftover('processes', base, owner, message))
    return found


def _leftover_filters(options: Options, host: str, now: float) -> list[str]:
    """The searches for leftover runs: this host's reproductions still
    RUNNING, and with --reap-after any that started before its window."""
    running = "attributes.status = 'RUNNING'"
    host_like = host.replace('\\', '\\\\').replace("'", "\\'")
    filters = [f"tags.`{TAG_OWNER}` LIKE '{host_like}:%' AND {running}"]
    if options.reap_after is not None:
        cutoff = int((now - options.reap_after) * 1000)
        filters.append(
            f"tags.`{TAG_OWNER}` LIKE '%' AND {running} AND attributes.start_time < {cutoff}"
        )
    return filters


def _tool_here_alive(owner: str) -> bool | None:
    """Whether the tool the owner names still runs, when it is a tool of this
    host, boot and PID namespace; None for any other (the previous version's
    form, host:pid:start, never is one)."""
    match = _OWNER_RE.fullmatch(owner)
    if not (
        match
        and match['host'] == socket.gethostname()
        and match['namespace'] == tool_namespace()
        and 'unknown' not in match['namespace']
    ):
        return None
    return tool_alive(int(match['pid']), match['start'])


def leftover_reason(
    run: Run, options: Options, now: float, crashed: Container[str], running: Container[str]
) -> str | None:
    """Why a RUNNING reproduction is a leftover to close, or None.  `crashed`:
    the owners whose processes or folder this invocation found; `running`:
    those whose project still runs (outside this tool's TMPDIR)."""
    owner = run.data.tags.get(TAG_OWNER, '')
    if owner not in running and _tool_here_alive(owner) is False:  # others count as alive
        return TOOL_DIED if owner in crashed else TOOL_GONE
    if options.reap_after is not None and run.info.start_time < (now - options.reap_after) * 1000:
        why = 'still runs here' if _tool_here_alive(owner) else 'is presumed dead'
        limit = f'RUNNING longer than --reap-after ({options.reap_after:g} s)'
        return f'{limit}: its reproducing tool {why}'
    return None


def leftover_experiment_ids(session: Session, run_ids: Sequence[str]) -> list[str]:
    """The experiments a search for leftover runs looks at: the newest
    LEFTOVER_EXPERIMENT_LIMIT active ones, and when there are more, the
    invocation's destinations first (--experiment-name or Default, and the
    experiment of a single run's or a bisection's reference, a script run's)."""
    client = session.client
    page = client.search_experiments(
        max_results=LEFTOVER_EXPERIMENT_LIMIT, order_by=['creation_time DESC']
    )
    ids = [e.experiment_id for e in page]
    if page.token:  # more than the limit: the destinations must be among those searched
        named = client.get_experiment_by_name(session.options.experiment_name or 'Default')
        own = [named.experiment_id] if named else []
        for run_id in run_ids:
            with contextlib.suppress(Exception):  # the reproduction says what is wrong with it
                own.append(client.get_run(run_id).info.experiment_id)
        ids = [*own, *ids]
    return list(dict.fromkeys(ids))[:LEFTOVER_EXPERIMENT_LIMIT]


def find_leftover_runs(session: Session, run_ids: Sequence[str], now: float) -> dict[str, Run]:
    """The RUNNING reproductions of this host (any, with --reap-after, older
    than that): one search of each experiment looked at, per filter."""
    client = session.client
    runs = {}
    with _environ({'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '0'}):  # tried once
        experiment_ids = leftover_experiment_ids(session, run_ids)
        for search in _leftover_filters(session.options, socket.gethostname(), now):
            for run in client.search_runs(
                experiment_ids, search, max_results=LEFTOVER_SEARCH_LIMIT
            ):
                runs[run.info.run_id] = run
    return runs


def close_leftover_runs(
    session: Session, run_ids: Sequence[str], crashed: Container[str], running: Mapping[str, int]
) -> list[dict[str, str]]:
    """The runs left RUNNING by dead tools, closed as KILLED; a run of a dead
    tool whose project still runs (`running`: owner -> processes) is left, and
    one line says so."""
    now = time.time()
    try:
        runs = find_leftover_runs(session, run_ids, now)
    except Exception as e:  # not fatal: the runs wait for the next invocation
        why = server_failure(e)
        if not why.startswith('the tracking server does not answer'):  # else the next error says
            warn(f'could not look for runs left RUNNING by a dead tool: {why}')
        return []
    found: list[dict[str, str]] = []
    for run_id, run in runs.items():
        reason = leftover_reason(run, session.options, now, crashed, running)
        owner = run.data.tags.get(TAG_OWNER, '')
        if reason is None and owner in running:
            count = running[owner]
            processes = counted(count, 'process', 'processes')
            warn(
                f'run {run_id} of the dead reproducing tool {owner} is left RUNNING: '
                f'{processes} of its project still {plural(count, "runs", "run")}, with a TMPDIR '
                "outside this tool's; it is closed once they end"
            )
        elif reason is not None and close_leftover_run(session.client, run, reason):
            message = f'closed run {run_id} of {owner} as KILLED: {reason}'
            found.append(_leftover('run', run_id, owner, message))
    return found


def close_leftover_run(client: MlflowClient, run: Run, reason: str) -> bool:
    """KILLED, with reproduce.status killed and the reason in its description."""
    from mlflow.entities import RunTag

    note = run.data.tags.get(TAG_NOTE)
    try:
        client.log_batch(
            run.info.run_id,
            tags=[
                RunTag(TAG_STATUS, 'killed'),
                RunTag(TAG_NOTE, fit_tag(f'{note}\n\n{reason}' if note else reason)),
            ],
        )
        client.set_terminated(run.info.run_id, 'KILLED')
    except Exception as e:
        warn(f'could not close run {run.info.run_id} left RUNNING: {_last_line(str(e))}')
        return False
    return True


def remove_dead_tools_folders() -> list[dict[str, str]]:
    """The temporary folders of this user's tools of this boot and PID
    namespace that are gone."""
    found = []
    try:
        entries = list(os.scandir(tempfile.gettempdir()))
    except OSError:
        return []
    boot, pidns = tool_namespace().split(':')
    for entry in entries:
        match = _TMP_OWNER_RE.match(entry.name)
        try:
            if (
                not match
                or (match['pidns'], match['boot']) != (pidns, boot[:8])
                or not entry.is_dir(follow_symlinks=False)
                or entry.stat(follow_symlinks=False).st_uid != os.getuid()
                or tool_alive(int(match['pid']), match['start'])
            ):
                continue
        except OSError:  # gone meanwhile
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.lexists(entry.path):
            owner = tool_owner(f'{match["pid"]}:{match["start"]}')
            message = (
                f'removed the temporary folder {entry.path} of the dead reproducing tool {owner}'
            )
            found.append(_leftover('folder', entry.path, owner, message))
    return found


# ---------------------------------------------------------------------------
# Run creation: the reproduced run, made before the project starts, with
# its tags and params.


def _experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's ID, created if missing; race-safe, for two
    reproductions that start at once into a new experiment."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name)
        except MlflowException:
            # Another process created it since we looked: use that one.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == 'deleted':
        raise ReproduceError(
            f'experiment {name!r} is deleted; restore it or choose another with --experiment-name',
        )
    return experiment.experiment_id


def reproduced_run_tags(plan: Plan, parent_run_id: str | None) -> dict[str, str]:
    """What a reproduced run carries: the original source and commit (never
    our temporary checkout), with credentials masked, and its group's parent run."""
    tags = {
        TAG_SOURCE_NAME: mask_credentials(plan.source.uri),
        TAG_SOURCE_TYPE: 'PROJECT',
        TAG_GIT_COMMIT: plan.source.version,
        TAG_GIT_REPO_URL: mask_credentials(plan.source.repo),
        TAG_ENTRY_POINT: plan.entry_point,
        TAG_PROJECT_ENV: plan.env_manager,
        TAG_BACKEND: plan.backend.name,
        TAG_USER: _user(),
        TAG_REFERENCE_RUN_ID: plan.reference.info.run_id,
        TAG_OWNER: tool_owner(),
    }
    if plan.script is not None:  # recorded as the script recorded it, with what it got
        del tags[TAG_ENTRY_POINT]
        tags[TAG_SOURCE_NAME] = plan.script.recorded
        tags[TAG_SOURCE_TYPE] = 'LOCAL'
        tags[TAG_ARGV] = json.dumps(list(plan.script.argv))
        tags[TAG_WORKDIR] = plan.script.workdir or '.'
        tags[TAG_COMMAND] = json.dumps(list(plan.script.command[1:]))
        tags[TAG_SCRIPT] = plan.script.path
    if plan.source.changes is not None:  # the same changes, for a reproduction of it
        tags |= {k: v for k, v in plan.reference.data.tags.items() if _is_changes_tag(k)}
        tags[TAG_GIT_DIRTY] = 'true'
    if parent_run_id:
        tags[TAG_PARENT_RUN_ID] = parent_run_id
    return {k: fit_tag(v) for k, v in tags.items()}


def _is_changes_tag(key: str) -> bool:
    return key == TAG_CHANGES or re.fullmatch(re.escape(TAG_CHANGES) + r'\.\d+', key) is not None


def reproduced_run_name(plan: Plan) -> str:
    return fit_tag(RUN_NAME_PREFIX + (plan.reference.info.run_name or plan.reference.info.run_id))


def fixup_backend_run(
    client: MlflowClient, run_id: str, plan: Plan, parent_run_id: str | None = None
) -> None:
    """Make a run that a non-local backend created look like a local
    reproduction.  MLflow hands a pre-created run to the local backend only;
    the others create their own, named at random and pointing at our
    temporary checkout.  MLflow's mlflow.project.backend tag stays."""
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    tags = reproduced_run_tags(plan, parent_run_id)
    try:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        client.update_run(run_id, name=reproduced_run_name(plan))
    except MlflowException as e:
        raise _mlflow_error(f'cannot record the source and name of run {run_id}', e) from None


def create_reproduced_run(session: Session, plan: Plan, parent_run_id: str | None) -> Run:
    """The run that the project will log into, made by us so that its ID is
    known from the start and it can always be closed."""
    from mlflow.exceptions import MlflowException

    client = session.client
    try:
        return client.create_run(
            _experiment_id(client, plan.experiment_name),
            tags=reproduced_run_tags(plan, parent_run_id),
            run_name=reproduced_run_name(plan),
        )
    except MlflowException as e:
        raise _mlflow_error('cannot create the reproduced run', e) from None


def log_reproduced_params(session: Session, plan: Plan, run_id: str) -> None:
    """The params MLflow would log for this launch, on the reproduced run."""
    from mlflow.entities import Param

    client, params = session.client, plan.logged_params
    try:
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        return
    except Exception as e:
        error = e
    why = server_failure(error)
    if error_status(error) and _is_http(client.tracking_uri):
        body = {'run_id': run_id, 'params': [{'key': k, 'value': v} for k, v in params.items()]}
        if (answer := last_attempt(client, 'runs/log-batch', body)) is None:
            return  # the server took them this time
        why = answer
    close_run(client, run_id, 'FAILED', session.shared.left_open)
    raise ReproduceError(
        mask_credentials(f'cannot log the params of run {run_id} (marked FAILED): {why}')
    )


# ---------------------------------------------------------------------------
# Launching: the project's processes, each given its environment and its
# output pipe, locally or on a backend; MLflow's in-process launchers (docker,
# plugins) run in a launcher process of their own.


class ProjectOutput:
    """A pipe for the project's stdout and stderr.  A thread reads it line by
    line: each line is masked and copied to standard error (when `echo`, with
    an optional prefix) and to a log file, and the last lines are kept for the
    report, bounded in count and length, with carriage-return rewrites
    (progress bars) collapsed to what a terminal would show."""

    def __init__(self, log_path: str, echo: bool, prefix: str = '') -> None:
        self._tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
        self._tail_lock = threading.Lock()  # a leftover writer may still be adding lines
        self.log_path = log_path
        self._echo, self._prefix = echo, prefix
        self._log: TextIO | None = None
        self._lines = 0  # read from the pipe so far
        self.lost: str | None = None  # what the log file misses, and why
        read_fd, self.write_fd = os.pipe()
        self._thread = threading.Thread(target=self._copy, args=(read_fd,), daemon=True)
        self._thread.start()

    def _copy(self, read_fd: int) -> None:
        pending = b''
        with os.fdopen(read_fd, 'rb', buffering=0) as pipe:
            try:  # line-buffered: a failing write loses whole lines, and we know which
                self._log = open(self.log_path, 'w', encoding='utf-8', buffering=1)  # noqa: SIM115
            except OSError as e:
                self._log_failed(e, 1)
            while chunk := pipe.read(65536):  # the project's pipe is drained to its end
                *lines, pending = (pending + chunk).split(b'\n')
                for line in lines:
                    self._line(line)
                if len(pending) > 65536:  # no newline for long: keep the screen's last state
                    pending = pending[pending.rfind(b'\r') + 1 :][-65536:]
            if pending:
                self._line(pending)
            if self._log is not None:
                with contextlib.suppress(OSError):  # line-buffered: nothing is pending
                    self._log.close()
        if self.lost:
            self.lost += f' ({self._lines} lines in all)'

    def _log_failed(self, e: OSError, line: int) -> None:
        """The tool's own log file takes no more: say from which line on the
        output is missing from it, and why; the copying goes on without it."""
        why = e.strerror or str(e)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            why = f'no space left on device in TMPDIR={tempfile.gettempdir()}'
        self.lost = (
            f"the project's output from line {line} on is missing from its {OUTPUT_ARTIFACT}: {why}"
        )
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
        self._log = None

    def _line(self, raw: bytes) -> None:
        self._lines += 1
        text = mask_credentials(raw.decode(errors='replace'))
        visible = text.rstrip('\r').rsplit('\r', 1)[-1].rstrip()  # what a terminal shows
        if self._log is not None:
            try:
                self._log.write(visible + '\n')
            except OSError as e:
                self._log_failed(e, self._lines)
        if len(visible) > OUTPUT_LINE_CHARS:
            visible = visible[: OUTPUT_LINE_CHARS - 1] + '…'
        with self._tail_lock:
            self._tail.append(visible)
        if self._echo:
            sys.stderr.write(f'{self._prefix}{text}\n')
            sys.stderr.flush()

    @property
    def tail(self) -> tuple[str, ...]:
        """The last lines, as they are now."""
        with self._tail_lock:
            return tuple(self._tail)

    def close_writer(self) -> None:
        """Our copy of the write end: once closed, the pipe ends with the project."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def close(self) -> None:
        self.close_writer()
        self._thread.join(timeout=5)  # every writer is gone by now; don't hang on one


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[TextIO]:
    """Standard output carries the report only: while the tool works, whatever
    MLflow or a library prints there goes to standard error instead.  Yields
    the real standard output, for the report."""
    report_stream = sys.stdout
    with contextlib.suppress(AttributeError, OSError):  # closed, or None (`>&-`)
        sys.stdout.flush()
    try:
        saved: int | None = os.dup(1)
    except OSError:  # file descriptor 1 is closed: nothing to restore
        saved = None
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        yield report_stream
    finally:
        sys.stderr.flush()
        sys.stdout = report_stream
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _project_environ(session: Session, tmp_dir: str, marker: str) -> dict[str, str]:
    """What the project's processes get: the user's environment as it was when
    the tool started, this Python first on PATH (for env manager local), a
    temporary folder (made here) that is removed afterwards, a scratch model
    registry and the marker that finds them."""
    env = without_git_location(session.user_environ)  # MLflow asks git of the checkout
    env['PATH'] = os.pathsep.join((os.path.dirname(sys.executable), env.get('PATH', '')))
    env['TMPDIR'] = os.path.join(tmp_dir, 'tmp')
    os.makedirs(env['TMPDIR'], exist_ok=True)
    env[PROCESS_MARKER] = marker
    env.pop(NOTIFY_ENV, None)  # the webhook is the tool's secret, not the project's
    keep = session.options.keep_registrations
    registry = project_registry_environ(tmp_dir, keep, session.user_environ)
    env.update((k, v) for k, v in registry.items() if v is not None)  # None: the user set none
    env['MLFLOW_TRACKING_URI'] = session.tracking_uri
    if not session.options.verbose and 'MLFLOW_LOGGING_LEVEL' not in env:
        env['MLFLOW_LOGGING_LEVEL'] = 'WARNING'
    return env


def missing_program(env_manager: str) -> str | None:
    """Why the program MLflow builds the environment with cannot be found,
    None when it can (or the manager needs none)."""
    if env_manager == 'uv' and shutil.which('uv') is None:
        return 'uv is not on the PATH (install it, or use --env-manager virtualenv)'
    if env_manager == 'conda':
        from mlflow.utils.conda import get_conda_bin_executable

        conda = get_conda_bin_executable('conda')  # MLFLOW_CONDA_HOME, CONDA_EXE, else PATH
        if shutil.which(conda) is None:
            where = 'on the PATH' if conda == 'conda' else f'at {conda}'
            return f'conda is not {where} (install it, or use --env-manager virtualenv)'
    return None


PYENV_MISSING = (
    "pyenv is not on the PATH (MLflow's virtualenv env manager installs the project's "
    'Python with it; install it, or use --env-manager uv or local)'
)


def check_env_manager(plan: Plan) -> None:
    """The program the project's environment needs is there: checked before
    any run exists, since MLflow finds out only after making one.  A docker
    project needs none; conda is used for a conda project only (MLflow
    refuses it for the others, in its words); virtualenv needs pyenv only
    for an environment MLflow has not made yet."""
    from mlflow.projects import _project_spec, env_type

    if plan.backend.name != DEFAULT_BACKEND or plan.env_manager == 'local':
        return
    project = _project_spec.load_project(plan.project_dir)
    if project.docker_env or (plan.env_manager == 'conda' and project.env_type != env_type.CONDA):
        return
    if plan.env_manager == 'virtualenv':
        from mlflow.utils.virtualenv import _is_pyenv_available

        if not _is_pyenv_available() and not _virtualenv_of(project, plan.project_dir)[1].exists():
            raise ReproduceError(PYENV_MISSING)
    elif message := missing_program(plan.env_manager):
        raise ReproduceError(message)


def environment_activation(project: Any, env_manager: str, work_dir: str) -> list[str]:
    """Commands that enter the project's environment, built with MLflow's own
    helpers exactly as `mlflow run` does (mlflow/projects/backend/local.py);
    none for env manager local."""
    from mlflow.exceptions import MlflowException
    from mlflow.projects import env_type

    if env_manager == 'local':
        return []
    if env_manager == 'conda':
        if project.env_type == env_type.PYTHON:
            raise MlflowException.invalid_parameter_value(
                'python_env project cannot be executed using conda. Set `--env-manager` to '
                "'virtualenv' or 'local' to execute this project."
            )
        from mlflow.utils.conda import get_or_create_conda_env

        return list(get_or_create_conda_env(project.env_config_path).get_activate_command())
    from pathlib import Path

    from mlflow.utils.virtualenv import _create_virtualenv

    python_env, env_dir = _virtualenv_of(project, work_dir)
    return [
        _create_virtualenv(
            local_model_path=Path(work_dir),
            python_env=python_env,
            env_dir=env_dir,
            env_manager=env_manager,
        )
    ]


def _virtualenv_of(project: Any, work_dir: str) -> tuple[Any, Any]:
    """(MLflow's _PythonEnv, the folder MLflow keeps its environment in) of a
    project under virtualenv or uv, as mlflow/projects/backend/local.py has them."""
    from pathlib import Path

    from mlflow.projects import env_type
    from mlflow.utils.environment import _PythonEnv
    from mlflow.utils.virtualenv import _get_mlflow_virtualenv_root, _get_virtualenv_name

    if project.env_type == env_type.CONDA:
        python_env = _PythonEnv.from_conda_yaml(project.env_config_path)
    elif project.env_config_path:
        python_env = _PythonEnv.from_yaml(project.env_config_path)
    else:
        python_env = _PythonEnv()
    env_name = _get_virtualenv_name(python_env, Path(work_dir))
    return python_env, Path(_get_mlflow_virtualenv_root()) / env_name


WATCH_FIRST_SECONDS = 1.0  # the first poll of a watched reproduction's metrics
WATCH_MOST_SECONDS = 10.0  # the poll backs off to this, a tenth of the time watched


class Watcher:
    """Stopping early (--fail-fast, --steps, --time-limit): reads a running
    reproduction's metrics as they are logged, in a thread of its own, so
    that a slow server never delays a signal, and says why to stop.  Each poll
    is one request for the latest values, then the history of each metric
    whose latest value is new.  The time limit counts from the run's
    creation: building a virtualenv or conda environment counts."""

    def __init__(self, session: Session, reference: Run, run_id: str) -> None:
        options = session.options
        self.client, self.options = session.client, options
        self.reference, self.run_id = reference, run_id
        self.deadline = options.time_limit and time.monotonic() + options.time_limit
        self.reference_histories: dict[str, list[Point]] | None = None
        self.reference_last = 0  # the reference's last step, read with its histories
        self.histories: dict[str, list[Point]] = {}
        self.latest: dict[str, tuple[int, int]] = {}  # metric -> its latest (step, timestamp)
        self.found: str | None = None  # the option that says to stop; set once
        self.lock = threading.Lock()
        self.done = threading.Event()
        if options.fail_fast or options.steps is not None:
            threading.Thread(target=self._watch, name=f'watch-{run_id[:8]}', daemon=True).start()

    def stopped_by(self) -> str | None:
        """The option that says to stop now, None: go on."""
        if self.deadline and time.monotonic() >= self.deadline:
            self._found('--time-limit')
        return self.found

    def _found(self, option: str | None) -> None:
        with self.lock:
            if self.found is None and not self.done.is_set():
                self.found = option

    def close(self) -> None:
        self.done.set()

    def _watch(self) -> None:
        """Poll every second at first, then every tenth of the time watched
        so far (a stop comes at most 10% late), up to WATCH_MOST_SECONDS."""
        started = time.monotonic()
        interval = WATCH_FIRST_SECONDS
        while not self.done.wait(interval) and self.found is None:
            # A slow or failing server: the next poll, or the end, tells.
            with contextlib.suppress(Exception):
                self._poll()
            watched = time.monotonic() - started
            interval = min(max(watched / 10, WATCH_FIRST_SECONDS), WATCH_MOST_SECONDS)

    def _poll(self) -> None:
        if self.reference_histories is None:
            [self.reference_histories] = read_histories(self.client, [self.reference], False)
            steps = (p.step or 0 for h in self.reference_histories.values() for p in h)
            self.reference_last = max(steps, default=0)
        run = self.client.get_run(self.run_id)
        for metric in run.data._metric_objs:
            if self.latest.get(metric.key) != (metric.step, metric.timestamp):
                history = self.client.get_metric_history(self.run_id, metric.key)
                self.histories[metric.key] = history_points(history)
                self.latest[metric.key] = (metric.step, metric.timestamp)
        self._found(self._decide(self.reference_histories, self.histories))

    def _decide(
        self, reference: dict[str, list[Point]], reproduced: dict[str, list[Point]]
    ) -> str | None:
        options, steps = self.options, self.options.steps
        # --steps past the reference's last step: the run ends by itself
        if (
            steps is not None
            and steps < self.reference_last
            and steps_done(reference, reproduced, steps, options.rules)
        ):
            return '--steps'
        if options.fail_fast and first_divergence(reference, reproduced, options.rules):
            return '--fail-fast'
        return None


def watcher_for(session: Session, reference: Run, run_id: str) -> Watcher | None:
    """A watcher when the options stop early, else None."""
    options = session.options
    if options.fail_fast or options.steps is not None or options.time_limit:
        return Watcher(session, reference, run_id)
    return None


@dataclasses.dataclass
class Job:
    """A started reproduction: the process it waits for, plus what it takes to
    end every process it started."""

    proc: subprocess.Popen[bytes]
    marker: str
    activation: str | None = None  # what enters the project's environment, None: local
    environ: Mapping[str, str] | None = None  # what the project got; None: not known (docker)

    def wait(self, stop: Stop, watcher: Watcher | None = None) -> int | None:
        """The project's exit status, None when the watcher says to stop it
        early; raises Stopped when a signal arrives."""
        while True:
            try:
                return self.proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                stop.check()
                if watcher is not None and watcher.stopped_by():
                    return None

    def end(self) -> int:
        """End whatever still runs: the process group and every marked process."""
        return end_processes(self.proc.pid, self.marker, reap=self.proc.poll)


def start_project(
    session: Session, plan: Plan, run: Run, tmp_dir: str, marker: str, output: ProjectOutput
) -> Job:
    """Start the entry point's command with bash, as `mlflow run` does, or a
    script run's command in its working folder, in this process (no second
    MLflow import), with the run made for it in MLFLOW_RUN_ID: a script's
    first start_run() takes it."""
    from mlflow.projects.utils import get_entry_point_command, get_run_env_vars, load_project

    if plan.script is not None:
        activation = script_activation(plan)
        args = script_process_args(plan.script.command, activation)
        cwd = os.path.join(plan.project_dir, plan.script.workdir)
    else:
        project = load_project(plan.project_dir)
        if project.docker_env:
            return _start_with_mlflow_run(session, plan, run, tmp_dir, marker, output)
        activation = environment_activation(project, plan.env_manager, plan.project_dir)
        storage_dir = os.path.join(tmp_dir, 'storage')
        entry = get_entry_point_command(project, plan.entry_point, plan.params.passed, storage_dir)
        args, cwd = ['bash', '-c', ' && '.join([*activation, *entry])], plan.project_dir
    env = _project_environ(session, tmp_dir, marker)
    env.update(get_run_env_vars(run.info.run_id, run.info.experiment_id))
    proc = start_process(args, cwd, env, output.write_fd)
    return Job(proc, marker, ' && '.join(activation) or None, env)


def start_process(
    args: Sequence[str], cwd: str, env: Mapping[str, str], output_fd: int
) -> subprocess.Popen[bytes]:
    """Start a project's process in a session of its own (whose process group
    a stop ends), its output into `output_fd`."""
    return subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=output_fd,
        stderr=output_fd,
        start_new_session=True,
    )


def script_activation(plan: Plan) -> list[str]:
    """What enters a script run's environment: built by MLflow from its
    python_env.yaml or conda.yaml; nothing for env manager local."""
    from mlflow.projects.utils import load_project

    assert plan.script is not None
    if plan.script.env_dir is None:
        return []
    folder = os.path.join(plan.project_dir, plan.script.env_dir)
    return environment_activation(load_project(folder), plan.env_manager, folder)


def script_process_args(command: Sequence[str], activation: Sequence[str]) -> list[str]:
    """A script's command as an argument list, never parsed by a shell.  To
    enter an environment, bash runs the activation and then execs the command,
    which it gets as its positional parameters: data, not code."""
    if not activation:
        return list(command)  # 'python' is found on the project's PATH, as bash would
    return ['bash', '-c', ' && '.join([*activation, 'exec "$@"']), 'bash', *command]


def script_help(session: Session, plan: Plan, tmp_dir: str, marker: str) -> tuple[str, str | None]:
    """What `python script --help` prints, run as the script will run, and
    why it is no help when it fails or does not end in time (else None).  Its
    tracking store is a scratch one: a script that ignores --help and trains
    logs nothing anywhere."""
    assert plan.script is not None
    env = _project_environ(session, tmp_dir, marker)
    env['MLFLOW_TRACKING_URI'] = f'sqlite:///{os.path.join(tmp_dir, "help.db")}'
    for name in (*SECRET_VARIABLES, 'MLFLOW_TRACKING_USERNAME'):  # not for a scratch store
        env.pop(name, None)
    log = os.path.join(tmp_dir, 'help.txt')
    deadline = time.monotonic() + HELP_TIMEOUT_SECONDS
    args = script_process_args((*plan.script.launch, '--help'), script_activation(plan))
    cwd = os.path.join(plan.project_dir, plan.script.workdir)
    with open(log, 'wb') as out:
        proc = start_process(args, cwd, env, out.fileno())
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            session.stop.check()
            time.sleep(0.1)
        ended = proc.poll() is not None
    finally:
        end_processes(proc.pid, marker, reap=proc.poll)
    if not ended:
        return '', f'did not end within {HELP_TIMEOUT_SECONDS:g} s'
    if proc.returncode != 0:
        return '', f'failed (exit status {proc.returncode})'
    with open(log, encoding='utf-8', errors='replace') as f:
        return f.read(), None


def cached_script_help(
    session: Session, plan: Plan, tmp_dir: str, marker: str
) -> tuple[str, str | None]:
    """script_help once per script, commit and environment manager in an
    invocation: a batch, --repeat or --explain pays for it once, not per run."""
    assert plan.script is not None
    changes = plan.source.changes.sha256 if plan.source.changes else ''
    key = (plan.source.uri, plan.source.version, changes, plan.script.path, plan.env_manager)
    with session.shared.sources_lock:
        cached = session.shared.helps.setdefault(key, _CachedHelp())
    with cached.lock:
        if not cached.asked:
            cached.text, cached.failure = script_help(session, plan, tmp_dir, marker)
            cached.asked = True
    return cached.text, cached.failure


def complete_script_plan(session: Session, plan: Plan, tmp_dir: str, marker: str) -> Plan:
    """What a script run's plan needs from the tracking server and from the
    script: the experiment (by default the reference's own, the only one a
    script that calls set_experiment can log into: another is refused then)
    and, without --script-args or the tag reproduce.argv, the params its
    --help shows as options (a script with no param to pass, or without an
    argument parser, is not run with --help: plan_script said so)."""
    assert plan.script is not None
    own = functools.partial(experiment_name_of, session, plan.reference.info.experiment_id)
    if plan.experiment_name:
        check_script_experiment(plan, own)
    else:
        plan = dataclasses.replace(plan, experiment_name=own())
    if plan.script.arguments_from != '--help':
        return plan
    if session.options.dry_run:  # runs nothing: the script is code from the tracking store
        script = dataclasses.replace(plan.script, arguments_from=HELP_AT_RUN_TIME)
        return dataclasses.replace(plan, script=script)
    help_text, failure = cached_script_help(session, plan, tmp_dir, marker)
    options = help_options(help_text)
    if not options:
        warn(
            f'`{shlex.join((*plan.script.launch, "--help"))}` {failure or "shows no options"}: '
            f'the script gets no arguments (the tag {TAG_ARGV} or --script-args can give them)'
        )
    argv, chosen = arguments_from_help(options, dict(plan.reference.data.params))
    arguments_from = f'{HELP_GAVE_NONE}{failure}' if failure else '--help'
    script = dataclasses.replace(plan.script, argv=tuple(argv), arguments_from=arguments_from)
    return dataclasses.replace(
        plan, script=script, params=chosen, command=shlex.join(script.command)
    )


def _start_with_mlflow_run(
    session: Session, plan: Plan, run: Run, tmp_dir: str, marker: str, output: ProjectOutput
) -> Job:
    """A docker_env project: MLflow builds its image and runs the container
    from a `mlflow run` process of its own (in a session of its own), called
    from a launcher process that then waits for it and exits as it does."""
    launcher = start_launcher(session, plan, tmp_dir, marker, output, run)
    launcher.started(session.stop)  # a signal ends the build
    launcher.answers.close()  # it says no more: it exits as MLflow's process does
    return Job(launcher.proc, marker)


def start_launcher(
    session: Session, plan: Plan, tmp_dir: str, marker: str, output: ProjectOutput, run: Run | None
) -> Launcher:
    """A launcher process asked for mlflow.projects.run(...): locally into
    `run`, made for it, or on the plan's backend, which makes its own.  It,
    and whatever MLflow starts from it, get the project's environment with the
    settings of the tool's own MLflow requests, and the reproduction's output pipe."""
    arguments: dict[str, Any] = dict(
        uri=plan.project_dir,
        entry_point=plan.entry_point,
        parameters=dict(plan.params.passed),
        env_manager=plan.env_manager,
        synchronous=False,
    )
    if run is not None:
        arguments.update(
            experiment_id=run.info.experiment_id,
            storage_dir=os.path.join(tmp_dir, 'storage'),
            run_id=run.info.run_id,
            backend=DEFAULT_BACKEND,
        )
    else:
        arguments.update(
            experiment_id=_experiment_id(session.client, plan.experiment_name),
            backend=plan.backend.name,
            backend_config=dict(plan.backend.config),
        )
    env = _project_environ(session, tmp_dir, marker)
    env.update(tool_request_settings(env))
    request = {'run': arguments, 'verbose': session.options.verbose}
    return Launcher(request, env, output.write_fd, marker)


# A launcher process: Python loads this file and calls serve_launch().  The
# working folder ('' first on sys.path) is left out: it is the user's.
LAUNCHER = (
    'import runpy, sys; sys.path[:1] = [p for p in sys.path[:1] if p]; '
    "runpy.run_path(sys.argv[1], run_name='reproduce_run_launcher')['serve_launch']()"
)


class LaunchFailed(Exception):
    """What a launcher process met instead of starting the job or waiting for
    it: an exception (its type's name and last line; `refused`: MLflow's,
    its way of saying no), or its end without a word."""

    def __init__(self, answer: Mapping[str, Any], returncode: int | None = None) -> None:
        super().__init__(
            answer.get('error')
            or f'the launcher process ended without an answer (exit status {returncode})'
        )
        self.type_name = answer.get('type', type(self).__name__)
        self.refused = bool(answer.get('refused'))

    def unexpected(self) -> ReproduceError:
        """As the tool reports a failure it did not foresee."""
        return ReproduceError(unexpected_failure(self.type_name, str(self)))


class Launcher:
    """mlflow.projects.run in a Python process of its own (serve_launch),
    since MLflow starts the job with the calling process's environment and
    standard output and error: the launcher has the project's, and this
    process never changes its own.  It answers on a pipe, a JSON line each;
    for a backend, it then stands for MLflow's SubmittedRun: the tool waits
    on it, or has it cancel the job."""

    def __init__(
        self, request: Mapping[str, Any], env: Mapping[str, str], output_fd: int, marker: str
    ) -> None:
        self.marker, self.run_id = marker, ''
        read_fd, write_fd = os.pipe()
        try:
            self.proc = subprocess.Popen(
                (sys.executable, '-c', LAUNCHER, os.path.abspath(__file__), str(write_fd)),
                env=dict(env),
                stdin=subprocess.PIPE,
                stdout=output_fd,
                stderr=output_fd,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.answers = os.fdopen(read_fd, 'rb', buffering=0)
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError), self.proc.stdin as request_pipe:
            request_pipe.write(json.dumps(request).encode())  # not in argv, which ps shows

    def answer(self, stop: Stop | None = None) -> dict[str, Any]:
        """Its next answer, {} once it has ended without one.  With `stop`,
        raises Stopped when a signal arrives first."""
        if self.answers.closed:  # none awaited any more
            return {}
        while stop is not None and not select.select([self.answers], [], [], 0.2)[0]:
            stop.check()
        line = self.answers.readline()
        try:
            return json.loads(line) if line else {}
        except ValueError:  # not from serve_launch: the launcher cannot be trusted
            return {'error': 'the launcher process answered something other than JSON'}

    def end(self) -> None:
        """End it and whatever it started, as a project's processes are ended."""
        self.answers.close()
        end_processes(self.proc.pid, self.marker, reap=self.proc.poll)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)  # a zombie no longer counts as running: reap it

    def started(self, stop: Stop | None) -> None:
        """Waits for MLflow to start the job, and keeps its run ID; raises
        LaunchFailed when it could not, and Stopped when a signal (`stop`)
        comes first, the launcher ended either way."""
        try:
            answer = self.answer(stop)
        except BaseException:  # Stopped, or the pipe failed: it ends all the same
            self.end()
            raise
        if 'run_id' not in answer:
            self.end()
            raise LaunchFailed(answer, self.proc.returncode)
        self.run_id = answer['run_id']

    def succeeded(self, stop: Stop) -> bool:
        """Whether the job succeeded, once it has ended; raises Stopped when
        a signal arrives first."""
        answer = self.answer(stop)
        if 'succeeded' not in answer:  # one that still runs is ended by cancel_submitted
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(0 if answer else 5)  # its exit status, once it has ended
            raise LaunchFailed(answer, self.proc.returncode).unexpected()
        self.answers.close()
        self.proc.wait()  # it exits once it has answered
        return bool(answer['succeeded'])

    def cancel(self) -> None:
        """SubmittedRun.cancel(), by the launcher (SIGTERM asks it to)."""
        self.proc.send_signal(signal.SIGTERM)  # not once it has been reaped
        answer = self.answer()
        self.answers.close()
        self.proc.wait()
        if 'error' in answer:
            raise LaunchFailed(answer)


def serve_launch() -> NoReturn:
    """A launcher process: mlflow.projects.run as the request on standard
    input says, with this process's environment and output, which the
    processes MLflow starts inherit.  Its answers go to the descriptor in
    argv[2]: the run ID once the job started, or the exception met.  Local
    backend: it then waits for MLflow's process and exits as that did.
    Another backend: it waits on the SubmittedRun and answers the outcome,
    or cancels the job on SIGTERM and answers how that went."""
    request = json.load(sys.stdin)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    answers = int(sys.argv[2])
    local = request['run']['backend'] == DEFAULT_BACKEND
    stop = Stop()
    if not local:  # the tool's SIGTERM asks for a cancel; the local launcher just ends
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.event.set())
    _configure_logging(request['verbose'])
    try:
        import mlflow.projects

        submitted = mlflow.projects.run(**request['run'])
        _answer(answers, run_id=submitted.run_id)
        if local:
            _exit_as(submitted.command_proc.wait())
        _answer(answers, **_outcome(submitted, stop))
    except Exception as e:
        _answer(answers, **_exception_answer(e, request['verbose']))
    _exit_as(0)


def _outcome(submitted: Any, stop: Stop) -> dict[str, Any]:
    """Whether the job succeeded, once MLflow's SubmittedRun says it has
    ended; on a stop, the outcome of cancelling it."""
    try:
        while submitted.get_status() in UNFINISHED_STATUSES:
            stop.event.wait(BACKEND_POLL_SECONDS)
            stop.check()
        return {'succeeded': bool(submitted.wait())}
    except Stopped:
        try:
            submitted.cancel()
        except Exception as e:
            return _exception_answer(e, verbose=False)
        return {'cancelled': True}


def _exception_answer(e: Exception, verbose: bool) -> dict[str, Any]:
    from mlflow.exceptions import ExecutionException, MlflowException

    if verbose:  # into the project's output
        import traceback

        traceback.print_exc()
    return {
        'error': _last_line(str(e)) or type(e).__name__,
        'type': type(e).__name__,
        'refused': isinstance(e, (ExecutionException, MlflowException)),
    }


def _answer(fd: int, **answer: Any) -> None:
    os.write(fd, json.dumps(answer).encode() + b'\n')  # one write: one whole line


def _exit_as(returncode: int) -> NoReturn:
    """Exit with this status, or by the same signal: as the process that
    ended with it did."""
    sys.stdout.flush()
    sys.stderr.flush()
    if returncode < 0:
        signal.signal(-returncode, signal.SIG_DFL)
        os.kill(os.getpid(), -returncode)
    os._exit(returncode if returncode >= 0 else 128 - returncode)


@dataclasses.dataclass(frozen=True)
class Launch:
    returncode: int
    output_tail: tuple[str, ...]
    environment: dict[str, Any] | None = None  # of the interpreter that ran the project
    output_lost: str | None = None  # what the tool could not keep of the project's output
    stopped_by: str | None = None  # the option whose verdict covers part of the histories
    killed: bool = True  # with stopped_by: stopped before its end (else --steps N, it ended)


def run_project(
    session: Session, plan: Plan, run: Run, tmp_dir: str, marker: str, output: ProjectOutput
) -> Launch:
    """Start the project into the run made for it, wait, and make sure that
    nothing it started outlives it.  On a signal, end its processes (SIGTERM,
    then SIGKILL after the grace period) and mark the run KILLED; if it cannot
    start, mark the run FAILED."""
    run_id = run.info.run_id
    job = None
    watcher = watcher_for(session, plan.reference, run_id)
    try:
        session.stop.check()
        job = start_project(session, plan, run, tmp_dir, marker, output)
        output.close_writer()
        # The interpreter that runs the project, described while it runs; not
        # for docker, whose container is out of reach.
        environment = job.environ and _in_background(
            capture_environment, job.activation, job.environ, plan.project_dir
        )
        returncode = job.wait(session.stop, watcher)
        environment = environment and captured_environment(environment, session.stop)
    except Exception as e:  # Stopped too
        if job is not None:
            job.end()
        status = 'KILLED' if isinstance(e, Stopped) else 'FAILED'
        close_run(session.client, run_id, status, session.shared.left_open)
        if isinstance(e, Stopped):
            raise
        raise _mlflow_error(f'cannot launch the project (run {run_id} marked FAILED)', e) from None
    finally:
        output.close_writer()
        if watcher is not None:
            watcher.close()
    if returncode is None:  # stopped early: as a signal stops it, the run KILLED
        assert watcher is not None
        launch = stop_early(session, job, run_id, output, environment, watcher.found)
        session.stop.check()  # a signal during the grace period wins, as everywhere
        return launch
    left_behind = job.end()
    if left_behind:
        warn(f'the project of run {run_id} left {left_behind} process(es) running; ended them')
    output.close()
    status = 'FINISHED' if returncode == 0 else 'FAILED'
    close_run(session.client, run_id, status, session.shared.left_open)
    # --steps N of a run that ended before N was reached: still judged up to N
    stopped_by = '--steps' if session.options.steps is not None else None
    return Launch(returncode, output.tail, environment, output.lost, stopped_by, killed=False)


def stop_early(
    session: Session,
    job: Job,
    run_id: str,
    output: ProjectOutput,
    environment: dict[str, Any] | None,
    stopped_by: str | None,
) -> Launch:
    """End the project's processes (SIGTERM to its group, the grace period,
    then SIGKILL) and mark its run KILLED: it must never look complete."""
    job.end()
    output.close()
    close_run(session.client, run_id, 'KILLED', session.shared.left_open)
    return Launch(0, output.tail, environment, output.lost, stopped_by)


def run_on_backend(
    session: Session,
    plan: Plan,
    parent_run_id: str | None,
    tmp_dir: str,
    marker: str,
    output: ProjectOutput,
    progress: Any,
) -> Launch:
    """Hand the project to MLflow's backend (kubernetes, databricks, a
    plugin), which creates the run itself; make that run look like a local
    reproduction, wait for the job, and cancel it on a signal.  The backend
    gets our checkout of the commit, kept until the job ends."""
    launcher = submit_to_backend(session, plan, tmp_dir, marker, output)
    run_id = progress.run_id = launcher.run_id
    client = session.client
    try:
        fixup_backend_run(client, run_id, plan, parent_run_id)
        _say_what_runs(session, plan, run_id)
        succeeded = launcher.succeeded(session.stop)
    except BaseException as e:
        cancel_submitted(launcher)
        status = 'KILLED' if isinstance(e, Stopped) else 'FAILED'
        close_run(client, run_id, status, session.shared.left_open)
        raise
    finally:
        output.close()
    # MLflow's remote SubmittedRuns leave the status to the caller, and a
    # project that fails may still have ended its run FINISHED: say it here.
    close_run(client, run_id, 'FINISHED' if succeeded else 'FAILED', session.shared.left_open)
    return Launch(0 if succeeded else 1, output.tail, output_lost=output.lost)


def submit_to_backend(
    session: Session, plan: Plan, tmp_dir: str, marker: str, output: ProjectOutput
) -> Launcher:
    """mlflow.projects.run(backend=...) in a launcher process with the
    project's environment and output pipe, which then waits on the job."""
    try:
        launcher = start_launcher(session, plan, tmp_dir, marker, output, None)
    finally:
        output.close_writer()
    try:
        launcher.started(None)  # a signal takes effect once the backend has answered
    except LaunchFailed as e:
        if not e.refused:
            raise e.unexpected() from None
        raise _mlflow_error(f'backend {plan.backend.name!r} refused the project', e) from None
    return launcher


def cancel_submitted(launcher: Launcher) -> None:
    """Cancel the job, bounded in time; then whatever of it runs on this
    host with its marker (a plugin's local job, the launcher) is ended too."""
    cancelled = _in_background(launcher.cancel)
    try:
        cancelled.result(timeout=STOP_GRACE_SECONDS + 20)
    except Exception as e:  # a cancel that fails or hangs: say so, go on
        warn(
            f'could not cancel the job of run {launcher.run_id}: '
            f'{_last_line(str(e)) or type(e).__name__}'
        )
    end_processes(None, launcher.marker)


def _in_background(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a daemon thread, its result as a Future: a call that
    hangs can never keep the tool from exiting."""
    from concurrent.futures import Future

    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # handed to whoever asks for the result
            future.set_exception(e)

    threading.Thread(target=run, daemon=True).start()
    return future


def _say_what_runs(session: Session, plan: Plan, new_id: str) -> None:
    if session.options.verbose:
        ref = plan.reference.info
        line = (
            f'{program_name()}: reproducing run {ref.run_id} ({ref.run_name}, {ref.status}) as '
            f'run {new_id} in experiment {plan.experiment_name!r}: entry point '
            f'{plan.entry_point!r} of {mask_credentials(plan.source.uri)} at '
            f'{plan.source.version} with env manager {plan.env_manager} on backend '
            f'{plan.backend.name}'
        )
        print(shown(line), file=sys.stderr)


# ---------------------------------------------------------------------------
# Reporting: what a reproduction and a group found (the Outcome protocol,
# Report, BatchReport), rendered as text, JSON, Markdown and JUnit testcases.


class Outcome:
    """What an invocation ends with, and every kind answers the same questions:
    a Report (one run, with --explain's explanation), a BatchReport (a batch,
    --repeat), a BisectReport, or the Bisections of several references.  Each
    has a `status`, its `exit_code`, its `reports` (every reproduction, in
    order) and `message` (why it could not go on, or None); the defaults below
    are worked out from those."""

    status: str  # a key of STATUS_EXIT_CODES
    message: str | None = None
    first_changed_commit: str | None = None  # a bisection's finding

    @property
    def exit_code(self) -> int:
        return STATUS_EXIT_CODES[self.status]

    def first_changed_text(self, chars: int = 40) -> str:
        """A bisection's answer for its closing line (BisectReport's own)."""
        return self.first_changed_commit or 'none'

    def text(self, verbose: bool = False) -> str | None: ...  # None: nothing to say

    def markdown(self) -> str: ...

    def json(self) -> dict[str, Any]: ...

    def json_text(self) -> str:
        return json.dumps(self.json(), indent=2, allow_nan=False)

    def render(self, output: str, verbose: bool = False) -> str | None:
        """What goes to standard output; None for nothing."""
        if output == 'json':
            return self.json_text()
        if self.message and not self.reports:  # it could not start: the error line says why
            return None
        return self.markdown() if output == 'markdown' else self.text(verbose)

    def subject(self) -> str: ...  # what was reproduced, as the summary line names it

    def junit_cases(self) -> list[Case]:
        """One testcase per reproduction."""
        return [report_case(r) for r in self.reports]

    def parent_run_ids(self) -> list[str]:
        return []

    def stderr_lines(self) -> list[str]:
        """The signal, or the one-line error, that ends standard error."""
        if stopped := next((r.status for r in self.reports if r.status in SIGNAL_STATUSES), None):
            return [f'{program_name()}: {stopped}']
        return [f'{program_name()}: error: {self.message}'] if self.message else []


@dataclasses.dataclass(frozen=True)
class Report(Outcome):
    status: str  # a key of STATUS_EXIT_CODES
    reference_run_id: str
    reproduced_run_id: str | None = None
    plan: Plan | None = None  # None when comparing two existing runs
    verdict: Verdict | None = None
    rules: Rules = Rules()
    message: str | None = None
    output_tail: tuple[str, ...] = ()
    reference_run_name: str | None = None
    model: str | None = None  # the registered model version that named the run
    seconds: float = 0.0
    differences: Differences | None = None  # besides metrics; None: not looked at
    registrations: Registrations = Registrations()
    reference_status: str | None = None  # MLflow's; None when the reference was not read
    # (reference, reproduced) histories as judged, for --repeat's diagnosis; never printed
    histories: Any = dataclasses.field(default=None, compare=False, repr=False)
    leftovers: tuple[dict[str, str], ...] = ()  # what close_leftovers cleaned first
    explanation: Explanation | None = None  # with --explain, of a reproduction that differs
    cannot_guess: bool = False  # ended by CannotGuess: a batch's search skips the run
    prefix: Prefix | None = None  # stopped early: what the verdict covers
    # the reference run's experiment, read when no reproduced run was made: its testcase's
    reference_experiment: str | None = None

    def __post_init__(self) -> None:
        if self.reference_status is None and self.plan is not None:
            object.__setattr__(self, 'reference_status', self.plan.reference.info.status)

    @property
    def equal(self) -> bool | None:
        return self.verdict.equal if self.status in JUDGED_STATUSES and self.verdict else None

    @property
    def reports(self) -> tuple[Report, ...]:
        return (self,)

    def text(self, verbose: bool = False) -> str | None:
        """None when it could not start or a signal ended it (the error line
        says why); a failed project's report says what ran and how it ended."""
        if self.status == 'failed' and self.plan:
            return format_failed_text(self)
        if self.status in ('failed', 'error', 'interrupted', 'terminated'):
            return None
        return format_text(self, verbose)

    def markdown(self) -> str:
        return format_markdown(self)

    def json(self) -> dict[str, Any]:
        return report_json(self)

    def subject(self) -> str:
        return f'run {case_name(self)}'


def report_json(report: Report) -> dict[str, Any]:
    plan, verdict = report.plan, report.verdict
    return {
        'reference_run_id': report.reference_run_id,
        'reference_status': report.reference_status,
        'reproduced_run_id': report.reproduced_run_id,
        'equal': report.equal,
        'status': report.status,
        'exit_code': report.exit_code,
        'message': report.message,
        'source': plan
        and {
            'uri': mask_credentials(plan.source.uri),
            'version': plan.source.version,
            'entry_point': plan.entry_point,
            'env_manager': plan.env_manager,
            'changes': plan.source.changes and _changes_json(plan.source.changes),
            'script': plan.script
            and {
                'path': plan.script.path,
                'working_folder': plan.script.workdir,
                'module': plan.script.module,
                'argv': [mask_credentials(a) for a in plan.script.argv],
                'arguments_from': plan.script.arguments_from,
            },
        },
        'backend': plan
        and {
            'name': plan.backend.name,
            'config': mask_config(plan.backend.config),
            'reference_backend': plan.reference_backend,
        },
        'experiment': plan.experiment_name if plan else None,
        'params': {
            'passed': plan.params.passed if plan else None,
            'not_passed': plan.params.not_passed if plan else None,
            'why_not_passed': plan
            and {k: why for why, ps in not_passed_reasons(plan).items() for k in ps},
            'compared': [
                {**dataclasses.asdict(p), 'equal': p.equal}
                for p in (verdict.params if verdict else ())
            ],
        },
        'tolerance': {
            'rtol': _json_float(report.rules.default.rtol),
            'atol': _json_float(report.rules.default.atol),
            'overrides': [
                {'pattern': pattern, 'rtol': _json_float(tol.rtol), 'atol': _json_float(tol.atol)}
                for pattern, tol in report.rules.overrides
            ],
            'ignored': list(report.rules.ignored),
        },
        'metrics': [_metric_json(m) for m in (verdict.metrics if verdict else ())],
        'differences': differences_json(report.differences),
        'output_tail': list(report.output_tail),
        'model': report.model,
        'seconds': round(report.seconds, 3),
        'registrations': {
            'kept': report.registrations.kept,
            'versions': [
                {'name': r.name, 'version': r.version, 'run_id': r.run_id, 'discarded': r.discarded}
                for r in report.registrations.versions
            ],
        },
        'leftovers': list(report.leftovers),
        'prefix': report.prefix and report.prefix.json(),
        **(
            {'explanation': {'environment': report.explanation.json()}}
            if report.explanation
            else {}
        ),
    }


def _note(m: MetricVerdict) -> str:
    if m.ignored:
        return 'ignored'
    if m.equal or m.reference is None or m.reproduced is None:
        return ''
    if m.points > 1 and m.first_divergent_step is not None:
        return f'differs from step {m.first_divergent_step}'
    return 'differs'


Rows = tuple[list[str], list[list[Any]]]  # a table: its headers, then its rows of cells


def _with_notes(headers: list[str], rows: list[list[Any]]) -> Rows:
    """The table, less its last column (the Note) when no row has a note."""
    if any(row[-1] for row in rows):
        return headers, rows
    return headers[:-1], [row[:-1] for row in rows]


def _metric_rows(verdict: Verdict) -> Rows:
    rows = [
        [m.key, m.reference, m.reproduced, value_diff(m.reproduced, m.reference), _note(m)]
        for m in verdict.metrics
    ]
    return _with_notes(['Metric', 'Run1', 'Run2', 'Diff', 'Note'], rows)


def _param_rows(verdict: Verdict) -> Rows:
    rows = [
        [p.key, p.reference, p.reproduced, '' if p.equal else 'differs'] for p in verdict.params
    ]
    return _with_notes(['Param', 'Run1', 'Run2', 'Note'], rows)


def _table(rows: Rows, tablefmt: str) -> str:
    from tabulate import tabulate

    headers, body = rows
    # Cells come from the tracking store: one line each, no markup of their own.
    escape = markdown_escaped if tablefmt == 'github' else shown
    body = [[escape(c) if isinstance(c, str) else c for c in row] for row in body]
    # disable_numparse keeps param values as the strings they are.
    numparse = headers[0] == 'Metric'
    return tabulate(
        body, headers=headers, tablefmt=tablefmt, missingval='-', disable_numparse=not numparse
    )


def _plan_lines(plan: Plan, show_backend: bool = False) -> list[str]:
    lines = [f'Source:         {mask_credentials(plan.source.uri)} @ {plan.source.version}']
    if plan.source.changes is not None:
        lines[0] += f' + {shown(plan.source.changes.text())}'
    if plan.script is None:
        lines.append(f'Entry point:    {plan.entry_point} (env manager: {plan.env_manager})')
    else:
        lines += [f'Entry point:    {_entry_point_text(plan)}', _script_line(plan)]
    if show_backend or _backend_noteworthy(plan):
        lines.append(f'Backend:        {_backend_text(plan)}')
    return lines


def _changes_json(changes: Changes) -> dict[str, Any]:
    return {
        'applied': changes.members is not None,
        'files': list(changes.files),
        'count': changes.count,
        'sha256': changes.sha256,
        'not_recorded': dict(changes.not_recorded),
    }


def _entry_point_text(plan: Plan) -> str:
    """A script run's: 'src/train.py (script run) --alpha 0.3 --epochs 5', masked."""
    if (script := plan.script) is None:
        return plan.entry_point
    line = shlex.join([script.path]) + ' (script run) ' + shlex.join(script.argv)
    return mask_credentials(line.rstrip())


# Why a script gets no arguments, by its arguments_from.
NO_ARGUMENTS = {
    'no params': 'no param to pass',
    NO_PARSER: 'the script imports no argument parser',
    '--help': 'its --help shows no option named after a param',
    '--script-args': '--script-args gives none',
    f'the tag {TAG_ARGV}': f'the tag {TAG_ARGV} records none',
}


def _script_line(plan: Plan) -> str:
    """'Script: python train.py --alpha 0.3 (in src/, ...)': what ran, where, and why."""
    return 'Script:         ' + _script_text(plan)


def _script_text(plan: Plan, escaped: Escape = shown, code: Escape = str) -> str:
    """The command (as `code` shows it), its working folder, the env manager
    and where its arguments came from, masked."""
    assert plan.script is not None
    script = plan.script
    where = f'{script.workdir}/' if script.workdir else 'the repository root'
    command = code(mask_credentials(shlex.join(script.command)))
    return (
        f'{command} (in {escaped(where)}, env manager: {escaped(plan.env_manager)}, '
        f'{escaped(mask_credentials(script_arguments_text(script)))})'
    )


def script_arguments_text(script: Script) -> str:
    """Where a script's arguments came from, or that it gets none and why:
    'arguments from --help', 'arguments: none; its --help failed (exit status 2)'."""
    source = script.arguments_from
    if script.argv or source == HELP_AT_RUN_TIME:
        return f'arguments from {source}'
    if source.startswith(HELP_GAVE_NONE):  # it ran and gave nothing
        return f'arguments: none; its --help {source.removeprefix(HELP_GAVE_NONE)}'
    return f'arguments: none; {NO_ARGUMENTS.get(source, source)}'


def _backend_noteworthy(plan: Plan) -> bool:
    """Not the default, or not where the reference ran."""
    return plan.backend.name != DEFAULT_BACKEND or (
        plan.reference_backend not in (None, plan.backend.name)
    )


def _backend_text(plan: Plan) -> str:
    """'kubernetes {"repository-uri": ...} (the reference ran on local)', masked."""
    text = plan.backend.name
    if plan.backend.config:
        text += ' ' + json.dumps(mask_config(plan.backend.config))
    if plan.reference_backend not in (None, plan.backend.name):
        text += f' (the reference ran on {plan.reference_backend})'
    return text


def _not_passed_lines(plan: Plan, verbose: bool) -> list[str]:
    """One line per reason a param is not passed."""
    if verbose:
        return [
            f'Params not passed ({why}): {_listed(ps)}' for why, ps in _not_passed(plan).items()
        ]
    return [
        f'Params not passed: {len(ps)} {why} (--verbose lists them)'
        for why, ps in _not_passed(plan).items()
    ]


def _not_passed(plan: Plan) -> dict[str, dict[str, str]]:
    """The params not passed, by reason: the plan's one reason, or Params.why's."""
    by_reason: dict[str, dict[str, str]] = {_not_passed_reason(plan): {}}  # first
    for key, value in plan.params.not_passed.items():
        why = plan.params.why.get(key) or _not_passed_reason(plan)
        by_reason.setdefault(why, {})[key] = value
    return {why: params for why, params in by_reason.items() if params}


def script_params_note(report: Report) -> list[str]:
    """A script run whose params came back different got the script's
    defaults: say how to give it its arguments."""
    verdict, plan = report.verdict, report.plan
    if not (verdict and plan and plan.script) or all(p.equal for p in verdict.params):
        return []
    return [
        f'Params differ: the script did not get them as arguments; record its arguments with '
        f'mlflow.set_tag("{TAG_ARGV}", json.dumps(sys.argv[1:])) or pass --script-args'
    ]


def _listed(params: Mapping[str, str], escaped: Escape = shown) -> str:
    return escaped(', '.join(f'{k}={v}' for k, v in sorted(params.items()))) or '(none)'


def _not_passed_reason(plan: Plan) -> str:
    if plan.script and plan.script.arguments_from == NO_PARSER:
        return 'for a script that imports no argument parser'
    return "not in the script's arguments" if plan.script else 'not declared by the entry point'


DRY_RUN_LINE = 'Dry run: nothing was run and no run was created.'
# Why a dry run's params are not passed yet: the script's --help, which it
# does not run, will choose among them.
CHOSEN_AT_RUN_TIME = "passed if the script's --help shows it, at run time"


def not_passed_reasons(plan: Plan) -> dict[str, dict[str, str]]:
    """The params not passed, by reason; a dry run's --help still to ask
    chooses among those that would otherwise be in no argument."""
    by_reason = _not_passed(plan)
    if plan.script and plan.script.arguments_from == HELP_AT_RUN_TIME:
        among = by_reason.pop(_not_passed_reason(plan), {})
        by_reason = {CHOSEN_AT_RUN_TIME: among, **by_reason} if among else by_reason
    return by_reason


def dry_run_items(plan: Plan, escaped: Escape = shown) -> list[tuple[str, str]]:
    """What a dry run says beyond the source, entry point and backend, the
    same in text and Markdown: the params to pass (exactly, or among which
    the script's --help will choose), those not passed by reason (said even
    when none), and the experiment."""
    not_passed = not_passed_reasons(plan)
    if among := not_passed.pop(CHOSEN_AT_RUN_TIME, None):
        among_text = f"those of the script's --help, at run time, among {_listed(among, escaped)}"
        items = [('Params to pass', among_text)]
    else:
        not_passed = not_passed or {_not_passed_reason(plan): {}}
        items = [('Params to pass', _listed(plan.params.passed, escaped))]
    items += [
        (f'Params not passed ({why})', _listed(ps, escaped)) for why, ps in not_passed.items()
    ]
    return [*items, ('Experiment', escaped(plan.experiment_name))]


def _dry_run_lines(plan: Plan) -> list[str]:
    """The text's: labels aligned as the plan's lines above them are."""
    return [f'{label + ":":<15} {value}' for label, value in dry_run_items(plan)] + [DRY_RUN_LINE]


def _unusual_status(report: Report) -> str | None:
    """The reference's status when it is worth a word: not FINISHED."""
    status = report.reference_status
    return status if status and status != 'FINISHED' else None


def prefix_items(report: Report) -> list[tuple[str, str]]:
    """What a reproduction stopped early compared, as (label, text): ('Stopped
    early', "by --steps 6 (run KILLED): equal up to step 6 of the reference's
    59"), and the metrics it did not compare."""
    p = report.prefix
    if p is None:
        return []
    first = _first_differing(report.verdict)
    if first is None:
        said = f'equal {p.text()}'
    else:
        at = first.first_divergent_step
        said = f'{first.key} differs' + (f' at step {at}' if at is not None else '')
        said += f'; compared {p.text()}' if p.steps is not None else ''
    items = [('Stopped early', f'by {p.stopped_by} (run KILLED): {said}')]
    if not p.killed:
        items = [('Compared', f'as {p.stopped_by} asks: {said}')]
    if p.not_compared:
        items.append(('Not compared', f'{", ".join(p.not_compared)} ({p.why_not_compared()})'))
    return items


def prefix_lines(report: Report) -> list[str]:
    """prefix_items as the text report's header lines."""
    return [f'{label + ":":<15} {text}' for label, text in prefix_items(report)]


def _first_differing(verdict: Verdict | None) -> MetricVerdict | None:
    """The metric that differs first (by its first divergent step)."""
    differing = verdict.differing if verdict else []
    return min(differing, key=lambda m: m.first_divergent_step or 0, default=None)


def format_text(report: Report, verbose: bool = False) -> str:
    status = _unusual_status(report)
    lines = [f'Reference run:  {report.reference_run_id}' + (f' ({status})' if status else '')]
    if report.reproduced_run_id:
        label = 'Reproduced run:' if report.plan else 'Compared run:  '
        lines.append(f'{label} {report.reproduced_run_id}')
    if report.plan:
        lines += _plan_lines(report.plan, show_backend=report.status == 'planned')
    lines += prefix_lines(report)
    if report.verdict and report.verdict.params:
        lines.append(_table(_param_rows(report.verdict), 'psql'))
    if report.plan and report.status == 'planned':
        lines += _dry_run_lines(report.plan)
    elif report.plan:
        lines += _not_passed_lines(report.plan, verbose) + script_params_note(report)
    lines += registration_lines(report.registrations)
    if report.verdict:
        lines.append(_table(_metric_rows(report.verdict), 'psql'))
        lines += differences_lines(report.differences)
        lines += explanation_lines(report.explanation)
        lines.append(f'Runs equal: {report.verdict.equal}')
    return '\n'.join(lines)


def _command_with_params(plan: Plan) -> str:
    """The entry point's command with each passed {param} as MLflow puts it
    (shlex.quote'd); a param with its default stays a placeholder."""
    passed = plan.params.passed
    return re.sub(
        r'\{(\w+)\}', lambda m: shlex.quote(passed[m[1]]) if m[1] in passed else m[0], plan.command
    )


def format_failed_text(report: Report) -> str:
    """What ran, where, and how it ended: for the mail of a cron job, which
    gets standard output."""
    assert report.plan is not None
    lines = [f'Reference run:  {report.reference_run_id}']
    if report.reproduced_run_id:
        lines.append(f'Reproduced run: {report.reproduced_run_id} (marked FAILED)')
    lines += _plan_lines(report.plan)
    if report.plan.script is None:
        lines.append(f'Command:        {mask_credentials(_command_with_params(report.plan))}')
    lines.append(f'Status:         failed: {report.message or "no error line"}')
    if report.output_tail:
        lines += ['Last lines of its output:', *(f'  {line}' for line in report.output_tail)]
    return '\n'.join(lines)


def _shortened(rows: Rows, max_rows: int) -> tuple[Rows, int]:
    """At most max_rows rows, those that differ first (kept in key order),
    long cells cut; and how many rows were left out."""
    headers, body = rows

    def differs(row: list[Any]) -> bool:
        return headers[-1] == 'Note' and row[-1] not in ('', 'ignored')

    first = sorted(range(len(body)), key=lambda i: not differs(body[i]))  # stable
    kept = set(first[:max_rows])
    short = [
        [_truncated(cell, SHORT_CELL) for cell in row] for i, row in enumerate(body) if i in kept
    ]
    return (headers, short), len(body) - len(short)


def _markdown_table(rows: Rows, what: str, max_rows: int | None) -> list[str]:
    if max_rows is None:
        return ['', _table(rows, 'github')]
    rows, left_out = _shortened(rows, max_rows)
    lines = ['', _table(rows, 'github')] if rows[1] else []
    if left_out:
        pointer = f'_{left_out} more {what} not shown: see `{ARTIFACT_DIR}/{COMPARISON_ARTIFACT}`._'
        lines += ['', pointer]
    return lines


def _summary_line(verdict: Verdict) -> str:
    metrics = [m for m in verdict.metrics if not m.ignored]
    differing = sum(not m.equal for m in metrics)
    params = sum(not p.equal for p in verdict.params)
    return (
        f'- {differing} of {len(metrics)} metrics differ, {params} of '
        f'{len(verdict.params)} params differ; the full report is '
        f'`{ARTIFACT_DIR}/{COMPARISON_ARTIFACT}`'
    )


def format_markdown(
    report: Report,
    reference_link: str | None = None,
    max_rows: int | None = None,
) -> str:
    """GitHub-flavoured: a pull request comment, a chat message, a run description.

    max_rows shortens each table to that many rows, differing ones first,
    with long cells cut and a summary line on top.
    """
    reference = report.reference_run_id
    if reference_link:
        reference = f'[{reference}]({reference_link})'
    lines = [f'**Reproduction of run {reference}**: {report.status}', '']
    if status := _unusual_status(report):
        lines += [f'- reference run status: **{status}**']
    if report.reproduced_run_id:
        label = 'reproduced run' if report.plan else 'compared run'
        lines += [f'- {label}: `{report.reproduced_run_id}`']
    if report.plan:
        lines += _markdown_plan_lines(report.plan, planned=report.status == 'planned')
    lines += environment_same_lines(report.differences)
    lines += [
        f'- {label.lower()}: {markdown_escaped(text)}' for label, text in prefix_items(report)
    ]
    registered = registration_lines(report.registrations, markdown_escaped)
    lines += [f'- {line[0].lower()}{line[1:]}' for line in registered]
    if report.verdict and max_rows is not None:
        lines += [_summary_line(report.verdict)]
    if report.message:
        message = report.message if max_rows is None else _truncated(report.message, 1000)
        lines += ['', f'> {markdown_escaped(message)}']
    if report.verdict:
        if report.verdict.params:
            lines += _markdown_table(_param_rows(report.verdict), 'params', max_rows)
        lines += _markdown_table(_metric_rows(report.verdict), 'metrics', max_rows)
    if other := differences_lines(report.differences, markdown_escaped):
        lines += ['', f'**{other[0]}**', '', *other[1:]]
    explained = explanation_lines(report.explanation, markdown_escaped)
    lines += ['', *explained] if explained else []
    if report.equal is not None:
        lines += ['', f'Runs equal: {report.equal}']
    if report.status == 'planned':
        lines += ['', DRY_RUN_LINE]
    return '\n'.join(lines)


def _markdown_plan_lines(plan: Plan, planned: bool) -> list[str]:
    """The plan as the text shows it: the source, entry point, script and
    backend; a dry run's params, experiment and backend too."""
    changes = plan.source.changes
    lines = [
        f'- source: {markdown_code(mask_credentials(plan.source.uri))} at '
        f'{markdown_code(plan.source.version)}'
        + (f' + {markdown_escaped(changes.text())}' if changes else ''),
        f'- entry point: {markdown_code(_entry_point_text(plan))}, env manager '
        f'`{plan.env_manager}`',
    ]
    if plan.script:
        lines.append(f'- script: {_script_text(plan, markdown_escaped, markdown_code)}')
    if planned or _backend_noteworthy(plan):
        lines.append(f'- backend: {markdown_code(_backend_text(plan))}')
    if planned:  # the text's items, one by one
        items = dry_run_items(plan, markdown_escaped)
        lines += [f'- {label[0].lower()}{label[1:]}: {value}' for label, value in items]
    return lines


def describe(report: Report, reference_link: str, limit: int = TAG_VALUE_LIMIT) -> str:
    """The run description: the Markdown report, shortened until it fits
    MLflow's tag limit; its first line and the verdict line are always kept."""
    for max_rows in (None, 100, 50, 20, 10, 5, 0):
        text = format_markdown(report, reference_link, max_rows)
        if len(text) <= limit:
            return text
    head, _, last = text.rpartition('\n')
    if report.equal is None:  # no verdict line: the status is in the first line
        return _truncated(text, limit)
    return _truncated(head, limit - len(last) - 1) + '\n' + last


def _differing_keys(report: Report) -> list[str]:
    return [m.key for m in report.verdict.differing] if report.verdict else []


def _differing(report: Report) -> str:
    """The metrics (and params) that differ, for the summary table."""
    params = report.verdict.params if report.verdict else ()
    keys = _differing_keys(report) + [f'param {p.key}' for p in params if not p.equal]
    return ', '.join(keys[:3]) + (f' +{len(keys) - 3}' if len(keys) > 3 else '')


def _summary_table(batch: BatchReport, tablefmt: str) -> list[str]:
    """The runs that did not come back equal (--repeat's: every repetition),
    then how many that leaves out."""
    headers = [
        'Reference run',
        'Run name',
        'Status',
        'Metrics differing',
        'Reproduced run',
        'Seconds',
    ]
    rows = [
        [
            r.reference_run_id,
            r.model or r.reference_run_name or '',
            r.status,
            _differing(r),
            r.reproduced_run_id or '',
            f'{r.seconds:.0f}',
        ]
        for r in batch.reports
        if r.status != 'equal' or batch.repeats
    ]
    lines = [_table((headers, rows), tablefmt)] if rows else []
    if unlisted := 0 if batch.repeats else batch.count('equal'):
        gap = [''] if lines and tablefmt == 'github' else []  # else Markdown reads it as a row
        why = 'that came back equal (--output json lists every run)'
        lines += [*gap, f'Not listed: {counted(unlisted, "run")} {why}']
    return lines


def _summary_counts(batch: BatchReport) -> str:
    if batch.dry_run:
        return planned_line(batch)
    counts = [f'{batch.count(s)} {s}' for s in COUNTED_STATUSES]
    counts += [f'{n} {s.replace("_", " ")}' for s, n in unfinished_counts(batch).items() if n]
    skipped = f', {len(batch.skipped)} skipped' if batch.skipped else ''
    return f'Reproduced {len(batch.reports)} runs: {", ".join(counts)}{skipped}'


def unfinished_counts(batch: BatchReport) -> dict[str, int]:
    """Reproductions a signal ended: stopped halfway, and never started."""
    return {'stopped': batch.stopped, 'not_started': batch.not_started}


def planned_line(batch: BatchReport) -> str:
    """The last line of a dry run: what it would do, not a verdict it did not reach."""
    errors = f', {batch.count("error")} error' if batch.count('error') else ''
    skipped = f', {len(batch.skipped)} skipped' if batch.skipped else ''
    return f'Planned: {counted(batch.count("planned"), "run")}{errors}{skipped}'


def _last_line_of(batch: BatchReport) -> str:
    return planned_line(batch) if batch.dry_run else f'Runs equal: {batch.equal}'


def skipped_lines(
    skipped: Sequence[Mapping[str, str]], head: str = 'Skipped', escaped: Escape = shown
) -> list[str]:
    """One line per reason, with its count, in the order the reasons first came."""
    counts = collections.Counter(s['reason'] for s in skipped)
    return [f'{head} {counted(n, "run")}: {escaped(reason)}' for reason, n in counts.items()]


def own_reproductions_lines(n: int, head: str = 'Left out') -> list[str]:
    """The one line that counts the tool's own runs (its reproductions and
    their parent runs) a search left out without listing them."""
    return [f"{head} {n} of the tool's own reproductions"] if n else []


def format_batch_text(batch: BatchReport, verbose: bool = False) -> str:
    lines = [f'Parent run:     {batch.batch_run_id}'] if batch.batch_run_id else []
    lines.append(DRY_RUN_LINE if batch.dry_run else _summary_counts(batch))
    lines += _summary_table(batch, 'psql')
    lines += skipped_lines(batch.skipped)
    lines += own_reproductions_lines(batch.own_reproductions)
    for report in batch.reports:
        if report.status in ('failed', 'error') and report.message:
            lines.append(f'{report.reference_run_id}: {report.status}: {shown(report.message)}')
        elif report.status == 'differ' and not batch.repeats:  # its table, without its verdict
            lines += ['', format_text(report, verbose).rsplit('\n', 1)[0]]
    for repeat in batch.repeats:
        lines += ['', _repeat_heading(repeat), *diagnosis_lines(repeat.diagnoses, 'psql')]
        repeated = (r for r in batch.reports if r.reference_run_id == repeat.reference_run_id)
        lines += explanation_lines(next((r.explanation for r in repeated if r.explanation), None))
    lines += leftover_lines(batch.leftovers)
    lines.append(_last_line_of(batch))
    return '\n'.join(lines)


def leftover_lines(
    leftovers: Sequence[Mapping[str, str]], bullet: str = '', escaped: Escape = shown
) -> list[str]:
    """What close_leftovers cleaned before a group, one line each."""
    return [f'{bullet}Leftover of a dead tool: {escaped(item["message"])}' for item in leftovers]


def format_batch_markdown(batch: BatchReport) -> str:
    heading = 'Batch dry run' if batch.dry_run else 'Batch reproduction'
    heading = f'Repetitions of run {batch.repeat_of}' if batch.repeat_of else heading
    lines = [f'**{heading}**: {_summary_counts(batch)}', '']
    if batch.batch_run_id:
        lines += [f'- parent run: `{batch.batch_run_id}`', '']
    lines += _summary_table(batch, 'github')
    if batch.skipped or batch.own_reproductions:
        lines += ['', *skipped_lines(batch.skipped, '- skipped', markdown_escaped)]
        lines += own_reproductions_lines(batch.own_reproductions, '- left out')
    for repeat in batch.repeats:
        lines += [
            '',
            f'**{_repeat_heading(repeat)}**',
            '',
            *diagnosis_lines(repeat.diagnoses, 'github'),
        ]
    for report in batch.reports:
        if report.status != 'equal' and not batch.repeats:
            lines += ['', format_markdown(report)]
    if batch.leftovers:
        lines += ['', *leftover_lines(batch.leftovers, '- ', markdown_escaped)]
    lines += ['', _last_line_of(batch)]
    return '\n'.join(lines)


def _repeat_heading(repeat: Repeat) -> str:
    return (
        f'Run {repeat.reference_run_id} against {len(repeat.reproduced_run_ids)} '
        f'repetitions: {classify_run(repeat.diagnoses)}'
    )


def batch_json(batch: BatchReport, runs: bool = True) -> dict[str, Any]:
    """The batch document; runs=False leaves its list of runs empty."""
    repeats = {}
    if batch.repeats:
        repeats['repeats'] = [repeat.json() for repeat in batch.repeats]
        if len(batch.repeats) == 1:
            repeats['repeat'] = repeats['repeats'][0]
    return {
        'runs': [report_json(r) for r in batch.reports] if runs else [],
        'skipped': list(batch.skipped),
        'summary': {
            'total': len(batch.reports),
            **{s: batch.count(s) for s in COUNTED_STATUSES},
            **unfinished_counts(batch),
            **({'planned': batch.count('planned')} if batch.dry_run else {}),
            'skipped': len(batch.skipped),
            'own_reproductions': batch.own_reproductions,
        },
        'exit_code': batch.exit_code,
        'batch_run_id': batch.batch_run_id,
        'message': batch.message,
        'leftovers': list(batch.leftovers),
        **repeats,
    }


def format_batch_json(batch: BatchReport) -> str:
    """batch_json's document, each run dumped on its own: a big batch is never
    held whole as dicts, and its text is made once, in one join (the text is
    the same as one json.dumps)."""
    text = json.dumps(batch_json(batch, runs=False), indent=2, allow_nan=False)
    if not batch.reports:
        return text
    before, after = text.split('"runs": []', 1)  # the first key
    pieces = [before, '"runs": [']
    for r in batch.reports:
        pieces += ['\n    ', indented_json(report_json(r), '\n    '), ',']
    pieces[-1] = '\n  ]'
    return ''.join([*pieces, after])


_json_string = json.encoder.encode_basestring_ascii  # json.dumps's own, in C


def indented_json(value: Any, newline: str = '\n') -> str:
    """json.dumps(value, indent=2, allow_nan=False), each line after the first
    starting with `newline`'s indentation, in a third of the time: json has no
    C encoder for indented text.  Anything but str keys, str, int, finite float,
    bool, None, list, tuple and dict goes to json.dumps, which says the same."""
    try:
        return _indented(value, newline)
    except TypeError:  # from _indented, or from _json_string given a key that is not a str
        text = json.dumps(value, indent=2, allow_nan=False)
        return text.replace('\n', newline)


def _indented(value: Any, newline: str) -> str:
    kind = type(value)
    if kind is str:
        return _json_string(value)
    if kind is dict or kind is list or kind is tuple:
        if not value:
            return '{}' if kind is dict else '[]'
        inner = newline + '  '
        if kind is dict:
            items = [_json_string(k) + ': ' + _indented(v, inner) for k, v in value.items()]
            return '{' + inner + (',' + inner).join(items) + newline + '}'
        items = [_indented(v, inner) for v in value]
        return '[' + inner + (',' + inner).join(items) + newline + ']'
    if value is None or value is True or value is False:
        return 'null' if value is None else ('true' if value else 'false')
    if kind is int or (kind is float and math.isfinite(value)):
        return repr(value)
    raise TypeError(kind)


def _suggestion_cell(d: MetricDiagnosis) -> str | None:
    if d.suggested_rtol is not None:
        return f'{d.suggested_rtol:g}'  # shortest form: 0.031, 1.2e-07, 0
    if d.suggested_atol is not None:
        return f'atol {d.suggested_atol:g}'  # R0 is 0: no relative tolerance helps
    return None


def _diagnosis_note(d: MetricDiagnosis) -> str:
    if d.ignored:
        return 'ignored'
    if d.points > 1 and d.first_disagreeing_step is not None:
        return f'repetitions differ from step {d.first_disagreeing_step}'
    return ''


def diagnosis_rows(diagnoses: Sequence[MetricDiagnosis]) -> Rows:
    rows = [
        [
            d.key,
            d.reference,
            d.minimum,
            d.maximum,
            d.stdev,
            d.classification,
            _suggestion_cell(d),
            _diagnosis_note(d),
        ]
        for d in diagnoses
    ]
    headers = ['Metric', 'Run1', 'min', 'max', 'stdev', 'class', 'suggested rtol', 'Note']
    return _with_notes(headers, rows)


def diagnosis_lines(diagnoses: Sequence[MetricDiagnosis], tablefmt: str) -> list[str]:
    """The diagnosis table ('psql' for the table report, 'github' for
    Markdown), then the ready-to-paste flags when anything was not reproducible."""
    lines = [_table(diagnosis_rows(diagnoses), tablefmt)]
    flags = suggested_flags(diagnoses)
    heading = 'Tolerances under which every repetition equals the reference:'
    if flags and tablefmt == 'github':
        lines += ['', heading, '', '```', flags, '```']
    elif flags:
        lines += [heading, flags]
    return lines


def _diagnosis_json(d: MetricDiagnosis) -> dict[str, Any]:
    return {
        'key': d.key,
        'reference': _json_float(d.reference),
        'min': _json_float(d.minimum),
        'max': _json_float(d.maximum),
        'mean': _json_float(d.mean),
        'stdev': _json_float(d.stdev),
        'classification': d.classification,
        'suggested_rtol': d.suggested_rtol,
        'suggested_atol': d.suggested_atol,
        'ignored': d.ignored,
        'first_disagreeing_step': d.first_disagreeing_step,
    }


@dataclasses.dataclass(frozen=True)
class BatchReport(Outcome):
    reports: tuple[Report, ...]
    skipped: tuple[dict[str, str], ...] = ()
    batch_run_id: str | None = None
    message: str | None = None  # why the batch could not start at all
    repeats: tuple[Repeat, ...] = ()  # with --repeat: one diagnosis per reference run
    dry_run: bool = False
    repeat_of: str | None = None  # --repeat of a single reference run: its ID
    leftovers: tuple[dict[str, str], ...] = ()  # what close_leftovers cleaned first
    own_reproductions: int = 0  # the tool's own runs the search left out, unlisted

    @property
    def status(self) -> str:
        return 'error' if self.message else worst_status(r.status for r in self.reports)

    def text(self, verbose: bool = False) -> str | None:
        return format_batch_text(self, verbose)

    def markdown(self) -> str:
        if self.message:
            return f'**reproduce_run**: error\n\n> {self.message}'
        return format_batch_markdown(self)

    def json(self) -> dict[str, Any]:
        return batch_json(self)

    def json_text(self) -> str:
        return format_batch_json(self)

    def subject(self) -> str:
        references = len({r.reference_run_id for r in self.reports})
        many = f' ({len(self.reports)} reproductions)' if references < len(self.reports) else ''
        return counted(references, 'run') + many

    def junit_cases(self) -> list[Case]:
        """One testcase per report, or per reference run when it was repeated;
        then one per skipped run."""
        if self.message:  # it could not start
            return [Case(JUNIT_SUITE, 0.0, 'error', self.message)]
        by_reference: dict[str, list[Report]] = {}
        for report in self.reports:
            by_reference.setdefault(report.reference_run_id, []).append(report)
        if self.repeats or self.repeat_of or len(by_reference) < len(self.reports):
            diagnosed = {r.reference_run_id: r for r in self.repeats}
            cases = [repeat_case(rs, diagnosed.get(run_id)) for run_id, rs in by_reference.items()]
        else:
            cases = [report_case(r) for r in self.reports]
        return cases + skipped_cases(self.skipped)

    def parent_run_ids(self) -> list[str]:
        return [self.batch_run_id] if self.batch_run_id else []

    @property
    def equal(self) -> bool:
        """Every reproduction equal (true of none: nothing differs), as exit 0 says."""
        return all(r.status == 'equal' for r in self.reports)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.reports)

    @property
    def not_started(self) -> int:
        """Reproductions a signal kept from starting."""
        return sum(r.status in SIGNAL_STATUSES and r.message == NOT_STARTED for r in self.reports)

    @property
    def stopped(self) -> int:
        """Reproductions a signal ended halfway."""
        return sum(r.status in SIGNAL_STATUSES for r in self.reports) - self.not_started


@dataclasses.dataclass(frozen=True)
class Repeat:
    """The repetitions of one reference run, and what they say together."""

    reference_run_id: str
    parent_run_id: str | None
    reproduced_run_ids: tuple[str, ...]
    diagnoses: tuple[MetricDiagnosis, ...]

    def json(self) -> dict[str, Any]:
        """One entry of the batch document's `repeats` (and its `repeat`)."""
        return {
            'reference_run_id': self.reference_run_id,
            'parent_run_id': self.parent_run_id,
            'n': len(self.reproduced_run_ids),
            'reproduced_run_ids': list(self.reproduced_run_ids),
            'classification': classify_run(self.diagnoses),
            'metrics': [_diagnosis_json(d) for d in self.diagnoses],
        }


def _candidate_text(c: Candidate, value: str | None) -> str:
    """`numkit 1.0`, `OMP_NUM_THREADS 2`; an absent package is not installed,
    an absent variable unset."""
    return f'{c.name} {value or ("not installed" if c.kind == "package" else "unset")}'


def explanation_lines(explanation: Explanation | None, escaped: Escape = shown) -> list[str]:
    """The "Explained:" block, the same in text and Markdown (with values from
    the store escaped by `escaped`): the answer, then each failed probe with
    its error line, then what was not tried."""
    if explanation is None:
        return []
    e, n = explanation, len(explanation.probes)
    probes = f'({counted(n, "probe")})'
    if e.restores_equality is None and n:
        line = f'Explained: no answer: {escaped(e.reason or "")} {probes}'
    elif e.restores_equality is None:
        line = f'Explained: nothing tried: {escaped(e.reason or "")}'
    elif not e.restores_equality:
        line = (
            'Explained: the environment does not explain it: with every difference undone '
            f'the runs still differ {probes}'
        )
    else:
        undone = [escaped(_culprit_text(c, e.requires.get(c.key, ()))) for c in e.culprits]
        line = f"Explained: with the reference's {listing(undone)} the runs are equal"
        if e.innocent:
            kept = [escaped(_candidate_text(c, c.reproduced)) for c in e.innocent]
            line += f'; {listing(kept)} {plural(len(kept), "does", "do")} not matter'
        line += f' {probes}'
    failed = (
        f"- failed: with the reference's {escaped(_changes_text(p['changes']))}: "
        f'{escaped(p["error"] or "no error line")}'
        for p in e.probes
        if 'error' in p
    )
    not_tried = (f'- not tried: {escaped(t["name"])}: {escaped(t["reason"])}' for t in e.not_tried)
    return [line, *failed, *not_tried]


def _culprit_text(c: Candidate, needed: Sequence[Candidate]) -> str:
    """`numkit 1.0`, or `numkit 1.0 (with padkit 1.0, which it needs to load)`."""
    text = _candidate_text(c, c.reference)
    if not needed:
        return text
    with_them = listing([_candidate_text(n, n.reference) for n in needed])
    return f'{text} (with {with_them}, which it needs to load)'


def _changes_text(changes: Mapping[str, str | None]) -> str:
    """A probe's undone differences: `numkit 1.0, OMP_NUM_THREADS unset`."""
    return ', '.join(
        f'{name} {value if value is not None else "unset"}' for name, value in changes.items()
    )


JUNIT_SUITE = 'reproduce_run'  # the one <testsuite>'s name
SHORT_ID_CHARS = 8  # of a run ID, in a testcase's name


@dataclasses.dataclass(frozen=True)
class Case:
    """One JUnit testcase: a reproduction, or a reference run's repetitions."""

    name: str
    seconds: float
    result: str  # 'passed', 'failure', 'error' or 'skipped'
    message: str = ''
    text: str = ''  # the element's text: a table, the project's output
    classname: str | None = None  # the experiment it went to; None: the delivery's


def destination(report: Report) -> str | None:
    """The experiment the reproduction went to (a script run's own by default)."""
    return report.plan.experiment_name if report.plan else None


def case_experiment(report: Report) -> str | None:
    """A testcase's classname: the experiment its reproduced run went to (or
    would go to, planned); the reference run's own when none was made."""
    if report.reproduced_run_id or report.status == 'planned':
        return destination(report) or report.reference_experiment
    return report.reference_experiment or destination(report)


def case_name(report: Report) -> str:
    """The reference run's name and short ID."""
    short = report.reference_run_id[:SHORT_ID_CHARS]
    name = report.reference_run_name or report.model
    return f'{name} ({short})' if name else short


def differing_message(report: Report) -> str:
    """The metrics and params that differ, each metric's first divergence included."""
    parts = []
    for m in report.verdict.metrics if report.verdict else ():
        if m.equal or m.ignored:
            continue
        diverged = m.points > 1 and m.first_divergent_step is not None
        where = f' from step {m.first_divergent_step}' if diverged else ''
        parts.append(f'{m.key} differs{where} (latest {m.reference} vs {m.reproduced})')
    for p in report.verdict.params if report.verdict else ():
        if not p.equal:
            parts.append(f'param {p.key} differs ({p.reference!r} vs {p.reproduced!r})')
    return '; '.join(parts) or 'the runs differ'


def report_case(report: Report) -> Case:
    case = functools.partial(
        Case, case_name(report), report.seconds, classname=case_experiment(report)
    )
    if report.status in ('equal', 'planned'):
        return case('passed')
    if report.status == 'differ':
        return case('failure', differing_message(report), format_text(report))
    message = report.message or report.status
    if report.status in SIGNAL_STATUSES:
        message = f'{report.status}: {report.message or "stopped while running"}'
    return case('error', message, '\n'.join(report.output_tail))


def repeat_case(reports: Sequence[Report], repeat: Repeat | None) -> Case:
    """A reference run's repetitions as one testcase, with their classification."""
    where = next(filter(None, map(case_experiment, reports)), None)
    case = functools.partial(
        Case, case_name(reports[0]), sum(r.seconds for r in reports), classname=where
    )
    classification = classify_run(repeat.diagnoses) if repeat else FAILED_CLASS
    table = '\n'.join(diagnosis_lines(repeat.diagnoses, 'psql')) if repeat else ''
    unfinished = [r for r in reports if r.status not in JUDGED_STATUSES]
    if unfinished:
        first = unfinished[0]
        message = (
            f'{classification}: {len(unfinished)} of {len(reports)} repetitions did not '
            f'finish; {first.status}: {first.message or "stopped while running"}'
        )
        return case('error', message, table or '\n'.join(first.output_tail))
    if classification == REPRODUCIBLE:
        return case('passed', text=f'classification: {classification}\n{table}')
    differing = sorted({m for r in reports if r.status == 'differ' for m in _differing_keys(r)})
    message = f'{classification}: {", ".join(differing) or "the repetitions differ"}'
    return case('failure', message, table)


def skipped_cases(skipped: Iterable[Mapping[str, str]]) -> list[Case]:
    """A skipped testcase for each run a selection left out, with the reason,
    in its experiment."""
    return [
        Case(
            s['run_id'][:SHORT_ID_CHARS], 0.0, 'skipped', s['reason'], classname=s.get('experiment')
        )
        for s in skipped
    ]


# ---------------------------------------------------------------------------
# Recording the verdict on the reproduced run.


_UNSAFE_FILE_CHARS_RE = re.compile(r'[^A-Za-z0-9_.-]')


def _hashed_plot_name(key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f'{_UNSAFE_FILE_CHARS_RE.sub("_", key)[:PLOT_NAME_CHARS]}-{digest}.png'


def plot_names(keys: Sequence[str]) -> dict[str, str]:
    """A file name for each metric's plot, no two alike even on a case-
    insensitive file system.  A key that is a safe file name as it is keeps
    it; any other key (`a b`, `a/b`), or one that would still collide, gets a
    short hash of itself."""
    names = {
        k: k + '.png'
        if not _UNSAFE_FILE_CHARS_RE.search(k) and len(k) <= PLOT_NAME_CHARS
        else _hashed_plot_name(k)
        for k in keys
    }
    taken = collections.Counter(name.casefold() for name in names.values())
    return {
        k: _hashed_plot_name(k) if taken[name.casefold()] > 1 else name for k, name in names.items()
    }


def make_plots(
    verdict: Verdict,
    reference: Mapping[str, Sequence[Point]],
    reproduced: Mapping[str, Sequence[Point]],
    folder: str,
) -> list[str]:
    """A PNG for each differing metric that has a history to look at."""
    wanted = [m for m in verdict.metrics if not m.equal and not m.ignored and m.points > 1]
    if not wanted:
        return []
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = plot_names([m.key for m in verdict.metrics])
    paths = []
    for m in wanted:
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, history, style in (
            ('reference (Run1)', reference.get(m.key, ()), '-'),
            ('reproduced (Run2)', reproduced.get(m.key, ()), '--'),
        ):
            points = sorted(history, key=lambda p: p[0] or 0)
            ax.plot([p[0] for p in points], [p[1] for p in points], style, marker='.', label=label)
        if (step := m.first_divergent_step) is not None:
            ax.axvline(step, color='red', linewidth=1, label=f'first divergence (step {step})')
        ax.set(title=m.key, xlabel='step', ylabel=m.key)
        ax.legend()
        path = os.path.join(folder, names[m.key])
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def _run_link(client: MlflowClient, report: Report) -> str:
    """A link to the reference run that the MLflow UI resolves, relative to
    the page showing it."""
    run_id = report.reference_run_id
    reference = report.plan.reference if report.plan else client.get_run(run_id)
    return f'#/experiments/{reference.info.experiment_id}/runs/{run_id}'


def record_verdict(
    client: MlflowClient, report: Report, plots: bool, log_path: str | None = None
) -> None:
    """Tags, description and artifacts on the reproduced run, where people
    look in the MLflow UI: the JSON report, the project's output and plots
    (of the report's histories).  The reference run is never written to."""
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
            TAG_NOTE: describe(report, _run_link(client, report)),
        }
        if report.prefix is not None:
            tags[TAG_PREFIX] = json.dumps(report.prefix.json(), sort_keys=True)
        try:
            client.log_batch(run_id, tags=[RunTag(k, fit_tag(v)) for k, v in tags.items()])
        except Exception:  # the server may fail this one endpoint: one tag at a time
            for k, v in tags.items():
                client.set_tag(run_id, k, fit_tag(v))
        with tempfile.TemporaryDirectory(prefix=tool_tmp_prefix()) as folder:
            path = os.path.join(folder, COMPARISON_ARTIFACT)
            with open(path, 'w') as f:
                f.write(report.json_text())
            client.log_artifact(run_id, path, ARTIFACT_DIR)
            if log_path and os.path.exists(log_path):
                client.log_artifact(run_id, log_path, ARTIFACT_DIR)
            if plots and report.verdict and report.histories:
                plot_dir = os.path.join(folder, 'plots')
                os.mkdir(plot_dir)
                if make_plots(report.verdict, *report.histories, plot_dir):
                    client.log_artifacts(run_id, plot_dir, f'{ARTIFACT_DIR}/plots')
    except Exception as e:  # the verdict stands; say that it is not recorded
        warn(f'could not record the verdict on run {run_id}: {server_failure(e)}')


# ---------------------------------------------------------------------------
# The pipeline: one reference run in, one report out.


def check_command(plan: Plan, allow_unsafe: bool) -> None:
    """Refuse to let a param value run as shell code (a script's arguments
    are a list, never parsed by a shell)."""
    unsafe = None if plan.script else unsafe_params(plan.command, plan.params.passed)
    if not unsafe:
        return
    placeholder = unsafe[0]
    key, value = placeholder.key, plan.params.passed[placeholder.key]
    excerpt = value if len(value) <= 60 else value[:57] + '...'
    why = (
        f'entry point {plan.entry_point!r} puts {placeholder.text} {placeholder.context} '
        f"in its command {plan.command!r}, which undoes MLflow's quoting, and the value "
        f'of {key!r} ({excerpt!r}) contains shell metacharacters'
    )
    if not allow_unsafe:
        raise ReproduceError(f'{why}: refusing to run it (--allow-unsafe-command runs it anyway)')
    warn(f'{why}: running it because of --allow-unsafe-command')


def judge_runs(
    session: Session,
    reference: Run,
    other: Run,
    param_keys: Sequence[str],
    stopped_by: str | None = None,
    killed: bool = True,
) -> tuple[Verdict, Prefix | None, tuple[dict[str, list[Point]], dict[str, list[Point]]]]:
    """The verdict on two runs' whole histories, or, for a reproduction
    stopped early, on what both reached (and what that covers)."""
    from mlflow.exceptions import MlflowException

    rules = session.options.rules
    for pattern in rules.unmatched(sorted({*reference.data.metrics, *other.data.metrics})):
        warn(f'{pattern!r} matches no metric of either run')
    try:
        reference_histories, other_histories = read_histories(
            session.client, (reference, other), session.options.last_only
        )
    except MlflowException as e:
        raise _mlflow_error('cannot read the metric histories', e) from None
    ref_params, other_params = _unquoted(reference.data.params), _unquoted(other.data.params)
    params = [ParamVerdict(k, ref_params.get(k), other_params.get(k)) for k in sorted(param_keys)]
    histories = (reference_histories, other_histories)
    if stopped_by is None:
        return judge(*histories, rules, params), None, histories
    options = session.options
    upto = options.steps if stopped_by == '--steps' else None
    label = {
        '--steps': f'--steps {options.steps}',
        '--time-limit': f'--time-limit {duration_text(options.time_limit or 0)}',
    }.get(stopped_by, stopped_by)
    if killed:  # a param a stopped script had not logged yet is not known to differ
        params = [p for p in params if p.reproduced is not None]
    # the histories as judged: --bisect's commits and the plots see what was compared
    return judge_prefix(*histories, rules, upto, label, params, killed)


def _verdict_report(verdict: Verdict, **fields: Any) -> Report:
    return Report(status='equal' if verdict.equal else 'differ', verdict=verdict, **fields)


def compare_to(session: Session, run_id: str, other_id: str) -> Report:
    """Judge two existing runs; nothing runs and nothing is written."""
    reference = read_reference(session.client, run_id, session.tracking_uri)
    other = read_reference(session.client, other_id, session.tracking_uri)
    keys = sorted({*reference.data.params, *other.data.params})
    options = session.options
    verdict, _, _ = judge_runs(session, reference, other, keys)
    return _verdict_report(
        verdict,
        reference_run_id=reference.info.run_id,
        reproduced_run_id=other.info.run_id,
        rules=options.rules,
        reference_run_name=reference.info.run_name,
        reference_status=reference.info.status,
        differences=differences_between(
            session.client, reference, other, options.rules, compared_runs=True
        ),
    )


def refuse_nul_bytes(params: Mapping[str, str], run_id: str) -> None:
    """A NUL byte ends a C string: no command line, environment or MLflow
    param can carry it, so the reproduction could only fail."""
    for key, value in sorted(params.items()):
        if '\x00' in value:
            raise ReproduceError(
                f'param {key!r} of run {run_id} holds a NUL byte, which no command line can '
                'carry: the run cannot be reproduced with its params'
            )


def make_plan(
    options: Options, reference: Run, source: Source, project_dir: str, backend: Backend = Backend()
) -> Plan:
    if is_script_run(reference):  # any param may become one of its arguments
        refuse_nul_bytes(reference.data.params, reference.info.run_id)
        return plan_script(options, reference, source, project_dir, backend)
    tags = reference.data.tags
    entry_point = options.entry_point or tags.get(TAG_ENTRY_POINT) or DEFAULT_ENTRY_POINT
    spec, declared = load_entry_point(project_dir, entry_point, source.version)
    params = select_params(tuple(spec.parameters) if declared else None, reference.data.params)
    refuse_nul_bytes(params.passed, reference.info.run_id)
    # MLflow records no env manager tag for local; docker projects ignore the manager.
    recorded = tags.get(TAG_PROJECT_ENV)
    return Plan(
        reference=reference,
        source=source,
        project_dir=project_dir,
        entry_point=entry_point,
        env_manager=options.env_manager or (recorded if recorded in ENV_MANAGERS else 'local'),
        experiment_name=options.experiment_name or 'Default',
        params=params,
        logged_params=params_to_log(spec, params),
        command=spec.command,
        backend=backend,
        reference_backend=tags.get(TAG_BACKEND),
    )


@dataclasses.dataclass
class _Progress:
    """What a reproduction has learnt so far: the report of one that stops
    halfway still names its reproduced run."""

    reference_run_id: str  # as given
    rules: Rules  # the tolerances asked for, which every ending reports
    reference: Run | None = None
    plan: Plan | None = None
    run_id: str | None = None  # the reproduced run's
    output_tail: tuple[str, ...] = ()
    log_path: str | None = None
    histories: tuple[dict[str, list[Point]], dict[str, list[Point]]] | None = None

    def fields(self) -> dict[str, Any]:
        """What a report says of it, however the reproduction ends."""
        info = self.reference.info if self.reference else None
        return dict(
            reference_run_id=self.reference_run_id,
            reproduced_run_id=self.run_id,
            rules=self.rules,
            plan=self.plan,
            output_tail=self.output_tail,
            reference_run_name=info.run_name if info else None,
            reference_status=info.status if info else None,
        )


def reproduce_one(
    session: Session,
    run_id: str,
    index: int = 0,
    parent_run_id: str | None = None,
    reference: Run | None = None,
) -> Report:
    """Reproduce one reference run and judge it.  Never raises: every outcome
    is a report, recorded on the reproduced run whenever that run exists.
    `reference`: the run as a batch already read it (else it is read here)."""
    started = time.monotonic()
    progress = _Progress(run_id, session.options.rules, reference)
    # A batch's dry run writes nothing of its own: its plans read the shared sources.
    shared = session.batch and session.options.dry_run
    tmp_dir = session.tmp_root if shared else tempfile.mkdtemp(prefix='run-', dir=session.tmp_root)
    try:
        report = _reproduce(session, index, parent_run_id, tmp_dir, progress)
    except Stopped as e:
        report = _unfinished(progress, e.status, f'{e.status} by a signal')
    except CannotGuess as e:
        report = dataclasses.replace(_unfinished(progress, 'error', str(e)), cannot_guess=True)
    except ReproduceError as e:
        status = session.stop.status if session.stop.event.is_set() else 'error'
        report = _unfinished(progress, status, str(e))
    except Exception as e:  # a failure we did not foresee: still one line
        if session.options.verbose:
            import traceback

            traceback.print_exc()
        report = _unfinished(progress, 'error', unexpected_failure(type(e).__name__, str(e)))
    report = dataclasses.replace(
        report,
        seconds=time.monotonic() - started,
        histories=progress.histories,
        reference_experiment=_reference_experiment(session, report, progress.reference),
    )
    if report.reproduced_run_id:
        record_verdict(session.client, report, session.options.plots, progress.log_path)
    if not shared:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return report


def _reference_experiment(session: Session, report: Report, reference: Run | None) -> str | None:
    """The reference run's experiment, for a report that made no reproduced
    run (its JUnit testcase's classname); None when unknown, or after a signal."""
    if report.reproduced_run_id or reference is None or session.stop.event.is_set():
        return None
    try:
        return experiment_name_of(session, reference.info.experiment_id)
    except Exception:  # the report says what failed; the classname falls back
        return None


def _unfinished(progress: _Progress, status: str, message: str) -> Report:
    """The report of a reproduction that ended before its verdict."""
    return Report(status, message=mask_credentials(message), **progress.fields())


def _reproduce(
    session: Session, index: int, parent_run_id: str | None, tmp_dir: str, progress: _Progress
) -> Report:
    options, client, run_id = session.options, session.client, progress.reference_run_id
    reference = progress.reference = read_reference(
        client, run_id, session.tracking_uri, progress.reference
    )
    source = resolve_source(reference, options.uri, options.version)
    source = reachable_source(reference, source, options.uri)
    try:
        project_dir, commit = checkout(session, source, os.path.join(tmp_dir, 'src'))
    except ReproduceError as e:
        if _NO_SPACE_RE.search(str(e)):  # the remote is not the trouble
            raise
        raise ReproduceError(str(e) + _remote_hint(reference, source, options.uri)) from None
    source = dataclasses.replace(source, version=commit)
    plan = progress.plan = make_plan(options, reference, source, project_dir, session.backend)
    marker = f'{session.marker}.{index}'
    if plan.script is not None:
        plan = progress.plan = complete_script_plan(session, plan, tmp_dir, marker)
    check_command(plan, options.allow_unsafe_command)
    validate_backend_project(plan)
    check_env_manager(plan)
    warn_about_reference_backend(plan)
    warn_about_changes(run_id, source.changes)
    if options.dry_run:
        return Report(status='planned', **progress.fields())
    session.stop.check()
    echo = options.verbose or not (session.batch or options.quiet)
    prefix = f'[{run_id[:8]}] ' if session.batch else ''
    output = ProjectOutput(os.path.join(tmp_dir, OUTPUT_ARTIFACT), echo, prefix)
    progress.log_path = output.log_path
    if plan.backend.name == DEFAULT_BACKEND:
        try:
            run = create_reproduced_run(session, plan, parent_run_id)
            progress.run_id = run.info.run_id
            log_reproduced_params(session, plan, run.info.run_id)
        except BaseException:
            output.close()  # nothing will write to it: end its thread
            raise
        _say_what_runs(session, plan, run.info.run_id)
        launch = run_project(session, plan, run, tmp_dir, marker, output)
    else:
        launch = run_on_backend(session, plan, parent_run_id, tmp_dir, marker, output, progress)
    new_id = progress.run_id
    assert new_id is not None
    progress.output_tail = launch.output_tail
    registrations = registrations_of(
        client, new_id, scratch_registry(tmp_dir), options.keep_registrations
    )
    fields = dict(progress.fields(), registrations=registrations)
    if launch.environment is not None:  # a failed run's too: it may be why
        record_environment(client, new_id, launch.environment)
    if launch.returncode != 0:
        last = project_error_line(launch.output_tail)
        return Report(
            status='failed',
            **fields,
            message=f'the reproduced run {new_id} failed (exit status {launch.returncode})'
            + (f'; its last error: {last}' if last else '')
            + experiment_mismatch_hint(plan, launch.output_tail)
            + (f'; {launch.output_lost}' if launch.output_lost else ''),
        )
    if launch.output_lost:  # the tool's own failure, not the project's
        message = f'the reproduced run {new_id} ran to its end, but {launch.output_lost}'
        return Report(status='error', **fields, message=message)
    reproduced, verdict, prefix, progress.histories = judge_reproduction(
        session, reference, new_id, plan, launch
    )
    if prefix is not None and prefix.steps is None and _first_differing(verdict) is None:
        return Report(status='error', **fields, prefix=prefix, message=nothing_compared(prefix))
    differences = differences_between(
        client,
        reference,
        reproduced,
        options.rules,
        other_environment=(launch.environment, 'reproduction') if launch.environment else None,
        uri_overridden=options.uri is not None,
        version_overridden=options.version_by
        if options.version is not None and commit != reference.data.tags.get(TAG_GIT_COMMIT)
        else None,
    )
    return _verdict_report(verdict, differences=differences, prefix=prefix, **fields)


def nothing_compared(prefix: Prefix) -> str:
    """The error of a reproduction stopped early before any point to compare."""
    within = prefix.stopped_by.removeprefix('--time-limit ')
    if within == prefix.stopped_by:
        return f'nothing to compare: stopped by {prefix.stopped_by} before any point'
    return f'nothing to compare within {within}: no metric was logged by then (run KILLED)'


def judge_reproduction(
    session: Session, reference: Run, run_id: str, plan: Plan, launch: Launch | None = None
) -> tuple[Run, Verdict, Prefix | None, tuple[dict[str, list[Point]], dict[str, list[Point]]]]:
    """Read the finished run back and judge it; a failure here is not the
    project's: say that the run ran and its metrics could not be read."""
    try:
        reproduced = session.client.get_run(run_id)
        # A script logs its params itself: every param either run logged; a
        # project's are those its entry point declares, as MLflow logs them.
        keys = [*{**reference.data.params, **reproduced.data.params}] if plan.script else None
        return reproduced, *judge_runs(
            session,
            reference,
            reproduced,
            keys or [*plan.logged_params],
            launch and launch.stopped_by,
            launch is None or launch.killed,
        )
    except ReproduceError as e:
        detail = str(e).split(': ', 1)[-1]
    except Exception as e:
        detail = _mlflow_error('', e).args[0].lstrip(': ')
    raise ReproduceError(
        f'the reproduced run {run_id} ran, but its metrics could not be read back: {detail}'
    )


def experiment_mismatch_hint(plan: Plan, tail: Sequence[str]) -> str:
    """MLflow's 'active experiment ID does not match environment run ID',
    said plainly: the script sets its own experiment."""
    if plan.script is None or not any('does not match environment run ID' in t for t in tail):
        return ''
    return (
        f'; the script sets its own experiment with mlflow.set_experiment(), so it cannot log '
        f'into experiment {plan.experiment_name!r}: drop --experiment_name to reproduce it in '
        f"the reference run's experiment"
    )


def project_error_line(tail: Sequence[str]) -> str:
    """The project's own last error: the exception line that ends a Python
    traceback when there is one, else its last line of output (MLflow's log
    lines and chatter are not the project's)."""
    lines = [
        line
        for line in tail
        if line.strip()
        and not _MLFLOW_LOG_LINE_RE.match(line)
        and not _MLFLOW_CHATTER_RE.match(line)
    ]
    errors = [line for line in lines if _EXCEPTION_LINE_RE.match(line)]
    return errors[-1] if errors else (lines[-1] if lines else '')


# ---------------------------------------------------------------------------
# Groups of reproductions: the engine that batch, --repeat, --bisect and
# --explain run on.  A planner says what to reproduce next from the results so
# far; the engine runs at most --jobs reproductions at once, shares their fetched
# sources, stops them on a signal, nests them under parent runs and returns what
# the group found; the planner makes its mode's report of that, recorded on them.


@dataclasses.dataclass(frozen=True)
class Probe:
    """One reproduction a planner asks for."""

    run_id: str | None  # the reference run; None when `error` says why there is none
    label: str = ''  # how it was named, e.g. 'models:/churn@champion (version 3)'
    error: str | None = None  # it cannot be reproduced: reported, never run
    name: str | None = None  # the reference run's name, when the selection read it
    version: str | None = None  # a commit or version instead of --version / the recorded one
    version_by: str = '--version'  # what chose it, as a report says
    environ: tuple[tuple[str, str | None], ...] = ()  # set (None: unset) for the project
    nested: bool = False  # under a parent run of its reference, below the group's
    parent_run_id: str | None = None  # under this existing run instead of the group's
    searched: bool = False  # chosen by --from-experiment's search: skipped if CannotGuess
    # the reference run as read before (else its reproduction reads it);
    # dropped when the probe ends, so that a big group does not keep every run
    reference: Run | None = dataclasses.field(default=None, compare=False, repr=False)


Result = tuple[Probe, Report]


def skips(probe: Probe, report: Report) -> bool:
    """A run chosen by search is skipped, not an error, when reproducing it
    needs a choice that only the user can make (CannotGuess)."""
    return probe.searched and report.cannot_guess


class Planner:
    """What a mode decides; the engine does the rest.  next_probes() is asked
    first with no results, then again as each reproduction ends, with every
    result so far in the order the reproductions ended; it returns [] while
    it waits for more results, and the group ends when nothing runs and it
    plans nothing more."""

    total: int | None = None  # the probes it will plan, when known ahead: [i/total]
    total_is_a_bound = False  # total is the most it may plan: [probe i of at most total]

    def next_probes(self, results: Sequence[Result]) -> list[Probe]:
        raise NotImplementedError

    def kept(self, report: Report) -> Report:
        """What the group keeps of a report once it is recorded (all of it)."""
        return report

    def rest(self) -> list[Probe]:
        """After a signal: the probes it would still have planned, which the
        engine reports as not started (none)."""
        return []

    def create_parent(self, session: Session) -> str | None:
        """The group's parent run, made before anything starts (None: none)."""
        return None

    def create_nested_parent(self, session: Session, run_id: str, parent: str | None) -> str:
        """The parent run of a reference's nested probes, made when the first starts."""
        raise NotImplementedError

    def report(self, group: Group) -> Outcome:
        """The mode's own report of what the group found."""
        raise NotImplementedError

    def records(self, report: Any, group: Group) -> list[GroupRecord]:
        """What each parent run gets at the end, from the report."""
        return []


@dataclasses.dataclass(frozen=True)
class GroupRecord:
    """What a parent run gets when its group ends."""

    run_id: str
    what: str  # named in the warning when it cannot be recorded
    note: str  # the run's description
    artifact: str  # a JSON document's file name, under ARTIFACT_DIR
    text: str
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Group:
    """A group that ran: every probe with its report, in planning order, and its parent runs."""

    results: tuple[Result, ...]
    parent_run_id: str | None
    nested_parents: Mapping[str, str]  # reference run ID -> its nested parent run
    dry_run: bool = False
    leftovers: tuple[dict[str, str], ...] = ()  # what close_leftovers cleaned before it


class _GroupProgress:
    """One line on standard error as each reproduction starts and ends, each
    naming the reference run in full with its name; --quiet keeps only a
    line for each reproduction that failed or could not start."""

    def __init__(self, quiet: bool, bound: bool = False) -> None:
        self.total, self.quiet, self.bound = 0, quiet, bound
        self._lock = threading.Lock()

    def counter(self, index: int) -> str:
        """'[3/12]'; for a bisection, whose probes depend on what they find,
        '[probe 3 of at most 7]'."""
        if self.bound:
            return f'[probe {index + 1} of at most {self.total}]'
        return f'[{index + 1}/{self.total}]'

    def _print(self, text: str) -> None:
        with self._lock:
            print(shown(text), file=sys.stderr, flush=True)

    def start(self, index: int, probe: Probe, name: str) -> None:
        if not self.quiet:
            model = f' {probe.label}' if probe.label and probe.label != name else ''
            self._print(f'{self.counter(index)} {_named(probe.run_id or "", name)}{model} started')

    def end(self, index: int, report: Report, skipped: bool = False) -> None:
        if not self.quiet:
            new = f' -> {report.reproduced_run_id}' if report.reproduced_run_id else ''
            why = f': {report.message}' if report.status == 'error' and report.message else ''
            ref = _named(report.reference_run_id, report.reference_run_name)
            status = 'skipped' if skipped else report.status
            ended = f'{status} in {report.seconds:.0f} s{new}{why}'
            self._print(f'{self.counter(index)} {ref} {ended}')
        elif report.status in ('failed', 'error') and not skipped:
            message = report.message or report.status
            self._print(f'{program_name()}: {report.status}: {report.reference_run_id}: {message}')


def _named(run_id: str, name: str | None) -> str:
    return f'{run_id} ({shown(name)})' if name else run_id


def _reference_name(session: Session, probe: Probe) -> str:
    """The reference run's name for the progress lines: the search's, else read."""
    if probe.name is not None or session.options.quiet:
        return probe.name or ''
    try:
        return session.client.get_run(probe.run_id).info.run_name or ''
    except Exception:  # its reproduction says why it cannot be read
        return ''


class _Parents:
    """A group's parent runs: its own, made before anything starts (so that
    an empty night is recorded too), and one per reference of its nested
    probes, made when the first of them starts.  A dry run makes none."""

    def __init__(self, session: Session, planner: Planner) -> None:
        self.session, self.planner = session, planner
        self._lock = threading.Lock()
        self.nested: dict[str, str] = {}
        self._dry = session.options.dry_run
        self.own = None if self._dry else planner.create_parent(session)

    def parent_for(self, probe: Probe) -> str | None:
        if self._dry:
            return None
        if probe.parent_run_id or not probe.nested or probe.run_id is None:
            return probe.parent_run_id or self.own
        with self._lock:
            if probe.run_id not in self.nested:
                self.nested[probe.run_id] = self.planner.create_nested_parent(
                    self.session, probe.run_id, self.own
                )
            return self.nested[probe.run_id]


def _probe_session(session: Session, probe: Probe) -> Session:
    """The session a probe runs in: its own version and environment, if any."""
    if probe.version is None and not probe.environ:
        return session
    options = session.options
    if probe.version is not None:
        options = dataclasses.replace(options, version=probe.version, version_by=probe.version_by)
    environ = {**session.user_environ, **dict(probe.environ)}
    return dataclasses.replace(
        session, options=options, user_environ={k: v for k, v in environ.items() if v is not None}
    )


def _run_probe(
    session: Session, parents: _Parents, progress: _GroupProgress, index: int, probe: Probe
) -> Report:
    model = probe.label if probe.label.startswith('models:') else None  # not a name or prefix
    unstarted = _Progress(probe.run_id or probe.label, session.options.rules)
    if probe.run_id is None:
        report = dataclasses.replace(_unfinished(unstarted, 'error', probe.error), model=model)
        if not session.options.quiet:  # --quiet prints its own line for it
            print(f'{program_name()}: error: {shown(probe.error)}', file=sys.stderr, flush=True)
        progress.end(index, report)
        return report
    if session.stop.event.is_set():  # start nothing new after a signal
        report = _unfinished(unstarted, session.stop.status, NOT_STARTED)
        return dataclasses.replace(report, model=model)
    name = _reference_name(session, probe)
    progress.start(index, probe, name)
    try:
        parent = parents.parent_for(probe)
    except ReproduceError as e:
        report = _unfinished(unstarted, 'error', str(e))
        report = dataclasses.replace(report, reference_run_name=name or None)
    else:
        probed = _probe_session(session, probe)
        with warnings_about(f'{progress.counter(index)} {probe.run_id[:SHORT_ID_CHARS]}'):
            report = reproduce_one(probed, probe.run_id, index, parent, probe.reference)
    report = dataclasses.replace(report, model=model)
    progress.end(index, report, skips(probe, report))
    return report


def run_group(session: Session, planner: Planner) -> Group:
    """Run what the planner plans, --jobs at a time, under its parent runs:
    what the group found."""
    from concurrent.futures import ThreadPoolExecutor

    session = dataclasses.replace(session, batch=True)  # the reproductions share sources
    parents = _Parents(session, planner)
    progress = _GroupProgress(session.options.quiet, planner.total_is_a_bound)
    results: list[Result | None] = []  # in planning order
    done: list[Result] = []  # in the order they ended
    running: dict[Any, list[tuple[int, Probe]]] = {}
    jobs = jobs_the_store_takes(session)

    def run_lane(lane: list[tuple[int, Probe]]) -> list[Report]:
        return [_run_probe(session, parents, progress, index, probe) for index, probe in lane]

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while True:
            for future in [f for f in running if f.done()]:
                lane = running.pop(future)
                for (index, probe), report in zip(lane, future.result(), strict=True):
                    result = (dataclasses.replace(probe, reference=None), planner.kept(report))
                    results[index] = result
                    done.append(result)
            stopped = session.stop.event.is_set()
            new = planner.rest() if stopped and results else planner.next_probes(done)
            first = len(results)
            results += [None] * len(new)
            progress.total = max(planner.total or 0, len(results))
            for lane in _lanes(list(enumerate(new, first)), jobs, session.options.dry_run):
                running[pool.submit(run_lane, lane)] = lane
            if not running:  # each probe planned is in it until it ends: all ended
                break
            wait_for_futures(session, list(running))
    group = Group(
        tuple(r for r in results if r is not None),
        parents.own or next(iter(parents.nested.values()), None),  # else the first nested parent
        dict(parents.nested),
        session.options.dry_run,
        session.leftovers,
    )
    if not group.results:
        warn('no run to reproduce: none was named, and the search chose none')
    return group


def report_group(session: Session, planner: Planner) -> Any:
    """Run the planner's group, then its report: recorded on its parent runs,
    which are closed."""
    group = run_group(session, planner)
    report = planner.report(group)
    record_group(session, group, planner.records(report, group))
    return report


def _lanes(
    probes: list[tuple[int, Probe]], jobs: int, dry_run: bool
) -> list[list[tuple[int, Probe]]]:
    """A thread's task each: one probe, or in a dry run, where a probe only
    plans (ten thousand in seconds), every jobs-th one of them, so that the
    threads hand over a few times, not once a probe."""
    if not dry_run:
        return [[p] for p in probes]
    return [lane for lane in (probes[k::jobs] for k in range(jobs)) if lane]


def jobs_the_store_takes(session: Session) -> int:
    """--jobs, but at most SQLITE_JOBS on an sqlite store: more writers at
    once exhaust MLflow's connection pool and fail reproductions.  Said once."""
    jobs = session.options.jobs
    if jobs > SQLITE_JOBS and session.tracking_uri.startswith('sqlite:'):
        warn(
            f'--jobs {jobs}: the sqlite store takes {SQLITE_JOBS} reproductions at once; '
            f'the others wait their turn'
        )
        return SQLITE_JOBS
    return jobs


def wait_for_futures(session: Session, futures: Sequence[Any]) -> None:
    """Wait in the main thread, where signals arrive, for the first of the
    futures to end; after a signal, end the helper processes (git, pip) at
    once: each reproduction ends its own project and closes its run."""
    from concurrent.futures import FIRST_COMPLETED, wait

    while not wait(futures, timeout=0.2, return_when=FIRST_COMPLETED).done:
        # Every time, not once: a step that fails by the signal may start
        # another (git's fallback fetch), which would wait on a silent remote.
        if session.stop.event.is_set():
            for pid in live_processes(None, session.marker):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)


def create_group_run(
    session: Session, name: str, tags: Mapping[str, str], parent_run_id: str | None = None
) -> str:
    """A parent run that shows many reproductions as one row in the MLflow UI."""
    from mlflow.exceptions import MlflowException

    tags = {**tags, TAG_USER: _user(), TAG_OWNER: tool_owner()}
    if parent_run_id:
        tags[TAG_PARENT_RUN_ID] = parent_run_id
    try:
        run = session.client.create_run(
            _experiment_id(session.client, session.options.experiment_name or 'Default'),
            tags=tags,
            run_name=fit_tag(name),
        )
    except MlflowException as e:
        raise _mlflow_error(f'cannot create the run {name}', e) from None
    return run.info.run_id


def record_group(session: Session, group: Group, records: Sequence[GroupRecord]) -> None:
    """Each parent run gets its record, nested ones first, and every parent
    is closed: FINISHED when the group ran to its end, KILLED after a signal."""
    from mlflow.entities import Metric, RunTag

    closing = 'KILLED' if session.stop.event.is_set() else 'FINISHED'
    by_run = {record.run_id: record for record in records}
    parents = [*group.nested_parents.values(), *filter(None, [group.parent_run_id])]
    for run_id in dict.fromkeys(parents):
        record = by_run.get(run_id)
        if record is not None:
            now = int(time.time() * 1000)
            try:
                session.client.log_batch(
                    run_id,
                    metrics=[Metric(k, v, now, 0) for k, v in record.metrics.items()],
                    tags=[
                        *(RunTag(k, v) for k, v in record.tags.items()),
                        RunTag(TAG_NOTE, fit_tag(record.note)),
                    ],
                )
                session.client.log_text(run_id, record.text, f'{ARTIFACT_DIR}/{record.artifact}')
            except Exception as e:
                warn(f'could not record {record.what} on run {run_id}: {server_failure(e)}')
        close_run(session.client, run_id, closing, session.shared.left_open)


# ---------------------------------------------------------------------------
# Batch: choose the reference runs (--run_id A B, --runs-file, --model,
# --from-experiment), plan each once, and record the batch in MLflow.


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which reference runs to reproduce."""

    run_ids: tuple[str, ...] = ()
    runs_file: str | None = None
    models: tuple[str, ...] = ()
    experiments: tuple[str, ...] = ()
    filter: str = ''
    since_seconds: float | None = None
    max_runs: int = DEFAULT_MAX_RUNS
    order_by: tuple[str, ...] = (DEFAULT_ORDER_BY,)
    sample: int | None = None
    sample_seed: int | None = None
    repeat: int = 1
    bisect: str | None = None  # --bisect: the target commit, '' for the default

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Selection:
        return from_namespace(
            cls,
            args,
            run_ids=tuple(args.run_id or ()),
            models=tuple(args.model),
            experiments=tuple(args.from_experiment),
            filter=args.filter or '',
            since_seconds=args.since,
            order_by=tuple(args.order_by) or (DEFAULT_ORDER_BY,),
            repeat=args.repeat or 1,
        )

    @property
    def is_batch(self) -> bool:
        """A single --run_id keeps the single-run report; anything else is a batch."""
        return (
            len(self.run_ids) != 1
            or self.repeat > 1
            or bool(self.runs_file or self.models or self.experiments)
        )


# A reference run to reproduce, or an explicitly named one that cannot be
# (`error`): a selection chooses the probes that a batch plans.
Chosen = Probe


def read_runs_file(path: str) -> list[str]:
    """Run IDs one per line, '#' starts a comment, '-' is standard input."""
    if path == '-' and sys.stdin is None:  # started with standard input closed (<&-)
        raise ReproduceError('cannot read --runs-file -: standard input is closed')
    try:
        if path == '-':
            text = sys.stdin.read(RUNS_FILE_MAX_BYTES + 1)
        else:
            text = read_regular_file(
                path, f'--runs-file {path}', ': give a file, or - to read standard input'
            )
    except OSError as e:
        raise ReproduceError(f'cannot read --runs-file {path}: {e.strerror}') from None
    except UnicodeDecodeError as e:
        raise ReproduceError(
            f'cannot read --runs-file {path}: it is not text ({e.reason} at byte {e.start})'
        ) from None
    if len(text) > RUNS_FILE_MAX_BYTES:
        raise ReproduceError(
            f'--runs-file {path} is larger than {RUNS_FILE_MAX_BYTES // 2**20} MiB: '
            'split it, or select the runs with --from-experiment'
        )
    ids = [line.split('#', 1)[0].strip() for line in text.splitlines()]
    for run_id in filter(None, ids):
        if not _RUN_ID_RE.match(run_id):
            raise ReproduceError(f'--runs-file {path}: expected an MLflow run ID, got {run_id!r}')
    return [run_id for run_id in ids if run_id]


_MODEL_URI_RE = re.compile(r'models:/([^/@]+)(?:/(\d+)|@([\w-]+))')  # what --model takes


def resolve_model(client: MlflowClient, uri: str) -> Chosen:
    """models:/<name>/<version> or models:/<name>@<alias> -> the version's source run."""
    match = _MODEL_URI_RE.fullmatch(uri)
    if not match:
        return Chosen(
            None, uri, f'{uri!r} is not models:/<name>/<version> or models:/<name>@<alias>'
        )
    name, version, alias = match.groups()
    try:
        found = (
            client.get_model_version(name, version)
            if version
            else client.get_model_version_by_alias(name, alias)
        )
    except Exception as e:
        return Chosen(None, uri, f'model {uri} not found: {_last_line(str(e))}')
    if not found.run_id:
        return Chosen(None, uri, f'model {uri} (version {found.version}) names no source run')
    return Chosen(found.run_id, f'{uri} (version {found.version})')


def _search_filter(selection: Selection) -> str:
    # MLflow's filters are clauses joined by 'and' (no 'or', no parentheses).
    clauses = [selection.filter] if selection.filter else []
    if selection.since_seconds is not None:
        since_ms = int((time.time() - selection.since_seconds) * 1000)
        clauses.append(f'attributes.start_time >= {since_ms}')
    return ' and '.join(clauses)


def is_own_run(run: Run) -> bool:
    """A run this tool made: a reproduction (an --explain probe too), or the
    parent run of a batch, of repetitions or of a bisection."""
    tags = run.data.tags
    return TAG_REFERENCE_RUN_ID in tags or tags.get(TAG_BATCH) == 'true' or TAG_OWNER in tags


def skip_reason(run: Run, uri_given: bool) -> str | None:
    """Why a run found by search (not one of the tool's own) is not
    reproduced, None when it is."""
    if run.info.status != 'FINISHED':
        return f'its status is {run.info.status}, not FINISHED'
    return not_reproducible(run, uri_given)


def skipped_run(run_id: str, reason: str, experiment: str | None) -> dict[str, Any]:
    """A run a selection left out, as the reports list it: with its experiment
    (None: unknown), the classname of its JUnit testcase."""
    return {'run_id': run_id, 'reason': reason, 'experiment': experiment}


@dataclasses.dataclass(frozen=True)
class Selected:
    """What a selection chose, the runs its search skipped (each with why),
    and how many of the tool's own runs the search left out unlisted."""

    chosen: list[Chosen]
    skipped: list[dict[str, str]]
    own_reproductions: int = 0


def search_runs(
    client: MlflowClient, selection: Selection, uri_given: bool, plan_only: bool = False
) -> Selected:
    """Runs of --from-experiment matching --filter and --since, in search
    order, at most --max-runs after skipping (the search stops there); then
    --sample of them.  The tool's own runs are counted, not listed.
    `plan_only` (a dry run): each keeps the run as found, which its plan then
    reads instead of reading the run again."""
    from mlflow.exceptions import MlflowException

    names: dict[str, str] = {}  # experiment ID -> name
    for name in selection.experiments:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise ReproduceError(f'experiment {name!r} (--from-experiment) not found')
        names[experiment.experiment_id] = experiment.name
    chosen: list[tuple[Chosen, str | None]] = []
    skipped: list[dict[str, str]] = []
    own = 0
    found = pages(
        client.search_runs,
        list(names),
        _search_filter(selection),
        order_by=list(selection.order_by),
        max_results=SEARCH_PAGE,
    )
    try:
        for run in itertools.chain.from_iterable(found):  # the next page read when needed
            where = names.get(run.info.experiment_id)
            if is_own_run(run):
                own += 1
            elif reason := skip_reason(run, uri_given):
                skipped.append(skipped_run(run.info.run_id, reason, where))
            else:
                name = run.info.run_name or ''
                kept = without_metrics(run) if plan_only else None
                chosen.append(
                    (Chosen(run.info.run_id, name, name=name, reference=kept, searched=True), where)
                )
                if len(chosen) >= selection.max_runs:
                    break
    except MlflowException as e:
        raise _mlflow_error('cannot search the runs to reproduce', e) from None
    if selection.sample is not None and selection.sample < len(chosen):
        import random

        rng = random.Random(selection.sample_seed)
        keep = set(rng.sample(range(len(chosen)), selection.sample))
        left = [c for i, c in enumerate(chosen) if i not in keep]
        skipped += [skipped_run(c.run_id or '', 'not in the --sample', w) for c, w in left]
        chosen = [c for i, c in enumerate(chosen) if i in keep]
    return Selected([c for c, _ in chosen], skipped, own)


def without_metrics(run: Run) -> Run:
    """What a plan reads of a run: its info, params and tags.  Its latest
    metrics, which a plan does not read, would be most of a big selection's
    memory."""
    from mlflow.entities import Param, Run, RunData, RunTag

    data = run.data
    params = [Param(k, v) for k, v in data.params.items()]
    return Run(run.info, RunData(params=params, tags=[RunTag(k, v) for k, v in data.tags.items()]))


def select_runs(
    client: MlflowClient,
    selection: Selection,
    uri_given: bool,
    tracking_uri: str,
    plan_only: bool = False,
) -> Selected:
    """The union of every selection option, each run once, in the order given."""
    import gc

    # What lives now (the interpreter's, MLflow's and SQLAlchemy's objects) lives
    # as long as the tool: the collector's full passes, one every few pages of a
    # big selection, need not walk it again (1.4 s of 10,000 runs' dry run).
    gc.freeze()
    named = list(selection.run_ids)
    if selection.runs_file:
        named += read_runs_file(selection.runs_file)
    chosen = []
    for run_id in named:  # by ID or ID prefix
        try:
            chosen.append(Chosen(resolve_run_id(client, run_id, tracking_uri)))
        except ReproduceError as e:  # it fails alone
            chosen.append(Chosen(None, run_id, str(e)))
    chosen += [resolve_model(client, uri) for uri in selection.models]
    searched = Selected([], [])
    if selection.experiments:
        searched = search_runs(client, selection, uri_given, plan_only)
        chosen += searched.chosen
    unique: dict[object, Chosen] = {}
    for c in chosen:  # each run once, where first chosen; each unresolved one
        unique.setdefault(c.run_id or id(c), c)
    return dataclasses.replace(searched, chosen=list(unique.values()))


class BatchPlanner(Planner):
    """A batch plans its list in order, at most `window` probes ahead of the
    results; it reads the reference runs READ_BATCH at a time, each batch in
    one search, so that a big selection neither waits for a request per run
    nor holds every run at once.  A run the search does not find (deleted,
    unknown, or the search failed) is read by its reproduction, which says why.
    A run chosen with its reference (a dry run's --from-experiment) is not read
    again.  A list of chosen runs is the planner's: each entry is let go (None)
    once planned, and with it the run the search read."""

    def __init__(
        self,
        chosen: Sequence[Chosen],
        skipped: Sequence[dict[str, str]],
        client: MlflowClient | None = None,
        window: int = READ_BATCH,
        own_reproductions: int = 0,
    ) -> None:
        self.chosen: list[Chosen | None] = chosen if isinstance(chosen, list) else list(chosen)
        self.skipped, self.own_reproductions = tuple(skipped), own_reproductions
        self.client, self.window = client, window
        self.total = len(self.chosen)
        self.planned = 0
        self.stopped = False  # after a signal: the probes left are not read
        self.experiment_ids: list[str] | None = None
        self._probes = self._read_probes()

    def next_probes(self, results: Sequence[Result]) -> list[Probe]:
        room = self.window - (self.planned - len(results))
        new = list(itertools.islice(self._probes, max(room, 0)))
        self.planned += len(new)
        return new

    def _read_probes(self) -> Iterator[Probe]:
        for start in range(0, len(self.chosen), READ_BATCH):
            step = self.chosen[start : start + READ_BATCH]
            self.chosen[start : start + len(step)] = [None] * len(step)  # the probes hold them now
            found = self._read([c.run_id for c in step if c.run_id and c.reference is None])
            for c in step:
                run = c.reference or found.get(c.run_id or '')
                name = c.name if c.name is not None or run is None else run.info.run_name or ''
                yield dataclasses.replace(c, name=name, reference=run)

    def _read(self, run_ids: Sequence[str]) -> dict[str, Run]:
        """The active runs among run_ids, in one search (`attributes.run_id IN`)."""
        wanted = sorted({r for r in run_ids if _RUN_ID_RE.match(r)})
        client = self.client
        if client is None or not wanted or self.stopped:
            return {}
        listed = ', '.join(f"'{r}'" for r in wanted)
        try:
            if self.experiment_ids is None:
                self.experiment_ids = all_experiment_ids(client)
            found = pages(
                client.search_runs,
                self.experiment_ids,
                f'attributes.run_id IN ({listed})',
                max_results=SEARCH_PAGE,
            )
            return {run.info.run_id: run for run in itertools.chain.from_iterable(found)}
        except Exception:  # each reproduction reads its run, and says what fails
            return {}

    def rest(self) -> list[Probe]:
        self.stopped = True
        rest = list(self._probes)
        self.planned += len(rest)
        return rest

    def kept(self, report: Report) -> Report:
        """Not the histories, nor the reference run's data: only what the
        summary and the JSON print."""
        plan = report.plan
        if plan is not None:
            from mlflow.entities import Run, RunData

            plan = dataclasses.replace(plan, reference=Run(plan.reference.info, RunData()))
        return dataclasses.replace(report, plan=plan, histories=None)

    def create_parent(self, session: Session) -> str | None:
        return create_batch_run(session)

    def report(self, group: Group) -> BatchReport:
        skipped = [r for p, r in group.results if skips(p, r)]
        guessed = [
            skipped_run(r.reference_run_id, r.message or '', r.reference_experiment)
            for r in skipped
        ]
        return BatchReport(
            tuple(r for p, r in group.results if not skips(p, r)),
            (*self.skipped, *guessed),
            group.parent_run_id,
            dry_run=group.dry_run,
            leftovers=group.leftovers,
            own_reproductions=self.own_reproductions,
        )

    def records(self, report: BatchReport, group: Group) -> list[GroupRecord]:
        return [batch_record(report, group.parent_run_id)] if group.parent_run_id else []


def create_batch_run(session: Session) -> str:
    return create_group_run(
        session, time.strftime('reproduce-batch-%Y%m%dT%H%M%SZ', time.gmtime()), {TAG_BATCH: 'true'}
    )


def batch_record(batch: BatchReport, run_id: str) -> GroupRecord:
    """Counts as metrics, the summary as description and artifact."""
    counts = {f'runs_{s}': batch.count(s) for s in COUNTED_STATUSES}
    counts.update({f'runs_{s}': n for s, n in unfinished_counts(batch).items()})
    counts['runs_total'] = len(batch.reports)
    return GroupRecord(
        run_id,
        'the batch summary',
        format_batch_markdown(dataclasses.replace(batch, batch_run_id=None)),  # it is this run
        SUMMARY_ARTIFACT,
        format_batch_json(batch),
        metrics=counts,
    )


def run_batch(session: Session, selected: Selected) -> BatchReport:
    """Reproduce every chosen run, --jobs at a time, under one parent run
    (the list is the planner's from now on: see BatchPlanner)."""
    # A dry run's probes only plan: a window of them is each thread's few tasks.
    dry_window = READ_BATCH if session.options.dry_run else 0
    window = max(READ_WINDOW, 2 * session.options.jobs, dry_window)
    planner = BatchPlanner(
        selected.chosen, selected.skipped, session.client, window, selected.own_reproductions
    )
    return report_group(session, planner)


# ---------------------------------------------------------------------------
# Repeat: reproduce each chosen run N times, nested under a parent run per
# reference (a single reference's is the group's own), and diagnose what the
# repetitions say together.


class RepeatPlanner(Planner):
    """A repetition plans N copies of each chosen run."""

    def __init__(
        self,
        chosen: Sequence[Chosen],
        skipped: Sequence[dict[str, str]],
        n: int,
        rules: Rules,
        own_reproductions: int = 0,
    ) -> None:
        self.chosen, self.skipped, self.n, self.rules = tuple(chosen), tuple(skipped), n, rules
        self.own_reproductions = own_reproductions
        self.planned = False

    def next_probes(self, results: Sequence[Result]) -> list[Probe]:
        if self.planned:
            return []
        self.planned = True
        return [
            Probe(c.run_id, c.label, c.error, name=c.name, nested=True)
            for c in self.chosen
            for _ in range(self.n)
        ]

    def create_parent(self, session: Session) -> str | None:
        """Several references nest under one batch run; a single one's
        repetitions nest under its own parent."""
        return create_batch_run(session) if len(self.chosen) > 1 else None

    def create_nested_parent(self, session: Session, run_id: str, parent: str | None) -> str:
        return create_repeat_run(session, run_id, self.n, parent)

    def report(self, group: Group) -> BatchReport:
        reports = tuple(r for _, r in group.results)
        return BatchReport(
            reports,
            self.skipped,
            group.parent_run_id,
            repeats=diagnose_repeats(self.chosen, reports, group.nested_parents, self.rules),
            repeat_of=self.chosen[0].run_id if len(self.chosen) == 1 else None,
            leftovers=group.leftovers,
            own_reproductions=self.own_reproductions,
        )

    def records(self, report: BatchReport, group: Group) -> list[GroupRecord]:
        records = [
            diagnosis_record(
                r.reference_run_id,
                r.parent_run_id,
                self.n,
                diagnosis_lines(r.diagnoses, 'github'),
                r.json(),
            )
            for r in report.repeats
            if r.parent_run_id
        ]
        diagnosed = {r.reference_run_id for r in report.repeats}
        records += [
            failed_repeat_record(run_id, parent, self.n, report.reports)
            for run_id, parent in group.nested_parents.items()
            if run_id not in diagnosed
        ]
        own = group.parent_run_id not in group.nested_parents.values()
        if group.parent_run_id and own:
            records.append(batch_record(report, group.parent_run_id))
        return records


def diagnose_repeats(
    chosen: Sequence[Chosen],
    reports: Sequence[Report],
    parents: Mapping[str, str],
    rules: Rules,
) -> tuple[Repeat, ...]:
    """What the judged repetitions of each reference say together."""
    repeats = []
    for c in chosen:
        judged = [r for r in reports if r.reference_run_id == c.run_id and r.histories]
        if not judged or c.run_id is None:
            continue
        diagnoses = diagnose(judged[0].histories[0], [r.histories[1] for r in judged], rules)
        reproduced = tuple(r.reproduced_run_id or '' for r in judged)
        repeats.append(Repeat(c.run_id, parents.get(c.run_id), reproduced, diagnoses))
    return tuple(repeats)


def create_repeat_run(session: Session, run_id: str, n: int, parent: str | None) -> str:
    """reproduce-repeat-<reference run name>, parent of the repetitions."""
    try:
        name = session.client.get_run(run_id).info.run_name or run_id
    except Exception:  # an unknown run: its repetitions will say so
        name = run_id
    return create_group_run(
        session,
        f'reproduce-repeat-{name}',
        {TAG_REFERENCE_RUN_ID: run_id, TAG_REPEAT: str(n)},
        parent,
    )


def failed_repeat_record(
    run_id: str, parent_run_id: str, n: int, reports: Sequence[Report]
) -> GroupRecord:
    """The parent of repetitions none of which ran to the end: classified
    `failed`, its description says how each ended."""
    lines = ['No repetition ran to the end:', '']
    lines += [
        f'- {r.reproduced_run_id or "no run"}: {r.status}' + (f': {r.message}' if r.message else '')
        for r in reports
        if r.reference_run_id == run_id
    ]
    document = {**Repeat(run_id, parent_run_id, (), ()).json(), 'classification': FAILED_CLASS}
    return diagnosis_record(run_id, parent_run_id, n, lines, document)


def diagnosis_record(
    run_id: str, parent_run_id: str, n: int, lines: list[str], document: dict[str, Any]
) -> GroupRecord:
    """The diagnosis on the repetitions' parent run: its class as a tag, a
    description and the document as diagnosis.json (with the suggested
    tolerances, for a later check)."""
    classification = document['classification']
    note = '\n'.join([f'**Repetitions of run {run_id}** ({n}): {classification}', '', *lines])
    return GroupRecord(
        parent_run_id,
        'the diagnosis',
        note,
        DIAGNOSIS_ARTIFACT,
        indented_json(document),
        tags={TAG_CLASSIFICATION: classification},
    )


# ---------------------------------------------------------------------------
# Bisect: the first commit, on the first-parent path from the reference run's
# commit to a target, whose reproduction no longer equals the reference.  As
# in git's bisect.c, choosing the next commits (next_commits, finding) is pure
# and apart from running them: the planner turns each choice into probes.


TAG_BISECT = 'reproduce.bisect'  # 'true' on the parent run of a bisection
TAG_BISECT_COMMIT = 'reproduce.bisect.commit'  # on each probe: the commit it ran
TAG_FIRST_CHANGED = 'reproduce.first_changed_commit'  # on the parent: first_changed_text()
SHORT_HASH_CHARS = 12  # a commit in a line of text
TAG_GIT_BRANCH = 'mlflow.source.git.branch'
BISECT_ARTIFACT = 'bisect.json'
GOOD, BAD, SKIP = 'unchanged', 'changed', 'skipped'  # what a probed commit says
NOT_REPRODUCED = 'the reference run does not reproduce at its own commit'
REFERENCE_FAILED = 'the reference run cannot be reproduced at its own commit'
TARGET_FAILED = 'the target commit cannot be reproduced'
SERVER_LOST = 'the tracking server stopped answering'  # instead of either above


@dataclasses.dataclass(frozen=True)
class Finding:
    """Where the search stands: indexes into the path (0 the reference
    commit, n the target)."""

    first_changed: int | None
    candidates: tuple[int, ...]
    reason: str | None = None  # why no commit is blamed


def _bounds(n: int, outcomes: Mapping[int, str]) -> tuple[int, int | None]:
    """The last unchanged commit before the first changed one, and that one."""
    bad = [i for i, o in outcomes.items() if o == BAD and i > 0]
    hi = min(bad) if bad else None
    good = [i for i, o in outcomes.items() if o == GOOD and (hi is None or i < hi)]
    return max(good, default=0), hi


def _cuts(untested: Sequence[int], parts: int) -> list[int]:
    """parts - 1 commits that cut the untested ones into `parts` equal parts."""
    if not untested or parts < 2:
        return []
    m = len(untested)
    return sorted({untested[max(0, k * (m + 1) // parts - 1)] for k in range(1, parts)})


def next_commits(n: int, outcomes: Mapping[int, str], jobs: int) -> list[int]:
    """The commits to probe in the next round, [] when the search is over.
    The reference commit first, then the target; with --jobs 2 they run
    together, and more jobs start cutting the path at once."""
    if 0 not in outcomes:
        return [0] if jobs == 1 else [0, n, *_cuts(range(1, n), jobs - 1)]
    if outcomes[0] != GOOD:
        return []
    if n not in outcomes:
        return [n]
    if outcomes[n] == GOOD:
        return []
    lo, hi = _bounds(n, outcomes)
    return _cuts([i for i in range(lo + 1, hi or n) if i not in outcomes], jobs + 1)


@functools.lru_cache(maxsize=4096)
def _most_inside(size: int, jobs: int) -> int:
    """The most commits a search between two commits `size` apart probes,
    whichever of them is the first changed one (no commit skipped)."""
    if size <= 1:
        return 0
    chosen = _cuts(range(1, size), jobs + 1)
    ends = [0, *chosen, size]
    return len(chosen) + max(_most_inside(b - a, jobs) for a, b in itertools.pairwise(ends))


def most_commits(n: int, outcomes: Mapping[int, str], jobs: int) -> int:
    """The most commits a bisection still probes from what it knows, if
    every commit it probes runs: as next_commits chooses, whichever commit
    turns out to be the first changed one."""
    if 0 not in outcomes:
        if jobs == 1:
            return 2 + _most_inside(n, jobs)
        first = next_commits(n, {}, jobs)  # the reference, the target and cuts between
        ends = [0, *first[2:], n]
        return len(first) + max(_most_inside(b - a, jobs) for a, b in itertools.pairwise(ends))
    if not next_commits(n, outcomes, jobs):
        return 0
    if n not in outcomes:
        return 1 + _most_inside(n, jobs)
    lo, hi = _bounds(n, outcomes)
    untested = [i for i in range(lo + 1, hi or n) if i not in outcomes]
    return _most_inside(len(untested) + 1, jobs)


def finding(n: int, outcomes: Mapping[int, str]) -> Finding:
    """What the probes so far say: the first changed commit, or the
    candidates when skipped (or untested) commits leave more than one."""
    if outcomes.get(0) in (BAD, SKIP):
        return Finding(None, (), NOT_REPRODUCED if outcomes[0] == BAD else REFERENCE_FAILED)
    if outcomes.get(n) == GOOD:
        return Finding(None, ())
    lo, hi = _bounds(n, outcomes)
    between = [i for i in range(lo + 1, hi or n + 1) if outcomes.get(i) != GOOD]
    candidates = (*between, hi) if hi is not None else tuple(between)
    if hi is None:
        return Finding(None, candidates, TARGET_FAILED if outcomes.get(n) == SKIP else None)
    return Finding(hi if len(candidates) == 1 else None, candidates)


def commit_outcome(reports: Sequence[Report], reference_params: Sequence[str], rules: Rules) -> str:
    """What a commit's probes say: skipped when none ran to a verdict or the
    entry point's params changed; else whether the metrics changed, as one
    reproduction or --repeat judges them.  Params the code logs are not
    evidence: a commit that adds one changes no metric."""
    judged = [r for r in reports if r.histories and r.status in JUDGED_STATUSES]
    if not judged or any(
        r.plan and sorted(r.plan.logged_params) != sorted(reference_params) for r in judged
    ):
        return SKIP
    if len(reports) == 1:
        return GOOD if judge(*judged[0].histories, rules).equal else BAD
    diagnoses = diagnose(judged[0].histories[0], [r.histories[1] for r in judged], rules)
    return BAD if classify_run(diagnoses) in (DRIFTED, NONDETERMINISTIC_DRIFTED) else GOOD


def lost_server(reports: Sequence[Report]) -> bool:
    """Whether a probe ended because the tracking server stopped answering:
    the tool's own request says so, or MLflow's in the project's last error."""
    return any(
        r.status in ('failed', 'error')
        and 'the tracking server does not answer' in server_failure(Exception(r.message or ''))
        for r in reports
    )


@dataclasses.dataclass(frozen=True)
class CommitInfo:
    commit: str
    subject: str


@dataclasses.dataclass(frozen=True)
class BisectReport(Outcome):
    reference_run_id: str
    reference_run_name: str | None = None
    path: tuple[CommitInfo, ...] = ()  # the reference commit, then each commit to the target
    probes: tuple[tuple[int, Report], ...] = ()  # (index into path, report), in probing order
    outcomes: Mapping[int, str] = dataclasses.field(default_factory=dict)
    finding: Finding = Finding(None, ())
    run_id: str | None = None  # the parent run
    stopped: str | None = None  # 'interrupted' or 'terminated'
    details: tuple[str, ...] = ()  # author, date and diff --stat of the first changed commit
    leftovers: tuple[dict[str, str], ...] = ()  # what close_leftovers cleaned first
    most_probes: int = 0  # what the search may take, from the start, if every commit runs
    dry_run: bool = False  # --dry-run: the path and the plan, no probe

    @property
    def status(self) -> str:
        """A key of STATUS_EXIT_CODES: its exit code is the bisection's."""
        if self.dry_run:
            return 'planned'
        if self.stopped:
            return self.stopped
        skipped = all(o == SKIP for o in self.outcomes.values())
        if not self.probes or skipped or self.finding.reason in (REFERENCE_FAILED, SERVER_LOST):
            return 'failed'
        if self.finding.reason == NOT_REPRODUCED or self.finding.candidates:
            return 'differ'
        return 'equal'

    @property
    def first_changed_commit(self) -> str | None:
        i = self.finding.first_changed
        return None if i is None else self.path[i].commit

    def first_changed_text(self, chars: int = 40) -> str:
        """The closing line's answer: the commit, `one of` the candidates that
        skipped or untested commits leave, unknown when a signal stopped the
        search before, else none."""
        found = self.finding
        if self.dry_run:
            return 'not searched (--dry-run)'
        if (i := found.first_changed) is not None:
            return self.path[i].commit
        if self.stopped:
            return f'unknown (the bisection was {self.stopped})'
        if found.candidates and not found.reason:
            return 'one of ' + ' '.join(self.path[i].commit[:chars] for i in found.candidates)
        return 'none'

    @property
    def reports(self) -> tuple[Report, ...]:
        return tuple(r for _, r in self.probes)

    def text(self, verbose: bool = False) -> str:
        return format_bisect_text(self)

    def markdown(self) -> str:
        return format_bisect_markdown(self)

    def json(self) -> dict[str, Any]:
        return bisect_json(self)

    def subject(self) -> str:
        found = self.first_changed_text(SHORT_HASH_CHARS)
        return f'a bisection of run {self.reference_run_id} (first changed commit: {found})'

    def junit_cases(self) -> list[Case]:
        """One per probe, named with its commit."""
        return [
            dataclasses.replace(c, name=f'{c.name} at {self.path[i].commit[:SHORT_ID_CHARS]}')
            for i, c in ((i, report_case(r)) for i, r in self.probes)
        ]

    def parent_run_ids(self) -> list[str]:
        return [self.run_id] if self.run_id else []

    def reports_of(self, index: int) -> list[Report]:
        return [r for i, r in self.probes if i == index]

    def key_report(self) -> Report | None:
        """The probe that tells the finding: the first changed commit's, the
        reference commit's when it does not reproduce, else the target's."""
        target = len(self.path) - 1 if self.path else None
        for index in (self.finding.first_changed, 0 if self.finding.reason else None, target):
            if index is not None and (reports := self.reports_of(index)):
                return reports[0]
        return None


class BisectPlanner(Planner):
    """A bisection plans the next midpoints from what the last round said."""

    total_is_a_bound = True

    def __init__(
        self,
        reference: Run,
        path: Sequence[CommitInfo],
        repeat: int,
        jobs: int,
        rules: Rules,
        clone: str,  # the private repository, to describe the first changed commit
    ) -> None:
        self.reference, self.path, self.repeat, self.jobs = reference, tuple(path), repeat, jobs
        self.rules, self.clone = rules, clone
        self.index = {c.commit: i for i, c in enumerate(self.path)}
        self.planned = 0
        # what the search may take, from the start, if every commit runs
        self.most_probes = repeat * most_commits(len(self.path) - 1, {}, jobs)

    def outcomes(self, results: Sequence[Result]) -> dict[int, str]:
        by_commit: dict[int, list[Report]] = {}
        for probe, report in results:  # one a signal ended says nothing of its commit
            if report.status not in SIGNAL_STATUSES:
                by_commit.setdefault(self.index[probe.version or ''], []).append(report)
        params = next((r.plan.logged_params for r in by_commit.get(0, ()) if r.plan), ())
        return {i: commit_outcome(rs, tuple(params), self.rules) for i, rs in by_commit.items()}

    def next_probes(self, results: Sequence[Result]) -> list[Probe]:
        if len(results) < self.planned:  # a round ends when all its probes have
            return []
        n, outcomes = len(self.path) - 1, self.outcomes(results)
        self.total = self.planned + self.repeat * most_commits(n, outcomes, self.jobs)
        chosen = next_commits(n, outcomes, self.jobs)
        probes = [
            Probe(
                self.reference.info.run_id,
                label=f'at {self.path[i].commit[:12]}',
                name=self.reference.info.run_name,
                version=self.path[i].commit,
                version_by='--bisect',
            )
            for i in chosen
            for _ in range(self.repeat)
        ]
        self.planned += len(probes)
        return probes

    def create_parent(self, session: Session) -> str | None:
        ref = self.reference.info
        return create_group_run(
            session,
            f'reproduce-bisect-{ref.run_name or ref.run_id}',
            {TAG_BISECT: 'true', TAG_REFERENCE_RUN_ID: ref.run_id},
        )

    def _finding(self, group: Group, outcomes: Mapping[int, str]) -> Finding:
        """finding(), but a commit that could not be reproduced because the
        tracking server stopped answering says that instead."""
        found = finding(len(self.path) - 1, outcomes)
        blamed = {REFERENCE_FAILED: 0, TARGET_FAILED: len(self.path) - 1}.get(found.reason or '')
        reports = [r for p, r in group.results if self.index[p.version or ''] == blamed]
        return dataclasses.replace(found, reason=SERVER_LOST) if lost_server(reports) else found

    def report(self, group: Group) -> BisectReport:
        outcomes = self.outcomes(group.results)
        found = self._finding(group, outcomes)
        stopped = next((r.status for _, r in group.results if r.status in SIGNAL_STATUSES), None)
        first = found.first_changed
        details = () if first is None else describe_commit(self.clone, self.path[first].commit)
        return BisectReport(
            self.reference.info.run_id,
            self.reference.info.run_name,
            self.path,
            tuple(
                (self.index[p.version or ''], dataclasses.replace(r, model=None))
                for p, r in group.results
            ),
            outcomes,
            found,
            group.parent_run_id,
            stopped=stopped,
            details=details,
            leftovers=group.leftovers,
            most_probes=self.most_probes,
        )

    def records(self, report: BisectReport, group: Group) -> list[GroupRecord]:
        if not group.parent_run_id:
            return []
        return [
            GroupRecord(
                group.parent_run_id,
                'the bisection',
                report.markdown(),
                BISECT_ARTIFACT,
                report.json_text(),
                tags={TAG_FIRST_CHANGED: fit_tag(report.first_changed_text())},
            )
        ]


# The source's history, fetched once per bisection into a private repository.


def fetch_history(source: Source, dest: str) -> Source:
    """Every branch and tag of the source, with their history, in a private
    repository; the Source that fetches from it."""
    where = mask_credentials(source.uri)
    repo, subdir = fetch_location(source, where)
    _git('init', '--quiet', dest)
    try:
        _git(
            'fetch',
            '--quiet',
            '--',
            repo,
            '+refs/heads/*:refs/remotes/origin/*',
            '+refs/tags/*:refs/tags/*',
            cwd=dest,
        )
    except subprocess.CalledProcessError as e:
        raise ReproduceError(
            f'cannot fetch {where}: {mask_credentials(_last_line(e.stderr))}'
        ) from None
    with contextlib.suppress(subprocess.CalledProcessError):  # a commit on no branch
        _git('fetch', '--quiet', '--', repo, source.version, cwd=dest)
    return Source(repo=dest, subdir=subdir, version=source.version)


def _commit_in(clone: str, names: Sequence[str]) -> str | None:
    for name in names:
        with contextlib.suppress(subprocess.CalledProcessError):
            return _git(
                'rev-parse',
                '--verify',
                '--quiet',
                '--end-of-options',
                f'{name}^{{commit}}',
                cwd=clone,
            )
    return None


def default_branch(repo: str) -> str | None:
    """The remote's default branch, as its HEAD names it."""
    with contextlib.suppress(subprocess.CalledProcessError):
        head = _git('ls-remote', '--symref', '--', repo, 'HEAD')
        match = re.match(r'ref: refs/heads/(\S+)\s+HEAD', head)
        return match.group(1) if match else None
    return None


def resolve_target(clone: str, repo: str, target: str, reference: Run) -> str:
    """COMMIT as given (branch, tag or hash), else the tip of the branch the
    reference recorded, else the remote's default branch: a full hash."""
    if target:
        refuse_commit_value(target, '--bisect')
        names = [f'refs/remotes/origin/{target}', f'refs/tags/{target}', target]
        what = f'commit {target!r}'
    else:
        branch = _target_branch(clone, repo, reference)
        names, what = [f'refs/remotes/origin/{branch}'], f'branch {branch!r}'
    commit = _commit_in(clone, names)
    if commit is None:
        raise ReproduceError(f'--bisect: {what} is not in {mask_credentials(repo)}')
    return commit


def _target_branch(clone: str, repo: str, reference: Run) -> str:
    """The branch the reference recorded, else (none, or deleted since) the
    remote's default branch, said in one line when it replaces a recorded one."""
    run_id, recorded = reference.info.run_id, reference.data.tags.get(TAG_GIT_BRANCH)
    if recorded:
        refuse_commit_value(recorded, 'the recorded branch')
        if _commit_in(clone, [f'refs/remotes/origin/{recorded}']):
            return recorded
    if not (branch := default_branch(repo)):
        had = f'recorded branch {recorded!r} is gone' if recorded else 'recorded no branch'
        raise ReproduceError(
            f'run {run_id} {had} and the source names no default branch: pass --bisect COMMIT'
        )
    refuse_commit_value(branch, "the source's default branch")
    if recorded:
        warn(
            f'the branch {recorded!r} that run {run_id} recorded is not in '
            f'{mask_credentials(repo)}: bisecting up to its default branch {branch!r}'
        )
    return branch


def first_parent_path(clone: str, reference_commit: str, target: str) -> list[CommitInfo]:
    """The reference commit, then every commit on the first-parent path to the target."""
    lines = _git(
        'log',
        '--first-parent',
        '--ancestry-path',
        '--reverse',
        '--format=%H%x1f%s',
        '--end-of-options',
        f'{reference_commit}..{target}',
        cwd=clone,
    ).splitlines()
    if not lines:
        raise ReproduceError(
            f'--bisect: commit {target[:12]} does not come after the reference commit '
            f'{reference_commit[:12]} on its first-parent path'
        )
    subject = _git('log', '-1', '--format=%s', '--end-of-options', reference_commit, cwd=clone)
    return [CommitInfo(reference_commit, subject)] + [
        CommitInfo(*line.split('\x1f', 1)) for line in lines
    ]


def describe_commit(clone: str, commit: str) -> tuple[str, ...]:
    """Author, date and `git diff --stat` against its first parent."""
    log = _git('log', '-1', '--format=%an <%ae>%x1f%aI', '--end-of-options', commit, cwd=clone)
    author, date = log.split('\x1f')
    stat = _git('diff', '--stat', '--end-of-options', f'{commit}^', commit, cwd=clone)
    return (f'Author:  {author}', f'Date:    {date}', *(f' {s.strip()}' for s in stat.splitlines()))


def run_bisect(session: Session, chosen: Chosen, target: str, repeat: int) -> BisectReport:
    """Fetch the history once, then probe the reference commit, the target
    and the midpoints between, each probe a full reproduction."""
    if chosen.run_id is None:
        raise ReproduceError(chosen.error or f'{chosen.label} cannot be reproduced')
    options, client = session.options, session.client
    reference = read_reference(client, chosen.run_id, session.tracking_uri)
    source = resolve_source(reference, options.uri, None)
    if not target and (branch := reference.data.tags.get(TAG_GIT_BRANCH)):
        refuse_commit_value(branch, 'the recorded branch')  # before git reads it
    clone = os.path.join(tempfile.mkdtemp(prefix='bisect-', dir=session.tmp_root), 'history')
    private = fetch_history(source, clone)
    reference_commit = _commit_in(clone, [source.version])
    if reference_commit is None:
        raise ReproduceError(
            f'commit {source.version} is not available from {mask_credentials(source.repo)}'
        )
    target_commit = resolve_target(clone, fetch_location(source, source.uri)[0], target, reference)
    path = first_parent_path(clone, reference_commit, target_commit)
    for c in path:  # each probe's checkout comes from the private copy
        session.shared.sources[(source.uri, c.commit)] = _CachedSource(
            origin=dataclasses.replace(private, version=c.commit)
        )
    planner = BisectPlanner(reference, path, repeat, options.jobs, options.rules, clone)
    if options.dry_run:  # the path is known; nothing runs
        return BisectReport(
            reference.info.run_id,
            reference.info.run_name,
            tuple(path),
            most_probes=planner.most_probes,
            dry_run=True,
        )
    # Each probe stops at the first point that differs, unless --no-fail-fast;
    # not with --repeat or --last-only, which judge whole histories.
    fail_fast = options.fail_fast is not False and not (repeat > 1 or options.last_only)
    options = dataclasses.replace(options, fail_fast=fail_fast)
    bisect: BisectReport = report_group(dataclasses.replace(session, options=options), planner)
    for index, report in bisect.probes:
        tag_probe(client, report, TAG_BISECT_COMMIT, bisect.path[index].commit, 'run')
    return bisect


def tag_probe(client: MlflowClient, probe: Report, key: str, value: str, what: str) -> None:
    """Say on a probe's run what it was run with; only warn when it cannot."""
    if probe.reproduced_run_id:
        try:
            client.set_tag(probe.reproduced_run_id, key, value)
        except Exception as e:
            warn(f'could not tag {what} {probe.reproduced_run_id}: {_last_line(str(e))}')


# Reporting a bisection.


def _changed_params(report: Report) -> list[str]:
    return [p.key for p in report.verdict.params if not p.equal] if report.verdict else []


def bisect_rows(bisect: BisectReport) -> Rows:
    """One row per probed commit, in commit order: what its metrics said
    (params are shown, and decide nothing)."""
    rows = []
    for index in sorted({i for i, _ in bisect.probes}):
        reports, info = bisect.reports_of(index), bisect.path[index]
        outcome = bisect.outcomes.get(index, SKIP)
        if outcome == SKIP:
            outcome += f' ({", ".join(dict.fromkeys(r.status for r in reports))})'
        if len(reports) > 1:
            outcome = f'{outcome}, {len(reports)} runs'
        rows.append(
            [
                info.commit[:12],
                _truncated(info.subject, SHORT_CELL),
                outcome,
                ', '.join(sorted({k for r in reports for k in _differing_keys(r)})),
                ', '.join(sorted({k for r in reports for k in _changed_params(r)})),
                ' '.join(r.reproduced_run_id or '-' for r in reports),
            ]
        )
    headers = ['Commit', 'Subject', 'Metrics', 'Changed metrics', 'Changed params']
    return [*headers, 'Reproduced run'], rows


def _finding_lines(bisect: BisectReport) -> list[str]:
    found = bisect.finding
    lines = []
    if bisect.stopped:
        lines.append(f'The bisection was {bisect.stopped} by a signal.')
    if found.reason:
        lines.append(f'No commit is blamed: {found.reason}.')
    if found.first_changed is None and len(found.candidates) > 0 and not found.reason:
        lines.append(
            'The first changed commit is one of: '
            + ', '.join(bisect.path[i].commit for i in found.candidates)
        )
    skipped = [bisect.path[i].commit for i, o in sorted(bisect.outcomes.items()) if o == SKIP]
    if skipped:
        lines.append('Skipped (the project could not run): ' + ', '.join(skipped))
    if not found.reason and not found.candidates and not bisect.stopped and bisect.probes:
        lines.append('Nothing between the reference commit and the target changed the metrics.')
    return lines


def _bisect_plan_line(bisect: BisectReport) -> str:
    """'12 commits from dff35d3ca1e7 to 34b98f3dc91a, at most 6 probes'."""
    first, last = bisect.path[0].commit[:SHORT_HASH_CHARS], bisect.path[-1].commit
    span = f'{counted(len(bisect.path) - 1, "commit")} from {first} to {last[:SHORT_HASH_CHARS]}'
    return f'{span}, at most {counted(bisect.most_probes, "probe")} if every commit runs'


def format_bisect_text(bisect: BisectReport) -> str:
    if bisect.dry_run:
        return '\n'.join(
            [
                f'Reference run:  {_named(bisect.reference_run_id, bisect.reference_run_name)}',
                f'Would bisect:   {_bisect_plan_line(bisect)}',
                'Nothing was run (--dry-run).',
            ]
        )
    lines = [
        f'Reference run:  {_named(bisect.reference_run_id, bisect.reference_run_name)}',
        f'Bisected:       {len(bisect.path) - 1} commits from {bisect.path[0].commit[:12]} to '
        f'{bisect.path[-1].commit[:12]}, {len(bisect.probes)} probes',
        _table(bisect_rows(bisect), 'psql'),
        *_finding_lines(bisect),
    ]
    key = bisect.key_report()
    if (i := bisect.finding.first_changed) is not None:
        lines += [
            '',
            f'Commit:  {bisect.path[i].commit}',
            f'Subject: {bisect.path[i].subject}',
            *bisect.details,
        ]
    if key and key.verdict and (bisect.finding.first_changed is not None or bisect.finding.reason):
        lines += [_table(_metric_rows(key.verdict), 'psql'), *differences_lines(key.differences)]
    lines += leftover_lines(bisect.leftovers)
    lines.append(f'First changed commit: {bisect.first_changed_text(SHORT_HASH_CHARS)}')
    return '\n'.join(lines)


def format_bisect_markdown(bisect: BisectReport) -> str:
    lines = [f'**Bisection of run {bisect.reference_run_id}**: {bisect.status}', '']
    if bisect.dry_run:
        return '\n'.join(
            [
                *lines,
                f'- would bisect {_bisect_plan_line(bisect)}',
                '',
                'Nothing was run (--dry-run).',
            ]
        )
    if bisect.path:
        lines += [
            f'- from `{bisect.path[0].commit}` to `{bisect.path[-1].commit}` '
            f'({len(bisect.path) - 1} commits, {len(bisect.probes)} probes)',
            '',
            _table(bisect_rows(bisect), 'github'),
            '',
        ]
    for line in _finding_lines(bisect):  # a paragraph each
        lines += [line, '']
    if (i := bisect.finding.first_changed) is not None:
        lines += [
            '',
            f'`{bisect.path[i].commit}` {markdown_escaped(bisect.path[i].subject)}',
            '',
            '```',
            *bisect.details,
            '```',
        ]
    key = bisect.key_report()
    if key and key.verdict and (bisect.finding.first_changed is not None or bisect.finding.reason):
        lines += _markdown_table(_metric_rows(key.verdict), 'metrics', None)
    if bisect.leftovers:
        lines += ['', *leftover_lines(bisect.leftovers, '- ', markdown_escaped)]
    lines += ['', f'First changed commit: {bisect.first_changed_text(SHORT_HASH_CHARS)}']
    return re.sub(r'\n{3,}', '\n\n', '\n'.join(lines))  # one blank line between paragraphs


def bisect_json(bisect: BisectReport) -> dict[str, Any]:
    key = bisect.key_report()
    base = report_json(key) if key else {}
    full = [c.commit for c in bisect.path]
    return {
        **base,
        'status': bisect.status,
        'exit_code': bisect.exit_code,
        'leftovers': list(bisect.leftovers),
        'bisect': {
            'reference_run_id': bisect.reference_run_id,
            'reference_commit': full[0] if full else None,
            'target_commit': full[-1] if full else None,
            'first_changed_commit': bisect.first_changed_commit,
            'candidates': [full[i] for i in bisect.finding.candidates],
            'probes': [
                {
                    'commit': full[i],
                    'subject': bisect.path[i].subject,
                    'status': r.status,
                    'equal': r.equal,
                    'metrics_equal': not _differing_keys(r) if r.verdict else None,
                    'changed_metrics': _differing_keys(r),
                    'changed_params': _changed_params(r),
                    'reproduced_run_id': r.reproduced_run_id,
                    'prefix': r.prefix and r.prefix.json(),
                }
                for i, r in sorted(bisect.probes, key=lambda p: p[0])
            ],
            'skipped': [full[i] for i, o in sorted(bisect.outcomes.items()) if o == SKIP],
            'reason': bisect.finding.reason or (bisect.stopped and f'{bisect.stopped} by a signal'),
            'run_id': bisect.run_id,
            'commits': len(full) - 1 if full else 0,
            'most_probes': bisect.most_probes,
            'dry_run': bisect.dry_run,
        },
    }


# Several references (a batch, several --model): each is bisected on its own,
# one after another, each under its own parent run.


@dataclasses.dataclass(frozen=True)
class Bisections(Outcome):
    """The bisection of each reference chosen, in order; a reference that
    could not be bisected, or that a signal kept from starting, is a Report
    that says why."""

    entries: tuple[BisectReport | Report, ...]
    skipped: tuple[dict[str, str], ...] = ()  # runs of the selection not bisected, and why
    own_reproductions: int = 0  # the tool's own runs the search left out, unlisted

    @property
    def status(self) -> str:
        return worst_status(e.status for e in self.entries)

    @property
    def reports(self) -> tuple[Report, ...]:
        return tuple(r for e in self.entries for r in e.reports)

    def text(self, verbose: bool = False) -> str:
        """Each bisection's report in turn (of one that did not start, why),
        then each reference's first changed commit."""
        parts = [
            e.text() or f'Reference run:  {e.reference_run_id} ({e.status}: {e.message})'
            for e in self.entries
        ]
        last = [f'First changed commit of {x}' for x in self.first_changed()]
        last += [*skipped_lines(self.skipped), *own_reproductions_lines(self.own_reproductions)]
        return '\n\n'.join([*parts, '\n'.join(last)])

    def markdown(self) -> str:
        parts = [e.markdown() for e in self.entries]
        skipped = '\n'.join(
            [
                *skipped_lines(self.skipped, '- skipped', markdown_escaped),
                *own_reproductions_lines(self.own_reproductions, '- left out'),
            ]
        )
        last = [f'First changed commit of {x}' for x in self.first_changed()]
        return '\n\n'.join([*parts, *last, skipped]).strip()

    def json(self) -> dict[str, Any]:
        return {
            'bisections': [e.json() for e in self.entries],
            'skipped': list(self.skipped),
            'own_reproductions': self.own_reproductions,
            'exit_code': self.exit_code,
        }

    def first_changed(self) -> list[str]:
        """Each reference with its first changed commit, or none."""
        return [
            f'{e.reference_run_id}: {e.first_changed_text(SHORT_HASH_CHARS)}' for e in self.entries
        ]

    def subject(self) -> str:
        found = ', '.join(self.first_changed())
        bisected = counted(len(self.entries), 'run')
        return f'bisections of {bisected} (first changed commits: {found})'

    def junit_cases(self) -> list[Case]:
        """Each bisection's, in turn; then one per skipped run."""
        return [c for e in self.entries for c in e.junit_cases()] + skipped_cases(self.skipped)

    def parent_run_ids(self) -> list[str]:
        return [p for e in self.entries for p in e.parent_run_ids()]


# ---------------------------------------------------------------------------
# Explain: when a reproduction differs, more reproductions (probes) run with
# the environment's differences undone, and delta debugging finds which
# matter.  The choice of the next probe is pure; the probes run on the group
# engine, nested under the reproduced run.


EXPLANATION_ARTIFACT = 'explanation.json'  # under ARTIFACT_DIR, on the reproduced run
PIP_TIMEOUT_SECONDS = 900.0  # installing one pinned package into a layer
# What a probe cannot undo, and why: said, never tried.
_CANNOT_UNDO = {
    'python': 'a different Python cannot be undone by a probe',
    'platform': 'a different platform, CPU count or GPU cannot be undone by a probe',
}


@dataclasses.dataclass(frozen=True)
class ExplainStep:
    """What delta debugging says next: a probe undoing `undo`, or the end."""

    undo: tuple[str, ...] | None = None  # the differences the next probe undoes
    restores: bool | None = None  # at the end: does undoing everything restore equality?
    culprits: tuple[str, ...] = ()  # at the end: a smallest set that restores it
    requires: tuple[str, ...] = ()  # undone with the culprits, which need them to load
    fails: bool = False  # at the end: with everything undone the project does not run


# A probe's outcome: its runs are equal, differ, or it failed (unresolved:
# no evidence either way, as in Zeller and Hildebrandt's delta debugging).
EQUAL, DIFFER, UNRESOLVED = 'equal', 'differ', 'unresolved'


def probe_outcome(status: str) -> str:
    return status if status in (EQUAL, DIFFER) else UNRESOLVED


class _Untested(Exception):
    def __init__(self, subset: tuple[str, ...]) -> None:
        self.subset = subset


def _chunks(items: tuple[str, ...], n: int) -> list[tuple[str, ...]]:
    """n consecutive parts of items, the first len(items) % n one item longer."""
    size, extra = divmod(len(items), n)
    ends = [i * size + min(i, extra) for i in range(n + 1)]
    return [items[start:end] for start, end in itertools.pairwise(ends)]


def _ddmin(items: tuple[str, ...], restores: Callable[[tuple[str, ...]], bool]) -> tuple[str, ...]:
    """Zeller's ddmin: a smallest subset of items whose undoing restores
    equality, given that undoing all of them does."""
    n = 2
    while len(items) > 1:
        chunks = _chunks(items, n)
        found = next((c for c in chunks if restores(c)), None)
        if found is not None:
            items, n = found, 2
            continue
        rests = [tuple(i for i in items if i not in c) for c in chunks] if n > 2 else []
        found = next((r for r in rests if restores(r)), None)
        if found is not None:
            items, n = found, max(n - 1, 2)
            continue
        if n >= len(items):
            break
        n = min(len(items), 2 * n)
    return items


def _needs_nothing(undone: frozenset[str]) -> frozenset[str]:
    return undone


def _what_it_needs(
    subset: tuple[str, ...],
    everything: tuple[str, ...],
    outcome: Callable[[Iterable[str]], str],
    needs: Callable[[frozenset[str]], frozenset[str]],
) -> set[str] | None:
    """What a set whose probe failed needs undone too, for its undoing to
    restore equality: what the packages declare, when undoing that as well
    is equal; else, when that does not run either, all the other differences
    (undoing everything is equal).  None: with what they declare it runs and
    still differs."""
    declared = needs(frozenset(subset)) - set(subset)
    found = outcome({*subset, *declared}) if declared else UNRESOLVED
    if found == DIFFER:
        return None
    return declared if found == EQUAL else set(everything) - set(subset)


def explain_step(
    items: Sequence[str],
    outcomes: Mapping[frozenset[str], str],
    needs: Callable[[frozenset[str]], frozenset[str]] = _needs_nothing,
) -> ExplainStep:
    """The next probe from the outcomes so far (undone set -> EQUAL, DIFFER or
    UNRESOLVED): first undo everything, then narrow it down.  A set whose
    probe failed is tried again with what it needs to load: first what the
    packages declare (`needs`: the set and the differences it needs undone
    too), and when that does not run either, all the other differences
    (undoing everything is equal).  If that is equal, the set restores
    equality and needs the rest.  Then what was needed is tried alone: when
    it restores equality by itself, the search goes on inside it.  A set
    already tried is never tried again."""
    everything = tuple(items)
    extras: dict[frozenset[str], frozenset[str]] = {}

    def ordered(keys: Iterable[str]) -> tuple[str, ...]:
        keys = set(keys)
        return tuple(i for i in everything if i in keys)

    def outcome(subset: Iterable[str]) -> str:
        key = frozenset(subset)
        if key not in outcomes:
            raise _Untested(ordered(key))
        return outcomes[key]

    def restores(subset: tuple[str, ...]) -> bool:
        found = outcome(subset)
        if found != UNRESOLVED:
            return found == EQUAL
        extra = _what_it_needs(subset, everything, outcome, needs)
        if extra is None:
            return False
        extras[frozenset(subset)] = extra
        return True

    if not everything:
        return ExplainStep()
    try:
        first = outcome(everything)
        if first != EQUAL:
            return ExplainStep(restores=False) if first == DIFFER else ExplainStep(fails=True)
        culprits = _ddmin(everything, restores)
        for _ in everything:  # what was needed may hold the culprits itself
            extra = extras.get(frozenset(culprits), frozenset())
            if not extra or needs(extra) & set(culprits) or not restores(ordered(extra)):
                break
            culprits = _ddmin(ordered(extra), restores)
        requires = ordered(extras.get(frozenset(culprits), ()))
        return ExplainStep(restores=True, culprits=culprits, requires=requires)
    except _Untested as e:
        return ExplainStep(undo=e.subset)


def _declared_requirement(line: str) -> tuple[str, Any] | None:
    """A Requires-Dist line as (normalized name, specifier set); None for
    one that does not apply here (an extra's, another platform's) or that
    does not parse."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({'extra': ''}):
            return None
    except (InvalidRequirement, ValueError, KeyError):
        return None
    return normalize_package(requirement.name), requirement.specifier


def _requirement_met(specifier: Any, version: str | None) -> bool:
    from packaging.version import InvalidVersion, Version

    if version is None:
        return False
    try:
        return specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return True  # nothing can be said of it: not a reason to undo more


def needed_to_load(
    undone: frozenset[str],
    candidates: Sequence[Candidate],
    requirements: Mapping[tuple[str, str], Sequence[str]],
) -> frozenset[str]:
    """undone and the candidates to undo with it, so that the packages'
    declared requirements (Requires-Dist, by name and version) hold between
    undone and kept ones: a package at its reference version that a kept
    version breaks brings that one back too, and a kept package that an undone
    version breaks goes back as well."""
    packages = {normalize_package(c.name): c for c in candidates if c.kind == 'package'}
    undone = set(undone)
    while True:
        versions = {
            n: c.reference if c.key in undone else c.reproduced for n, c in packages.items()
        }
        more = set()
        for name, c in packages.items():
            for line in requirements.get((name, versions[name] or ''), ()):
                declared = _declared_requirement(line)
                if declared is None or declared[0] not in packages or declared[0] == name:
                    continue
                other = packages[declared[0]]
                if (other.key in undone) == (c.key in undone):
                    continue  # both at one side's versions: as that side ran
                if not _requirement_met(declared[1], versions[declared[0]]):
                    more.add(other.key if c.key in undone else c.key)
        if more <= undone:
            return frozenset(undone)
        undone |= more


def requires_dist(folder: str) -> tuple[str, ...]:
    """The Requires-Dist lines of the distribution installed in folder (a layer)."""
    import email.parser  # only here: the recorder imports this file in every run
    import glob

    for metadata in sorted(glob.glob(os.path.join(glob.escape(folder), '*.dist-info', 'METADATA'))):
        with open(metadata, encoding='utf-8', errors='replace') as f:
            headers = email.parser.HeaderParser().parse(f)
        return tuple(headers.get_all('Requires-Dist') or ())
    return ()


# What --explain says of --repeat's nondeterministic classification.
NOT_NEEDED_REASON = 'the repetitions are nondeterministic: no environment change is needed'
STOPPED_REASON = 'stopped by a signal'


def explanation_candidates(
    differences: Differences,
) -> tuple[list[Candidate], list[dict[str, str]]]:
    """The differences a probe can undo, and those it cannot, with why."""
    candidates, not_tried = [], []
    for item in differences.environment:
        kind, name, reference = item['kind'], item['name'], item['reference']
        if kind in _CANNOT_UNDO:
            label = 'Python' if kind == 'python' else 'platform'
            not_tried.append({'name': f'{label} {name}', 'reason': _CANNOT_UNDO[kind]})
        elif kind == 'package' and not installable(name, reference):
            reason = 'not a package name and version pip can be asked for'
            not_tried.append({'name': f'package {name}', 'reason': reason})
        elif kind == 'package' and reference is None:
            reason = 'not installed in the reference run; a probe cannot remove it'
            not_tried.append({'name': f'package {name}', 'reason': reason})
        else:
            kind = 'package' if kind == 'package' else 'variable'
            candidates.append(Candidate(kind, name, reference, item['reproduced']))
    not_tried += [  # once a dataset, however many of its fields differ
        {'name': f'dataset {name}', 'reason': 'changed data cannot be undone by a probe'}
        for name in dict.fromkeys(d['name'] for d in differences.datasets)
    ]
    return candidates, not_tried


def installable(name: str, version: str | None) -> bool:
    """A package name and version, never a URL, a path or an option; an absent
    version (not installed) is said elsewhere."""
    return bool(_PACKAGE_NAME_RE.fullmatch(name)) and (
        version is None or bool(_PACKAGE_VERSION_RE.fullmatch(str(version)))
    )


def install_command(session: Session, key: str, layer: str) -> tuple[list[str], dict[str, str]]:
    """pip, with the user's environment and so the user's pip settings; told
    --no-user: a user install's PIP_USER=1 or `user = true` refuses --target."""
    argv = [sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-input', '--no-user']
    argv += ['--disable-pip-version-check', '--no-warn-script-location']
    environ = {**session.user_environ, PROCESS_MARKER: session.marker}
    return [*argv, '--quiet', '--target', layer, '--', key], environ


def install_layer(session: Session, name: str, version: str) -> str:
    """A folder holding exactly name==version (no dependencies), installed
    with the user's pip settings into the tool's temporary folder; once per
    invocation.  Raises ReproduceError when it cannot be installed."""
    key = f'{name}=={version}'
    with session.shared.layers_lock:
        if key in session.shared.layers:
            return session.shared.layers[key]
        layer = tempfile.mkdtemp(prefix='layer-', dir=session.tmp_root)
        argv, environ = install_command(session, key, layer)
        try:
            proc = subprocess.run(
                argv,
                env=environ,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=PIP_TIMEOUT_SECONDS,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise ReproduceError(f'cannot install {key}: {_last_line(str(e))}') from None
        session.stop.check()
        if proc.returncode:
            last = _last_line(proc.stderr) or f'exit status {proc.returncode}'
            raise ReproduceError(f'cannot install {key}: {mask_credentials(last)}')
        session.shared.layers[key] = layer
        return layer


def probe_environ(
    session: Session, undone: Sequence[Candidate], layers: Mapping[str, str]
) -> tuple[tuple[str, str | None], ...]:
    """The project's variables for a probe: the undone variables at the
    reference's values, and the undone packages' layers first on PYTHONPATH."""
    environ: dict[str, str | None] = {c.name: c.reference for c in undone if c.kind == 'variable'}
    paths = [layers[c.name] for c in undone if c.kind == 'package']
    if paths:
        user = session.user_environ.get('PYTHONPATH')
        environ['PYTHONPATH'] = os.pathsep.join([*paths, *([user] if user else [])])
    return tuple(sorted(environ.items()))


class ExplainPlanner(Planner):
    """An explanation plans the next subset of undone differences."""

    def __init__(
        self,
        session: Session,
        report: Report,
        candidates: Sequence[Candidate],
        layers: Mapping[str, str],
    ) -> None:
        self.session, self.reproduction, self.layers = session, report, layers
        self.by_key = {c.key: c for c in candidates}
        self.undone: dict[Probe, list[Candidate]] = {}
        self.outcomes: dict[frozenset[str], str] = {}
        self.step = ExplainStep()
        # (name, version) -> Requires-Dist: the reference versions' now, the
        # reproduced ones' once a probe fails (each a pip install)
        self.requirements = {
            (normalize_package(c.name), c.reference or ''): requires_dist(layers[c.name])
            for c in candidates
            if c.name in layers
        }
        self.reproduced_read = False

    def needs(self, undone: frozenset[str]) -> frozenset[str]:
        return needed_to_load(undone, list(self.by_key.values()), self.requirements)

    def next_probes(self, results: Sequence[Result]) -> list[Probe]:
        for probe, report in results:
            key = frozenset(c.key for c in self.undone[probe])
            self.outcomes[key] = probe_outcome(report.status)
        if len(results) < len(self.undone) or any(r.status in SIGNAL_STATUSES for _, r in results):
            return []  # one probe at a time: each depends on the last
        if UNRESOLVED in self.outcomes.values() and not self.read_reproduced_requirements():
            return []
        self.step = explain_step(list(self.by_key), self.outcomes, self.needs)
        if self.step.undo is None:
            return []
        undone = [self.by_key[k] for k in self.step.undo]
        changes = ', '.join(_candidate_text(c, c.reference) for c in undone)
        probe = Probe(
            self.reproduction.reference_run_id,
            label=f"with the reference's {changes}",
            name=self.reproduction.reference_run_name,
            environ=probe_environ(self.session, undone, self.layers),
            parent_run_id=self.reproduction.reproduced_run_id,
        )
        self.undone[probe] = undone
        return [probe]

    def read_reproduced_requirements(self) -> bool:
        """The reproduced versions' Requires-Dist, from layers of their own
        (once); a version pip cannot install declares nothing.  False when a
        signal came meanwhile."""
        if self.reproduced_read:
            return True
        self.reproduced_read = True
        for c in self.by_key.values():
            if c.kind != 'package' or not installable(c.name, c.reproduced) or not c.reproduced:
                continue
            try:
                layer = install_layer(self.session, c.name, c.reproduced)
            except ReproduceError:
                continue
            except Stopped:
                return False
            self.requirements[normalize_package(c.name), c.reproduced] = requires_dist(layer)
        return True


def explain(session: Session, report: Report) -> Report:
    """The report with its explanation, recorded on the reproduced run."""
    report = dataclasses.replace(report, explanation=explain_difference(session, report))
    record_explanation(session.client, report)
    if session.stop.event.is_set():  # a signal wins, as everywhere
        status = session.stop.status
        message = f'{status} by a signal during --explain'
        report = dataclasses.replace(report, status=status, message=message)
    return report


EVERY_PROBE_FAILED_REASON = 'with every difference undone, the project does not run'


def explain_difference(session: Session, report: Report) -> Explanation:
    differences = report.differences or Differences()
    candidates, not_tried = explanation_candidates(differences)
    if differences.environment_unknown:
        return Explanation(None, not_tried=tuple(not_tried), reason=differences.environment_unknown)
    layers, tried = {}, []
    for c in candidates:
        try:
            if c.kind == 'package' and c.reference is not None:
                layers[c.name] = install_layer(session, c.name, c.reference)
            tried.append(c)
        except ReproduceError as e:
            not_tried.append(
                {'name': c.key, 'reason': f'its reference version cannot be installed ({e})'}
            )
        except Stopped:
            return Explanation(None, not_tried=tuple(not_tried), reason=STOPPED_REASON)
    if not tried:
        reason = 'no difference of the environment can be undone'
        return Explanation(None, not_tried=tuple(not_tried), reason=reason)
    planner = ExplainPlanner(session, report, tried, layers)
    # Probes print no plots and no progress of their own beyond one line each.
    # They stop at the first point that differs, unless --no-fail-fast.
    fail_fast = session.options.fail_fast is not False and not session.options.last_only
    options = dataclasses.replace(session.options, plots=False, fail_fast=fail_fast)
    group = run_group(dataclasses.replace(session, options=options), planner)
    probes = tuple(probe_json(session, planner, probe, r) for probe, r in group.results)
    step, not_tried = planner.step, tuple(not_tried)
    if session.stop.event.is_set() or step.undo is not None:
        return Explanation(None, probes=probes, not_tried=not_tried, reason=STOPPED_REASON)
    if step.fails:
        return Explanation(
            None, probes=probes, not_tried=not_tried, reason=EVERY_PROBE_FAILED_REASON
        )
    culprits = tuple(planner.by_key[k] for k in step.culprits)
    needed = {k: planner.by_key[k] for k in step.requires}
    innocent = tuple(c for c in tried if c not in culprits and c.key not in needed)
    requires = requirements_of(culprits, needed, planner.needs)
    return Explanation(
        step.restores,
        culprits,
        innocent if step.restores else (),
        probes,
        not_tried,
        None,
        requires,
    )


def requirements_of(
    culprits: Sequence[Candidate],
    needed: Mapping[str, Candidate],
    needs: Callable[[frozenset[str]], frozenset[str]],
) -> dict[str, tuple[Candidate, ...]]:
    """Each culprit's share of what the culprits needed to load: what it
    needs alone, and what none of them needs alone goes to each."""
    alone = {c.key: needs(frozenset([c.key])) for c in culprits}
    shared = [k for k in needed if not any(k in keys for keys in alone.values())]
    return {
        c.key: tuple(n for k, n in needed.items() if k in alone[c.key] or k in shared)
        for c in culprits
        if needed
    }


def probe_json(session: Session, planner: ExplainPlanner, probe: Probe, report: Report) -> dict:
    """A probe in explanation.json, its run tagged with what it undid."""
    changes = {c.name: c.reference for c in planner.undone[probe]}
    changed = fit_tag(json.dumps(changes, sort_keys=True))
    tag_probe(session.client, report, TAG_EXPLAIN_CHANGES, changed, 'the probe run')
    found = {
        'changes': changes,
        'equal': report.status == 'equal',
        'status': report.status,
        'reproduced_run_id': report.reproduced_run_id,
    }
    if probe_outcome(report.status) == UNRESOLVED and report.status not in SIGNAL_STATUSES:
        found['error'] = project_error_line(report.output_tail) or report.message or ''
    return found


def record_explanation(client: MlflowClient, report: Report) -> None:
    """explanation.json and the "Explained:" line in the reproduced run's description."""
    run_id = report.reproduced_run_id
    if run_id is None or report.explanation is None:
        return
    try:
        client.set_tag(run_id, TAG_NOTE, describe(report, _run_link(client, report)))
        document = indented_json(report.explanation.json())
        client.log_text(run_id, document, f'{ARTIFACT_DIR}/{EXPLANATION_ARTIFACT}')
    except Exception as e:
        warn(f'could not record the explanation on run {run_id}: {_last_line(str(e))}')


def explain_if_differs(session: Session, report: Report) -> Report:
    if session.options.explain and report.status == 'differ' and report.reproduced_run_id:
        return explain(session, report)
    return report


def explain_batch(session: Session, batch: BatchReport) -> BatchReport:
    """--explain in a batch: each reproduction that differs; with --repeat,
    one differing repetition of each drifted reference."""
    if not session.options.explain or session.options.dry_run:
        return batch
    reports = list(batch.reports)
    indexes = [i for i, r in enumerate(reports) if r.status == 'differ']
    if batch.repeats:
        classes = {r.reference_run_id: classify_run(r.diagnoses) for r in batch.repeats}
        # each reference's first reproduction that differs: backwards, the first is written last
        first = {reports[i].reference_run_id: i for i in reversed(indexes)}
        for run_id, i in first.items():
            if classes.get(run_id) == NONDETERMINISTIC:
                not_needed = Explanation(None, reason=NOT_NEEDED_REASON)
                reports[i] = dataclasses.replace(reports[i], explanation=not_needed)
        indexes = sorted(i for run_id, i in first.items() if classes.get(run_id) == DRIFTED)
    for i in indexes:
        if session.stop.event.is_set():
            break
        reports[i] = explain_if_differs(session, reports[i])
    return dataclasses.replace(batch, reports=tuple(reports))


# ---------------------------------------------------------------------------
# CI and on-call: the outcome, once reported, also goes to a JUnit XML file,
# the GitHub Actions job summary and chat webhooks.  Each asks the Outcome
# (its Markdown, its testcases, its reproductions and parent runs), so a new
# mode gets them all by answering those questions.


STEP_SUMMARY_ENV = 'GITHUB_STEP_SUMMARY'  # GitHub Actions' job summary file
NOTIFY_TIMEOUT_SECONDS = 10.0  # a whole delivery: connect, send, the answer's status and headers
# Teams takes 28 KB a message and Slack 40,000 characters of text: the text
# is cut to this many UTF-8 bytes, which fits both.
NOTIFY_TEXT_BYTES = 20_000
NOTIFY_LINKS = 20  # runs linked in a message; the report lists them all
# What XML 1.0 cannot hold at all, not even escaped; lone surrogates included.
_XML_FORBIDDEN_RE = re.compile('[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]')


@dataclasses.dataclass(frozen=True)
class Delivery:
    """Where the outcome goes besides standard output."""

    junit_xml: str | None = None
    notify: tuple[str, ...] = ()  # webhook URLs: secrets, never shown
    notify_always: bool = False
    experiment_name: str = 'Default'  # the testcases' classname
    step_summary: str | None = None
    tracking_uri: str | None = None  # for links to the runs

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> Delivery:
        return from_namespace(
            cls,
            args,
            notify=tuple(args.notify),
            experiment_name=args.experiment_name or 'Default',  # when no reproduction says
            step_summary=environ.get(STEP_SUMMARY_ENV) or None,
            tracking_uri=environ.get('MLFLOW_TRACKING_URI'),
        )


def xml_text(text: str) -> str:
    """Text XML 1.0 can hold: the characters it forbids are left out (and
    credentials masked, as everywhere)."""
    return _XML_FORBIDDEN_RE.sub('', mask_credentials(text))


def xml_line(text: str) -> str:
    """text on one line as the other outputs show it (a newline, an ESC, a
    bidirectional override as a visible escape), held by XML."""
    return xml_text(shown(text))


def xml_lines(text: str) -> str:
    """text's lines as the other outputs show them (an ESC, a bidirectional
    override or a line separator as a visible escape), held by XML."""
    return xml_text('\n'.join(map(shown, text.split('\n'))))


def junit_xml(cases: Sequence[Case], classname: str, timestamp: float) -> bytes:
    """<testsuites> holding one <testsuite name="reproduce_run">."""
    import xml.etree.ElementTree as ET

    counts = {
        'tests': str(len(cases)),
        'failures': str(sum(c.result == 'failure' for c in cases)),
        'errors': str(sum(c.result == 'error' for c in cases)),
        'skipped': str(sum(c.result == 'skipped' for c in cases)),
        'time': f'{sum(c.seconds for c in cases):.3f}',
    }
    root = ET.Element('testsuites', name=JUNIT_SUITE, **counts)
    when = time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(timestamp))
    suite = ET.SubElement(root, 'testsuite', name=JUNIT_SUITE, timestamp=when, **counts)
    suite.set('hostname', xml_text(socket.gethostname()))
    for case in cases:
        element = ET.SubElement(
            suite,
            'testcase',
            classname=xml_line(case.classname or classname),
            name=xml_line(case.name),
            time=f'{case.seconds:.3f}',
        )
        if case.result == 'passed':
            if case.text:
                ET.SubElement(element, 'system-out').text = xml_lines(case.text)
            continue
        result = ET.SubElement(element, case.result, message=xml_line(case.message))
        if case.result != 'skipped':
            result.set('type', case.result)
            result.text = xml_lines(case.text) or None
    ET.indent(root)
    return ET.tostring(root, encoding='utf-8', xml_declaration=True) + b'\n'


def summary_line(outcome: Outcome, experiment: str) -> str:
    """What was checked, how many equal, differ or failed, and the worst."""
    reports = outcome.reports
    if outcome.message and not reports:  # a batch that could not start
        return f'reproduce_run on {socket.gethostname()}: could not start: {outcome.message}'
    counts = collections.Counter(r.status for r in reports)
    counted = [f'{counts[s]} {s}' for s in COUNTED_STATUSES]
    counted += [f'{counts["planned"]} planned'] if counts['planned'] else []
    stopped = sum(counts[s] for s in SIGNAL_STATUSES)
    counted += [f'{stopped} stopped by a signal'] if stopped else []
    went = sorted({d for d in map(destination, reports) if d}) or [experiment]
    into = plural(len(went), 'experiment') + ' ' + ', '.join(map(repr, went))
    return (
        f'reproduce_run on {socket.gethostname()}: {outcome.subject()} reproduced into {into}: '
        f'{", ".join(counted)}; worst: {outcome.status} (exit {outcome.exit_code})'
    )


def ui_address(tracking_uri: str | None) -> str | None:
    """The MLflow UI of an http(s) tracking server, without credentials."""
    from urllib.parse import urlsplit, urlunsplit

    if not tracking_uri or not tracking_uri.startswith(('http://', 'https://')):
        return None
    parts = urlsplit(url_without_login(tracking_uri))
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip('/'), '', ''))


def run_links(outcome: Outcome, ui: str | None) -> list[str]:
    """The parent run, then each reproduction that was not equal: links into
    the UI of an http(s) server, else the run IDs."""

    def run(run_id: str) -> str:
        return f'{ui}/#/runs/{run_id}' if ui else run_id

    lines = [f'- parent run: {run(parent)}' for parent in outcome.parent_run_ids()]
    failing = [r for r in outcome.reports if r.status not in ('equal', 'planned')]
    for r in failing[:NOTIFY_LINKS]:
        new = f', reproduced run {run(r.reproduced_run_id)}' if r.reproduced_run_id else ''
        lines.append(f'- {case_name(r)}: {r.status}: reference run {run(r.reference_run_id)}{new}')
    if len(failing) > NOTIFY_LINKS:
        lines.append(f'- and {len(failing) - NOTIFY_LINKS} more')
    return lines


def _cut(text: str, limit: int) -> str:
    """text in at most limit UTF-8 bytes, marked where it was cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    marker = "\n\n_… cut to fit the webhook's size limit_"
    room = max(0, limit - len(marker.encode()))
    return data[:room].decode('utf-8', 'ignore') + marker


def notification_text(outcome: Outcome, delivery: Delivery, limit: int = NOTIFY_TEXT_BYTES) -> str:
    """The summary line, the Markdown report cut to fit, the links to the runs."""
    head = markdown_escaped(summary_line(outcome, delivery.experiment_name))
    links = '\n'.join(map(markdown_escaped, run_links(outcome, ui_address(delivery.tracking_uri))))
    room = limit - len(head.encode()) - len(links.encode()) - 4
    text = '\n\n'.join(p for p in (head, _cut(outcome.markdown(), room), links) if p)
    text = mask_credentials(text)
    for url in delivery.notify:
        text = mask_webhook(text, url)
    return text


def url_without_login(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition('@')[2]).geturl()


def mask_webhook(text: str, url: str) -> str:
    """text without the webhook's URL, with or without its user:password@, nor
    its path and query: Slack's and Teams' secrets are there."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    where = parts.path + (f'?{parts.query}' if parts.query else '')
    for secret in (url, url_without_login(url), where, parts.path):
        if len(secret) >= SECRET_MIN_CHARS:
            text = text.replace(secret, MASKED)
    return text


def _webhook_request(url: str, text: str) -> urllib.request.Request:
    """POST {"text": …}: what Slack's and Teams' incoming webhooks both take."""
    import base64
    import urllib.request
    from urllib.parse import unquote, urlsplit

    headers = {'Content-Type': 'application/json'}
    parts = urlsplit(url)
    if parts.username is not None:  # urllib would take user:password@ for the host
        login = f'{unquote(parts.username)}:{unquote(parts.password or "")}'
        headers['Authorization'] = 'Basic ' + base64.b64encode(login.encode()).decode()
        url = url_without_login(url)
    body = json.dumps({'text': text}).encode()
    return urllib.request.Request(url, data=body, headers=headers, method='POST')


class _Cutoff:
    """The connections of one delivery, to cut when its time is up: a
    receiver may drip its answer a byte at a time, or never answer."""

    def __init__(self) -> None:
        self.connections: list[http.client.HTTPConnection] = []
        self.over = threading.Event()

    def keep(self, connection: http.client.HTTPConnection) -> http.client.HTTPConnection:
        connect = connection.connect

        def connect_in_time() -> None:
            connect()
            if self.over.is_set():  # connected too late: send nothing
                connection.close()
                raise TimeoutError('connected after the delivery was given up')

        connection.connect = connect_in_time  # type: ignore[method-assign]
        self.connections.append(connection)
        return connection

    def cut(self) -> None:
        """Wake whatever waits on the connections (from another thread)."""
        self.over.set()
        for connection in self.connections:
            sock = connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _webhook_opener(cutoff: _Cutoff) -> urllib.request.OpenerDirector:
    """urllib's opener (the proxy variables honoured) that hands each
    connection to cutoff and follows no redirect: it would send the
    Authorization header to another host, and count a GET there delivered."""
    import http.client
    import urllib.request

    def kept(kind: type[http.client.HTTPConnection]) -> Callable[..., http.client.HTTPConnection]:
        return lambda host, **kwargs: cutoff.keep(kind(host, **kwargs))

    class Plain(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(kept(http.client.HTTPConnection), req)

    class Secure(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(kept(http.client.HTTPSConnection), req)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object) -> None:
            return None  # the 3xx answer is then an HTTPError

    return urllib.request.build_opener(Plain, Secure, NoRedirect)


def post_webhook(url: str, text: str) -> None:
    """Deliver one message within NOTIFY_TIMEOUT_SECONDS in all: connect,
    send, the answer's status line and headers (its body is not read).  A
    thread of its own does it, cut at the deadline wherever it is."""
    import urllib.error

    cutoff = _Cutoff()
    opener, request = _webhook_opener(cutoff), _webhook_request(url, text)
    failures: list[BaseException] = []

    def deliver() -> None:
        try:
            opener.open(request, timeout=NOTIFY_TIMEOUT_SECONDS).close()
        except BaseException as e:
            if isinstance(e, urllib.error.HTTPError):
                e.close()
            failures.append(e)

    worker = threading.Thread(target=deliver, name='webhook', daemon=True)
    worker.start()
    worker.join(NOTIFY_TIMEOUT_SECONDS)
    if worker.is_alive():
        cutoff.cut()
        raise TimeoutError('the delivery took too long')
    if failures:
        raise failures[0]


def _webhook_failure(e: Exception) -> str:
    reason = getattr(e, 'reason', None) or e
    if isinstance(reason, TimeoutError) or 'timed out' in str(reason):  # socket.timeout too
        return f'no answer within {NOTIFY_TIMEOUT_SECONDS:.0f} s'
    if 300 <= getattr(e, 'code', 0) < 400:
        return f'HTTP {e.code}, a redirect (not followed)'
    if hasattr(e, 'code'):
        return f'HTTP {e.code}'
    return str(reason) or type(e).__name__


def notify(outcome: Outcome, delivery: Delivery) -> None:
    """One message to each webhook when the outcome is not equal (always,
    with --notify-always); a webhook that fails is a warning, never an exit code."""
    if not delivery.notify or (outcome.exit_code == EXIT_EQUAL and not delivery.notify_always):
        return
    from urllib.parse import urlsplit

    text = notification_text(outcome, delivery)
    for i, url in enumerate(delivery.notify, 1):
        try:
            post_webhook(url, text)
        except Exception as e:
            why = mask_webhook(_webhook_failure(e), url)
            host = urlsplit(url).hostname or 'unknown host'  # never the secret path
            warn(f'--notify webhook {i} at {host} failed: {why}; exit code unchanged')


def writable_report_path(path: str, what: str) -> bool:
    """A report file is written only where a regular file is, or nothing: a
    FIFO would hang the tool, a device would take the report and more."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # absent, or the write itself will say why
        return True
    if stat.S_ISREG(mode):
        return True
    warn(f'{what} was not written: {path} is not a regular file (a FIFO, a device or a folder)')
    return False


def write_junit(outcome: Outcome, delivery: Delivery) -> None:
    path = delivery.junit_xml
    if not path or not writable_report_path(path, 'the JUnit XML report'):
        return
    data = junit_xml(outcome.junit_cases(), delivery.experiment_name, time.time())
    try:
        write_atomically(path, data)
    except OSError as e:
        warn(f'the JUnit XML report could not be written to {path}: {e}')


def append_step_summary(outcome: Outcome, delivery: Delivery) -> None:
    path = delivery.step_summary
    if not path or not writable_report_path(path, f'the report for {STEP_SUMMARY_ENV}'):
        return
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK  # never waits
    try:
        with open(os.open(path, flags, 0o666), 'a', encoding='utf-8') as f:
            f.write(mask_credentials(outcome.markdown()) + '\n\n')
    except OSError as e:
        warn(f'the report could not be appended to {STEP_SUMMARY_ENV}: {e}')


def deliver(outcome: Outcome, delivery: Delivery) -> None:
    """The outcome to CI and on-call: a JUnit XML file, the job summary, webhooks."""
    write_junit(outcome, delivery)
    append_step_summary(outcome, delivery)
    notify(outcome, delivery)


# ---------------------------------------------------------------------------
# One invocation: settings, the tracking server, then one run or a group.


def check_tracking_server(uri: str) -> None:
    """A server that accepts connections but never answers is found within
    PROBE_TIMEOUT_SECONDS, whatever MLflow's retry settings multiply to."""
    if not uri.startswith(('http://', 'https://')):
        return
    import urllib.error
    import urllib.request

    try:
        # /health needs no login: a server that wants one still answers, with 401.  No
        # user:password@: urllib would take the password for a port (`https://user:pw@host`).
        health = url_without_login(uri).rstrip('/') + '/health'
        urllib.request.urlopen(health, timeout=PROBE_TIMEOUT_SECONDS)
    except urllib.error.HTTPError:
        return  # it answers; MLflow's own requests will say what it thinks
    except ValueError:  # a URL urllib cannot use: MLflow's first request says why
        return
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, 'reason', e)
        if isinstance(reason, TimeoutError) or 'timed out' in str(reason):  # socket.timeout too
            raise ReproduceError(
                f'the tracking server {mask_credentials(uri)} does not answer (no response '
                f'within {PROBE_TIMEOUT_SECONDS:.0f} s)'
            ) from None
        # Refused or unresolvable: MLflow's first request says so in its words.


def run_in_worker(session: Session, work: Callable[[], Any]) -> Any:
    """Run one reproduction in a thread, so that the main thread is free to
    take signals and the reproduction can clean up after them."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(work)
        wait_for_futures(session, [future])
        return future.result()


def bisect_chosen(session: Session, selection: Selection) -> BisectReport | Bisections:
    """--bisect of each reference run chosen, one after another; of one, its
    bisection alone."""
    selected = select_runs(
        session.client, selection, session.options.uri is not None, session.tracking_uri
    )
    chosen, skipped, own = selected.chosen, selected.skipped, selected.own_reproductions
    target, repeat = selection.bisect or '', selection.repeat
    if not chosen:
        why = '; '.join([*skipped_lines(skipped, 'skipped'), *own_reproductions_lines(own)])
        raise ReproduceError('--bisect: no reference run was chosen' + (f' ({why})' if why else ''))
    if len(chosen) == 1 and not skipped and not own:
        return run_bisect(session, chosen[0], target, repeat)
    entries = tuple(bisect_reference(session, c, target, repeat) for c in chosen)
    return Bisections(entries, tuple(skipped), own)


def bisect_reference(
    session: Session, chosen: Chosen, target: str, repeat: int
) -> BisectReport | Report:
    """One reference's bisection; after a signal, none (not started); one
    that cannot start is an error entry, and the next reference goes on."""
    if session.stop.event.is_set():
        status, message = session.stop.status, NOT_STARTED
    else:
        try:
            return run_bisect(session, chosen, target, repeat)
        except ReproduceError as e:
            status, message = 'error', mask_credentials(str(e))
            print(f'{program_name()}: error: {shown(message)}', file=sys.stderr, flush=True)
    label = chosen.run_id or chosen.label
    model = label if label.startswith('models:') else None
    return Report(status, label, message=message, model=model, rules=session.options.rules)


def invoke(
    options: Options,
    selection: Selection,
    compare_to_id: str | None,
    stop: Stop,
    left_open: list[LeftOpen],
) -> Outcome:
    """Settings for the tool's own requests, the tracking server checked, then
    one run, a comparison, or a batch; every process the tool started is gone
    and the temporary folder removed when it returns."""
    check_tracking_store(os.environ.get('MLFLOW_TRACKING_URI'))  # before MLflow makes one
    user_environ = dict(os.environ)
    marker = f'{_tool_identity().replace(":", "-")}-{os.urandom(4).hex()}'  # pid-start-random
    tool_environ: dict[str, str | None] = {
        **tool_request_settings(user_environ),
        'MLFLOW_TRACKING_URI': absolute_tracking_uri(user_environ.get('MLFLOW_TRACKING_URI')),
        PROCESS_MARKER: marker,
    }
    with _environ(tool_environ), tempfile.TemporaryDirectory(prefix=tool_tmp_prefix()) as tmp_root:
        try:
            import mlflow

            _configure_logging(options.verbose)
            backend = backend_from_options(options)  # config errors first
            uv_missing = options.env_manager == 'uv' and missing_program('uv')
            if uv_missing and backend.name == DEFAULT_BACKEND:  # before a batch's parent run
                raise ReproduceError(uv_missing)
            tracking_uri = mlflow.get_tracking_uri()
            check_tracking_server(tracking_uri)
            session = Session(
                options,
                mlflow.MlflowClient(),
                tracking_uri,
                user_environ,
                tmp_root,
                marker,
                stop,
                batch=selection.is_batch,
                backend=backend,
                shared=Shared(left_open=left_open),
            )
            if selection.bisect is not None:
                # of dead tools (SIGKILL, OOM); the reference's experiment is searched too
                leftovers = close_leftovers(session, selection.run_ids[:1])
                return bisect_chosen(dataclasses.replace(session, leftovers=leftovers), selection)
            if not selection.is_batch:
                run_id = resolve_run_id(session.client, selection.run_ids[0], tracking_uri)
                if compare_to_id:
                    other = resolve_run_id(session.client, compare_to_id, tracking_uri)
                    return compare_to(session, run_id, other)
                leftovers = close_leftovers(session, [run_id])  # of tools that died: SIGKILL, OOM
                report = run_in_worker(
                    session, lambda: explain_if_differs(session, reproduce_one(session, run_id))
                )
                return dataclasses.replace(report, leftovers=leftovers)
            leftovers = close_leftovers(session)  # the group's parent run lists them
            session = dataclasses.replace(session, leftovers=leftovers)
            selected = select_runs(
                session.client, selection, options.uri is not None, tracking_uri, options.dry_run
            )
            if selection.repeat > 1 and not options.dry_run:  # a plan is the same each time
                repeat = RepeatPlanner(
                    selected.chosen,
                    selected.skipped,
                    selection.repeat,
                    options.rules,
                    selected.own_reproductions,
                )
                batch = report_group(session, repeat)
            else:
                batch = run_batch(session, selected)
            return run_in_worker(session, lambda: explain_batch(session, batch))
        finally:
            end_processes(None, marker)  # nothing the tool started outlives it
            end_processes(None, marker + '.')


# ---------------------------------------------------------------------------
# Command line.


def _text_type(valid: Callable[[str], Any], expected: str) -> Callable[[str], str]:
    """An argparse type: the text as given when valid(text) is true."""

    def check(s: str) -> str:
        if not valid(s):
            raise argparse.ArgumentTypeError(f'expected {expected}, got {s!r}')
        return s

    return check


_run_id = _text_type(_RUN_ID_RE.match, 'an MLflow run ID (letters, digits, _ and -)')


def _number(
    parse: Callable[[str], float], least: int, most: int | None = None, why: str = ''
) -> Callable[[str], Any]:
    """An argparse type: a number parsed by int (a whole one) or float, from least (to most)."""
    kind = 'a whole number' if parse is int else 'a number'

    def check(s: str) -> float:
        try:
            value = parse(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected {kind}, got {s!r}') from None
        if not value >= least:  # also refuses NaN
            raise argparse.ArgumentTypeError(f'expected a number >= {least}{why}, got {s!r}')
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f'expected a number <= {most}, got {s!r}')
        return value

    return check


_tolerance = _number(float, 0)

_DURATION_UNITS = {'s': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 604800}


def _duration(s: str) -> float:
    """90m, 36h, 7d -> seconds."""
    match = re.fullmatch(r'(\d+(?:\.\d+)?)([smhdw])', s.strip())
    if not match:
        raise argparse.ArgumentTypeError(f'expected a duration such as 90m, 36h or 7d, got {s!r}')
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _age(s: str) -> float:
    """A duration above zero: --reap-after 0s would close every reproduction."""
    seconds = _duration(s)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f'expected a duration above zero such as 6h, got {s!r}')
    return seconds


def _commit_arg(s: str) -> str:
    """A commit ID or a ref name that git cannot take for an option."""
    if refusal := commit_refusal(s):
        raise argparse.ArgumentTypeError(refusal)
    return s


class _OptionalCommit(argparse.Action):
    """--bisect [COMMIT]: bare, '' (the tip of the run's branch); a commit given
    must name one, so --bisect '' is not taken for the bare flag."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if values is not None and not values.strip():
            raise argparse.ArgumentError(self, f'expected a commit, got {values!r}')
        if values is not None and (refusal := commit_refusal(values)):
            raise argparse.ArgumentError(self, refusal)
        setattr(namespace, self.dest, values or '')


def _junit_path(s: str) -> str:
    """A file to (re)write: its folder must exist and take new files."""
    path = os.path.abspath(s)
    folder = os.path.dirname(path)
    writable = os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)
    if os.path.isdir(path) or not writable:
        raise argparse.ArgumentTypeError(
            f'expected a file in an existing, writable folder, got {s!r}'
        )
    return path


def _webhook_url(s: str) -> str:
    """An http(s) URL that can be sent as it is; the value is a secret, so the
    message never shows it."""
    from urllib.parse import urlsplit

    secret = '(not shown: it is a secret)'
    if any(c.isspace() or not c.isprintable() for c in s):
        raise argparse.ArgumentTypeError(
            f'expected a URL without spaces or control characters, got one with some {secret}'
        )
    try:
        parts = urlsplit(s)
    except ValueError:
        parts = None
    if not parts or parts.scheme not in ('http', 'https') or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f'expected an http:// or https:// URL, got something else {secret}'
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise argparse.ArgumentTypeError(
            f'expected a port from 1 to 65535 in the URL, got something else {secret}'
        )
    return s


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


class _Parser(argparse.ArgumentParser):
    """argparse, but an argument error is one line, as every other expected
    failure is: cron mails and CI logs stay greppable.  A value that starts
    with - and reads as a number (-1, -inf, -1h) is a value, not an option,
    so that its own check says what is wrong with it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._negative_number_matcher = re.compile(r'^-(\d|\.\d|inf|nan)', re.IGNORECASE)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CANNOT_START, f'{self.prog}: error: {shown(message)} (see --help)\n')


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=program_name(),
        description='Reproduce a past MLflow run: re-execute its MLflow Project, or '
        'the script that made it (`python train.py ...`, as the recorder kept it '
        'when this package is installed where it trained), at its exact commit with '
        'its parameters, and compare the metrics.',
        epilog='exit codes: 0 runs equal, 1 runs differ, 2 could not start, '
        '3 the reproduced run failed, 130 interrupted, 143 terminated.  When '
        f'{STEP_SUMMARY_ENV} is set (GitHub Actions), the Markdown report is also '
        'appended to that file, the job summary.',
    )
    parser.add_argument(
        '--run_id',
        '--run-id',
        type=_run_id,
        nargs='+',
        action='extend',
        metavar='RUN_ID',
        help='the reference run(s) to reproduce, by ID or by a prefix of 8 or more hex '
        'digits that starts one run ID only; repeatable',
    )
    # --version names the commit to run, as in `mlflow run`; the tool's own
    # version needs another name.
    parser.add_argument(
        '--tool-version',
        action='version',
        version=f'reproduce_run {__version__}',
        help="print this tool's version and exit",
    )
    parser.add_argument(
        '--uri',
        help="project URI, overriding the run's recorded source (a git URL or path, with #subdir)",
    )
    parser.add_argument(
        '--experiment_name',
        '--experiment-name',
        type=_text_type(str.strip, 'a name'),  # not empty, not only blanks
        help='experiment that receives the reproduced run (default: Default; for a run '
        "made without `mlflow run`, the reference run's own experiment)",
    )
    parser.add_argument(
        '--version',
        type=_commit_arg,
        help="commit to run: a commit ID or a ref name (default: the run's recorded commit)",
    )
    parser.add_argument(
        '--entry-point',
        '-e',
        help=f"entry point (default: the run's, else {DEFAULT_ENTRY_POINT}); for a run "
        'made without `mlflow run`, the script, relative to the repository root',
    )
    parser.add_argument(
        '--script-args',
        metavar='ARGS',
        help='for a run made without `mlflow run`: its arguments, split like a shell line, '
        "with {param} replaced by the reference run's value (default: the tag "
        f'{TAG_ARGV}, else the params the script accepts as options)',
    )
    parser.add_argument(
        '--env-manager',
        choices=ENV_MANAGERS,
        help="environment manager (default: the run's recorded one, else local)",
    )
    parser.add_argument(
        '--backend',
        '-b',
        default=DEFAULT_BACKEND,
        metavar='NAME',
        help='MLflow execution backend: local, kubernetes, databricks or an '
        'installed backend plugin (default: %(default)s)',
    )
    parser.add_argument(
        '--backend-config',
        '-c',
        metavar='FILE_OR_JSON',
        help='backend config, as for `mlflow run -c`: a path ending in .json '
        'or an inline JSON object',
    )
    parser.add_argument(
        '--reap-after',
        type=_age,
        metavar='DURATION',
        help='also close any reproduction RUNNING longer than this, whatever its host or '
        'container: 6h, 30m',
    )
    batch = parser.add_argument_group('choosing many runs (a batch)')
    modes = parser.add_argument_group(
        'running reproductions: at once, repeated, bisected, explained'
    )
    batch.add_argument(
        '--runs-file',
        metavar='FILE',
        help="run IDs one per line, '#' starts a comment; - reads standard input",
    )
    batch.add_argument(
        '--model',
        **REPEATABLE,
        type=_text_type(_MODEL_URI_RE.fullmatch, 'models:/NAME/VERSION or models:/NAME@ALIAS'),
        metavar='URI',
        help='the run behind a registered model version: models:/NAME/VERSION '
        'or models:/NAME@ALIAS; repeatable',
    )
    batch.add_argument(
        '--from-experiment',
        **REPEATABLE,
        metavar='NAME',
        help="select runs of this experiment with MLflow's search; repeatable",
    )
    batch.add_argument(
        '--filter', metavar='STRING', help='an MLflow search filter for --from-experiment'
    )
    batch.add_argument(
        '--since',
        type=_duration,
        metavar='DURATION',
        help='only runs started within this window before now: 90m, 36h, 7d',
    )
    batch.add_argument(
        '--max-runs',
        type=_number(int, 1),
        default=DEFAULT_MAX_RUNS,
        metavar='N',
        help='at most N runs selected by search (default: %(default)s)',
    )
    batch.add_argument(
        '--order-by',
        **REPEATABLE,
        metavar='CLAUSE',
        help=f'MLflow order-by clause for the search (default: {DEFAULT_ORDER_BY}); '
        'repeatable: a later clause breaks the ties of the earlier ones',
    )
    batch.add_argument(
        '--sample',
        type=_number(int, 1),
        metavar='K',
        help='reproduce a random K of the runs selected by search',
    )
    batch.add_argument(
        '--sample-seed', type=int, metavar='S', help='seed of --sample, for a repeatable choice'
    )
    modes.add_argument(
        '--jobs',
        '-j',
        type=_number(int, 1, MAX_JOBS),
        default=1,
        metavar='N',
        help='reproductions at once (default: %(default)s)',
    )
    modes.add_argument(
        '--repeat',
        type=_number(int, 2, why=' (one reproduction is the default)'),
        metavar='N',
        help='reproduce each run N >= 2 times and tell nondeterminism from drift',
    )
    modes.add_argument(
        '--bisect',
        nargs='?',
        action=_OptionalCommit,
        metavar='COMMIT',
        help='find the first commit, on the first-parent path from the reference '
        "run's commit to COMMIT (default: the tip of its branch), whose reproduction differs",
    )
    modes.add_argument(
        '--explain',
        action='store_true',
        help='when a reproduction differs, rerun it with environment differences undone '
        'and say which ones matter',
    )
    judging = parser.add_argument_group('judging')
    judging.add_argument(
        '--rtol',
        '--rel_tol',
        type=_tolerance,
        default=DEFAULT_RTOL,
        help='relative tolerance (default: %(default)s)',
    )
    judging.add_argument(
        '--atol',
        type=_tolerance,
        default=DEFAULT_ATOL,
        help='absolute tolerance (default: %(default)s)',
    )
    judging.add_argument(
        '--tolerance',
        **REPEATABLE,
        type=_metric_tolerance,
        metavar='KEY=RTOL[,ATOL]',
        help='tolerance for the metrics matching the glob KEY; repeatable, the last match wins',
    )
    judging.add_argument(
        '--ignore-metric',
        **REPEATABLE,
        metavar='PATTERN',
        help='leave metrics matching the glob out of the verdict (still listed); repeatable',
    )
    judging.add_argument(
        '--last-only',
        action='store_true',
        help="compare only each metric's latest value, not its history",
    )
    early = parser.add_argument_group(
        'stopping early: a verdict before a long training ends (the run is marked KILLED)'
    )
    early.add_argument(
        '--fail-fast',
        action=argparse.BooleanOptionalAction,
        help='stop a reproduction at the first logged point beyond tolerance: it differs '
        "(default: on for --bisect's and --explain's probes, off otherwise)",
    )
    early.add_argument(
        '--steps',
        type=_number(int, 0),
        metavar='N',
        help='stop once every point the reference logged up to step N is logged, and judge '
        'those: equal up to step N, or differ',
    )
    early.add_argument(
        '--time-limit',
        type=_age,
        metavar='DURATION',
        help='stop a reproduction after this long (15m, 2h) and judge each metric up to '
        'the last step both runs reached',
    )
    judging.add_argument(
        '--compare-to',
        type=_run_id,
        metavar='RUN_ID',
        help='compare the reference with this existing run; run nothing',
    )
    out = parser.add_argument_group('output')
    out.add_argument(
        '--output',
        choices=('table', 'json', 'markdown'),
        default='table',
        help='report format on standard output (default: %(default)s)',
    )
    out.add_argument(
        '--junit-xml',
        type=_junit_path,
        metavar='FILE',
        help='also write a JUnit XML report to FILE, one testcase per reproduction',
    )
    out.add_argument(
        '--notify',
        **REPEATABLE,
        type=_webhook_url,
        metavar='URL',
        help=f'POST the outcome to this Slack or Teams incoming webhook when it is not equal; '
        f'repeatable (default: ${NOTIFY_ENV})',
    )
    # switches, off unless given: their flags (space-separated) and help
    for flags, text in {
        '--notify-always': 'notify whatever the outcome, equal too',
        '--no-plots': 'do not attach plots of differing histories to the reproduced run',
        '--dry-run': 'resolve and print the plan; create no run, run nothing',
        '--allow-unsafe-command': 'run even when a param value with shell metacharacters would '
        'land inside quotes in the command (it may run as shell code)',
        '--keep-registrations': 'let the models the project registers reach the model registry '
        '(default: a scratch registry, discarded afterwards)',
        '--verbose': "show run details, MLflow's log lines and tracebacks",
        '--quiet -q': 'print nothing but errors on standard error',
    }.items():
        out.add_argument(*flags.split(), action='store_true', help=text)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.notify and os.environ.get(NOTIFY_ENV):
        try:
            args.notify = [_webhook_url(os.environ[NOTIFY_ENV])]
        except argparse.ArgumentTypeError as e:
            parser.error(f'{NOTIFY_ENV}: {e}')
    if problem := _conflicting_options(args):
        parser.error(problem)
    return args


def _conflicting_options(args: argparse.Namespace) -> str | None:
    """What argparse cannot say: which options need or exclude each other."""
    other_sources = args.runs_file or args.model or args.from_experiment  # of runs to reproduce
    if not (args.run_id or other_sources):
        return (
            'the following arguments are required: --run_id/--run-id (or --runs-file, '
            '--model, --from-experiment)'
        )
    if args.compare_to and (len(args.run_id or ()) != 1 or other_sources or args.repeat):
        return '--compare-to compares exactly one --run_id with one other run'
    search_only = {'--filter': args.filter, '--since': args.since, '--sample': args.sample}
    given = [flag for flag, value in search_only.items() if value is not None]
    if given and not args.from_experiment:
        return f'{given[0]} selects among the runs of --from-experiment, which is missing'
    if args.quiet and args.verbose:
        return '--quiet and --verbose exclude each other'
    if args.bisect is not None:
        for flag, value in (
            ('--version', args.version),
            ('--compare-to', args.compare_to),
        ):
            if value:
                return f'--bisect and {flag} exclude each other'
    return _conflicting_early_stops(args)


def _conflicting_early_stops(args: argparse.Namespace) -> str | None:
    """Stopping early needs whole histories and a project the tool runs itself."""
    early = {'--fail-fast': args.fail_fast, '--steps': args.steps, '--time-limit': args.time_limit}
    given = [flag for flag, value in early.items() if value not in (None, False)]
    if not given:
        return None
    for flag, value, why in (
        ('--repeat', args.repeat, "its classification needs each repetition's whole history"),
        ('--last-only', args.last_only, 'stopping early judges histories step by step'),
        ('--compare-to', args.compare_to, 'nothing runs'),
    ):
        if value:
            return f'{given[0]} and {flag} exclude each other: {why}'
    if args.backend != DEFAULT_BACKEND:
        return f'{given[0]} needs the local backend, which runs the project here'
    return None


def _error_outcome(
    e: Exception,
    verbose: bool,
    selection: Selection,
    rules: Rules,
) -> Report | BatchReport:
    """An invocation that could not start: one line, and a report that says so."""
    if verbose:
        import traceback

        traceback.print_exc()
    message = str(e)
    if not isinstance(e, ReproduceError):  # a failure we did not foresee: still one line
        message = unexpected_failure(type(e).__name__, message)
    message = mask_credentials(message)
    if selection.is_batch:
        return BatchReport((), message=message)
    return Report('error', selection.run_ids[0], message=message, rules=rules)


def _write_report(text: str, stream: TextIO | None) -> None:
    """The report on standard output; one that cannot take it (closed, or a
    reader that went away) gets a warning, and the exit code still tells."""
    try:
        if stream is None:
            raise OSError('standard output is closed')
        print(text, file=stream, flush=True)
    except (OSError, ValueError) as e:  # BrokenPipeError, a closed file
        warn(f'the report could not be written to standard output: {e}')
        with contextlib.suppress(OSError):  # no second broken-pipe message at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options, selection = Options.from_args(args), Selection.from_args(args)
    delivery = Delivery.from_args(args, os.environ)
    stop = Stop()
    left_open: list[LeftOpen] = []
    with _stdout_to_stderr() as report_stream:
        try:
            with _signal_handlers({signal.SIGINT: stop, signal.SIGTERM: stop}):
                outcome = invoke(options, selection, args.compare_to, stop, left_open)
        except Exception as e:
            outcome = _error_outcome(e, args.verbose, selection, options.rules)
    for line in outcome.stderr_lines():
        print(shown(line), file=sys.stderr)
    text = outcome.render(args.output, args.verbose)
    if text is not None and args.output != 'json':  # JSON holds the exact values
        text = '\n'.join(map(shown, text.split('\n')))  # no value acts on the terminal
    if text is not None:
        _write_report(text, report_stream)
    deliver(outcome, delivery)
    if left_open:  # the last line of standard error, where cron mails show it
        print(left_running_line(left_open), file=sys.stderr)
    return outcome.exit_code


if __name__ == '__main__':
    code = main()
    # The interpreter's last garbage collections would walk every object MLflow
    # made: about 0.7 s at exit, more than the tool's own work (benchmarks/).
    import gc

    gc.freeze()
    raise SystemExit(code)

"""The README, held to its word: its tables are read here and checked against
the tool, so they cannot drift apart.  Every row of "Bad input" is fed to the
tool; each row's setup (the run, repository or server the input needs) lives
in SETUPS under the row's first cell, and a row without one fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable

import pytest
from helpers import (
    ECHO_PROJECT,
    ROOT,
    SAMPLES,
    add_project,
    client,
    conda_run,
    free_port,
    git,
    logged_run,
    recorded_run,
    reproduce,
    run_of_a_commit_gone_from_the_remote,
    runs_sharing_a_prefix,
    tagged_run,
)

import reproduce_run
from reproduce_run import main

Argv = tuple[str, ...]
Setup = Callable[[pytest.FixtureRequest], list[Argv]]
_CODE_SPAN_RE = re.compile(r'(`+) ?(.+?) ?\1(?!`)')
_PLACEHOLDER_RE = re.compile(r'<[^<>]+>|…')


def readme_table(heading: str) -> list[list[str]]:
    text = (ROOT / 'README.md').read_text()
    section = text.split(f'\n## {heading}\n', 1)[1].split('\n## ', 1)[0]
    rows = [line for line in section.splitlines() if line.startswith('|')][2:]
    return [[cell.strip() for cell in row.strip().strip('|').split(' | ')] for row in rows]


def message_pattern(cell: str) -> re.Pattern[str]:
    """The one line a row promises: its message, after the error prefix, with
    placeholders such as <id> or … standing for any text."""
    spans = _CODE_SPAN_RE.findall(cell)
    assert len(spans) == 1 and _CODE_SPAN_RE.fullmatch(cell), (
        f'a Bad input row gives exactly one message, as one code span: {cell}'
    )
    parts = _PLACEHOLDER_RE.split(spans[0][1])
    return re.compile('reproduce_run: error: ' + '.+'.join(map(re.escape, parts)) + '\n')


# --- setups: one per row of "Bad input", keyed by the row's first cell --------


def _commit(request: pytest.FixtureRequest) -> str:
    return git('rev-parse', 'HEAD', cwd=request.getfixturevalue('samples_repo'))


def _samples_uri(request: pytest.FixtureRequest, sample: str) -> str:
    return f'file://{request.getfixturevalue("samples_repo")}#{sample}'


def deleted_run(request: pytest.FixtureRequest) -> list[Argv]:
    run_id = logged_run({'a': [1.0]})
    client().delete_run(run_id)
    return [('--run_id', run_id)]


def run_in_deleted_experiment(request: pytest.FixtureRequest) -> list[Argv]:
    c = client()
    experiment_id = c.create_experiment(f'doomed-{request.getfixturevalue("tmp_path").name}')
    run_id = c.create_run(experiment_id).info.run_id
    c.set_terminated(run_id)
    c.delete_experiment(experiment_id)
    return [('--run_id', run_id)]


def notebook_run(request: pytest.FixtureRequest) -> list[Argv]:
    return [('--run_id', logged_run({'a': [1.0]}))]


def notebook_run_of_a_commit(request: pytest.FixtureRequest) -> list[Argv]:
    c = client()
    run = c.create_run(
        c.get_experiment_by_name('Default').experiment_id,
        tags={
            'mlflow.source.name': '/Users/alice/train',
            'mlflow.source.type': 'NOTEBOOK',
            'mlflow.source.git.commit': _commit(request),
            'mlflow.source.git.repoURL': str(request.getfixturevalue('samples_repo')),
        },
    )
    c.set_terminated(run.info.run_id)
    return [('--run_id', run.info.run_id)]


def script_run(request: pytest.FixtureRequest, recorded: str, *args: str) -> list[Argv]:
    """A run made by `python <recorded>` in a clone of the samples (not run: it
    is refused before anything runs)."""
    c = client()
    run = c.create_run(
        c.get_experiment_by_name('Default').experiment_id,
        tags={
            'mlflow.source.name': recorded,
            'mlflow.source.type': 'LOCAL',
            'mlflow.source.git.commit': _commit(request),
            'mlflow.source.git.repoURL': str(request.getfixturevalue('samples_repo')),
        },
    )
    c.log_param(run.info.run_id, 'alpha', '0.3')
    c.set_terminated(run.info.run_id)
    return [('--run_id', run.info.run_id, *args)]


def script_at_top_and_in_src(request: pytest.FixtureRequest) -> list[Argv]:
    """A run made by `python train.py` in a repository with a train.py at
    its root and another in src/ (not run: it is refused before anything runs)."""
    repo = request.getfixturevalue('tmp_path') / 'clash'
    for name in ('train.py', 'src/train.py'):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text('')
    git('init', '--quiet', cwd=repo)
    git('add', '--all', cwd=repo)
    git('-c', 'user.name=t', '-c', 'user.email=t@example.invalid', 'commit', '-qm', 'x', cwd=repo)
    tags = {
        'mlflow.source.name': 'train.py',
        'mlflow.source.type': 'LOCAL',
        'mlflow.source.git.commit': git('rev-parse', 'HEAD', cwd=repo),
        'mlflow.source.git.repoURL': str(repo),
    }
    return [('--run_id', tagged_run(tags, {'alpha': '0.3'}))]


def project_run_without_commit(request: pytest.FixtureRequest) -> list[Argv]:
    c = client()
    run = c.create_run(
        c.get_experiment_by_name('Default').experiment_id,
        tags={
            'mlflow.source.name': _samples_uri(request, 'sklearn_regression'),
            'mlflow.source.type': 'PROJECT',
        },
    )
    c.set_terminated(run.info.run_id)
    return [('--run_id', run.info.run_id)]


def run_with_a_commit_git_takes_for_an_option(request: pytest.FixtureRequest) -> list[Argv]:
    """A recorded commit that `git fetch` would run."""
    run_id = tagged_run(
        {
            'mlflow.source.name': _samples_uri(request, 'sklearn_regression'),
            'mlflow.source.type': 'PROJECT',
            'mlflow.source.git.commit': '--upload-pack=touch /tmp/owned;false',
        }
    )
    return [('--run_id', run_id), ('--run_id', run_id, '--dry-run')]


def bisection_of_a_branch_git_takes_for_an_option(request: pytest.FixtureRequest) -> list[Argv]:
    run_id = tagged_run(
        {
            'mlflow.source.name': _samples_uri(request, 'sklearn_regression'),
            'mlflow.source.type': 'PROJECT',
            'mlflow.source.git.commit': _commit(request),
            'mlflow.source.git.branch': '--upload-pack=touch /tmp/owned;false',
        }
    )
    return [('--run_id', run_id, '--bisect')]


def backend_config_in_a_fifo(request: pytest.FixtureRequest) -> list[Argv]:
    """A FIFO nobody writes to: reading it would wait forever."""
    fifo = request.getfixturevalue('tmp_path') / 'config.json'
    os.mkfifo(fifo)
    return [('--run_id', 'a', '-b', 'kubernetes', '-c', str(fifo))]


def entry_point_missing(request: pytest.FixtureRequest) -> list[Argv]:
    run_id = recorded_run(
        _samples_uri(request, 'sklearn_regression'), _commit(request), entry_point='evaluate'
    )
    return [('--run_id', run_id)]


def mlproject_not_parsing(request: pytest.FixtureRequest) -> list[Argv]:
    repo = request.getfixturevalue('own_repo')
    (repo / 'sklearn_regression' / 'MLproject').write_text('entry_points: [main\n')
    git('commit', '--quiet', '-am', 'break the MLproject', cwd=repo)
    run_id = recorded_run(f'file://{repo}#sklearn_regression', git('rev-parse', 'HEAD', cwd=repo))
    return [('--run_id', run_id)]


def param_without_default_missing(request: pytest.FixtureRequest) -> list[Argv]:
    repo = request.getfixturevalue('own_repo')
    add_project(repo, 'echo', ECHO_PROJECT)
    run_id = recorded_run(f'file://{repo}#echo', git('rev-parse', 'HEAD', cwd=repo), {'other': '1'})
    return [('--run_id', run_id)]


def server_not_listening(request: pytest.FixtureRequest) -> list[Argv]:
    monkeypatch = request.getfixturevalue('monkeypatch')
    monkeypatch.setenv('MLFLOW_TRACKING_URI', f'http://127.0.0.1:{free_port()}')
    monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')  # the message is the same
    return [('--run_id', 'a' * 32)]


def silent_tracking_server(request: pytest.FixtureRequest) -> list[Argv]:
    from proxy import silent_server

    server = silent_server()
    url, _ = server.__enter__()
    request.addfinalizer(lambda: server.__exit__(None, None, None))
    request.getfixturevalue('monkeypatch').setenv('MLFLOW_TRACKING_URI', url)
    return [('--run_id', 'a' * 32)]


def unreachable_source(request: pytest.FixtureRequest) -> list[Argv]:
    commit, tmp_path = _commit(request), request.getfixturevalue('tmp_path')
    remote = recorded_run(_samples_uri(request, 'sklearn_regression'), commit)
    missing = recorded_run(f'file://{tmp_path}/laptop/repo#sklearn_regression', commit)
    unreachable = f'git://127.0.0.1:{free_port()}/samples.git#sklearn_regression'
    return [('--run_id', remote, '--uri', unreachable), ('--run_id', missing)]


def clone_without_commit_remote_recorded(request: pytest.FixtureRequest) -> list[Argv]:
    url, _ = request.getfixturevalue('git_daemon')
    repo = request.getfixturevalue('own_repo')
    git('commit', '--quiet', '--amend', '-m', 'another commit', cwd=repo)
    git('reflog', 'expire', '--expire=now', '--all', cwd=repo)
    git('gc', '--quiet', '--prune=now', cwd=repo)
    run_id = recorded_run(f'file://{repo}#sklearn_regression', _commit(request))
    client().set_tag(run_id, 'mlflow.source.git.repoURL', f'{url}/samples.git')
    return [('--run_id', run_id)]


def ambiguous_prefix(request: pytest.FixtureRequest) -> list[Argv]:
    runs_sharing_a_prefix(request.getfixturevalue('own_store'), '7c7c7c7c', 2)
    return [('--run_id', '7c7c7c7c')]


def uv_missing(request: pytest.FixtureRequest) -> list[Argv]:
    request.getfixturevalue('path_without_managers')
    return [('--run_id', 'a' * 32, '--env-manager', 'uv')]


def pyenv_missing(request: pytest.FixtureRequest) -> list[Argv]:
    envs = request.getfixturevalue('tmp_path') / 'envs'  # no environment made yet
    request.getfixturevalue('monkeypatch').setenv('MLFLOW_ENV_ROOT', str(envs))
    run_id = recorded_run(_samples_uri(request, 'sklearn_regression'), _commit(request))
    request.getfixturevalue('path_without_managers')
    return [('--run_id', run_id, '--env-manager', 'virtualenv')]


def conda_missing(request: pytest.FixtureRequest) -> list[Argv]:
    run_id = conda_run(request.getfixturevalue('own_repo'))
    request.getfixturevalue('path_without_managers')
    return [('--run_id', run_id), ('--run_id', run_id, '--env-manager', 'conda')]


def commit_gone(request: pytest.FixtureRequest) -> list[Argv]:
    run_id, _, _ = run_of_a_commit_gone_from_the_remote(
        request.getfixturevalue('git_daemon'),
        request.getfixturevalue('samples_repo'),
        request.getfixturevalue('tmp_path'),
    )
    return [('--run_id', run_id)]


def quoted_placeholder(request: pytest.FixtureRequest) -> list[Argv]:
    pwned = request.getfixturevalue('tmp_path') / 'pwned'
    run_id = recorded_run(
        _samples_uri(request, 'quoted_command'), _commit(request), {'msg': f'x; touch {pwned}'}
    )
    return [('--run_id', run_id)]


def conda_without_environment(request: pytest.FixtureRequest) -> list[Argv]:
    run_id = recorded_run(
        _samples_uri(request, 'sklearn_regression'),
        _commit(request),
        {'alpha': '0.005', 'l1_ratio': '0.5'},
    )
    return [('--run_id', run_id, '--env-manager', 'conda')]


HEREDOC_PROJECT = {
    'MLproject': 'entry_points:\n  main:\n    parameters:\n      msg: string\n'
    '    command: "cat > cfg.txt <<EOF\\nvalue: {msg}\\nEOF\\n'
    'python echo.py --msg x"\n',
    'echo.py': ECHO_PROJECT['echo.py'],
}


def crafted_placeholder(request: pytest.FixtureRequest) -> list[Argv]:
    repo = request.getfixturevalue('own_repo')
    add_project(repo, 'heredoc', HEREDOC_PROJECT)
    pwned = request.getfixturevalue('tmp_path') / 'pwned'
    heredoc = recorded_run(
        f'file://{repo}#heredoc', git('rev-parse', 'HEAD', cwd=repo), {'msg': f'$(touch {pwned})'}
    )
    return [*quoted_placeholder(request), ('--run_id', heredoc)]


def script_outside(request: pytest.FixtureRequest) -> list[Argv]:
    commit = _commit(request)
    absolute = recorded_run(
        _samples_uri(request, 'entry_points'), commit, entry_point='/tmp/x/evil.py'
    )
    relative = recorded_run(
        _samples_uri(request, 'entry_points'), commit, entry_point='../../outside.py'
    )
    return [('--run_id', absolute), ('--run_id', relative)]


def script_missing(request: pytest.FixtureRequest) -> list[Argv]:
    run_id = recorded_run(
        _samples_uri(request, 'entry_points'), _commit(request), entry_point='nonexist.py'
    )
    return [('--run_id', run_id), ('--run_id', run_id, '--dry-run')]


def symlink_out(request: pytest.FixtureRequest) -> list[Argv]:
    repo = request.getfixturevalue('own_repo')
    outside = request.getfixturevalue('tmp_path') / 'outside-MLproject'
    outside.write_text((repo / 'sklearn_regression' / 'MLproject').read_text())
    mlproject = repo / 'sklearn_regression' / 'MLproject'
    mlproject.unlink()
    mlproject.symlink_to(outside)
    git('add', '--all', cwd=repo)
    git('commit', '--quiet', '-m', 'a symlink out', cwd=repo)
    run_id = recorded_run(f'file://{repo}#sklearn_regression', git('rev-parse', 'HEAD', cwd=repo))
    return [('--run_id', run_id)]


def file_uri_with_token(request: pytest.FixtureRequest) -> list[Argv]:
    run_id = recorded_run(_samples_uri(request, 'sklearn_regression'), _commit(request))
    return [('--run_id', run_id, '--uri', 'file://user:tok3n@localhost/missing')]


def no_tracking_uri(request: pytest.FixtureRequest) -> list[Argv]:
    monkeypatch = request.getfixturevalue('monkeypatch')
    monkeypatch.delenv('MLFLOW_TRACKING_URI')
    monkeypatch.chdir(request.getfixturevalue('tmp_path'))  # holds no mlflow.db
    return [('--run_id', 'a' * 32)]


def missing_local_store(request: pytest.FixtureRequest) -> list[Argv]:
    monkeypatch = request.getfixturevalue('monkeypatch')
    monkeypatch.setenv('MLFLOW_TRACKING_URI', 'sqlite:///missing.db')
    return [('--run_id', 'a' * 32)]


def nul_in_a_param(request: pytest.FixtureRequest) -> list[Argv]:
    repo = request.getfixturevalue('own_repo')
    add_project(repo, 'echo', ECHO_PROJECT)
    commit = git('rev-parse', 'HEAD', cwd=repo)
    run_id = recorded_run(f'file://{repo}#echo', commit, {'msg': 'a\x00b'})
    return [('--run_id', run_id), ('--run_id', run_id, '--dry-run')]


def newline_in_paths(request: pytest.FixtureRequest) -> list[Argv]:
    run_id = recorded_run(_samples_uri(request, 'sklearn_regression'), _commit(request))
    missing = f'{request.getfixturevalue("tmp_path")}/a\nb'
    return [
        ('--run_id', run_id, '--uri', missing),
        ('--runs-file', missing),
        ('--run_id', 'a', '-c', f'{missing}.json'),
    ]


def tracking_uri_with_a_newline(request: pytest.FixtureRequest) -> list[Argv]:
    request.getfixturevalue('monkeypatch').setenv('MLFLOW_TRACKING_URI', 'sqlite:///a\nb.db')
    return [('--run_id', 'a' * 32)]


def runs_file_not_regular(request: pytest.FixtureRequest) -> list[Argv]:
    fifo = request.getfixturevalue('tmp_path') / 'runs.fifo'
    os.mkfifo(fifo)  # without the check, reading it waits for a writer forever
    return [('--runs-file', '/dev/zero'), ('--runs-file', str(fifo))]


def runs_file_too_large(request: pytest.FixtureRequest) -> list[Argv]:
    path = request.getfixturevalue('tmp_path') / 'runs.txt'
    with path.open('wb') as f:
        f.truncate(reproduce_run.RUNS_FILE_MAX_BYTES + 1)  # sparse: no disk taken
    return [('--runs-file', str(path))]


def arguments(*argv: str) -> Setup:
    return lambda request: [argv]


SETUPS: dict[str, Setup] = {
    'no `--run_id`': arguments(),
    "malformed run ID (`--run_id 'a b'`)": arguments('--run_id', 'a b'),
    'malformed model URI (`--model notamodeluri`); nothing is created': arguments(
        '--model', 'notamodeluri'
    ),
    '`--fail-fast`, `--steps` or `--time-limit` with `--repeat`': lambda request: [
        ('--run_id', 'a', '--fail-fast', '--repeat', '2'),
        ('--run_id', 'a', '--repeat', '3', '--fail-fast', '--steps', '5'),
    ],
    'unknown run ID': arguments('--run_id', 'f' * 32),
    "run ID of 1 to 7 hex digits (git's short hash: too short for a prefix)": arguments(
        '--run_id', '0e0c9fb'
    ),
    'deleted run': deleted_run,
    'run in a deleted experiment': run_in_deleted_experiment,
    'run not launched as a project that recorded no remote': notebook_run,
    'notebook run': notebook_run_of_a_commit,
    'project run without a recorded commit': project_run_without_commit,
    'recorded commit that is neither a commit ID (7 to 40 hex digits) nor a ref name, '
    'or that starts with `-` (`--upload-pack=…`); also with `--dry-run`, and in a batch '
    'chosen by `--from-experiment`, which skips the run with this reason': (
        run_with_a_commit_git_takes_for_an_option
    ),
    '`--bisect` of a run whose recorded branch starts with `-`': (
        bisection_of_a_branch_git_takes_for_an_option
    ),
    "`--version=--upload-pack=…` (also `--bisect=…`; `--version ''`)": (
        lambda request: [
            ('--run_id', 'a', '--version=--upload-pack=touch /tmp/owned;false'),
            ('--run_id', 'a', '--bisect=--upload-pack=touch /tmp/owned;false'),
            ('--run_id', 'a', '--version', ''),
        ]
    ),
    'run made without `mlflow run` whose recorded script matches several files (`train.py` in '
    'several folders, or at the repository root and in `src/`); also in a batch chosen by '
    '`--from-experiment`, which skips the run with this reason': (
        lambda request: [*script_run(request, 'train.py'), *script_at_top_and_in_src(request)]
    ),
    'run made without `mlflow run` whose script calls `set_experiment(` or names '
    '`MLFLOW_EXPERIMENT_NAME`, with `--experiment_name` naming another experiment than the '
    "reference run's; also with `--dry-run`, and in a batch chosen by `--from-experiment`, "
    'which skips the run with this reason': lambda request: [
        *script_run(request, 'script_run/train.py', '--experiment_name', 'nightly'),
        *script_run(request, 'script_run/train.py', '--experiment_name', 'nightly', '--dry-run'),
    ],
    'run made without `mlflow run` whose recorded script is not at the commit': (
        lambda request: script_run(request, '/home/alice/repo/gone.py')
    ),
    '`--env-manager virtualenv` for a run made without `mlflow run`, with no '
    '`python_env.yaml` or `conda.yaml`': lambda request: script_run(
        request, 'script_run/train.py', '--env-manager', 'virtualenv'
    ),
    '`--script-args` with a placeholder that is no param of the run (the closest params are '
    'named, else the first ten)': lambda request: script_run(
        request, 'script_run/train.py', '--script-args', '--alpha {rate}'
    ),
    '`--script-args` with a brace that opens or closes no placeholder (`--alpha {alpha`)': (
        lambda request: script_run(
            request, 'script_run/train.py', '--script-args', '--alpha {alpha'
        )
    ),
    'entry point missing at that commit': entry_point_missing,
    'MLproject that does not parse at that commit': mlproject_not_parsing,
    'declared param without default that the run lacks': param_without_default_missing,
    'tracking server not listening': server_not_listening,
    'tracking server that accepts connections but never answers': silent_tracking_server,
    'git remote unreachable, or a recorded local path missing on this host': unreachable_source,
    'a recorded local clone that lacks the commit, the run recording its remote '
    '(`mlflow.source.git.repoURL`; a recorded path that is no repository on this host gives '
    'way to that remote, with a warning)': clone_without_commit_remote_recorded,
    'run ID prefix that starts no run ID': arguments('--run_id', 'fedcba98'),
    'run ID prefix that starts several run IDs': ambiguous_prefix,
    '`--env-manager uv` (or a run recorded with it) without `uv` on the PATH': uv_missing,
    '`--env-manager virtualenv` (or a run recorded with it) without `pyenv` on the PATH, for '
    'an environment MLflow has not made yet': pyenv_missing,
    'a conda project under `--env-manager conda` (or recorded with it) without `conda` on '
    'the PATH (`MLFLOW_CONDA_HOME`, `CONDA_EXE` are honoured)': conda_missing,
    'commit gone from the remote': commit_gone,
    "a placeholder anywhere but in a bare word (inside quotes, `$'…'`, backticks, a "
    'here-document, after `eval` or `bash -c`, `{p!r}`, `{p:.3}`, `{p[0]}`, …) with a value '
    'that needs quoting': crafted_placeholder,
    'script entry point outside the checkout (`-e /tmp/x/evil.py`, '
    '`-e ../../outside.py`)': script_outside,
    'script entry point missing at that commit (also with `--dry-run`)': script_missing,
    'MLproject, its environment file, a script entry point or the project folder that is a '
    'symlink out of the checkout': symlink_out,
    '`--uri file://user:tok3n@localhost/missing`': file_uri_with_token,
    'no `MLFLOW_TRACKING_URI`, and no `mlflow.db` (nor `mlruns`) in the current '
    'folder': no_tracking_uri,
    '`MLFLOW_TRACKING_URI` names a local store that does not exist (`sqlite:///missing.db`, '
    '`file:///x`, a path)': missing_local_store,
    '`--rtol nan` (`inf` is accepted: any two finite values are then close)': arguments(
        '--run_id', 'a', '--rtol', 'nan'
    ),
    '`--jobs 0` (also `--max-runs`, `--sample`)': arguments('--run_id', 'a', '--jobs', '0'),
    '`--jobs 99999999999` (more than 1000)': arguments('--run_id', 'a', '--jobs', '99999999999'),
    'a run ID followed by a newline (`--run_id "$ID"$\'\\n\'`)': arguments(
        '--run_id', 'a' * 32 + '\n'
    ),
    "`--rtol -inf` (a value that starts with `-` is still the option's value)": arguments(
        '--run_id', 'a', '--rtol', '-inf'
    ),
    '`--reap-after -1h`': arguments('--run_id', 'a', '--reap-after', '-1h'),
    '`--reap-after 0s`': arguments('--run_id', 'a', '--reap-after', '0s'),
    "`--bisect ''` (a bare `--bisect` is the tip of the branch)": arguments(
        '--run_id', 'a', '--bisect', ''
    ),
    "`--experiment_name ''` (or only blanks)": lambda request: [
        ('--run_id', 'a', '--experiment_name', ''),
        ('--run_id', 'a', '--experiment-name', ' '),
    ],
    '`--runs-file /dev/zero`, a FIFO, or any path that is not a regular file '
    '(`--runs-file -` reads standard input)': runs_file_not_regular,
    '`--runs-file` larger than 16 MiB': runs_file_too_large,
    '`--backend-config` nested 20,000 levels deep (`[[[…]]]`)': arguments(
        '--run_id', 'a', '-c', '[' * 20_000
    ),
    'a NUL byte in a recorded param value (nothing is created)': nul_in_a_param,
    'a path or URI holding a newline (`--uri`, `--runs-file`, `--backend-config`): it is '
    'shown as `\\n`, on the one line': newline_in_paths,
    '`MLFLOW_TRACKING_URI` holding a newline': tracking_uri_with_a_newline,
    '`--repeat 1` (or 0)': arguments('--run_id', 'a', '--repeat', '1'),
    '`--junit-xml missing/report.xml` (its folder does not exist)': arguments(
        '--run_id', 'a', '--junit-xml', 'missing/report.xml'
    ),
    '`--notify ftp://…` (not an `http(s)` URL)': arguments(
        '--run_id', 'a', '--notify', 'ftp://hooks.example/T0/B0/secret'
    ),
    "`--notify 'https://hooks.slack.com/services/T0/B0/a b'` (a space, a tab, a newline or "
    'another control character in the URL)': lambda request: [
        ('--run_id', 'a', '--notify', f'https://hooks.example/T0/B0/se{c}cret')
        for c in (' ', '\t', '\n', '\x1b')
    ],
    '`--notify https://hooks.slack.com:99999/…` (a port that is not a number from 1 to 65535)': (
        lambda request: [
            ('--run_id', 'a', '--notify', f'https://hooks.example:{port}/T0/B0/secret')
            for port in ('99999', '0', 'https')
        ]
    ),
    '`--since week`': arguments('--from-experiment', 'x', '--since', 'week'),
    '`--filter`, `--since` or `--sample` without `--from-experiment`': arguments(
        '--run_id', 'a', '--since', '7d'
    ),
    '`--compare-to` with several runs': arguments('--run_id', 'a', 'b', '--compare-to', 'c'),
    '`--from-experiment` naming no experiment': arguments('--from-experiment', 'nope'),
    "`--backend-config 'queue=gpu'` (neither a `.json` path nor a JSON object)": arguments(
        '--run_id', 'a', '-b', 'reproduce-test-backend', '-c', 'queue=gpu'
    ),
    "`--backend-config '[1]'`": arguments(
        '--run_id', 'a', '-b', 'reproduce-test-backend', '-c', '[1]'
    ),
    '`--backend-config missing.json`': arguments(
        '--run_id', 'a', '-b', 'kubernetes', '-c', 'missing.json'
    ),
    '`--backend-config` naming a FIFO or a device': backend_config_in_a_fifo,
    '`--backend my-scheduler` (not installed)': arguments('--run_id', 'a', '-b', 'my-scheduler'),
    '`--backend kubernetes` without `repository-uri` in its config': arguments(
        '--run_id', 'a', '-b', 'kubernetes', '-c', '{"kube-job-template-path": "job.yaml"}'
    ),
    '`--backend databricks` with a local tracking store': arguments(
        '--run_id', 'a', '-b', 'databricks', '-c', '{"spark_version": "x"}'
    ),
    '`--tolerance loss` (no `=`)': arguments('--run_id', 'a', '--tolerance', 'loss'),
    '`--tolerance loss=-1`': arguments('--run_id', 'a', '--tolerance', 'loss=-1'),
    '`--atol -1`': arguments('--run_id', 'a', '--atol', '-1'),
    '`--rtol abc`': arguments('--run_id', 'a', '--rtol', 'abc'),
    '`--env-manager pip`': arguments('--run_id', 'a', '--env-manager', 'pip'),
    '`--env-manager conda` for a project without a conda environment': conda_without_environment,
}

BAD_INPUT = readme_table('Bad input')


def run_tool(capsys: pytest.CaptureFixture[str], argv: Argv) -> tuple[int, str, str]:
    """main() in this process; argparse's own errors leave through SystemExit."""
    try:
        return reproduce(capsys, *argv)
    except SystemExit as e:
        out, err = capsys.readouterr()
        return int(e.code or 0), out, err


@pytest.mark.parametrize(
    ('situation', 'message'),
    [pytest.param(situation, message, id=situation) for situation, message in BAD_INPUT],
)
def test_bad_input_row(
    situation: str, message: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    if situation not in SETUPS:
        pytest.fail(f'README Bad input row {situation!r} has no setup in SETUPS')
    pattern = message_pattern(message)
    for argv in SETUPS[situation](request):
        code, out, err = run_tool(capsys, argv)
        assert (code, out) == (2, ''), err
        assert pattern.fullmatch(err), f'{argv}: {err!r} does not match {pattern.pattern!r}'


def test_every_setup_has_a_readme_row():
    assert set(SETUPS) - {situation for situation, _ in BAD_INPUT} == set()


def help_options(capsys: pytest.CaptureFixture[str]) -> set[str]:
    """The flags --help lists: the part of each option line before its help text."""
    with pytest.raises(SystemExit) as exc:
        main(['--help'])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    invocations = [
        line.strip().split('  ')[0] for line in text.splitlines() if line.startswith('  -')
    ]
    return {flag for part in invocations for flag in re.findall(r'(?<![\w-])-{1,2}[\w-]+', part)}


def test_every_readme_option_is_in_help(capsys):
    documented = {
        span.split()[0]
        for row in readme_table('Options')
        for _, span in _CODE_SPAN_RE.findall(row[0])
    }
    assert documented - help_options(capsys) == set()


def test_every_help_option_is_in_the_readme(capsys):
    documented = {
        span.split()[0]
        for row in readme_table('Options')
        for _, span in _CODE_SPAN_RE.findall(row[0])
    }
    assert help_options(capsys) - documented == set()


def test_readme_lists_every_exit_code():
    documented = {int(row[0]) for row in readme_table('Exit codes')}
    assert documented == {
        value for name, value in vars(reproduce_run).items() if name.startswith('EXIT_')
    }


_FENCED_RE = re.compile(r'^```(\w*)\n(.*?)^```', re.MULTILINE | re.DOTALL)
_PYTHON_COMMAND_RE = re.compile(r'(?<![\w-])python(?=\s)')  # not python3, python-version


def typed_commands(text: str) -> list[str]:
    """What a reader types: every line of a shell or CI block, the `$ ` lines
    of an output block, and the code spans of the prose that run a file of
    this repository (`python3 MLproject_samples/make_reference.py …`)."""
    commands = []
    for info, body in _FENCED_RE.findall(text):
        lines = body.splitlines()
        commands += lines if info in ('sh', 'bash', 'yaml') else []
        commands += [line for line in lines if info == '' and line.startswith('$ ')]
    for _, span in _CODE_SPAN_RE.findall(_FENCED_RE.sub('', text)):
        words = span.split()
        if len(words) > 1 and words[0].startswith('python') and (ROOT / words[1]).is_file():
            commands.append(span)
    return commands


def test_every_command_to_type_says_python3():
    """The quick start insists on python3 (some systems have no `python`);
    every later example says it too.  What MLflow records or what the tool
    runs (`python train.py` in an MLproject's command) is quoted as it is."""
    commands = typed_commands((ROOT / 'README.md').read_text())
    assert len(commands) > 20
    assert [c for c in commands if _PYTHON_COMMAND_RE.search(c)] == []


def test_make_reference_prints_the_run_id_alone_and_leaves_nothing_in_tmpdir(
    samples_repo, store, tmp_path
):
    """The quick start's `--run_id "$(python3 MLproject_samples/make_reference.py
    SAMPLE)"`: stdout is the new run's ID, and `mlflow run`'s storage folder
    leaves with it."""
    own_tmp = tmp_path / 'tmp'
    own_tmp.mkdir()
    proc = subprocess.run(
        (sys.executable, str(SAMPLES / 'make_reference.py'), str(samples_repo / 'jitter')),
        capture_output=True,
        text=True,
        env={**os.environ, 'TMPDIR': str(own_tmp), 'MLFLOW_TRACKING_URI': store},
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = client().get_run(proc.stdout.strip())
    assert (run.info.status, proc.stdout) == ('FINISHED', f'{run.info.run_id}\n')
    assert list(own_tmp.iterdir()) == []

"""The recorder: a run context provider that `pip install` of this package
registers with MLflow, so that every run start_run() creates in that
environment records its command line, working folder, whether the work tree
was clean, and its environment; never a secret.  End to end, real scripts run
with the interpreter of a real virtual environment where the checkout was
installed, in a clone whose remote is a bare repository on the git daemon,
and the tool reproduces them with no flag."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    client,
    clone_with_remote,
    commit_all,
    git,
    reproduce,
    reproduced_run,
    run_python,
)

import reproduce_run

# --- pure ---------------------------------------------------------------------

HIDDEN = reproduce_run.SECRET_NOT_RECORDED


@pytest.mark.parametrize(
    ('argv', 'kept'),
    [
        pytest.param(['0.5', '--lr', '0.1'], ['0.5', '--lr', '0.1'], id='nothing-secret'),
        pytest.param(['--api-token', 'abc'], ['--api-token', HIDDEN], id='option-then-value'),
        pytest.param(['--password=hunter2'], [f'--password={HIDDEN}'], id='option-equals'),
        pytest.param(
            ['DB_PASSWORD=x', 'db.api_key=y'],
            [f'DB_PASSWORD={HIDDEN}', f'db.api_key={HIDDEN}'],
            id='overrides',
        ),
        pytest.param([], [], id='no-arguments'),
        pytest.param(['--password'], ['--password'], id='a-secret-option-last'),
        pytest.param(['--token', '--lr'], ['--token', HIDDEN], id='whatever-follows-is-masked'),
        pytest.param(
            ['--token', '--password', 'x'],
            ['--token', HIDDEN, HIDDEN],
            id='a-secret-option-after-a-secret-option',
        ),
        pytest.param(
            ['--dbPassword', 'x', '-password', 'y'],
            ['--dbPassword', HIDDEN, '-password', HIDDEN],
            id='camel-case-and-one-dash',
        ),
        pytest.param(
            ['--hftoken', 'x', 'PGPASSWORD=y'],
            ['--hftoken', HIDDEN, f'PGPASSWORD={HIDDEN}'],
            id='glued-prefixes',
        ),
        pytest.param(
            ['--config', '{"password": "x"}'],
            ['--config', f'{{"password": "{HIDDEN}"}}'],
            id='json',
        ),
        pytest.param(
            ['https://h/x?token=abc&y=1'], [f'https://h/x?token={HIDDEN}&y=1'], id='query-string'
        ),
        pytest.param(['-c', "password='x'"], ['-c', f"password='{HIDDEN}'"], id='code'),
        pytest.param(
            ['--keyword', 'k', '--monkey', 'm'],
            ['--keyword', 'k', '--monkey', 'm'],
            id='key-inside-a-word',
        ),
        pytest.param(
            ['--data', 'https://alice:pw@host/x.csv'],
            ['--data', f'https://{HIDDEN}@host/x.csv'],
            id='url-credentials',
        ),
        pytest.param(
            ['https://u:pa/s@s@host/x'], [f'https://{HIDDEN}@host/x'], id='url-slash-and-at'
        ),
        pytest.param(['u:pw@db:5432/x'], [f'{HIDDEN}@db:5432/x'], id='url-without-scheme'),
    ],
)
def test_without_secrets(argv, kept):
    assert reproduce_run.without_secrets(argv) == kept


@pytest.mark.parametrize(
    ('argv', 'named'),
    [
        pytest.param(['0.5', '--api-token', HIDDEN], '--api-token', id='option-then-value'),
        pytest.param([f'--password={HIDDEN}'], '--password', id='option-equals'),
        pytest.param([f'DB_PASSWORD={HIDDEN}'], 'DB_PASSWORD', id='override'),
        pytest.param([f'https://{HIDDEN}@host/x'], f'https://{HIDDEN}@host/x', id='url'),
    ],
)
def test_a_recorded_secret_cannot_be_replayed(argv, named):
    reproduce_run.refuse_unrecorded_secrets(['0.5', '--lr', '1'])  # nothing hidden
    reproduce_run.refuse_unrecorded_secrets([])
    with pytest.raises(reproduce_run.ReproduceError) as e:
        reproduce_run.refuse_unrecorded_secrets(argv)
    assert f'({named})' in str(e.value) and '--script-args' in str(e.value)


@pytest.mark.parametrize(
    ('command', 'script', 'arguments'),
    [
        pytest.param(['train.py', '0.5', '-m', 'x'], 'train.py', ['0.5', '-m', 'x'], id='script'),
        pytest.param(['-X', 'dev', 'src/t.py', 'a'], 'src/t.py', ['a'], id='interpreter-options'),
        pytest.param(
            ['-m', 'pkg.train', '--lr', '1'], '/r/pkg/train.py', ['--lr', '1'], id='module'
        ),
        pytest.param(['-c', 'code', 'z'], '-c', ['z'], id='code'),
        pytest.param(['-'], '-', [], id='standard-input'),
        pytest.param([], '', None, id='embedded'),
    ],
)
def test_typed_arguments(command, script, arguments):
    assert reproduce_run.typed_arguments(command, script) == arguments


@pytest.mark.parametrize('size', [10, 50_000])
def test_packed_round_trip(size):
    value = {'packages': {f'package-{i}': f'{i}.0' for i in range(size)}}
    tag = reproduce_run.packed(value)
    assert len(tag) <= reproduce_run.TAG_VALUE_LIMIT or size == 50_000
    assert tag.startswith('zlib+base64:') == (size == 50_000)
    assert reproduce_run.unpacked(tag) == value


# --- end to end ---------------------------------------------------------------

TRAIN = """\
import sys

import mlflow

with mlflow.start_run() as run:
    a, b = float(sys.argv[1]), float(sys.argv[2])
    mlflow.log_metric('score', 10 * a + b)
    print(f'RUN_ID={run.info.run_id}')
"""
FILES = {
    'train.py': "raise SystemExit('the train.py at the top ran, not src/train.py')\n",
    'src/train.py': TRAIN,
    'src/plain.py': 'import mlflow\n\nwith mlflow.start_run() as run:\n'
    "    mlflow.log_metric('one', 1.0)\n    print(f'RUN_ID={run.info.run_id}')\n",
}


@pytest.fixture(scope='module')
def recorded_repo(tmp_path_factory, git_daemon) -> Path:
    """A clone whose remote (origin) is a bare repository on the git daemon,
    with a train.py at its top and another in src/."""
    url, base = git_daemon
    git('init', '--quiet', '--bare', str(base / 'recorded.git'), cwd=base)
    repo = tmp_path_factory.mktemp('recorded') / 'repo'
    repo.mkdir()
    return clone_with_remote(repo, FILES, f'{url}/recorded.git')


def started(bin_dir: Path, cwd: Path, *argv: str, env: dict[str, str] | None = None):
    """`python argv...` with the installed environment's interpreter, in cwd:
    (its run, the finished process)."""
    proc = run_python(str(bin_dir / 'python'), cwd, *argv, env=env)
    [run_id] = [line[7:] for line in proc.stdout.splitlines() if line.startswith('RUN_ID=')]
    return client().get_run(run_id), proc


@pytest.mark.slow
def test_a_script_in_a_subfolder_with_positional_arguments_reproduces_equal(
    installed, recorded_repo, capsys
):
    reference, proc = started(installed, recorded_repo / 'src', 'train.py', '0.5', '0.1')
    tags = reference.data.tags
    assert proc.stderr.count('warning') == 0, proc.stderr
    assert json.loads(tags['reproduce.command']) == ['train.py', '0.5', '0.1']
    assert json.loads(tags['reproduce.argv']) == ['0.5', '0.1']
    assert tags['reproduce.workdir'] == 'src'
    assert tags['mlflow.source.git.dirty'] == 'false'
    environment = reproduce_run.unpacked(tags['reproduce.environment'])
    assert environment['packages']['mlflow'] == importlib.metadata.version('mlflow')
    assert environment['python']['executable'] == str(installed / 'python')

    code, out, err = reproduce(capsys, '--run_id', reference.info.run_id)
    assert code == 0, err
    assert out.splitlines()[-1] == 'Runs equal: True'
    assert (
        'Script:         python train.py 0.5 0.1 (in src/, env manager: local, '
        'arguments from the tag reproduce.argv)' in out
    )
    assert "environment (the reference run's from the tag reproduce.environment" in out
    new = reproduced_run(out)
    assert new.data.metrics['score'] == 5.1
    assert new.data.tags['reproduce.workdir'] == 'src'
    assert json.loads(new.data.tags['reproduce.argv']) == ['0.5', '0.1']


@pytest.mark.slow
def test_a_secret_is_never_stored_and_its_reproduction_exits_2(installed, recorded_repo, capsys):
    argv = ('train.py', '0.5', '0.1', '--api-token', 'tok-4f1a9c', '--password=hunter2-pw')
    reference, _ = started(installed, recorded_repo / 'src', *argv)
    stored = json.dumps({**reference.data.tags, **reference.data.params})
    assert 'tok-4f1a9c' not in stored and 'hunter2-pw' not in stored
    assert json.loads(reference.data.tags['reproduce.argv'])[2:] == [
        '--api-token',
        HIDDEN,
        f'--password={HIDDEN}',
    ]
    before = client().search_runs([reference.info.experiment_id])
    code, out, err = reproduce(capsys, '--run_id', reference.info.run_id)
    assert code == 2
    assert err.splitlines() == [
        'reproduce_run: error: the run was started with a secret (--api-token), which was not '
        'recorded: pass the arguments with --script-args'
    ]
    assert len(client().search_runs([reference.info.experiment_id])) == len(before)


@pytest.mark.slow
def test_record_0_records_nothing(installed, recorded_repo):
    reference, _ = started(
        installed, recorded_repo / 'src', 'train.py', '1', '2', env={'REPRODUCE_RUN_RECORD': '0'}
    )
    assert [t for t in reference.data.tags if t.startswith('reproduce.')] == []


@pytest.mark.slow
@pytest.mark.parametrize('where', ['outside-git', 'no-commit', 'no-git-on-path'])
def test_the_run_starts_without_git_facts(installed, tmp_path, where):
    folder = tmp_path / 'work'
    folder.mkdir()
    (folder / 'train.py').write_text(TRAIN)
    env = {}
    if where != 'outside-git':
        git('init', '--quiet', cwd=folder)
    if where == 'no-git-on-path':  # a repository with a commit, and no git to read it
        git('add', 'train.py', cwd=folder)
        git('config', 'user.email', 'tests@example.invalid', cwd=folder)
        git('config', 'user.name', 'tests', cwd=folder)
        commit_all(folder, 'train.py')
        env['PATH'] = str(tmp_path / 'empty')  # the interpreter is named by its path
    reference, proc = started(installed, folder, 'train.py', '3', '4', env=env)
    tags = reference.data.tags
    assert reference.info.status == 'FINISHED' and reference.data.metrics['score'] == 34.0
    assert json.loads(tags['reproduce.argv']) == ['3', '4']
    assert 'reproduce.environment' in tags
    assert 'reproduce.workdir' not in tags and 'mlflow.source.git.dirty' not in tags
    warnings = [line for line in proc.stderr.splitlines() if 'reproduce_run: warning' in line]
    if where == 'no-git-on-path':
        [warning] = warnings
        assert 'the run starts without part of its record: no working folder: git:' in warning
    else:
        assert warnings == []


@pytest.mark.slow
def test_a_dirty_work_tree_is_said_in_mlflows_tag(installed, recorded_repo, tmp_path):
    clone = tmp_path / 'clone'
    git('clone', '--quiet', str(recorded_repo), str(clone), cwd=tmp_path)
    (clone / 'src' / 'notes.txt').write_text('an untracked file\n')
    reference, _ = started(installed, clone, 'src/train.py', '1', '1')
    assert reference.data.tags['mlflow.source.git.dirty'] == 'true'
    assert reference.data.tags['reproduce.workdir'] == '.'


@pytest.mark.slow
def test_importing_mlflow_with_the_recorder_imports_nothing_else_and_prints_nothing(
    installed, tmp_path
):
    code = 'import sys, mlflow; print(sorted(sys.modules))'

    def modules(python: str) -> set[str]:
        proc = subprocess.run((python, '-c', code), capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0 and proc.stderr == '', proc.stderr
        return set(json.loads(proc.stdout.replace("'", '"')))

    assert modules(str(installed / 'python')) - modules(sys.executable) == {'reproduce_run'}


@pytest.mark.slow
def test_a_script_without_arguments_through_a_symlink_reproduces_equal(
    installed, recorded_repo, tmp_path, capsys
):
    """The folder is the real one: a symlinked path to the script still
    records src/ as the working folder."""
    (tmp_path / 'link').symlink_to(recorded_repo)
    reference, _ = started(installed, recorded_repo / 'src', str(tmp_path / 'link/src/plain.py'))
    assert reference.data.tags['reproduce.workdir'] == 'src'
    assert json.loads(reference.data.tags['reproduce.argv']) == []
    code, out, err = reproduce(capsys, '--run_id', reference.info.run_id)
    assert code == 0, err
    assert out.splitlines()[-1] == 'Runs equal: True'

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
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    SAMPLES,
    client,
    clone_with_remote,
    commit_all,
    git,
    reproduce,
    reproduce_json,
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


@pytest.mark.parametrize(
    ('command', 'options', 'module', 'typed'),
    [
        pytest.param(['train.py', '1'], (), None, 'train.py', id='script'),
        pytest.param(['-m', 'pkg.train', '1'], (), 'pkg.train', None, id='module'),
        pytest.param(
            ['-X', 'dev', '-OO', '-u', '-W', 'ignore', 'src/t.py'],
            ('-X', 'dev', '-OO', '-u', '-W', 'ignore'),
            None,
            'src/t.py',
            id='options',
        ),
        pytest.param(['-Xutf8', '-m', 'p'], ('-Xutf8',), 'p', None, id='glued-x-option'),
        pytest.param(
            ['-X', 'int_max_str_digits=0', 'a.py'],
            ('-X', 'int_max_str_digits=0'),
            None,
            'a.py',
            id='x-option-with-a-value',
        ),
    ],
)
def test_recorded_launch(command, options, module, typed):
    assert reproduce_run.recorded_launch(command) == (options, module, typed)


@pytest.mark.parametrize(
    ('command', 'said'),
    [
        pytest.param(['-c', 'print(1)'], "interpreter option '-c'", id='code'),
        pytest.param(['-'], "interpreter option '-'", id='standard-input'),
        pytest.param(
            ['-X', 'pycache_prefix=/etc', 'a.py'],
            "interpreter option '-X pycache_prefix=/etc'",
            id='an-option-that-writes-on-the-host',
        ),
        pytest.param(['-X'], "interpreter option '-X'", id='an-option-without-its-value'),
        pytest.param(['-m', 'os;rm'], 'names no script nor module', id='not-a-module-name'),
        pytest.param(
            ['-W', 'ignore::this.X', 'a.py'],
            "interpreter option '-W ignore::this.X'",
            id='a-warning-category-that-imports-a-module',
        ),
        pytest.param(['-u'], 'names no script nor module', id='options-alone'),
    ],
)
def test_a_recorded_command_that_cannot_be_replayed_is_one_line(command, said):
    with pytest.raises(reproduce_run.ReproduceError) as e:
        reproduce_run.recorded_launch(command)
    assert said in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize(
    ('name', 'path'),
    [
        ('files/src/new.py', 'src/new.py'),
        ('files/a', 'a'),
        ('files/../x', None),
        ('files//etc/passwd', None),
        ('files/src/./x', None),
        ('files/.git/hooks/post-checkout', None),
        ('files/sub/.GIT/config', None),
        ('src/new.py', None),
        ('files/', None),
    ],
)
def test_change_path(name, path):
    assert reproduce_run._change_path(name) == path


@pytest.mark.parametrize(
    ('out', 'changed', 'untracked', 'submodules'),
    [
        pytest.param('# branch.oid abc\0# branch.head main\0', [], [], [], id='clean'),
        pytest.param(
            '1 .M N... 100644 100644 100644 h h src/a b.py\0? new file.py\0',
            ['src/a b.py'],
            ['new file.py'],
            [],
            id='edited-and-untracked',
        ),
        pytest.param(
            '2 R. N... 100644 100644 100644 h h R100 new.py\0old.py\0? x\0',
            ['new.py'],
            ['x'],
            [],
            id='renamed-skips-its-old-path',
        ),
        pytest.param('1 .M S.M. 160000 160000 160000 h h lib\0', [], [], ['lib'], id='submodule'),
    ],
)
def test_status_entries(out, changed, untracked, submodules):
    tree = reproduce_run._status_entries(out)
    assert (tree.changed, tree.untracked, tree.submodules) == (changed, untracked, submodules)
    assert tree.dirty == bool(changed or untracked or submodules)


def edited_repository(where: Path) -> tuple[Path, reproduce_run.WorkTree]:
    """A repository with a tracked edit, a binary untracked file in a new
    folder, an executable one, and a .env; and what git status says of it."""
    repo = where / 'edited'
    repo.mkdir()
    clone_with_remote(repo, {'a.txt': 'one\n', 'keep.txt': 'kept\n'}, str(repo))
    (repo / 'a.txt').write_text('one\ntwo\n')
    (repo / 'new').mkdir()
    (repo / 'new' / 'blob.bin').write_bytes(bytes(range(256)))
    (repo / 'run.sh').write_text('#!/bin/sh\n')
    (repo / 'run.sh').chmod(0o755)
    (repo / '.env').write_text('TOKEN=tok-never-recorded\n')
    status = reproduce_run._git_status(str(repo))
    return repo, reproduce_run._work_tree(status)


def test_changes_round_trip_through_tags_into_a_checkout(tmp_path):
    repo, tree = edited_repository(tmp_path)
    tags = reproduce_run.changes_tags(str(repo), tree)
    changes = reproduce_run.recorded_changes(tags)
    assert changes.files == ('a.txt', 'new/blob.bin', 'run.sh') and changes.count == 3
    assert changes.not_recorded == {'.env': 'it may hold a secret'}
    assert changes.text() == 'uncommitted changes (3 files; not recorded: .env)'
    checkout = tmp_path / 'checkout'
    git('clone', '--quiet', str(repo), str(checkout), cwd=tmp_path)
    reproduce_run.apply_changes(changes, str(checkout), 'c' * 40)
    assert (checkout / 'a.txt').read_text() == 'one\ntwo\n'
    assert (checkout / 'new' / 'blob.bin').read_bytes() == bytes(range(256))
    assert (checkout / 'run.sh').stat().st_mode & 0o111
    assert not (checkout / '.env').exists()
    assert b'tok-never-recorded' not in changes.members[reproduce_run.CHANGES_DIFF][0]
    assert 'tok-never-recorded' not in json.dumps(tags)


def test_changes_beyond_the_limit_keep_their_digest_and_files_only(tmp_path, monkeypatch):
    repo, tree = edited_repository(tmp_path)
    monkeypatch.setattr(reproduce_run, 'RECORD_CHANGES_READ_LIMIT', 100)
    tags = reproduce_run.changes_tags(str(repo), tree)
    assert list(tags) == ['reproduce.changes']
    changes = reproduce_run.recorded_changes(tags)
    assert changes.members is None and changes.count == 3 and len(changes.sha256) == 64
    assert changes.text() == 'uncommitted changes (3 files, too large to record: not applied)'


@pytest.mark.parametrize(
    ('tampered', 'said'),
    [
        pytest.param({'reproduce.changes.1': 'QUJD'}, 'their sha256 does not match', id='sha256'),
        pytest.param({'reproduce.changes': '{"parts": 0}'}, "'files'", id='broken-json'),
        pytest.param({'reproduce.changes.1': None}, "'reproduce.changes.1'", id='a-part-missing'),
    ],
)
def test_recorded_changes_refuses_tags_it_did_not_write(tmp_path, tampered, said):
    repo, tree = edited_repository(tmp_path)
    tags = {**reproduce_run.changes_tags(str(repo), tree), **tampered}
    tags = {k: v for k, v in tags.items() if v is not None}
    with pytest.raises(reproduce_run.ReproduceError) as e:
        reproduce_run.recorded_changes(tags)
    assert said in str(e.value) and "are not the recorder's" in str(e.value)


@pytest.mark.parametrize(
    ('module', 'script', 'path'),
    [
        pytest.param('pkg.train', 'pkg/train.py', 'pkg/train.py', id='the-recorded-script'),
        pytest.param('pkg', None, 'pkg/__main__.py', id='a-package-main'),
        pytest.param('timeit', None, None, id='a-module-of-this-host'),
        pytest.param('pkg.train', 'other.py', None, id='not-the-recorded-script'),
    ],
)
def test_a_recorded_module_must_be_the_recorded_file_of_the_checkout(
    tmp_path, module, script, path
):
    """`-m timeit "__import__('os').system(...)"` in a tag must not run."""
    for name in ('pkg/__init__.py', 'pkg/__main__.py', 'pkg/train.py', 'other.py'):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text('')
    if path is not None:
        assert reproduce_run.module_file(str(tmp_path), '', module, script, 'c' * 40) == path
        return
    with pytest.raises(reproduce_run.ReproduceError) as e:
        reproduce_run.module_file(str(tmp_path), '', module, script, 'c' * 40)
    assert f'the recorded command runs module {module!r}, which is not' in str(e.value)


@pytest.mark.parametrize(
    'path',
    [
        '.git-credentials',
        '.secrets',
        '.token',
        '.mlflow_token',
        '.aws_credentials',
        '.databrickscfg',
        '.pypirc',
        '.npmrc',
        '.docker/config.json',
        '.kube/config',
        'kubeconfig',
        '.envrc',
        '.env_local',
        'env.local',
        '.my.cnf',
        '.s3cfg',
        'secrets/prod.yaml',
        'private/db.yaml',
        'keys/prod.txt',
        'terraform.tfvars',
        'x.tfstate',
        'service-account.json',
        'oauth.json',
        'a/.env.prod',
        'id_ed25519',
    ],
)
def test_untracked_files_that_may_hold_secrets_are_not_recorded(path):
    assert reproduce_run._secret_file(path)


@pytest.mark.parametrize(
    'path', ['train.py', 'env_utils.py', 'environment.py', 'auth.py', 'tokenizer.py', 'monkey.py']
)
def test_code_whose_name_only_looks_like_a_secret_is_recorded(path):
    assert not reproduce_run._secret_file(path)


def test_the_tracking_store_an_unreadable_file_and_many_files_are_left_out(tmp_path):
    repo, _ = edited_repository(tmp_path)
    (repo / 'mlruns' / '0').mkdir(parents=True)
    (repo / 'mlruns' / '0' / 'meta.yaml').write_text('params: db_password=hunter2\n')
    (repo / 'mlflow.db').write_bytes(b'SQLite')
    tree = reproduce_run._work_tree(reproduce_run._git_status(str(repo)))
    about = json.loads(reproduce_run.changes_tags(str(repo), tree)['reproduce.changes'])
    assert about['not_recorded']['mlflow.db'] == "MLflow's own store"
    assert about['not_recorded']['mlruns/0/meta.yaml'] == "MLflow's own store"
    many = reproduce_run.WorkTree([], [f'gone/{i}.txt' for i in range(1001)], [])
    tags = reproduce_run.changes_tags(str(repo), many)  # files that do not exist: never read
    about = json.loads(tags['reproduce.changes'])
    assert (about['too_large'], about['count'], about['parts']) == (True, 1001, 0)
    assert len(tags['reproduce.changes']) <= reproduce_run.TAG_VALUE_LIMIT


def test_many_files_left_out_still_fit_in_the_tag():
    left = {f'link-{i:04}': 'not a regular file' for i in range(400)}
    about = {'count': 1, 'sha256': 'x' * 64, 'parts': 1, 'too_large': False}
    text = reproduce_run._fitted_about(about, ['a.py'], left)
    assert len(text) <= reproduce_run.TAG_VALUE_LIMIT
    assert json.loads(text)['not_recorded_count'] == 400


def crafted_changes(members: list[tuple[str, bytes]], about: dict | None = None) -> dict:
    """Tags as the recorder writes them, holding an archive made here."""
    import base64
    import gzip
    import hashlib
    import io
    import tarfile

    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode='wb') as z, tarfile.open(fileobj=z, mode='w') as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buffer.getvalue()
    encoded = base64.b64encode(archive).decode()
    parts = [encoded[i : i + 8000] for i in range(0, len(encoded), 8000)]
    head = {'files': [], 'count': 0, 'not_recorded': {}, 'too_large': False, **(about or {})}
    head |= {'sha256': hashlib.sha256(archive).hexdigest(), 'parts': len(parts)}
    tags = {'reproduce.changes': json.dumps(head)}
    return tags | {f'reproduce.changes.{i}': part for i, part in enumerate(parts, 1)}


def test_what_is_applied_is_counted_from_the_archive_not_from_the_tag():
    diff = b'diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n'
    tags = crafted_changes([('changes.diff', diff), ('files/new.py', b'')])
    changes = reproduce_run.recorded_changes(tags)  # the tag says 0 files
    assert (changes.count, changes.files) == (2, ('new.py', 'train.py'))
    assert changes.text() == 'uncommitted changes (2 files)'


@pytest.mark.parametrize(
    ('members', 'said'),
    [
        pytest.param(
            [('files/zeros', bytes(80 * 2**20))], 'it unpacks to more than', id='a-gzip-bomb'
        ),
        pytest.param(
            [(f'files/{i}', b'') for i in range(1002)], "'files/1001' is not a file", id='too-many'
        ),
        pytest.param(
            [('files/../' + 'x' * 200_000, b'')], "'files/../xxx", id='a-very-long-bad-name'
        ),
    ],
)
def test_an_archive_beyond_what_the_recorder_writes_is_one_line(members, said):
    with pytest.raises(reproduce_run.ReproduceError) as e:
        reproduce_run.recorded_changes(crafted_changes(members))
    message = str(e.value)
    assert said in message and '\n' not in message and len(message) < 400


def test_an_untracked_file_is_never_written_into_git_through_a_symlink(tmp_path):
    git('init', '--quiet', cwd=tmp_path)
    (tmp_path / 'g').symlink_to('.git')
    with pytest.raises(reproduce_run.ReproduceError) as e:
        reproduce_run._write_untracked(str(tmp_path), 'g/hooks/post-checkout', b'', 0o755, 'at x')
    assert 'beyond a symlink' in str(e.value)
    assert not (tmp_path / '.git' / 'hooks' / 'post-checkout').exists()


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
    'pkg/__init__.py': '',
    'pkg/helper.py': 'SCALE = 3.0\n',
    # Relative and absolute imports of its package, and the interpreter's
    # flags as metrics: equal only when `-X dev -O -m pkg.train` is replayed.
    'pkg/train.py': 'import sys\n\nimport mlflow\n\nimport pkg.helper\n\nfrom . import helper\n\n'
    'with mlflow.start_run() as run:\n'
    "    mlflow.log_metric('score', helper.SCALE * float(sys.argv[1]) + pkg.helper.SCALE)\n"
    "    mlflow.log_metric('dev_mode', float(sys.flags.dev_mode))\n"
    "    mlflow.log_metric('optimize', float(sys.flags.optimize))\n"
    "    print(f'RUN_ID={run.info.run_id}')\n",
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


def processes() -> str:
    """The command lines of this host's processes."""
    return subprocess.run(('ps', '-eo', 'args'), capture_output=True, text=True).stdout


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
    # Compared with the recorded environment: the same Python and packages,
    # from another virtualenv, are no difference.
    assert 'Other differences' not in out
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
@pytest.mark.parametrize('where', ['outside-git', 'no-commit', 'no-git-on-path', 'slow-git'])
def test_the_run_starts_without_git_facts(installed, tmp_path, where):
    sleep = shutil.which('sleep')
    folder = tmp_path / 'work'
    folder.mkdir()
    (folder / 'train.py').write_text(TRAIN)
    env = {}
    if where != 'outside-git':
        git('init', '--quiet', cwd=folder)
    if where in ('no-git-on-path', 'slow-git'):  # a repository with a commit
        git('add', 'train.py', cwd=folder)
        git('config', 'user.email', 'tests@example.invalid', cwd=folder)
        git('config', 'user.name', 'tests', cwd=folder)
        commit_all(folder, 'train.py')
        env['PATH'] = str(tmp_path / 'empty')  # the interpreter is named by its path
    if where == 'slow-git':  # a git whose status answers after the recorder's 2 s
        (tmp_path / 'empty').mkdir()
        slow = tmp_path / 'empty' / 'git'
        real = shutil.which('git')
        slow.write_text(f'#!/bin/sh\ncase "$1" in status) {sleep} 30 ;; esac\nexec {real} "$@"\n')
        slow.chmod(0o755)
    reference, proc = started(installed, folder, 'train.py', '3', '4', env=env)
    tags = reference.data.tags
    assert reference.info.status == 'FINISHED' and reference.data.metrics['score'] == 34.0
    assert json.loads(tags['reproduce.argv']) == ['3', '4']
    assert 'reproduce.environment' in tags
    assert 'reproduce.workdir' not in tags and 'mlflow.source.git.dirty' not in tags
    warnings = [line for line in proc.stderr.splitlines() if 'reproduce_run: warning' in line]
    if where in ('no-git-on-path', 'slow-git'):
        [warning] = warnings
        assert 'the run starts without part of its record: no working folder: git:' in warning
        assert ('timed out after 2.0 seconds' in warning) == (where == 'slow-git')
        assert f'{sleep} 30' not in processes()  # the recorder ended git's process group
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


@pytest.mark.slow
def test_a_module_run_with_interpreter_options_is_replayed_as_it_started(
    installed, recorded_repo, capsys
):
    reference, _ = started(installed, recorded_repo, '-X', 'dev', '-O', '-m', 'pkg.train', '2')
    tags = reference.data.tags
    assert reference.data.metrics == {'score': 9.0, 'dev_mode': 1.0, 'optimize': 1.0}
    assert json.loads(tags['reproduce.command']) == ['-X', 'dev', '-O', '-m', 'pkg.train', '2']
    assert tags['reproduce.script'] == 'pkg/train.py' and tags['reproduce.workdir'] == '.'
    assert tags['mlflow.source.name'] == str(recorded_repo / 'pkg' / 'train.py')

    code, out, err = reproduce(capsys, '--run_id', reference.info.run_id)
    assert code == 0, err
    assert out.splitlines()[-1] == 'Runs equal: True'
    assert 'Script:         python -X dev -O -m pkg.train 2 (in the repository root' in out
    new = reproduced_run(out)
    assert json.loads(new.data.tags['reproduce.command']) == json.loads(tags['reproduce.command'])
    assert new.data.tags['reproduce.script'] == 'pkg/train.py'


EDITED_TRAIN = TRAIN.replace('import mlflow', 'import mlflow\nimport extra').replace(
    '10 * a + b', '10 * a + b + extra.BONUS'
)


@pytest.mark.slow
def test_uncommitted_edits_and_an_untracked_module_are_applied_to_the_checkout(
    installed, recorded_repo, tmp_path, capsys
):
    """Trained from a tracked edit that imports an untracked module: the
    committed code alone scores 12, not 112.  The .env beside it is never
    recorded; the user's clone is left as it was."""
    clone = tmp_path / 'clone'
    git('clone', '--quiet', str(recorded_repo), str(clone), cwd=tmp_path)
    (clone / 'src' / 'train.py').write_text(EDITED_TRAIN)
    (clone / 'src' / 'extra.py').write_text('BONUS = 100.0\n')
    (clone / 'src' / '.env').write_text('API_TOKEN=tok-9c2e7d\n')
    status = git('status', '--porcelain', '--ignored', cwd=clone)
    reference, _ = started(installed, clone / 'src', 'train.py', '1', '2')
    tags = reference.data.tags
    assert reference.data.metrics['score'] == 112.0
    about = json.loads(tags['reproduce.changes'])
    assert about['files'] == ['src/extra.py', 'src/train.py'] and about['parts'] == 1
    assert about['not_recorded'] == {'src/.env': 'it may hold a secret'}
    assert tags['mlflow.source.git.dirty'] == 'true'

    code, out, err = reproduce(capsys, '--run_id', reference.info.run_id)
    assert code == 0, err
    assert out.splitlines()[-1] == 'Runs equal: True'
    commit = tags['mlflow.source.git.commit']
    [source] = [line for line in out.splitlines() if line.startswith('Source:')]
    assert source.endswith(f'@ {commit} + uncommitted changes (2 files; not recorded: src/.env)')
    assert 'src/.env (it may hold a secret)' in err
    assert 'uncommitted edits' not in out  # applied: not a difference
    new = reproduced_run(out)
    assert new.data.tags['reproduce.changes'] == tags['reproduce.changes']
    assert new.data.tags['reproduce.changes.1'] == tags['reproduce.changes.1']
    assert new.data.tags['mlflow.source.git.dirty'] == 'true'
    assert git('status', '--porcelain', '--ignored', cwd=clone) == status
    assert (clone / 'src' / 'train.py').read_text() == EDITED_TRAIN

    # A reproduction of the reproduction applies the same changes.
    code, report, err = reproduce_json(capsys, '--run_id', new.info.run_id)
    assert code == 0, err
    changes = report['source']['changes']
    assert changes['applied'] is True and changes['files'] == ['src/extra.py', 'src/train.py']
    assert changes['sha256'] == about['sha256']


@pytest.mark.slow
def test_recorded_changes_that_do_not_apply_exit_2_with_one_line(recorded_repo, tmp_path, capsys):
    """Changes recorded on top of a commit that the remote does not have,
    given to a run of the remote's commit: git apply refuses them."""
    clone = tmp_path / 'clone'
    git('clone', '--quiet', str(recorded_repo), str(clone), cwd=tmp_path)
    commit = git('rev-parse', 'HEAD', cwd=clone)
    git(
        '-c',
        'user.email=t@e.invalid',
        '-c',
        'user.name=t',
        'commit',
        '-qam',
        'x',
        '--allow-empty',
        cwd=clone,
    )
    (clone / 'src' / 'plain.py').write_text('print("edited on top of a commit")\n')
    git('-c', 'user.email=t@e.invalid', '-c', 'user.name=t', 'commit', '-qam', 'local', cwd=clone)
    (clone / 'src' / 'plain.py').write_text('print("edited twice")\n')
    tree = reproduce_run._work_tree(reproduce_run._git_status(str(clone)))
    tags = {
        'mlflow.source.type': 'LOCAL',
        'mlflow.source.name': 'plain.py',
        'mlflow.source.git.commit': commit,
        'mlflow.source.git.repoURL': str(recorded_repo),
        'reproduce.workdir': 'src',
        'reproduce.argv': '[]',
        **reproduce_run.changes_tags(str(clone), tree),
    }
    experiment = client().create_experiment('changes-that-do-not-apply')
    run = client().create_run(experiment, tags=tags)
    client().set_terminated(run.info.run_id)

    code, out, err = reproduce(capsys, '--run_id', run.info.run_id)
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith(
        'reproduce_run: error: the uncommitted changes recorded with the run do not apply at '
        f'commit {commit[:12]}: '
    )
    assert len(client().search_runs([experiment])) == 1


@pytest.mark.slow
def test_the_recorded_run_sample_reproduces_as_its_readme_says(
    installed, git_daemon, tmp_path, capsys
):
    """MLproject_samples/README.md, "A recorded run": trained with `python -m
    pkg.train 0.5 20` in its folder, after an uncommitted edit of pkg/data.py."""
    url, base = git_daemon
    git('init', '--quiet', '--bare', str(base / 'sample.git'), cwd=base)
    sample = SAMPLES / 'recorded_run'
    files = {
        f'MLproject_samples/recorded_run/{p.relative_to(sample)}': p.read_text()
        for p in sorted(sample.rglob('*.py'))
    }
    repo = tmp_path / 'repo'
    repo.mkdir()
    clone_with_remote(repo, files, f'{url}/sample.git')
    folder = repo / 'MLproject_samples' / 'recorded_run'
    data = folder / 'pkg' / 'data.py'
    data.write_text(data.read_text().replace('3 * x / n + 1', '3 * x / n + 2'))
    proc = run_python(str(installed / 'python'), folder, '-m', 'pkg.train', '0.5', '20')
    [run_id] = [line[4:] for line in proc.stdout.splitlines() if line.startswith('run ')]
    assert client().get_run(run_id).data.metrics['b'] > 1.5  # the edit trained it

    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert code == 0, err
    assert out.splitlines()[-1] == 'Runs equal: True'
    assert (
        'Script:         python -m pkg.train 0.5 20 (in MLproject_samples/recorded_run/, env '
        'manager: local, arguments from the tag reproduce.argv)' in out
    )
    assert ' + uncommitted changes (1 file)' in out

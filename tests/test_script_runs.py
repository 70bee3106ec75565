"""Runs made without `mlflow run`: `python src/train.py --alpha 0.3`, whose
script calls mlflow.start_run() itself.  The scripts live in a real git
repository pushed to a real `git daemon`; the reference runs are made by
running them with `python`, as a person does."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from helpers import (
    SAMPLES,
    STORES,
    artifact_bytes,
    build_repo,
    client,
    clone_with_remote,
    commit_all,
    git,
    param_table,
    process_gone,
    python_run,
    reproduce,
    reproduced_run,
    reproductions_of,
    run_snapshot,
    start_tool,
    tagged_run,
    wait_for,
)

import reproduce_run
from reproduce_run import ReproduceError, Script

READS_DATA = """\
import argparse
import os
import sys
import mlflow

if '--help' in sys.argv and os.environ.get('HELP_LOG'):  # how often --help ran
    open(os.environ['HELP_LOG'], 'a').write('--help\\n')
parser = argparse.ArgumentParser()
parser.add_argument('--data', default='data.csv')
args = parser.parse_args()
rows = [line.split(',') for line in open(args.data).read().split()]
with mlflow.start_run():
    mlflow.log_params({'data': args.data, 'n_rows': len(rows)})
    mlflow.log_metric('total', sum(float(x) for row in rows for x in row))
"""

# --scale is no param: only the tag reproduce.argv can give it back.
SCALED = """\
import argparse
import json
import sys
import mlflow

parser = argparse.ArgumentParser()
parser.add_argument('--scale', type=float, default=1.0)
args = parser.parse_args()
with mlflow.start_run():
    mlflow.set_tag('reproduce.argv', json.dumps(sys.argv[1:]))
    mlflow.log_metric('scaled', 2.0 * args.scale)
"""

# A positional argument and an option whose name is no param's: only a
# --script-args template can pass them.
POSITIONAL = """\
import argparse
import mlflow

parser = argparse.ArgumentParser()
parser.add_argument('lr', type=float)
parser.add_argument('--name-tag', dest='name_tag', default='x')
args = parser.parse_args()
with mlflow.start_run():
    mlflow.log_params({'learning_rate': args.lr, 'name': args.name_tag})
    mlflow.log_metric('score', args.lr * len(args.name_tag))
"""

ECHO = """\
import argparse
import mlflow

parser = argparse.ArgumentParser()
parser.add_argument('--msg', required=True)
args = parser.parse_args()
with mlflow.start_run():
    mlflow.log_param('msg', args.msg)
    mlflow.log_metric('msg_length', len(args.msg))
"""

# Its option is --lr, its param learning_rate: --help cannot tell they are one.
RENAMED = """\
import argparse
import mlflow

parser = argparse.ArgumentParser()
parser.add_argument('--lr', type=float, default=0.1)
args = parser.parse_args()
with mlflow.start_run():
    mlflow.log_param('learning_rate', args.lr)
    mlflow.log_metric('score', 10 * args.lr)
"""

# No argparse: `--help` runs the whole script.
NO_HELP = """\
import mlflow

with mlflow.start_run():
    mlflow.log_param('seed', 7)
    mlflow.log_metric('value', 21.0)
"""

# No params, no argparse: each time it runs, a line in the file SCRIPT_RUNS_FILE names.
NO_PARAMS = """\
import os
import mlflow

with open(os.environ['SCRIPT_RUNS_FILE'], 'a') as f:
    f.write('ran\\n')
with mlflow.start_run():
    mlflow.log_metric('value', 3.0)
"""

SLOW = """\
import argparse
import os
import time
import mlflow

parser = argparse.ArgumentParser()
parser.add_argument('--seconds', type=float, default=0.0)
args = parser.parse_args()
with mlflow.start_run():
    mlflow.log_param('seconds', args.seconds)
    if os.environ.get('SAMPLE_PID_FILE'):
        with open(os.environ['SAMPLE_PID_FILE'], 'w') as f:
            f.write(str(os.getpid()))
    time.sleep(args.seconds)
"""

# Each chooses its own experiment, and says that it ran in the file
# SCRIPT_MARKER names (when set): a refused reproduction must not run it.
SETS_EXPERIMENT = """\
import os
import mlflow

if os.environ.get('SCRIPT_MARKER'):
    open(os.environ['SCRIPT_MARKER'], 'a').write('ran\\n')
mlflow.set_experiment('chooses-its-own')
with mlflow.start_run():
    mlflow.log_metric('value', 1.0)
"""

NAMES_EXPERIMENT = """\
import os
import mlflow

if os.environ.get('SCRIPT_MARKER'):
    open(os.environ['SCRIPT_MARKER'], 'a').write('ran\\n')
os.environ['MLFLOW_EXPERIMENT_NAME'] = 'named-by-variable'
with mlflow.start_run():
    mlflow.log_metric('value', 2.0)
"""

# It chooses its experiment in a module it imports, where the tool does not
# look: MLflow's mismatch error is then explained after the run.
CHOOSES_ELSEWHERE = """\
import mlflow
import choose

choose.experiment()
with mlflow.start_run():
    mlflow.log_metric('value', 3.0)
"""

CHOOSE = """\
import mlflow


def experiment():
    mlflow.set_experiment('chosen-elsewhere')
"""

FILES = {
    'script_run/train.py': (SAMPLES / 'script_run' / 'train.py').read_text(),
    'src/reads_data.py': READS_DATA,
    'src/data.csv': '1,2\n3,4\n5,6\n',
    'src/scaled.py': SCALED,
    'src/positional.py': POSITIONAL,
    'src/renamed.py': RENAMED,
    'tools/echo.py': ECHO,
    'a/fit.py': NO_HELP,
    'b/fit.py': NO_HELP,
    'plain/count.py': NO_PARAMS,
    'slow/wait.py': SLOW,
    'experiments/sets_own.py': SETS_EXPERIMENT,
    'experiments/names_own.py': NAMES_EXPERIMENT,
    'experiments/chooses_elsewhere.py': CHOOSES_ELSEWHERE,
    'experiments/choose.py': CHOOSE,
}


@pytest.fixture(scope='module')
def scripts_repo(tmp_path_factory, git_daemon) -> Path:
    """A clone whose remote (origin) is a bare repository on the git daemon."""
    url, base = git_daemon
    git('init', '--quiet', '--bare', str(base / 'scripts.git'), cwd=base)
    repo = tmp_path_factory.mktemp('scripts') / 'repo'
    repo.mkdir()
    return clone_with_remote(repo, FILES, f'{url}/scripts.git')


@pytest.fixture(scope='module')
def made() -> dict:
    """Reference runs made once per module, by key."""
    return {}


def script_reference(made: dict, key: str, cwd: Path, *argv: str) -> str:
    if key not in made:
        made[key] = python_run(cwd, *argv)
    return made[key]


# --- resolving: pure ----------------------------------------------------------

TRACKED = ['script_run/train.py', 'src/train.py', 'src/data.csv', 'a/fit.py', 'b/fit.py', 'run.py']


@pytest.mark.parametrize(
    ('recorded', 'expected'),
    [
        pytest.param('src/train.py', ['src/train.py'], id='root-relative'),
        pytest.param('./src/train.py', ['src/train.py'], id='dot-slash'),
        pytest.param('run.py', ['run.py'], id='top-file'),
        pytest.param('/home/alice/repo/src/train.py', ['src/train.py'], id='absolute'),
        pytest.param('train.py', ['script_run/train.py', 'src/train.py'], id='ambiguous'),
        pytest.param('fit.py', ['a/fit.py', 'b/fit.py'], id='two-of-one-name'),
        pytest.param('../a/fit.py', ['a/fit.py'], id='typed-from-a-sibling-folder'),
        pytest.param('/home/alice/repo/src/other.py', [], id='missing'),
        pytest.param('', [], id='nothing-recorded'),
    ],
)
def test_script_candidates(recorded, expected):
    assert reproduce_run.script_candidates(recorded, TRACKED) == expected


@pytest.mark.parametrize(
    ('recorded', 'files', 'expected'),
    [
        pytest.param(
            'train.py', ['train.py', 'src/train.py'], ['train.py', 'src/train.py'], id='top-and-src'
        ),
        pytest.param(
            './train.py',
            ['train.py', 'b/train.py', 'a/deep/train.py'],
            ['train.py', 'a/deep/train.py', 'b/train.py'],
            id='top-first-then-the-others-sorted',
        ),
        pytest.param(
            'src/train.py',
            ['src/train.py', 'lib/src/train.py', 'train.py'],
            ['src/train.py', 'lib/src/train.py'],
            id='a-relative-path-typed-in-a-subfolder-too',
        ),
        pytest.param('train.py', ['train.py', 'src/my_train.py'], ['train.py'], id='no-clash'),
    ],
)
def test_a_top_file_also_in_a_subfolder_is_ambiguous(recorded, files, expected):
    assert reproduce_run.script_candidates(recorded, files) == expected


@pytest.mark.parametrize(
    ('recorded', 'path', 'folder'),
    [
        pytest.param('train.py', 'src/train.py', 'src', id='typed-inside-src'),
        pytest.param('src/train.py', 'src/train.py', '', id='typed-at-the-top'),
        pytest.param('deep/train.py', 'a/deep/train.py', 'a', id='typed-in-a'),
        pytest.param('/home/alice/repo/src/train.py', 'src/train.py', '', id='absolute'),
        pytest.param('../a/fit.py', 'a/fit.py', '', id='dot-dot'),
        pytest.param('fit.py', 'b/other.py', '', id='e-override-elsewhere'),
    ],
)
def test_working_folder(recorded, path, folder):
    assert reproduce_run.working_folder(recorded, path) == folder


def write_files(top: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_text(text)


@pytest.mark.parametrize(
    ('path', 'inits', 'expected'),
    [
        pytest.param('src/pkg/train.py', ['src/pkg'], ('src', 'pkg.train'), id='package-in-src'),
        pytest.param(
            'src/pkg/sub/train.py',
            ['src/pkg', 'src/pkg/sub'],
            ('src', 'pkg.sub.train'),
            id='subpackage',
        ),
        pytest.param(
            'src/pkg/sub/train.py', ['src/pkg/sub'], ('src/pkg', 'sub.train'), id='up-to-no-init'
        ),
        pytest.param('pkg/train.py', ['pkg'], ('', 'pkg.train'), id='package-at-the-top'),
        pytest.param('pkg/train.py', ['', 'pkg'], ('', 'pkg.train'), id='never-above-the-top'),
        pytest.param('src/train.py', [], None, id='no-package'),
        pytest.param('train.py', [''], None, id='top-file-of-a-top-init'),
        pytest.param('my-pkg/train.py', ['my-pkg'], None, id='folder-no-identifier'),
        pytest.param('pkg/train-v2.py', ['pkg'], None, id='file-no-identifier'),
        pytest.param('pkg/run', ['pkg'], None, id='not-a-py-file'),
    ],
)
def test_package_module(tmp_path, path, inits, expected):
    write_files(
        tmp_path, {path: '', **{f'{folder}/__init__.py'.lstrip('/'): '' for folder in inits}}
    )
    assert reproduce_run.package_module(str(tmp_path), path) == expected


@pytest.mark.parametrize(
    ('files', 'expected'),
    [
        pytest.param({'t.py': 'import argparse'}, True, id='argparse'),
        pytest.param({'t.py': 'from argparse import ArgumentParser as P'}, True, id='from'),
        pytest.param({'t.py': 'import click'}, True, id='click'),
        pytest.param({'t.py': 'import typer'}, True, id='typer'),
        pytest.param({'t.py': 'import fire'}, True, id='fire'),
        pytest.param({'t.py': 'from absl import app, flags'}, True, id='absl'),
        pytest.param({'t.py': 'from docopt import docopt'}, True, id='docopt'),
        pytest.param({'t.py': 'import hydra.main'}, True, id='hydra-submodule'),
        pytest.param({'t.py': 'def main():\n    import argparse\n'}, True, id='in-a-function'),
        pytest.param({'t.py': 'from transformers import HfArgumentParser'}, True, id='hf'),
        pytest.param(
            {'t.py': 'import transformers\np = transformers.HfArgumentParser(())'},
            True,
            id='hf-as-an-attribute',
        ),
        pytest.param({'t.py': 'import sys\nimport mlflow\nx = sys.argv[1:]'}, False, id='none'),
        pytest.param({'t.py': 'import argparse_extras, fire_safety'}, False, id='lookalikes'),
        pytest.param({'t.py': 'def f(:\n'}, True, id='syntax-error-asks-help'),
        pytest.param({'t.py': 'x = 1\0'}, True, id='nul-byte-asks-help'),
        pytest.param(
            {'t.py': 'from args import get\n', 'args.py': 'import argparse'},
            True,
            id='a-module-beside-it-imports-one',
        ),
        pytest.param(
            {'t.py': 'import util.io\n', 'util/__init__.py': 'import click', 'util/io.py': ''},
            True,
            id='a-package-init-on-the-way-imports-one',
        ),
        pytest.param(
            {'t.py': 'import util\n', 'util.py': 'import t\nimport os'},
            False,
            id='modules-beside-it-import-none-and-cycle',
        ),
        pytest.param(
            {
                'pkg/__init__.py': '',
                'pkg/t.py': 'from .cli import parse',
                'pkg/cli.py': 'import fire',
            },
            True,
            id='relative-import-in-a-package',
        ),
        pytest.param(
            {'pkg/__init__.py': '', 'pkg/t.py': 'from . import cli', 'pkg/cli.py': 'import os'},
            False,
            id='relative-import-of-no-parser',
        ),
    ],
)
def test_imports_argument_parser(tmp_path, files, expected):
    write_files(tmp_path, files)
    path = next(name for name in files if name.endswith('t.py'))
    module = path.removesuffix('.py').replace('/', '.') if '/' in path else None  # -m pkg.t
    script = Script(path, '', path, module=module)
    assert reproduce_run.imports_argument_parser(str(tmp_path), 'c0ffee', script) is expected


def test_a_module_that_is_a_symlink_out_of_the_checkout_is_not_read(tmp_path):
    outside, top = tmp_path / 'outside.py', tmp_path / 'top'
    outside.write_text('import argparse')
    write_files(top, {'t.py': 'import helper'})
    (top / 'helper.py').symlink_to(outside)
    script = Script('t.py', '', 't.py')
    assert reproduce_run.imports_argument_parser(str(top), 'c0ffee', script) is False


ARGPARSE_HELP = """\
usage: train.py [-h] [--alpha ALPHA] [--l1-ratio L1_RATIO] [--verbose] [--mode {a,b}]

options:
  -h, --help           show this help message and exit
  --alpha ALPHA        learning rate
  --l1-ratio L1_RATIO
  --verbose
  --mode {a,b}
"""


def test_help_options():
    assert reproduce_run.help_options(ARGPARSE_HELP) == {
        '--alpha': True,
        '--l1-ratio': True,
        '--verbose': False,
        '--mode': True,
    }
    assert reproduce_run.help_options('Usage: x [--out=<file>]') == {'--out': True}
    assert reproduce_run.help_options('no options here, see x--y') == {}


@pytest.mark.parametrize(
    ('params', 'argv', 'not_passed'),
    [
        pytest.param({'alpha': '0.3'}, ['--alpha', '0.3'], {}, id='option'),
        pytest.param({'l1_ratio': '0.5'}, ['--l1-ratio', '0.5'], {}, id='underscore-as-dash'),
        pytest.param({'solver': 'sgd'}, [], {'solver': 'sgd'}, id='not-an-option'),
        pytest.param({'verbose': 'True'}, ['--verbose'], {}, id='flag-on'),
        pytest.param({'verbose': 'False'}, [], {}, id='flag-off'),
        pytest.param({'verbose': 'loud'}, [], {'verbose': 'loud'}, id='flag-with-a-value'),
        pytest.param(
            {'mode': '$(id); `id`', 'alpha': '1'},
            ['--alpha', '1', '--mode', '$(id); `id`'],
            {},
            id='hostile-value-is-one-argument',
        ),
    ],
)
def test_arguments_from_help(params, argv, not_passed):
    got, chosen = reproduce_run.arguments_from_help(
        reproduce_run.help_options(ARGPARSE_HELP), params
    )
    assert (got, chosen.not_passed) == (argv, not_passed)
    assert {**chosen.passed, **chosen.not_passed} == params


CLICK_HELP = """\
Usage: train.py [OPTIONS]

Options:
  --alpha FLOAT             learning rate
  --scale / --no-scale      scale the features
  --shuffle                 shuffle the rows
  --help                    Show this message and exit.
"""
ARGPARSE_BOOLEAN_HELP = """\
usage: train.py [-h] [--scale | --no-scale] [--alpha ALPHA]

options:
  --scale, --no-scale
  --alpha ALPHA
"""


@pytest.mark.parametrize('text', [CLICK_HELP, ARGPARSE_BOOLEAN_HELP], ids=['click', 'argparse'])
@pytest.mark.parametrize(
    ('params', 'argv'),
    [
        pytest.param({'scale': 'False'}, ['--no-scale'], id='false-as-its-no-form'),
        pytest.param({'scale': 'false'}, ['--no-scale'], id='lowercase-false'),
        pytest.param({'scale': '0'}, ['--no-scale'], id='zero'),
        pytest.param({'scale': 'True'}, ['--scale'], id='true-as-itself'),
        pytest.param(
            {'scale': 'False', 'alpha': '0.5'}, ['--alpha', '0.5', '--no-scale'], id='both'
        ),
    ],
)
def test_a_false_flag_with_a_no_form_is_passed_as_its_no_form(text, params, argv):
    got, chosen = reproduce_run.arguments_from_help(reproduce_run.help_options(text), params)
    assert (got, chosen.passed, chosen.not_passed) == (argv, params, {})


@pytest.mark.parametrize(
    ('params', 'argv'),
    [
        pytest.param({'alpha': 'None'}, [], id='an-option'),
        pytest.param({'scale': 'None'}, [], id='a-flag'),
        pytest.param({'alpha': 'None', 'scale': 'True'}, ['--scale'], id='beside-another'),
        pytest.param({'unknown': 'None'}, [], id='not-an-option-either'),
    ],
)
def test_a_param_valued_none_is_not_passed_with_its_reason(params, argv):
    options = reproduce_run.help_options(CLICK_HELP)
    got, chosen = reproduce_run.arguments_from_help(options, params)
    nones = {k: v for k, v in params.items() if v == 'None'}
    assert got == argv
    assert {k: chosen.not_passed[k] for k in nones} == nones
    assert chosen.why == dict.fromkeys(nones, "valued None, Python's None as MLflow logs it")
    assert nones.keys().isdisjoint(chosen.passed)


@pytest.mark.parametrize(
    ('template', 'expected'),
    [
        pytest.param('--lr {lr} --epochs {epochs}', ['--lr', '0.1', '--epochs', '5'], id='plain'),
        pytest.param(
            '--data s3://bucket/{split}.csv', ['--data', 's3://bucket/a b.csv'], id='inside-a-word'
        ),
        pytest.param("'{split}' {lr}", ['a b', '0.1'], id='quoted'),
        pytest.param('{{literal}} {lr}', ['{literal}', '0.1'], id='literal-braces'),
        pytest.param('--x {hostile}', ['--x', '$(id); `id`'], id='hostile-value-is-data'),
        pytest.param('--alpha {model.alpha}', ['--alpha', '0.5'], id='dotted-name-as-hydra-logs'),
        pytest.param('--lr={train/lr}', ['--lr=0.01'], id='name-with-a-slash'),
        pytest.param('--lr {learning-rate}', ['--lr', '0.2'], id='name-with-a-dash'),
        pytest.param('{{{lr}}}', ['{0.1}'], id='escaped-braces-around-a-placeholder'),
        pytest.param('--x {braced}', ['--x', '{lr}'], id='a-value-is-not-filled-again'),
    ],
)
def test_template_arguments(template, expected):
    params = {
        'lr': '0.1',
        'epochs': '5',
        'split': 'a b',
        'hostile': '$(id); `id`',
        'model.alpha': '0.5',
        'train/lr': '0.01',
        'learning-rate': '0.2',
        'braced': '{lr}',
    }
    argv, _ = reproduce_run.template_arguments(template, params)
    assert argv == expected


@pytest.mark.parametrize(
    ('template', 'message'),
    [
        pytest.param('--lr {rate}', 'names {rate}, which is not a param', id='unknown-param'),
        pytest.param("--lr '{lr}", 'cannot be used: No closing quotation', id='open-quote'),
        pytest.param(
            '--alpha {model.alpa}', '(the closest: {model.alpha})', id='closest-dotted-name'
        ),
        pytest.param('--lr {lrr}', '(the closest: {lr})', id='closest-of-a-typo'),
        pytest.param(
            '--x {zzz}', '(its params: lr, model.alpha, train/lr)', id='none-close-lists-them'
        ),
        pytest.param('--lr {lr', "a '{' that is no part of a {param}", id='lone-open-brace'),
        pytest.param(
            '--lr lr}', "a '}' that is no part of a {param} (a brace itself", id='lone-close'
        ),
        pytest.param('--lr {}', "a '{' that is no part of a {param}", id='empty-braces'),
    ],
)
def test_bad_template_is_one_line(template, message):
    params = {'lr': '0.1', 'model.alpha': '0.5', 'train/lr': '0.01'}
    with pytest.raises(ReproduceError, match='--script-args') as e:
        reproduce_run.template_arguments(template, params)
    assert message in str(e.value)
    assert '\n' not in str(e.value)


@pytest.mark.parametrize(
    ('value', 'expected'),
    [
        pytest.param('["--alpha", "0.3"]', ['--alpha', '0.3'], id='list'),
        pytest.param('[]', [], id='empty'),
        pytest.param('{"alpha": 1}', None, id='object'),
        pytest.param('[1, 2]', None, id='numbers'),
        pytest.param('--alpha 0.3', None, id='not-json'),
    ],
)
def test_recorded_arguments(value, expected):
    if expected is None:
        with pytest.raises(ReproduceError, match='reproduce.argv .* not a JSON list'):
            reproduce_run.recorded_arguments(value)
    else:
        assert reproduce_run.recorded_arguments(value) == expected


@pytest.mark.parametrize(
    ('tags', 'uri_given', 'reason'),
    [
        pytest.param(
            {'mlflow.source.type': 'NOTEBOOK', 'mlflow.source.git.commit': 'abc'},
            True,
            'notebook run',
            id='notebook',
        ),
        pytest.param(
            {'mlflow.source.type': 'LOCAL', 'mlflow.source.git.commit': 'abc'},
            False,
            'recorded no remote',
            id='no-remote',
        ),
        pytest.param(
            {'mlflow.source.type': 'LOCAL', 'mlflow.source.git.commit': 'abc'},
            True,
            None,
            id='no-remote-but-uri',
        ),
        pytest.param(
            {'mlflow.source.type': 'LOCAL', 'mlflow.source.git.repoURL': 'git://h/r.git'},
            False,
            'recorded no commit',
            id='no-commit',
        ),
        pytest.param(
            {
                'mlflow.source.type': 'LOCAL',
                'mlflow.source.git.repoURL': 'git://h/r.git',
                'mlflow.source.git.commit': 'abc',
            },
            False,
            None,
            id='script-run',
        ),
    ],
)
def test_not_reproducible(tags, uri_given, reason):
    from mlflow.entities import Run, RunData, RunInfo, RunTag

    run = Run(
        RunInfo('r', 'e', 'u', 'FINISHED', 0, 1, 'active'),
        RunData(tags=[RunTag(k, v) for k, v in tags.items()]),
    )
    got = reproduce_run.not_reproducible(run, uri_given)
    assert (got is None) if reason is None else (reason in got)


# --- end to end ---------------------------------------------------------------


@pytest.mark.parametrize('where', ['sqlite', 'server'])
def test_script_that_sets_its_experiment_is_equal_with_no_flag(
    scripts_repo, where, request, monkeypatch, capsys
):
    monkeypatch.setenv('MLFLOW_TRACKING_URI', request.getfixturevalue(STORES[where]))
    # The sample, typed inside its folder; it logs n_rows, which is no option.
    run_id = python_run(scripts_repo / 'script_run', 'train.py', '--alpha', '0.3', '--epochs', '5')
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert code == 0, err
    assert out.splitlines()[-1] == 'Runs equal: True'
    assert 'Entry point:    script_run/train.py (script run) --alpha 0.3 --epochs 5' in out
    assert (
        'Script:         python train.py --alpha 0.3 --epochs 5 (in script_run/, env manager: '
        'local, arguments from --help)' in out
    )
    assert param_table(out)[3:6] == [
        '| alpha   | 0.3    | 0.3    |',
        '| epochs  | 5      | 5      |',
        '| n_rows  | 442    | 442    |',
    ]
    new, ref = reproduced_run(out), client().get_run(run_id)
    assert new.info.experiment_id == ref.info.experiment_id  # the script's own experiment
    assert new.data.tags['reproduce.argv'] == '["--alpha", "0.3", "--epochs", "5"]'
    assert new.data.tags['mlflow.source.type'] == 'LOCAL'
    assert new.data.tags['mlflow.source.name'] == 'train.py'
    assert new.data.tags['mlflow.source.git.commit'] == ref.data.tags['mlflow.source.git.commit']
    # A reproduction of the reproduction replays exactly what it got.
    code, out, err = reproduce(capsys, '--run_id', new.info.run_id)
    assert code == 0, err
    assert 'arguments from the tag reproduce.argv' in out


@pytest.mark.parametrize(
    ('source', 'choice'),
    [
        pytest.param(
            "mlflow.set_experiment('x')\n", "line 1: mlflow.set_experiment('x')", id='call'
        ),
        pytest.param(
            'import mlflow\nfrom mlflow import set_experiment\nset_experiment (NAME)\n',
            'line 3: set_experiment (NAME)',
            id='imported-name',
        ),
        pytest.param(
            "import os\n    os.environ['MLFLOW_EXPERIMENT_NAME'] = 'x'\n",
            "line 2: os.environ['MLFLOW_EXPERIMENT_NAME'] = 'x'",
            id='variable',
        ),
        pytest.param(
            "mlflow.set_experiment(os.environ.get('MLFLOW_EXPERIMENT_NAME', 'x'))\n",
            "line 1: mlflow.set_experiment(os.environ.get('MLFLOW_EXPERIMENT_NAME', 'x'))",
            id='both-on-one-line',
        ),
        pytest.param(
            'mlflow.set_experiment(' + 'x' * 100 + ')\n',
            'line 1: mlflow.set_experiment(' + 'x' * 55 + '...',
            id='long-line-cut',
        ),
        pytest.param("# mlflow.set_experiment('x')\n", None, id='comment'),
        pytest.param("mlflow.set_experiment_tag('k', 'v')\n", None, id='experiment-tag'),
        pytest.param("mlflow.set_experiment_tags({'k': 'v'})\n", None, id='experiment-tags'),
        pytest.param("os.environ['MLFLOW_EXPERIMENT_ID'] = '1'\n", None, id='experiment-id'),
        pytest.param('"""Uses ``mlflow.set_experiment``."""\n', None, id='named-no-call'),
        pytest.param('with mlflow.start_run():\n    pass\n', None, id='none'),
    ],
)
def test_experiment_choice(source, choice):
    assert reproduce_run.experiment_choice(source) == choice


@pytest.mark.parametrize(
    ('script', 'choice'),
    [
        ('sets_own.py', "line 6: mlflow.set_experiment('chooses-its-own')"),
        ('names_own.py', "line 6: os.environ['MLFLOW_EXPERIMENT_NAME'] = 'named-by-variable'"),
    ],
)
def test_a_script_choosing_its_experiment_exits_2_with_another_before_it_runs(
    scripts_repo, made, tmp_path, monkeypatch, capsys, script, choice
):
    run_id = script_reference(made, script, scripts_repo / 'experiments', script)
    own = client().get_experiment(client().get_run(run_id).info.experiment_id).name
    marker = tmp_path / 'ran'
    monkeypatch.setenv('SCRIPT_MARKER', str(marker))
    for dry in ([], ['--dry-run']):
        code, out, err = reproduce(capsys, '--run_id', run_id, '--experiment_name', 'nightly', *dry)
        assert (code, out) == (2, '')
        assert err == (
            f'reproduce_run: error: the script experiments/{script} chooses its own experiment '
            f"({choice}), so it cannot log into experiment 'nightly' (--experiment_name): drop "
            f"--experiment_name to reproduce it in the reference run's experiment {own!r}\n"
        )
    assert not marker.exists()  # refused before anything ran
    assert reproductions_of(run_id) == []
    # Its own experiment named is no other: it runs.
    code, out, err = reproduce(capsys, '--run_id', run_id, '--experiment_name', own)
    assert code == 0, err
    assert marker.read_text() == 'ran\n'


def test_a_script_that_chooses_no_experiment_goes_to_experiment_name(
    scripts_repo, made, tmp_path, capsys
):
    run_id = script_reference(made, 'scaled', scripts_repo / 'src', 'scaled.py', '--scale', '3')
    name = f'given-{tmp_path.name}'
    code, out, err = reproduce(capsys, '--run_id', run_id, '--experiment_name', name)
    assert code == 0, err
    assert out.splitlines()[-1] == 'Runs equal: True'
    assert (
        reproduced_run(out).info.experiment_id
        == client().get_experiment_by_name(name).experiment_id
    )


def test_an_experiment_chosen_in_an_imported_module_explains_the_mismatch(
    scripts_repo, made, capsys
):
    script = 'chooses_elsewhere.py'
    run_id = script_reference(made, script, scripts_repo / 'experiments', script)
    code, out, err = reproduce(capsys, '--run_id', run_id, '--experiment_name', 'elsewhere')
    assert code == 3
    [line] = [x for x in err.splitlines() if x.startswith('reproduce_run: error:')]
    assert 'sets its own experiment' in line and 'drop --experiment_name' in line


def test_script_started_in_a_subfolder_reads_its_relative_file(scripts_repo, made, capsys):
    run_id = script_reference(made, 'reads_data', scripts_repo / 'src', 'reads_data.py')
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert code == 0, err
    assert 'python reads_data.py --data data.csv (in src/,' in out
    assert reproduced_run(out).data.metrics['total'] == 21.0


def test_reproduce_argv_replays_an_option_that_is_no_param(scripts_repo, made, capsys):
    run_id = script_reference(made, 'scaled', scripts_repo, 'src/scaled.py', '--scale', '3')
    assert client().get_run(run_id).data.params == {}
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert code == 0, err
    assert 'arguments from the tag reproduce.argv' in out
    assert reproduced_run(out).data.metrics['scaled'] == 6.0


def test_script_args_template(scripts_repo, made, capsys):
    run_id = script_reference(
        made, 'positional', scripts_repo, 'src/positional.py', '0.5', '--name-tag', 'abc'
    )
    code, out, err = reproduce(
        capsys, '--run_id', run_id, '--script-args', '{learning_rate} --name-tag {name}'
    )
    assert code == 0, err
    assert 'Entry point:    src/positional.py (script run) 0.5 --name-tag abc' in out
    assert reproduced_run(out).data.tags['reproduce.argv'] == '["0.5", "--name-tag", "abc"]'
    # Without the template, --help shows no option named after a param: the
    # script does not get its positional argument and fails.
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert code == 3
    assert 'the following arguments are required: lr' in err


def test_a_param_that_came_back_different_is_a_difference_with_a_note(scripts_repo, made, capsys):
    run_id = script_reference(made, 'renamed', scripts_repo, 'src/renamed.py', '--lr', '0.5')
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert code == 1, err
    assert param_table(out)[3] == '| learning_rate | 0.5    | 0.1    | differs |'
    assert (
        'Params differ: the script did not get them as arguments; record its arguments with '
        'mlflow.set_tag("reproduce.argv", json.dumps(sys.argv[1:])) or pass --script-args'
    ) in out.splitlines()
    code, out, err = reproduce(capsys, '--run_id', run_id, '--script-args', '--lr {learning_rate}')
    assert code == 0, err


def test_dry_run_of_a_script_run_shows_its_command_and_makes_no_run(scripts_repo, made, capsys):
    run_id = script_reference(made, 'renamed', scripts_repo, 'src/renamed.py', '--lr', '0.5')
    before = {r.info.run_id for r in reproductions_of(run_id)}
    code, out, err = reproduce(capsys, '--run_id', run_id, '--dry-run')
    assert code == 0, err
    assert (
        'Script:         python src/renamed.py (in the repository root, env manager: local, '
        'arguments from --help, asked at run time (--dry-run runs nothing))'
    ) in out.splitlines()
    assert (
        "Params to pass: those of the script's --help, at run time, among learning_rate=0.5"
    ) in out.splitlines()
    assert 'Experiment:     Default' in out.splitlines()  # the reference's own
    assert {r.info.run_id for r in reproductions_of(run_id)} == before


SPY = """\
import argparse, json, os, sys
if '--help' in sys.argv:
    with open(os.environ['SPY_FILE'], 'a') as f:
        f.write(json.dumps(sorted(os.environ)) + '\\n')
p = argparse.ArgumentParser()
p.add_argument('--lr')
args = p.parse_args()
import mlflow
with mlflow.start_run():
    mlflow.log_param('lr', args.lr)
"""


def test_a_dry_run_runs_no_script_and_help_gets_no_credentials(
    tmp_path, git_daemon, capsys, monkeypatch
):
    """The script is code that a run in the tracking store names: a dry run
    runs none of it, not even its --help, and the --help a real run asks
    (into a scratch store) gets none of the tool's tracking credentials."""
    repo, commit = build_repo(tmp_path / 'spy', {'spy.py': SPY})
    spied = tmp_path / 'spied'
    monkeypatch.setenv('SPY_FILE', str(spied))
    run_id = tagged_run(
        {
            'mlflow.source.type': 'LOCAL',
            'mlflow.source.name': 'tiny/spy.py',
            'mlflow.source.git.commit': commit,
            'mlflow.source.git.repoURL': str(repo),
        },
        {'lr': '0.1'},
    )
    monkeypatch.setenv('MLFLOW_TRACKING_TOKEN', 'tok3n-of-the-tool')
    for output in ('table', 'json'):
        code, out, err = reproduce(capsys, '--run_id', run_id, '--dry-run', '--output', output)
        assert code == 0, err
        assert not spied.exists()
    assert json.loads(out)['source']['script']['arguments_from'] == (
        '--help, asked at run time (--dry-run runs nothing)'
    )
    code, out, err = reproduce(capsys, '--run_id', run_id, '--output', 'json')
    assert code == 0, err
    assert json.loads(out)['source']['script']['argv'] == ['--lr', '0.1']
    (variables,) = [json.loads(line) for line in spied.read_text().splitlines()]
    assert 'MLFLOW_TRACKING_TOKEN' not in variables
    assert 'PATH' in variables


def test_hostile_param_values_are_never_executed(scripts_repo, tmp_path, capsys):
    marks = [tmp_path / f'pwned{i}' for i in range(3)]
    msg = f'x; touch {marks[0]} && $(touch {marks[1]}) `touch {marks[2]}` \'"'
    run_id = python_run(scripts_repo, 'tools/echo.py', '--msg', msg)
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert code == 0, err
    new = reproduced_run(out)
    assert new.data.params['msg'] == msg
    assert json.loads(new.data.tags['reproduce.argv']) == ['--msg', msg]
    assert not any(m.exists() for m in marks)


def test_two_scripts_of_one_name_exit_2_naming_both_then_e_chooses(scripts_repo, made, capsys):
    run_id = script_reference(made, 'fit', scripts_repo / 'a', 'fit.py')
    before = {r.info.run_id for r in reproductions_of(run_id)}
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err.count('\n') == 1
    assert 'matches 2 files at commit' in err and 'a/fit.py, b/fit.py' in err and '-e PATH' in err
    assert {r.info.run_id for r in reproductions_of(run_id)} == before  # nothing ran
    code, out, err = reproduce(capsys, '--run_id', run_id, '-e', 'a/fit.py')
    assert code == 0, err
    assert '(in a/,' in out


def test_a_script_that_imports_no_argument_parser_is_not_run_with_help(scripts_repo, made, capsys):
    """b/fit.py imports no argument parser: its --help would be a whole
    training run.  It gets no arguments, and the report says why."""
    run_id = script_reference(made, 'fit', scripts_repo / 'a', 'fit.py')
    code, out, err = reproduce(capsys, '--run_id', run_id, '-e', 'b/fit.py')
    assert code == 0, err
    assert '--help' not in err
    assert (
        'Script:         python fit.py (in b/, env manager: local, arguments: none; the script '
        'imports no argument parser)'
    ) in out.splitlines()
    assert (
        'Params not passed: 1 for a script that imports no argument parser (--verbose lists them)'
    ) in out.splitlines()
    assert json.loads(reproduced_run(out).data.tags['reproduce.argv']) == []


def test_a_run_without_params_is_not_run_with_help(scripts_repo, tmp_path, monkeypatch, capsys):
    """Nothing to pass, nothing to learn from --help: the script runs once,
    for the reproduction, and gets no arguments and no warning."""
    runs_file = tmp_path / 'runs.txt'
    monkeypatch.setenv('SCRIPT_RUNS_FILE', str(runs_file))
    run_id = python_run(scripts_repo / 'plain', 'count.py')
    assert runs_file.read_text() == 'ran\n'
    code, out, err = reproduce(capsys, '--run_id', run_id, '--output', 'json')
    assert code == 0, err
    assert runs_file.read_text() == 'ran\n' * 2
    assert '--help' not in err
    doc = json.loads(out)
    assert doc['status'] == 'equal'
    assert doc['source']['script'] == {
        'path': 'plain/count.py',
        'working_folder': 'plain',
        'module': None,
        'argv': [],
        'arguments_from': 'no params',
    }
    assert json.loads(client().get_run(doc['reproduced_run_id']).data.tags['reproduce.argv']) == []


def test_run_with_no_recorded_remote_is_one_line(scripts_repo, tmp_path, capsys):
    clone = tmp_path / 'clone'
    git('clone', '--quiet', str(scripts_repo), str(clone), cwd=tmp_path)
    git('remote', 'remove', 'origin', cwd=clone)
    run_id = python_run(clone / 'script_run', 'train.py')
    assert 'mlflow.source.git.repoURL' not in client().get_run(run_id).data.tags
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err.count('\n') == 1
    assert 'recorded no remote' in err and '--uri' in err
    # --uri names the source: then it reproduces.
    code, out, err = reproduce(capsys, '--run_id', run_id, '--uri', str(clone))
    assert code == 0, err


def test_notebook_run_is_one_line(capsys):
    c = client()
    run = c.create_run(
        c.get_experiment_by_name('Default').experiment_id,
        tags={
            'mlflow.source.type': 'NOTEBOOK',
            'mlflow.source.name': '/Users/alice/train',
            'mlflow.source.git.commit': '0' * 40,
            'mlflow.source.git.repoURL': 'git://127.0.0.1:1/x.git',
        },
    )
    c.set_terminated(run.info.run_id)
    code, out, err = reproduce(capsys, '--run_id', run.info.run_id)
    assert (code, out) == (2, '')
    assert err.count('\n') == 1
    assert 'notebook run' in err


def test_script_not_at_the_commit_is_one_line(scripts_repo, capsys):
    c = client()
    commit = git('rev-parse', 'HEAD', cwd=scripts_repo)
    url = git('remote', 'get-url', 'origin', cwd=scripts_repo)
    run = c.create_run(
        c.get_experiment_by_name('Default').experiment_id,
        tags={
            'mlflow.source.type': 'LOCAL',
            'mlflow.source.name': '/home/alice/repo/gone.py',
            'mlflow.source.git.commit': commit,
            'mlflow.source.git.repoURL': url,
        },
    )
    c.set_terminated(run.info.run_id)
    code, out, err = reproduce(capsys, '--run_id', run.info.run_id)
    assert (code, out) == (2, '')
    assert "the recorded script '/home/alice/repo/gone.py'" in err and 'not a file' in err
    for path in ('../outside.py', '/etc/passwd'):
        code, out, err = reproduce(capsys, '--run_id', run.info.run_id, '-e', path)
        assert code == 2
        assert 'outside the checkout' in err or 'does not exist' in err


def test_env_manager_without_an_environment_file_exits_2(scripts_repo, made, capsys):
    run_id = script_reference(made, 'reads_data', scripts_repo / 'src', 'reads_data.py')
    code, out, err = reproduce(capsys, '--run_id', run_id, '--env-manager', 'virtualenv')
    assert (code, out) == (2, '')
    assert 'python_env.yaml or conda.yaml' in err and 'in src/ or at the repository root' in err


def test_batch_mixes_script_and_project_runs(scripts_repo, reference, tmp_path, capsys):
    name = f'mixed-{tmp_path.name}'
    script_run = python_run(
        scripts_repo / 'src', 'reads_data.py', env={'MLFLOW_EXPERIMENT_NAME': name}
    )
    made = client().get_run(reference('sklearn_regression'))
    project_run = tagged_run(  # the project run, copied into the batch's experiment
        {
            k: v
            for k, v in made.data.tags.items()
            if k.startswith(('mlflow.source.', 'mlflow.project.'))
        },
        made.data.params,
        client().get_experiment_by_name(name).experiment_id,
        {k: [v] for k, v in made.data.metrics.items()},
    )
    code, out, err = reproduce(capsys, '--from-experiment', name, '--output', 'json')
    doc = json.loads(out)
    assert code == 0, err
    assert doc['skipped'] == []
    assert {r['reference_run_id']: r['status'] for r in doc['runs']} == {
        script_run: 'equal',
        project_run: 'equal',
    }
    script = next(r for r in doc['runs'] if r['reference_run_id'] == script_run)
    assert script['source']['script'] == {
        'path': 'src/reads_data.py',
        'working_folder': 'src',
        'module': None,
        'argv': ['--data', 'data.csv'],
        'arguments_from': '--help',
    }


@pytest.mark.slow
def test_repeat_3_on_a_script_run_runs_its_help_once(
    scripts_repo, made, capsys, monkeypatch, tmp_path
):
    run_id = script_reference(made, 'reads_data', scripts_repo / 'src', 'reads_data.py')
    monkeypatch.setenv('HELP_LOG', str(tmp_path / 'help.log'))
    code, out, err = reproduce(capsys, '--run_id', run_id, '--repeat', '3', '--output', 'json')
    doc = json.loads(out)
    assert code == 0, err
    assert doc['repeat']['classification'] == 'reproducible'
    assert [r['status'] for r in doc['runs']] == ['equal'] * 3
    assert (tmp_path / 'help.log').read_text() == '--help\n'  # once for the three
    assert [r['source']['script']['arguments_from'] for r in doc['runs']] == ['--help'] * 3


def test_sigterm_during_a_script_run_leaves_no_process_and_kills_the_run(
    scripts_repo, made, tmp_path
):
    run_id = script_reference(made, 'slow', scripts_repo, 'slow/wait.py')
    before = run_snapshot(run_id)
    pid_file, tmp = tmp_path / 'pid', tmp_path / 'tmp'
    tmp.mkdir()
    tool = start_tool(
        '--run_id',
        run_id,
        '--script-args',
        '--seconds 120',
        env={'SAMPLE_PID_FILE': str(pid_file), 'TMPDIR': str(tmp)},
    )
    try:
        wait_for(pid_file.exists, 120, 'the script to start')
        wait_for(lambda: pid_file.read_text().strip(), 10, 'the PID')
        tool.send_signal(signal.SIGTERM)
        out, err = tool.communicate(timeout=60)
    finally:
        tool.kill()
    assert tool.returncode == 143, err
    assert process_gone(int(pid_file.read_text()))
    [new] = reproductions_of(run_id)
    assert new.info.status == 'KILLED'
    assert list(tmp.iterdir()) == []
    assert run_snapshot(run_id) == before


# --- the guessing path: runs made without the recorder --------------------------


def files_repo(where: Path, files: dict[str, str]) -> tuple[Path, str]:
    """A git repository holding files, in one commit; and that commit."""
    repo = where / 'repo'
    write_files(repo, files)
    git('init', '--quiet', '--initial-branch', 'main', cwd=repo)
    git('config', 'user.email', 'tests@example.invalid', cwd=repo)
    git('config', 'user.name', 'tests', cwd=repo)
    return repo, commit_all(repo, 'files')


def script_tags(repo: Path, commit: str, name: str) -> dict[str, str]:
    """What MLflow records of `python <name>`, made without the recorder."""
    return {
        'mlflow.source.type': 'LOCAL',
        'mlflow.source.name': name,
        'mlflow.source.git.commit': commit,
        'mlflow.source.git.repoURL': str(repo),
    }


def test_resolve_script_names_a_top_script_also_in_a_subfolder_and_e_chooses(tmp_path):
    repo, commit = files_repo(tmp_path, {'train.py': '', 'src/train.py': ''})
    with pytest.raises(reproduce_run.CannotGuess) as e:
        reproduce_run.resolve_script(str(repo), 'train.py', None, commit, None)
    assert str(e.value) == (
        f"the recorded script 'train.py' matches 2 files at commit {commit[:12]}: train.py, "
        'src/train.py (one at the top, the others where it may have been typed: the run did not '
        'record its working folder); pass -e PATH to choose one'
    )
    # -e chooses; the reproduced run records the path as typed in its folder.
    chosen = reproduce_run.resolve_script(str(repo), 'train.py', 'src/train.py', commit, None)
    assert (chosen.path, chosen.workdir, chosen.recorded) == ('src/train.py', 'src', 'train.py')
    chosen = reproduce_run.resolve_script(str(repo), 'train.py', 'train.py', commit, None)
    assert (chosen.path, chosen.workdir, chosen.recorded) == ('train.py', '', 'train.py')


def test_a_top_script_also_in_a_subfolder_exits_2_and_a_search_skips_it(tmp_path, capsys):
    repo, commit = files_repo(
        tmp_path, {'train.py': 'print(1)\n', 'src/train.py': 'print(2)\n', 'fit.py': ''}
    )
    experiment = client().create_experiment(f'guess-{tmp_path.name}')
    clash = tagged_run(script_tags(repo, commit, 'train.py'), {'lr': '0.1'}, experiment)
    fine = tagged_run(script_tags(repo, commit, 'fit.py'), {'lr': '0.1'}, experiment)
    code, out, err = reproduce(capsys, '--run_id', clash)
    assert (code, out) == (2, '')
    assert err.count('\n') == 1
    assert 'matches 2 files' in err and 'train.py, src/train.py' in err and '-e PATH' in err
    # Chosen by search, it is skipped with that reason; the batch goes on.
    code, out, err = reproduce(
        capsys, '--from-experiment', f'guess-{tmp_path.name}', '--dry-run', '--output', 'json'
    )
    doc = json.loads(out)
    assert code == 0, err
    assert [r['reference_run_id'] for r in doc['runs']] == [fine]
    [skipped] = doc['skipped']
    assert skipped['run_id'] == clash
    assert skipped['reason'].startswith("the recorded script 'train.py' matches 2 files")
    [progress] = [line for line in err.splitlines() if ' skipped in ' in line]
    assert clash in progress and 'skipped in 0 s: the recorded script' in progress
    # Named, it is an error of the batch, as any run that cannot start.
    code, out, err = reproduce(capsys, '--run_id', clash, fine, '--dry-run', '--output', 'json')
    assert code == 2
    assert [r['status'] for r in json.loads(out)['runs']] == ['error', 'planned']
    code, out, err = reproduce(capsys, '--run_id', clash, '-e', 'src/train.py', '--dry-run')
    assert code == 0, err
    assert 'Script:         python train.py (in src/, env manager: local, ' in out


PACKAGE_SCRIPT = """\
import argparse

from . import helper

parser = argparse.ArgumentParser()
parser.add_argument('--alpha', type=float, default=1.0)
parser.add_argument('--shuffle', action=argparse.BooleanOptionalAction, default=True)
parser.add_argument('--seed', type=int, default=None)
args = parser.parse_args()

import mlflow  # after parse_args: --help answers without importing it

with mlflow.start_run():
    mlflow.log_params(vars(args))
    mlflow.log_metric('value', helper.FACTOR * args.alpha * (2 if args.shuffle else 1))
"""


def test_a_package_script_runs_with_m_from_its_package_root(tmp_path, capsys):
    """`python -m pkg.train` records the module's full path: a script in a
    package runs as a module from the folder above the package, its false
    flag as --no-shuffle, its None param not passed; --dry-run shows that."""
    repo, commit = files_repo(
        tmp_path,
        {
            'src/pkg/__init__.py': '',
            'src/pkg/helper.py': 'FACTOR = 3.0\n',
            'src/pkg/train.py': PACKAGE_SCRIPT,
        },
    )
    run_id = tagged_run(
        script_tags(repo, commit, '/home/alice/repo/src/pkg/train.py'),
        {'alpha': '0.5', 'shuffle': 'False', 'seed': 'None'},
        metrics={'value': [1.5]},
    )
    code, out, err = reproduce(capsys, '--run_id', run_id, '--dry-run')
    assert code == 0, err
    lines = out.splitlines()
    assert (
        'Script:         python -m pkg.train (in src/, env manager: local, arguments from --help, '
        'asked at run time (--dry-run runs nothing))'
    ) in lines
    assert (
        "Params to pass: those of the script's --help, at run time, among alpha=0.5, shuffle=False"
    ) in lines
    assert "Params not passed (valued None, Python's None as MLflow logs it): seed=None" in lines
    code, out, err = reproduce(capsys, '--run_id', run_id, '-e', 'src/pkg/train.py', '--dry-run')
    assert code == 0, err
    assert 'Script:         python -m pkg.train (in src/, env manager: local, ' in out  # -e too
    code, out, err = reproduce(capsys, '--run_id', run_id, '--verbose')
    assert code == 0, err
    lines = out.splitlines()
    assert (
        'Script:         python -m pkg.train --alpha 0.5 --no-shuffle (in src/, env manager: '
        'local, arguments from --help)'
    ) in lines
    assert "Params not passed (valued None, Python's None as MLflow logs it): seed=None" in lines
    assert lines[-1] == 'Runs equal: True'
    tags = reproduced_run(out).data.tags
    assert json.loads(tags['reproduce.argv']) == ['--alpha', '0.5', '--no-shuffle']
    assert (tags['reproduce.workdir'], tags['mlflow.source.name']) == ('src', 'pkg/train.py')


STUBBORN = """\
import argparse  # imported, never used: --help does not end it
import os
import subprocess
import sys
import time

if '--help' in sys.argv:
    sleeper = [sys.executable, '-c', 'import time; time.sleep(300)']
    kids = [subprocess.Popen(sleeper), subprocess.Popen(sleeper, start_new_session=True)]
    with open(os.environ['KIDS_FILE'], 'w') as f:
        f.write(' '.join(str(kid.pid) for kid in kids))
    time.sleep(300)
"""


def test_a_help_that_does_not_end_is_ended_with_its_children(tmp_path, monkeypatch, capsys):
    """A script that ignores --help (and trains) is ended when its time is
    up, with the processes it started, in its group or out of it."""
    repo, commit = files_repo(tmp_path, {'stubborn.py': STUBBORN})
    run_id = tagged_run(script_tags(repo, commit, 'stubborn.py'), {'lr': '0.1'})
    kids_file = tmp_path / 'kids'
    monkeypatch.setenv('KIDS_FILE', str(kids_file))
    monkeypatch.setattr(reproduce_run, 'HELP_TIMEOUT_SECONDS', 3.0)
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert code == 1, err  # it got no arguments: its param lr differs
    kids = [int(pid) for pid in kids_file.read_text().split()]
    assert len(kids) == 2 and all(process_gone(pid) for pid in kids)
    assert '`python stubborn.py --help` did not end within 3 s: the script gets no ' in err
    assert (
        'Script:         python stubborn.py (in the repository root, env manager: local, '
        'arguments: none; its --help did not end within 3 s)'
    ) in out.splitlines()


# Its --help fails: it exits 4 before its parser is built.
HELP_FAILS = """\
import argparse
import sys

if '--help' in sys.argv:
    sys.exit(4)
import mlflow

with mlflow.start_run():
    mlflow.log_metric('value', 1.0)
"""

# Its one option is --lr: no option of its --help is named after learning_rate.
LR_OPTION = """\
import argparse
import mlflow

parser = argparse.ArgumentParser()
parser.add_argument('--lr', type=float, default=0.1)
args = parser.parse_args()
with mlflow.start_run():
    mlflow.log_metric('value', args.lr)
"""


@pytest.mark.parametrize(
    ('script', 'tags', 'argv', 'arguments', 'arguments_from'),
    [
        pytest.param(
            HELP_FAILS,
            {},
            (),
            'arguments: none; its --help failed (exit status 4)',
            '--help, which failed (exit status 4)',
            id='help-failed',
        ),
        pytest.param(
            LR_OPTION,
            {},
            (),
            'arguments: none; its --help shows no option named after a param',
            '--help',
            id='help-names-no-param',
        ),
        pytest.param(
            LR_OPTION,
            {'reproduce.argv': '[]'},
            (),
            'arguments: none; the tag reproduce.argv records none',
            'the tag reproduce.argv',
            id='recorded-none',
        ),
        pytest.param(
            LR_OPTION,
            {},
            ('--script-args', ''),
            'arguments: none; --script-args gives none',
            '--script-args',
            id='script-args-empty',
        ),
    ],
)
def test_a_script_that_gets_no_arguments_is_told_why(
    tmp_path, capsys, script, tags, argv, arguments, arguments_from
):
    """The Script line says where the arguments came from, or that there are
    none and why: never 'arguments from --help' when --help gave none."""
    repo, commit = files_repo(tmp_path, {'fit.py': script})
    run_id = tagged_run({**script_tags(repo, commit, 'fit.py'), **tags}, {'learning_rate': '0.5'})
    code, out, err = reproduce(capsys, '--run_id', run_id, *argv)
    assert code in (0, 1), err
    assert (
        f'Script:         python fit.py (in the repository root, env manager: local, {arguments})'
    ) in out.splitlines()
    report = json.loads(
        artifact_bytes(reproduced_run(out).info.run_id, 'reproduce/comparison.json')
    )
    assert report['source']['script']['argv'] == []
    assert report['source']['script']['arguments_from'] == arguments_from


def test_a_search_skips_a_script_choosing_its_experiment_and_a_named_one_is_an_error(
    tmp_path, capsys
):
    repo, commit = files_repo(tmp_path, {'own.py': SETS_EXPERIMENT, 'fit.py': "print('fit')\n"})
    name = f'choosers-{tmp_path.name}'
    experiment = client().create_experiment(name)
    chooser = tagged_run(script_tags(repo, commit, 'own.py'), {}, experiment)
    fine = tagged_run(script_tags(repo, commit, 'fit.py'), {}, experiment)
    argv = ['--experiment_name', 'nightly', '--dry-run']
    code, out, err = reproduce(capsys, '--from-experiment', name, *argv, '--output', 'json')
    doc = json.loads(out)
    assert code == 0, err
    assert [r['reference_run_id'] for r in doc['runs']] == [fine]
    [skipped] = doc['skipped']
    assert skipped['run_id'] == chooser
    assert skipped['reason'].startswith('the script own.py chooses its own experiment (line 6: ')
    assert skipped['reason'].endswith(f"reference run's experiment {name!r}")
    code, out, err = reproduce(capsys, '--from-experiment', name, *argv)
    assert code == 0, err
    assert 'Skipped 1 run: the script own.py chooses its own experiment' in out
    assert out.splitlines()[-1] == 'Planned: 1 run, 1 skipped'
    # Named, it is an error of the batch.
    code, out, err = reproduce(capsys, '--run_id', chooser, fine, *argv, '--output', 'json')
    assert code == 2
    assert [r['status'] for r in json.loads(out)['runs']] == ['error', 'planned']
    # Without --experiment_name, or with its own, both are planned.
    for given in ([], ['--experiment_name', name]):
        code, out, err = reproduce(
            capsys, '--from-experiment', name, '--dry-run', *given, '--output', 'json'
        )
        assert code == 0, err
        assert sorted(r['reference_run_id'] for r in json.loads(out)['runs']) == sorted(
            [chooser, fine]
        )

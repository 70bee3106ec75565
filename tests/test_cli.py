"""The command line: options parsed or refused with one line and exit code 2,
the script run as a command, and --dry-run printing the plan."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from helpers import (
    ROOT,
    SCRIPT,
    all_run_ids,
    build_repo,
    client,
    reproduce,
    tagged_run,
)

import reproduce_run
from reproduce_run import main


@pytest.mark.parametrize(
    ('argv', 'dest', 'value'),
    [
        pytest.param(['--run_id', 'abc'], 'run_id', ['abc'], id='run_id'),
        pytest.param(['--run-id', 'abc'], 'run_id', ['abc'], id='run-id'),
        pytest.param(
            ['--run-id', 'abc', '--experiment_name', 'x'],
            'experiment_name',
            'x',
            id='experiment_name',
        ),
        pytest.param(
            ['--run-id', 'abc', '--experiment-name', 'x'],
            'experiment_name',
            'x',
            id='experiment-name',
        ),
        pytest.param(['--run-id', 'abc'], 'experiment_name', None, id='experiment-default'),
        pytest.param(['--run-id', 'abc', '--rel_tol', '0.1'], 'rtol', 0.1, id='rel_tol'),
        pytest.param(['--run-id', 'abc', '--rtol', '0.1'], 'rtol', 0.1, id='rtol'),
        pytest.param(['--run-id', 'abc'], 'rtol', 1e-9, id='rtol-default'),
        pytest.param(['--run-id', 'abc'], 'atol', 0.0, id='atol-default'),
        pytest.param(['--run-id', 'abc', '-e', 'train'], 'entry_point', 'train', id='e'),
        pytest.param(
            ['--run-id', 'abc', '--entry-point', 'train'], 'entry_point', 'train', id='entry-point'
        ),
        pytest.param(
            ['--run-id', 'abc', '--env-manager', 'uv'], 'env_manager', 'uv', id='env-manager'
        ),
        pytest.param(['--run-id', 'abc', '--last-only'], 'last_only', True, id='last-only'),
    ],
)
def test_parse_args(argv, dest, value):
    assert getattr(reproduce_run.parse_args(argv), dest) == value


@pytest.mark.parametrize(
    ('argv', 'message'),
    [
        pytest.param(
            ['--run_id', 'not a run'],
            "expected an MLflow run ID (letters, digits, _ and -), got 'not a run'",
            id='malformed-run-id',
        ),
        pytest.param(
            ['--run_id', 'a', '--rtol', 'abc'],
            "expected a number, got 'abc'",
            id='non-numeric-rtol',
        ),
        pytest.param(
            ['--run_id', 'a', '--atol', '-1'],
            "expected a number >= 0, got '-1'",
            id='negative-atol',
        ),
        pytest.param(
            ['--run_id', 'a', '--rtol', 'nan'], "expected a number >= 0, got 'nan'", id='nan-rtol'
        ),
        pytest.param(
            ['--run_id', 'a', '--env-manager', 'pip'],
            "invalid choice: 'pip'",
            id='unknown-env-manager',
        ),
        pytest.param(
            [], 'the following arguments are required: --run_id/--run-id', id='missing-run-id'
        ),
        pytest.param(
            ['--run_id', 'a', '--tolerance', 'loss'],
            "expected KEY=RTOL[,ATOL], got 'loss'",
            id='tolerance-without-equals',
        ),
        pytest.param(
            ['--run_id', 'a', '--tolerance', 'loss=-1'],
            "expected a number >= 0, got '-1' in 'loss=-1'",
            id='negative-metric-tolerance',
        ),
        pytest.param(
            ['--run_id', 'a', '--tolerance', 'loss=0.1,x'],
            "expected a number, got 'x' in 'loss=0.1,x'",
            id='non-numeric-metric-atol',
        ),
        pytest.param(
            ['--run_id', 'a', '--tolerance', 'loss=1,2,3'],
            "expected KEY=RTOL[,ATOL], got 'loss=1,2,3'",
            id='tolerance-three-values',
        ),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ''
    [line] = err.splitlines()  # one line: no usage block, no traceback
    assert line.startswith('reproduce_run: error: ') and line.endswith(' (see --help)')
    assert message in line


def test_help_and_argument_errors_do_not_import_mlflow():
    code = (
        'import sys, reproduce_run\n'
        'for argv in (["--help"], ["--run_id", "bad id"]):\n'
        '    try:\n'
        '        reproduce_run.main(argv)\n'
        '    except SystemExit:\n'
        '        pass\n'
        'print("mlflow" in sys.modules)\n'
    )
    proc = subprocess.run((sys.executable, '-c', code), cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.strip().splitlines()[-1] == 'False'


def test_script_runs_as_a_command(reference):
    proc = subprocess.run(
        (sys.executable, str(SCRIPT), '--run_id', reference('sklearn_regression')),
        capture_output=True,
        text=True,
        env={**os.environ},
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == 'Runs equal: True'


def test_dry_run_makes_no_run_and_prints_the_plan(reference, capsys):
    run_id = reference('own_params')
    before = all_run_ids()
    code, out, _ = reproduce(capsys, '--run_id', run_id, '--dry-run')
    assert code == 0
    assert all_run_ids() == before
    ref = client().get_run(run_id)
    assert (
        f'Source:         {ref.data.tags["mlflow.source.name"]} @ '
        f'{ref.data.tags["mlflow.source.git.commit"]}' in out
    )
    assert 'Entry point:    main (env manager: local)' in out
    assert 'Params to pass: n_neighbors=5' in out
    assert 'Params not passed (not declared by the entry point): algorithm=' in out
    assert 'Experiment:     Default' in out


# A dry run's items, as text (`Params to pass: ...`) and Markdown
# (`- params to pass: ...`) say them.
_ITEM_RE = re.compile(
    r'^(?:- )?(params to pass|params not passed \(.*?\)|experiment): +(.*)$', re.I
)
ARGPARSE_SCRIPT = """\
import argparse
import mlflow

parser = argparse.ArgumentParser()
parser.add_argument('--lr')
args = parser.parse_args()
with mlflow.start_run():
    mlflow.log_param('lr', args.lr)
"""


def plan_items(out: str) -> dict[str, str]:
    return {
        m[1][0].lower() + m[1][1:]: m[2] for line in out.splitlines() if (m := _ITEM_RE.match(line))
    }


def json_items(doc: dict) -> dict[str, str]:
    """The items the text says, from the JSON document's fields."""
    params, by_reason = doc['params'], {}
    for name, why in params['why_not_passed'].items():
        by_reason.setdefault(why, {})[name] = params['not_passed'][name]

    def listed(ps):
        return ', '.join(f'{k}={v}' for k, v in sorted(ps.items())) or '(none)'

    among = by_reason.pop(reproduce_run.CHOSEN_AT_RUN_TIME, None)
    to_pass = f"those of the script's --help, at run time, among {listed(among)}" if among else None
    items = {'params to pass': to_pass or listed(params['passed'])}
    items |= {f'params not passed ({why})': listed(ps) for why, ps in by_reason.items()}
    return items | {'experiment': doc['experiment']}


@pytest.fixture
def script_run(tmp_path) -> str:
    repo, commit = build_repo(tmp_path / 'plan', {'fit.py': ARGPARSE_SCRIPT})
    tags = {
        'mlflow.source.type': 'LOCAL',
        'mlflow.source.name': 'tiny/fit.py',
        'mlflow.source.git.commit': commit,
        'mlflow.source.git.repoURL': str(repo),
    }
    return tagged_run(tags, {'lr': '0.1', 'seed': 'None'})


@pytest.mark.parametrize('kind', ['project', 'script'])
def test_a_dry_run_shows_the_same_plan_in_every_format(kind, reference, request, capsys):
    """Text, Markdown and JSON: the source, entry point, env manager, script,
    backend, the params to pass and those not passed (by reason), the
    experiment, and that nothing ran."""
    run_id = reference('own_params') if kind == 'project' else request.getfixturevalue('script_run')
    out = {}
    for output in ('table', 'markdown', 'json'):
        code, out[output], err = reproduce(
            capsys, '--run_id', run_id, '--dry-run', '--output', output
        )
        assert code == 0, err
    doc = json.loads(out['json'])
    assert doc['status'] == 'planned'
    assert plan_items(out['table']) == plan_items(out['markdown']) == json_items(doc)
    assert len(plan_items(out['table'])) >= 2 + (kind == 'project')
    for text in (out['table'], out['markdown']):
        assert text.splitlines()[-1] == 'Dry run: nothing was run and no run was created.'
        shown = text.replace('`', '')
        source, script = doc['source'], doc['source']['script']
        facts = [source['uri'], source['version'], source['entry_point'], source['env_manager']]
        facts += [doc['backend']['name']]
        facts += (
            [script['working_folder'], f'arguments from {script["arguments_from"]}']
            if script
            else []
        )
        assert [fact for fact in facts if fact not in shown] == []


def test_dry_run_json_and_an_impossible_plan(reference, capsys):
    code, out, _ = reproduce(
        capsys, '--run_id', reference('sklearn_regression'), '--dry-run', '--output', 'json'
    )
    doc = json.loads(out)
    assert (code, doc['status'], doc['reproduced_run_id']) == (0, 'planned', None)
    assert doc['params']['passed'] == {'alpha': '0.005', 'l1_ratio': '0.5'}
    code, out, err = reproduce(
        capsys, '--run_id', reference('sklearn_regression'), '--dry-run', '--entry-point', 'nope'
    )
    assert (code, out) == (2, '')
    assert "Could not find nope among entry points ['main']" in err

"""--explain: which environment difference changed the metrics.  The choice
of the next probe (delta debugging) is pure and tested in tables; the
end-to-end tests install real wheels, built here, from a local folder."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import uv
from helpers import (
    ROOT,
    SCRIPT,
    add_project,
    artifact_bytes,
    build_wheel,
    client,
    clone_with_remote,
    first_spans,
    git,
    log_environment,
    make_repo,
    mlflow_run,
    pip_target,
    reproduce,
    run_python,
    section,
    start_tool,
    tables,
    wait_for,
)

import reproduce_run
from reproduce_run import Candidate, Differences, ExplainStep, Explanation, explain_step

# --- choosing the next probe: pure ---------------------------------------------


def explain_with(
    items: list[str],
    culprits: set[str],
    failing: set[str] = frozenset(),
    loads=lambda undone: True,
    needs=lambda undone: undone,
):
    """Run the search against an oracle: undoing a set restores equality when
    it holds every culprit; a probe fails (unresolved) when it undoes exactly
    `failing`, or when `loads` says the project does not load."""
    outcomes: dict[frozenset[str], str] = {}
    probes = []
    while (step := explain_step(items, outcomes, needs)).undo is not None:
        undone = frozenset(step.undo)
        assert undone not in outcomes, 'a set is never tried twice'
        probes.append(step.undo)
        if undone == failing or not loads(undone):
            outcomes[undone] = 'unresolved'
        else:
            outcomes[undone] = 'equal' if culprits <= undone else 'differ'
    return step, probes


@pytest.mark.parametrize(
    ('items', 'culprits', 'restores', 'found', 'max_probes'),
    [
        pytest.param(['a'], {'a'}, True, ('a',), 1, id='one-difference-one-culprit'),
        pytest.param(['a', 'b'], {'b'}, True, ('b',), 3, id='two-differences-second-culprit'),
        pytest.param(
            list('abcdefgh'), {'f'}, True, ('f',), 1 + 2 * math.ceil(math.log2(8)), id='8-one'
        ),
        pytest.param(list('abcdefgh'), {'a', 'h'}, True, ('a', 'h'), 20, id='8-two-apart'),
        pytest.param(list('abcdefgh'), {'c', 'd'}, True, ('c', 'd'), 20, id='8-two-together'),
        pytest.param(list('abcd'), {'a', 'b', 'c', 'd'}, True, tuple('abcd'), 20, id='all-needed'),
        pytest.param(list('abc'), {'z'}, False, (), 1, id='environment-does-not-explain'),
    ],
)
def test_explain_step_finds_a_smallest_culprit_set(items, culprits, restores, found, max_probes):
    step, probes = explain_with(items, culprits)
    assert probes[0] == tuple(items), 'first, everything is undone'
    assert (step.restores, step.culprits) == (restores, found)
    assert len(probes) <= max_probes


@pytest.mark.parametrize(
    ('items', 'outcomes', 'step'),
    [
        pytest.param([], {}, ExplainStep(), id='nothing-to-undo'),
        pytest.param(['a', 'b'], {}, ExplainStep(undo=('a', 'b')), id='undo-everything-first'),
        pytest.param(
            ['a', 'b'], {frozenset('ab'): 'differ'}, ExplainStep(restores=False), id='still-differs'
        ),
        pytest.param(
            ['a', 'b'],
            {frozenset('ab'): 'unresolved'},
            ExplainStep(fails=True),
            id='everything-undone-does-not-run',
        ),
        pytest.param(
            ['a', 'b'], {frozenset('ab'): 'equal'}, ExplainStep(undo=('a',)), id='then-halves'
        ),
        pytest.param(
            ['a', 'b'],
            {frozenset('ab'): 'equal', frozenset('a'): 'differ'},
            ExplainStep(undo=('b',)),
            id='then-the-other-half',
        ),
        pytest.param(
            ['a', 'b'],
            {frozenset('ab'): 'equal', frozenset('a'): 'differ', frozenset('b'): 'differ'},
            ExplainStep(restores=True, culprits=('a', 'b')),
            id='both-needed',
        ),
    ],
)
def test_explain_step(items, outcomes, step):
    assert explain_step(items, outcomes) == step


@pytest.mark.parametrize(
    ('culprits', 'found', 'requires', 'probes'),
    [
        pytest.param({'a'}, ('a',), ('b',), [('a', 'b'), ('a',), ('b',)], id='a-needs-the-rest'),
        pytest.param({'b'}, ('b',), (), [('a', 'b'), ('a',), ('b',)], id='the-culprit-is-the-rest'),
    ],
)
def test_a_failed_probe_without_declared_needs_is_tried_with_the_rest(
    culprits, found, requires, probes
):
    """Undoing a alone fails, and no package declares what it needs: it is
    tried with all the other differences (undoing everything was equal), and
    then the rest alone, so that a culprit among them is not missed."""
    step, tried = explain_with(['a', 'b'], culprits, failing=frozenset('a'))
    assert (step.restores, step.culprits, step.requires) == (True, found, requires)
    assert tried == probes


SK = Candidate('package', 'sk', '1.3.2', '1.9.1')
NP = Candidate('package', 'np', '1.26.4', '2.4.6')
PD = Candidate('package', 'pd', '3.0.6', '3.1.1')


# The environment: the reference had sk 1.3.2, np 1.26.4, pd 3.0.6;
# the reproduction sk 1.9.1, np 2.4.6, pd 3.1.1.  The reference's sk does not
# load with the new np, and the new pd does not load with the old np.
def sk_pd_np_loads(undone: frozenset[str]) -> bool:
    sk_needs_old_np = 'sk' not in undone or 'np' in undone
    new_pd_needs_new_np = 'pd' in undone or 'np' not in undone
    return sk_needs_old_np and new_pd_needs_new_np


def sk_pd_np_needs(undone: frozenset[str]) -> frozenset[str]:
    found = set(undone)
    while not sk_pd_np_loads(frozenset(found)):
        found |= {'np'} if 'sk' in found and 'np' not in found else {'pd'}
    return frozenset(found)


@pytest.mark.parametrize(
    ('culprits', 'found', 'requires', 'max_probes'),
    [
        pytest.param({'sk'}, ('sk',), ('np', 'pd'), 4, id='sklearn-needs-numpy-and-pandas'),
        pytest.param({'np'}, ('np',), ('pd',), 6, id='numpy-itself-needs-pandas'),
        pytest.param({'pd'}, ('pd',), (), 6, id='pandas-loads-alone'),
        # old sk loads only with old np and pd: no experiment can say more
        pytest.param({'sk', 'np', 'pd'}, ('sk',), ('np', 'pd'), 4, id='all-three'),
    ],
)
def test_a_probe_that_fails_to_load_is_tried_with_what_it_needs(
    culprits, found, requires, max_probes
):
    """A failed probe is unresolved, never "not equal": the set is tried
    again with what it needs to load, and what it needed is then tried alone,
    so that a culprit hiding among the needs is not missed."""
    step, probes = explain_with(
        ['sk', 'np', 'pd'], culprits, loads=sk_pd_np_loads, needs=sk_pd_np_needs
    )
    assert (step.restores, step.culprits, step.requires) == (True, found, requires)
    assert len(probes) <= max_probes


def test_when_every_probe_fails_no_culprit_is_named():
    step, probes = explain_with(['a', 'b'], {'a'}, loads=lambda undone: False)
    assert (step.fails, step.culprits, probes) == (True, (), [('a', 'b')])


REQUIREMENTS = {
    ('sk', '1.3.2'): ('np<2,>=1.17', 'scipy>=1.5'),  # scipy: not a difference
    ('sk', '1.9.1'): ('np>=1.22',),
    ('pd', '3.1.1'): ('np>=2', 'pytest; extra == "test"'),
    ('pd', '3.0.6'): ('np>=1.26', 'np<1; python_version < "3"'),  # a marker that is false
}


@pytest.mark.parametrize(
    ('undone', 'needed'),
    [
        pytest.param({'package sk'}, {'package sk', 'package np', 'package pd'}, id='sk-np-pd'),
        pytest.param({'package np'}, {'package np', 'package pd'}, id='a-kept-package-goes-back'),
        pytest.param({'package pd'}, {'package pd'}, id='nothing-needed'),
        pytest.param({'SEED'}, {'SEED'}, id='a-variable-needs-nothing'),
        pytest.param(set(), set(), id='nothing-undone'),
    ],
)
def test_needed_to_load(undone, needed):
    candidates = [SK, NP, PD, Candidate('variable', 'SEED', '1', '2')]
    found = reproduce_run.needed_to_load(frozenset(undone), candidates, REQUIREMENTS)
    assert found == needed


@pytest.mark.parametrize(
    ('requirements', 'needed'),
    [
        pytest.param({('sk', '1.3.2'): ('np (<2)',)}, {'package sk', 'package np'}, id='old-form'),
        pytest.param({('sk', '1.3.2'): ('np<2; extra == "x"',)}, {'package sk'}, id='an-extra'),
        pytest.param({('sk', '1.3.2'): ('not a requirement!',)}, {'package sk'}, id='unparsable'),
        pytest.param({('sk', '1.3.2'): ('NP<2',)}, {'package sk', 'package np'}, id='name-case'),
        pytest.param({}, {'package sk'}, id='no-metadata'),
    ],
)
def test_needed_to_load_reads_requirements_as_pip_does(requirements, needed):
    found = reproduce_run.needed_to_load(frozenset({'package sk'}), [SK, NP], requirements)
    assert found == needed


NUMKIT = Candidate('package', 'numkit', '1.0', '1.1')
PADKIT = Candidate('package', 'padkit', '1.0', '2.0')
SEED = Candidate('variable', 'PYTHONHASHSEED', '1', '2')


@pytest.mark.parametrize(
    ('explanation', 'lines'),
    [
        pytest.param(
            Explanation(True, (NUMKIT, SEED), (PADKIT,), ({},) * 5),
            [
                "Explained: with the reference's numkit 1.0 and PYTHONHASHSEED 1 the runs are "
                'equal; padkit 2.0 does not matter (5 probes)'
            ],
            id='the-issue-example',
        ),
        pytest.param(
            Explanation(
                False,
                probes=({},),
                not_tried=({'name': 'Python version', 'reason': 'why'},),
            ),
            [
                'Explained: the environment does not explain it: with every difference undone '
                'the runs still differ (1 probe)',
                '- not tried: Python version: why',
            ],
            id='not-explained',
        ),
        pytest.param(
            Explanation(True, (NUMKIT,), (Candidate('package', 'padkit', '1.0', None),), ({},)),
            [
                "Explained: with the reference's numkit 1.0 the runs are equal; padkit not "
                'installed does not matter (1 probe)'
            ],
            id='an-absent-package-is-not-installed',
        ),
        pytest.param(
            Explanation(None, reason='unknown'),
            ['Explained: nothing tried: unknown'],
            id='nothing-tried',
        ),
        pytest.param(
            Explanation(
                True,
                (SK,),
                (Candidate('package', 'padkit', '1.0', '2.0'),),
                (
                    {'changes': {'sk': '1.3.2'}, 'error': 'ImportError: sk needs np<2'},
                    {'changes': {'sk': '1.3.2', 'np': '1.26.4', 'pd': '3.0.6'}},
                ),
                requires={SK.key: (NP, PD)},
            ),
            [
                "Explained: with the reference's sk 1.3.2 (with np 1.26.4 and pd 3.0.6, which it "
                'needs to load) the runs are equal; padkit 2.0 does not matter (2 probes)',
                "- failed: with the reference's sk 1.3.2: ImportError: sk needs np<2",
            ],
            id='a-culprit-and-what-it-needs',
        ),
        pytest.param(
            Explanation(
                None,
                probes=({'changes': {'np': '1.26.4', 'SEED': None}, 'error': ''},),
                reason='with every difference undone, the project does not run',
            ),
            [
                'Explained: no answer: with every difference undone, the project does not run '
                '(1 probe)',
                "- failed: with the reference's np 1.26.4, SEED unset: no error line",
            ],
            id='every-probe-failed',
        ),
        pytest.param(None, [], id='not-asked'),
    ],
)
def test_explanation_lines(explanation, lines):
    assert reproduce_run.explanation_lines(explanation) == lines


def test_each_culprit_lists_what_it_needs_in_json():
    explanation = Explanation(True, (SK, NUMKIT), requires={SK.key: (NP,)})
    culprits = explanation.json()['culprits']
    assert culprits[0]['requires'] == [{'name': 'np', 'reference': '1.26.4', 'reproduced': '2.4.6'}]
    assert culprits[1] == {
        'kind': 'package',
        'name': 'numkit',
        'reference': '1.0',
        'reproduced': '1.1',
        'requires': [],
    }


@pytest.mark.parametrize(
    ('name', 'version', 'ok'),
    [
        ('numkit', '1.0', True),
        ('scikit-learn', '1.3.2', True),
        ('zope.interface', '6.0.post1', True),
        ('torch', '2.1.0+cpu', True),
        ('epoch', '1!2.0', True),
        ('newkit', None, True),  # not installed: said elsewhere
        ('http://127.0.0.1:9/evilpkg', '1', False),
        ('--index-url=http://127.0.0.1:9/simple', '1', False),
        ('-r/etc/passwd', '1', False),
        ('evil @ file:///tmp/x', '1', False),
        ('../pkg', '1', False),
        ('numkit', '1.0 ; python_version>"3"', False),
        ('numkit', '@ http://127.0.0.1:9/x.whl', False),
        ('numkit', '', False),
    ],
)
def test_only_a_package_name_and_version_are_installable(name, version, ok):
    assert reproduce_run.installable(name, version) is ok


def test_a_hostile_reference_environment_offers_no_probe():
    """environment.json is a file anyone who can write to the store can
    upload: a variable outside the recorded ones is not even compared, and a
    package that pip would take for a URL or an option is not tried."""
    reference = {
        'env': {'BASH_ENV': '$(touch /tmp/x)', 'LD_PRELOAD': '/tmp/x.so', 'OMP_NUM_THREADS': '1'},
        'packages': {'http://127.0.0.1:9/evilpkg': '1', 'numkit': '1.0'},
    }
    reproduced = {'env': {'OMP_NUM_THREADS': '2'}, 'packages': {'numkit': '1.1'}}
    found = reproduce_run.environment_differences(reference, reproduced)
    assert {d['name'] for d in found if d['kind'] == 'env'} == {'OMP_NUM_THREADS'}
    differences = Differences(environment=tuple(found), datasets=(), environment_unknown=None)
    candidates, not_tried = reproduce_run.explanation_candidates(differences)
    assert sorted(c.name for c in candidates) == ['OMP_NUM_THREADS', 'numkit']
    assert not_tried == [
        {
            'name': 'package http://127-0-0-1:9/evilpkg',  # normalized as package names are
            'reason': 'not a package name and version pip can be asked for',
        }
    ]


def test_candidates_and_what_cannot_be_undone():
    differences = Differences(
        environment=(
            {'kind': 'python', 'name': 'version', 'reference': '3.10', 'reproduced': '3.11'},
            {'kind': 'platform', 'name': 'cpu_count', 'reference': 4, 'reproduced': 8},
            {'kind': 'package', 'name': 'numkit', 'reference': '1.0', 'reproduced': '1.1'},
            {'kind': 'package', 'name': 'newkit', 'reference': None, 'reproduced': '1.0'},
            {'kind': 'env', 'name': 'PYTHONHASHSEED', 'reference': None, 'reproduced': '2'},
        ),
        datasets=(  # two fields of one dataset: said once
            {'name': 'd', 'context': None, 'change': 'digest'},
            {'name': 'd', 'context': None, 'change': 'source', 'field': 'uri'},
        ),
        environment_unknown=None,
    )
    candidates, not_tried = reproduce_run.explanation_candidates(differences)
    assert candidates == [NUMKIT, Candidate('variable', 'PYTHONHASHSEED', None, '2')]
    assert [t['name'] for t in not_tried] == [
        'Python version',
        'platform cpu_count',
        'package newkit',
        'dataset d',
    ]


def session_with(environ: dict[str, str]) -> reproduce_run.Session:
    return reproduce_run.Session(
        reproduce_run.Options(), None, 'sqlite:///x', environ, '/tmp', 't', reproduce_run.Stop()
    )


@pytest.mark.parametrize(
    ('user', 'undone', 'environ'),
    [
        pytest.param({}, [SEED], {'PYTHONHASHSEED': '1'}, id='variable-set'),
        pytest.param(
            {},
            [Candidate('variable', 'OMP_NUM_THREADS', None, '2')],
            {'OMP_NUM_THREADS': None},
            id='variable-unset',
        ),
        pytest.param({}, [NUMKIT, PADKIT], {'PYTHONPATH': '/l/n:/l/p'}, id='layers-in-order'),
        pytest.param(
            {'PYTHONPATH': '/mine'}, [NUMKIT], {'PYTHONPATH': '/l/n:/mine'}, id='before-users'
        ),
    ],
)
def test_probe_environ(user, undone, environ):
    layers = {'numkit': '/l/n', 'padkit': '/l/p'}
    assert dict(reproduce_run.probe_environ(session_with(user), undone, layers)) == environ


def test_a_probe_unsets_a_variable_and_nests_under_its_run():
    session = session_with({'HOME': '/h', 'OMP_NUM_THREADS': '2'})
    probe = reproduce_run.Probe('a' * 32, environ=(('OMP_NUM_THREADS', None),), parent_run_id='p')
    assert reproduce_run._probe_session(session, probe).user_environ == {'HOME': '/h'}
    parents = reproduce_run._Parents(session, reproduce_run.Planner())
    assert parents.parent_for(probe) == 'p'


# --- installing with pip alone, with the user's pip settings --------------------

SECRET = 's3cr3t-token'
SECRET_INDEX = f'http://user:{SECRET}@127.0.0.1:9/simple'  # nothing listens on port 9


def test_pip_installs_even_with_uv_on_the_path(tmp_path):
    environ = {**os.environ, 'PATH': installer_path(tmp_path / 'bin', with_uv=True)}
    argv, env = reproduce_run.install_command(session_with(environ), 'numkit==1.0', '/l')
    assert argv[:3] == [sys.executable, '-m', 'pip']
    assert argv[-4:] == ['--target', '/l', '--', 'numkit==1.0']
    assert env['PATH'] == environ['PATH']


def test_pip_is_told_no_user():
    environ = {**os.environ, 'PATH': '/nowhere', 'PIP_USER': '1'}
    argv, env = reproduce_run.install_command(session_with(environ), 'numkit==1.0', '/l')
    assert argv[:3] == [sys.executable, '-m', 'pip'] and '--no-user' in argv
    assert env['PIP_USER'] == '1'


# --- end to end: real wheels, a real reference, real probes ---------------------


def installer_path(folder: Path, with_uv: bool) -> str:
    """A PATH that picks the installer: a folder holding a `python` that runs
    this interpreter (a wrapper: a symlink would lose a venv) and, with uv,
    uv's binary; then /usr/bin and /bin for git."""
    folder.mkdir(parents=True, exist_ok=True)
    python = folder / 'python'
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    if with_uv:
        os.symlink(uv.find_uv_bin(), folder / 'uv')
    path = os.pathsep.join([str(folder), '/usr/bin', '/bin'])
    assert (shutil.which('uv', path=path) is not None) == with_uv
    return path


# numkit's SCALE moves the metric `score`; padkit changes nothing (the decoy);
# OMP_NUM_THREADS, recorded in environment.json, moves the metric `threads`.
# With SLOW_PROBES set, a run with numkit 1.0 sleeps: only the probes do.
TRAIN = """\
import os, sys, time
import mlflow
import numkit, padkit

if os.environ.get('SLOW_PROBES') and numkit.SCALE == 1.0:
    time.sleep(600)
with mlflow.start_run():
    mlflow.log_metric('score', numkit.SCALE * 10)
    mlflow.log_metric('threads', float(os.environ.get('OMP_NUM_THREADS') or 0))
    data = sys.argv[1]
    if data:
        import numpy as np

        values = np.loadtxt(data)
        dataset = mlflow.data.from_numpy(values, source=data, name='data')
        mlflow.log_input(dataset, context='training')
        mlflow.log_metric('data_sum', float(values.sum()))
"""
MLPROJECT = """\
name: explain
entry_points:
  main:
    parameters:
      data: {type: string, default: ''}
    command: "python train.py {data}"
"""


class World:
    """Wheels in a find-links folder, the two environments as --target
    folders (the reference's and the user's, which PYTHONPATH selects), a
    project, and a reference run whose environment.json a reproduction
    recorded."""

    def __init__(self, root: Path, store: str) -> None:
        self.wheels = root / 'wheels'
        self.wheels.mkdir()
        v = {
            (n, ver): build_wheel(self.wheels, n, ver, code)
            for n, ver, code in [
                ('numkit', '1.0', 'SCALE = 1.0\n'),
                ('numkit', '1.1', 'SCALE = 1.1\n'),
                ('padkit', '1.0', 'PAD = 1\n'),
                ('padkit', '2.0', 'PAD = 2\n'),
            ]
        }
        self.old = pip_target(root / 'old', [v['numkit', '1.0'], v['padkit', '1.0']])
        self.new = pip_target(root / 'new', [v['numkit', '1.1'], v['padkit', '2.0']])
        self.new_numkit_old_padkit = pip_target(
            root / 'mixed', [v['numkit', '1.0'], v['padkit', '2.0']]
        )
        self.repo = make_repo(root / 'repo')
        self.project = add_project(
            self.repo, 'explain', {'MLproject': MLPROJECT, 'train.py': TRAIN}
        )
        self.pip_path = installer_path(root / 'bin-pip', with_uv=False)
        self.uv_path = installer_path(root / 'bin-uv', with_uv=True)
        self.data = root / 'data.txt'
        self.data.write_text('1\n2\n3\n')
        self.store = store
        self.base = self.reference_made_by_mlflow_run()
        self.reference = self.recorded_reference(self.base)

    def env(self, site: Path, **variables: str) -> dict[str, str]:
        """The environment of a run (PATH=world.uv_path puts uv on it too)."""
        return {
            'PATH': self.pip_path,
            'PYTHONPATH': str(site),
            'PIP_NO_INDEX': '1',
            'PIP_FIND_LINKS': str(self.wheels),
            'OMP_NUM_THREADS': '1',
            **variables,
        }

    def reference_made_by_mlflow_run(self, *args: str) -> str:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in self.env(self.old).items():
                mp.setenv(k, v)
            return mlflow_run(str(self.project), self.store, *args)

    def recorded_reference(self, base: str) -> str:
        """A reproduction of base in the old environment: it records environment.json."""
        proc = subprocess.run(
            (sys.executable, str(SCRIPT), '--run_id', base, '--output', 'json'),
            env={**os.environ, 'MLFLOW_TRACKING_URI': self.store, **self.env(self.old)},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout)['reproduced_run_id']

    def with_its_recorded_environment(self, base: str, folder: Path) -> str:
        """base, made in the old environment as the reference was, given the
        environment.json the reference's reproduction recorded there: what
        recorded_reference makes, without running the project once more."""
        recorded = artifact_bytes(self.reference, 'reproduce/environment.json')
        log_environment(base, json.loads(recorded), folder)
        return base


@pytest.fixture(scope='module')
def world(tmp_path_factory, store) -> World:
    return World(tmp_path_factory.mktemp('explain'), store)


def explain(capsys, monkeypatch, world: World, site: Path, run_id: str, *argv: str, **variables):
    for k, v in world.env(site, **variables).items():
        monkeypatch.setenv(k, v)
    code, out, err = reproduce(capsys, '--run_id', run_id, '--explain', '--output', 'json', *argv)
    return code, json.loads(out), err


def padkit_only(world: World, tmp_path: Path) -> Path:
    """A find-links folder holding padkit's wheels alone: numkit cannot be installed."""
    links = tmp_path / 'links'
    links.mkdir()
    for wheel in world.wheels.glob('padkit-*'):
        (links / wheel.name).write_bytes(wheel.read_bytes())
    return links


def probe_runs(reproduced_run_id: str) -> list:
    c = client()
    return c.search_runs(
        [e.experiment_id for e in c.search_experiments()],
        f"tags.`mlflow.parentRunId` = '{reproduced_run_id}'",
    )


def installed_packages() -> dict[str, str]:
    """What this interpreter has installed, without any PYTHONPATH or pip
    setting (PIP_USER=1 would list the user's site alone)."""
    listed = subprocess.run(
        (sys.executable, '-m', 'pip', 'list', '--format=json', '--disable-pip-version-check'),
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH' and k[:4] != 'PIP_'},
    ).stdout
    return {p['name']: p['version'] for p in json.loads(listed)}


def folder_state(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob('*') if '__pycache__' not in str(p)
    )


@pytest.mark.slow
def test_culprit_package_found_and_decoy_not_blamed(world, capsys, monkeypatch, tmp_path):
    """pip installs the layers with the user's settings (PIP_NO_INDEX and
    PIP_FIND_LINKS: the wheels are only in that folder, and the index refuses
    connections), uv on the PATH or not; the index's credential shows
    nowhere, and a user install's PIP_USER=1 is no obstacle to a layer."""
    cache = tmp_path / 'uv-cache'  # where uv would leave what it fetched
    variables = {'PATH': world.uv_path, 'PIP_INDEX_URL': SECRET_INDEX, 'PIP_USER': '1'}
    variables['UV_CACHE_DIR'] = str(cache)
    before = (installed_packages(), folder_state(world.new), folder_state(world.old))
    assert not {'numkit', 'padkit'} & set(before[0])
    code, report, err = explain(capsys, monkeypatch, world, world.new, world.reference, **variables)
    assert code == 1, err  # the verdict is about the reproduction as asked
    assert SECRET not in json.dumps(report) + err
    assert not cache.exists()  # uv installed nothing
    assert list(report)[-1] == 'explanation'
    environment = report['explanation']['environment']
    documented = tables(section(ROOT / 'docs' / 'json.md', '`explanation`: with `--explain`'))
    assert first_spans(documented[0]) == list(environment)
    assert environment['restores_equality'] is True
    assert environment['culprits'] == [
        {
            'kind': 'package',
            'name': 'numkit',
            'reference': '1.0',
            'reproduced': '1.1',
            'requires': [],
        }
    ]
    assert environment['reason'] is None
    probes = environment['probes']
    assert probes[0]['changes'] == {'numkit': '1.0', 'padkit': '1.0'}
    assert probes[0]['equal'] is True
    assert all(p['status'] in ('equal', 'differ') for p in probes)
    assert len(probes) <= 3
    # In MLflow: probes nested under the reproduced run, tagged with their changes.
    new_id = report['reproduced_run_id']
    runs = {r.info.run_id: r for r in probe_runs(new_id)}
    assert set(runs) == {p['reproduced_run_id'] for p in probes}
    for p in probes:
        tag = runs[p['reproduced_run_id']].data.tags['reproduce.explain.changes']
        assert json.loads(tag) == p['changes']
    note = client().get_run(new_id).data.tags['mlflow.note.content']
    assert (
        "Explained: with the reference's numkit 1.0 the runs are equal; padkit 2.0 does not "
        f'matter ({len(probes)} probes)' in note
    )
    folder = client().download_artifacts(
        new_id, 'reproduce/explanation.json', str(world.wheels.parent)
    )
    assert json.loads(Path(folder).read_text()) == environment
    # The user's environment is untouched.
    assert (installed_packages(), folder_state(world.new), folder_state(world.old)) == before


@pytest.mark.slow
def test_a_package_absent_from_the_reproduction_is_not_installed(
    world, capsys, monkeypatch, tmp_path
):
    """padkit importable but no installed distribution (a plain folder on
    PYTHONPATH): the explanation calls it not installed, not unset."""
    site = pip_target(tmp_path / 'site', [world.wheels / 'numkit-1.1-py3-none-any.whl'])
    (site / 'padkit').mkdir()
    (site / 'padkit' / '__init__.py').write_text('PAD = 2\n')
    for k, v in world.env(site).items():
        monkeypatch.setenv(k, v)
    code, out, err = reproduce(capsys, '--run_id', world.reference, '--explain')
    assert code == 1, err
    assert '  - package padkit: 1.0 -> not installed' in out.splitlines()  # as it was
    [explained] = [line for line in out.splitlines() if line.startswith('Explained:')]
    assert explained.startswith(
        "Explained: with the reference's numkit 1.0 the runs are equal; padkit not installed "
        'does not matter ('
    )
    assert 'unset' not in out


@pytest.mark.slow
def test_two_culprits_at_once_a_package_and_a_variable(world, capsys, monkeypatch):
    """numkit and OMP_NUM_THREADS both moved a metric: both are culprits, in
    the report and in the run's description; the decoy padkit is not."""
    code, report, err = explain(
        capsys, monkeypatch, world, world.new, world.reference, OMP_NUM_THREADS='2'
    )
    assert code == 1, err
    environment = report['explanation']['environment']
    assert environment['restores_equality'] is True
    assert [c.pop('requires') for c in environment['culprits']] == [[], []]
    assert environment['culprits'] == [
        {'kind': 'package', 'name': 'numkit', 'reference': '1.0', 'reproduced': '1.1'},
        {'kind': 'variable', 'name': 'OMP_NUM_THREADS', 'reference': '1', 'reproduced': '2'},
    ]
    note = client().get_run(report['reproduced_run_id']).data.tags['mlflow.note.content']
    assert (
        "Explained: with the reference's numkit 1.0 and OMP_NUM_THREADS 1 the runs are equal; "
        'padkit 2.0 does not matter (' in note
    )


def test_unknown_reference_environment_tries_nothing(world, capsys, monkeypatch):
    code, report, err = explain(capsys, monkeypatch, world, world.new, world.base)
    assert code == 1, err
    environment = report['explanation']['environment']
    assert environment['restores_equality'] is None
    assert environment['probes'] == []
    assert environment['reason'].startswith("the reference run's environment is unknown")
    assert probe_runs(report['reproduced_run_id']) == []


def test_without_explain_there_is_no_explanation(world, capsys, monkeypatch):
    for k, v in world.env(world.new).items():
        monkeypatch.setenv(k, v)
    code, out, err = reproduce(capsys, '--run_id', world.base, '--output', 'json')
    assert code == 1, err
    assert 'explanation' not in json.loads(out)


def test_a_version_that_cannot_be_installed_is_not_tried(world, capsys, monkeypatch, tmp_path):
    links = padkit_only(world, tmp_path)  # numkit 1.0 is nowhere to be found
    code, report, err = explain(
        capsys, monkeypatch, world, world.new, world.reference, PIP_FIND_LINKS=str(links)
    )
    assert code == 1, err
    environment = report['explanation']['environment']
    assert [t['name'] for t in environment['not_tried']] == ['package numkit']
    assert 'numkit==1.0' in environment['not_tried'][0]['reason']
    assert environment['restores_equality'] is False  # padkit alone does not
    assert [p['changes'] for p in environment['probes']] == [{'padkit': '1.0'}]
    assert environment['probes'][0]['status'] == 'differ'


@pytest.mark.slow
def test_changed_data_is_not_explained_by_the_environment(world, capsys, monkeypatch, tmp_path):
    data = tmp_path / 'data.txt'
    data.write_text('1\n2\n3\n')
    base = world.reference_made_by_mlflow_run('-P', f'data={data}')
    reference = world.with_its_recorded_environment(base, tmp_path / 'artifacts')
    data.write_text('1\n2\n4\n')
    code, report, err = explain(capsys, monkeypatch, world, world.new, reference)
    assert code == 1, err
    environment = report['explanation']['environment']
    assert environment['restores_equality'] is False
    assert len(environment['probes']) == 1
    assert {'name': 'dataset data', 'reason': 'changed data cannot be undone by a probe'} in (
        environment['not_tried']
    )


@pytest.mark.slow
def test_sigterm_mid_explanation_leaves_nothing(world, store, tmp_path):
    tmp = tmp_path / 'tmp'
    tmp.mkdir()
    proc = start_tool(
        '--run_id',
        world.reference,
        '--explain',
        env={
            'MLFLOW_TRACKING_URI': store,
            'TMPDIR': str(tmp),
            'SLOW_PROBES': '1',
            **world.env(world.new),
        },
    )

    def probe_running() -> bool:
        c = client()
        runs = c.search_runs(
            [e.experiment_id for e in c.search_experiments()],
            f"tags.`reproduce.reference_run_id` = '{world.reference}' and "
            "attributes.status = 'RUNNING'",
        )
        return any('mlflow.parentRunId' in r.data.tags for r in runs)

    wait_for(probe_running, 120, 'a probe to run')
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert not probe_running()
    assert list(tmp.iterdir()) == []  # the layers went with the tool's temporary folder


@pytest.mark.slow
def test_a_batch_explains_each_reproduction_that_differs(world, capsys, monkeypatch, tmp_path):
    links = padkit_only(world, tmp_path)  # one probe: padkit alone
    for k, v in world.env(world.new, PIP_FIND_LINKS=str(links)).items():
        monkeypatch.setenv(k, v)
    code, out, err = reproduce(
        capsys, '--run_id', world.base, world.reference, '--explain', '--output', 'json'
    )
    assert code == 1, err
    runs = {r['reference_run_id']: r for r in json.loads(out)['runs']}
    assert [r['status'] for r in runs.values()] == ['differ', 'differ']
    unknown = runs[world.base]['explanation']['environment']
    assert (unknown['restores_equality'], unknown['probes']) == (None, [])
    known = runs[world.reference]['explanation']['environment']
    assert (known['restores_equality'], len(known['probes'])) == (False, 1)


@pytest.mark.slow
def test_repeat_explains_a_drifted_reference_once(world, capsys, monkeypatch, tmp_path):
    links = padkit_only(world, tmp_path)  # one probe: padkit alone
    for k, v in world.env(world.new, PIP_FIND_LINKS=str(links)).items():
        monkeypatch.setenv(k, v)
    code, out, err = reproduce(capsys, '--run_id', world.reference, '--repeat', '2', '--explain')
    assert code == 1, err
    assert f'Run {world.reference} against 2 repetitions: drifted' in out
    explained = [line for line in out.splitlines() if line.startswith('Explained:')]
    assert explained == [
        'Explained: the environment does not explain it: with every difference undone the '
        'runs still differ (1 probe)'
    ]


@pytest.mark.slow
def test_repeat_says_a_nondeterministic_reference_needs_no_environment_change(
    samples_repo, store, capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv('SAMPLE_JITTER_COUNTER', str(tmp_path / 'counter'))
    ref = mlflow_run(str(samples_repo / 'jitter'), store)
    argv = ('--run_id', ref, '--repeat', '2', '--explain', '--experiment-name', tmp_path.name)
    code, out, err = reproduce(capsys, *argv, '--output', 'json')
    assert code == 1, err
    doc = json.loads(out)
    assert doc['repeat']['classification'] == 'nondeterministic'
    explained = [r['explanation']['environment'] for r in doc['runs'] if 'explanation' in r]
    assert explained == [
        {
            'restores_equality': None,
            'culprits': [],
            'probes': [],
            'not_tried': [],
            'reason': reproduce_run.NOT_NEEDED_REASON,
        }
    ]
    assert all(probe_runs(r['reproduced_run_id']) == [] for r in doc['runs'])


RECORDED_TRAIN = """\
import mlflow
import numkit, padkit

with mlflow.start_run() as run:
    mlflow.log_metric('score', numkit.SCALE * 10)
    print(f'RUN_ID={run.info.run_id}')
"""


@pytest.mark.slow
def test_a_recorded_script_run_that_logged_no_model_is_explained(
    world, installed, capsys, monkeypatch, tmp_path
):
    """`python train.py` in a training environment where the recorder is
    installed: its environment, recorded in a tag, is the reference's."""
    git('init', '--quiet', '--bare', str(tmp_path / 'remote.git'), cwd=tmp_path)
    repo = tmp_path / 'repo'
    repo.mkdir()
    clone_with_remote(repo, {'train.py': RECORDED_TRAIN}, str(tmp_path / 'remote.git'))
    proc = run_python(str(installed / 'python'), repo, 'train.py', env=world.env(world.old))
    [run_id] = [line[7:] for line in proc.stdout.splitlines() if line.startswith('RUN_ID=')]
    reference = client().get_run(run_id)
    assert reference.data.metrics['score'] == 10.0
    assert 'reproduce.environment' in reference.data.tags
    assert client().list_artifacts(run_id) == []  # no model, no environment.json

    code, report, err = explain(capsys, monkeypatch, world, world.new, run_id)
    assert code == 1, err
    environment = report['explanation']['environment']
    assert environment['restores_equality'] is True
    assert environment['culprits'] == [
        {
            'kind': 'package',
            'name': 'numkit',
            'reference': '1.0',
            'reproduced': '1.1',
            'requires': [],
        }
    ]
    assert report['differences']['environment_source'] == 'recorded'


# skit's SCALE moves the metric `score`.  skit 1.0 refuses to import next to
# nump 2, as scikit-learn 1.3.2 does next to numpy 2; pand 2.0 refuses nump 1,
# as pandas 3.1.1 does numpy 1.26.  Each declares what it needs (Requires-Dist).
LOADING_WHEELS = [
    ('nump', '1.0', (), "MAJOR, VERSION = 1, '1.0'\n"),
    ('nump', '2.0', (), "MAJOR, VERSION = 2, '2.0'\n"),
    ('pand', '1.0', ('nump>=1',), 'import nump\n'),
    (
        'pand',
        '2.0',
        ('nump>=2',),
        "import nump\nif nump.MAJOR < 2:\n    raise ImportError('pand 2.0 needs nump>=2')\n",
    ),
    (
        'skit',
        '1.0',
        ('nump<2', 'pytest; extra == "tests"'),
        'import nump\nif nump.MAJOR >= 2:\n'
        "    raise ImportError('skit 1.0 needs nump<2, not ' + nump.VERSION)\nSCALE = 1.0\n",
    ),
    ('skit', '2.0', ('nump>=1',), 'import nump\nSCALE = 2.0\n'),
]
LOADING_TRAIN = """\
import mlflow
import pand, skit

with mlflow.start_run() as run:
    mlflow.log_metric('score', skit.SCALE * 10)
    print(f'RUN_ID={run.info.run_id}')
"""


@pytest.mark.slow
def test_a_culprit_is_named_with_the_packages_it_needs_to_load(
    installed, capsys, monkeypatch, tmp_path
):
    """The reference ran with skit, nump and pand 1.0, the reproduction with
    2.0 of each.  Undoing skit alone fails to import: that is no evidence, so
    skit is tried again with what its declared requirements need, nump 1.0,
    and what nump 1.0 then needs, pand 1.0.  skit is the culprit, named with
    them, and the failed probe is shown with its error line."""
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    built = {(n, v): build_wheel(wheels, n, v, code, req) for n, v, req, code in LOADING_WHEELS}
    sites = {
        v: pip_target(tmp_path / f'site-{v}', [built[n, v] for n in ('nump', 'pand', 'skit')])
        for v in ('1.0', '2.0')
    }
    path = installer_path(tmp_path / 'bin', with_uv=False)
    env = {'PATH': path, 'PIP_NO_INDEX': '1', 'PIP_FIND_LINKS': str(wheels)}
    git('init', '--quiet', '--bare', str(tmp_path / 'remote.git'), cwd=tmp_path)
    repo = tmp_path / 'repo'
    repo.mkdir()
    clone_with_remote(repo, {'train.py': LOADING_TRAIN}, str(tmp_path / 'remote.git'))
    proc = run_python(
        str(installed / 'python'), repo, 'train.py', env={**env, 'PYTHONPATH': str(sites['1.0'])}
    )
    [run_id] = [line[7:] for line in proc.stdout.splitlines() if line.startswith('RUN_ID=')]

    for k, v in {**env, 'PYTHONPATH': str(sites['2.0'])}.items():
        monkeypatch.setenv(k, v)
    code, out, err = reproduce(capsys, '--run_id', run_id, '--explain')
    assert code == 1, err
    assert 'Entry point:    train.py (script run)\n' in out  # no trailing blank
    assert (
        "Explained: with the reference's skit 1.0 (with nump 1.0 and pand 1.0, which it needs "
        'to load) the runs are equal (3 probes)\n'
        "- failed: with the reference's skit 1.0: "
        'ImportError: skit 1.0 needs nump<2, not 2.0\n'
    ) in out
    [reproduced] = [line.split()[-1] for line in out.splitlines() if line.startswith('Reproduced')]
    explained = json.loads(artifact_bytes(reproduced, 'reproduce/explanation.json'))
    assert [c['name'] for c in explained['culprits']] == ['skit']
    assert explained['culprits'][0]['requires'] == [
        {'name': 'nump', 'reference': '1.0', 'reproduced': '2.0'},
        {'name': 'pand', 'reference': '1.0', 'reproduced': '2.0'},
    ]
    assert [(p['changes'], p['status']) for p in explained['probes']] == [
        ({'nump': '1.0', 'pand': '1.0', 'skit': '1.0'}, 'equal'),
        ({'nump': '1.0', 'pand': '1.0'}, 'differ'),
        ({'skit': '1.0'}, 'failed'),
    ]
    assert explained['probes'][2]['error'] == 'ImportError: skit 1.0 needs nump<2, not 2.0'
    assert 'error' not in explained['probes'][0]


@pytest.mark.slow
def test_when_undoing_everything_does_not_run_no_culprit_is_named(
    installed, capsys, monkeypatch, tmp_path
):
    """The reference ran oldkit 1.0, which imports only where LEGACY is set,
    a variable the tool neither records nor sets: with every difference
    undone the project does not run, and nothing is blamed."""
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    old = build_wheel(
        wheels,
        'oldkit',
        '1.0',
        "import os\nif not os.environ.get('LEGACY'):\n"
        "    raise ImportError('oldkit 1.0 needs LEGACY')\nSCALE = 1.0\n",
    )
    new = build_wheel(wheels, 'oldkit', '2.0', 'SCALE = 2.0\n')
    sites = {v: pip_target(tmp_path / f'site-{v}', [w]) for v, w in (('1.0', old), ('2.0', new))}
    env = {
        'PATH': installer_path(tmp_path / 'bin', with_uv=False),
        'PIP_NO_INDEX': '1',
        'PIP_FIND_LINKS': str(wheels),
    }
    train = LOADING_TRAIN.replace('import pand, skit', 'import oldkit as skit')
    git('init', '--quiet', '--bare', str(tmp_path / 'remote.git'), cwd=tmp_path)
    repo = tmp_path / 'repo'
    repo.mkdir()
    clone_with_remote(repo, {'train.py': train}, str(tmp_path / 'remote.git'))
    reference_env = {**env, 'PYTHONPATH': str(sites['1.0']), 'LEGACY': '1'}
    proc = run_python(str(installed / 'python'), repo, 'train.py', env=reference_env)
    [run_id] = [line[7:] for line in proc.stdout.splitlines() if line.startswith('RUN_ID=')]

    monkeypatch.delenv('LEGACY', raising=False)
    for k, v in {**env, 'PYTHONPATH': str(sites['2.0'])}.items():
        monkeypatch.setenv(k, v)
    code, out, err = reproduce(capsys, '--run_id', run_id, '--explain')
    assert code == 1, err
    assert (
        'Explained: no answer: with every difference undone, the project does not run '
        "(1 probe)\n- failed: with the reference's oldkit 1.0: ImportError: oldkit 1.0 needs "
        'LEGACY\n'
    ) in out
    [reproduced] = [line.split()[-1] for line in out.splitlines() if line.startswith('Reproduced')]
    explained = json.loads(artifact_bytes(reproduced, 'reproduce/explanation.json'))
    assert (explained['restores_equality'], explained['culprits']) == (None, [])
    assert explained['reason'] == 'with every difference undone, the project does not run'

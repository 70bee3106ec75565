"""--junit-xml and the GitHub Actions job summary: the outcome as
CI systems read it.  Every file is judged by parsing it with libxml2 (lxml)
and with junitparser, as CI tools do, never by string matching."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import lxml.etree
import pytest
from helpers import (
    SCRIPT,
    add_project,
    client,
    clone_with_remote,
    git,
    python_run,
    recorded_run,
    reproduce,
    reproduce_json,
    wait_for,
)
from junitparser import Error, Failure, JUnitXml, Skipped, TestCase

import reproduce_run

UNKNOWN = 'f' * 32


def parse(path: Path) -> tuple[dict[str, str], list[TestCase]]:
    """The one testsuite's attributes and testcases, read by two real parsers."""
    tree = lxml.etree.parse(str(path))  # libxml2 refuses anything not well-formed
    assert tree.getroot().tag == 'testsuites'
    suites = list(JUnitXml.fromfile(str(path)))
    assert [s.name for s in suites] == ['reproduce_run']
    [suite] = tree.getroot().findall('testsuite')
    return dict(suite.attrib), list(suites[0])


def result(case: TestCase) -> type | None:
    """Failure, Error, Skipped, or None for a testcase that passed."""
    [r] = case.result or [None]
    return type(r) if r is not None else None


def run_name(run_id: str) -> str:
    return client().get_run(run_id).info.run_name


# --- the XML itself: pure -----------------------------------------------------


@pytest.mark.parametrize(
    ('text', 'kept'),
    [
        pytest.param('plain', 'plain', id='plain'),
        pytest.param('a\tb\nc\rd', 'a\tb\nc\rd', id='whitespace-kept'),
        pytest.param('nul\x00 bell\x07 esc\x1b[31m', 'nul bell esc[31m', id='control-characters'),
        pytest.param('lone \udcff surrogate', 'lone  surrogate', id='surrogate-escape'),
        pytest.param('\ufffe\uffff', '', id='non-characters'),
        pytest.param(']]> <&"\'', ']]> <&"\'', id='markup-escaped-not-dropped'),
        pytest.param('émoji 🎲', 'émoji 🎲', id='unicode'),
        pytest.param('git https://me:tok3n@host/r', 'git https://***@host/r', id='credentials'),
    ],
)
def test_xml_text_drops_what_xml_forbids_and_masks_credentials(text, kept):
    assert reproduce_run.xml_text(text) == kept


HOSTILE = 'evil ]]> <![CDATA[ x\x00\x01\x0b\x1b[31m "\' & \udcff 🎲\u202e \x9b \u2028\n</testcase>'


def test_hostile_cases_make_well_formed_junit(tmp_path):
    cases = [
        reproduce_run.Case(HOSTILE, 1.5, 'failure', HOSTILE, HOSTILE),
        reproduce_run.Case(HOSTILE, 0.25, 'error', HOSTILE, HOSTILE),
        reproduce_run.Case(HOSTILE, 0.0, 'skipped', HOSTILE),
        reproduce_run.Case(HOSTILE, 2.0, 'passed', text=HOSTILE),
    ]
    path = tmp_path / 'junit.xml'
    path.write_bytes(reproduce_run.junit_xml(cases, HOSTILE, time.time()))
    suite, parsed = parse(path)
    assert (suite['tests'], suite['failures'], suite['errors'], suite['skipped']) == (
        '4',
        '1',
        '1',
        '1',
    )
    line = reproduce_run.xml_text(reproduce_run.shown(HOSTILE))  # as the other outputs show it
    assert '\\x1b[31m' in line and '\\u202e \\x9b \\u2028\\n</testcase>' in line
    assert [c.name for c in parsed] == [line] * 4
    assert [c.classname for c in parsed] == [line] * 4
    assert [result(c) for c in parsed] == [Failure, Error, Skipped, None]
    assert [c.result[0].message for c in parsed[:3]] == [line] * 3
    lines = reproduce_run.xml_lines(HOSTILE)  # a body keeps its own lines
    assert lines.endswith('\\u2028\n</testcase>')
    assert parsed[0].result[0].text == lines
    assert parsed[3].system_out == lines
    assert [c.time for c in parsed] == [1.5, 0.25, 0.0, 2.0]


def report(status: str, run_id: str = 'a' * 32, **fields) -> reproduce_run.Report:
    return reproduce_run.Report(status=status, reference_run_id=run_id, **fields)


@pytest.mark.parametrize(
    ('outcome', 'cases'),
    [
        pytest.param(
            report('equal', reference_run_name='nightly', seconds=2.0),
            [('nightly (aaaaaaaa)', 'passed', '')],
            id='single-equal',
        ),
        pytest.param(
            report('failed', message='boom', output_tail=('x', 'boom')),
            [('aaaaaaaa', 'error', 'boom')],
            id='single-failed',
        ),
        pytest.param(
            reproduce_run.BatchReport(
                (
                    report('terminated', message='stopped by SIGTERM'),
                    report('terminated', 'b' * 32, message=reproduce_run.NOT_STARTED),
                )
            ),
            [
                ('aaaaaaaa', 'error', 'terminated: stopped by SIGTERM'),
                ('bbbbbbbb', 'error', 'terminated: not started'),
            ],
            id='signal',
        ),
        pytest.param(
            reproduce_run.BatchReport(
                (report('failed', message='boom'), report('failed', message='boom')),
                repeat_of='a' * 32,
            ),
            [('aaaaaaaa', 'error', 'failed: 2 of 2 repetitions did not finish; failed: boom')],
            id='repeat-none-finished',
        ),
        pytest.param(
            reproduce_run.BatchReport((), message='experiment nope not found'),
            [('reproduce_run', 'error', 'experiment nope not found')],
            id='could-not-start',
        ),
        pytest.param(
            reproduce_run.BatchReport(
                (report('planned'),), skipped=({'run_id': 'c' * 32, 'reason': 'a notebook'},)
            ),
            [('aaaaaaaa', 'passed', ''), ('cccccccc', 'skipped', 'a notebook')],
            id='dry-run-and-skipped',
        ),
    ],
)
def test_junit_cases(outcome, cases):
    got = outcome.junit_cases()
    assert [(c.name, c.result, c.message) for c in got] == cases


# --- end to end -----------------------------------------------------------------


TINY_PROJECT = {
    'MLproject': 'entry_points:\n  main:\n    parameters:\n      mode: string\n'
    '    command: python tiny.py {mode}\n',
    'tiny.py': 'import random, sys, mlflow\n'
    'mode = sys.argv[1]\n'
    'if mode == "fail":\n'
    '    sys.exit("tiny failure: giving up")\n'
    'for step, x in enumerate([1.0, 2.0, random.random() if mode == "random" else 3.0]):\n'
    '    mlflow.log_metric("x", x, step=step)\n',
}


def tiny_runs(repo: Path, *modes_and_last: tuple[str, float]) -> list[str]:
    """Reference runs of TINY_PROJECT recorded without running it: the
    history of x ends with the given value (3.0 is what the project logs)."""
    add_project(repo, 'tiny', TINY_PROJECT)
    commit = git('rev-parse', 'HEAD', cwd=repo)
    runs = []
    for mode, last in modes_and_last:
        run_id = recorded_run(f'file://{repo}#tiny', commit, {'mode': mode})
        for step, x in enumerate([1.0, 2.0, last]):
            client().log_metric(run_id, 'x', x, step=step)
        runs.append(run_id)
    return runs


def test_single_run_is_one_passing_testcase(own_repo, capsys, tmp_path):
    [run_id] = tiny_runs(own_repo, ('same', 3.0))
    path = tmp_path / 'out' / 'junit.xml'
    path.parent.mkdir()
    path.write_text('an older report')  # replaced whole
    name = f'junit-{tmp_path.name}'
    code, out, _ = reproduce(
        capsys, '--run_id', run_id, '--experiment-name', name, '--junit-xml', str(path)
    )
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True')
    suite, [case] = parse(path)
    assert (suite['tests'], suite['failures'], suite['errors']) == ('1', '0', '0')
    assert case.classname == name
    assert case.name == f'{run_name(run_id)} ({run_id[:8]})'
    assert result(case) is None
    assert case.time > 0
    assert os.listdir(path.parent) == ['junit.xml']  # no temporary file left


def test_a_relative_path_is_written_where_the_tool_was_started(capsys, tmp_path):
    code, _, _ = reproduce(capsys, '--run_id', UNKNOWN, '--junit-xml', 'junit.xml')
    assert code == 2
    _, [case] = parse(tmp_path / 'junit.xml')  # the tests run in tmp_path
    assert result(case) is Error
    assert case.result[0].message.startswith(f'run {UNKNOWN} not found at tracking URI ')


@pytest.mark.slow
def test_batch_with_mixed_outcomes(own_repo, capsys, tmp_path):
    equal, differ, failing = tiny_runs(own_repo, ('same', 3.0), ('same', 4.0), ('fail', 3.0))
    name = f'junit-batch-{tmp_path.name}'
    path = tmp_path / 'junit.xml'
    code, _, _ = reproduce(
        capsys,
        '--run_id',
        equal,
        differ,
        failing,
        UNKNOWN,
        '--experiment-name',
        name,
        '--junit-xml',
        str(path),
    )
    assert code == 2
    suite, cases = parse(path)
    assert (suite['tests'], suite['failures'], suite['errors'], suite['skipped']) == (
        '4',
        '1',
        '2',
        '0',
    )
    assert [c.name for c in cases] == [
        f'{run_name(equal)} ({equal[:8]})',
        f'{run_name(differ)} ({differ[:8]})',
        f'{run_name(failing)} ({failing[:8]})',
        UNKNOWN[:8],
    ]
    assert {c.classname for c in cases} == {name}
    assert [result(c) for c in cases] == [None, Failure, Error, Error]
    failure = cases[1].result[0]
    assert failure.message == 'x differs from step 2 (latest 4.0 vs 3.0)'
    assert '| Metric' in failure.text  # the comparison table
    assert failure.text.splitlines()[-1] == 'Runs equal: False'
    assert 'tiny failure: giving up' in cases[2].result[0].message
    assert 'tiny failure: giving up' in cases[2].result[0].text  # the project's output
    assert cases[3].result[0].message.startswith(f'run {UNKNOWN} not found')
    assert all(c.time > 0 for c in cases[:3])
    assert float(suite['time']) == pytest.approx(sum(c.time for c in cases), abs=0.01)


@pytest.mark.slow
def test_repeat_is_one_testcase_per_reference_with_its_class(own_repo, capsys, tmp_path):
    same, random = tiny_runs(own_repo, ('same', 3.0), ('random', 3.0))
    path = tmp_path / 'junit.xml'
    code, _, _ = reproduce(
        capsys,
        '--run_id',
        same,
        random,
        '--repeat',
        '2',
        '--experiment-name',
        f'junit-repeat-{tmp_path.name}',
        '--junit-xml',
        str(path),
    )
    assert code == 1
    suite, [reproducible, nondeterministic] = parse(path)
    assert (suite['tests'], suite['failures'], suite['errors']) == ('2', '1', '0')
    assert reproducible.name == f'{run_name(same)} ({same[:8]})'
    assert result(reproducible) is None
    assert reproducible.system_out.startswith('classification: reproducible')
    assert nondeterministic.name == f'{run_name(random)} ({random[:8]})'
    assert result(nondeterministic) is Failure
    # reproductions of random values may also all lie on one side of the reference's
    assert nondeterministic.result[0].message in (
        'nondeterministic: x',
        'nondeterministic, drifted: x',
    )
    assert '| x ' in nondeterministic.result[0].text  # the diagnosis table
    assert nondeterministic.time > 0


def test_skipped_runs_are_skipped_testcases(samples_repo, capsys, tmp_path):
    c = client()
    name = f'junit-skip-{tmp_path.name}'
    experiment_id = c.create_experiment(name)
    notebook = c.create_run(experiment_id)
    c.set_terminated(notebook.info.run_id)
    path = tmp_path / 'junit.xml'
    code, _, _ = reproduce(capsys, '--from-experiment', name, '--dry-run', '--junit-xml', str(path))
    assert code == 0
    suite, [case] = parse(path)
    assert suite['skipped'] == '1'
    assert case.name == notebook.info.run_id[:8]
    assert result(case) is Skipped
    assert 'not launched as an MLflow Project' in case.result[0].message


def test_sigterm_still_writes_the_file_with_unfinished_runs_as_errors(samples_repo, tmp_path):
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    refs = [
        recorded_run(f'file://{samples_repo}#slow', commit, {'seconds': str(200 + i)})
        for i in range(3)
    ]
    path = tmp_path / 'junit.xml'
    pid_file = tmp_path / 'pid'
    argv = ('--run_id', *refs, '--experiment-name', f'junit-term-{tmp_path.name}')
    proc = subprocess.Popen(
        (sys.executable, str(SCRIPT), *argv, '--jobs', '2', '--junit-xml', str(path)),
        env={**os.environ, 'SAMPLE_PID_FILE': str(pid_file)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(pid_file.exists, 90, 'a project to start')
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    suite, cases = parse(path)
    assert (suite['tests'], suite['errors']) == ('3', '3')
    # a run the signal kept from starting was never read: its name is unknown
    assert [c.name for c in cases[:2]] == [f'{run_name(r)} ({r[:8]})' for r in refs[:2]]
    assert cases[2].name in (refs[2][:8], f'{run_name(refs[2])} ({refs[2][:8]})')
    assert all(result(c) is Error for c in cases)
    messages = [c.result[0].message for c in cases]
    assert messages[2] == 'terminated: not started'
    assert all(m.startswith('terminated') for m in messages)


HOSTILE_PROJECT = {
    'MLproject': 'entry_points:\n  main:\n    parameters:\n      msg: string\n'
    '    command: python hostile.py --msg {msg}\n',
    'hostile.py': 'import sys\n'
    'sys.stdout.buffer.write(b"bytes \\xff\\xfe not utf-8 ]]> \\x00\\x07 \\x1b[31mred\\n")\n'
    'sys.stdout.flush()\n'
    'sys.exit("giving up: ]]> <oops> &amp; \\x01\\x0b" + sys.argv[-1])\n',
}


def test_hostile_names_params_and_output_stay_well_formed(own_repo, store, capsys, tmp_path):
    add_project(own_repo, 'hostile', HOSTILE_PROJECT)
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    msg = ']]><x/>&"\'\x1b'
    run_id = recorded_run(f'file://{own_repo}#hostile', commit, {'msg': msg})
    name = 'evil ]]> <tc name="x"/> \x1b[1m & 🎲'
    client().set_tag(run_id, 'mlflow.runName', name)
    path = tmp_path / 'junit.xml'
    code, _, _ = reproduce(
        capsys, '--run_id', run_id, '--experiment-name', 'evil ]]> & <', '--junit-xml', str(path)
    )
    assert code == 3
    _, [case] = parse(path)
    assert case.name == f'{reproduce_run.shown(name)} ({run_id[:8]})'
    assert case.classname == 'evil ]]> & <'
    assert result(case) is Error
    error = case.result[0]
    assert 'giving up: ]]> <oops> &amp;' in error.message
    assert 'not utf-8 ]]>' in error.text and '\x00' not in error.text


def test_bad_folder_is_an_argument_error_before_anything_runs(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        reproduce_run.main(['--run_id', UNKNOWN, '--junit-xml', str(tmp_path / 'no' / 'x.xml')])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == '' and err.count('\n') == 1
    assert 'argument --junit-xml: expected a file in an existing, writable folder' in err


# --- the GitHub Actions job summary ---------------------------------------------


def test_step_summary_gets_the_markdown_report_appended(own_repo, capsys, tmp_path, monkeypatch):
    summary = tmp_path / 'step_summary.md'
    summary.write_text('## an earlier step\n\n')
    monkeypatch.setenv('GITHUB_STEP_SUMMARY', str(summary))
    [run_id] = tiny_runs(own_repo, ('same', 3.0))
    code, markdown, _ = reproduce(capsys, '--run_id', run_id, '--output', 'markdown')
    assert code == 0
    code, _, _ = reproduce(capsys, '--run_id', UNKNOWN)
    assert code == 2
    text = summary.read_text()
    assert text.startswith('## an earlier step\n\n')  # appended, never replaced
    first, second = text.removeprefix('## an earlier step\n\n').split('\n\n**Reproduction', 1)
    assert first == markdown.rstrip('\n')  # what --output markdown prints
    assert second.startswith(f' of run {UNKNOWN}**: error')
    assert f'> run {UNKNOWN} not found' in second


def test_report_files_that_are_not_regular_files_get_a_warning_and_nothing(
    capsys, tmp_path, monkeypatch
):
    """A FIFO (or a device) is never written: appending to a FIFO nobody
    reads would wait forever, and a rename would put a file in its place."""
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # else the old append waits forever
    try:
        monkeypatch.setenv('GITHUB_STEP_SUMMARY', str(fifo))
        code, out, err = reproduce(capsys, '--run_id', UNKNOWN, '--junit-xml', str(fifo))
        assert os.read(reader, 1 << 16) == b''  # nothing was written into it
    finally:
        os.close(reader)
    assert (code, out) == (2, '')
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still the FIFO, not replaced by a file
    not_regular = 'was not written: {} is not a regular file (a FIFO, a device or a folder)'
    assert err.splitlines()[1:] == [
        f'reproduce_run: warning: the JUnit XML report {not_regular.format(fifo)}',
        f'reproduce_run: warning: the report for GITHUB_STEP_SUMMARY {not_regular.format(fifo)}',
    ]
    assert not reproduce_run.writable_report_path(os.devnull, 'the report')
    assert capsys.readouterr().err.endswith(f'the report {not_regular.format(os.devnull)}\n')


# --- nightly: the tool's own reproductions in the searched experiment ---------

# A script that logs into the experiment it chooses, as training code does:
# its reproductions land in the reference run's own experiment.
NIGHTLY = """\
import os
import mlflow

mlflow.set_experiment(os.environ['NIGHTLY_EXPERIMENT'])
with mlflow.start_run():
    mlflow.log_metric('value', 1.0)
"""


def test_nightly_search_leaves_its_own_reproductions_out_and_names_experiments(
    git_daemon, capsys, tmp_path, monkeypatch
):
    url, base = git_daemon
    git('init', '--quiet', '--bare', str(base / f'{tmp_path.name}.git'), cwd=base)
    repo = clone_with_remote(
        tmp_path / 'repo', {'nightly.py': NIGHTLY}, f'{url}/{tmp_path.name}.git'
    )
    name = f'nightly-{tmp_path.name}'
    monkeypatch.setenv('NIGHTLY_EXPERIMENT', name)
    reference = python_run(repo, 'nightly.py')
    c = client()
    experiment_id = c.get_experiment_by_name(name).experiment_id
    failed = c.create_run(experiment_id).info.run_id
    c.set_terminated(failed, 'FAILED')
    # The first night: its reproduction, and the batch's parent run, land in `name`.
    code, doc, err = reproduce_json(capsys, '--from-experiment', name, '--experiment-name', name)
    assert code == 0, err
    assert [r['reference_run_id'] for r in doc['runs']] == [reference]
    assert doc['summary']['own_reproductions'] == 0
    # The second night finds them, and leaves them out unlisted.
    summary = tmp_path / 'step_summary.md'
    monkeypatch.setenv('GITHUB_STEP_SUMMARY', str(summary))
    path = tmp_path / 'junit.xml'
    code, doc, err = reproduce_json(capsys, '--from-experiment', name, '--junit-xml', str(path))
    assert code == 0, err
    assert [r['reference_run_id'] for r in doc['runs']] == [reference]
    assert doc['skipped'] == [
        {'run_id': failed, 'reason': 'its status is FAILED, not FINISHED', 'experiment': name}
    ]
    assert (doc['summary']['skipped'], doc['summary']['own_reproductions']) == (1, 2)
    suite, cases = parse(path)
    assert (suite['tests'], suite['skipped']) == ('2', '1')
    assert [(c.name.split()[-1], result(c)) for c in cases] == [
        (f'({reference[:8]})', None),
        (failed[:8], Skipped),
    ]
    assert [c.classname for c in cases] == [name, name]  # never Default
    markdown = summary.read_text()
    assert "- left out 2 of the tool's own reproductions" in markdown
    assert '- skipped 1 run: its status is FAILED, not FINISHED' in markdown
    own = {r.info.run_id for r in c.search_runs([experiment_id])} - {reference, failed}
    assert len(own) == 3  # two reproductions, one parent run
    assert not any(run_id in markdown or run_id[:8] in path.read_text() for run_id in own)
    # The text report counts them in one line; a search never takes them, nor
    # counts them in --max-runs (the reference is the oldest run).
    code, out, err = reproduce(capsys, '--from-experiment', name, '--max-runs', '1', '--dry-run')
    assert code == 0, err
    assert "Left out 3 of the tool's own reproductions" in out.splitlines()
    assert out.splitlines()[-1] == 'Planned: 1 run, 1 skipped'
    # A reproduction named by --run_id is reproduced, as ever.
    reproduction = next(r for r in own if 'reproduce.batch' not in c.get_run(r).data.tags)
    code, doc, err = reproduce_json(capsys, '--run_id', reproduction, '--dry-run')
    assert (code, doc['status']) == (0, 'planned'), err


@pytest.mark.parametrize(
    ('outcome', 'classnames'),
    [
        pytest.param(
            report('error', reference_experiment='churn'), ['churn'], id='error-its-reference'
        ),
        pytest.param(report('error'), [None], id='error-reference-unknown'),
        pytest.param(
            reproduce_run.BatchReport(
                (),
                skipped=(
                    {'run_id': 'c' * 32, 'reason': 'r', 'experiment': 'ops'},
                    {'run_id': 'd' * 32, 'reason': 'r', 'experiment': None},
                ),
            ),
            ['ops', None],
            id='skipped-in-its-experiment',
        ),
        pytest.param(
            reproduce_run.BatchReport(
                (report('error', reference_experiment='churn'), report('error')),
                repeat_of='a' * 32,
            ),
            ['churn'],
            id='repeat-its-reference',
        ),
    ],
)
def test_a_case_without_a_reproduced_run_is_in_its_reference_experiment(outcome, classnames):
    """None: the delivery's, --experiment-name or Default."""
    assert [c.classname for c in outcome.junit_cases()] == classnames


def test_a_run_that_cannot_start_is_a_testcase_of_its_own_experiment(capsys, tmp_path):
    """Not the destination's (Default here): no reproduced run was made."""
    name = f'elsewhere-{tmp_path.name}'
    notebook = client().create_run(client().create_experiment(name)).info.run_id
    client().set_terminated(notebook)
    path = tmp_path / 'junit.xml'
    code, _, _ = reproduce(capsys, '--run_id', notebook, UNKNOWN, '--junit-xml', str(path))
    assert code == 2
    _, cases = parse(path)
    assert [(result(c), c.classname) for c in cases] == [(Error, name), (Error, 'Default')]

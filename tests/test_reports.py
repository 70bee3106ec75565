"""The reports: JSON and Markdown output, numbers that JSON cannot hold,
a report that cannot be written, and the reference run's status in every
format."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from helpers import (
    HOSTILE,
    HOSTILE_VALUES,
    INF,
    SCRIPT,
    TIGHT,
    assert_markdown_safe,
    assert_no_forged_line,
    assert_terminal_safe,
    client,
    dataset_input,
    git,
    log_environment,
    logged_run,
    make_repo,
    param_table,
    recorded_run,
    reproduce,
)

import reproduce_run
from reproduce_run import Rules, judge


def test_json_output_is_one_document_with_every_field(reference, capsys):
    run_id = reference('sklearn_regression')
    code, out, err = reproduce(
        capsys, '--run_id', run_id, '--output', 'json', '--tolerance', 'r*=0.01'
    )
    doc = json.loads(out)
    assert code == doc['exit_code'] == 0
    assert (doc['reference_run_id'], doc['status'], doc['equal']) == (run_id, 'equal', True)
    ref = client().get_run(run_id)
    assert doc['source'] == {
        'uri': ref.data.tags['mlflow.source.name'],
        'version': ref.data.tags['mlflow.source.git.commit'],
        'entry_point': 'main',
        'env_manager': 'local',
        'changes': None,
        'script': None,
    }
    assert doc['params']['passed'] == {'alpha': '0.005', 'l1_ratio': '0.5'}
    assert doc['params']['not_passed'] == {}
    assert doc['tolerance'] == {
        'rtol': 1e-9,
        'atol': 0.0,
        'ignored': [],
        'overrides': [{'pattern': 'r*', 'rtol': 0.01, 'atol': 0.0}],
    }
    by_key = {m['key']: m for m in doc['metrics']}
    assert sorted(by_key) == ['mae', 'r2', 'rmse']
    assert by_key['mae'] == {
        'key': 'mae',
        'reference': ref.data.metrics['mae'],
        'reproduced': ref.data.metrics['mae'],
        'abs_diff': 0.0,
        'rel_diff': 0.0,
        'equal': True,
        'ignored': False,
        'rtol': 1e-9,
        'atol': 0.0,
        'steps_compared': 1,
        'first_divergent_step': None,
    }
    assert (by_key['r2']['rtol'], by_key['rmse']['rtol']) == (0.01, 0.01)
    assert client().get_run(doc['reproduced_run_id']).info.status == 'FINISHED'


def test_json_output_of_a_failed_reproduction(reference, capsys):
    code, out, _ = reproduce(
        capsys, '--run_id', reference('failing', fails=True), '--output', 'json'
    )
    doc = json.loads(out)
    assert (code, doc['exit_code'], doc['status'], doc['equal']) == (3, 3, 'failed', None)
    assert doc['reproduced_run_id'] and 'failed (exit status 1)' in doc['message']
    assert 'sample failure: giving up at step 2' in doc['output_tail']


def test_json_output_of_an_error(capsys):
    code, out, err = reproduce(capsys, '--run_id', 'e' * 32, '--output', 'json')
    doc = json.loads(out)
    assert (code, doc['exit_code'], doc['status']) == (2, 2, 'error')
    assert (doc['reproduced_run_id'], doc['equal'], doc['metrics']) == (None, None, [])
    assert doc['message'].startswith(f'run {"e" * 32} not found')
    assert err.startswith('reproduce_run: error: run ')


def test_json_writes_nan_as_a_string(capsys):
    ref = logged_run({'a': [math.nan], 'd': [1.0]})
    other = logged_run({'a': [math.nan], 'd': [math.nan]})
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'json')
    assert code == 1
    metrics = {m['key']: m for m in json.loads(out)['metrics']}
    assert (metrics['a']['reference'], metrics['a']['reproduced'], metrics['a']['equal']) == (
        'NaN',
        'NaN',
        True,
    )
    assert (metrics['d']['reproduced'], metrics['d']['abs_diff'], metrics['d']['equal']) == (
        'NaN',
        'NaN',
        False,
    )
    assert math.isnan(float(metrics['d']['reproduced']))


@pytest.mark.parametrize(
    ('reference', 'reproduced', 'fields'),
    [
        pytest.param(INF, INF, ('Infinity', 'Infinity', 0.0, 0.0, True), id='inf'),
        pytest.param(-INF, -INF, ('-Infinity', '-Infinity', 0.0, 0.0, True), id='minus-inf'),
        pytest.param(1.0, INF, (1.0, 'Infinity', 'Infinity', 'Infinity', False), id='to-inf'),
        pytest.param(0.0, 0.5, (0.0, 0.5, 0.5, 'Infinity', False), id='from-zero'),
        pytest.param(2.0, 1.0, (2.0, 1.0, 1.0, 0.5, False), id='finite'),
    ],
)
def test_json_numbers_are_parseable(reference, reproduced, fields):
    """SQL stores keep inf as the largest float, so this is tested without one."""
    verdict = judge({'m': [(0, reference)]}, {'m': [(0, reproduced)]}, Rules(TIGHT))
    report = reproduce_run.Report('differ', 'a', 'b', verdict=verdict)
    metric = json.loads(report.json_text())['metrics'][0]
    assert (
        tuple(metric[k] for k in ('reference', 'reproduced', 'abs_diff', 'rel_diff', 'equal'))
        == fields
    )


def test_markdown_output(capsys):
    ref, other = logged_run({'acc': [0.5]}), logged_run({'acc': [0.75]})
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'markdown')
    assert code == 1
    assert out.startswith(f'**Reproduction of run {ref}**: differ\n')
    assert '| Metric   |   Run1 |   Run2 |   Diff | Note    |\n' in out
    assert '|----------|--------|--------|--------|---------|\n' in out
    assert f'- compared run: `{other}`' in out
    assert '| acc      |    0.5 |   0.75 |   0.25 | differs |\n' in out
    assert out.endswith('\nRuns equal: False\n')


@pytest.mark.parametrize(
    'how',
    [
        pytest.param('closed', id='closed-standard-output'),
        pytest.param('broken-pipe', id='reader-gone'),
    ],
)
def test_a_report_that_cannot_be_written_is_a_warning_not_a_traceback(reference, how):
    run_id = reference('sklearn_regression')
    argv = (sys.executable, str(SCRIPT), '--run_id', run_id, '--dry-run')
    if how == 'closed':
        proc = subprocess.run(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: os.close(1),
        )
    else:
        read, write = os.pipe()
        os.close(read)  # nobody will read the report
        proc = subprocess.run(
            argv, stdout=write, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
        )
        os.close(write)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(
        'reproduce_run.py: warning: the report could not be written to standard output: '
    )
    assert 'Traceback' not in proc.stderr


# --- values from the tracking store, shown safely -------------------------------


@pytest.mark.parametrize(
    ('value', 'terminal', 'markdown'),
    [
        pytest.param('a|b', 'a|b', 'a\\|b', id='pipe'),
        pytest.param('one\ntwo\r\n', 'one\\ntwo\\r\\n', 'one\\ntwo\\r\\n', id='newlines'),
        pytest.param(
            '<img src=x onerror=alert(1)>',
            '<img src=x onerror=alert(1)>',
            '&lt;img src=x onerror=alert(1)&gt;',
            id='html',
        ),
        pytest.param('a &amp; b', 'a &amp; b', 'a &amp;amp; b', id='entity'),
        pytest.param(
            '\x1b[31mred\x1b[0m', '\\x1b[31mred\\x1b[0m', '\\x1b\\[31mred\\x1b\\[0m', id='ansi'
        ),
        pytest.param('nul\x00 bell\x07 del\x7f', 'nul\\x00 bell\\x07 del\\x7f', None, id='c0'),
        pytest.param('csi\x9b2J', 'csi\\x9b2J', None, id='c1'),
        pytest.param('tab\there', 'tab\\there', None, id='tab'),
        pytest.param('evil\u202etxt.exe', 'evil\\u202etxt.exe', None, id='bidi-override'),
        pytest.param('line\u2028sep', 'line\\u2028sep', None, id='line-separator'),
        pytest.param(
            'émoji 🎲 C:\\new', 'émoji 🎲 C:\\new', 'émoji 🎲 C:\\\\new', id='printable-kept'
        ),
        pytest.param(
            '![i](http://127.0.0.1:9/x.png)',
            '![i](http://127.0.0.1:9/x.png)',
            '!\\[i\\](http://127.0.0.1:9/x.png)',
            id='image',
        ),
        pytest.param(
            '[c](javascript:alert(1))',
            '[c](javascript:alert(1))',
            '\\[c\\](javascript:alert(1))',
            id='link',
        ),
        pytest.param('`code` span', '`code` span', '\\`code\\` span', id='code-span'),
        pytest.param('a\\|b', 'a\\|b', 'a\\\\\\|b', id='backslash-undoes-no-escape'),
    ],
)
def test_values_are_escaped_for_the_terminal_and_for_markdown(value, terminal, markdown):
    assert reproduce_run.shown(value) == terminal
    assert reproduce_run.markdown_escaped(value) == (markdown or terminal)


def compared_hostile_runs() -> tuple[str, str]:
    """Two runs whose params hold HOSTILE_VALUES (the second's each with a
    suffix, so that each differs), and whose names are hostile too."""
    ref = logged_run({'acc': [0.5]}, {f'p_{k}': v for k, v in HOSTILE_VALUES.items()})
    other = logged_run({'acc': [0.75]}, {f'p_{k}': v + '!' for k, v in HOSTILE_VALUES.items()})
    for run_id in (ref, other):
        client().set_tag(run_id, 'mlflow.runName', '|'.join(HOSTILE_VALUES.values()))
    return ref, other


@pytest.mark.parametrize('output', ['table', 'markdown', 'json'])
def test_hostile_params_and_names_reach_no_output_raw(output, capsys, tmp_path, monkeypatch):
    summary = tmp_path / 'step_summary.md'
    monkeypatch.setenv('GITHUB_STEP_SUMMARY', str(summary))
    ref, other = compared_hostile_runs()
    name = '|'.join(HOSTILE_VALUES.values())
    argv = ('--run_id', ref, '--compare-to', other, '--experiment-name', name)
    code, out, err = reproduce(capsys, *argv, '--output', output)
    assert code == 1, err
    assert_markdown_safe(summary.read_text())
    assert not err
    if output == 'json':  # exact values, as the store holds them
        compared = {p['key']: p['reference'] for p in json.loads(out)['params']['compared']}
        assert compared == {f'p_{k}': v for k, v in HOSTILE_VALUES.items()}
    elif output == 'markdown':
        assert_markdown_safe(out)
        assert out == summary.read_text().removesuffix('\n')
    else:
        assert_terminal_safe(out)
        table = param_table(out)
        assert len(table) == 4 + len(HOSTILE_VALUES)  # a row per param, none broken
        assert len({len(line) for line in table}) == 1
        assert '| one\\nRuns equal: True   ' in '\n'.join(table)


def test_hostile_run_names_in_a_batch_reach_no_output_raw(capsys, tmp_path, monkeypatch):
    """A batch's table names each run, and its progress lines on standard
    error too; these runs cannot be reproduced, so each is an error row."""
    summary = tmp_path / 'step_summary.md'
    monkeypatch.setenv('GITHUB_STEP_SUMMARY', str(summary))
    runs = compared_hostile_runs()
    code, out, err = reproduce(capsys, '--run_id', *runs)
    assert code == 2
    assert_terminal_safe(out)
    assert_terminal_safe(err)
    assert err.count('\n') == 4, err  # started and ended, for each run
    assert reproduce_run.shown('|'.join(HOSTILE_VALUES.values())) in out  # in its Run name cell
    assert_markdown_safe(summary.read_text())


def hostile_report() -> reproduce_run.Report:
    """A report whose every free line (not a table cell) quotes a hostile
    value: other differences, --explain's lines, model registrations."""
    h = HOSTILE
    m = reproduce_run.MetricVerdict(h, 0.5, 0.75, False, 1, 0)
    differences = reproduce_run.Differences(
        environment=(
            {'kind': 'python', 'name': h, 'reference': h, 'reproduced': h + '!'},
            {'kind': 'platform', 'name': h, 'reference': h, 'reproduced': None},
            {'kind': 'package', 'name': h, 'reference': h, 'reproduced': h + '!'},
            {'kind': 'env', 'name': h, 'reference': None, 'reproduced': h},
        ),
        datasets=tuple(
            {'name': h, 'context': h, 'change': change, 'reference': h, 'reproduced': h + '!'}
            for change in ('digest', 'source', 'schema', 'only_reference')
        ),
        code=(f'the runs ran different commits: {h} -> {h}',),
        models=((h, m),),
        environment_source='reproduction',
        environment_unknown=None,
    )
    candidate = reproduce_run.Candidate('package', h, h, h + '!')
    explanation = reproduce_run.Explanation(
        True, (candidate,), (candidate,), not_tried=({'name': h, 'reason': 'pip: ' + h},)
    )
    registrations = reproduce_run.Registrations(
        versions=(
            reproduce_run.Registration(h, h, None, True),
            reproduce_run.Registration(h, '1', None, False),
        )
    )
    return reproduce_run.Report(
        status='differ',
        reference_run_id='a' * 32,
        verdict=reproduce_run.Verdict((m,)),
        differences=differences,
        explanation=explanation,
        registrations=registrations,
    )


def test_hostile_values_in_free_lines_reach_no_report_raw():
    """Markdown (the step summary, the webhook, the run description) and text
    show them escaped, each its own way; JSON keeps them exact."""
    report = hostile_report()
    markdown = reproduce_run.format_markdown(report)
    assert_markdown_safe(markdown)
    assert_no_forged_line(markdown)
    assert '- not tried: ' + reproduce_run.markdown_escaped(HOSTILE) in markdown
    assert f'dataset {reproduce_run.markdown_escaped(HOSTILE)} (' in markdown
    description = reproduce_run.describe(report, 'http://127.0.0.1:5000/#/runs/x', 2000)
    assert_markdown_safe(description)  # cut to fit, still safe
    assert_no_forged_line(description)
    text = reproduce_run.format_text(report)
    assert_terminal_safe(text)
    assert_no_forged_line(text)
    assert f'- not tried: {reproduce_run.shown(HOSTILE)}: pip: ' in text
    doc = reproduce_run.report_json(report)
    assert doc['differences']['environment'][0]['name'] == HOSTILE
    assert doc['explanation']['environment']['not_tried'][0]['reason'] == 'pip: ' + HOSTILE


def test_a_hostile_reference_environment_and_dataset_reach_no_output_raw(
    capsys, tmp_path, monkeypatch
):
    """The reference's reproduce/environment.json and dataset inputs, as
    anyone who writes to the store can log them, through --compare-to."""
    summary = tmp_path / 'step_summary.md'
    monkeypatch.setenv('GITHUB_STEP_SUMMARY', str(summary))
    ref, other = logged_run({'acc': [0.5]}), logged_run({'acc': [0.75]})
    for run_id, end in ((ref, ''), (other, '!')):
        h = HOSTILE + end
        environment = {
            'python': {'version': h, 'executable': h},
            'platform': {'system': h},
            'packages': {HOSTILE: h},
            'env': {'PYTHONHASHSEED': h, HOSTILE: h},  # a name not recorded is not compared
        }
        log_environment(run_id, environment, tmp_path / run_id)
        client().log_inputs(run_id, [dataset_input(HOSTILE, 'd' + end, h, context=HOSTILE)])
    argv = ('--run_id', ref, '--compare-to', other)
    code, out, err = reproduce(capsys, *argv, '--output', 'markdown')
    assert code == 1, err
    for markdown in (out, summary.read_text()):
        assert_markdown_safe(markdown)
        assert_no_forged_line(markdown)
        assert f'  - Python version: {reproduce_run.markdown_escaped(HOSTILE)} -> ' in markdown
    code, out, _ = reproduce(capsys, *argv)
    assert code == 1
    assert_terminal_safe(out)
    assert_no_forged_line(out)
    assert f'  - PYTHONHASHSEED: {reproduce_run.shown(HOSTILE)} -> ' in out
    assert f'  - {reproduce_run.shown(HOSTILE)}: ' not in out
    code, out, _ = reproduce(capsys, *argv, '--output', 'json')
    datasets = json.loads(out)['differences']['datasets']  # its digest and its source
    assert {(d['name'], d['context']) for d in datasets} == {(HOSTILE, HOSTILE)}  # exact


def test_a_hostile_experiment_name_is_shown_escaped(reference, capsys):
    name = '|'.join(HOSTILE_VALUES.values())
    run_id = reference('sklearn_regression')
    code, out, err = reproduce(capsys, '--run_id', run_id, '--dry-run', '--experiment-name', name)
    assert code == 0, err
    assert f'Experiment:     {reproduce_run.shown(name)}\n' in out
    assert_terminal_safe(out)


def test_a_hostile_source_stays_one_code_span(tmp_path, capsys):
    """The recorded source is a tag value too: a backtick in it cannot end its
    code span and let the HTML after it through."""
    repo = make_repo(tmp_path / 'r`x <img src=x onerror=alert(1)>')
    commit = git('rev-parse', 'HEAD', cwd=repo)
    run_id = recorded_run(f'file://{repo}#sklearn_regression', commit)
    code, out, err = reproduce(capsys, '--run_id', run_id, '--dry-run', '--output', 'markdown')
    assert code == 0, err
    assert f'- source: ``file://{repo}#sklearn_regression`` at `{commit}`\n' in out


# --- the reference's status is said ---------------------------------------------------


def ended_run(status: str, metrics: dict[str, list[float]]) -> str:
    run_id = logged_run(metrics)
    client().set_terminated(run_id, status)
    return run_id


@pytest.mark.parametrize(
    'status', [pytest.param('FAILED', id='failed'), pytest.param('KILLED', id='killed')]
)
def test_a_failed_or_killed_reference_is_said_in_every_format(status, capsys):
    ref = ended_run(status, {'acc': [0.5]})
    other = logged_run({'acc': [0.5]})
    code, out, err = reproduce(capsys, '--run_id', ref, '--compare-to', other)
    assert code == 0
    assert out.splitlines()[0] == f'Reference run:  {ref} ({status})'
    assert (
        err == f'reproduce_run: warning: run {ref} ended {status}: its metrics may be incomplete\n'
    )
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'json')
    assert json.loads(out)['reference_status'] == status
    code, out, _ = reproduce(capsys, '--run_id', ref, '--compare-to', other, '--output', 'markdown')
    assert out.splitlines()[2] == f'- reference run status: **{status}**'


def test_reference_status_in_json_is_always_present(capsys):
    ref = logged_run({'acc': [0.5]})
    code, out, err = reproduce(capsys, '--run_id', ref, '--compare-to', ref, '--output', 'json')
    assert (code, json.loads(out)['reference_status'], err) == (0, 'FINISHED', '')
    code, out, _ = reproduce(capsys, '--run_id', 'f' * 32, '--output', 'json')
    doc = json.loads(out)
    assert (code, doc['status'], doc['reference_status']) == (2, 'error', None)


def test_dry_run_says_the_reference_failed(reference, capsys):
    run_id = reference('failing', fails=True)
    code, out, err = reproduce(capsys, '--run_id', run_id, '--dry-run')
    assert code == 0
    assert out.splitlines()[0] == f'Reference run:  {run_id} (FAILED)'
    assert (
        f'reproduce_run: warning: run {run_id} ended FAILED: its metrics may be incomplete\n' in err
    )
    code, out, _ = reproduce(capsys, '--run_id', run_id, '--dry-run', '--output', 'json')
    assert (code, json.loads(out)['reference_status']) == (0, 'FAILED')

"""What a reproduction records in MLflow: the verdict tags and note, the
comparison artifact, plots, the project output log, and failed runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import (
    SCRIPT,
    add_project,
    artifact_bytes,
    client,
    git,
    recorded_run,
    reproduce,
    reproductions_of,
    run_snapshot,
)

import reproduce_run


def test_verdict_is_recorded_on_the_reproduced_run(reference, capsys):
    run_id = reference('sklearn_regression')
    before = run_snapshot(run_id)
    code, out, _ = reproduce(capsys, '--run_id', run_id, '--output', 'json', '--atol', '0.001')
    assert code == 0
    doc = json.loads(out)
    new = client().get_run(doc['reproduced_run_id'])
    tags = new.data.tags
    assert {k: v for k, v in tags.items() if k.startswith('reproduce.')} == {
        'reproduce.reference_run_id': run_id,
        'reproduce.equal': 'true',
        'reproduce.status': 'equal',
        'reproduce.rtol': '1e-09',
        'reproduce.atol': '0.001',
        'reproduce.owner': reproduce_run.tool_owner(),  # this process: the tool, in-process
    }
    ref_experiment = client().get_run(run_id).info.experiment_id
    note = tags['mlflow.note.content']
    assert note.startswith(
        f'**Reproduction of run [{run_id}](#/experiments/{ref_experiment}/runs/{run_id})**: equal'
    )
    assert '| mae ' in note and note.endswith('Runs equal: True')
    assert json.loads(artifact_bytes(new.info.run_id, 'reproduce/comparison.json')) == doc
    assert run_snapshot(run_id) == before


def test_failed_reproduction_is_recorded_as_failed(reference, capsys):
    code, out, _ = reproduce(
        capsys, '--run_id', reference('failing', fails=True), '--output', 'json'
    )
    assert code == 3
    tags = client().get_run(json.loads(out)['reproduced_run_id']).data.tags
    assert (tags['reproduce.status'], tags['reproduce.equal']) == ('failed', 'false')
    assert 'failed (exit status 1)' in tags['mlflow.note.content']


def test_a_differing_history_gets_a_png_plot(reference, capsys, monkeypatch):
    run_id = reference('history')
    monkeypatch.setenv('SAMPLE_PERTURB_STEP', '3')
    code, out, _ = reproduce(capsys, '--run_id', run_id, '--output', 'json')
    assert code == 1
    new_id = json.loads(out)['reproduced_run_id']
    plots = [f.path for f in client().list_artifacts(new_id, 'reproduce/plots')]
    assert plots == ['reproduce/plots/loss.png']
    png = artifact_bytes(new_id, 'reproduce/plots/loss.png')
    assert png.startswith(b'\x89PNG\r\n\x1a\n') and len(png) > 1000


def test_no_plots_turns_plots_off(reference, capsys, monkeypatch):
    run_id = reference('history')
    monkeypatch.setenv('SAMPLE_PERTURB_STEP', '3')
    code, out, _ = reproduce(capsys, '--run_id', run_id, '--output', 'json', '--no-plots')
    new_id = json.loads(out)['reproduced_run_id']
    assert code == 1
    assert [f.path for f in client().list_artifacts(new_id, 'reproduce')] == [
        'reproduce/comparison.json',
        'reproduce/environment.json',
        'reproduce/output.log',
    ]


def test_mlflow_failing_after_creating_the_run_marks_it_failed(reference, capsys):
    run_id = reference('sklearn_regression')  # shared: other tests reproduce it too
    before = {r.info.run_id for r in reproductions_of(run_id)}
    code, out, err = reproduce(capsys, '--run_id', run_id, '--env-manager', 'conda')
    assert (code, out) == (2, '')
    assert 'cannot launch the project (run ' in err and 'marked FAILED' in err
    [new] = [r for r in reproductions_of(run_id) if r.info.run_id not in before]
    assert new.data.tags['mlflow.project.env'] == 'conda'
    assert new.info.status == 'FAILED'


NOISY = {
    'MLproject': 'entry_points:\n  main:\n    command: python noisy.py\n',
    # More than a pipe holds (64 KiB), UTF-8 and bytes that are not UTF-8.
    'noisy.py': (
        'import sys, mlflow\n'
        'for i in range(3000):\n'
        '    sys.stdout.buffer.write(b"caf\\xc3\\xa9 \\xff\\xfe " + b"x" * 100 + b"\\n")\n'
        'sys.stdout.flush()\n'
        'mlflow.log_metric("lines", 3000)\n'
    ),
}


def test_project_output_that_the_locale_cannot_encode_is_logged(own_repo, tmp_path):
    project = add_project(own_repo, 'noisy', NOISY)
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    run_id = recorded_run(f'file://{own_repo}#{project.name}', commit, metrics={'lines': 3000})
    # An ASCII locale, as on a host without a UTF-8 one: open() writes ASCII.
    env = {**os.environ, 'LC_ALL': 'C', 'PYTHONUTF8': '0', 'PYTHONCOERCECLOCALE': '0'}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), '--run_id', run_id, '--output', 'json', '--quiet'],
        env=env,
        capture_output=True,
        timeout=300,
    )
    report = json.loads(done.stdout)
    assert (done.returncode, report['status']) == (0, 'equal'), done.stderr.decode()
    assert b'Traceback' not in done.stderr
    log = client().download_artifacts(
        report['reproduced_run_id'], 'reproduce/output.log', str(tmp_path)
    )
    lines = Path(log).read_text(encoding='utf-8').splitlines()
    assert lines[0] == 'caf\u00e9 \ufffd\ufffd ' + 'x' * 100
    assert len(lines) == 3000

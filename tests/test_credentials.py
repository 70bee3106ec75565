"""The tracking server's credentials, given the way MLflow reads them
(MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN), never leave the tool: not
on standard output or error, not in a tag, the description or an artifact of
the reproduced run, even when the project prints them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import (
    add_project,
    client,
    mlflow_run,
    start_tool,
)

PASSWORD = 'pa55-word-5e1f7c'
TOKEN = 'tok-9b2d41e0c7aa'

# A project that prints both secrets, on its standard output and its standard
# error, as a project that dumps its environment or its config would.
LEAKY_PROJECT = {
    'MLproject': 'entry_points:\n  main:\n    command: python leak.py\n',
    'leak.py': 'import os, sys, mlflow\n'
    'secrets = "password={} token={}".format(\n'
    '    os.environ["MLFLOW_TRACKING_PASSWORD"], os.environ["MLFLOW_TRACKING_TOKEN"])\n'
    'print(secrets)\n'
    'print(secrets, file=sys.stderr)\n'
    'mlflow.log_metric("score", 1.0)\n',
}


def artifact_texts(run_id: str, where: Path) -> dict[str, bytes]:
    """Every artifact of the run, downloaded: path -> bytes."""
    c = client()
    local = Path(c.download_artifacts(run_id, '', str(where)))
    return {str(p.relative_to(local)): p.read_bytes() for p in local.rglob('*') if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize('output', ['table', 'json'])
def test_credentials_never_reach_output_tags_or_artifacts(
    mlflow_server, own_repo, tmp_path, monkeypatch, output
):
    monkeypatch.setenv('MLFLOW_TRACKING_URI', mlflow_server)
    monkeypatch.setenv('MLFLOW_TRACKING_USERNAME', 'reproducer')
    monkeypatch.setenv('MLFLOW_TRACKING_PASSWORD', PASSWORD)
    monkeypatch.setenv('MLFLOW_TRACKING_TOKEN', TOKEN)
    project = add_project(own_repo, 'leaky', LEAKY_PROJECT)
    reference = mlflow_run(str(project), mlflow_server)

    # --verbose shows the project's output on standard error: the most exposed path.
    proc = start_tool('--run_id', reference, '--verbose', '--output', output, env={})
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    reproduced_id = (
        json.loads(out)['reproduced_run_id']
        if output == 'json'
        else next(line.split()[2] for line in out.splitlines() if line.startswith('Reproduced'))
    )
    run = client().get_run(reproduced_id)
    artifacts = artifact_texts(reproduced_id, tmp_path / 'artifacts')

    assert 'password=*** token=***' in err  # the project did print them, masked
    assert b'password=*** token=***' in artifacts['reproduce/output.log']
    places = {
        'stdout': out,
        'stderr': err,
        **{f'tag {k}': v for k, v in run.data.tags.items()},
        **{f'param {k}': v for k, v in run.data.params.items()},
        **{f'artifact {k}': v.decode(errors='replace') for k, v in artifacts.items()},
    }
    assert 'mlflow.note.content' in run.data.tags  # the description is among the tags
    assert 'reproduce/comparison.json' in artifacts
    for secret in (PASSWORD, TOKEN):
        assert [where for where, text in places.items() if secret in text] == []

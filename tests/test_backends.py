"""Execution backends: --backend/--backend-config validation, the report,
the backend plugin kept in tests/backend_plugin (installed by conftest.py), and
the fix-up that makes a run a backend created look like a local reproduction."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    all_run_ids,
    client,
    git,
    recorded_run,
    reproduce,
)

import reproduce_run
from reproduce_run import ReproduceError

PLUGIN = 'reproduce-test-backend'
JOB_TEMPLATE = """\
apiVersion: batch/v1
kind: Job
metadata:
  name: "{replaced_with_job_name}"
  namespace: mlflow
spec:
  ttlSecondsAfterFinished: 100
  backoffLimit: 0
  template:
    spec:
      containers:
      - name: "{replaced_with_project_name}"
        image: "{replaced_with_image_uri}"
        command: ["{replaced_with_entry_point_command}"]
      restartPolicy: Never
"""


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def kube_config(tmp_path: Path, name: str = 'kube', **changes: str | None) -> str:
    """A --backend-config file for kubernetes; a None value drops the key."""
    config = {
        'kube-job-template-path': write(tmp_path / 'job.yaml', JOB_TEMPLATE),
        'repository-uri': 'registry.example.invalid/reproduce',
        **changes,
    }
    config = {k: v for k, v in config.items() if v is not None}
    return write(tmp_path / f'{name}.json', json.dumps(config))


def refused(capsys, run_id: str, *argv: str) -> str:
    """Run the tool, expect exit 2 with one line on stderr and nothing made."""
    before = all_run_ids()
    code, out, err = reproduce(capsys, '--run_id', run_id, *argv)
    assert (code, out) == (2, ''), err
    assert err.count('\n') == 1 and err.startswith('reproduce_run: error: '), err
    assert all_run_ids() == before
    return err


# --- validation, through main(), before anything runs ---------------------------

BAD_ARGS = [
    pytest.param(
        ['-c', 'queue=gpu'],
        '--backend-config is neither a path ending in .json nor an inline JSON object',
        id='config-not-json',
    ),
    pytest.param(
        ['-c', '["gpu"]'],
        '--backend-config value holds a JSON array, not an object',
        id='config-array',
    ),
    pytest.param(
        ['-c', 'missing.json'],
        "cannot read --backend-config file 'missing.json': No such file or directory",
        id='config-file-missing',
    ),
    pytest.param(
        ['-c', '{tmp}/bad.json'],
        'is not valid JSON: Expecting property name',
        id='config-file-not-json',
    ),
    pytest.param(
        ['-c', '{tmp}/string.json'],
        'holds a JSON string, not an object',
        id='config-file-not-an-object',
    ),
    pytest.param(['-b', 'nope', '-c', '[]'], 'holds a JSON array', id='config-errors-first'),
    pytest.param(
        ['-b', 'nope'],
        "unknown backend 'nope'; available: local, kubernetes, databricks, ",
        id='unknown-backend',
    ),
    pytest.param(
        ['-b', 'kubernetes'],
        "the kubernetes backend needs 'kube-job-template-path', "
        "'repository-uri' in --backend-config",
        id='kubernetes-without-config',
    ),
    pytest.param(
        ['-b', 'kubernetes', '-c', '{kube_no_repo}'],
        "the kubernetes backend needs 'repository-uri' in --backend-config",
        id='kubernetes-without-repository-uri',
    ),
    pytest.param(
        ['-b', 'kubernetes', '-c', '{kube_no_template}'],
        "cannot read kube-job-template-path '{tmp}/nowhere.yaml': No such file",
        id='kubernetes-template-missing',
    ),
    pytest.param(
        ['-b', 'kubernetes', '-c', '{kube_not_a_job}'],
        'is not a Kubernetes Job template with a container at spec.template.spec.containers[0]',
        id='kubernetes-template-not-a-job',
    ),
    pytest.param(
        ['-b', 'kubernetes', '-c', '{kube_bad_yaml}'],
        'is not valid YAML',
        id='kubernetes-template-not-yaml',
    ),
    pytest.param(
        ['-b', 'databricks'],
        'cannot run on databricks: Backend spec must be provided',
        id='databricks-without-config',
    ),
    pytest.param(
        ['-b', 'databricks', '-c', '{"existing_cluster_id": "0101-x"}'],
        'cannot run on databricks: MLflow Project runs on Databricks must provide a '
        '*new cluster* specification',
        id='databricks-existing-cluster',
    ),
    pytest.param(
        ['-b', 'databricks', '-c', '{"new_cluster": {"num_workers": 1}}'],
        'cannot run on databricks: When running on Databricks, the MLflow tracking URI '
        "must be of the form 'databricks'",
        id='databricks-local-tracking-uri',
    ),
]


@pytest.mark.parametrize(('argv', 'message'), BAD_ARGS)
def test_bad_backend_arguments_exit_2_with_one_line_and_make_nothing(
    argv, message, sqlite_reference, sqlite_store, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv('MLFLOW_TRACKING_URI', sqlite_store)  # a local tracking URI
    files = {
        'tmp': str(tmp_path),
        'kube_no_repo': kube_config(tmp_path, 'no_repo', **{'repository-uri': None}),
        'kube_no_template': kube_config(
            tmp_path, 'no_template', **{'kube-job-template-path': str(tmp_path / 'nowhere.yaml')}
        ),
        'kube_not_a_job': kube_config(
            tmp_path,
            'not_a_job',
            **{'kube-job-template-path': write(tmp_path / 'list.yaml', '- a\n')},
        ),
        'kube_bad_yaml': kube_config(
            tmp_path,
            'bad_yaml',
            **{'kube-job-template-path': write(tmp_path / 'bad.yaml', 'a: [\n')},
        ),
    }
    write(tmp_path / 'bad.json', '{')
    write(tmp_path / 'string.json', '"gpu"')
    argv = [arg.format(**files) if arg.startswith('{') and '"' not in arg else arg for arg in argv]
    err = refused(capsys, sqlite_reference('sklearn_regression'), *argv)
    assert message.format(**files) in err


def test_unknown_backend_lists_the_installed_plugin(reference, capsys):
    err = refused(capsys, reference('sklearn_regression'), '--backend', 'my-scheduler')
    assert err.rstrip().endswith(f'available: local, kubernetes, databricks, {PLUGIN}')
    assert reproduce_run.available_backends()[:3] == ['local', 'kubernetes', 'databricks']


def test_inline_config_is_not_echoed_in_its_error(reference, capsys):
    err = refused(capsys, reference('sklearn_regression'), '-c', '{"token": "s3cr3t"')
    assert 's3cr3t' not in err


def test_kubernetes_without_its_python_package_is_a_clear_error(reference, tmp_path, capsys):
    # The kubernetes client is an optional package that requirements*.txt do not install.
    assert importlib.util.find_spec('kubernetes') is None, 'this test needs it uninstalled'
    err = refused(
        capsys,
        reference('sklearn_regression'),
        '--backend',
        'kubernetes',
        '--backend-config',
        kube_config(tmp_path),
    )
    assert err == (
        'reproduce_run: error: the kubernetes backend needs the Python package '
        "'kubernetes', which is not installed (pip install kubernetes)\n"
    )


@pytest.mark.parametrize(
    'uri',
    [
        pytest.param('databricks', id='databricks-uri'),
        pytest.param('server', id='http-uri'),
    ],
)
def test_databricks_without_a_workspace_configured(
    uri, reference, mlflow_server, tmp_path, capsys, monkeypatch
):
    # MLflow accepts a databricks or HTTP tracking URI; then it needs a workspace host.
    for name in [k for k in os.environ if k.startswith('DATABRICKS_')]:
        monkeypatch.delenv(name)
    monkeypatch.setenv('HOME', str(tmp_path))  # no ~/.databrickscfg
    run_id = reference('sklearn_regression')  # in the server's store
    monkeypatch.setenv('MLFLOW_TRACKING_URI', mlflow_server)
    before = all_run_ids()
    monkeypatch.setenv('MLFLOW_TRACKING_URI', mlflow_server if uri == 'server' else uri)
    code, out, err = reproduce(
        capsys, '--run_id', run_id, '-b', 'databricks', '-c', '{"new_cluster": {"num_workers": 1}}'
    )
    monkeypatch.setenv('MLFLOW_TRACKING_URI', mlflow_server)
    assert (code, out, all_run_ids()) == (2, '', before)
    shown = mlflow_server if uri == 'server' else uri
    assert err == (
        f'reproduce_run: error: cannot run on databricks: no Databricks workspace is '
        f"configured for tracking URI '{shown}' (set DATABRICKS_HOST and "
        f'DATABRICKS_TOKEN, or a profile in ~/.databrickscfg)\n'
    )


DOCKER_MLPROJECT = """\
name: dockerised
docker_env:
  image: python:3.11-slim
entry_points:
  main:
    command: "python -c 'print(1)'"
"""


@pytest.mark.parametrize(
    ('backend', 'docker', 'message'),
    [
        pytest.param(
            'kubernetes',
            False,
            'the kubernetes backend runs docker_env projects only',
            id='kubernetes-needs-docker-env',
        ),
        pytest.param('kubernetes', True, None, id='kubernetes-with-docker-env'),
        pytest.param(
            'databricks',
            True,
            'the databricks backend does not run docker_env projects',
            id='databricks-refuses-docker-env',
        ),
        pytest.param('databricks', False, None, id='databricks-without-docker-env'),
        pytest.param(PLUGIN, True, None, id='plugin-any-project'),
    ],
)
def test_validate_backend_project(backend, docker, message, samples_repo, tmp_path):
    # Through main() the kubernetes package check comes first; this is the next one.
    project = tmp_path if docker else samples_repo / 'sklearn_regression'
    write(tmp_path / 'MLproject', DOCKER_MLPROJECT)
    source = reproduce_run.Source('the-repo', '', 'a' * 40)
    params = reproduce_run.Params({}, {})
    chosen = reproduce_run.Backend(backend)
    plan = reproduce_run.Plan(
        None, source, str(project), 'main', 'local', '', params, {}, '', chosen
    )
    if message is None:
        reproduce_run.validate_backend_project(plan)
        return
    with pytest.raises(ReproduceError, match=message):
        reproduce_run.validate_backend_project(plan)


# --- the report --------------------------------------------------------------


@pytest.mark.parametrize(
    ('config', 'masked'),
    [
        pytest.param({'queue': 'gpu'}, {'queue': 'gpu'}, id='plain'),
        pytest.param(
            {'api_token': 't', 'Password': 'p', 'client_secret': 's', 'ssh_key': 'k'},
            {'api_token': '***', 'Password': '***', 'client_secret': '***', 'ssh_key': '***'},
            id='secret-keys',
        ),
        pytest.param(
            {'new_cluster': {'spark_env_vars': {'AWS_SECRET_ACCESS_KEY': 'a', 'N': '1'}}},
            {'new_cluster': {'spark_env_vars': {'AWS_SECRET_ACCESS_KEY': '***', 'N': '1'}}},
            id='nested',
        ),
        pytest.param(
            {'urls': ['https://u:pw@host/x']},
            {'urls': ['https://***@host/x']},
            id='url-credentials',
        ),
        pytest.param({'workers': 2, 'spot': True}, {'workers': 2, 'spot': True}, id='non-strings'),
    ],
)
def test_mask_config(config, masked):
    assert reproduce_run.mask_config(config) == masked


SECRET_CONFIG = json.dumps(
    {
        'queue': 'gpu',
        'api_token': 's3cr3t',
        'registry': 'https://bot:hunter2@registry.example.invalid',
    }
)


def test_dry_run_shows_the_backend_with_its_config_masked(reference, capsys):
    run_id = reference('sklearn_regression')
    before = all_run_ids()
    code, out, err = reproduce(
        capsys, '--run_id', run_id, '--dry-run', '-b', PLUGIN, '-c', SECRET_CONFIG
    )
    assert code == 0 and all_run_ids() == before
    assert (
        f'Backend:        {PLUGIN} {{"queue": "gpu", "api_token": "***", '
        f'"registry": "https://***@registry.example.invalid"}} '
        f'(the reference ran on local)'
    ) in out.splitlines()
    assert 's3cr3t' not in out + err and 'hunter2' not in out + err


def test_json_report_names_the_backend(reference, tmp_path, capsys):
    config = write(tmp_path / 'scheduler.json', SECRET_CONFIG)
    code, out, _ = reproduce(
        capsys,
        '--run_id',
        reference('sklearn_regression'),
        '--dry-run',
        '--output',
        'json',
        '--backend',
        PLUGIN,
        '--backend-config',
        config,
    )
    assert code == 0
    assert json.loads(out)['backend'] == {
        'name': PLUGIN,
        'reference_backend': 'local',
        'config': {
            'queue': 'gpu',
            'api_token': '***',
            'registry': 'https://***@registry.example.invalid',
        },
    }


def test_dry_run_on_the_default_backend_shows_it(reference, capsys):
    code, out, err = reproduce(capsys, '--run_id', reference('sklearn_regression'), '--dry-run')
    assert code == 0 and 'Backend:        local' in out.splitlines()
    assert 'warning' not in err


def test_reference_from_another_backend_is_flagged(samples_repo, capsys):
    commit = reproduce_run._git('rev-parse', 'HEAD', cwd=str(samples_repo))
    run_id = recorded_run(str(samples_repo / 'sklearn_regression'), commit)
    client().set_tag(run_id, 'mlflow.project.backend', 'kubernetes')
    code, out, err = reproduce(capsys, '--run_id', run_id, '--dry-run', '--output', 'json')
    assert code == 0
    assert err == (
        f"reproduce_run: warning: run {run_id} ran on backend 'kubernetes' (tag "
        f"mlflow.project.backend) and this reproduction runs on 'local'; pass "
        f'--backend kubernetes (with its --backend-config) to reproduce it there\n'
    )
    assert json.loads(out)['backend'] == {
        'name': 'local',
        'config': {},
        'reference_backend': 'kubernetes',
    }


# --- the backend plugin, through MLflow's own mlflow.projects.run() -------------


def submit(project: Path | str, config: dict, **kwargs):
    import mlflow.projects

    return mlflow.projects.run(
        uri=str(project),
        backend=PLUGIN,
        backend_config=config,
        env_manager='local',
        synchronous=False,
        **kwargs,
    )


def test_plugin_runs_the_project_asynchronously_in_its_own_folder(
    reference, samples_repo, tmp_path
):
    ref = client().get_run(reference('sklearn_regression'))
    submitted = submit(
        samples_repo / 'sklearn_regression',
        {'queue': 'cpu', 'workdir': str(tmp_path / 'jobs')},
        parameters={'alpha': '0.005', 'l1_ratio': '0.5'},
    )
    assert submitted.get_status() == 'RUNNING'  # returned before the job ended
    assert submitted.wait() is True
    assert submitted.get_status() == 'FINISHED'
    run = client().get_run(submitted.run_id)
    assert run.info.status == 'FINISHED'
    assert run.data.metrics == ref.data.metrics
    assert run.data.params == ref.data.params
    tags = run.data.tags
    assert tags['mlflow.project.backend'] == PLUGIN
    assert tags['reproduce_test_backend.queue'] == 'cpu'
    job_dir = Path(tags['reproduce_test_backend.job_dir'])
    assert job_dir.parent == tmp_path / 'jobs' and (job_dir / 'project' / 'MLproject').exists()


def test_plugin_job_that_fails(reference, samples_repo):
    submitted = submit(samples_repo / 'failing', {})
    assert submitted.wait() is False
    assert submitted.get_status() == 'FAILED'
    assert client().get_run(submitted.run_id).info.status == 'FAILED'
    # Without a workdir, the job folder was temporary.
    assert not Path(
        client().get_run(submitted.run_id).data.tags['reproduce_test_backend.job_dir']
    ).exists()


def test_plugin_rejected_submission_makes_no_run(samples_repo):
    from mlflow.exceptions import ExecutionException

    before = all_run_ids()
    with pytest.raises(ExecutionException, match='the scheduler rejected the job'):
        submit(samples_repo / 'sklearn_regression', {'fail_submit': True})
    assert all_run_ids() == before


BACKGROUND_MLPROJECT = """\
name: background
entry_points:
  main:
    command: "sleep 600 & echo $! > child.pid; wait"
"""


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for whoever inherited it to reap it."""
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ('Z', 'X')


def test_plugin_cancel_ends_the_job_process_group_and_marks_the_run_killed(tmp_path):
    project = tmp_path / 'project'
    project.mkdir()
    write(project / 'MLproject', BACKGROUND_MLPROJECT)
    submitted = submit(project, {'workdir': str(tmp_path / 'jobs'), 'grace_seconds': 5})
    job_dir = Path(client().get_run(submitted.run_id).data.tags['reproduce_test_backend.job_dir'])
    pid_file = job_dir / 'project' / 'child.pid'
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, 'the job did not start its child'
        time.sleep(0.1)
    child = int(pid_file.read_text())
    assert alive(child) and submitted.get_status() == 'RUNNING'
    submitted.cancel()
    assert not alive(child)  # the background child went with its group
    assert submitted.get_status() == 'KILLED'
    assert client().get_run(submitted.run_id).info.status == 'KILLED'


# --- the fix-up after a non-local submission ------------------------------------


def test_fixup_makes_a_plugin_run_look_like_a_local_reproduction(reference, tmp_path):
    """The pieces the launch will chain: the plan, the submission of our
    private checkout, the fix-up."""
    ref_id = reference('sklearn_regression')
    args = reproduce_run.parse_args(['--run_id', ref_id, '-b', PLUGIN, '-c', '{"queue": "cpu"}'])
    ref = client().get_run(ref_id)
    source = reproduce_run.resolve_source(ref, None, None)
    project_dir, commit = reproduce_run.fetch_source(source, str(tmp_path / 'src'))
    source = dataclasses.replace(source, version=commit)
    options = reproduce_run.Options.from_args(args)
    plan = reproduce_run.make_plan(
        options, ref, source, project_dir, reproduce_run.backend_from_options(options)
    )
    submitted = submit(
        plan.project_dir,
        dict(plan.backend.config),
        entry_point=plan.entry_point,
        parameters=plan.params.passed,
    )
    assert submitted.wait()
    before = client().get_run(submitted.run_id)
    assert before.data.tags['mlflow.source.name'] != ref.data.tags['mlflow.source.name']

    reproduce_run.fixup_backend_run(client(), submitted.run_id, plan)

    run = client().get_run(submitted.run_id)
    assert run.info.run_name == f'reproduce-{ref.info.run_name}'
    tags = run.data.tags
    for key in (
        'mlflow.source.name',
        'mlflow.source.type',
        'mlflow.source.git.commit',
        'mlflow.project.entryPoint',
        'mlflow.user',
    ):
        assert tags[key] == ref.data.tags[key], key
    assert tags['reproduce.reference_run_id'] == ref_id
    assert tags['mlflow.project.backend'] == PLUGIN  # MLflow's tag stays
    assert tags['mlflow.runName'] == f'reproduce-{ref.info.run_name}'
    assert run.data.params == ref.data.params and run.info.status == 'FINISHED'


def test_a_reproduction_through_the_plugin_is_judged_and_recorded(reference, capsys):
    run_id = reference('sklearn_regression')
    code, out, err = reproduce(
        capsys, '--run_id', run_id, '-b', PLUGIN, '-c', '{"queue": "cpu"}', '--output', 'json'
    )
    doc = json.loads(out)
    assert (code, doc['status']) == (0, 'equal'), err
    assert f'reproduce_run: warning: run {run_id} ran on backend' in err
    new = client().get_run(doc['reproduced_run_id'])
    ref = client().get_run(run_id)
    assert new.info.status == 'FINISHED'
    assert new.info.run_name == f'reproduce-{ref.info.run_name}'
    assert new.data.tags['mlflow.project.backend'] == PLUGIN
    assert new.data.tags['mlflow.source.name'] == ref.data.tags['mlflow.source.name']
    assert new.data.tags['mlflow.source.git.commit'] == ref.data.tags['mlflow.source.git.commit']
    assert new.data.tags['reproduce.reference_run_id'] == run_id
    assert new.data.tags['reproduce.status'] == 'equal'
    assert new.data.metrics == ref.data.metrics


def test_a_failing_project_on_the_plugin_exits_3_with_its_run_failed(reference, capsys):
    run_id = reference('failing', fails=True)
    code, out, err = reproduce(capsys, '--run_id', run_id, '-b', PLUGIN, '--output', 'json')
    doc = json.loads(out)
    assert (code, doc['status']) == (3, 'failed'), err
    assert doc['message'].endswith('its last error: sample failure: giving up at step 2')
    assert client().get_run(doc['reproduced_run_id']).info.status == 'FAILED'


def test_a_submission_the_plugin_rejects_is_one_line_and_makes_no_run(reference, capsys):
    run_id = reference('sklearn_regression')
    before = all_run_ids()
    code, out, err = reproduce(capsys, '--run_id', run_id, '-b', PLUGIN, '-c', '{"fail_submit": 1}')
    assert (code, out, all_run_ids()) == (2, '', before)
    assert err.splitlines()[-1] == (
        f"reproduce_run: error: backend '{PLUGIN}' refused the project: {PLUGIN}: the "
        'scheduler rejected the job (fail_submit)'
    )


def test_sigterm_cancels_the_plugin_job_and_marks_the_run_killed(samples_repo, tmp_path):
    from helpers import SCRIPT, process_gone, recorded_run, reproductions_of, wait_for

    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(f'file://{samples_repo}#slow', commit, {'seconds': '120'})
    pid_file = tmp_path / 'pid'
    proc = subprocess.Popen(
        (sys.executable, str(SCRIPT), '--run_id', run_id, '-b', PLUGIN, '--output', 'json'),
        env={**os.environ, 'SAMPLE_PID_FILE': str(pid_file)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 90, 'the job to start')
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    doc = json.loads(out)
    assert (proc.returncode, doc['status']) == (143, 'terminated'), err
    [new] = reproductions_of(run_id)
    assert new.info.run_id == doc['reproduced_run_id']
    assert new.info.status == 'KILLED'
    assert process_gone(int(pid_file.read_text()))


# A sitecustomize that makes a launcher process (python -c LAUNCHER tool fd)
# answer something other than JSON, then stay, as a broken launcher might.
GARBLED_LAUNCHER = """\
import os, sys, time
if len(sys.argv) == 3 and sys.argv[0] == '-c' and sys.argv[1].endswith('reproduce_run.py'):
    os.write(int(sys.argv[2]), b'{"run_id": \\n')
    time.sleep(120)
"""


def test_a_launcher_answering_other_than_json_fails_clearly_and_is_ended(tmp_path):
    site = tmp_path / 'site'
    site.mkdir()
    write(site / 'sitecustomize.py', GARBLED_LAUNCHER)
    marker = f'garbled-{os.getpid()}'
    env = {
        **os.environ,
        'PYTHONPATH': os.pathsep.join((str(site), os.environ['PYTHONPATH'])),
        reproduce_run.PROCESS_MARKER: marker,
    }
    request = {'run': {'backend': PLUGIN}, 'verbose': False}
    with open(tmp_path / 'output.log', 'wb') as output:
        launcher = reproduce_run.Launcher(request, env, output.fileno(), marker)
    with pytest.raises(reproduce_run.LaunchFailed, match='answered something other than JSON'):
        launcher.started(None)
    assert launcher.proc.poll() is not None  # not left to run on

"""Hostile inputs: crafted MLproject commands, paths and symlinks that lead
out of the checkout, credentials in URIs, and a NUL byte in a param."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import (
    ECHO_PROJECT,
    add_project,
    all_run_ids,
    artifact_bytes,
    client,
    free_port,
    git,
    logged_run,
    recorded_run,
    reproduce,
    reproduced_run,
    reproductions_of,
)
from proxy import silent_server

import reproduce_run

QUOTES = 'inside quotes'
HEREDOC = 'inside a here-document'


# --- where a placeholder lands in the shell's grammar: pure ---------------------


@pytest.mark.parametrize(
    ('command', 'contexts'),
    [
        # Bare words and parts of words outside any quotes: shlex.quote holds.
        pytest.param('python a.py {p}', [None], id='bare-word'),
        pytest.param('python a.py --p={p} x{p}y {p}{p}', [None] * 4, id='partial-words'),
        pytest.param('P={p} python a.py', [None], id='assignment'),
        pytest.param('python a.py > {p} 2>{p} <<< {p}', [None] * 3, id='redirections-here-string'),
        pytest.param('python a.py {p}; python b.py {p} && c {p} | d {p}', [None] * 4, id='lists'),
        pytest.param('( cd sub && python a.py {p} )', [None], id='subshell'),
        pytest.param(
            'python a.py "$(echo {p})" $(echo {p})',
            [None] * 2,
            id='command-substitution-resets-quotes',
        ),
        pytest.param('diff <(echo {p}) >(cat {p})', [None] * 2, id='process-substitution'),
        pytest.param("python a.py '{{p}}' {p}", [None], id='literal-braces'),
        pytest.param("python a.py \\'{p}", [None], id='escaped-quote-before'),
        pytest.param('python a.py "$"{p}', [None], id='quoted-dollar-before'),
        pytest.param('python a.py \\\n  {p}', [None], id='line-continuation'),
        pytest.param('python a.py {p!s}', [None], id='conversion-s-is-the-str'),
        pytest.param('python a.py "x" {p} \'y\'', [None], id='between-closed-quotes'),
        pytest.param('echo $(( 1 )) {p}', [None], id='after-arithmetic'),
        pytest.param('cat <<EOF\nbody\nEOF\npython a.py {p}', [None], id='after-a-here-document'),
        pytest.param(
            'cat <<-EOF\n\tbody\n\tEOF\npython a.py {p}',
            [None],
            id='after-a-tab-stripped-here-document',
        ),
        pytest.param('python a.py {p} # a comment', [None], id='before-a-comment'),
        pytest.param('echo a#{p}', [None], id='hash-inside-a-word'),
        pytest.param('evaluate {p}; eval_x {p}', [None] * 2, id='commands-named-like-eval'),
        pytest.param('bash run.sh {p}', [None], id='shell-running-a-file'),
        # Quotes of every kind end MLflow's quoting.
        pytest.param("python a.py '{p}'", [QUOTES], id='single-quotes'),
        pytest.param('python a.py "{p}"', [QUOTES], id='double-quotes'),
        pytest.param('python a.py "it\'s {p}"', [QUOTES], id='apostrophe-in-double-quotes'),
        pytest.param("python a.py '--x=1' {p} '{q}'", [None, QUOTES], id='after-a-closed-quote'),
        pytest.param("python echo.py $'it\\'s {p}'", ["inside $'...' quotes"], id='ansi-c-quotes'),
        pytest.param('python a.py $"{p}"', ['inside $"..." quotes'], id='locale-quotes'),
        pytest.param('python a.py "{p!s}"', [QUOTES], id='conversion-s-in-double-quotes'),
        pytest.param('python a.py "$(echo "{p}")"', [QUOTES], id='quotes-inside-substitution'),
        pytest.param('python a.py "$\'{p}\'"', [QUOTES], id='dollar-quote-is-literal-in-double'),
        pytest.param('python a.py `echo {p}`', ['inside backticks'], id='backticks'),
        pytest.param('python a.py "`echo {p}`"', ['inside backticks'], id='backticks-in-quotes'),
        # Here-documents: the body expands $(...), and a line can end it early.
        pytest.param(
            'cat > cfg.txt <<EOF\nvalue: {p}\nEOF\npython a.py', [HEREDOC], id='here-document'
        ),
        pytest.param(
            "cat > cfg.txt <<'EOF'\nvalue: {p}\nEOF", [HEREDOC], id='here-document-quoted-delimiter'
        ),
        pytest.param('cat <<-EOF\n\tv: {p}\n\tEOF', [HEREDOC], id='here-document-tabs'),
        pytest.param(
            'cat <<A <<B\n{p}\nA\n{q}\nB\npython a.py {r}',
            [HEREDOC, HEREDOC, None],
            id='two-here-documents',
        ),
        pytest.param('x=$(cat <<EOF\n{p}\nEOF\n)', [HEREDOC], id='here-document-in-substitution'),
        pytest.param(
            'cat <<{p}\nx\n', ['in a here-document delimiter'], id='here-document-delimiter'
        ),
        pytest.param('cat <<EOF\n$(echo {p})\nEOF', [HEREDOC], id='substitution-in-here-document'),
        # Commands and expansions that read the value again as code.
        pytest.param('eval python a.py {p}', ['in an argument of eval'], id='eval'),
        pytest.param(
            'if true; then eval "$(echo {p})"; fi',
            ['in an argument of eval'],
            id='eval-of-a-substitution',
        ),
        pytest.param('command eval {p}', ['in an argument of eval'], id='command-eval'),
        pytest.param('trap {p} EXIT', ['in an argument of trap'], id='trap'),
        pytest.param('let x={p}', ['in an argument of let'], id='let'),
        pytest.param('bash -c {p}', ['in a bash -c script'], id='bash-c'),
        pytest.param('/bin/sh -ec {p}', ['in a sh -c script'], id='sh-ec'),
        pytest.param('echo $(( {p} + 1 ))', ['inside an arithmetic expression'], id='arithmetic'),
        pytest.param('(( n = {p} ))', ['inside an arithmetic expression'], id='arithmetic-command'),
        pytest.param(
            'echo $(( $(echo {p}) ))',
            ['inside an arithmetic expression'],
            id='substitution-in-arithmetic',
        ),
        pytest.param(
            '[[ {p} -eq 1 ]] && python a.py {q}', ['inside [[ ... ]]', None], id='double-brackets'
        ),
        pytest.param('echo ${{X:-{p}}}', ['inside a ${...} expansion'], id='parameter-expansion'),
        pytest.param(
            'echo "${{X:-{p}}}"', ['inside a ${...} expansion'], id='parameter-expansion-in-quotes'
        ),
        pytest.param('echo ${p}', ['right after a $'], id='dollar-before'),
        pytest.param('echo \\{p}', ['right after a backslash'], id='backslash-before'),
        pytest.param('python a.py # {p}', ['inside a comment'], id='comment'),
        # str.format itself cuts or re-quotes MLflow's quoted value.
        pytest.param('python a.py {p!r}', ['through the conversion !r'], id='conversion-r'),
        pytest.param('python a.py {p!a}', ['through the conversion !a'], id='conversion-a'),
        pytest.param('python a.py {p:.3}', ['through the format spec :.3'], id='format-spec'),
        pytest.param('python a.py {p[0]}', ['through an index or attribute'], id='index'),
        pytest.param('python a.py {p.upper}', ['through an index or attribute'], id='attribute'),
        pytest.param('python a.py {p} }', [], id='malformed-format-runs-no-shell'),
    ],
)
def test_placeholder_context(command, contexts):
    assert [p.context for p in reproduce_run.placeholder_contexts(command)] == contexts


def test_placeholders_name_their_param_as_written():
    found = reproduce_run.placeholder_contexts('python a.py {p!r} "{q[0]}" {r:>9}')
    assert [(p.text, p.key) for p in found] == [('{p!r}', 'p'), ('{q[0]}', 'q'), ('{r:>9}', 'r')]


HOSTILE = [
    'x; touch PWNED',
    '$(touch PWNED)',
    '`touch PWNED`',
    "x'; touch PWNED; '",
    'x"; touch PWNED; "',
    "x\\'; touch PWNED; #",
    'a\nEOF\ntouch PWNED\n',
    ') ; touch PWNED ; (',
    '}; touch PWNED; {',
    'a[$(touch PWNED)]',
    '\\',
    "'",
    '"',
    '#',
    ' ',
    '\n',
]


@pytest.mark.parametrize(
    ('command', 'printed'),
    [
        pytest.param('printf "<%s>" {p}', '{v}', id='bare'),
        pytest.param('printf "<%s>" --x={p}', '--x={v}', id='partial-word'),
        pytest.param('printf "<%s>" "$(printf %s {p})"', '{s}', id='in-quoted-substitution'),
        pytest.param(
            'printf "<%s>" $(printf %s {p} >/dev/null; printf ok)', 'ok', id='in-substitution'
        ),
        pytest.param('cat <<EOF\nbody\nEOF\nprintf "<%s>" {p}', '{v}', id='after-a-here-document'),
        pytest.param('P={p} bash -c \'printf "<%s>" "$P"\'', '{v}', id='assignment'),
        pytest.param('printf "<%s>" {p!s}', '{v}', id='conversion-s'),
    ],
)
def test_a_bare_placeholder_keeps_a_hostile_value_data(command, printed, tmp_path):
    """What the tokenizer calls safe is safe: MLflow's own formatting, run by
    bash as MLflow runs it, creates nothing and passes the value as one word."""
    from mlflow.projects._project_spec import EntryPoint

    assert [p.context for p in reproduce_run.placeholder_contexts(command)] == [None]
    entry = EntryPoint('main', {'p': 'string'}, command)
    for value in HOSTILE:
        shell = entry.compute_command({'p': value}, storage_dir=None)
        proc = subprocess.run(('bash', '-c', shell), cwd=tmp_path, capture_output=True, text=True)
        assert list(tmp_path.iterdir()) == [], (value, shell)
        # $(...) drops trailing newlines, as it does for any output.
        expected = printed.format(v=value, s=value.rstrip('\n'))
        assert proc.stdout.endswith(f'<{expected}>'), (value, shell, proc.stdout)


@pytest.mark.parametrize(
    ('value', 'unsafe'),
    [
        pytest.param('hello', False, id='plain'),
        pytest.param('0.5,1e-3:a/b_c=d@e+f%', False, id='punctuation-shlex-leaves-alone'),
        pytest.param('', False, id='empty'),
        pytest.param('two words', True, id='space'),
        pytest.param('$(id)', True, id='substitution'),
        pytest.param('x;id', True, id='semicolon'),
        pytest.param('a\nb', True, id='newline'),
        pytest.param("it's", True, id='quote'),
        pytest.param('*', True, id='glob'),
    ],
)
def test_unsafe_params_only_flags_values_that_need_quoting(value, unsafe):
    command = "cat <<EOF\n{h}\nEOF\npython a.py {bare} '{q}' {r!r}"
    params = {'h': value, 'bare': value, 'q': value, 'r': value}
    flagged = [(p.key, p.context) for p in reproduce_run.unsafe_params(command, params)]
    assert flagged == (
        [('h', HEREDOC), ('q', QUOTES), ('r', 'through the conversion !r')] if unsafe else []
    )


def test_unsafe_params_ignores_placeholders_without_a_passed_value():
    assert reproduce_run.unsafe_params("python a.py '{q}'", {'other': 'a b'}) == []


# --- crafted commands, end to end -------------------------------------------------

ECHO_PY = 'import sys, mlflow\nmlflow.log_metric("arg_length", len(sys.argv[1]))\n'


def crafted_project(repo: Path, command: str, name: str = 'crafted') -> tuple[str, str]:
    """A project whose main entry point runs `command` with one param p;
    (source URI, commit)."""
    add_project(
        repo,
        name,
        {
            'MLproject': 'entry_points:\n  main:\n    parameters:\n      p: string\n'
            f'    command: {json.dumps(command)}\n',
            'echo.py': ECHO_PY,
        },
    )
    return f'file://{repo}#{name}', git('rev-parse', 'HEAD', cwd=repo)


@pytest.mark.parametrize(
    ('command', 'value', 'shown', 'context'),
    [
        pytest.param(
            'cat > cfg.txt <<EOF\nvalue: {p}\nEOF\npython echo.py x',
            '$(touch PWNED)',
            '{p}',
            HEREDOC,
            id='here-document',
        ),
        pytest.param(
            "python echo.py $'it\\'s {p}'",
            'x;touch PWNED;#',
            '{p}',
            "inside $'...' quotes",
            id='ansi-c-quotes',
        ),
        pytest.param(
            'python echo.py "{p!s}"',
            'x"; touch PWNED; "',
            '{p!s}',
            QUOTES,
            id='conversion-s-in-double-quotes',
        ),
        pytest.param(
            'eval python echo.py {p}', 'x; touch PWNED', '{p}', 'in an argument of eval', id='eval'
        ),
    ],
)
def test_crafted_command_is_refused_and_runs_nothing(
    own_repo, capsys, tmp_path, command, value, shown, context
):
    pwned = tmp_path / 'pwned'
    source, commit = crafted_project(own_repo, command)
    run_id = recorded_run(source, commit, {'p': value.replace('PWNED', str(pwned))})
    for dry_run in ((), ('--dry-run',)):
        code, out, err = reproduce(capsys, '--run_id', run_id, *dry_run)
        assert (code, out) == (2, '')
        assert err.startswith(
            f"reproduce_run: error: entry point 'main' puts {shown} {context} in its command "
        )
        assert err.endswith(': refusing to run it (--allow-unsafe-command runs it anyway)\n')
        assert err.count('\n') == 1
    assert reproductions_of(run_id) == []
    assert not pwned.exists()


def test_the_refused_danger_is_real(own_repo, capsys, tmp_path):
    """With --allow-unsafe-command the here-document runs the value: the
    refusal above guards against something that happens."""
    pwned = tmp_path / 'pwned'
    source, commit = crafted_project(
        own_repo, 'cat > cfg.txt <<EOF\nvalue: {p}\nEOF\npython echo.py x'
    )
    run_id = recorded_run(source, commit, {'p': f'$(touch {pwned})'}, metrics={'arg_length': 1.0})
    code, out, err = reproduce(capsys, '--run_id', run_id, '--allow-unsafe-command')
    assert (code, out.splitlines()[-1]) == (0, 'Runs equal: True'), err
    assert 'inside a here-document' in err
    assert 'running it because of --allow-unsafe-command' in err
    assert pwned.exists()


@pytest.mark.parametrize(
    'command',
    [
        pytest.param('python echo.py {p}', id='bare'),
        pytest.param(
            'cat <<EOF > cfg.txt\nconstant\nEOF\npython echo.py --p={p}',
            id='partial-word-after-a-here-document',
        ),
    ],
)
def test_safe_placeholder_still_runs_a_hostile_value_as_data(own_repo, capsys, tmp_path, command):
    pwned = tmp_path / 'pwned'
    value = f'x"; touch {pwned}; "$(touch {pwned})'
    source, commit = crafted_project(own_repo, command)
    run_id = recorded_run(source, commit, {'p': value})
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert code == 1, err  # the reference logged no metric; the reproduction did
    expected = len(value) + ('--p=' in command) * len('--p=')
    assert reproduced_run(out).data.metrics['arg_length'] == expected
    assert not pwned.exists()


# --- files from outside the checkout --------------------------------------------


def evil_script(tmp_path: Path) -> tuple[Path, Path]:
    """(a script on this host that touches a file, that file)."""
    pwned = tmp_path / 'pwned'
    script = tmp_path / 'host' / 'evil.py'
    script.parent.mkdir(exist_ok=True)
    script.write_text(f'open({str(pwned)!r}, "w").close()\n')
    return script, pwned


def assert_refused(capsys, run_id: str, *argv: str, message: str) -> None:
    for dry_run in ((), ('--dry-run',)):
        code, out, err = reproduce(capsys, '--run_id', run_id, *argv, *dry_run)
        assert (code, out, err) == (2, '', f'reproduce_run: error: {message}\n')
    assert reproductions_of(run_id) == []


def test_recorded_absolute_script_entry_point_is_refused(samples_repo, capsys, tmp_path):
    script, pwned = evil_script(tmp_path)
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(
        f'file://{samples_repo}#sklearn_regression', commit, entry_point=str(script)
    )
    assert_refused(
        capsys,
        run_id,
        message=(
            f'script entry point {str(script)!r} is outside the checkout of commit '
            f'{commit[:12]}: refusing to run a file of this host'
        ),
    )
    assert not pwned.exists()


@pytest.mark.parametrize(
    'entry_point',
    [
        pytest.param('../../outside.py', id='parent-of-the-checkout'),
        pytest.param('../sklearn_regression/../../../x.py', id='through-a-sibling'),
    ],
)
def test_relative_script_entry_point_outside_the_checkout_is_refused(
    samples_repo, capsys, entry_point
):
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(f'file://{samples_repo}#sklearn_regression', commit)
    assert_refused(
        capsys,
        run_id,
        '-e',
        entry_point,
        message=(
            f'script entry point {entry_point!r} is outside the checkout of commit '
            f'{commit[:12]}: refusing to run a file of this host'
        ),
    )


def test_missing_script_entry_point_is_refused_by_the_dry_run_too(samples_repo, capsys):
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(f'file://{samples_repo}#sklearn_regression', commit)
    assert_refused(
        capsys,
        run_id,
        '-e',
        'nonexist.py',
        message=(f"script entry point 'nonexist.py' does not exist at commit {commit[:12]}"),
    )


def commit_symlink(repo: Path, link: str, target: Path | str) -> str:
    path = repo / link
    if path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(target)
    git('add', '--all', cwd=repo)
    git('commit', '--quiet', '-m', f'link {link}', cwd=repo)
    return git('rev-parse', 'HEAD', cwd=repo)


def test_mlproject_that_is_a_symlink_out_of_the_checkout_is_refused(own_repo, capsys, tmp_path):
    pwned = tmp_path / 'pwned'
    host_mlproject = tmp_path / 'host' / 'MLproject'
    host_mlproject.parent.mkdir()
    host_mlproject.write_text(f'entry_points:\n  main:\n    command: touch {pwned}\n')
    project = add_project(own_repo, 'linked', {'echo.py': ECHO_PY})
    commit = commit_symlink(own_repo, 'linked/MLproject', host_mlproject)
    run_id = recorded_run(f'file://{own_repo}#linked', commit)
    assert_refused(
        capsys,
        run_id,
        message=(
            f'the MLproject at commit {commit[:12]} is a symlink to {host_mlproject}, outside the '
            f'checkout: refusing to use a file of this host'
        ),
    )
    assert not pwned.exists() and project.is_dir()


def test_script_that_is_a_symlink_out_of_the_checkout_is_refused(own_repo, capsys, tmp_path):
    script, pwned = evil_script(tmp_path)
    commit = commit_symlink(own_repo, 'sklearn_regression/evil.py', script)
    run_id = recorded_run(f'file://{own_repo}#sklearn_regression', commit)
    assert_refused(
        capsys,
        run_id,
        '-e',
        'evil.py',
        message=(
            f"script entry point 'evil.py' at commit {commit[:12]} is a symlink to {script}, "
            f'outside the checkout: refusing to use a file of this host'
        ),
    )
    assert not pwned.exists()


def test_project_folder_that_is_a_symlink_out_of_the_checkout_is_refused(
    own_repo, capsys, tmp_path
):
    outside = tmp_path / 'host_project'
    outside.mkdir()
    (outside / 'MLproject').write_text('entry_points:\n  main:\n    command: "true"\n')
    commit = commit_symlink(own_repo, 'elsewhere', outside)
    run_id = recorded_run(f'file://{own_repo}#elsewhere', commit)
    assert_refused(
        capsys,
        run_id,
        message=(
            f"folder 'elsewhere' at commit {commit[:12]} is a symlink to {outside}, outside the "
            f'checkout: refusing to use a file of this host'
        ),
    )


def test_symlinks_inside_the_checkout_are_fine(own_repo, capsys):
    add_project(
        own_repo,
        'linked',
        {
            'echo.py': ECHO_PY,
            'real_MLproject': ECHO_PROJECT['MLproject'].replace(
                'echo.py --msg {msg}', 'echo.py {msg}'
            ),
        },
    )
    commit_symlink(own_repo, 'linked/MLproject', 'real_MLproject')
    commit = commit_symlink(own_repo, 'linked/run.py', 'echo.py')
    run_id = recorded_run(f'file://{own_repo}#linked', commit, {'msg': 'two words'})
    code, out, err = reproduce(capsys, '--run_id', run_id, '--dry-run')
    assert code == 0, err
    code, out, err = reproduce(capsys, '--run_id', run_id, '-e', 'run.py', '--dry-run')
    assert code == 0, err


# --- credentials ----------------------------------------------------------------


@pytest.mark.parametrize(
    ('text', 'expected'),
    [
        pytest.param('https://u:p@rt@host/r.git', 'https://***@host/r.git', id='at-in-password'),
        pytest.param(
            'https://u@x:p@rt@host:8443/r', 'https://***@host:8443/r', id='several-ats-and-a-port'
        ),
        pytest.param(
            'file://user:tok3n@localhost/srv/r#sub',
            'file://***@localhost/srv/r#sub',
            id='file-url-with-userinfo',
        ),
        pytest.param(
            'http://user:secret@127.0.0.1:5000', 'http://***@127.0.0.1:5000', id='no-path'
        ),
        pytest.param(
            "at 'http://user:secret@127.0.0.1:5000/api/2.0/x'",
            "at 'http://***@127.0.0.1:5000/api/2.0/x'",
            id='quoted-in-a-message',
        ),
        pytest.param('https://host/a@b/c', 'https://host/a@b/c', id='at-in-the-path'),
        pytest.param(
            'http://a:b@h/x and http://c:d@e@h/y',
            'http://***@h/x and http://***@h/y',
            id='two-urls',
        ),
        pytest.param('file:///srv/r.git', 'file:///srv/r.git', id='file-url-without-host'),
        pytest.param('git@github.com:o/r.git', 'git@github.com:o/r.git', id='scp-style'),
        pytest.param('https://tok@host/r.git#sub', 'https://***@host/r.git#sub', id='token'),
        pytest.param(
            'fatal: https://u:p@h/r and ssh://git@h/r',
            'fatal: https://***@h/r and ssh://***@h/r',
            id='ssh-user-in-a-sentence',
        ),
    ],
)
def test_mask_credentials_to_the_last_at_before_the_path(text, expected):
    assert reproduce_run.mask_credentials(text) == expected


@pytest.mark.parametrize(
    ('repo', 'local'),
    [
        pytest.param('file://user:tok3n@localhost/srv/r', '/srv/r', id='userinfo-and-localhost'),
        pytest.param('file://localhost/srv/r', '/srv/r', id='localhost'),
        pytest.param('file:///srv/r', '/srv/r', id='no-host'),
        pytest.param('file://otherhost/srv/r', None, id='another-host'),
        pytest.param('/srv/r', '/srv/r', id='path'),
        pytest.param('https://u:p@host/r', None, id='https'),
        pytest.param('git@host:o/r', None, id='scp-style'),
    ],
)
def test_local_repo(repo, local):
    assert reproduce_run._local_repo(repo) == local


def test_file_url_with_a_token_is_masked_in_the_error(samples_repo, capsys, tmp_path):
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(f'file://{samples_repo}#sklearn_regression', commit)
    missing = tmp_path / 'missing'
    code, out, err = reproduce(
        capsys, '--run_id', run_id, '--uri', f'file://user:tok3n@localhost{missing}'
    )
    assert (code, out) == (2, '')
    assert err == (
        f'reproduce_run: error: cannot fetch file://***@localhost{missing} at '
        f'{commit}: {missing} is not a git repository\n'
    )


def test_file_url_with_userinfo_and_localhost_is_fetched(samples_repo, capsys):
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(f'file://{samples_repo}#sklearn_regression', commit)
    code, out, err = reproduce(
        capsys,
        '--run_id',
        run_id,
        '--dry-run',
        '--uri',
        f'file://user:tok3n@localhost{samples_repo}#sklearn_regression',
    )
    assert code == 0, err
    assert f'file://***@localhost{samples_repo}#sklearn_regression' in out
    assert 'tok3n' not in out + err


def test_password_with_an_at_is_masked_in_the_error(samples_repo, capsys):
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(f'file://{samples_repo}#sklearn_regression', commit)
    uri = f'https://u:p@rt@127.0.0.1:{free_port()}/samples.git'
    code, out, err = reproduce(capsys, '--run_id', run_id, '--uri', uri, '--output', 'json')
    assert code == 2
    assert 'p@rt' not in out + err and 'rt@' not in out + err
    assert json.loads(out)['message'].startswith('cannot fetch https://***@127.0.0.1:')


# Not the word 'secret': MLflow's random run names (secretive-wren-56) hold it.
PASSWORD = 'pw-4c1d-9f2e'


@pytest.fixture
def secret_server(mlflow_server, monkeypatch) -> str:
    """The session's tracking server, reached through a URL with a user and a
    password (MLflow sends them; the server ignores them)."""
    monkeypatch.setenv('MLFLOW_TRACKING_URI', mlflow_server.replace('://', f'://user:{PASSWORD}@'))
    return mlflow_server


def test_tracking_uri_password_is_masked_everywhere(secret_server, capsys):
    ref = logged_run({'acc': [0.5, 0.6]}, {'lr': '0.1'})
    other = logged_run({'acc': [0.5, 0.7]}, {'lr': '0.1'})
    capsys.readouterr()  # MLflow's own 'View run' lines from logging them
    unknown = 'f' * 32
    code, out, err = reproduce(
        capsys, '--run_id', ref, '--compare-to', other, '--output', 'json', '--verbose'
    )
    assert (code, json.loads(out)['status']) == (1, 'differ')
    seen = out + err
    code, out, err = reproduce(capsys, '--run_id', ref, '--compare-to', other)
    assert code == 1
    seen += out + err
    masked = f'http://***@{secret_server.split("://")[1]}'
    for argv in (('--run_id', unknown), ('--run_id', ref, '--compare-to', unknown)):
        code, out, err = reproduce(capsys, *argv, '--output', 'json')
        assert code == 2
        assert json.loads(out)['message'] == f'run {unknown} not found at tracking URI {masked}'
        seen += out + err
    tags = [client().get_run(run_id).data.tags for run_id in (ref, other)]
    assert PASSWORD not in seen + json.dumps(tags)


def test_unreachable_tracking_uri_password_is_masked(capsys, monkeypatch):
    uri = f'http://user:secret@127.0.0.1:{free_port()}'
    monkeypatch.setenv('MLFLOW_TRACKING_URI', uri)
    code, out, err = reproduce(capsys, '--run_id', 'f' * 32, '--output', 'json')
    assert code == 2
    assert 'secret' not in out + err
    assert json.loads(out)['message'].startswith(
        f'cannot read run {"f" * 32} from http://***@127.0.0.1:'
    )


def test_environment_file_that_is_a_symlink_out_of_the_checkout_is_refused(
    own_repo, capsys, tmp_path
):
    host_env = tmp_path / 'host' / 'python_env.yaml'
    host_env.parent.mkdir()
    host_env.write_text('python: "3.11"\ndependencies: [mlflow]\n')
    add_project(
        own_repo,
        'linked_env',
        {
            'MLproject': 'python_env: python_env.yaml\nentry_points:\n  main:\n'
            '    command: python echo.py x\n',
            'echo.py': ECHO_PY,
        },
    )
    commit = commit_symlink(own_repo, 'linked_env/python_env.yaml', host_env)
    run_id = recorded_run(f'file://{own_repo}#linked_env', commit)
    assert_refused(
        capsys,
        run_id,
        message=(
            f'the environment file of the MLproject at commit {commit[:12]} is a symlink to '
            f'{host_env}, outside the checkout: refusing to use a file of this host'
        ),
    )


# --- credentials in a source URI and a tracking URI, end to end; a NUL byte ---------


def test_credentials_are_masked_in_every_output_and_tag(
    git_daemon, samples_repo, reference, capsys, monkeypatch
):
    url, _ = git_daemon
    secret_base = 'https://user:s3cret@example.invalid/'
    # git rewrites the URL before connecting: the daemon serves it, offline.
    monkeypatch.setenv('GIT_CONFIG_COUNT', '1')
    monkeypatch.setenv('GIT_CONFIG_KEY_0', f'url.{url}/.insteadOf')
    monkeypatch.setenv('GIT_CONFIG_VALUE_0', secret_base)
    commit = git('rev-parse', 'HEAD', cwd=samples_repo)
    run_id = recorded_run(
        f'{secret_base}samples.git#sklearn_regression',
        commit,
        {'alpha': '0.005', 'l1_ratio': '0.5'},
        metrics=client().get_run(reference('sklearn_regression')).data.metrics,
    )
    code, out, err = reproduce(capsys, '--run_id', run_id, '--output', 'json', '--verbose')
    assert code == 0, err
    doc = json.loads(out)
    new_id = doc['reproduced_run_id']
    recorded = artifact_bytes(new_id, 'reproduce/comparison.json').decode()
    tags = client().get_run(new_id).data.tags
    assert 's3cret' not in out + err + recorded + json.dumps(tags)
    assert doc['source']['uri'] == 'https://***@example.invalid/samples.git#sklearn_regression'
    assert tags['mlflow.source.name'] == doc['source']['uri']


def test_a_silent_server_with_a_password_in_its_uri_is_detected(capsys, monkeypatch):
    with silent_server() as (url, accepted):
        with_password = url.replace('http://', 'http://alice:s3cret@')
        monkeypatch.setenv('MLFLOW_TRACKING_URI', with_password)
        monkeypatch.setenv('MLFLOW_HTTP_REQUEST_TIMEOUT', '120')
        code, out, err = reproduce(capsys, '--run_id', 'a' * 32)
        connections = accepted[0]
    masked = url.replace('http://', 'http://***@')
    assert (code, out) == (2, '')
    assert err == (
        f'reproduce_run: error: the tracking server {masked} does not answer (no '
        f'response within 10 s)\n'
    )
    assert connections == 1  # the probe reached the server, without the password in its host


@pytest.mark.parametrize(
    'uri',
    [
        pytest.param('http://alice:s3cret@127.0.0.1', id='http-no-port'),
        pytest.param('http://alice:s3cret@127.0.0.1/', id='http-no-port-slash'),
    ],
)
def test_a_password_in_a_tracking_uri_without_port_is_not_taken_for_a_port(
    capsys, monkeypatch, uri
):
    monkeypatch.setenv('MLFLOW_TRACKING_URI', uri)
    monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')
    code, out, err = reproduce(capsys, '--run_id', 'a' * 32)
    assert (code, out) == (2, '')
    assert 's3cret' not in err
    assert err.startswith(
        f'reproduce_run: error: cannot read run {"a" * 32} from http://***@127.0.0.1'
    )
    assert 'does not answer (Connection refused)' in err


def test_a_nul_byte_in_a_param_is_refused_before_any_run(own_repo, capsys):
    add_project(own_repo, 'echo', ECHO_PROJECT)
    commit = git('rev-parse', 'HEAD', cwd=own_repo)
    run_id = recorded_run(f'file://{own_repo}#echo', commit, {'msg': 'a\x00b'})
    before = all_run_ids()
    code, out, err = reproduce(capsys, '--run_id', run_id)
    assert (code, out) == (2, '')
    assert err == (
        f"reproduce_run: error: param 'msg' of run {run_id} holds a NUL byte, which no command "
        'line can carry: the run cannot be reproduced with its params\n'
    )
    assert all_run_ids() == before

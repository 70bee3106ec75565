"""The documentation beside the README, held to its word: docs/*.md's tables
against the tool's real output, every relative link against the files and
headings it points at, CONTRIBUTING.md's map of the code against the code,
the changelog against --tool-version, and the sdist against MANIFEST.in."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import (
    JSON_DOC,
    ROOT,
    SCRIPT,
    first_spans,
    section,
    tables,
)

import reproduce_run
from reproduce_run import main

DOCS = sorted((ROOT / 'docs').glob('*.md'))
PAGES = [ROOT / 'README.md', ROOT / 'CONTRIBUTING.md', ROOT / 'CHANGELOG.md', *DOCS]
_FENCE_RE = re.compile(r'^```.*?^```', re.MULTILINE | re.DOTALL)
_LINK_RE = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
_CODE_SPAN_RE = re.compile(r'`([^`]+)`')


def prose(path: Path) -> str:
    """The page without its fenced code blocks."""
    return _FENCE_RE.sub('', path.read_text())


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
    return text.replace(' ', '-')


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip('#')) for line in prose(path).splitlines() if line.startswith('#')}


# --- links --------------------------------------------------------------------


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _LINK_RE.findall(prose(page)):
        if re.match(r'[a-z]+:', target):  # https:, mailto:: not ours to check offline
            continue
        path, _, anchor = target.partition('#')
        where = (page.parent / path).resolve() if path else page
        if not where.exists():
            broken.append(f'{target}: no file {where}')
        elif anchor and anchor not in anchors(where):
            broken.append(f'{target}: no heading #{anchor} in {where.name}')
    assert broken == []


def test_the_contents_link_every_section_and_every_docs_page():
    contents = section(ROOT / 'README.md', 'Contents')
    linked = set(_LINK_RE.findall(contents))
    headings = [
        line[3:] for line in prose(ROOT / 'README.md').splitlines() if line.startswith('## ')
    ]
    wanted = {f'#{slug(h)}' for h in headings if h != 'Contents'}
    wanted |= {f'docs/{page.name}' for page in DOCS}
    assert wanted - linked == set()


def test_the_sections_come_in_the_order_of_the_contents():
    """ "Start here" first, then the reference: the file in the order its
    Contents lists it."""
    contents = section(ROOT / 'README.md', 'Contents')
    listed = [link[1:] for link in _LINK_RE.findall(contents) if link.startswith('#')]
    headings = [
        slug(line[3:]) for line in prose(ROOT / 'README.md').splitlines() if line.startswith('## ')
    ]
    assert [h for h in headings if h != 'contents'] == listed


def test_docs_hold_the_moved_topics():
    assert {page.name for page in DOCS} >= {'json.md', 'drift.md', 'cluster.md', 'speed.md'}


# --- docs/json.md against real reports ------------------------------------------


def documented_fields() -> dict[str, list[str]]:
    single = tables(section(JSON_DOC, 'The single-run document'))
    differences = tables(section(JSON_DOC, '`differences`: why the runs differ'))
    batch = tables(section(JSON_DOC, 'The batch document'))
    return {
        'report': first_spans(single[0]),
        'status': first_spans(single[1]),
        'metric': first_spans(single[2]),
        'differences': first_spans(differences[0]),
        'batch': first_spans(batch[0]),
    }


def test_json_field_lists_match_a_real_report(reference, capsys):
    code = main(['--run_id', reference('sklearn_regression'), '--output', 'json'])
    report = json.loads(capsys.readouterr().out)
    assert (code, report['status']) == (0, 'equal')
    fields = documented_fields()
    assert fields['report'] == list(report)
    assert fields['metric'] == list(report['metrics'][0])
    assert fields['differences'] == list(report['differences'])


def test_json_batch_fields_match_a_real_batch(reference, capsys):
    runs = reference('sklearn_regression'), reference('history')
    code = main(['--run_id', *runs, '--dry-run', '--output', 'json'])
    batch = json.loads(capsys.readouterr().out)
    assert (code, len(batch['runs'])) == (0, 2)
    rows = dict(
        zip(
            documented_fields()['batch'],
            tables(section(JSON_DOC, 'The batch document'))[0],
            strict=True,
        )
    )
    only_with_repeat = {field for field, row in rows.items() if 'with `--repeat`' in row[1]}
    assert only_with_repeat == {'repeats', 'repeat'}
    assert list(rows) == [*batch, *sorted(only_with_repeat, reverse=True)]


def test_json_status_table_is_status_exit_codes():
    rows = tables(section(JSON_DOC, 'The single-run document'))[1]
    documented = {_CODE_SPAN_RE.fullmatch(row[0]).group(1): int(row[1]) for row in rows}
    assert documented == reproduce_run.STATUS_EXIT_CODES


# --- docs/drift.md: the false-alarm rates that are exact ------------------------


def test_drift_false_alarm_table_holds_its_exact_columns():
    rows = tables(section(ROOT / 'docs' / 'drift.md', 'Why the range is widened'))[0]
    assert rows, 'the table of false-alarm rates is missing'
    for n_cell, plain, uniform, *simulated in rows:
        n = int(n_cell)
        assert float(plain) == round(2 / (n + 1), 3)  # R0 is the least or the greatest
        assert float(uniform) == round(4 / (2**n * (n + 1)), 3)
        if n == 2:  # exactly 1/3 whatever the distribution
            assert {float(v) for v in simulated} == {round(1 / 3, 3)}
        assert all(math.isfinite(float(v)) for v in simulated)


def test_contributing_gives_the_readme_test_commands():
    readme = re.search(r'```sh\n(.*?)```', section(ROOT / 'README.md', 'Running the tests'), re.S)
    assert readme and readme.group(1) in (ROOT / 'CONTRIBUTING.md').read_text()


# --- CHANGELOG.md and the version -----------------------------------------------


def test_newest_changelog_version_is_the_tool_version():
    versions = re.findall(r'^## (\d+\.\d+\.\d+)\b', (ROOT / 'CHANGELOG.md').read_text(), re.M)
    proc = subprocess.run(
        (sys.executable, str(SCRIPT), '--tool-version'), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert versions and proc.stdout == f'reproduce_run {versions[0]}\n'


# --- what the sdist ships -------------------------------------------------------


def test_sdist_ships_the_docs(tmp_path):
    source = tmp_path / 'source'
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns('.git', '.venv', '__pycache__', 'mlruns', '*.db', 'build'),
    )
    code = "import setuptools.build_meta as b; print(b.build_sdist('dist'))"
    proc = subprocess.run((sys.executable, '-c', code), cwd=source, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sdist = source / 'dist' / proc.stdout.split()[-1]
    with tarfile.open(sdist) as tar:
        shipped = {name.split('/', 1)[1] for name in tar.getnames() if '/' in name}
    wanted = {'README.md', 'CONTRIBUTING.md', 'CHANGELOG.md', 'requirements.txt'}
    wanted |= {f'docs/{page.name}' for page in DOCS}
    assert wanted - shipped == set()

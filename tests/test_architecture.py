"""The map of reproduce_run.py stays true: it reads top to bottom, section by
section, and its docstring and CONTRIBUTING.md list the sections in order."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from helpers import section

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'reproduce_run.py'

# (section of the user, the name it uses from a later section): why that is
# right.  Keep this short; a new entry needs a reason a reader accepts.
ALLOWED: dict[tuple[str, str], str] = {}


def banner_titles(source: str | None = None) -> list[str]:
    """The title of each `# ----` banner of reproduce_run.py (or of `source`):
    its next line, up to ':' or '.'."""
    lines = (SCRIPT.read_text() if source is None else source).splitlines()
    return [
        re.split(r'[:.]', lines[i + 1].lstrip('# '), maxsplit=1)[0]
        for i, line in enumerate(lines)
        if line.startswith('# ----')
    ]


def defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    targets = node.targets if isinstance(node, ast.Assign) else []
    targets += [node.target] if isinstance(node, ast.AnnAssign) else []
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def used_names(node: ast.stmt) -> set[str]:
    """The global names a top-level statement reads, annotations included;
    inside a function or class, a name it binds itself is its own."""
    loads = {
        n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        return loads
    stores = {
        n.id for n in ast.walk(node) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)
    }
    arguments = [n for n in ast.walk(node) if isinstance(n, ast.arguments)]
    params = {a.arg for n in arguments for a in [*n.posonlyargs, *n.args, *n.kwonlyargs]}
    params |= {a.arg for n in arguments for a in (n.vararg, n.kwarg) if a}
    return loads - stores - params


def statements_by_section(source: str) -> list[tuple[str, ast.stmt]]:
    """Each top-level statement with the title of the section it is in
    ('preamble' before the first banner)."""
    lines = source.splitlines()
    banners = [i + 1 for i, line in enumerate(lines) if line.startswith('# ----')]
    titles = banner_titles(source)
    found = []
    for node in ast.parse(source).body:
        first = min([node.lineno, *(d.lineno for d in getattr(node, 'decorator_list', []))])
        index = sum(b < first for b in banners)
        found.append((titles[index - 1] if index else 'preamble', node))
    return found


def backward_uses(source: str) -> set[tuple[str, str]]:
    """(user's section, name) for each name used before the section that defines it."""
    placed = statements_by_section(source)
    order = ['preamble', *banner_titles(source)]
    home = {name: order.index(title) for title, node in placed for name in defined_names(node)}
    return {
        (title, name)
        for title, node in placed
        for name in used_names(node) - set(defined_names(node))
        if home.get(name, -1) > order.index(title)
    }


def test_a_name_uses_only_names_of_its_own_section_or_an_earlier_one():
    assert backward_uses(SCRIPT.read_text()) - ALLOWED.keys() == set()


def test_every_allowed_exception_is_still_needed():
    assert ALLOWED.keys() - backward_uses(SCRIPT.read_text()) == set()


BANNER = '# ' + '-' * 75


@pytest.mark.parametrize(
    ('first', 'second', 'found'),
    [
        ('def f():\n    return g()', 'def g():\n    return 1', {('One', 'g')}),
        ('def f():\n    return 1', 'def g():\n    return f()', set()),
        ('def f(x: G) -> None:\n    pass', 'class G:\n    pass', {('One', 'G')}),
        ('X = g', 'def g():\n    pass', {('One', 'g')}),
        ('def f():\n    g = 1\n    return g', 'def g():\n    pass', set()),
        ('def f(g):\n    return g', 'def g():\n    pass', set()),
        ('class C:\n    g: int = 0', 'def g():\n    pass', set()),
        ('def f():\n    return C.g', 'class C:\n    g = 1', {('One', 'C')}),
    ],
    ids=[
        'a call forward',
        'a call back',
        'an annotation forward',
        'a constant forward',
        'a local of the same name',
        'a parameter of the same name',
        'a field of the same name',
        'a class forward',
    ],
)
def test_backward_uses_finds_a_name_used_before_its_section(first, second, found):
    source = f'{BANNER}\n# One: a.\n\n\n{first}\n\n\n{BANNER}\n# Two: b.\n\n\n{second}\n'
    assert backward_uses(source) == found


def test_the_module_docstring_lists_the_sections_in_order():
    docstring = ast.get_docstring(ast.parse(SCRIPT.read_text())) or ''
    assert re.findall(r'^ +\d+\. (.+?)[:.]', docstring, re.MULTILINE) == banner_titles()


def test_contributing_lists_the_sections_of_the_code_in_order():
    layout = section(ROOT / 'CONTRIBUTING.md', 'How the code is laid out')
    listed = re.findall(r'^\d+\. \*\*(.+?)\*\*', layout, re.MULTILINE)
    assert listed == banner_titles()


def test_each_section_title_appears_once():
    titles = banner_titles()
    assert len(titles) == len(set(titles))

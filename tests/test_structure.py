"""The storage boundary holds: above ``ingestd/ledger/`` nothing writes a job's state
directly, nothing speaks SQLite, and only the opening code names the SQLite ledger."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import ingestd

PACKAGE = Path(ingestd.__file__).parent
LEDGER = PACKAGE / "ledger"
# The database drivers: only the ledger's own modules speak to a database.
SQLITE_MODULES = {"sqlite3", "_sqlite3", "aiosqlite", "psycopg", "psycopg_pool"}
SQLITE_LEDGER = "SqliteLedger"
BACKENDS = {SQLITE_LEDGER, "PostgresLedger"}


def _modules_above_the_ledger() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if LEDGER not in path.parents:
            yield path, ast.parse(path.read_text(), filename=str(path))


def _is_ledger(node: ast.expr) -> bool:
    """``ledger`` or ``self.ledger`` (or any ``x.ledger``): what callers name it."""
    if isinstance(node, ast.Name):
        return "ledger" in node.id
    return isinstance(node, ast.Attribute) and "ledger" in node.attr


def problems_in(path: Path, tree: ast.Module) -> list[str]:
    found: list[str] = []
    where = path.relative_to(PACKAGE.parent)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if _is_ledger(node.func.value) and any(k.arg == "state" for k in node.keywords):
                found.append(f"{where}:{node.lineno}: state= passed to ledger.{node.func.attr}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in SQLITE_MODULES:
                    found.append(f"{where}:{node.lineno}: imports {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] in SQLITE_MODULES:
                found.append(f"{where}:{node.lineno}: imports from {module}")
            backend = module == "ingestd.ledger.store" or module.startswith(
                "ingestd.ledger.postgres"
            )
            if backend or any(a.name in BACKENDS for a in node.names):
                found.append(f"{where}:{node.lineno}: imports a ledger backend")
        elif isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if name in BACKENDS:
                found.append(f"{where}:{node.lineno}: names {name}")
    return found


def test_no_module_above_the_ledger_writes_state_speaks_sqlite_or_names_its_class() -> None:
    problems = [p for path, tree in _modules_above_the_ledger() for p in problems_in(path, tree)]
    assert problems == []


def test_the_check_finds_each_kind_of_breach() -> None:
    """The test above can fail: each breach it looks for, written out, is found."""
    source = (
        "import aiosqlite\n"
        "from sqlite3 import Row\n"
        "import psycopg\n"
        "from ingestd.ledger.store import SqliteLedger\n"
        "from ingestd.ledger.postgres.store import PostgresLedger\n"
        "async def f(self, ledger):\n"
        "    await self.ledger.update(1, state='done')\n"
        "    await ledger.update_current(job, state=State.DONE)\n"
        "    return SqliteLedger, PostgresLedger\n"
    )
    found = problems_in(PACKAGE / "example.py", ast.parse(source))
    assert len(found) == 9, found


def test_the_only_opening_place_is_in_the_ledger_package() -> None:
    """``open_ledger`` (ledger/api.py) is what names the SQLite class for everyone else."""
    opening = (LEDGER / "api.py").read_text()
    assert SQLITE_LEDGER in opening
    opened = [
        path.relative_to(PACKAGE.parent)
        for path, tree in _modules_above_the_ledger()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "open" and _is_ledger(node.value)
    ]
    assert opened == []

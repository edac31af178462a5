"""The functional core stays pure: nothing under processors/ imports I/O frameworks."""

from __future__ import annotations

import ast
from pathlib import Path

FORBIDDEN = {
    "faust",
    "redis",
    "aiokafka",
    "kafka",
    "prometheus_client",
    "mode",
    "aiohttp",
    "socket",
    "asyncio",
    "requests",
    "urllib",
    "stream",
    "state",
}
PROCESSORS = Path(__file__).resolve().parents[2] / "processors"


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_processors_import_no_io_frameworks() -> None:
    files = sorted(PROCESSORS.rglob("*.py"))
    assert len(files) >= 5
    offenders = {
        str(path.relative_to(PROCESSORS)): sorted(imported_roots(path) & FORBIDDEN)
        for path in files
        if imported_roots(path) & FORBIDDEN
    }
    assert offenders == {}


def test_the_check_itself_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import redis.asyncio as r\nfrom faust import App\n")
    assert imported_roots(bad) & FORBIDDEN == {"redis", "faust"}

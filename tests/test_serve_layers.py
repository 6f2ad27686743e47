"""The server and the CLI are both thin tops: the server never imports the CLI (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "gemma_cli"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("path", sorted([*(PKG / "server").glob("*.py"), PKG / "session.py", PKG / "client.py"]),
                         ids=lambda p: p.relative_to(PKG).as_posix())
def test_server_session_and_client_never_import_the_cli(path: Path) -> None:
    bad = sorted(m for m in _imports(path) if m == "gemma_cli.cli" or m.startswith("gemma_cli.cli."))
    assert not bad, f"{path.relative_to(PKG)} imports {bad}: move what both need below (session.py, registry/)"


def test_session_is_below_both_tops() -> None:
    bad = sorted(m for m in _imports(PKG / "session.py") if m.startswith(("gemma_cli.server", "gemma_cli.registry")))
    assert not bad

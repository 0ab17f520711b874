"""The packages form layers: imports point down only (README "Architecture").

``civic_iot`` (the shared core) imports no other package of ours; each service (ingest,
processors, alerts, the simulator) imports only the core; ``ops`` (the operator layer)
may import anything. Read from the source with ``ast``, so a lazy import inside a
function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: package -> the packages of ours it may import (itself always).
ALLOWED: dict[str, set[str]] = {
    "civic_iot": set(),
    "ingest": {"civic_iot"},
    "processors": {"civic_iot"},
    "alerts": {"civic_iot"},
    "simulator": {"civic_iot"},
    "api": {"civic_iot"},
    "ops": {"civic_iot", "ingest", "processors", "alerts", "simulator", "api"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out & set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package: str) -> None:
    wrong = {
        f"{path.relative_to(REPO)} imports {other}"
        for path in sorted((REPO / package).rglob("*.py"))
        for other in _imports(path) - ALLOWED[package] - {package}
    }
    assert not wrong, sorted(wrong)


def test_the_check_sees_imports() -> None:
    """The parser finds absolute and lazy imports (so an empty result above means none)."""
    found = _imports(REPO / "ops" / "cli.py")
    assert {"civic_iot", "alerts", "simulator"} <= found

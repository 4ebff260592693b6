"""The package dependency rule of docs/design.md: no import runs back up the hierarchy."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What each package must not import (ARCHITECTURE.md, "Packages").
FORBIDDEN = {
    "worldmodel": {"envs", "agents", "train", "viewer"},
    "envs": {"agents", "train", "viewer"},
    "train": {"viewer"},
    "agents": {"train", "viewer"},
    "viewer": {"train"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level package names a module imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_back_up(package):
    bad = {
        str(p.relative_to(ROOT)): sorted(imported_packages(p) & FORBIDDEN[package])
        for p in sorted((ROOT / package).rglob("*.py"))
    }
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{package}/ imports packages it must not (docs/design.md): {bad}"

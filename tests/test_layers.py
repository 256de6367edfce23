"""Package layering: a package imports only from lower layers (at module level or inside a function),
so there is no upward import and no import cycle between them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Lowest first; a package may import from its own folder and from layers below its own.
LAYERS = {
    "pipeline.io": 0,
    "pipeline.console": 0,
    "pipeline.randomness": 0,
    "pipeline.config": 1,
    "pipeline.data": 2,
    "pipeline.models": 2,
    "pipeline.train": 3,
    "pipeline.export": 4,
    "launch": 5,
}


def package_of(module: str) -> str | None:
    """The layer a dotted module name belongs to, or None outside the layered packages."""
    parts = module.split(".")
    for length in (2, 1):
        if ".".join(parts[:length]) in LAYERS:
            return ".".join(parts[:length])
    return None


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in `path`, wherever it sits in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_a_package_imports_only_from_lower_layers(package: str) -> None:
    folder = REPO.joinpath(*package.split("."))
    files = sorted(folder.rglob("*.py")) if folder.is_dir() else [folder.with_suffix(".py")]
    upward = []
    for path in files:
        for line, module in imported_modules(path):
            target = package_of(module)
            if target not in (None, package) and LAYERS[target] >= LAYERS[package]:
                upward.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not upward, "\n".join(upward)

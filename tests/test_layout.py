"""The layout rules of docs/design.md, checked on the source: the dependency rule between the packages, no
command's CLI module importing another command's, and nothing in the repository pointing outside it."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("defense", "training", "app", "attacker")
# What each package may import of ours: defense <- training <- {app, attacker}.
ALLOWED = {"defense": {"defense"}, "training": {"defense", "training"}, "app": {"defense", "training", "app"},
           "attacker": {"defense", "training", "attacker"}}
CLI_MODULES = {"training.cli", "training.reproduction.cli", "app.cli", "attacker.cli"}


def _modules() -> dict[str, Path]:
    return {".".join(path.relative_to(REPO).with_suffix("").parts): path
            for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports (``from a.b import c`` counts as ``a.b`` and ``a.b.c``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_follow_the_dependency_rule(module: str) -> None:
    package = module.split(".")[0]
    ours = {name for name in _imports(_modules()[module]) if name.split(".")[0] in PACKAGES}
    forbidden = sorted(name for name in ours if name.split(".")[0] not in ALLOWED[package])
    assert not forbidden, f"{module} imports {forbidden}: {package} may import only {sorted(ALLOWED[package])}"
    other_clis = sorted((ours & CLI_MODULES) - {module})
    assert not other_clis, f"{module} imports another command's CLI module {other_clis}; shared options belong in training.console"


def test_nothing_in_the_repository_points_outside_it() -> None:
    """Code, docs and tests never point outside the clone. Only ``.ci/`` may: CI runs with the machine's set-up
    tools beside the clone and uses them when they are there (``.ci/run`` sets up the container engine)."""
    files = subprocess.run(["git", "ls-files", "--", ".", ":!.ci"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    outside = "../" + "shared"  # spelled in two parts so that this file does not match itself
    hits = [name for name in files if (REPO / name).is_file() and outside in (REPO / name).read_text(errors="ignore")]
    assert hits == [], f"these files point to {outside}, which a clone does not have: {hits}"

"""requirements.lock pins every dependency (the dev and ray extras included) to the exact version installed and tested.

scripts/bootstrap.sh installs the lock, then the project with --no-deps; these tests keep the lock, pyproject.toml
and the environment the suite runs in from drifting apart.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "pip-compile --extra=dev --extra=ray --strip-extras --no-emit-index-url --no-emit-find-links --output-file=requirements.lock pyproject.toml"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def _locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in (ROOT / "requirements.lock").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"requirements.lock line {line!r} is not an exact 'name==version' pin"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"] + project["optional-dependencies"]["dev"] + project["optional-dependencies"]["ray"]]


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = _locked()
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is in pyproject.toml but not in requirements.lock; run: {REGENERATE}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject's {requirement}; run: {REGENERATE}"
        )


def test_the_environment_running_the_tests_is_the_locked_one() -> None:
    mismatched = {}
    for name, version in _locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed == "missing" or Version(installed) != Version(version):
            mismatched[name] = f"locked {version}, installed {installed}"
    assert not mismatched, f"the environment differs from requirements.lock: {mismatched}"


def test_bootstrap_installs_the_lock_then_the_project_without_dependencies() -> None:
    script = (ROOT / "scripts" / "bootstrap.sh").read_text()
    lock_install = script.find("-r \"$ROOT/requirements.lock\"")
    project_install = script.find("--no-deps -e \"$ROOT\"")
    assert 0 <= lock_install < project_install, "bootstrap.sh must install requirements.lock before the project (--no-deps)"
    assert "requirements.lock" in script[script.find("stamp="): script.find("\n", script.find("stamp="))], (
        "the install stamp must hash requirements.lock too"
    )
